"""haloconv: convolutions split across workers, exactly equal to the single-machine result."""

# isort: off
from haloconv.compute import kernels as _kernels  # first: puts MKL in reproducible mode early
# isort: on
from haloconv.api import conv, conv_file, execute, plan
from haloconv.engines import Execution, LocalCluster, WorkerError
from haloconv.engines.host import default_workers
from haloconv.planning.boxes import Box, Piece, Tile
from haloconv.planning.partition import Partition
from haloconv.planning.plan import Plan
from haloconv.planning.spec import ConvSpec

__version__ = "0.1.0"
__all__ = [
    "Box", "ConvSpec", "Execution", "LocalCluster", "Partition", "Piece", "Plan", "Tile", "WorkerError",
    "conv", "conv_file", "default_workers", "execute", "plan",
]
del _kernels
