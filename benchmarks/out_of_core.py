"""Out of core: `haloconv run` on a >= 4 GiB input under a per-process memory budget.

    .venv/bin/python benchmarks/out_of_core.py [--side 32768] [--budget 768MiB] [--kernel sobel-x]
                                               [--backend torch] [--workers 2] [--dir /tmp] [--keep]

Writes a side x side float32 .npy (4 GiB at the default side), then runs the command line
exactly as a user would: the input and output do not fit the budget, so haloconv streams
(every process reads its tiles from the input and writes them into the output .npy).
Reported: wall time, throughput, tiles, and the peak resident memory of every process —
sampled from outside with psutil every 5 ms and each process's own peak (VmHWM) — against
the budget.  Beside it, side by side in this run: the same conv in memory (processes
engine) on a slice of --slice rows, and streamed on that slice, to show what streaming
costs per pixel.  Load average printed.  Exactness is the tests' job (tests/test_stream*.py).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from memory_watch import run_watched, write_random_npy  # benchmarks/memory_watch.py, beside this script

ap = argparse.ArgumentParser()
ap.add_argument("--side", type=int, default=32768)
ap.add_argument("--budget", default="768MiB")
ap.add_argument("--kernel", default="sobel-x")
ap.add_argument("--backend", default="torch")
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--slice", type=int, default=4096, help="rows of the in-memory vs streamed comparison")
ap.add_argument("--dir", default=tempfile.gettempdir())
ap.add_argument("--keep", action="store_true", help="keep the input and output files")
args = ap.parse_args()

work = Path(tempfile.mkdtemp(prefix="haloconv-ooc-", dir=args.dir))


def make_input(path: Path, rows: int, cols: int) -> float:
    t0 = time.perf_counter()
    write_random_npy(path, rows, cols)
    return time.perf_counter() - t0


def run(inp: Path, out: str, *extra: str) -> tuple[float, dict, dict, str]:
    """The CLI, watched by psutil: (wall s, report, sampled peak RSS by pid, stdout)."""
    cmd = [sys.executable, "-m", "haloconv", "run", str(inp), "--kernel", args.kernel, "--backend", args.backend,
           "--workers", str(args.workers), "-o", out, "--overwrite", "--report", f"{out}.json", *extra]
    wall, seen, text = run_watched(cmd, work)
    return wall, json.loads((work / f"{out}.json").read_text()), seen, text


try:
    big = work / "big.npy"
    gen_s = make_input(big, args.side, args.side)
    size = big.stat().st_size
    print(f"input {args.side}x{args.side} float32: {size / 2**30:.2f} GiB written in {gen_s:.1f}s; "
          f"budget {args.budget} per process; {args.workers} processes; kernel {args.kernel}; "
          f"backend {args.backend}; load {os.getloadavg()[0]:.2f}")
    wall, rep, seen, text = run(big, "big-out", "--memory-budget", args.budget)
    if "streaming:" not in text:
        sys.exit("expected a streamed run (the input should not fit the budget)")
    budget = rep["budget"]
    peaks = {int(r): v["peak_rss"] for r, v in rep["ranks"].items()}
    print(f"streamed: {rep['tiles']} tiles of {'x'.join(map(str, rep['block']))}, wall {wall:.1f}s "
          f"(in haloconv {rep['wall_seconds']:.1f}s), {size / 2**20 / rep['wall_seconds']:.0f} MiB/s of input")
    for r, p in sorted(peaks.items()):
        print(f"  rank {r}: {rep['ranks'][str(r)]['tiles']} tiles, peak RSS {p / 2**20:.0f} MiB (VmHWM)")
    sampled = max(seen.values())
    print(f"  peak RSS of any process: {max(peaks.values()) / 2**20:.0f} MiB (VmHWM), {sampled / 2**20:.0f} MiB "
          f"(psutil, every 5 ms); budget {budget / 2**20:.0f} MiB; before any data {rep['baseline'] / 2**20:.0f} MiB; "
          f"within budget: {max(max(peaks.values()), sampled) <= budget}; input / budget = {size / budget:.1f}x")
    print(f"  load after: {os.getloadavg()[0]:.2f}")
    (work / "big-out.npy").unlink()
    big.unlink()

    # what streaming costs: the same conv on a slice, in memory and streamed, side by side
    part = work / "slice.npy"
    make_input(part, args.slice, args.side)
    mem = min(run(part, "mem")[0] for _ in range(2))
    st = min(run(part, "st", "--stream", "--memory-budget", args.budget)[0] for _ in range(2))
    print(f"slice {args.slice}x{args.side} ({part.stat().st_size / 2**20:.0f} MiB), best of 2 CLI runs "
          "(incl. start-up): "
          f"in memory {mem:.1f}s, streamed {st:.1f}s, streamed / in memory = {st / mem:.2f}; "
          f"load {os.getloadavg()[0]:.2f}")
finally:
    if not args.keep:
        for p in work.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        work.rmdir()
