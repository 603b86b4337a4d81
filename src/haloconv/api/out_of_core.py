"""haloconv.conv_file: a convolution of a file bigger than memory into a file, out of core:
its keywords read once into values (options.StreamOptions), the tiles cut by the
planner (planner/streaming.StreamTiler), run through the one dispatch (dispatch.stream).

No torch unless the tiles compute with it: a filter streamed on OpenCV in this process
(the default engine, engines/stream/threads.py) never imports it; worker processes and
torchrun ranks (engines/stream/workers.py) do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from haloconv import dispatch
from haloconv.costmodel import cost
from haloconv.engines.host import default_workers
from haloconv.files import arrays
from haloconv.options import StreamOptions
from haloconv.planner import check_filters, streaming
from haloconv.tiling.spec import ConvSpec, IntOrTuple


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
    overwrite: bool = False,
    sync: bool = False,
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
    """Convolve a file bigger than memory into a file, out of core.

    Tiles sized to ``memory_budget`` are read from ``input``, computed and written into
    ``output``; on one machine in this process by default, reading, computing and writing
    successive tiles at once (engines/stream/threads.py), or by worker processes or
    torchrun ranks (engines/stream/workers.py).  The output equals the single-node call of the
    backend on the whole input.

    Parameters
    ----------
    input : str or path
        .npy, TIFF (contiguous, striped or tiled, compressed or not) or .zarr.  (H, W) is
        read as (1, 1, H, W); a 3-D array as ``layout`` says (files.arrays.logical_axes:
        'auto', 'chw', 'hwc' or 'dhw').
    weight, bias : torch.Tensor or numpy.ndarray
        As haloconv.conv's (4-D/5-D filters).
    output : str or path
        Ending in .npy, .tif or .zarr.  It appears whole when the run ends; meanwhile
        OUTPUT.partial grows and OUTPUT.journal lists the tiles done.
    memory_budget : int or str
        Bytes of resident memory each process may hold at its peak, Python and its
        libraries included (unlike haloconv.plan's, which counts a tile's data only).
    stride, padding, dilation, groups, padding_mode
        As haloconv.conv's.
    workers : int, optional
        engine 'threads': the cores the compute uses; 'processes': the processes.
    backend : str, optional
        As haloconv.conv's ('auto' for filters by default).
    dtype : {'float32', 'float64'}
        The compute's float type.
    resume : bool
        Go on from an interrupted run's journal (finished tiles are not computed again).  On
        a complete output whose receipt (OUTPUT.receipt.json: the input's path, size and
        time stamp, the conv, the filters' digest, backend, dtype, format) says it is this
        computation, nothing is done (the result's ``complete`` is True); another
        computation's output, or one without a receipt, is refused.
    overwrite : bool
        Replace an existing output (a regular file, or a .zarr store haloconv wrote; never
        a folder, device or FIFO), or start an interrupted run over.  Without it (or
        ``resume``) an existing output or an interrupted run's journal is refused.
    sync : bool
        Make every finished tile durable on disk (fdatasync) before it is journaled, and
        the output before it is renamed into place: the journal then survives a power loss
        too.  Default: a tile is journaled once the operating system has it, which survives
        the run's own end (Ctrl-C, a kill, a failure) at the page cache's speed, as
        libvips and cp write; a journal from before the machine restarted is not trusted
        (its tiles are computed again).  A sync waits for the disk, and on ext4 for other
        files' dirty data too.
    on_failure, timeout
        engine 'processes': a lost worker's tiles go to the others ('retry'), or raise.
    block : sequence of int or None, optional
        The output tile per dim over (N, C_out, *spatial), instead of the largest the
        budget allows (e.g. to match another file's chunks).
    profile : Profile or str, optional
    spmd : bool
        Called by every rank of a torch.distributed job (torchrun): the ranks share the
        tiles through a file system they all see.
    engine : {'threads', 'processes'}
    progress : callable, optional
        ``progress(done, total)`` as tiles are written (rank 0's own under ``spmd``).
    integers : {'auto', 'unit', 'keep'}
        Integer values scaled to [0, 1] by their dtype's maximum, or kept; 'auto' scales
        a TIFF's and keeps an array's (files.pixels).
    layout : {'auto', 'chw', 'hwc', 'dhw'}

    Returns
    -------
    StreamResult
        ``.plan`` (its tiles), ``.wall_seconds``, ``.peak_rss`` per process,
        ``.tiles_done``, ``.bytes_read``, ``.failures``; None on ranks other than 0.

    Raises
    ------
    ValueError
        Before anything is created: an unreadable input, an output format or budget that
        cannot work, an output that exists (see ``resume``, ``overwrite``), a folder that
        is read-only, a file system without room for the output, a library the files need
        (zarr), naming them.
    OSError
        A write that fails during the run (a full disk, an I/O error): the journal keeps
        the tiles finished, and ``resume=True`` goes on once the cause is fixed.

    Notes
    -----
    What the run decides is logged at INFO on the ``haloconv`` logger; nothing is printed.

    Examples
    --------
    >>> import numpy as np, haloconv, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(d / "slide.npy", np.random.default_rng(0).random((300, 200), dtype=np.float32))
    >>> box = np.full((1, 1, 5, 5), 1 / 25, np.float32)
    >>> res = haloconv.conv_file(d / "slide.npy", box, d / "out.npy", memory_budget="8GB", padding=2)
    >>> np.load(d / "out.npy").shape, len(res.plan.tiles) >= 1
    ((1, 1, 300, 200), True)
    """
    if engine not in ("threads", "processes"):
        raise ValueError(f"engine must be 'threads' or 'processes' for a streamed run, got {engine!r}")
    how = StreamOptions.of(memory_budget=memory_budget,  # under torchrun each rank is one worker
                           workers=1 if spmd else default_workers() if workers is None else workers,
                           dtype=dtype, resume=resume, overwrite=overwrite, sync=sync, on_failure=on_failure,
                           timeout=timeout, block=block, progress=progress)
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in arrays.FORMATS:
        raise ValueError(f"output must end in one of {['.' + f for f in arrays.FORMATS]}, got {str(out)!r}")
    source = arrays.open_input(input, integers, layout)
    wt = check_filters(weight)
    bt = None if bias is None else check_filters(bias, "bias")
    spec = ConvSpec.from_args(source.logical_shape, tuple(wt.shape), None if bt is None else tuple(bt.shape),
                              stride=stride, padding=padding, dilation=dilation, groups=groups,
                              padding_mode=padding_mode)
    tiler = streaming.tiler_for(spec, wt, backend, profile, how.dtype, source.dtype, how.block)
    return dispatch.stream(source, tiler, wt, bt, out, fmt, how, "torchrun" if spmd else engine)
