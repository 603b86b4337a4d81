"""`haloconv calibrate`: measure this machine into a cost-model Profile.

Transport: scatters of growing size through a LocalCluster of 2 (the master's link, as the
processes engine uses it), fitted to latency + bytes / bandwidth.  Compute: each backend
on representative shapes with one thread (what a worker uses), best of a few runs.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from haloconv.compute import backends, kernels
from haloconv.costmodel.cost import Profile
from haloconv.engines import LocalCluster
from haloconv.engines.inprocess.helpers import helpers
from haloconv.engines.processes.ops.probes import as_one_tile
from haloconv.engines.processes.worker import keep_heap
from haloconv.files import guard
from haloconv.tiling.messages import MIN_RUN_BYTES
from haloconv.tiling.plan import make_plan
from haloconv.tiling.spec import ConvSpec


def _best(fn, repeat: int, min_seconds: float = 0.1) -> float:
    """Best time of ``fn``: at least ``repeat`` runs and ``min_seconds`` of them (up to
    10 x ``repeat``), after two warm-ups — the first runs of a shape fault in its buffers
    and build oneDNN's primitive, so a figure taken then is several times off."""
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
    workers compute on one thread with that backend (not the one torch would pick at one
    thread, which for some shapes is a slower algorithm)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec.input_shape, generator=g)
    w = backends.get(method).example_weight(spec, g)
    threads = torch.get_num_threads()
    torch.set_num_threads(CALLER_THREADS)
    tb = kernels.select_backend(spec, x, w, None)
    torch.set_num_threads(threads)
    return _best(as_one_tile(method, spec, x, w, tb), repeat)


LAYER_BYTES = 8 * 2**20  # a torch rate's input + output, at least


def _compute_grid(quick: bool) -> dict[tuple, tuple[str, ConvSpec]]:
    """What measure_compute times: key -> (method, spec)."""
    side = 128 if quick else 256
    grid: dict[tuple, tuple[str, ConvSpec]] = {}
    # layers of 16-32 channels are common: measured, not interpolated between 8 and 64
    couts = (1, 8, 64) if quick else (1, 8, 16, 32, 64)
    shapes = ((1, 3), (1, 7), (1, 15), (8, 3), (64, 3)) if quick else (
        (1, 3), (1, 7), (1, 15), (8, 3), (16, 3), (32, 3), (64, 3))
    for cout in couts:
        for cin, k in shapes:
            # ~equal work per shape, and input + output beyond the caches (LAYER_BYTES), as the
            # layers worth distributing are: few-channel convs that fit in the caches run faster
            # than the same work at the sizes that are split
            s = min(8 * side, max(96, int(4 * side / math.sqrt(max(1.0, cin * cout * k * k / 9))),
                                  int(math.sqrt(LAYER_BYTES / (4 * (cin + cout))))))
            grid[("torch", cin, cout, k)] = ("torch", ConvSpec.from_args((1, cin, s, s), (cout, cin, k, k), None,
                                                                        padding=k // 2))
    for cout in (8, 64):  # 1-D: a table of its own
        for cin in (4, 16, 64):
            for k in (3, 9):
                n = max(4096, int(LAYER_BYTES / (4 * (cin + cout))) // 16 * 16)
                grid[("torch1d", cin, cout, k)] = ("torch", ConvSpec.from_args((1, cin, n), (cout, cin, k), None,
                                                                              padding=k // 2))
    for c in (4, 16, 32):  # oneDNN fills SIMD blocks of 16 channels: few channels run at a fraction
        for k in (3, 5, 7):
            plane = side * (4 if c < 16 else 2)  # few channels: images big enough to be memory-bound
            grid[("depthwise", c, k)] = ("torch", ConvSpec.from_args((1, c, plane, plane), (c, 1, k, k), None,
                                                                     padding=k // 2, groups=c))
    for cout in (8, 64):
        for cin in (8, 64):
            grid[("pointwise", cin, cout)] = ("torch", ConvSpec.from_args((1, cin, side * 2, side * 2),
                                                                          (cout, cin, 1, 1), None))
    for cin, cout, side2 in ((16, 32, 3 * side), (3, 32, 4 * side)):
        grid[("strided", cin, cout)] = ("torch", ConvSpec.from_args((1, cin, side2, side2), (cout, cin, 3, 3), None,
                                                                    padding=1, stride=2))
    for name, b in backends.REGISTRY.items():  # the other backends: the problems each prices its counts on
        for i, spec in enumerate(b.calibration(side)):
            grid[(name, i)] = (name, spec)
    return grid


def measure_compute(prof: Profile, quick: bool = False, log=print, passes: int | None = None) -> None:
    """Every figure is the best over ``passes`` passes through the whole grid (2; 1 with
    ``quick``): on a shared host one core's speed can halve for seconds at a time, longer
    than one figure takes to measure, so a single pass can catch a shape in such a stretch;
    passes tens of seconds apart seldom both do."""
    repeat = 2 if quick else 3
    passes = passes or (1 if quick else 2)
    grid = _compute_grid(quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t: dict[tuple, float] = {}
        for _ in range(passes):
            for key, (method, spec) in grid.items():
                t[key] = min(t.get(key, math.inf), _conv_seconds(method, spec, repeat))
        flops = {key: spec.flops() / t[key] for key, (_, spec) in grid.items()}
        prof.torch_rates = [[cin * k * k, cout, flops[key]] for key in grid if key[0] == "torch"
                            for _, cin, cout, k in [key]]
        for cout in sorted({r[1] for r in prof.torch_rates}):
            log(f"  torch  C_out {cout:3d}: " + "  ".join(f"inner {r[0]}: {r[2] / 1e9:.1f}"
                                                      for r in prof.torch_rates if r[1] == cout) + " GFLOP/s")
        keys_1d = [key for key in grid if key[0] == "torch1d"]
        prof.torch_rates_1d = [[cin * k, cout, flops[key]] for key in keys_1d for _, cin, cout, k in [key]]
        log("  torch  1-D: " + "  ".join(f"{cin}->{cout} k{k}: {flops[key] / 1e9:.1f}"
                                        for key in keys_1d for _, cin, cout, k in [key]) + " GFLOP/s")
        prof.depthwise_rates = [[k * k, c, flops[key]] for key in grid if key[0] == "depthwise" for _, c, k in [key]]
        log("  torch  depthwise: " + "  ".join(f"{c} ch {k}: {r / 1e9:.1f}" for k, c, r in prof.depthwise_rates)
            + " GFLOP/s")
        prof.pointwise_rates = [[cin, cout, flops[key]] for key in grid if key[0] == "pointwise"
                                for _, cin, cout in [key]]
        log("  torch  1x1: " + "  ".join(f"{a}->{b}: {r / 1e9:.1f}" for a, b, r in prof.pointwise_rates) + " GFLOP/s")
        # stride 2 against the rate the table gives the same conv
        ratios = [flops[key] / prof.torch_rate(key[1] * 9, key[2]) for key in grid if key[0] == "strided"]
        prof.strided_ratio = float(np.sqrt(ratios[0] * ratios[1]))
        log(f"  torch  stride 2: {prof.strided_ratio:.2f} x the FLOP/s of stride 1")
        for name, b in backends.REGISTRY.items():
            keys = [key for key in grid if key[0] == name and name != "torch"]
            if not keys:
                continue
            counts = sorted(b.default_rates)
            specs = [grid[k][1] for k in keys]
            work = [b.work(spec, spec.input_shape, spec.output_shape, spec.groups) for spec in specs]
            rows = np.array([[w.get(c, 0.0) for c in counts] for w in work])
            # non-negative least squares over the cases, each weighted by its own time (relative error)
            ys = np.array([t[k] for k in keys])
            sol, _ = scipy.optimize.nnls(rows / ys[:, None], np.ones(len(keys)))
            prof.rates.update({c: float(max(v, 1e-14)) for c, v in zip(counts, sol)})
            log(f"  {name}: " + ", ".join(f"{prof.rates[c] * 1e9:.3g} ns per {c.split('.', 1)[1]}" for c in counts))
        measure_call_efficiency(prof, grid, t, repeat, log)
        buf = torch.empty(64 * 2**20 // 4)
        prof.copy_Bps = buf.numel() * 4 / _best(lambda: buf.clone(), repeat)
        log(f"  memory copy: {prof.copy_Bps / 1e9:.2f} GB/s")
    finally:
        torch.set_num_threads(threads)


def measure_call_efficiency(prof: Profile, grid: dict, alone: dict, repeat: int, log=print) -> None:
    """How far one call of each backend that computes on the threads it is given speeds up
    on every core: its calibration problems again with all the cores' threads, against
    ``alone`` (their one-thread times), per kernel volume (Profile.call_efficiency)."""
    cores = max(1, int(prof.cores))
    if cores == 1:
        return
    torch.set_num_threads(cores)
    try:
        for name, b in backends.REGISTRY.items():
            keys = [key for key in grid if key[0] == name]
            if not keys or not b.default_call_efficiency:
                continue
            pts = {math.prod(grid[k][1].kernel): alone[k] / _conv_seconds(name, grid[k][1], repeat) / cores
                   for k in keys}
            prof.call_efficiency[name] = sorted([k, v] for k, v in pts.items())
            log(f"  {name} on {cores} threads: "
                + ", ".join(f"{v * cores:.2f}x ({k} taps)" for k, v in sorted(pts.items())))
    finally:
        torch.set_num_threads(1)


def measure_transport(prof: Profile, quick: bool = False, log=print) -> None:
    """Scatters through a 2-process cluster (the master sends worker 1 its half), median of
    several, interleaved: bandwidth from one 32 MB message against a 4 kB one (what layers'
    boxes weigh: beyond the last-level cache, where a byte costs more than within);
    latency per message from the same 32 MB in 128 runs of the smallest size sent unpacked
    (messages.MIN_RUN_BYTES), the median of the differences of the two measured back to
    back — medians taken apart drift with the machine's load by more than the latency
    itself, and a least-squares fit over many shapes lets its intercept take what the slope
    should have."""
    runs = (1 << 23) * 4 // MIN_RUN_BYTES  # worker 1 gets 32 MB in 128 runs of MIN_RUN_BYTES
    shapes = {"tiny": (1, 1, 2, 2**10), "one": (1, 1, 2, 2**23), "many": (1, runs, 2, 2**23 // runs)}
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
    paired = np.median(np.array(seconds["many"]) - np.array(seconds["one"]))
    prof.latency_s = float(max(5e-6, paired / extra))
    log(f"  transport: latency {prof.latency_s * 1e6:.0f} us, bandwidth {prof.bandwidth_Bps / 1e9:.2f} GB/s, "
        f"fixed cost per call {prof.step_s * 1e3:.2f} ms ({prof.step1_s * 1e3:.2f} ms for one tile)")


def measure_handoff(prof: Profile, quick: bool = False, log=print) -> None:
    """How long a parked helper of the threads engine's pool takes to start what it is
    handed (Profile.handoff_s): the median from submitting to its start, each after the
    helper has parked again."""
    pool = helpers()
    waits = []
    for _ in range(50 if quick else 200):
        time.sleep(0.002)  # let the helper park, as between a user's calls
        t0 = time.perf_counter()
        waits.append(pool.submit(time.perf_counter).result() - t0)
    prof.handoff_s = float(np.median(waits))
    log(f"  threads engine: a helper thread starts a tile {prof.handoff_s * 1e6:.0f} us after it is handed over")


def _busy_counts(cores: float) -> list[int]:
    """Process counts the concurrency curve is measured at: 1, powers of 2 up to the cores,
    the cores, one more, twice as many (at most 16)."""
    c = max(1, int(cores))
    return sorted({1, c, c + 1, 2 * c, *(2**i for i in range(1, 5) if 2**i < c)} & set(range(1, 17)))


def measure_concurrency(prof: Profile, quick: bool = False, log=print) -> None:
    """How many cores n processes busy at once really get (other load, hyper-threads, memory
    bandwidth, more processes than cores): each computes the same problem back to back, all
    at once, against one alone — for a compute-bound layer and memory-bound single-channel
    filters per backend, which scale differently (a torch filter pads its channel to oneDNN's
    SIMD block of 16 and is bound by memory bandwidth sooner)."""
    counts = _busy_counts(prof.cores)
    probes = [("torch", (1, 16, 256, 512), (16, 16, 3, 3), "torch"),
              ("torch-filter", (1, 1, 1024, 2048), (1, 1, 3, 3), "torch")]
    probes += [(name, *b.concurrency_probe(), name) for name, b in backends.REGISTRY.items()
               if b.concurrency_probe() is not None]
    curves = []
    with LocalCluster(max(counts)) as cluster:
        for _, shape, wshape, backend in probes:
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
    prof.concurrency = {name: [[n, c[n]] for n in counts] for (name, *_), c in zip(probes, curves)}
    log(f"  cores n busy processes get ({' / '.join(prof.concurrency)}): "
        + "  ".join(f"{n}: " + "/".join(f"{c[n]:.2f}" for c in curves) for n in counts))


def calibrate(quick: bool = False, log=print) -> Profile:
    keep_heap()  # measure compute as the engines' processes run it: with a warm heap
    prof = Profile()
    log("compute (1 thread per worker):")
    measure_compute(prof, quick, log)
    log("processes engine transport:")
    measure_transport(prof, quick, log)
    measure_concurrency(prof, quick, log)
    measure_handoff(prof, quick, log)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    prof.source = f"calibrated {stamp}" + (" (quick)" if quick else "")
    return prof


def command(args, console) -> int:
    """`haloconv calibrate`: measure this machine into the profile the cost model reads."""
    from haloconv.costmodel import cost

    target = Path(args.profile or cost.default_profile_path())
    guard.check_replaceable(target)  # before minutes of measuring, not after
    prof = calibrate(quick=args.quick, log=console.say)
    guard.write_whole(target, prof.save)
    console.say(f"wrote {target}")
    return 0
