"""The Python face: haloconv.conv, haloconv.plan, haloconv.execute."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from haloconv.compute import backends, kernels
from haloconv.engines import ENGINES, Execution, LocalCluster, processes
from haloconv.engines import threads as threads_engine
from haloconv.engines.differentiable import differentiable, needs_grad
from haloconv.engines.host import default_workers
from haloconv.model import cost
from haloconv.planning.partition import Partition
from haloconv.planning.plan import Plan, check_args, make_plan
from haloconv.planning.spec import ConvSpec, IntOrTuple

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(value)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if t.dtype not in kernels.SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be float32 or float64, got dtype {t.dtype} "
            "(convert integer images with .astype(np.float32))"
        )
    return t


def _inputs(x: object, weight: object, bias: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    is_numpy = isinstance(x, np.ndarray)
    xt = _as_tensor("x", x)
    wt = _as_tensor("weight", weight)
    bt = None if bias is None else _as_tensor("bias", bias)
    for name, t in (("weight", wt), ("bias", bt)):
        if t is not None and t.dtype != xt.dtype:
            raise TypeError(f"{name} dtype {t.dtype} must match x dtype {xt.dtype}")
        if t is not None and t.device != xt.device:
            raise ValueError(f"{name} is on {t.device} but x is on {xt.device}")
    return xt, wt, bt, is_numpy


def plan(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None = None,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    partition: str | Sequence[int] | Partition = "auto",
    workers: int | None = None,
    worker_weights: Sequence[float] | None = None,
    ownership: str = "aligned",
    exchange: str = "neighbours",
    pipeline: int = 1,
    backend: str | None = None,
    memory_budget: int | None = None,
    profile: cost.Profile | str | None = None,
    engine: str = "processes",
) -> Plan:
    """The Plan for a convolution of these shapes (no data, no communication).

    ``partition='auto'`` (or ``backend='auto'``) lets the cost model choose: the candidate
    (partitions, hybrids, a single worker; backends) with the least predicted time on
    ``engine`` under ``profile`` (default: the calibrated one, see `haloconv calibrate`),
    within ``memory_budget`` bytes per worker — counted as the data a worker's tile holds
    (its window, filters and output, as the cost model predicts them), not the process's
    resident memory; conv_file's ``memory_budget`` is the whole process (see its docstring).
    ``weight_shape`` may be the filters themselves (a tensor or array): then backends whose
    use depends on the filter's values (compute/backends: separable) are considered too."""
    values = None  # the filters themselves, when given: backends that depend on their values can be chosen
    if hasattr(weight_shape, "shape"):
        values = _as_tensor("weight", weight_shape)
        weight_shape = tuple(values.shape)
    if hasattr(x_shape, "shape"):
        x_shape = tuple(x_shape.shape)
    if bias_shape is not None and hasattr(bias_shape, "shape"):
        bias_shape = tuple(bias_shape.shape)
    spec = ConvSpec.from_args(
        x_shape, weight_shape, bias_shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode,
    )
    part = Partition.of(partition)  # a name, split counts or a Partition (clear errors naming partition)
    if workers is None:
        if worker_weights is not None:
            workers = len(worker_weights)
        elif part.kind == "counts":
            workers = max(1, math.prod(part.split))  # an explicit split: one worker per tile
        else:
            workers = default_workers()
    if backend is None:
        backend = backends.default_for(spec)
    if backend != "auto":
        backends.check(backend, spec, values)
    check_args(spec, partition, workers, worker_weights, ownership, exchange, pipeline,
               "torch" if backend == "auto" else backend)
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                      or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if part.kind == "auto" or backend == "auto" or memory_budget is not None:
        prof = profile if isinstance(profile, cost.Profile) else cost.load_profile(profile)
        if part.kind == "auto":
            return cost.choose(spec, workers, prof, backend=backend, engine=engine, memory_budget=memory_budget,
                               ownership=ownership, exchange=exchange, weights=worker_weights, weight=values)
        # a given partition: the model picks the backend (and checks the budget)
        base = make_plan(spec, partition, workers, worker_weights, ownership, exchange, pipeline)
        return cost.rank_backends(base, prof, backend, engine, memory_budget, weight=values)[0].plan
    return make_plan(spec, partition, workers, worker_weights, ownership, exchange, pipeline, backend)


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
) -> Execution:
    """Run ``plan`` on data; returns the output tensor with per-worker statistics.

    ``engine``: 'threads' (in this process), 'processes' (a LocalCluster started and
    stopped for this call; with ``on_failure='retry'`` a worker lost mid-run makes the job
    re-planned on the workers left and run again, exact either way; 'fail' raises
    WorkerError), or a running LocalCluster (a lost worker raises WorkerError).
    ``threads`` (engine 'threads'): compute at most this many tiles at once — with a plan
    of many more tiles, memory holds only that many windows and tile outputs.
    ``schedule`` (engine 'processes'): 'static' (a tile per worker) or 'dynamic' (``tiles``
    tiles, default 4 per worker, pulled by whichever process is free; a lost worker's
    unfinished tiles go to the others).

    Autograd: when x, weight or bias requires grad, the output carries a grad_fn on every
    engine; its backward runs on the same engine (a held cluster, a cluster started for
    the backward, or threads): each tile's gradients from torch's convolution_backward on
    its window, the halo parts added into their owners — torch.autograd's gradients of the
    single-node call, up to the order of the sums where windows overlap."""
    xt, wt, bt, _ = _inputs(x, weight, bias)
    if tuple(xt.shape) != plan.spec.input_shape or tuple(wt.shape) != plan.spec.weight_shape:
        raise ValueError(
            f"plan was made for x{list(plan.spec.input_shape)} and weight{list(plan.spec.weight_shape)}, "
            f"got x{list(xt.shape)} and weight{list(wt.shape)}"
        )
    if (bt is not None) != plan.spec.has_bias:
        raise ValueError(f"plan was made {'with' if plan.spec.has_bias else 'without'} a bias")
    backends.check(plan.backend, plan.spec, wt)  # a backend that depends on the filter's values
    if isinstance(engine, LocalCluster):
        if schedule != "static" or tiles is not None:
            raise ValueError("schedule='dynamic' on a LocalCluster you hold: cluster.run_dynamic(plan, ...) with a "
                             "plan of many tiles")
        cluster = engine

        def run(x, w, b):
            return cluster.retrying(on_failure, lambda: cluster.run(plan, x, w, b))

        def backward(x, w, b, g, needs):
            return cluster.retrying(on_failure, lambda: cluster.backward(plan, x, w, b, g, needs))
    elif not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)} or a LocalCluster, got {engine!r}")
    elif engine == "processes":
        if threads is not None:
            raise ValueError("threads applies to engine='threads'")

        def run(x, w, b):
            return processes.run(plan, x, w, b, on_failure=on_failure, schedule=schedule, tiles=tiles)

        def backward(x, w, b, g, needs):
            return processes.run_backward(plan, x, w, b, g, needs, on_failure=on_failure)
    else:
        if schedule != "static" or tiles is not None:
            raise ValueError("schedule and tiles apply to engine='processes'")

        def run(x, w, b):
            return threads_engine.run(plan, x, w, b, threads=threads)

        def backward(x, w, b, g, needs):
            return threads_engine.backward(plan, x, w, b, g, needs, threads=threads)
    if needs_grad(xt, wt, bt):
        return differentiable(run, backward, xt, wt, bt)
    return run(xt, wt, bt)


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
) -> ArrayLike:
    """N-D convolution split across workers, equal to the single-node call of the backend
    that computes it: bit for bit torch.nn.Conv{1,2,3}d's result with backend 'torch'.

    ``x`` is (N, C_in, *spatial) with 1-3 spatial dims, ``weight`` (C_out, C_in/groups,
    *kernel), ``bias`` (C_out,) or None.  Returns the type (tensor/ndarray) and dtype of x.
    ``backend``: 'torch' (bitwise torch), 'auto' (the cost model's fastest), or another of
    haloconv.compute.backends.BACKENDS (each one's guarantee:
    ``haloconv.compute.backends.get(name).guarantee``).  Default (None): 'torch' for layers
    that mix channels and whenever an input requires grad; 'auto' for filters (one input
    and one output channel per group: single-channel and depthwise), which OpenCV-class
    backends compute many times faster than torch.
    ``schedule``/``tiles``: engine='processes' only, see haloconv.execute.
    """
    xt, wt, bt, is_numpy = _inputs(x, weight, bias)
    if backend is None and needs_grad(xt, wt, bt):
        backend = "torch"  # training: bit for bit the layer autograd would run
    if workers is None and isinstance(engine, LocalCluster) and worker_weights is None:
        workers = engine.workers
    p = plan(
        tuple(xt.shape), wt, None if bt is None else tuple(bt.shape),
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, partition=partition, workers=workers,
        worker_weights=worker_weights, ownership=ownership, exchange=exchange, pipeline=pipeline,
        backend=backend, memory_budget=memory_budget, profile=profile,
        engine=engine if isinstance(engine, str) else "processes",
    )
    y = execute(p, xt, wt, bt, engine=engine, on_failure=on_failure, schedule=schedule, tiles=tiles).output
    return y.numpy() if is_numpy else y


def _budget_bytes(memory_budget: object) -> int:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive int of bytes, got {memory_budget!r}")
    return memory_budget


def conv_file(
    input: str | os.PathLike,
    weight: ArrayLike,
    output: str | os.PathLike,
    bias: ArrayLike | None = None,
    *,
    memory_budget: int,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    workers: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    on_failure: str = "retry",
    timeout: float = 60.0,
    block: Sequence[int | None] | None = None,
    profile: cost.Profile | str | None = None,
    spmd: bool = False,
    engine: str = "threads",
):
    """Convolve a file bigger than memory into a file, out of core (see engines/stream.py).

    ``input``: .npy, TIFF (contiguous, striped or tiled) or .zarr, read as files.images.read_input
    does ((H, W) -> (1, 1, H, W), integers scaled to [0, 1]).  ``output``: a path ending in
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
    """
    from haloconv.engines import stream, stream_threads
    from haloconv.files import arrays

    if engine not in ("threads", "processes"):
        raise ValueError(f"engine must be 'threads' or 'processes' for a streamed run, got {engine!r}")
    budget = _budget_bytes(memory_budget)
    out = Path(output)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in arrays.FORMATS:
        raise ValueError(f"output must end in one of {['.' + f for f in arrays.FORMATS]}, got {str(out)!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    source = arrays.open_input(input)
    wt = _as_tensor("weight", weight)
    bt = None if bias is None else _as_tensor("bias", bias)
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
        return stream.run_spmd(source, spec, wt, bt, out, fmt, memory_budget=budget, backend=backend, dtype=dtype,
                               resume=resume, block=None if block is None else tuple(block), log=log_to_stdout)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if engine == "threads":
        return stream_threads.run(source, spec, wt, bt, out, fmt, memory_budget=budget, threads=workers,
                                  backend=backend, dtype=dtype, resume=resume,
                                  block=None if block is None else tuple(block), log=log_to_stdout)
    return stream.run(source, spec, wt, bt, out, fmt, memory_budget=budget, workers=workers, backend=backend,
                      dtype=dtype, resume=resume, on_failure=on_failure, timeout=timeout,
                      block=None if block is None else tuple(block), log=log_to_stdout)


def log_to_stdout(message: str) -> None:
    print(message, flush=True)
