"""Soak: 200 calls with varied shapes on one LocalCluster (issue target: resident memory
growth < 5% after warm-up, no leaked file descriptors or processes).

    .venv/bin/python benchmarks/soak.py [--calls 200] [--workers 2] [--distinct 40]

Every result is checked against single-node torch.  Not a test (tests/test_soak.py runs a
short version).  (haloconv.soak)
"""

import argparse
import os

from haloconv.soak import soak

ap = argparse.ArgumentParser()
ap.add_argument("--calls", type=int, default=200)
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--distinct", type=int, default=40)
args = ap.parse_args()
print(f"load average {os.getloadavg()}")
r = soak(args.calls, args.workers, args.distinct)
ok = max(r["rss_growth"].values()) < 0.05 and not any(r["fd_growth"].values()) and not r["leaked_processes"]
print(f"target (RSS growth < 5%, no fd or process leaked): {'met' if ok else 'NOT met'}; load {os.getloadavg()}")
