"""Reading and writing images and arrays for the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from haloconv.files import arrays
from haloconv.files.pixels import IMAGE_SUFFIXES, TIFF_SUFFIXES, to_unit
from haloconv.planning.boxes import Box

SAMPLES = {"hopper": "grace_hopper.jpg"}


def sample_path(name: str) -> Path:
    """A sample image shipped with matplotlib (no download)."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    from matplotlib import cbook

    return Path(cbook.get_sample_data(SAMPLES[name], asfileobj=False))


def _channels_first(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        return np.moveaxis(a[..., :3], -1, 0)  # H x W x RGB(A); alpha dropped
    if a.ndim == 3:
        return a
    raise ValueError(f"input {str(path)!r} has shape {a.shape}; expected a 2-D or 3-D image")


def read_input(path: str | Path) -> tuple[np.ndarray, bool]:
    """(x, is_image): x as float32 (N, C, *spatial).

    PNG/JPEG/BMP and TIFF images become (1, C, H, W) in [0, 1] for integer pixels
    (grayscale C=1, RGB C=3).  A .npy array is taken as (H, W), (C, H, W), (N, C, H, W)
    or (N, C, D, H, W).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {str(p)!r} does not exist")
    if p.suffix.lower() == ".zarr":  # a folder
        src = arrays.open_input(p)
        return src.read(Box((0,) * len(src.logical_shape), src.logical_shape)), False
    if not p.is_file():
        raise ValueError(f"input {str(p)!r} is not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            if a.ndim == 2:
                a = a[None, None]
            elif a.ndim == 3:
                a = a[None]
            elif a.ndim not in (4, 5):
                raise ValueError(f"input {str(p)!r} has shape {a.shape}; expected 2-D to 5-D")
            if a.size == 0:
                raise ValueError(f"input {str(p)!r} is empty: shape {a.shape}")
            return to_unit(a), False
        if suffix in TIFF_SUFFIXES:
            import tifffile

            a = tifffile.imread(p)
            return _channels_first(to_unit(np.asarray(a)), p)[None], True
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode not in ("L", "I;16", "I", "F", "RGB"):
                    im = im.convert("RGB")
                a = np.asarray(im)
            return _channels_first(to_unit(a), p)[None], True
    except ValueError as e:
        if str(p) in str(e):
            raise
        raise ValueError(f"cannot read input {str(p)!r}: {e}") from None
    except Exception as e:  # corrupt files raise library-specific errors
        raise ValueError(f"cannot read input {str(p)!r}: {e}") from None
    raise ValueError(
        f"input {str(p)!r} has an unsupported type {suffix!r}; use .png, .jpg, .tif/.tiff, .npy or .zarr"
    )


def to_uint8(y: np.ndarray) -> np.ndarray:
    """Scale a float image to 0..255 by its min/max (edge maps are signed)."""
    lo, hi = np.nanmin(y), np.nanmax(y)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(y.shape, dtype=np.uint8)
    return np.clip(np.round((y - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _atomic(path: Path, write) -> Path:
    """Write through a temporary file (or folder) in the same folder, renamed into place at
    the end: a reader (or a crash) never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        arrays.promote(tmp, path)
    finally:
        arrays.remove(tmp)
    return path


def check_one_image(path: Path, fmt: str, shape) -> None:
    """A .tif or .png holds one 2-D image (with channels): refuse any other output shape."""
    if fmt in ("tif", "png") and (len(shape) != 4 or shape[0] != 1):
        raise ValueError(f"-o {str(path)!r}: a .{fmt} holds one 2-D image (with channels); this output is "
                         f"{list(shape)} — write .npy or .zarr")


def write_output(y: np.ndarray, path: str | Path, fmt: str) -> Path:
    """Write ``y`` (N, C, *spatial) to ``path`` as ``fmt``: 'npy' (as it is), 'zarr' (as it
    is, a folder), 'tif' (float32, lossless: the one sample's H x W, or C x H x W) or 'png' (8-bit,
    min/max scaled: grayscale, or RGB for 3 channels).  The file appears whole or not at
    all (written beside it, renamed into place, replacing what was there)."""
    path = Path(path)
    check_one_image(path, fmt, y.shape)
    if fmt == "npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, y)
    elif fmt == "zarr":
        def write(tmp: Path) -> None:
            import zarr

            zarr.create_array(store=str(tmp), shape=y.shape, dtype=y.dtype, chunks=y.shape)[...] = y
    elif fmt == "tif":
        import tifffile

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, (y[0, 0] if y.shape[1] == 1 else y[0]).astype(np.float32))
    elif fmt == "png":
        from PIL import Image

        chw = y[0]
        img = Image.fromarray(to_uint8(np.moveaxis(chw, 0, -1)) if chw.shape[0] == 3 else to_uint8(chw[0]))

        def write(tmp: Path) -> None:
            img.save(tmp, format="PNG")
    else:
        raise ValueError(f"output format must be npy, zarr, tif or png, got {fmt!r}")
    return _atomic(path, write)
