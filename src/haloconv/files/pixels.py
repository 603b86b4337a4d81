"""Pixels: which file suffixes hold images, and how integer pixels become floats in [0, 1]
(one rule for whole images and for the chunks of a streamed array)."""

from __future__ import annotations

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def to_unit(a: np.ndarray) -> np.ndarray:
    """Integers scaled to [0, 1] by their dtype's range; floats kept."""
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    if a.dtype == bool:
        return a.astype(np.float32)
    raise ValueError(f"unsupported pixel dtype {a.dtype} (use integer, bool or floating pixels)")
