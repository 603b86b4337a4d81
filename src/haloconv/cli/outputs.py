"""Where `haloconv run` writes, decided before anything is computed.

``-o`` names the output file when it ends in a format's suffix (``.npy``, ``.tif``/``.tiff``,
``.png``, ``.zarr``), which picks the format; any other name is a prefix (``-o out/run``
writes ``out/run.npy``, plus ``out/run.png`` or ``.tif`` for an image input; a streamed run
``out/run.<--out-format>``), and a folder (existing, or ending in ``/``) holds
``<input>-<kernel>`` files.  Without ``-o``: ``out/<input>-<kernel>``.  An existing output
is refused unless ``--overwrite``; a missing folder unless ``--mkdir`` — except ``out``, the
default folder, which is made when needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from haloconv.files import images

SUFFIXES = {".npy": "npy", ".tif": "tif", ".tiff": "tif", ".png": "png", ".zarr": "zarr"}
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
            raise ValueError(f"-o {output!r}: a streamed run writes .npy, .tif or .zarr, not .{fmt}")
        return [Target(path, fmt)]
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


def prepare(found: list[Target], output: str | None, *, overwrite: bool, mkdir: bool,
            shape: tuple[int, ...] | None = None) -> None:
    """Refuse what would surprise: an output that exists (unless ``overwrite``), a folder
    that does not (unless ``mkdir``, or the default folder), an image format for an output
    that is not one image (``shape``: the output's); then make the folders."""
    for t in found:
        if t.path.exists() and not overwrite:
            raise ValueError(f"{str(t.path)!r} exists; pass --overwrite to replace it")
        if shape is not None:
            images.check_one_image(t.path, t.fmt, shape)
        parent = t.path.parent
        if not parent.exists():
            if not (mkdir or output is None or parent == Path(DEFAULT_FOLDER)):
                raise ValueError(f"the folder {str(parent)!r} (of {str(t.path)!r}) does not exist; create it or "
                                 "pass --mkdir")
            parent.mkdir(parents=True, exist_ok=True)
