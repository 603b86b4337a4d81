import sys

from haloconv.cli.main import main

sys.exit(main())
