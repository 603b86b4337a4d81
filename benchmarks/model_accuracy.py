"""Predicted vs measured: the cost model on >= 20 configurations (issue target).

    .venv/bin/python benchmarks/model_accuracy.py [--profile PATH] [--repeat 5] [--passes 2] [--quick]
                                                  [--held-out]

For each configuration (conv layers and image filters, 1-4 workers), every candidate the
cost model ranks (named partitions, grid, hybrids, a single worker; backends where they
apply; those predicted within 3x of its first choice) runs end to end on the processes
engine beside its prediction: round robin, best of at least N runs and of 0.3 s of runs
each, in each of two passes through all configurations (a slow stretch of the shared host
seldom covers both).  Targets: median |predicted - measured| / measured <= 25% over all runs, and the
first choice within 10% of the best measured candidate in >= 90% of configurations.  Load
average beside the figures.  Not a test.  ``--held-out``: the same on configurations calibrate
never used (other shapes, channel counts, kernels), every candidate measured.
(haloconv.cli.bench.model_accuracy)
"""

import argparse

from haloconv.cli import bench

ap = argparse.ArgumentParser()
ap.add_argument("--profile", default=None, help="profile JSON (default: the calibrated one, else defaults)")
ap.add_argument("--repeat", type=int, default=5)
ap.add_argument("--passes", type=int, default=None, help="passes through all configurations (default 2, quick 1)")
ap.add_argument("--quick", action="store_true", help="the first 8 configurations, top 4 candidates each")
ap.add_argument("--held-out", action="store_true", help="configurations calibrate never used, every candidate run")
args = ap.parse_args()
bench.model_accuracy(args.profile, args.repeat, args.quick, min_seconds=0.0 if args.quick else 0.3,
                    passes=args.passes, held_out=args.held_out)
