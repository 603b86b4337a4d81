"""Reading and writing images and arrays for the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloconv.files import arrays
from haloconv.files.pixels import IMAGE_SUFFIXES, TIFF_SUFFIXES, conversion, integer_rule, to_float
from haloconv.planning.boxes import Box

SAMPLES = {"hopper": "grace_hopper.jpg"}


def sample_path(name: str) -> Path:
    """A sample image shipped with matplotlib (no download)."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    from matplotlib import cbook

    return Path(cbook.get_sample_data(SAMPLES[name], asfileobj=False))


def _channels_first(a: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """A picture's pixels as (C, H, W), and how they were read, in words."""
    if a.ndim == 2:
        return a[None], "H x W, grayscale"
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        dropped = " (alpha dropped)" if a.shape[-1] == 4 else ""
        return np.moveaxis(a[..., :3], -1, 0), f"H x W x RGB{'A' if dropped else ''}: 3 channels{dropped}"
    raise ValueError(f"input {str(path)!r} has shape {a.shape}; expected a 2-D or 3-D image")


@dataclass(frozen=True)
class Input:
    """An input read whole: ``x`` (N, C, *spatial) floats, whether it is a ``picture``
    (PNG/JPEG/BMP/GIF/TIFF: its output gets a picture beside it), and ``how`` it was read
    (format, values, axes), in words for the run's summary."""

    x: np.ndarray
    picture: bool
    how: str


def read_input(path: str | Path, dtype: object = np.float32, integers: str = "auto",
               layout: str = "auto") -> Input:
    """Read an image or array whole, as (N, C, *spatial) floats of ``dtype``.

    PNG/JPEG/BMP/GIF pictures become (1, C, H, W): grayscale C=1, RGB C=3 (alpha dropped).
    TIFF, .npy and .zarr arrays are read as arrays.logical_axes says (``layout``: 'auto',
    'chw', 'hwc' or 'dhw' for a 3-D one).  Integer values are scaled to [0, 1] or kept
    (``integers``, pixels.integer_rule: 'auto' scales pictures and TIFFs, keeps .npy and
    .zarr).  The values equal those a streamed run reads (arrays.DiskArray.read).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".zarr":  # a folder
        src = arrays.open_input(p, integers, layout)
        return Input(src.read(Box((0,) * len(src.logical_shape), src.logical_shape), dtype), False,
                     f"zarr: {conversion(src.dtype, src.integers)}, {src.layout}")
    if not p.is_file():
        raise ValueError(f"input {str(p)!r} is not a file")
    try:
        if suffix in (".npy", *TIFF_SUFFIXES):
            if suffix == ".npy":
                a, pages = np.load(p, allow_pickle=False), False
            else:
                import tifffile

                a, pages = np.asarray(tifffile.imread(p)), True
            if a.size == 0:
                raise ValueError(f"input {str(p)!r} is empty: shape {a.shape}")
            axes, words = arrays.logical_axes(a.shape, str(p), layout, pages)
            if pages:
                channels, words = arrays.tiff_channels(a.shape, axes, words)
                a = a if channels is None else a[..., :channels]
            rule = integer_rule(integers, picture=pages)
            return Input(to_float(arrays.to_logical(a, axes), rule, dtype), pages,
                         f"{suffix[1:].upper()}: {conversion(a.dtype, rule)}, {words}")
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode not in ("L", "I;16", "I", "F", "RGB"):
                    im = im.convert("RGB")
                a = np.asarray(im)
            if layout != "auto":
                raise ValueError(f"--layout applies to arrays (.npy, .tif, .zarr), not to {str(p)!r}")
            rule = integer_rule(integers, picture=True)
            chw, words = _channels_first(a, p)
            return Input(to_float(chw, rule, dtype)[None], True,
                         f"{suffix[1:].upper()}: {conversion(a.dtype, rule)}, {words}")
    except ValueError as e:
        if str(p) in str(e) or str(e).startswith("--layout"):
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
