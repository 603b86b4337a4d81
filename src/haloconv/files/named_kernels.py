"""Named image-filter kernels for the CLI (cross-correlation, as torch convolves)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_FIXED = {
    "sobel-x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel-y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "prewitt-x": [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    "prewitt-y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "edge": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
}
NAMES = (*_FIXED, "gaussian:SIGMA", "box:K")


def gaussian(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 2-D Gaussian, radius ceil(truncate*sigma) as scipy.ndimage."""
    radius = max(1, math.ceil(truncate * sigma))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (ax / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def named_kernel(name: str) -> np.ndarray:
    """A 2-D kernel by name: one of NAMES, e.g. 'sobel-x', 'gaussian:1.5', 'box:5'."""
    if not isinstance(name, str):
        raise TypeError(f"kernel must be a name or a .npy path, got {name!r}")
    if name in _FIXED:
        return np.array(_FIXED[name], dtype=np.float64)
    kind, _, arg = name.partition(":")
    if kind == "gaussian" and arg:
        try:
            sigma = float(arg)
        except ValueError:
            raise ValueError(f"kernel 'gaussian:SIGMA' needs a number, got {name!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"kernel gaussian sigma must be > 0, got {name!r}")
        return gaussian(sigma)
    if kind == "box" and arg:
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"kernel 'box:K' needs an integer K >= 1, got {name!r}")
        k = int(arg)
        return np.full((k, k), 1.0 / (k * k))
    raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(NAMES)} or a .npy file")


def load_kernel(spec: str, channels: int, spatial_dims: int = 2) -> tuple[np.ndarray, int]:
    """(weight, groups) for the CLI's --kernel: a name or a .npy file.

    A 2-D (or spatial_dims-D) kernel is applied to every channel separately (depthwise,
    groups = channels); a full (C_out, C_in/groups, *k) array is used as it is.
    """
    if spec.endswith(".npy"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"kernel file {spec!r} does not exist")
        try:
            k = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises several types for bad files
            raise ValueError(f"kernel file {spec!r} is not a readable .npy array: {e}") from None
        if not np.issubdtype(k.dtype, np.floating) and not np.issubdtype(k.dtype, np.integer):
            raise ValueError(f"kernel file {spec!r} must hold real numbers, got dtype {k.dtype}")
    else:
        k = named_kernel(spec)
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == spatial_dims:
        weight = np.broadcast_to(k, (channels, 1, *k.shape)).copy()
        return weight, channels
    if k.ndim == spatial_dims + 2:
        if channels % k.shape[1]:
            raise ValueError(
                f"kernel of shape {k.shape} needs C_in divisible by {k.shape[1]}, input has {channels} channels"
            )
        return k, channels // k.shape[1]
    raise ValueError(
        f"kernel must be {spatial_dims}-D or {spatial_dims + 2}-D (C_out, C_in/groups, *k), got shape {k.shape}"
    )
