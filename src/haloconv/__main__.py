import sys

from haloconv.cli import main

sys.exit(main())
