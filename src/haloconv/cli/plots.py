"""Pictures: a plan's partition (tiles, halos, owners) and scaling projections (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from haloconv.files import guard  # noqa: E402
from haloconv.tiling.plan import Plan  # noqa: E402


def plan_png(plan: Plan, path: str | Path, title: str = "") -> Path:
    """The input's last two spatial axes with each tile's owned box (labelled with its
    rank and output box) and its halo (needed input beyond the owned box) shaded."""
    spec = plan.spec
    h, w = (1, spec.spatial[0]) if spec.ndim == 1 else spec.spatial[-2:]
    fig, ax = plt.subplots(figsize=(7, 7 * min(2.0, max(0.4, h / w))))
    cmap = plt.get_cmap("tab20")
    seen = set()
    for t in plan.tiles:
        (y0, y1), (x0, x1) = _yx(t.owned, spec.ndim)
        (ny0, ny1), (nx0, nx1) = _yx(t.needed, spec.ndim)
        key = (y0, y1, x0, x1)
        color = cmap(t.rank % 20)
        ax.add_patch(Rectangle((nx0, ny0), nx1 - nx0, ny1 - ny0, facecolor=color, alpha=0.18, hatch="///",
                               edgecolor=color, lw=0.8, ls="--"))
        if key in seen:  # tiles that share an input box (batch or channel splits)
            continue
        seen.add(key)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=color, alpha=0.45, edgecolor="black", lw=1))
        ranks = [u.rank for u in plan.tiles if _yx(u.owned, spec.ndim) == ((y0, y1), (x0, x1))]
        label = "rank " + ",".join(map(str, ranks)) if len(ranks) <= 4 else f"ranks {ranks[0]}..{ranks[-1]}"
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{label}\n{t.halo_elements:,} halo", ha="center", va="center",
                fontsize=8)
    pad = max(spec.pad_lo + spec.pad_hi, default=0) + 1
    ax.set_xlim(-pad, w + pad)
    ax.set_ylim(h + pad, -pad)
    ax.set_xlabel("W (input columns)")
    ax.set_ylabel("H (input rows)" if spec.ndim > 1 else "")
    ax.set_title(title or f"{plan.partition} {plan.splits} on {plan.workers} workers, backend {plan.backend}\n"
                 "solid: owned input; hatched: needed input (owned + halo, may reach into padding)", fontsize=9)
    return _save(fig, path)


def _yx(box, ndim: int):
    if ndim == 1:
        return (0, 1), (box.lo[2], box.hi[2])
    return (box.lo[-2], box.hi[-2]), (box.lo[-1], box.hi[-1])


def scaling_png(workers: Sequence[int], series: dict[str, dict[str, list[float]]], path: str | Path,
                title: str) -> Path:
    """Strong and weak scaling (predicted seconds) and the halo share of each partition."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, s in series.items():
        axes[0].plot(workers, s["strong"], marker="o", ms=3, label=name)
        axes[1].plot(workers, s["weak"], marker="o", ms=3, label=name)
        axes[2].plot(workers, [100 * v for v in s["halo_share"]], marker="o", ms=3, label=name)
    for ax, t in zip(axes, ("strong scaling: one layer, P workers", "weak scaling: P x the work",
                            "communication share (halos; all-gather for filters)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers P")
        ax.set_title(t, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("predicted seconds")
    axes[1].set_ylabel("predicted seconds")
    axes[2].set_ylabel("% of time")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    try:
        fmt = Path(path).suffix[1:] or "png"  # the temporary's name has no telling suffix
        return guard.write_whole(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))
    finally:
        plt.close(fig)
