"""haloconv: convolutions split across workers, exactly equal to the single-machine result."""

from haloconv import kernels as _kernels  # first: puts MKL in reproducible mode early
from haloconv.api import conv, conv_file, default_workers, execute, plan
from haloconv.engines import Execution, LocalCluster, WorkerError
from haloconv.plan import Box, Piece, Plan, Tile
from haloconv.spec import ConvSpec

__version__ = "0.1.0"
__all__ = [
    "Box", "ConvSpec", "Execution", "LocalCluster", "Piece", "Plan", "Tile", "WorkerError",
    "conv", "conv_file", "default_workers", "execute", "plan",
]
del _kernels
