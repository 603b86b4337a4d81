"""Where `haloconv run` writes, decided before anything is computed.

``-o`` names the output file when it ends in a format's suffix (``.npy``, ``.tif``/``.tiff``,
``.png``, ``.jpg``/``.jpeg``, ``.zarr``), which picks the format, and exactly that file is
written; a suffix of another format (``.bmp``, ``.webp``, ...) is refused; a name without
one is a prefix (``-o out/run``
writes ``out/run.npy``, plus ``out/run.png`` or ``.tif`` for an image input; a streamed run
``out/run.<--out-format>``), and a folder (existing, or ending in ``/``) holds
``<input>-<kernel>`` files.  Without ``-o``: ``out/<input>-<kernel>``.  An existing output
is refused unless ``--overwrite``, which replaces only what files/guard.py allows (a regular
file, or a .zarr store haloconv wrote); a missing folder unless ``--mkdir`` — except
``out``, the default folder, which is made when needed.  Before anything is computed or
created, the folder must be writable, the file system must have room for the outputs, and
the libraries an output needs must import: each is one line, exit 2.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from haloconv.files import arrays, guard, images

SUFFIXES = {".npy": "npy", ".tif": "tif", ".tiff": "tif", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
            ".zarr": "zarr"}
# a suffix of letters (and digits after one) names a format: one haloconv does not write is
# refused rather than taken for a prefix (x.bmp would write x.bmp.npy)
FORMAT_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,4}")
STREAMED = ("npy", "tif", "zarr")  # what a streamed run writes tile by tile (files.arrays.FORMATS)
DEFAULT_FOLDER = "out"


@dataclass(frozen=True)
class Target:
    path: Path
    fmt: str


def default_stem(input_name: str, kernel: str) -> str:
    """<input>-<kernel>, the kernel's name made safe for a file name."""
    safe = kernel.replace(":", "").replace("/", "_").replace(".npy", "")
    return f"{input_name}-{Path(safe).name}"


def targets(output: str | None, stem: str, *, image: bool, image_format: str, streamed: bool,
            stream_format: str) -> list[Target]:
    """The files a run writes, with their formats."""
    if output is not None and Path(output).suffix.lower() in SUFFIXES:
        path = Path(output)
        fmt = SUFFIXES[path.suffix.lower()]
        if streamed and fmt not in STREAMED:
            raise ValueError(f"-o {output!r}: a streamed run writes .npy, .tif or .zarr, not {path.suffix}")
        return [Target(path, fmt)]
    if output is not None and FORMAT_SUFFIX.fullmatch(Path(output).suffix) and not output.endswith(("/", os.sep)):
        raise ValueError(f"-o {output!r}: haloconv writes {', '.join(SUFFIXES)}; name a file with one of these "
                         "suffixes, or a prefix without a suffix")
    if output is None:
        prefix = Path(DEFAULT_FOLDER) / stem
    elif output.endswith(("/", os.sep)) or Path(output).is_dir():
        prefix = Path(output) / stem
    else:
        prefix = Path(output)
    if streamed:
        return [Target(prefix.with_name(f"{prefix.name}.{stream_format}"), stream_format)]
    found = [Target(prefix.with_name(f"{prefix.name}.npy"), "npy")]
    if image:
        found.append(Target(prefix.with_name(f"{prefix.name}.{image_format}"), image_format))
    return found


def check_side_files(args) -> None:
    """The files a run writes beside its outputs (--report), checked before any compute as the
    outputs are: a folder, FIFO or device there is refused (files/guard.py)."""
    report = getattr(args, "report", None)
    if report not in (None, "-"):
        guard.check_replaceable(Path(report))


def output_bytes(fmt: str, shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes an output of ``shape`` takes on disk in ``fmt`` (an upper bound for pictures)."""
    n = math.prod(shape)
    if fmt in ("png", "jpeg"):
        return shape[-2] * shape[-1] * 5 + 65536  # RGBA at most, plus headers
    if fmt == "tif":
        return n * 4 + 65536  # float32
    return n * itemsize + 65536


def prepare(found: list[Target], output: str | None, *, overwrite: bool, mkdir: bool,
            shape: tuple[int, ...] | None = None, itemsize: int = 4, streamed: bool = False,
            preview: images.Preview | None = None) -> None:
    """Refuse what would surprise or fail half way, before anything is created: an output
    that exists (unless ``overwrite``, and then only one files/guard.py may replace; a
    streamed run's own checks, api.out_of_core.conv_file, decide its output's fate), a folder that
    does not (unless ``mkdir``, or the default folder), one this user cannot write in, a
    file system without room for the outputs (``shape``: the output's), a library the
    format needs, an image format for an output that is not one image; then make the folders."""
    for t in found:
        if not streamed:
            if guard.describe(t.path) is not None and not overwrite:
                raise ValueError(f"{str(t.path)!r} exists; pass --overwrite to replace it")
            guard.check_replaceable(t.path)
        if shape is not None:
            images.check_outputs([(t.path, t.fmt)], shape, preview)
        if t.fmt == "zarr":
            arrays.import_zarr()
        parent = t.path.parent
        if not parent.exists():
            if not (mkdir or output is None or parent == Path(DEFAULT_FOLDER)):
                raise ValueError(f"the folder {str(parent)!r} (of {str(t.path)!r}) does not exist; create it or "
                                 "pass --mkdir")
            writable = next(p for p in (parent, *parent.parents) if p.exists())
            guard.check_folder(writable, t.path)
            parent.mkdir(parents=True, exist_ok=True)
        guard.check_folder(parent, t.path)
    if shape is not None and not streamed:
        folders: dict[Path, int] = {}
        for t in found:
            folders[t.path.parent] = folders.get(t.path.parent, 0) + output_bytes(t.fmt, shape, itemsize)
        for folder, needed in folders.items():
            guard.check_space(folder, needed, ", ".join(str(t.path) for t in found if t.path.parent == folder))
