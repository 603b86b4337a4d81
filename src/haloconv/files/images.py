"""Reading and writing images and arrays for the CLI."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloconv.files import arrays, guard
from haloconv.files.pixels import IMAGE_SUFFIXES, TIFF_SUFFIXES, conversion, integer_rule, to_float
from haloconv.tiling.boxes import Box

SAMPLES = {"hopper": "grace_hopper.jpg"}


def sample_path(name: str) -> Path:
    """A sample image shipped with matplotlib (no download)."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    from matplotlib import cbook

    return Path(cbook.get_sample_data(SAMPLES[name], asfileobj=False))


def _channels_first(a: np.ndarray, path: Path, alpha: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A picture's pixels as (C, H, W), its alpha channel (``alpha``: the last of ``a``'s),
    and how they were read, in words."""
    if alpha:
        colours, words = _channels_first(a[..., :-1] if a.shape[-1] > 2 else a[..., 0], path, False)[::2]
        return colours, a[..., -1], f"{words} + alpha (not filtered; kept in a PNG output)"
    if a.ndim == 2:
        return a[None], None, "H x W, grayscale"
    if a.ndim == 3 and a.shape[-1] == 3 and a.shape[0] > 4:
        return np.moveaxis(a, -1, 0), None, "H x W x RGB: 3 channels"
    raise ValueError(f"input {str(path)!r} has shape {a.shape}; expected a 2-D or 3-D image")


@dataclass(frozen=True)
class Input:
    """An input read whole: ``x`` (N, C, *spatial) floats, whether it is a ``picture``
    (PNG/JPEG/BMP/GIF/TIFF: its output gets a picture beside it), and ``how`` it was read
    (format, values, axes), in words for the run's summary."""

    x: np.ndarray
    picture: bool
    how: str
    value_range: tuple[float, float] | None = None  # what the values mean as a picture: 0..255 after clipping
    alpha: np.ndarray | None = None  # a picture's alpha channel (H, W), 8-bit, not filtered


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
                         f"{suffix[1:].upper()}: {conversion(a.dtype, rule)}, {words}",
                         _value_range(a.dtype, rule) if pages else None)
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(p) as im:
                alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
                if alpha:
                    im = im.convert("LA" if im.mode in ("LA", "La") else "RGBA")
                elif im.mode not in ("L", "I;16", "I", "F", "RGB"):
                    im = im.convert("RGB")
                a = np.asarray(im)
            if layout != "auto":
                raise ValueError(f"--layout applies to arrays (.npy, .tif, .zarr), not to {str(p)!r}")
            rule = integer_rule(integers, picture=True)
            chw, alpha_channel, words = _channels_first(a, p, alpha)
            return Input(to_float(chw, rule, dtype)[None], True,
                         f"{suffix[1:].upper()}: {conversion(a.dtype, rule)}, {words}",
                         _value_range(a.dtype, rule), alpha_channel)
    except ValueError as e:
        if str(p) in str(e) or str(e).startswith("--layout"):
            raise
        raise ValueError(f"cannot read input {str(p)!r}: {e}") from None
    except Exception as e:  # corrupt files raise library-specific errors
        raise ValueError(f"cannot read input {str(p)!r}: {e}") from None
    raise ValueError(
        f"input {str(p)!r} has an unsupported type {suffix!r}; use .png, .jpg, .tif/.tiff, .npy or .zarr"
    )


@dataclass(frozen=True)
class Preview:
    """How float outputs become an 8-bit picture (PNG, JPEG).  ``scale``: 'clip' maps
    ``value_range`` to 0..255 and clips what falls outside, as OpenCV saturates (a picture
    input's own range: a sharpened photo stays a photo); 'minmax' maps the output's own
    min..max (signed edge maps).  ``alpha``: the input's alpha channel (H, W, uint8),
    written unfiltered beside the filtered colours."""

    scale: str = "minmax"
    value_range: tuple[float, float] | None = None
    alpha: np.ndarray | None = None


PNG_SCALES = ("auto", "clip", "minmax")


def preview_for(found: Input, scale: str = "auto") -> Preview:
    """The preview of an output of ``found``: 'auto' clips to a picture's range, scales
    anything else (float arrays have no range to keep) by its min/max."""
    if scale not in PNG_SCALES:
        raise ValueError(f"--png-scale must be one of {PNG_SCALES}, got {scale!r}")
    if scale == "auto":
        scale = "clip" if found.value_range is not None else "minmax"
    if scale == "clip" and found.value_range is None:
        raise ValueError("--png-scale clip needs an input with a value range (a picture, or integers); this input "
                         "is floats: use --png-scale minmax")
    return Preview(scale, found.value_range, found.alpha)


def _value_range(dtype: np.dtype, rule: str) -> tuple[float, float] | None:
    """The values a picture's pixels of ``dtype`` span once read by ``rule``: [0, 1] scaled,
    [0, max] kept; None for floats (no range to keep)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return (0.0, 1.0)
    if not np.issubdtype(dtype, np.integer):
        return None
    return (0.0, 1.0) if rule == "unit" else (float(max(np.iinfo(dtype).min, 0)), float(np.iinfo(dtype).max))


def to_uint8(y: np.ndarray, preview: Preview | None = None) -> tuple[np.ndarray, str]:
    """A float image as 0..255, and how, in words: clipped to ``preview.value_range`` or
    scaled by its own min/max (the default); NaN becomes 0."""
    preview = preview or Preview()
    if preview.scale == "clip":
        lo, hi = preview.value_range
        words = f"values clipped to [{lo:g}, {hi:g}] as 0..255"
    else:
        lo, hi = np.nanmin(y), np.nanmax(y)
        if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
            return np.zeros(y.shape, dtype=np.uint8), "min/max scaled (a constant image: all 0)"
        words = f"min/max scaled: [{lo:.4g}, {hi:.4g}] as 0..255"
    scaled = np.nan_to_num((y - lo) * (255.0 / (hi - lo)), nan=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8), words


def check_one_image(path: Path, fmt: str, shape) -> None:
    """A .tif or .png holds one 2-D image (with channels): refuse any other output shape."""
    if fmt in ("tif", "png", "jpeg") and (len(shape) != 4 or shape[0] != 1):
        raise ValueError(f"-o {str(path)!r}: a .{fmt} holds one 2-D image (with channels); this output is "
                         f"{list(shape)} — write .npy or .zarr")


PICTURES = ("png", "jpeg")  # 8-bit, 1 or 3 channels (and alpha: PNG)


def check_outputs(paths: list[tuple[Path, str]], shape, preview: Preview | None) -> None:
    """Refuse, before any compute, outputs that cannot hold this run's result: one image
    only in .tif/.png/.jpg; an alpha channel only in a PNG of the input's own size."""
    for path, fmt in paths:
        check_one_image(path, fmt, shape)
        if preview is not None and preview.alpha is not None and fmt in PICTURES:
            if fmt == "jpeg":
                raise ValueError(f"-o {str(path)!r}: the input has an alpha channel and a JPEG has none; write "
                                 ".png (alpha kept unfiltered) or convert the input to RGB")
            if tuple(shape[2:]) != preview.alpha.shape:
                raise ValueError(f"-o {str(path)!r}: the input's alpha channel ({preview.alpha.shape[0]}x"
                                 f"{preview.alpha.shape[1]}) does not fit the {shape[2]}x{shape[3]} output; "
                                 "use padding that keeps the size, or convert the input to RGB")


def _picture(y: np.ndarray, preview: Preview | None) -> tuple[np.ndarray, str]:
    """The one sample's picture: grayscale, or RGB for 3 channels (channel 0 of others),
    plus the input's alpha; and how its values were mapped, in words."""
    chw = y[0]
    plane = np.moveaxis(chw, 0, -1) if chw.shape[0] == 3 else chw[0]
    u8, words = to_uint8(plane, preview)
    if preview is not None and preview.alpha is not None:
        u8 = np.dstack([u8, preview.alpha])
        words += "; alpha kept unfiltered"
    return u8, words


def _write(y: np.ndarray, tmp: Path, fmt: str, preview: Preview | None) -> str:
    """Write ``y`` as ``fmt`` to ``tmp``; what a picture's values became, in words ('' else)."""
    if fmt == "npy":  # as np.save writes it, through write() so that a full disk raises ENOSPC (tofile does not)
        y = np.ascontiguousarray(y)
        with open(tmp, "xb") as f:  # a fresh name (guard.temporary): never through a link left there
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(y))
            f.flush()
            reserve(f.fileno(), f.tell(), y.nbytes)
            f.write(memoryview(y.reshape(-1)).cast("B"))
    elif fmt == "zarr":
        arrays.import_zarr().create_array(store=str(tmp), shape=y.shape, dtype=y.dtype, chunks=y.shape,
                                    attributes={guard.MARK: {"streamed": False}})[...] = y
    elif fmt == "tif":
        import tifffile

        tifffile.imwrite(tmp, (y[0, 0] if y.shape[1] == 1 else y[0]).astype(np.float32))
    elif fmt in PICTURES:
        from PIL import Image

        u8, words = _picture(y, preview)
        Image.fromarray(u8).save(tmp, format="PNG" if fmt == "png" else "JPEG",
                                 **({"quality": 95} if fmt == "jpeg" else {}))
        return words
    else:
        raise ValueError(f"output format must be npy, zarr, tif, png or jpeg, got {fmt!r}")
    return ""


def write_outputs(y: np.ndarray, paths: list[tuple[Path, str]], preview: Preview | None = None) -> list[str]:
    """Write ``y`` (N, C, *spatial) to each (path, format): 'npy' (as it is), 'zarr' (as it
    is, a folder, marked as haloconv's), 'tif' (float32, lossless: the one sample's H x W,
    or C x H x W), 'png' / 'jpeg' (8-bit, as ``preview`` says: grayscale, or RGB for 3
    channels).  Each is written whole beside its name first, then all are renamed into
    place, replacing only what files/guard.py allows; on any error nothing is left behind
    (an OSError names its file).  Returns, per output, how a picture's values were mapped."""
    check_outputs(paths, y.shape, preview)
    staged: list[tuple[Path, Path]] = []
    notes = []
    try:
        for path, fmt in paths:
            path = Path(path)
            guard.check_replaceable(path)
            tmp = guard.temporary(path)
            staged.append((tmp, path))
            try:
                notes.append(_write(y, tmp, fmt, preview))
            except OSError as e:
                raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        for tmp, path in staged:
            arrays.promote(tmp, path)
    finally:
        for tmp, _ in staged:
            guard.discard(tmp)  # nothing is left half written
    return notes


def reserve(fd: int, offset: int, nbytes: int) -> None:
    """The file's blocks for ``nbytes`` from ``offset`` allocated before they are written, as
    np.save does (fallocate): a full disk is found before any byte is written, and the file
    gets few, long extents — on ext4, removing a file written without them (what replacing
    the last run's output does) takes about ten times as long.  A file system that cannot
    reserve is written as it comes."""
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass


def write_output(y: np.ndarray, path: str | Path, fmt: str, preview: Preview | None = None) -> Path:
    """write_outputs for one output; returns its path."""
    write_outputs(y, [(Path(path), fmt)], preview)
    return Path(path)
