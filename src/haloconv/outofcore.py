"""haloconv.conv_file: a convolution of a file bigger than memory into a file, out of core.

No torch unless the tiles compute with it: a filter streamed on OpenCV in this process
(the default engine, engines/stream_threads.py) never imports it; worker processes and
torchrun ranks (engines/stream.py) do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from haloconv import units
from haloconv.compute import backends
from haloconv.engines import stream_threads
from haloconv.engines.host import default_workers
from haloconv.engines.stream_job import float_dtype
from haloconv.files import arrays
from haloconv.model import cost
from haloconv.planner import check_filters
from haloconv.planning.spec import ConvSpec, IntOrTuple


def conv_file(
    input: str | os.PathLike,
    weight,
    output: str | os.PathLike,
    bias=None,
    *,
    memory_budget: int,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    workers: int | None = None,
    backend: str | None = None,
    dtype: object = "float32",
    resume: bool = False,
    on_failure: str = "retry",
    timeout: float = 60.0,
    block: Sequence[int | None] | None = None,
    profile: cost.Profile | str | None = None,
    spmd: bool = False,
    engine: str = "threads",
    progress=None,
    integers: str = "auto",
    layout: str = "auto",
):
    """Convolve a file bigger than memory into a file, out of core (see engines/stream.py).

    ``input``: .npy, TIFF (contiguous, striped or tiled) or .zarr, read as files.images.read_input
    does ((H, W) -> (1, 1, H, W); ``layout`` for a 3-D array, files.arrays.logical_axes;
    ``integers``: 'auto' scales a TIFF's integers to [0, 1] and keeps an array's values,
    'unit' or 'keep' for any input, files.pixels).  ``output``: a path ending in
    .npy, .tif or .zarr; it appears whole when the run ends (meanwhile OUTPUT.partial and
    OUTPUT.journal).  ``memory_budget``: bytes of resident memory each of the ``workers``
    processes may hold at its peak, Python and torch included (unlike plan's, which counts
    a tile's data only: a stream sizes its tiles to what is left after the processes'
    own footprint).  ``resume``: go on from an
    interrupted run's journal.  Returns a StreamResult (tiles, peak RSS per process, ...).
    ``engine``: 'threads' (default) streams in this process, reading, computing and writing
    successive tiles at once (engines/stream_threads.py), ``workers`` being the cores its
    compute uses; 'processes' has ``workers`` processes pull tiles, and a run that loses one
    goes on with the others (``on_failure``, ``timeout``: that engine only).
    ``spmd``: called by every rank of a torch.distributed job (torchrun) instead: the ranks
    share the tiles through a file system they all see (``workers`` and ``on_failure`` do
    not apply); the result comes back on rank 0, None elsewhere.
    ``progress(done, total)``: called as tiles are written (rank 0's own, under spmd);
    what the run decides is logged at INFO (logger ``haloconv``).
    """
    if engine not in ("threads", "processes"):
        raise ValueError(f"engine must be 'threads' or 'processes' for a streamed run, got {engine!r}")
    budget = units.byte_count(memory_budget, "memory_budget")
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in arrays.FORMATS:
        raise ValueError(f"output must end in one of {['.' + f for f in arrays.FORMATS]}, got {str(out)!r}")
    dtype = float_dtype(dtype)
    source = arrays.open_input(input, integers, layout)
    wt = check_filters(weight)
    bt = None if bias is None else check_filters(bias, "bias")
    spec = ConvSpec.from_args(source.logical_shape, tuple(wt.shape), None if bt is None else tuple(bt.shape),
                              stride=stride, padding=padding, dilation=dilation, groups=groups,
                              padding_mode=padding_mode)
    if block is not None:  # refused before any process starts or measures its memory
        cost.check_block(spec, tuple(block))
    if backend is None:  # as haloconv.conv's
        backend = backends.default_for(spec)
    if backend == "auto":
        prof = profile if isinstance(profile, cost.Profile) else cost.load_profile(profile)
        backend = cost.stream_backend(spec, prof, wt)
    else:
        backends.check(backend, spec, wt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if spmd:
        from haloconv.engines import stream

        return stream.run_spmd(source, spec, wt, bt, out, fmt, memory_budget=budget, backend=backend, dtype=dtype,
                               resume=resume, block=None if block is None else tuple(block), progress=progress)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if engine == "threads":
        return stream_threads.run(source, spec, wt, bt, out, fmt, memory_budget=budget, threads=workers,
                                  backend=backend, dtype=dtype, resume=resume,
                                  block=None if block is None else tuple(block), progress=progress)
    from haloconv.engines import stream

    return stream.run(source, spec, wt, bt, out, fmt, memory_budget=budget, workers=workers, backend=backend,
                      dtype=dtype, resume=resume, on_failure=on_failure, timeout=timeout,
                      block=None if block is None else tuple(block), progress=progress)
