"""`haloconv calibrate`: measure this machine into a cost-model Profile.

Transport: scatters of growing size through a LocalCluster of 2 (the master's link, as the
processes engine uses it), fitted to latency + bytes / bandwidth.  Compute: each backend
on representative shapes with one thread (what a worker uses), best of a few runs.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
import torch

from haloconv import kernels
from haloconv.cost import Profile
from haloconv.engines import LocalCluster
from haloconv.engines.base import as_one_tile
from haloconv.engines.worker import keep_heap
from haloconv.plan import make_plan
from haloconv.spec import ConvSpec


def _best(fn, repeat: int, min_seconds: float = 0.1) -> float:
    """Best time of ``fn``: at least ``repeat`` runs and ``min_seconds`` of them (up to
    10 x ``repeat``), after two warm-ups — the first runs of a shape fault in its buffers
    and build oneDNN's primitive; a short figure taken then was 5-20x off (1x1 8->64 conv:
    1.4 GFLOP/s measured against 26 on a warm heap)."""
    fn()
    fn()
    times: list[float] = []
    while len(times) < repeat or (sum(times) < min_seconds and len(times) < 10 * repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


CALLER_THREADS = torch.get_num_threads()  # what a caller of haloconv.conv runs torch on


def _conv_seconds(method: str, spec: ConvSpec, repeat: int) -> float:
    """One thread computing ``spec`` as a tile, with the torch backend the caller's
    single-node call selects (at the caller's thread count, CALLER_THREADS): the engines'
    workers compute on one thread with that backend (a 1x1 conv: oneDNN, 20 ms for
    1x64x512^2 — torch would pick im2col + GEMM at 1 thread, 40 ms)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.input_shape, generator=g)
    w = torch.randn(spec.weight_shape, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(CALLER_THREADS)
    tb = kernels.select_backend(spec, x, w, None)
    torch.set_num_threads(threads)
    return _best(as_one_tile(method, spec, x, w, tb), repeat)


def measure_compute(prof: Profile, quick: bool = False, log=print) -> None:
    repeat = 2 if quick else 3
    side = 128 if quick else 256
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = []
        # layers of 16-32 channels are common: measured, not interpolated between 8 and 64
        couts = (1, 8, 64) if quick else (1, 8, 16, 32, 64)
        shapes = ((1, 3), (1, 7), (1, 15), (8, 3), (64, 3)) if quick else (
            (1, 3), (1, 7), (1, 15), (8, 3), (16, 3), (32, 3), (64, 3))
        for cout in couts:
            for cin, k in shapes:
                # ~equal work per shape; small-channel convs on big images (memory-bound, as in use)
                s = min(8 * side, max(96, int(4 * side / math.sqrt(max(1.0, cin * cout * k * k / 9)))))
                spec = ConvSpec.from_args((1, cin, s, s), (cout, cin, k, k), None, padding=k // 2)
                t = _conv_seconds("torch", spec, repeat)
                rates.append([cin * k * k, cout, spec.flops() / t])
            row = rates[-len(shapes):]
            log(f"  torch  C_out {cout:3d}: " + "  ".join(f"inner {r[0]}: {r[2] / 1e9:.1f}" for r in row) + " GFLOP/s")
        prof.torch_rates = rates
        prof.depthwise_rates = []
        for c in (4, 16, 32):  # oneDNN fills SIMD blocks of 16 channels: few channels run at a fraction
            for k in (3, 5, 7):
                plane = side * (4 if c < 16 else 2)  # few channels: images big enough to be memory-bound
                spec = ConvSpec.from_args((1, c, plane, plane), (c, 1, k, k), None, padding=k // 2, groups=c)
                prof.depthwise_rates.append([k * k, c, spec.flops() / _conv_seconds("torch", spec, repeat)])
        log("  torch  depthwise: " + "  ".join(f"{c} ch {k}: {r / 1e9:.1f}" for k, c, r in prof.depthwise_rates)
            + " GFLOP/s")
        prof.pointwise_rates = []
        for cout in (8, 64):
            for cin in (8, 64):
                spec = ConvSpec.from_args((1, cin, side * 2, side * 2), (cout, cin, 1, 1), None)
                prof.pointwise_rates.append([cin, cout, spec.flops() / _conv_seconds("torch", spec, repeat)])
        log("  torch  1x1: " + "  ".join(f"{a}->{b}: {r / 1e9:.1f}" for a, b, r in prof.pointwise_rates) + " GFLOP/s")
        ratios = []  # stride 2 against the rate the table gives the same conv
        for cin, cout, side2 in ((16, 32, 3 * side), (3, 32, 4 * side)):
            spec = ConvSpec.from_args((1, cin, side2, side2), (cout, cin, 3, 3), None, padding=1, stride=2)
            ratios.append(spec.flops() / _conv_seconds("torch", spec, repeat) / prof.torch_rate(cin * 9, cout))
        prof.strided_ratio = float(np.sqrt(ratios[0] * ratios[1]))
        log(f"  torch  stride 2: {prof.strided_ratio:.2f} x the FLOP/s of stride 1")
        taps = []
        for k in (3, 7):
            spec = ConvSpec.from_args((1, 1, 4 * side, 4 * side), (1, 1, k, k), None, padding=k // 2)
            t = _conv_seconds("ndimage", spec, repeat)
            taps.append((4 * side + k - 1 - k // 2 * 2) ** 2 * k * k / t)
        prof.ndimage_taps_per_s = float(np.median(taps))
        log(f"  ndimage: {prof.ndimage_taps_per_s / 1e9:.2f} G taps/s")
        # fft: two shapes, two unknowns (transform and channel-mixing cost)
        rows, ys = [], []
        for n_side, c, k in ((4 * side, 1, 15), (side, 8, 9)):
            spec = ConvSpec.from_args((1, c, n_side, n_side), (c, c, k, k), None, padding=k // 2)
            t = _conv_seconds("fft", spec, repeat)
            prof_a, prof_b = Profile(fft_s_per_nlogn=1.0, fft_s_per_mac=0.0), Profile(fft_s_per_nlogn=0.0,
                                                                                    fft_s_per_mac=1.0)
            win = (1, c, n_side, n_side)
            rows.append([p.compute_seconds("fft", spec, win, spec.output_shape, 1) for p in (prof_a, prof_b)])
            ys.append(t)
        sol, *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)
        prof.fft_s_per_nlogn, prof.fft_s_per_mac = (float(max(v, 1e-13)) for v in sol)
        log(f"  fft: {prof.fft_s_per_nlogn * 1e9:.2f} ns per element-log, {prof.fft_s_per_mac * 1e9:.2f} ns per MAC")
        buf = torch.empty(64 * 2**20 // 4)
        t = _best(lambda: buf.clone(), repeat)
        prof.copy_Bps = buf.numel() * 4 / t
        log(f"  memory copy: {prof.copy_Bps / 1e9:.2f} GB/s")
    finally:
        torch.set_num_threads(threads)


def measure_transport(prof: Profile, quick: bool = False, log=print) -> None:
    """Scatters through a 2-process cluster (the master sends worker 1 its half), median of
    several, interleaved: bandwidth from one 32 MB message against a 4 kB one (what layers'
    boxes weigh: beyond the last-level cache, where a byte costs more than within — one
    16 MB message went at 5.5 GB/s here, 16 runs of 1.2 MB at 4), latency per message from
    the same 32 MB in 64 runs.  A least-squares fit over many shapes swung 5-13 GB/s between
    calibrations (its intercept took what the slope should have)."""
    shapes = {"tiny": (1, 1, 2, 2**10), "one": (1, 1, 2, 2**23), "many": (1, 64, 2, 2**17)}
    with LocalCluster(2) as cluster:
        # the fixed cost of a call: a conv so small that nothing else counts
        spec = ConvSpec.from_args((1, 1, 4, 4), (1, 1, 1, 1), None)
        plan = make_plan(spec, "rows", 2)
        x, w = torch.zeros(spec.input_shape), torch.zeros(spec.weight_shape)
        prof.step_s = _best(lambda: cluster.run(plan, x, w, None), 10)
        one = make_plan(spec, "rows", 1)
        prof.step1_s = _best(lambda: cluster.run(one, x, w, None), 10)
        jobs = {}
        for name, shape in shapes.items():
            spec = ConvSpec.from_args(shape, (1, shape[1], 1, 1), None)
            jobs[name] = (make_plan(spec, "rows", 2), torch.randn(spec.input_shape))
        seconds: dict[str, list[float]] = {name: [] for name in shapes}
        traffic: dict[str, dict] = {}
        for _ in range(6 if quick else 25):
            for name, (plan, x) in jobs.items():
                sh = cluster.scatter(x, plan)
                traffic[name] = sh.execution.workers[0].traffic["scatter"]
                seconds[name].append(traffic[name]["seconds"])
                cluster.free(sh)
    t = {name: float(np.median(v)) for name, v in seconds.items()}
    nbytes = traffic["one"]["bytes_sent"] - traffic["tiny"]["bytes_sent"]
    prof.bandwidth_Bps = nbytes / max(t["one"] - t["tiny"], 1e-9)
    extra = traffic["many"]["messages_sent"] - traffic["one"]["messages_sent"]
    prof.latency_s = float(max(5e-6, (t["many"] - t["one"]) / extra))
    log(f"  transport: latency {prof.latency_s * 1e6:.0f} us, bandwidth {prof.bandwidth_Bps / 1e9:.2f} GB/s, "
        f"fixed cost per call {prof.step_s * 1e3:.2f} ms ({prof.step1_s * 1e3:.2f} ms for one tile)")


def _busy_counts(cores: float) -> list[int]:
    """Process counts the concurrency curve is measured at: 1, powers of 2 up to the cores,
    the cores, one more, twice as many (at most 16)."""
    c = max(1, int(cores))
    return sorted({1, c, c + 1, 2 * c, *(2**i for i in range(1, 5) if 2**i < c)} & set(range(1, 17)))


def measure_concurrency(prof: Profile, quick: bool = False, log=print) -> None:
    """How many cores n processes busy at once really get (other load, hyper-threads, memory
    bandwidth, more processes than cores): each computes the same problem back to back, all
    at once, against one alone — for a compute-bound layer and memory-bound single-channel
    filters per backend, which scale differently.  Measured here on 2 cores: a layer 1.8 cores
    for 2 processes; a torch filter (oneDNN pads its channel to 16) 1.3, the same filter by
    ndimage 2.0."""
    counts = _busy_counts(prof.cores)
    probes = (((1, 16, 256, 512), (16, 16, 3, 3), "torch"), ((1, 1, 1024, 2048), (1, 1, 3, 3), "torch"),
              ((1, 1, 1024, 2048), (1, 1, 3, 3), "ndimage"), ((1, 1, 1024, 1024), (1, 1, 15, 15), "fft"))
    curves = []
    with LocalCluster(max(counts)) as cluster:
        for shape, wshape, backend in probes:
            spec = ConvSpec.from_args(shape, wshape, None, padding=wshape[-1] // 2)
            alone = cluster.throughput(spec, 1, 3, backend=backend) / 3
            repeat = max(3, math.ceil((0.04 if quick else 0.1) / alone))
            ratios: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(2 if quick else 5):
                # paired: each count against one process measured just before it, so a change of
                # the machine's load between trials falls on both; the median over trials
                for n in counts:
                    one = cluster.throughput(spec, 1, repeat, backend=backend)
                    ratios[n].append(n * one / cluster.throughput(spec, n, repeat, backend=backend))
            curves.append({n: float(np.median(ratios[n])) for n in counts})
    prof.concurrency = [[n, *(c[n] for c in curves)] for n in counts]
    log("  cores n busy processes get (torch layers / torch filters / ndimage / fft): "
        + "  ".join(f"{n}: " + "/".join(f"{v:.2f}" for v in row) for n, *row in prof.concurrency))


def calibrate(quick: bool = False, log=print) -> Profile:
    keep_heap()  # measure compute as the engines' processes run it: with a warm heap
    prof = Profile()
    log("compute (1 thread per worker):")
    measure_compute(prof, quick, log)
    log("processes engine transport:")
    measure_transport(prof, quick, log)
    measure_concurrency(prof, quick, log)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    prof.source = f"calibrated {stamp}" + (" (quick)" if quick else "")
    return prof
