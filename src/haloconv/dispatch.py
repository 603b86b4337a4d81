"""One dispatch: which engine runs a plan on its inputs, decided in one place, for every
face (haloconv.conv, haloconv.execute, haloconv.conv_file, the CLI's in-memory, torchrun
and streamed runs).

- numpy arrays of one float dtype, on threads, whose backend computes arrays (OpenCV's
  filters): ``engines/inprocess/arrays`` — no torch is imported;
- otherwise tensors (arrays are seen as tensors without a copy): ``engines/threads``,
  ``engines/processes`` (a LocalCluster for the call), a held LocalCluster, or, under
  torchrun, every rank's share through ``haloconv.distributed``;
- with inputs that require grad, ``engines/differentiable`` wraps the engine's forward
  and backward (the same engine runs both);
- a streamed run (``stream``): the file in this process (``engines/stream/threads``), on
  worker processes (``engines/stream``) or on torchrun ranks (``stream.run_spmd``).

docs/architecture.md, "One call, top to bottom", draws the path.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from haloconv.compute import backends
from haloconv.engines.execution import Execution
from haloconv.engines.inprocess import arrays as array_threads
from haloconv.options import RunOptions, StreamOptions
from haloconv.tiling.plan import Plan

if TYPE_CHECKING:
    import torch

    from haloconv.files.arrays import DiskArray

log = logging.getLogger(__name__)


def arrays(x: object, weight: object, bias: object) -> bool:
    """numpy arrays of one float dtype (float32 or float64): what the array engine takes."""
    given = [v for v in (x, weight, bias) if v is not None]
    return all(isinstance(v, np.ndarray) for v in given) and x.dtype in (np.float32, np.float64) and all(
        v.dtype == x.dtype for v in given)


def on_arrays(plan: Plan, x: object, weight: object, bias: object, how: RunOptions) -> bool:
    """Whether ``run`` takes the array engine for these inputs: numpy in, numpy out."""
    return how.engine == "threads" and arrays(x, weight, bias) and array_threads.runs(plan)


def run(plan: Plan, x, weight, bias, how: RunOptions, out=None) -> Execution | None:
    """Run ``plan`` on ``x``, ``weight``, ``bias`` as ``how`` says; the Execution (its output
    a numpy array on the array engine, a tensor otherwise; written into ``out`` when given:
    the result's shape and dtype, the type of the output).  Under torchrun
    (``how.engine == 'torchrun'``) every rank calls it, ``x`` on rank 0 only; rank 0 gets
    the Execution, the others None."""
    if on_arrays(plan, x, weight, bias, how):
        return array_threads.run(plan, x, weight, bias, threads=how.threads, progress=how.progress, out=out)
    if how.engine == "torchrun":
        return _torchrun(plan, x, weight, bias)
    xt, wt, bt = tensors(x, weight, bias)
    check_inputs(plan, xt, wt, bt)
    from haloconv.engines.differentiable import differentiable, needs_grad

    forward, backward = _engine(plan, how)
    ex = differentiable(forward, backward, xt, wt, bt) if needs_grad(xt, wt, bt) else forward(xt, wt, bt)
    if out is not None:
        out[...] = ex.output.numpy() if isinstance(out, np.ndarray) else ex.output
        ex.output = out
    return ex


def _engine(plan: Plan, how: RunOptions):
    """(forward, backward) of the engine ``how`` names, each taking tensors."""
    from haloconv.engines.inprocess import tensors as threads_engine
    from haloconv.engines.processes import local as processes

    engine = how.engine
    if isinstance(engine, processes.LocalCluster):
        def forward(x, w, b):
            return engine.retrying(how.on_failure, lambda: engine.run(plan, x, w, b, progress=how.progress))

        def backward(x, w, b, g, needs):
            return engine.retrying(how.on_failure, lambda: engine.backward(plan, x, w, b, g, needs))
    elif engine == "processes":
        def forward(x, w, b):
            return processes.run(plan, x, w, b, how)

        def backward(x, w, b, g, needs):
            return processes.run_backward(plan, x, w, b, g, needs, timeout=how.timeout, on_failure=how.on_failure)
    elif engine == "threads":
        def forward(x, w, b):
            return threads_engine.run(plan, x, w, b, threads=how.threads, progress=how.progress)

        def backward(x, w, b, g, needs):
            return threads_engine.backward(plan, x, w, b, g, needs, threads=how.threads)
    else:
        raise ValueError(f"engine must be one of ['processes', 'threads'] or a LocalCluster, got {engine!r}")
    return forward, backward


def tensors(x: object, weight: object, bias: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The inputs as tensors (numpy arrays without a copy), one dtype and device."""
    xt = _as_tensor("x", x)
    wt = _as_tensor("weight", weight)
    bt = None if bias is None else _as_tensor("bias", bias)
    for name, t in (("weight", wt), ("bias", bt)):
        if t is not None and t.dtype != xt.dtype:
            raise TypeError(f"{name} dtype {str(t.dtype).removeprefix('torch.')} must match x dtype "
                            f"{str(xt.dtype).removeprefix('torch.')}")
        if t is not None and t.device != xt.device:
            raise ValueError(f"{name} is on {t.device} but x is on {xt.device}")
    return xt, wt, bt


def _as_tensor(name: str, value: object) -> torch.Tensor:
    import torch

    from haloconv.compute import kernels

    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        if any(s < 0 for s in value.strides):  # a reversed view (x[::-1]): torch takes no negative strides
            value = np.ascontiguousarray(value)
        t = torch.from_numpy(value)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if t.dtype not in kernels.SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be float32 or float64, got dtype {value.dtype} "  # the caller's own dtype
            "(convert integer images with .astype(np.float32))"
        )
    return t


def check_inputs(plan: Plan, x, weight, bias) -> None:
    """The inputs are those ``plan`` was made for (shapes, a bias or not), and its backend
    takes these filters (a backend may depend on their values)."""
    if tuple(x.shape) != plan.spec.input_shape or tuple(weight.shape) != plan.spec.weight_shape:
        raise ValueError(
            f"plan was made for x{list(plan.spec.input_shape)} and weight{list(plan.spec.weight_shape)}, "
            f"got x{list(x.shape)} and weight{list(weight.shape)}"
        )
    if (bias is not None) != plan.spec.has_bias:
        raise ValueError(f"plan was made {'with' if plan.spec.has_bias else 'without'} a bias")
    backends.check(plan.backend, plan.spec, weight)


def _torchrun(plan: Plan, x, weight, bias) -> Execution | None:
    """Every rank of a torch.distributed job: rank 0 scatters ``x``, each rank exchanges its
    halos and computes its tile, rank 0 gathers the output and every rank's traffic."""
    import torch
    import torch.distributed as dist

    from haloconv import distributed as hd
    from haloconv.compute import kernels
    from haloconv.engines.execution import execution_from_reports

    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device(
        "cpu")
    wt = torch.as_tensor(weight).to(device)
    bt = None if bias is None else torch.as_tensor(bias).to(device)
    xt = torch.as_tensor(x).to(device) if rank == 0 else None
    t0 = time.perf_counter()
    y = hd.gather(hd.conv(hd.scatter(xt, plan), wt, bt, plan=plan), plan)
    wall = time.perf_counter() - t0
    stats = [None] * world
    dist.gather_object(hd.traffic(), stats if rank == 0 else None, dst=0)
    if rank != 0:
        return None
    backend = backends.label(plan.backend, kernels.select_backend(plan.spec, xt, wt, bt))
    return execution_from_reports(y, plan, "torchrun", backend, wall, dict(enumerate(stats)))


def stream(source: DiskArray, tiler, weight, bias, out: Path, fmt: str, how: StreamOptions,
           engine: str = "threads"):
    """A streamed run of ``source`` into ``out``: in this process (engine 'threads'), on
    worker processes ('processes') or on every torchrun rank ('torchrun'); the tiles cut
    by ``tiler`` (the planner's StreamTiler: dispatch sits beside the planner, not under
    it).  The output is claimed first (stream_job.claim_output: refused, resumed, or found
    complete, before any worker starts)."""
    from haloconv.engines.stream import job as stream_job
    from haloconv.engines.stream import threads as stream_threads
    from haloconv.files import arrays

    if source.kind != "raw" or fmt == "zarr":  # every library the files need, before anything is created
        arrays.import_zarr()
    if engine == "torchrun":  # rank 0 claims the output inside, and every rank hears its answer
        from haloconv.engines.stream import workers as stream_engine

        return stream_engine.run_spmd(source, tiler, weight, bias, out, fmt, how)
    if stream_job.claim_output(out, source, tiler.spec, weight, bias, tiler.backend, how.dtype, fmt,
                               resume=how.resume, overwrite=how.overwrite):
        log.info("%s is complete (its receipt is this computation's); nothing to do", out)
        return stream_job.complete_result(source, tiler, weight, bias, how.dtype, how.memory_budget, out)
    if engine == "threads":
        return stream_threads.run(source, tiler, weight, bias, out, fmt, how)
    from haloconv.engines.stream import workers as stream_engine

    return stream_engine.run(source, tiler, weight, bias, out, fmt, how)
