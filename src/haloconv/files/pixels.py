"""Pixels: which file suffixes hold images, and how integer pixels become floats (one rule
for whole images and for the chunks of a streamed array, so both give the same values).

Integers are either scaled to [0, 1] by their dtype's maximum ('unit': what a picture
means, as torchvision's ToTensor and skimage's img_as_float read it) or kept as the values
they are ('keep': what an array of counts or labels means, as scipy.ndimage and OpenCV
read it).  ``integers='auto'`` is 'unit' for pictures (PNG, JPEG, BMP, GIF, TIFF) and
'keep' for arrays (.npy, .zarr).
"""

from __future__ import annotations

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
TIFF_SUFFIXES = {".tif", ".tiff"}
INTEGERS = ("auto", "unit", "keep")


def integer_rule(integers: str, picture: bool) -> str:
    """'unit' or 'keep': ``integers`` ('auto', 'unit' or 'keep') for a picture or an array.

    >>> integer_rule("auto", picture=True), integer_rule("auto", picture=False)
    ('unit', 'keep')
    """
    if integers not in INTEGERS:
        raise ValueError(f"integers must be one of {INTEGERS}, got {integers!r}")
    if integers == "auto":
        return "unit" if picture else "keep"
    return integers


def to_float(a: np.ndarray, rule: str = "unit", dtype: object = np.float32) -> np.ndarray:
    """``a`` as floats of ``dtype``: integers scaled to [0, 1] by their dtype's maximum
    (``rule='unit'``, divided in ``dtype``) or kept (``'keep'``); floats and bools as they are.

    >>> to_float(np.array([0, 255], np.uint8)).tolist(), to_float(np.array([7], np.int32), "keep").tolist()
    ([0.0, 1.0], [7.0])
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(a.dtype, np.integer):
        if rule == "unit":
            return a.astype(dtype) / dtype.type(np.iinfo(a.dtype).max)
        return a.astype(dtype)
    if np.issubdtype(a.dtype, np.floating) or a.dtype == bool:
        return a.astype(dtype, copy=False)
    raise ValueError(f"unsupported pixel dtype {a.dtype} (use integer, bool or floating pixels)")


def conversion(dtype: object, rule: str) -> str:
    """How values of ``dtype`` became floats, in words (for the run's summary).

    >>> conversion("uint16", "unit"), conversion("int32", "keep"), conversion("float32", "unit")
    ('uint16 scaled by 1/65535 to [0, 1]', 'int32 values kept', 'float32')
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return str(dtype)
    if rule == "unit":
        return f"{dtype} scaled by 1/{np.iinfo(dtype).max} to [0, 1]"
    return f"{dtype} values kept"
