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
    window = x if tile.window_is_view else None
    if window is None:
        from haloconv.engines.base import assemble_window
        window = assemble_window(x, tile)
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
        for cin, k in ((1, 1), (1, 3), (3, 3), (16, 3), (64, 3), (256, 3)):
            cout = max(cin, 8) if cin > 1 else 8
            s = max(32, int(side * math.sqrt(16 / max(cin, 16))))
            spec = ConvSpec.from_args((1, cin, s, s), (cout, cin, k, k), None, padding=k // 2)
            t = _conv_seconds("torch", spec, repeat)
            rates.append([cin * k * k, spec.flops() / t])
            log(f"  torch  C_in/groups x kernel = {cin * k * k:5d}: {spec.flops() / t / 1e9:6.2f} GFLOP/s")
        prof.torch_rates = rates
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
    """Scatter through a 2-process cluster: the master's link carries half of each tensor."""
    sizes = [2**14, 2**18, 2**22] if quick else [2**14, 2**18, 2**21, 2**23, 2**24]  # float32 elements
    xs, ys = [], []
    with LocalCluster(2) as cluster:
        for n in sizes:
            spec = ConvSpec.from_args((1, 1, 2, n // 2), (1, 1, 1, 1), None)
            plan = make_plan(spec, "rows", 2)
            x = torch.zeros(spec.input_shape)
            for _ in range(2 if quick else 3):
                sh = cluster.scatter(x, plan)
                tr = sh.execution.workers[0].traffic["scatter"]
                xs.append([tr["messages_sent"], tr["bytes_sent"]])
                ys.append(tr["seconds"])
                cluster.free(sh)
        # the fixed cost of a call: a conv so small that nothing else counts
        spec = ConvSpec.from_args((1, 1, 4, 4), (1, 1, 1, 1), None)
        plan = make_plan(spec, "rows", 2)
        x, w = torch.zeros(spec.input_shape), torch.zeros(spec.weight_shape)
        prof.step_s = _best(lambda: cluster.run(plan, x, w, None), 10)
    sol, *_ = np.linalg.lstsq(np.array(xs, dtype=float), np.array(ys), rcond=None)
    alpha, beta = sol
    prof.latency_s = float(max(alpha, 1e-6))
    prof.bandwidth_Bps = float(1.0 / max(beta, 1e-12))
    log(f"  transport: latency {prof.latency_s * 1e6:.0f} us, bandwidth {prof.bandwidth_Bps / 1e9:.2f} GB/s, "
        f"fixed cost per call {prof.step_s * 1e3:.2f} ms")


def calibrate(quick: bool = False, log=print) -> Profile:
    prof = Profile()
    log("compute (1 thread per worker):")
    measure_compute(prof, quick, log)
    log("processes engine transport:")
    measure_transport(prof, quick, log)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    prof.source = f"calibrated {stamp}" + (" (quick)" if quick else "")
    return prof
