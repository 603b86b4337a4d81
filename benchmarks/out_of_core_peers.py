"""Out of core against libvips and against the disk's own limit: whole commands on a big
.npy, side by side in one run.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'     # pyvips + libvips, for this only
    .venv/bin/python benchmarks/out_of_core_peers.py [--sides 16384,32768] [--kernel box:5]
                                                     [--budget 1GB] [--repeat 2] [--dir /tmp]
                                                     [--skip 'libvips conv,haloconv processes']

For each side S, an S x S float32 .npy (1 GiB at 16384, 4 GiB at 32768, 16 GiB at 65536),
then, interleaved, best of --repeat, each a fresh process watched from outside by psutil
every 5 ms (peak resident memory of every process of the command), the input dropped from
the page cache before each (posix_fadvise DONTNEED: read from the disk, as an input a user
has not just touched):
  haloconv threads     haloconv run IN --kernel K --stream --memory-budget B (the default:
                       one process, read / compute / write overlapped on threads)
  haloconv processes   the same with --engine processes (2 worker processes)
  libvips conv         pyvips: rawload the file (past its .npy header) -> conv (float) -> rawsave
  libvips convsep      the same with convsep (the kernel's 1-D factor; box and gaussian are separable)
  copy                 cp IN OUT: the same bytes read, then written, nothing computed
  disk limit           (benchmarks/disk_limit.py) the input's bytes read and as many written at
                       once, around the page cache, nothing computed: what a streamed run,
                       which overlaps its reads and writes, cannot beat on this disk; beside it
                       the read alone and the write alone
Effective bandwidth = (input + output bytes) / wall.  Each command's output is removed as
it ends (haloconv's last one at the first side is kept for the check), so the disk holds the
input and one output at a time.  At the smallest side, haloconv's output is compared with the
single-node call of the backend it used (bitwise where the backend computes directly).
Load average beside every row.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from disk_limit import drop_cache, limit  # benchmarks/disk_limit.py, beside this script
from memory_watch import run_watched, write_random_npy  # benchmarks/memory_watch.py

ap = argparse.ArgumentParser()
ap.add_argument("--sides", default="16384,32768")
ap.add_argument("--kernel", default="box:5")
ap.add_argument("--budget", default="1GB")
ap.add_argument("--repeat", type=int, default=2)
ap.add_argument("--dir", default=tempfile.gettempdir())
ap.add_argument("--skip", default="", help="commands not run, comma-separated")
args = ap.parse_args()

VIPS = """
import sys, numpy as np, pyvips
from haloconv.files import named_kernels
path, out, side, kernel, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
with open(path, "rb") as f:
    np.lib.format.read_magic(f); np.lib.format.read_array_header_1_0(f); offset = f.tell()
w = named_kernels.load_kernel(kernel, 1, 2)[0][0, 0].astype(np.float64)
x = pyvips.Image.rawload(path, side, side, 1, offset=offset, format="float")
if how == "conv":
    y = x.conv(pyvips.Image.new_from_list(w.tolist()), precision="float")
else:  # the 1-D factor: a separable kernel is the outer product of its first column, scaled
    col = w[:, w.shape[1] // 2] / np.sqrt(w[w.shape[0] // 2, w.shape[1] // 2])
    y = x.convsep(pyvips.Image.new_from_list([col.tolist()]), precision="float")
y.rawsave(out)
"""


def watched(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall s, the largest peak RSS of any process of the command, output)."""
    wall, seen, text = run_watched(cmd, cwd)
    return wall, max(seen.values()), text


def commands(inp: Path, side: int) -> dict[str, list[str]]:
    hc = [sys.executable, "-m", "haloconv", "run", str(inp), "--kernel", args.kernel, "--stream",
          "--memory-budget", args.budget, "--padding", "same", "--overwrite"]
    vips = [sys.executable, "-c", VIPS, str(inp), "vips.raw", str(side), args.kernel]
    return {
        "haloconv threads": [*hc, "-o", "hc-threads", "--report", "hc-threads.json"],
        "haloconv processes": [*hc, "--engine", "processes", "-o", "hc-processes"],
        "libvips conv": [*vips, "conv"],
        "libvips convsep": [*vips, "convsep"],
        "copy": ["cp", str(inp), "copy.raw"],
    }


def check(work: Path, inp: Path, side: int, rows: int = 1024) -> str:
    """haloconv's streamed output against the single-node call of the backend it used, on
    three bands of rows (top, middle, bottom: an input of any size stays out of memory):
    each band's output computed from its rows and the halo rows around them is the whole
    call's there, the image's own border included."""
    import torch

    from haloconv.compute import backends
    from haloconv.files import named_kernels
    from haloconv.tiling.spec import ConvSpec

    backend = json.loads((work / "hc-threads.json").read_text())["backend"]
    w = torch.from_numpy(named_kernels.load_kernel(args.kernel, 1, 2)[0].astype(np.float32))
    h = w.shape[-2] // 2
    x, y = np.load(inp, mmap_mode="r"), np.load(work / "hc-threads.npy", mmap_mode="r").reshape(side, side)
    same = True
    for lo in (0, side // 2, side - rows):
        a, b = max(lo - h, 0), min(lo + rows + h, side)
        band = torch.from_numpy(np.array(x[a:b]))[None, None]
        spec = ConvSpec.from_args(tuple(band.shape), tuple(w.shape), None, padding="same")
        ref = backends.single_node(backend, band, w, None, spec)[0, 0, lo - a:lo - a + rows]
        same &= torch.equal(torch.from_numpy(np.array(y[lo:lo + rows])), ref)
    return f"backend {backend}: bitwise equal to its single-node call (3 bands of {rows} rows): {same}"


work = Path(tempfile.mkdtemp(prefix="haloconv-ooc-peers-", dir=args.dir))
try:
    print(f"kernel {args.kernel}; budget {args.budget}; best of {args.repeat}; {os.cpu_count()} cores")
    for n, side in enumerate(int(s) for s in args.sides.split(",")):
        inp = work / f"in{side}.npy"
        write_random_npy(inp, side, side)
        size = inp.stat().st_size
        cmds = {k: v for k, v in commands(inp, side).items() if k not in args.skip.split(",")}
        best: dict[str, tuple[float, int, float]] = {}
        disk: dict[str, float] = {}
        for r in range(args.repeat):
            for name, cmd in cmds.items():  # interleaved: a load change hits every method alike
                drop_cache(inp)
                wall, rss, _ = watched(cmd, work)
                load = os.getloadavg()[0]
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, rss, load)
                # every command starts alike, with the disk holding the input only (haloconv's
                # --overwrite would keep an old output until the new one is whole)
                keep = n == 0 and r == args.repeat - 1  # haloconv's last output at the first side: checked
                for f in work.iterdir():
                    if f != inp and not (keep and f.name.startswith("hc-threads")):
                        shutil.rmtree(f) if f.is_dir() else f.unlink()
            for k, v in limit(inp, work / "limit.raw", 1).items():  # in turn with the commands too
                disk[k] = min(disk.get(k, v), v)
        print(f"\n{side}x{side} float32 ({size / 2**30:.2f} GiB in, as much out)")
        print(f"{'command':<20} {'wall s':>7} {'GiB/s':>6} {'peak RSS MiB':>13} {'load':>5}")
        for name, (wall, rss, load) in best.items():
            print(f"{name:<20} {wall:>7.2f} {2 * size / 2**30 / wall:>6.2f} {rss / 2**20:>13.0f} {load:>5.2f}")
        print(f"{'disk limit':<20} {disk['both']:>7.2f} {2 * size / 2**30 / disk['both']:>6.2f} "
              f"{'':>13} {os.getloadavg()[0]:>5.2f}   (read alone {disk['read']:.2f} s, write alone "
              f"{disk['write']:.2f} s)")
        hc = best["haloconv threads"][0]
        ratios = [f"haloconv threads / disk limit = {hc / disk['both']:.2f}"]
        ratios += [f"/ {name} = {hc / best[name][0]:.2f}" for name in ("libvips conv", "libvips convsep", "copy")
                   if name in best]
        print("; ".join(ratios))
        if n == 0:
            print(check(work, inp, side))
        for f in work.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
finally:
    shutil.rmtree(work, ignore_errors=True)
