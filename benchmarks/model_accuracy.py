"""Predicted vs measured: the cost model on >= 20 configurations (issue target).

    .venv/bin/python benchmarks/model_accuracy.py [--profile PATH] [--repeat 3] [--quick]

For each configuration (conv layers and image filters, 1-4 workers), every candidate the
cost model ranks (named partitions, grid, hybrids, a single worker; backends where they
apply) is run end to end on the processes engine (best of N) and its measured time put
beside the prediction.  Targets: median |predicted - measured| / measured <= 25% over all
runs, and the model's first choice within 10% of the best measured candidate in >= 90% of
configurations.  Load average printed beside the figures.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from haloconv import cost
from haloconv.engines import LocalCluster
from haloconv.spec import ConvSpec

# (name, input shape, weight shape, padding, stride, groups, workers)
CONFIGS = [
    ("layer 16->16 3x3 512^2", (1, 16, 512, 512), (16, 16, 3, 3), 1, 1, 1, 2),
    ("layer 32->32 3x3 512^2", (1, 32, 512, 512), (32, 32, 3, 3), 1, 1, 1, 2),
    ("layer 64->64 3x3 256^2", (1, 64, 256, 256), (64, 64, 3, 3), 1, 1, 1, 2),
    ("layer 8->16 5x5 512^2", (1, 8, 512, 512), (16, 8, 5, 5), 2, 1, 1, 2),
    ("layer 16->32 3x3 s2 768^2", (1, 16, 768, 768), (32, 16, 3, 3), 1, 2, 1, 2),
    ("batch 8x16->16 3x3 128^2", (8, 16, 128, 128), (16, 16, 3, 3), 1, 1, 1, 2),
    ("batch 4x3->16 7x7 256^2", (4, 3, 256, 256), (16, 3, 7, 7), 3, 1, 1, 2),
    ("depthwise 32 3x3 512^2", (1, 32, 512, 512), (32, 1, 3, 3), 1, 1, 32, 2),
    ("layer 16->16 3x3 512^2 x3", (1, 16, 512, 512), (16, 16, 3, 3), 1, 1, 1, 3),
    ("layer 32->32 3x3 384^2 x4", (1, 32, 384, 384), (32, 32, 3, 3), 1, 1, 1, 4),
    ("layer 64->64 1x1 512^2", (1, 64, 512, 512), (64, 64, 1, 1), 0, 1, 1, 2),
    ("filter 3x3 2048^2", (1, 1, 2048, 2048), (1, 1, 3, 3), 1, 1, 1, 2),
    ("filter 7x7 2048^2", (1, 1, 2048, 2048), (1, 1, 7, 7), 3, 1, 1, 2),
    ("filter 15x15 1024^2", (1, 1, 1024, 1024), (1, 1, 15, 15), 7, 1, 1, 2),
    ("filter 31x31 1024^2", (1, 1, 1024, 1024), (1, 1, 31, 31), 15, 1, 1, 2),
    ("filter 5x5 RGB 1536^2", (1, 3, 1536, 1536), (3, 1, 5, 5), 2, 1, 3, 2),
    ("filter 3x3 4096x1024", (1, 1, 4096, 1024), (1, 1, 3, 3), 1, 1, 1, 3),
    ("filter 9x9 1024^2 x4", (1, 1, 1024, 1024), (1, 1, 9, 9), 4, 1, 1, 4),
    ("small 16->16 3x3 64^2", (1, 16, 64, 64), (16, 16, 3, 3), 1, 1, 1, 2),
    ("volume 8->8 3^3 64^3", (1, 8, 64, 64, 64), (8, 8, 3, 3, 3), 1, 1, 1, 2),
    ("signal 4->8 k9 1M", (1, 4, 2**20), (8, 4, 9), 4, 1, 1, 2),
    ("layer 3->32 3x3 s2 1024^2", (1, 3, 1024, 1024), (32, 3, 3, 3), 1, 2, 1, 2),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None, help="profile JSON (default: the calibrated one, else defaults)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the first 8 configurations, top 4 candidates each")
    args = ap.parse_args()
    prof = cost.load_profile(args.profile)
    print(f"profile: {prof.source}; load average {os.getloadavg()}")
    configs = CONFIGS[:8] if args.quick else CONFIGS
    errors, hits = [], []
    clusters: dict[int, LocalCluster] = {}
    try:
        for name, xs, ws, pad, stride, groups, workers in configs:
            spec = ConvSpec.from_args(xs, ws, (ws[0],), stride=stride, padding=pad, groups=groups)
            ranked = cost.candidates(spec, workers, prof, backend="auto")
            # candidates predicted more than 3x slower than the first are not run (FFT on a dense
            # 64-channel layer takes minutes); the choice is judged among those that are
            ranked = [q for q in ranked if q.total_s <= 3 * ranked[0].total_s][: 4 if args.quick else 8]
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(s, generator=g) for s in (xs, ws, (ws[0],)))
            cl = clusters.get(workers) or clusters.setdefault(workers, LocalCluster(workers))
            measured = []
            for pred in ranked:
                cl.run(pred.plan, x, w, b)  # warm-up
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    cl.run(pred.plan, x, w, b)
                    best = min(best, time.perf_counter() - t0)
                measured.append(best)
                errors.append(abs(pred.total_s - best) / best)
            fastest = min(measured)
            hit = measured[0] <= 1.10 * fastest
            hits.append(hit)
            print(f"\n{name} ({workers} workers)  load {os.getloadavg()[0]:.2f}")
            print(f"  {'candidate':34s} {'predicted s':>11} {'measured s':>10} {'error':>7}")
            for pred, m in zip(ranked, measured):
                mark = " <- chosen" if pred is ranked[0] else (" <- fastest" if m == fastest else "")
                print(f"  {pred.label:34s} {pred.total_s:11.4f} {m:10.4f} {(pred.total_s - m) / m:+7.0%}{mark}")
            print(f"  chosen within 10% of the fastest: {hit} ({measured[0] / fastest:.2f}x)")
    finally:
        for cl in clusters.values():
            cl.close()
    med = statistics.median(errors)
    print(f"\n{len(configs)} configurations, {len(errors)} runs; load average {os.getloadavg()}")
    print(f"median |error| = {med:.1%} (target <= 25%): {'met' if med <= 0.25 else 'NOT met'}")
    share = sum(hits) / len(hits)
    print(f"chosen within 10% of fastest in {sum(hits)}/{len(hits)} = {share:.0%} (target >= 90%): "
          f"{'met' if share >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
