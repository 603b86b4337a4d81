"""haloconv.conv and haloconv.execute: convolutions of arrays and tensors in memory.  Each
reads its keywords once into values (options.py: ConvSpec, PlanOptions,
RunOptions), plans once (planner.plan_for) and runs through the one dispatch
(haloconv/dispatch.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from haloconv import dispatch
from haloconv.costmodel import cost
from haloconv.engines import dask_graph
from haloconv.engines.execution import Execution
from haloconv.engines.inprocess import arrays as array_threads
from haloconv.options import PlanOptions, RunOptions
from haloconv.planner import check_filters, plan_for
from haloconv.progress import Progress
from haloconv.tiling.partition import Partition
from haloconv.tiling.plan import Plan, chunk_plan
from haloconv.tiling.spec import ConvSpec, IntOrTuple

if TYPE_CHECKING:  # torch is imported where a tensor path runs: a numpy filter never needs it

    from haloconv.engines import LocalCluster

ArrayLike = "torch.Tensor | np.ndarray"


def _on_dask(x, weight, bias, asked: list[str], spec: ConvSpec, how: PlanOptions):
    """conv on a dask array: a dask array, one task per output chunk (engines/dask_graph);
    the chunks are the partition and Dask's scheduler runs it, so the arguments that say
    how to split or run are refused."""
    if asked:
        raise ValueError(f"{', '.join(asked)} do not apply to a dask array input: its chunks are the partition and "
                         "Dask's scheduler runs the tasks")
    if not all(v is None or isinstance(v, np.ndarray) for v in (weight, bias)):
        raise TypeError("weight and bias must be numpy arrays for a dask array input")
    if np.dtype(x.dtype) not in (np.float32, np.float64) or any(
            v is not None and v.dtype != x.dtype for v in (weight, bias)):
        raise TypeError(f"x, weight and bias must be one dtype, float32 or float64, got {x.dtype}, {weight.dtype}"
                        + ("" if bias is None else f", {bias.dtype}"))
    # the backend the single-tile call would take, then the tiles on the chunks
    from dataclasses import replace

    one = plan_for(spec, replace(how, partition=Partition.of((1,) * x.ndim), workers=None), weight)
    return dask_graph.run(chunk_plan(one.spec, x.chunks, one.backend), x, weight, bias)


def execute(
    plan: Plan,
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    engine: str | LocalCluster = "threads",
    on_failure: str = "retry",
    threads: int | None = None,
    schedule: str = "static",
    tiles: int | None = None,
    progress: Progress | None = None,
) -> Execution:
    """Run a Plan on data: the output with what each worker moved and spent.

    Parameters
    ----------
    plan : Plan
        From haloconv.plan, for the shapes of ``x``, ``weight`` and ``bias``.
    x, weight, bias : torch.Tensor or numpy.ndarray
        As haloconv.conv takes them (4-D/5-D; no 2-D shorthand here).
    engine : {'threads', 'processes'} or LocalCluster
        'threads': in this process; 'processes': a LocalCluster started and stopped for
        this call (with ``on_failure='retry'`` a worker lost mid-run makes the job
        re-planned on the workers left and run again, exact either way; 'fail' raises
        WorkerError); a running LocalCluster (a lost worker heals the cluster and the
        call is retried on it, or raises with 'fail').
    on_failure : {'retry', 'fail'}
    threads : int, optional
        engine 'threads': compute at most this many tiles at once; with a plan of many
        more tiles, memory holds only that many windows and tile outputs.
    schedule : {'static', 'dynamic'}
        engine 'processes': a tile per worker, or ``tiles`` tiles (default 4 per worker)
        pulled by whichever process is free (a lost worker's unfinished tiles go to the
        others).
    tiles : int, optional
    progress : callable, optional
        ``progress(done, total)``, called as tiles finish (from any thread).

    Returns
    -------
    Execution
        ``.output`` (a torch.Tensor), ``.plan``, ``.engine``, ``.backend`` (the compute
        that ran, by its users' name), ``.wall_seconds``, ``.workers`` (per-worker
        seconds per phase and bytes moved), ``.failures`` (worker faults survived);
        ``.table()`` prints them.

    Raises
    ------
    ValueError
        A plan made for other shapes, a bias it was not made for, an unknown engine.
    WorkerError
        A worker lost and ``on_failure='fail'``.

    Notes
    -----
    Autograd: when x, weight or bias requires grad, the output carries a grad_fn on every
    engine; its backward runs on the same engine (a held cluster, a cluster started for
    the backward, or threads): each tile's gradients from torch's convolution_backward on
    its window, the halo parts added into their owners — torch.autograd's gradients of the
    single-node call, up to the order of the sums where windows overlap.

    Examples
    --------
    >>> import torch, haloconv
    >>> x, w = torch.randn(1, 16, 40, 40), torch.randn(16, 16, 3, 3)
    >>> p = haloconv.plan(x.shape, w.shape, padding=1, partition="rows", workers=2)
    >>> ex = haloconv.execute(p, x, w, engine="threads")
    >>> torch.equal(ex.output, torch.nn.functional.conv2d(x, w, padding=1)), len(ex.workers)
    (True, 2)
    """
    how = RunOptions.of(engine=engine, on_failure=on_failure, threads=threads, schedule=schedule, tiles=tiles,
                        progress=progress)
    ex = dispatch.run(plan, x, weight, bias, how)
    if isinstance(ex.output, np.ndarray):  # the array engine's: execute's output is a tensor
        import torch

        ex.output = torch.from_numpy(ex.output)
    return ex


def conv(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    partition: str | Sequence[int] | Partition = "auto",
    workers: int | None = None,
    worker_weights: Sequence[float] | None = None,
    engine: str | LocalCluster = "threads",
    ownership: str = "aligned",
    exchange: str = "neighbours",
    pipeline: int = 1,
    backend: str | None = None,
    memory_budget: int | None = None,
    profile: cost.Profile | str | None = None,
    on_failure: str = "retry",
    schedule: str = "static",
    tiles: int | None = None,
    out: ArrayLike | None = None,
) -> ArrayLike:
    """N-D convolution (cross-correlation, as torch's and scipy.ndimage.correlate's) split
    across workers, equal to the single-node call of the backend that computes it.

    The input is cut into tiles (by samples, rows, columns, 2-D/3-D grids or filters); each
    worker gets its tile and the halo its kernel needs from its neighbours, so nothing at a
    border is lost.  With backend 'torch' the result is bit for bit ``torch.nn.functional.
    conv{1,2,3}d`` on the whole input (``padding_mode`` as ``torch.nn.Conv{1,2,3}d``'s).

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray or dask.array.Array
        (N, C_in, *spatial) with 1 to 3 spatial dims, float32 or float64; or a 2-D (H, W)
        image when ``weight`` is 2-D too (as scipy.ndimage.correlate takes them).  A dask
        array gives a dask array back, lazily: a task per output chunk (the input's chunks,
        scaled by the stride), which Dask's scheduler runs; ``weight`` and ``bias`` are then
        numpy arrays, and the arguments that say how to split or run (partition, workers,
        engine, out, ...) do not apply.
    weight : torch.Tensor or numpy.ndarray
        (C_out, C_in / groups, *kernel), the dtype of ``x``; 2-D (kH, kW) with a 2-D ``x``.
    bias : torch.Tensor or numpy.ndarray, optional
        (C_out,).
    stride, padding, dilation, groups
        As torch.nn.functional.conv2d's; ``padding`` may be an int, one per spatial dim,
        'same' or 'valid'.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular', 'symmetric'} or float
        torch's names; scipy.ndimage calls them 'constant' (cval 0), 'mirror', 'nearest'
        and 'wrap'.  Beyond torch: 'symmetric' is scipy's 'reflect' (the edge pixel
        repeated), a number pads with that value (scipy's cval), and padding wider than
        the input folds under every mode as scipy.ndimage extends a line.
    partition : str, sequence of int or Partition
        'auto' (the cost model chooses), 'batch', 'rows' ('horizontal'), 'cols'
        ('vertical'), 'depth', 'grid', 'channels' (by filters), or split counts over
        (N, C_out, *spatial) such as (1, 1, 2, 2).
    workers : int, optional
        How many workers (default: this machine's cores; a held LocalCluster's size).
    worker_weights : sequence of float, optional
        Relative speeds of unequal workers: each gets a share in proportion.
    engine : {'threads', 'processes'} or LocalCluster
        'threads': tiles on threads of this process; 'processes': worker processes in a
        gloo group started for this call; a LocalCluster you hold: its processes.
    ownership, exchange, pipeline
        How the input is owned and halos travel (see haloconv.plan).
    backend : str, optional
        The tile compute: 'torch' (bitwise torch), 'auto' (the cost model's fastest) or
        one of ``haloconv.compute.backends.BACKENDS``, each with its guarantee
        (``haloconv.compute.backends.get(name).guarantee``).  Default: 'auto' for filters
        (one input and one output channel per group: single-channel and depthwise),
        which OpenCV-class backends compute many times faster; 'torch' for layers that
        mix channels, and whenever an input requires grad.
    memory_budget : int or str, optional
        Data bytes per worker (an int, or a size such as '1GB' or '512MiB'): the cost
        model keeps every worker's tile under it.
    profile : Profile or str, optional
        The cost model's measurements (default: what `haloconv calibrate` wrote).
    on_failure : {'retry', 'fail'}
        A worker lost mid-run: go on with the workers left (exact either way), or raise.
    schedule, tiles
        engine='processes' only: 'static' (a tile per worker) or 'dynamic' (``tiles``
        tiles, pulled by whichever process is free); see haloconv.execute.
    out : numpy.ndarray or torch.Tensor, optional
        Where to write the result (the result's shape and dtype, the type of ``x``); it is
        returned.  A numpy filter on the array engine writes its tiles straight into it:
        a buffer used again for many images costs no page faults (as OpenCV's ``dst``).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        (N, C_out, *spatial_out), the type and dtype of ``x`` (2-D for a 2-D ``x``).

    Raises
    ------
    TypeError
        An input that is not a float32/float64 tensor or array, or dtypes that differ.
    ValueError
        Shapes, arguments or a partition that do not fit, each naming the parameter.
    WorkerError
        A worker process died or hung and ``on_failure='fail'`` (or none was left).

    Notes
    -----
    Autograd: when x, weight or bias requires grad, the result carries a grad_fn on every
    engine, and its backward runs distributed on the same engine: torch.autograd's
    gradients of the single-node call, up to the order of the sums where windows overlap.

    Examples
    --------
    >>> import numpy as np, haloconv
    >>> img = np.random.default_rng(0).random((64, 48), dtype=np.float32)
    >>> sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    >>> edges = haloconv.conv(img, sobel, padding=1, partition="rows", workers=2)
    >>> edges.shape
    (64, 48)
    >>> import scipy.ndimage
    >>> bool(np.allclose(edges, scipy.ndimage.correlate(img, sobel, mode="constant"), atol=1e-5))
    True

    A layer that mixes channels, bit for bit torch's:

    >>> import torch
    >>> x, w = torch.randn(2, 16, 32, 32), torch.randn(32, 16, 3, 3)
    >>> y = haloconv.conv(x, w, padding=1, partition="grid", workers=4)
    >>> torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1))
    True
    """
    for name, v in (("x", x), ("weight", weight), ("bias", bias)):
        if v is not None and not isinstance(v, np.ndarray) and type(v).__module__.split(".")[0] != "torch" and not (
                name == "x" and dask_graph.is_dask(v)):
            raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(v).__name__}")
    image = getattr(x, "ndim", 0) == 2 and getattr(weight, "ndim", 0) == 2
    if image:
        x, weight = x[None, None], weight[None, None]
    spec = ConvSpec.from_args(tuple(x.shape), tuple(weight.shape), None if bias is None else tuple(bias.shape),
                              stride=stride, padding=padding, dilation=dilation, groups=groups,
                              padding_mode=padding_mode)
    training = any(getattr(v, "requires_grad", False) for v in (x, weight, bias))
    if workers is None and worker_weights is None and not isinstance(engine, str) and hasattr(engine, "workers"):
        workers = engine.workers  # a held LocalCluster's size
    how = PlanOptions.of(partition=partition, workers=workers, worker_weights=worker_weights, ownership=ownership,
                         exchange=exchange, pipeline=pipeline,
                         backend="torch" if backend is None and training else backend,  # bit for bit autograd's layer
                         memory_budget=memory_budget, profile=profile,
                         engine=engine if engine in ("threads", "processes") else "processes")
    if dask_graph.is_dask(x):
        asked = {"partition": partition != "auto", "workers": workers is not None, "engine": engine != "threads",
                 "worker_weights": worker_weights is not None, "schedule": schedule != "static",
                 "tiles": tiles is not None, "out": out is not None}
        y = _on_dask(x, weight, bias, [k for k, v in asked.items() if v], spec, how)
        return y[0, 0] if image else y
    run_how = RunOptions.of(engine=engine, on_failure=on_failure, schedule=schedule, tiles=tiles)
    p = plan_for(spec, how, weight if _filters(weight) else None)  # values: backends that depend on them
    if out is not None:  # checked before the work: the type of x, the result's shape and dtype
        _check_out(out, x, p.spec.output_shape[2:] if image else p.spec.output_shape)
    given = None if out is None else out[None, None] if image else out
    y = dispatch.run(p, x, weight, bias, run_how, out=given).output
    if out is not None:
        return out
    y = y[0, 0] if image else y
    return y.numpy() if isinstance(x, np.ndarray) and not isinstance(y, np.ndarray) else y


def _filters(weight: object) -> bool:
    """Filters whose values the planner may read: a float32/float64 tensor or array."""
    try:
        check_filters(weight)
    except TypeError:
        return False
    return True


def _check_out(out, x, shape) -> None:
    """``out``: the type of ``x`` (numpy array or tensor), the result's shape and x's dtype."""
    if isinstance(x, np.ndarray):
        array_threads.check_out(out, shape, x.dtype)
        return
    kind = type(x)
    if not isinstance(out, kind) or tuple(out.shape) != tuple(shape) or out.dtype != x.dtype:
        raise ValueError(f"out must be a {kind.__name__} of shape {tuple(shape)} and dtype {x.dtype}, got "
                         f"{type(out).__name__} {tuple(out.shape)} {out.dtype}")
