"""haloconv: convolutions split across workers, exactly equal to the single-machine result.

The names below are imported on first use (PEP 562): ``import haloconv`` alone does not
import torch, so a command that filters an image with OpenCV never pays for it."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_WHERE = {
    "conv": "haloconv.api", "execute": "haloconv.api", "conv_file": "haloconv.api.out_of_core",
    "plan": "haloconv.planner",
    "Execution": "haloconv.engines", "LocalCluster": "haloconv.engines", "WorkerError": "haloconv.engines",
    "default_workers": "haloconv.engines.host",
    "Box": "haloconv.tiling.boxes", "Piece": "haloconv.tiling.boxes", "Tile": "haloconv.tiling.boxes",
    "Partition": "haloconv.tiling.partition", "Plan": "haloconv.tiling.plan", "ConvSpec": "haloconv.tiling.spec",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name == "ndimage":  # the scipy.ndimage face (haloconv/ndimage.py), a module
        return importlib.import_module("haloconv.ndimage")
    if name not in _WHERE:
        raise AttributeError(f"module 'haloconv' has no attribute {name!r}")
    if name != "conv" and _WHERE[name] in ("haloconv.api", "haloconv.engines"):
        # first: puts MKL in reproducible mode early (conv does it on its tensor path: a
        # numpy filter's path imports no torch)
        importlib.import_module("haloconv.compute.kernels")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
