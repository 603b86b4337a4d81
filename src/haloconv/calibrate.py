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

from haloconv import kernels, methods
from haloconv.cost import Profile
from haloconv.engines import LocalCluster
from haloconv.engines.base import assemble_window
from haloconv.engines.worker import keep_heap
from haloconv.plan import make_plan
from haloconv.spec import ConvSpec


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _conv_seconds(method: str, spec: ConvSpec, repeat: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.input_shape, generator=g)
    w = torch.randn(spec.weight_shape, generator=g)
    plan = make_plan(spec, "batch", 1, backend=method)
    tile = plan.tiles[0]
    window = assemble_window(x, tile)  # a view when it can be
    tb = kernels.select_backend(spec, x, w, None)
    return _best(lambda: methods.compute(method, window, w, None, spec, tile.groups, tb, tile.first,
                                         tile.out.shape[2:]), repeat)


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
        for k in (3, 5, 7):
            spec = ConvSpec.from_args((1, 32, side * 2, side * 2), (32, 1, k, k), None, padding=k // 2, groups=32)
            prof.depthwise_rates.append([k * k, spec.flops() / _conv_seconds("torch", spec, repeat)])
        log("  torch  depthwise 32 channels: " + "  ".join(f"{k}: {r / 1e9:.1f}" for k, r in prof.depthwise_rates)
            + " GFLOP/s")
        prof.pointwise_rates = []
        for cout in (8, 64):
            for cin in (8, 64):
                spec = ConvSpec.from_args((1, cin, side * 2, side * 2), (cout, cin, 1, 1), None)
                prof.pointwise_rates.append([cin, cout, spec.flops() / _conv_seconds("torch", spec, repeat)])
        log("  torch  1x1: " + "  ".join(f"{a}->{b}: {r / 1e9:.1f}" for a, b, r in prof.pointwise_rates) + " GFLOP/s")
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
    """Scatters through a 2-process cluster (the master sends worker 1 its half), varying the
    bytes and, at equal bytes, the number of messages (one per channel's run of rows)."""
    shapes = [(1, 1, 2, 2**16), (1, 16, 2, 2**16), (1, 64, 2, 2**16), (1, 1, 2, 2**22), (1, 4, 2, 2**20),
              (1, 32, 2, 2**17)]
    if quick:
        shapes = shapes[::2]
    rows, ys = [], []
    with LocalCluster(2) as cluster:
        # the fixed cost of a call: a conv so small that nothing else counts
        spec = ConvSpec.from_args((1, 1, 4, 4), (1, 1, 1, 1), None)
        plan = make_plan(spec, "rows", 2)
        x, w = torch.zeros(spec.input_shape), torch.zeros(spec.weight_shape)
        prof.step_s = _best(lambda: cluster.run(plan, x, w, None), 10)
        for shape in shapes:
            spec = ConvSpec.from_args(shape, (1, shape[1], 1, 1), None)
            plan = make_plan(spec, "rows", 2)
            x = torch.zeros(spec.input_shape)
            best = None
            for _ in range(2 if quick else 4):
                sh = cluster.scatter(x, plan)
                tr = sh.execution.workers[0].traffic["scatter"]
                best = tr if best is None or tr["seconds"] < best["seconds"] else best
                cluster.free(sh)
            rows.append([1.0, best["messages_sent"], best["bytes_sent"]])
            ys.append(best["seconds"])
        # how many cores the workers really get (other load, hyper-threads, memory bandwidth):
        # two workers on halves against one worker on all of it — a compute-bound layer, and
        # a memory-bound single-channel filter, which scale differently
        cores = []
        for shape, wshape in (((1, 16, 512, 512), (16, 16, 3, 3)), ((1, 1, 2048, 2048), (1, 1, 3, 3))):
            spec = ConvSpec.from_args(shape, wshape, None, padding=1)
            x, w = torch.randn(spec.input_shape), torch.randn(spec.weight_shape)
            one, two = make_plan(spec, "rows", 1), make_plan(spec, "rows", 2)
            t1 = min(cluster.run(one, x, w, None).workers[0].seconds["compute"] for _ in range(3))
            t2 = min(max(s.seconds["compute"] for s in cluster.run(two, x, w, None).workers) for _ in range(3))
            cores.append(float(min(prof.cores, max(1.0, t1 / t2))))
        prof.cores, prof.filter_cores_ratio = cores[0], cores[1] / cores[0]
    # seconds = wake-up + messages x latency + bytes / bandwidth
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)
    _, alpha, beta = sol
    prof.latency_s = float(max(alpha, 5e-6))
    prof.bandwidth_Bps = float(1.0 / max(beta, 1e-12))
    log(f"  transport: latency {prof.latency_s * 1e6:.0f} us, bandwidth {prof.bandwidth_Bps / 1e9:.2f} GB/s, "
        f"fixed cost per call {prof.step_s * 1e3:.2f} ms, effective cores for 2 workers {prof.cores:.2f} "
        f"(single-channel filters {prof.cores * prof.filter_cores_ratio:.2f})")


def calibrate(quick: bool = False, log=print) -> Profile:
    keep_heap()  # measure compute as the engines' processes run it: with a warm heap
    prof = Profile()
    log("compute (1 thread per worker):")
    measure_compute(prof, quick, log)
    log("processes engine transport:")
    measure_transport(prof, quick, log)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    prof.source = f"calibrated {stamp}" + (" (quick)" if quick else "")
    return prof
