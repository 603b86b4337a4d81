"""The Python face: haloconv.conv, haloconv.plan, haloconv.execute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from haloconv.compute import backends, kernels
from haloconv.engines import Execution, LocalCluster, processes
from haloconv.engines import threads as threads_engine
from haloconv.engines.differentiable import differentiable, needs_grad
from haloconv.model import cost
from haloconv.outofcore import conv_file  # noqa: F401 - haloconv.conv_file, re-exported
from haloconv.planner import plan
from haloconv.planning.partition import Partition
from haloconv.planning.plan import Plan
from haloconv.planning.spec import IntOrTuple
from haloconv.progress import Progress

ArrayLike = torch.Tensor | np.ndarray
ENGINES = ("threads", "processes")  # by name; or a LocalCluster


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(value)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if t.dtype not in kernels.SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be float32 or float64, got dtype {value.dtype} "  # the caller's own dtype
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
            return cluster.retrying(on_failure, lambda: cluster.run(plan, x, w, b, progress=progress))

        def backward(x, w, b, g, needs):
            return cluster.retrying(on_failure, lambda: cluster.backward(plan, x, w, b, g, needs))
    elif not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)} or a LocalCluster, got {engine!r}")
    elif engine == "processes":
        if threads is not None:
            raise ValueError("threads applies to engine='threads'")

        def run(x, w, b):
            return processes.run(plan, x, w, b, on_failure=on_failure, schedule=schedule, tiles=tiles,
                                 progress=progress)

        def backward(x, w, b, g, needs):
            return processes.run_backward(plan, x, w, b, g, needs, on_failure=on_failure)
    else:
        if schedule != "static" or tiles is not None:
            raise ValueError("schedule and tiles apply to engine='processes'")

        def run(x, w, b):
            return threads_engine.run(plan, x, w, b, threads=threads, progress=progress)

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
    A 2-D ``x`` with a 2-D ``weight`` is one single-channel image and its kernel (as
    scipy.ndimage.correlate takes them): the result is 2-D too.
    ``memory_budget``: bytes per worker, an int or a size such as '1GB' or '512MiB'.
    """
    image = getattr(x, "ndim", 0) == 2 and getattr(weight, "ndim", 0) == 2
    if image:
        x, weight = x[None, None], weight[None, None]
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
    y = y[0, 0] if image else y
    return y.numpy() if is_numpy else y
