"""How long planning takes as the workers grow: haloconv.plan of a 512^2 3x3 filter and of a
64-channel 3x3 layer on 2048^2, partition 'auto' (the cost model choosing among every
candidate), default profile, each plan made afresh (issue 28: 1,024 workers <= 0.1 s), for
the threads engine (what haloconv.conv and `haloconv run` use by default: candidates priced
from their tiles' shapes) and the processes engine (each candidate's schedule simulated,
unless a floor priced from its split counts or tiles' shapes is above the best so far;
``--processes-up-to`` caps its worker counts).

    .venv/bin/python benchmarks/planning.py [--workers 16,64,256,1024] [--processes-up-to 1024]

Prints the seconds per plan, the choice, and the load average (other sessions share this
machine's cores).  Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import time

import haloconv
from haloconv import planner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="16,64,256,1024")
    ap.add_argument("--processes-up-to", type=int, default=1024)
    args = ap.parse_args()
    problems = {"filter 512^2 3x3": ((1, 1, 512, 512), (1, 1, 3, 3)),
                "layer 64ch 2048^2 3x3": ((1, 64, 2048, 2048), (64, 64, 3, 3))}
    print(f"{'problem':>22} {'engine':>9} {'workers':>8} {'seconds':>8}  choice  (load)")
    for engine in ("threads", "processes"):
        for name, (xs, ws) in problems.items():
            for n in (int(v) for v in args.workers.split(",")):
                if engine == "processes" and n > args.processes_up_to:
                    continue
                planner.forget()  # afresh: not the plan kept from the last call
                t0 = time.perf_counter()
                p = haloconv.plan(xs, ws, padding=1, workers=n, engine=engine)
                took = time.perf_counter() - t0
                print(f"{name:>22} {engine:>9} {n:>8} {took:>8.3f}  {p.partition} {'x'.join(map(str, p.splits))} "
                      f"{p.backend}  ({os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
