"""The cost model: a machine profile -> predicted time, bytes and memory of a Plan.  It
prices; the planner (haloconv/planner/) chooses.

alpha-beta-gamma (docs/architecture.md, "Cost model"): a message costs latency + bytes / bandwidth; the master's
link carries scatter and gather one worker after another; halos move in parallel; a
tile's compute time comes from measured rates of each backend.  Workers share the
machine's cores: with more workers than cores, compute stretches by workers / cores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from haloconv.compute import backends
from haloconv.costmodel import schedule
from haloconv.tiling import geometry
from haloconv.tiling.deep import DeepRun
from haloconv.tiling.geometry import compute_align
from haloconv.tiling.messages import PHASES, traffic_of
from haloconv.tiling.partition import split_extents
from haloconv.tiling.plan import GridTiles, Plan
from haloconv.tiling.spec import ConvSpec

# Uncalibrated defaults: measured on the 2-core development machine (1 thread per worker,
# float32, processes engine over loopback gloo).  `haloconv calibrate` measures yours.
# torch: [inner = C_in/groups x kernel volume, C_out/groups, FLOP/s]
DEFAULT_TORCH_RATES = [
    [9, 1, 1.7e9], [49, 1, 5.7e9], [72, 1, 5.2e9], [225, 1, 8.1e9], [576, 1, 2.1e9],
    [9, 8, 6.5e9], [49, 8, 15e9], [72, 8, 30e9], [225, 8, 42e9], [576, 8, 46e9],
    [9, 64, 5.0e9], [49, 64, 78e9], [72, 64, 90e9], [225, 64, 146e9], [576, 64, 124e9],
]


@dataclass
class Profile:
    """What this machine does per second.  ``torch_rates``: [inner, C_out/groups, FLOP/s]
    points, inner = C_in/groups x kernel volume (the GEMM depth), C_out/groups its width;
    interpolated in log space over both."""

    latency_s: float = 150e-6
    step_s: float = 3e-3  # fixed cost of one processes-engine call (commands, reports, wake-ups)
    # the same for a plan of one tile: the master computes at once and waits on no worker
    # until the reports, so it costs less than a call with workers (calibrated)
    step1_s: float = 1.3e-3
    call_s: float = 30e-6  # fixed cost of one conv call on a tile (dispatch, primitive lookup)
    # the threads engine: how long a parked helper thread takes to start the tile it is
    # handed (engines/inprocess/helpers.py; a wake-up, the median measured by calibrate): what splitting
    # costs a call that one thread would finish in about that time
    handoff_s: float = 50e-6
    # what a rank loses at each blocking wait for a neighbour's message when ranks outnumber
    # the cores: the waiting process gives its core away and waits for a scheduler slice to
    # get it back.  Measured with benchmarks/nn_deep.py (4 ranks on 2 cores, no added
    # latency): (step at depth 1 - step at depth 8 - the redundant compute) / the 14
    # exchanges saved, 2.3-3.4 ms at 0, 100 us and 1 ms of link latency
    wait_s: float = 2.5e-3
    bandwidth_Bps: float = 1.2e9
    copy_Bps: float = 2.4e9
    cores: float = field(default_factory=lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else (os.cpu_count() or 1))
    torch_rates: list = field(default_factory=lambda: [list(p) for p in DEFAULT_TORCH_RATES])
    # the same for 1-D convs (oneDNN's 1-D kernels: 0.9-2x the rate of a 2-D conv of the same
    # GEMM depth and width, measured); empty (defaults, older profiles): the 2-D table
    torch_rates_1d: list = field(default_factory=list)
    # depthwise (C_in = C_out = groups): [kernel volume, channels of the tile, FLOP/s] — oneDNN
    # computes channels in SIMD blocks of 16, so 3 channels cost nearly what 16 do (4 channels:
    # 0.38 x the rate of 32, the ratio measured on a second 2-core machine);
    # pointwise (1x1): [C_in/groups, C_out/groups, FLOP/s]
    depthwise_rates: list = field(default_factory=lambda: [[9, 4, 2.3e9], [25, 4, 3.9e9], [49, 4, 4.6e9],
                                                           [9, 32, 6e9], [25, 32, 10e9], [49, 32, 12e9]])
    pointwise_rates: list = field(default_factory=lambda: [[8, 8, 3e9], [64, 8, 8e9], [8, 64, 6e9], [64, 64, 15e9]])
    strided_ratio: float = 0.68  # FLOP/s of a stride-2 conv / those of the same conv at stride 1 (measured)
    # seconds per operation count of the other backends, keyed "<backend>.<count>"
    # (compute/backends: each backend's counts and their uncalibrated prices)
    rates: dict = field(default_factory=lambda: {k: v for b in backends.REGISTRY.values()
                                                 for k, v in b.default_rates.items()})
    # throughput of n processes busy at once, in cores, per curve: {curve: [[n, cores], ...]};
    # curves "torch" (layers), "torch-filter" (one channel per group: memory-bound, they
    # scale differently) and one per other backend that has a concurrency probe (3 or 4
    # processes on 2 cores get less than 2 did); calibrate measures n = 1 .. 2 x cores.
    # Empty: min(n, cores) (x filter_cores_ratio for filters), which is what older profiles
    # (cores = the figure of 2 processes) meant.
    concurrency: dict = field(default_factory=dict)
    filter_cores_ratio: float = 1.0
    # how far one call of a backend that computes on the threads it is given (OpenCV's) speeds
    # up on every core: {backend: [[kernel volume, speedup / cores]]}, interpolated over the
    # volume (calibrate measures it; defaults: compute/backends' default_call_efficiency).
    # The threads engine gives each of n tiles cores / n threads, so one tile on every core
    # can beat n tiles on one each (OpenCV's threaded separable passes do)
    call_efficiency: dict = field(default_factory=lambda: {name: [list(p) for p in b.default_call_efficiency]
                                                          for name, b in backends.REGISTRY.items()
                                                          if b.default_call_efficiency})
    source: str = "defaults"

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(asdict(self), indent=2))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read profile {str(path)!r}: {e}") from None
        data = cls._renamed(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"profile {str(path)!r} has unknown fields {sorted(unknown)}")
        if any(len(p) == 2 for p in data.get("depthwise_rates", [])):  # older profiles: 32 channels measured
            data["depthwise_rates"] = [[p[0], 32, p[1]] if len(p) == 2 else p for p in data["depthwise_rates"]]
        return cls(**data)

    def __post_init__(self) -> None:
        self.rates = {**Profile.__dataclass_fields__["rates"].default_factory(), **(self.rates or {})}
        if isinstance(self.concurrency, list) and self.concurrency:
            # older profiles: rows [n, torch layers, torch filters(, ndimage, fft)]
            curves = ("torch", "torch-filter", "ndimage", "fft")
            self.concurrency = {name: [[row[0], row[1 + i] if 1 + i < len(row) else row[2]] for row in self.concurrency]
                                for i, name in enumerate(curves)}

    @classmethod
    def _renamed(cls, data: dict) -> dict:
        """Older profiles' fields under today's names."""
        rates = dict(data.pop("rates", {}))
        for old, key, invert in (("ndimage_taps_per_s", "ndimage.taps", True), ("fft_s_per_nlogn", "fft.nlogn", False),
                                 ("fft_s_per_mac", "fft.mac", False)):
            if old in data:
                v = data.pop(old)
                rates.setdefault(key, 1 / v if invert else v)
        return {**data, "rates": rates}

    def curve(self, spec: ConvSpec, backend: str) -> str:
        """The concurrency curve of ``backend`` computing ``spec``."""
        if backend == "torch":
            return "torch-filter" if backends.base.is_filter(spec) else "torch"
        return backend if backend in self.concurrency else "torch-filter"

    def effective_cores(self, spec: ConvSpec, busy: float, backend: str = "torch") -> float:
        """Cores that ``busy`` processes computing ``spec`` with ``backend`` at once get
        together; torch's layers, torch's filters (one input and one output channel per
        group) and each other backend have their own curves."""
        curve = self.curve(spec, backend)
        if not self.concurrency:
            return min(busy, self.cores * (1.0 if curve == "torch" else self.filter_cores_ratio))
        return min(busy, _interp(sorted((n, c) for n, c in self.concurrency[curve]), busy))

    def peak_cores(self, spec: ConvSpec, backend: str = "torch") -> float:
        """The most cores any number of busy processes get together (effective_cores'
        ceiling: its curve is clamped at its ends and monotone between its points)."""
        curve = self.curve(spec, backend)
        if not self.concurrency:
            return self.cores * (1.0 if curve == "torch" else self.filter_cores_ratio)
        return max(c for _, c in self.concurrency[curve])

    def call_speedup(self, spec: ConvSpec, backend: str, threads: int) -> float:
        """How much faster one call of ``backend`` computes ``spec`` on ``threads`` threads
        than on one: measured on every core, linear in between; 1 for backends whose
        calls are priced on one core."""
        pts = self.call_efficiency.get(backend)
        cores = max(1.0, float(self.cores))
        if not pts or threads <= 1 or cores <= 1:
            return 1.0
        full = _interp(sorted((p[0], p[1]) for p in pts), math.prod(spec.kernel)) * cores
        return 1.0 + (full - 1.0) * (min(threads, cores) - 1.0) / (cores - 1.0)

    # -- compute ------------------------------------------------------------------------
    def torch_rate(self, inner: int, cout_g: int, ndim: int = 2) -> float:
        return _interp2(self.torch_rates_1d if ndim == 1 and self.torch_rates_1d else self.torch_rates, inner, cout_g)

    def compute_seconds(self, backend: str, spec: ConvSpec, window: Sequence[int], out: Sequence[int],
                        groups: int) -> float:
        """One tile: ``window`` its input box shape (N, C_in_t, *S), ``out`` its output box
        shape.  torch from its measured tables; the other backends' operation counts
        (compute/backends) at this profile's price of each."""
        if backend == "torch":
            return self.torch_seconds(spec, out, groups)
        work = backends.get(backend).work(spec, window, out, groups)
        return sum(count * self.rates[key] for key, count in work.items())

    def torch_seconds(self, spec: ConvSpec, out: Sequence[int], groups: int) -> float:
        n, cout = out[0], out[1]
        cin_g = spec.in_channels // spec.groups
        kvol = math.prod(spec.kernel)
        flops = 2 * n * cout * cin_g * math.prod(out[2:]) * kvol
        cout_g = max(1, cout // groups)
        if spec.groups > 1 and cin_g == 1 and cout_g == 1:
            # a tile of a lone group computes it beside an all-zero partner (kernels.conv_tile);
            # below the fewest channels measured the time stays that of those (one SIMD block)
            channels = max(2, cout)
            fewest = min(p[1] for p in self.depthwise_rates)
            rate = _interp2(self.depthwise_rates, kvol, max(channels, fewest)) * min(1.0, channels / fewest)
            return flops / rate
        # strided convs read s^d inputs per output: fewer FLOP/s (one measured ratio)
        strided = self.strided_ratio if any(st > 1 for st in spec.stride) else 1.0
        if kvol == 1:
            return flops / (_interp2(self.pointwise_rates, cin_g, cout_g) * strided)
        return flops / (self.torch_rate(cin_g * kvol, cout_g, spec.ndim) * strided)


def _interp(pts: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation in log-log of (x, y) points, clamped at the ends."""
    if x <= pts[0][0]:
        return pts[0][1]
    if x >= pts[-1][0]:
        return pts[-1][1]
    for (a, ra), (b, rb) in zip(pts, pts[1:]):
        if a <= x <= b:
            t = (math.log(x) - math.log(a)) / (math.log(b) - math.log(a)) if b > a else 0.0
            return math.exp(math.log(ra) + t * (math.log(rb) - math.log(ra)))
    raise AssertionError("unreachable")


def _interp2(points: Sequence[Sequence[float]], x: float, level: float) -> float:
    """[x, level, rate] points: interpolated along x within each level, then across levels."""
    levels = sorted({p[1] for p in points})
    return _interp([(lv, _interp(sorted((p[0], p[2]) for p in points if p[1] == lv), x)) for lv in levels], level)


def default_profile_path() -> Path:
    return Path(default_profile_file())


def default_profile_file() -> str:
    """default_profile_path as a str: what every planned call stats (no pathlib on that path)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "haloconv", "profile.json")


def load_profile(path: str | os.PathLike | None = None) -> Profile:
    """``path``, else the calibrated profile in the user's cache dir, else the defaults."""
    if path is not None:
        return Profile.load(path)
    p = default_profile_path()
    return Profile.load(p) if p.exists() else Profile()


# -- prediction -------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Predicted cost of a Plan: per worker phase seconds, bytes, peak memory; the total."""

    plan: Plan
    engine: str
    seconds: dict[int, dict[str, float]]  # rank -> phase -> s
    memory: dict[int, int]  # rank -> peak bytes
    total_s: float
    itemsize: int = 4
    # rank -> phase -> bytes sent + received: the processes engine's simulation has them; on
    # threads (nothing moves) they are worked out when asked for (bytes_moved)
    moved: dict[int, dict[str, int]] | None = field(default=None, repr=False)

    @property
    def bytes_moved(self) -> dict[int, dict[str, int]]:
        """Per rank and phase, the bytes the plan's messages carry to and from it."""
        if self.moved is None:
            self.moved = _moved(self.plan.messages(self.itemsize), self.plan)
        return self.moved

    @property
    def message_bytes(self) -> tuple[int, int]:
        """(halo bytes, all bytes) of the plan's messages, each message once
        (Plan.message_totals: a grid's counted per axis)."""
        if self.moved is None:
            return self.plan.message_totals(self.itemsize)
        return (sum(v["halo"] for v in self.moved.values()) // 2,
                sum(sum(v.values()) for v in self.moved.values()) // 2)

    @property
    def compute_s(self) -> float:
        return max(s["compute"] for s in self.seconds.values())

    @property
    def comm_s(self) -> float:
        return self.total_s - self.compute_s

    @property
    def peak_memory(self) -> int:
        return max(self.memory.values())

    @property
    def label(self) -> str:
        p = self.plan
        return f"{p.partition} {'x'.join(map(str, p.splits))} {p.workers}w {p.backend}"


def predict(plan: Plan, profile: Profile | None = None, itemsize: int = 4, engine: str = "processes") -> Prediction:
    """Predicted time of running ``plan`` end to end (input on the master, output back on it).

    processes: the engine's schedule simulated message by message on the profile's cores
    and links (schedule.processes_timeline).  threads: every tile computes on a thread of
    its own, sharing the cores, and copies its output into the result."""
    prof = profile or load_profile()
    spec = plan.spec
    boxes = list(_tile_boxes(plan))
    memory = {r: tile_data_bytes(spec, window.shape, owned.shape, out.shape, itemsize)
              for r, out, owned, window, _, _ in boxes}

    def compute_s(tile) -> float:
        return _tile_seconds(plan, tile, prof, itemsize)

    if engine == "threads":  # shared memory: nothing moves, outputs are copied into the result
        n = len(plan.tiles)
        seconds = {r: threads_tile_seconds(prof, spec, plan.backend, n, window.shape, out.shape, groups, view,
                                           itemsize) for r, out, _, window, groups, view in boxes}
        return Prediction(plan, engine, seconds, memory, threads_makespan(prof, n, seconds.values()), itemsize)
    messages = plan.messages(itemsize)
    line = schedule.processes_timeline(plan, compute_s, prof.copy_Bps, prof.latency_s, prof.bandwidth_Bps,
                                       lambda n: prof.effective_cores(spec, n, plan.backend), itemsize,
                                       messages=messages)
    memory[0] = memory.get(0, 0) + (math.prod(spec.input_shape) + math.prod(spec.output_shape)) * itemsize
    total = step_seconds(prof, len(plan.tiles)) + line.makespan
    return Prediction(plan, engine, line.seconds, memory, total, itemsize, _moved(messages, plan))


def _moved(messages, plan: Plan) -> dict[int, dict[str, int]]:
    tr = traffic_of(messages, plan.workers)
    return {t.rank: {p: tr[t.rank][p].bytes_sent + tr[t.rank][p].bytes_recv for p in PHASES} for t in plan.tiles}


def _tile_boxes(plan: Plan):
    """(rank, out, owned, window, groups, whether the window is a view of the input) of every
    tile: a GridTiles' from its shells (boxes, no pieces made), else from the tiles."""
    if isinstance(plan.tiles, GridTiles):
        spatial = plan.spec.spatial
        for r in range(len(plan.tiles)):
            out, owned, _, window, _, groups, _ = plan.tiles.shell(r)
            # a window inside the input reads no padding: all its pieces are copied as they are
            view = all(0 <= lo and hi <= n for lo, hi, n in zip(window.lo[2:], window.hi[2:], spatial))
            yield r, out, owned, window, groups, view
    else:
        for t in plan.tiles:
            yield t.rank, t.out, t.owned, t.window, t.groups, t.window_is_view


def tile_data_bytes(spec: ConvSpec, window: Sequence[int], owned: Sequence[int], out: Sequence[int],
                    itemsize: int) -> int:
    """The data a worker holds for a tile of these shapes, as the cost model counts it (a
    memory budget bounds it): its window, owned input and output, and the filters."""
    return (math.prod(window) + math.prod(owned) + math.prod(out) + math.prod(spec.weight_shape)) * itemsize


def threads_makespan(prof: Profile, n: int, tile_seconds) -> float:
    """``n`` tiles on the threads engine, each with its phases' seconds (threads_tile_seconds):
    the slowest, plus a helper thread's start when the call is split."""
    return max(sum(s.values()) for s in tile_seconds) + (prof.handoff_s if n > 1 else 0.0)


def threads_tile_seconds(prof: Profile, spec: ConvSpec, backend: str, n: int, window: Sequence[int],
                    out: Sequence[int], groups: int, view: bool, itemsize: int) -> dict[str, float]:
    """One of ``n`` tiles on the threads engine: its compute (its window's copy included,
    unless the window is a view of the input) and the copy of its output into the result."""
    # the tiles' threads time-share the cores; each tile's call runs on cores / n threads
    # (engines/inprocess/tensors.py, array_threads.py), which a backend's own threads may use
    stretch = n / prof.effective_cores(spec, n, backend)
    stretch /= prof.call_speedup(spec, backend, max(1, int(prof.cores) // n))
    copy = 0.0 if view else math.prod(window) * itemsize / prof.copy_Bps
    # a backend that computes arrays writes its outputs straight into the result's box
    copied = 0.0 if backends.get(backend).computes_arrays(spec) else itemsize / prof.copy_Bps
    return {"compute": (prof.compute_seconds(backend, spec, window, out, groups) + copy) * stretch,
            "write": math.prod(out) * copied}


def _tile_seconds(plan: Plan, tile, prof: Profile, itemsize: int) -> float:
    """One tile's compute on one core in a worker process, its window's copy included."""
    return worker_tile_seconds(prof, plan.spec, plan.backend, tile.window.shape, tile.out.shape, tile.groups,
                               itemsize)


def worker_tile_seconds(prof: Profile, spec: ConvSpec, backend: str, window: Sequence[int], out: Sequence[int],
                        groups: int, itemsize: int) -> float:
    """A tile of these shapes computed on one core in a worker process, its window's copy
    included: a window is copied together unless it can be a view (a band of whole rows,
    its output spanning every inner axis: halos land in the room around it)."""
    band = tuple(out[3:]) == tuple(spec.output_shape[3:])
    copy = 0.0 if band else math.prod(window) * itemsize / prof.copy_Bps
    return prof.compute_seconds(backend, spec, window, out, groups) + copy


def floor_seconds(plan: Plan, prof: Profile, itemsize: int) -> float:
    """A time the processes engine's prediction of ``plan`` cannot be below, for choose to
    skip a candidate without simulating it (costmodel/schedule.py): a cpu step runs at most at
    one core's speed, so the makespan is at least the master's compute and, with halos
    between neighbours, every tile's; the master's messages share its communication thread,
    which moves them at most 1 / reference times a message's lone speed together."""
    master = plan.tiles[0]
    ts = [master] if plan.exchange == "master" else plan.tiles
    compute = max(_tile_seconds(plan, t, prof, itemsize) for t in ts)
    _, transfers = schedule.transfers_of(plan.messages(itemsize), prof.latency_s, prof.bandwidth_Bps)
    alone = sum(t.seconds for t in transfers if 0 in (t.src, t.dst))
    return step_seconds(prof, len(plan.tiles)) + max(compute, reference_share(prof, plan.spec, plan.backend) * alone)


def work_floor_seconds(spec: ConvSpec, shapes, backend: str, prof: Profile, itemsize: int) -> float:
    """A time the processes engine's prediction of a grid of tiles of these shapes
    (tiling/plan.tile_shapes) cannot be below, before the plan is built: every tile's
    compute (its window's copy included, as _tile_seconds prices it) is cpu work, and the
    simulated cores never run more of it at once than Profile.peak_cores."""
    work = sum(s.count * worker_tile_seconds(prof, spec, backend, s.window, s.out, s.groups, itemsize)
               for s in shapes)
    return step_seconds(prof, sum(s.count for s in shapes)) + work / prof.peak_cores(spec, backend)


def weights_floor_seconds(spec: ConvSpec, counts: Sequence[int], backend: str, prof: Profile,
                          itemsize: int) -> float:
    """A time the processes engine's prediction of a plan split by ``counts`` cannot be
    below, before it is built: every rank's program starts with the filters' transfer (the
    master posts all of them, each worker waits for its own), so at first all of them move
    at once, each at most share / workers / reference of its lone speed (schedule._run: the
    master's end carries every one, and the cores are shared by every rank moving data), and
    none ends before the lightest would alone at that rate."""
    tiles = math.prod(counts)
    k = tiles - 1  # the workers the master sends filters to
    if k < 1:
        return 0.0
    channels = min(c1 - c0 for (c0, c1), _, _ in (spec.unit_channels(*r) for r in
                                                   geometry.split_extent(split_extents(spec)[1], counts[1])))
    nbytes = channels * (spec.filter_elements + (1 if spec.has_bias else 0)) * itemsize
    lone = (2 if spec.has_bias else 1) * prof.latency_s + nbytes / prof.bandwidth_Bps
    share = min(1.0, prof.effective_cores(spec, tiles, backend) / tiles)
    rate = min(1.0, share / k / reference_share(prof, spec, backend))
    return step_seconds(prof, tiles) + lone / rate


def count_floor_seconds(counts: Sequence[int], spec: ConvSpec, backend: str, prof: Profile) -> float:
    """floor_seconds before the plan is built: the master sends every other tile at least one
    message (its filters)."""
    tiles = math.prod(counts)
    return step_seconds(prof, tiles) + reference_share(prof, spec, backend) * (tiles - 1) * prof.latency_s


def step_seconds(prof: Profile, tiles: int) -> float:
    """The processes engine's fixed cost of a call (less for one tile: no worker to wake)."""
    return prof.step1_s if tiles == 1 else prof.step_s


def reference_share(prof: Profile, spec: ConvSpec, backend: str) -> float:
    return schedule.reference_share(lambda n: prof.effective_cores(spec, n, backend))


def resident_seconds(plan: Plan, profile: Profile, itemsize: int = 4) -> tuple[float, float]:
    """(time, communication part of it) of one layer on shards already in place (as in
    training or a chain of layers): the slowest worker's halo exchange (for a filter split,
    the all-gather of the outputs the next layer needs) plus compute, one core each."""
    worst, halo_part = 0.0, 0.0
    p = plan.splits[1]
    # filter split of a dense layer: the next layer needs every channel, so outputs are all-gathered
    regather = (p - 1) / p * math.prod(plan.spec.output_shape) * itemsize if p > 1 and plan.spec.groups == 1 else 0
    for t in plan.tiles:
        halo = len(t.halo_pieces) * profile.latency_s + t.halo_elements * itemsize / profile.bandwidth_Bps
        if regather:
            halo += (p - 1) * profile.latency_s + regather / profile.bandwidth_Bps
        comp = profile.compute_seconds(plan.backend, plan.spec, t.window.shape, t.out.shape, t.groups)
        if halo + comp > worst:
            worst, halo_part = halo + comp, halo
    return worst, halo_part


def overlap_seconds(plan: Plan, rank: int, profile: Profile, itemsize: int = 4) -> tuple[float, float]:
    """(blocking, overlapped) seconds of ``rank``'s forward of one layer on shards in place:
    blocking waits for its halos, builds its window and computes the tile; overlapped
    computes the interior (Plan.overlap_parts) while the halos travel, then each border
    slab from a window of its own — each part a call of its own (``call_s``) and a copy.
    Overlap pays where the halo time it hides beats what the parts add: small shards and
    fast links keep the layer blocking."""
    tile = plan.tile_of(rank)
    if tile is None or tile.out.volume == 0:
        return 0.0, 0.0
    halo = len(tile.halo_pieces) * profile.latency_s + tile.halo_elements * itemsize / profile.bandwidth_Bps

    def seconds(t) -> float:
        comp = profile.compute_seconds(plan.backend, plan.spec, t.window.shape, t.out.shape, t.groups)
        return profile.call_s + comp + math.prod(t.window.shape) * itemsize / profile.copy_Bps

    blocking = halo + seconds(tile)
    inner, borders = plan.overlap_parts(tile)
    if inner is None:
        return blocking, blocking
    return blocking, max(halo, seconds(inner)) + sum(seconds(b) for b in borders)


def deep_step_seconds(run: DeepRun, rank: int, profile: Profile, itemsize: int = 4, busy: int = 1) -> float:
    """Seconds of ``rank``'s training step through a run of layers with one halo exchange
    (tiling/deep.py; a single conv is a run of one): the exchange and its adjoint (each
    a message per piece from a neighbour, and its bytes), and per conv its window built
    and the forward plus the two backward convolutions (input and filter gradients), on
    the box it computes — its shard and the rows it computes for the neighbours.  ``busy``
    ranks share this rank's machine (one thread each): they compute at the cores they get
    together (Profile.effective_cores), and more of them than cores lose a scheduler slice
    at each wait (Profile.wait_s)."""
    ex = run.exchange.tiles[rank]
    halo = len(ex.halo_pieces) * profile.latency_s + ex.halo_elements * itemsize / profile.bandwidth_Bps
    if ex.halo_pieces and busy > profile.cores:
        halo += profile.wait_s
    comp = 0.0
    for spec, t in zip(run.steps, run.tiles[rank]):
        if t is None or not t.out.volume:
            continue
        conv = profile.compute_seconds("torch", spec, t.window.shape, t.out.shape, t.groups)
        conv *= busy / profile.effective_cores(spec, busy)
        comp += 3 * (profile.call_s + conv) + math.prod(t.window.shape) * itemsize / profile.copy_Bps
    return 2 * halo + comp


def allreduce_seconds(nbytes: int, ranks: int, profile: Profile) -> float:
    """A ring all-reduce of ``nbytes`` over ``ranks``: 2 (P - 1) steps, each a message of
    1/P of the bytes."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * (profile.latency_s + nbytes / ranks / profile.bandwidth_Bps)


# -- streaming (out of core): tiles sized by memory -------------------------------------------
def tile_peak_bytes(spec: ConvSpec, window_shape: Sequence[int], out_shape: Sequence[int], backend: str,
                    itemsize: int = 4, file_itemsize: int = 4) -> int:
    """Bytes a process holds at once computing one streamed tile: the window, the blocks
    read from the file (file dtype, then float), the output twice (the tile's result and
    its contiguous copy for the write) and the backend's workspace.  torch (oneDNN) works
    in a channel-blocked layout, channels padded to 16: measured here, a single-channel
    3x3 or 15x15 conv peaked at 16 floats per output pixel beyond its input and output;
    this counts it for the window and the output both, to stay on the safe side."""
    n, c_in, *win = window_shape
    _, c_out, *out = out_shape
    window = math.prod(window_shape) * itemsize
    output = math.prod(out_shape) * itemsize
    read = math.prod(window_shape) * (file_itemsize + 4 + itemsize)
    work = backends.get(backend).workspace_bytes(spec, window_shape, out_shape, itemsize)
    return window + max(read, work) + 2 * output


def block_peak(spec: ConvSpec, block: Sequence[int], backend: str = "torch", itemsize: int = 4,
               file_itemsize: int = 4) -> int:
    """Peak bytes of a streamed tile whose output block is ``block`` (a size per dim over N,
    C_out, *spatial), taken inside the output: halos on both sides (tile_peak_bytes)."""
    out = spec.output_shape
    win = []
    for i, (b, o) in enumerate(zip(block[2:], out[2:])):
        a = (o - b) // 2  # an inner block: halos on both sides
        lo, hi, _ = spec.axis(i).compute_window(a, a + b, compute_align(spec.ndim))
        win.append(hi - lo)
    return tile_peak_bytes(spec, (block[0], spec.in_channels, *win), (block[0], out[1], *block[2:]), backend,
                           itemsize, file_itemsize)
