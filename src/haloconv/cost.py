"""The cost model: a machine profile -> predicted time, bytes and memory of a Plan, and the
choice of partition='auto' / backend='auto'.

alpha-beta-gamma (DESIGN.md): a message costs latency + bytes / bandwidth; the master's
link carries scatter and gather one worker after another; halos move in parallel; a
tile's compute time comes from measured rates of each backend.  Workers share the
machine's cores: with more workers than cores, compute stretches by workers / cores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from haloconv.plan import BACKENDS, PHASES, Plan, _extents, backend_unsupported, build, resolve_splits
from haloconv.spec import ConvSpec

# Uncalibrated defaults: measured on the 2-core development machine (1 thread per worker,
# float32, processes engine over loopback gloo).  `haloconv calibrate` measures yours.
DEFAULT_TORCH_RATES = [[1, 0.6e9], [9, 3.0e9], [27, 6.0e9], [144, 12e9], [576, 20e9], [2304, 25e9]]


@dataclass
class Profile:
    """What this machine does per second.  ``torch_rates``: [inner, FLOP/s] pairs, inner =
    C_in/groups x kernel volume (the GEMM depth), interpolated in log-log."""

    latency_s: float = 150e-6
    step_s: float = 3e-3  # fixed cost of one processes-engine call (commands, reports, wake-ups)
    bandwidth_Bps: float = 1.2e9
    copy_Bps: float = 3e9
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else (os.cpu_count() or 1))
    torch_rates: list = field(default_factory=lambda: [list(p) for p in DEFAULT_TORCH_RATES])
    ndimage_taps_per_s: float = 0.9e9  # outputs x kernel taps per second, float64 accumulation
    fft_s_per_nlogn: float = 2.5e-9  # per real element x log2(size), each of the forward/inverse transforms
    fft_s_per_mac: float = 1.0e-9  # per complex multiply-add of the channel mixing
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
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"profile {str(path)!r} has unknown fields {sorted(unknown)}")
        return cls(**data)

    # -- compute ------------------------------------------------------------------------
    def torch_rate(self, inner: int) -> float:
        pts = sorted(self.torch_rates)
        if inner <= pts[0][0]:
            return pts[0][1]
        if inner >= pts[-1][0]:
            return pts[-1][1]
        for (a, ra), (b, rb) in zip(pts, pts[1:]):
            if a <= inner <= b:
                t = (math.log(inner) - math.log(a)) / (math.log(b) - math.log(a))
                return math.exp(math.log(ra) + t * (math.log(rb) - math.log(ra)))
        raise AssertionError("unreachable")

    def compute_seconds(self, backend: str, spec: ConvSpec, window: Sequence[int], out: Sequence[int],
                        groups: int) -> float:
        """One tile: ``window`` its input box shape (N, C_in_t, *S), ``out`` its output box shape."""
        n, cout = out[0], out[1]
        cin_g = spec.in_channels // spec.groups
        kvol = math.prod(spec.kernel)
        outputs = math.prod(out[2:])
        if backend == "torch":
            flops = 2 * n * cout * cin_g * outputs * kvol
            return flops / self.torch_rate(cin_g * kvol)
        eff = [(k - 1) * d + 1 for k, d in zip(spec.kernel, spec.dilation)]
        if backend == "ndimage":
            full = math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
            return n * cout * full * math.prod(eff) / self.ndimage_taps_per_s
        size = math.prod(w + 2 * p for w, p in zip(window[2:], spec.backend_pad))
        cin = window[1]
        transforms = n * (cin + cout) * size * math.log2(max(size, 2)) + cout * cin_g * size * math.log2(max(size, 2))
        macs = n * cout * cin_g * size / 2
        return transforms * self.fft_s_per_nlogn + macs * self.fft_s_per_mac


def default_profile_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "haloconv" / "profile.json"


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
    bytes_moved: dict[int, dict[str, int]]  # rank -> phase -> bytes sent + received
    memory: dict[int, int]  # rank -> peak bytes
    total_s: float

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
        name = p.partition if p.partition != "tuple" else "x".join(map(str, p.splits))
        return f"{name} {'x'.join(map(str, p.splits))} {p.workers}w {p.backend}"


def predict(plan: Plan, profile: Profile | None = None, itemsize: int = 4, engine: str = "processes") -> Prediction:
    """Predicted time of running ``plan`` end to end (input on the master, output back on it)."""
    prof = profile or load_profile()
    spec = plan.spec
    tr = plan.traffic(itemsize)
    stretch = max(1.0, len(plan.tiles) / prof.cores)  # workers time-share the cores
    seconds: dict[int, dict[str, float]] = {}
    moved: dict[int, dict[str, int]] = {}
    memory: dict[int, int] = {}
    weight_bytes = math.prod(spec.weight_shape) * itemsize
    for t in plan.tiles:
        comp = prof.compute_seconds(plan.backend, spec, t.window.shape, t.out.shape, t.groups) * stretch
        r = t.rank
        ph = tr[r]
        seconds[r] = {p: ph[p].messages_recv * prof.latency_s + ph[p].bytes_recv / prof.bandwidth_Bps
                      for p in PHASES}
        window_copy = t.window.volume * itemsize / prof.copy_Bps  # a tile's window is assembled by a copy
        seconds[r]["compute"] = comp + (window_copy if engine == "threads" or t.halo_pieces else 0.0)
        moved[r] = {p: ph[p].bytes_sent + ph[p].bytes_recv for p in PHASES}
        memory[r] = (t.window.volume + t.owned.volume + t.out.volume) * itemsize + weight_bytes
    if engine == "threads":
        for r in seconds:  # shared memory: nothing moves, outputs are copied into the result
            out_bytes = plan.tiles[r].out.volume * itemsize
            seconds[r] = {"compute": seconds[r]["compute"], "write": out_bytes / prof.copy_Bps}
        total = max(sum(s.values()) for s in seconds.values())
    else:
        master = tr[0]
        # the master's link: every worker's weights, scatter and gather pass it one after another
        serial = {p: master[p].messages_sent * prof.latency_s + master[p].bytes_sent / prof.bandwidth_Bps
                  for p in ("weights", "scatter")}
        serial["gather"] = (master["gather"].messages_recv * prof.latency_s
                            + master["gather"].bytes_recv / prof.bandwidth_Bps)
        out_bytes = math.prod(spec.output_shape) * itemsize
        memory[0] = memory.get(0, 0) + (math.prod(spec.input_shape) * itemsize + out_bytes)
        for r in seconds:
            for p in ("weights", "scatter", "gather"):
                seconds[r][p] = serial[p] if r == 0 else seconds[r][p]
        parallel = max(s["halo"] + s["compute"] for s in seconds.values())
        total = prof.step_s + serial["weights"] + serial["scatter"] + parallel + serial["gather"]
    return Prediction(plan, engine, seconds, moved, memory, total)


# -- candidates and the choice ---------------------------------------------------------------
def candidate_splits(spec: ConvSpec, workers: int) -> list[tuple[str, tuple[int, ...] | str]]:
    """(name, partition) of every candidate: named partitions, grid, and two-axis hybrids."""
    out: list[tuple[str, tuple[int, ...] | str]] = []
    names = ["batch", "channels", *({1: ["cols"], 2: ["rows", "cols"], 3: ["depth", "rows", "cols"]}[spec.ndim])]
    if spec.ndim > 1:
        names.append("grid")
    seen = set()
    for name in names:
        try:
            _, counts = resolve_splits(spec, name, workers)
        except ValueError:
            continue
        if math.prod(counts) > 1 and counts not in seen:
            seen.add(counts)
            out.append((name, counts))
    ext = _extents(spec)
    dims = len(ext)
    for a in range(dims):
        for b in range(a + 1, dims):
            for f in range(2, workers):
                if workers % f:
                    continue
                counts = [1] * dims
                counts[a], counts[b] = f, workers // f
                counts = tuple(counts)
                if counts not in seen and all(c <= e for c, e in zip(counts, ext)):
                    seen.add(counts)
                    out.append(("x".join(map(str, counts)), counts))
    return out


def _backends(spec: ConvSpec, backend: str) -> list[str]:
    if backend == "auto":
        return [b for b in BACKENDS if backend_unsupported(b, spec) is None]
    why = backend_unsupported(backend, spec)
    if why is not None:
        raise ValueError(why)
    return [backend]


def rank_backends(plan: Plan, profile: Profile | None, backend: str = "auto", engine: str = "processes",
                  memory_budget: int | None = None, itemsize: int = 4) -> list[Prediction]:
    """``plan``'s partition with each candidate backend, cheapest predicted first."""
    prof = profile or load_profile()
    preds = [predict(replace(plan, backend=b), prof, itemsize, engine) for b in _backends(plan.spec, backend)]
    preds = [q for q in preds if memory_budget is None or q.peak_memory <= memory_budget]
    if not preds:
        raise ValueError(f"partition {plan.partition!r} does not fit memory_budget={memory_budget} bytes per worker")
    return sorted(preds, key=lambda q: q.total_s)


def candidates(spec: ConvSpec, workers: int, profile: Profile | None = None, itemsize: int = 4,
               backend: str = "auto", engine: str = "processes", memory_budget: int | None = None,
               ownership: str = "aligned", exchange: str = "neighbours",
               weights: Sequence[float] | None = None) -> list[Prediction]:
    """Every candidate (partition x backend, plus a single worker), cheapest predicted first;
    those over ``memory_budget`` bytes per worker are left out."""
    prof = profile or load_profile()
    backends = _backends(spec, backend)
    preds = []
    splits = [("single", (1,) * (spec.ndim + 2))] + candidate_splits(spec, workers)
    for name, counts in splits:
        for b in backends:
            w = 1 if name == "single" else workers
            p = build(spec, counts, name, w, None if name == "single" else weights, ownership=ownership,
                      exchange=exchange, backend=b)
            pred = predict(p, prof, itemsize, engine)
            if memory_budget is None or pred.peak_memory <= memory_budget:
                preds.append(pred)
    preds.sort(key=lambda q: q.total_s)
    return preds


def choose(spec: ConvSpec, workers: int, profile: Profile | None = None, **kw) -> Plan:
    """The plan with the least predicted time (partition='auto')."""
    ranked = candidates(spec, workers, profile, **kw)
    if not ranked:
        raise ValueError(f"no partition fits memory_budget={kw.get('memory_budget')} bytes per worker")
    return ranked[0].plan


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
