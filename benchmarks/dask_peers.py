"""haloconv.ndimage on Dask against dask-image, side by side on one dask.distributed
LocalCluster (issue 30's benchmark).

    .venv/bin/python benchmarks/dask_peers.py [--size 16384] [--chunk 2048] [--repeat 1]

An S x S float32 Zarr array of uniform noise (chunks C x C), written once; then, per filter
(box 5x5, gaussian:2, a dense random 15x15; mode 'reflect'), each method reads the Zarr
array as a dask array, filters it and writes a Zarr array of the same chunks, on a
LocalCluster of 2 worker processes x 1 thread:
  haloconv     haloconv.ndimage.correlate / gaussian_filter (backend 'ndimage': bit for bit
               scipy; one task per output chunk reading the chunks its halo reaches)
  haloconv-auto  the same with backend='auto' (OpenCV per chunk, within float32 of scipy)
  haloconv-file  what `haloconv run in.zarr --dask ...` runs: haloconv.conv's plan on the
               Zarr chunks, each task reading its own window from the file (engines/
               dask_graph.from_reader; backend as the CLI picks it: OpenCV / separable)
  dask-image   dask_image.ndfilters.correlate / gaussian_filter (map_overlap)
  zarr copy    the input read and written as a Zarr array of the same chunks, nothing
               computed: what any method pays on this cluster for the chunks' reads,
               decoding, encoding and writes and the scheduler's tasks (the floor; its
               "x dask-image" is the most any method could be faster than dask-image)
and, in this process: the haloconv-auto graph on Dask's threaded scheduler (2 threads;
haloconv-threads), and haloconv's own streamed run of the same filter with the same backend
pick (haloconv-stream: haloconv.conv_file, the Zarr read and written tile by tile on its
threads engine, 2 cores, a 4 GiB budget: this process holds ~1 GiB of Dask) — the graph's
cost on Dask against haloconv's own engine. Wall time (best of --repeat), each worker's peak resident memory (psutil,
sampled every 20 ms from here), the outputs' largest difference from each other, the load
average. Not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import dask_image.ndfilters as dndf
import numpy as np
import psutil
import zarr
from distributed import Client, LocalCluster

import haloconv
from haloconv import ndimage as hndi
from haloconv import planner
from haloconv.cli.dask_run import Reader, chunk_lengths
from haloconv.engines import dask_graph
from haloconv.files import arrays, named_kernels
from haloconv.tiling.plan import chunk_plan

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=16384)
ap.add_argument("--chunk", type=int, default=2048)
ap.add_argument("--repeat", type=int, default=1)
args = ap.parse_args()


def peak_watch(pids: list[int], stop: threading.Event, peaks: dict) -> None:
    procs = [psutil.Process(p) for p in pids]
    while not stop.is_set():
        for p in procs:
            try:
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.02)


def main() -> None:
    rng = np.random.default_rng(0)
    k15 = rng.random((15, 15))
    k15 /= k15.sum()
    kernels = {"box 5x5": np.full((5, 5), 1 / 25), "gaussian:2": named_kernels.load_kernel("gaussian:2", 1, 2)[0][0, 0],
               "dense 15x15": k15}
    jobs = {
        "box 5x5": (lambda m, d, **kw: m.correlate(d, np.full((5, 5), 1 / 25), **kw)),
        "gaussian:2": (lambda m, d, **kw: m.gaussian_filter(d, 2, **kw)),
        "dense 15x15": (lambda m, d, **kw: m.correlate(d, k15, **kw)),
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        src = Path(tmp) / "in.zarr"
        z = zarr.create_array(str(src), shape=(args.size, args.size), chunks=(args.chunk, args.chunk), dtype="f4")
        for r0 in range(0, args.size, args.chunk):
            z[r0:r0 + args.chunk] = rng.random((min(args.chunk, args.size - r0), args.size), dtype=np.float32)
        print(f"{args.size}^2 float32 Zarr, chunks {args.chunk}^2 ({args.size ** 2 * 4 / 2**30:.1f} GiB); "
              f"LocalCluster 2 workers x 1 thread")
        print("| filter | method | seconds | x dask-image | peak MiB per worker | max diff | load |")
        print("|---|---|---|---|---|---|---|")
        for fname, f in jobs.items():
            results = {}
            for method, mod, kw in (("haloconv", hndi, {}), ("haloconv-auto", hndi, {"backend": "auto"}),
                                    ("haloconv-file", None, {}), ("dask-image", dndf, {}),
                                    ("zarr copy", None, {}), ("haloconv-threads", hndi, {"backend": "auto"}),
                                    ("haloconv-stream", None, {})):
                # a cluster per method: a worker's peak is then this method's, not what an
                # earlier one left in its heap
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=None) as lc, Client(lc) as client:
                    pids = list(client.run(os.getpid).values())
                    best, peak = np.inf, {}
                    out = Path(tmp) / f"{method}.zarr"
                    for _ in range(args.repeat):
                        d = da.from_zarr(str(src))
                        y = f(mod, d, **kw) if mod is not None else d if method == "zarr copy" else \
                            None if method == "haloconv-stream" else from_file(src, kernels[fname])
                        stop, peaks = threading.Event(), {}
                        watcher = threading.Thread(target=peak_watch, args=(pids, stop, peaks))
                        watcher.start()
                        t0 = time.perf_counter()
                        try:
                            run_method(method, client, src, out, kernels[fname], y)
                        finally:  # the watcher stops whatever the method raised
                            stop.set()
                            watcher.join()
                        best = min(best, time.perf_counter() - t0)
                        peak = peaks
                    results[method] = (best, peak, out)
            ref = da.from_zarr(str(results["dask-image"][2]))
            for method, (t, peak, out) in results.items():
                diff = "-" if method == "zarr copy" else \
                    f"{float(abs(da.from_zarr(str(out)) - ref).max().compute(scheduler='threads')):.3g}"
                per = "-" if method in ("haloconv-threads", "haloconv-stream") else \
                    " / ".join(f"{v / 2**20:.0f}" for v in peak.values())
                print(f"| {fname} | {method} | {t:.2f} | {results['dask-image'][0] / t:.2f} | {per} | "
                      f"{diff} | {os.getloadavg()[0]:.2f} |", flush=True)
            print(f"| {fname} | haloconv-threads / haloconv-stream | "
                  f"{results['haloconv-threads'][0] / results['haloconv-stream'][0]:.2f} | | | | |", flush=True)


def run_method(method: str, client, src: Path, out: Path, kernel: np.ndarray, y) -> None:
    """Compute ``y`` into the Zarr array ``out`` as ``method`` runs it (haloconv-stream: its own
    streamed run of ``kernel`` on ``src`` instead)."""
    if method == "haloconv-stream":
        haloconv.conv_file(str(src), kernel.astype(np.float32)[None, None], str(out), padding="same",
                           padding_mode="symmetric", backend="auto", memory_budget=4 << 30, workers=2, overwrite=True)
    elif method == "haloconv-threads":
        with dask.config.set(scheduler="threads", num_workers=2):
            y.to_zarr(str(out), overwrite=True, compute=True)
    else:
        client.compute(y.to_zarr(str(out), overwrite=True, compute=False)).result()


def from_file(src: Path, kernel: np.ndarray):
    """The graph `haloconv run --dask` builds (cli/dask_run): mode 'reflect' is scipy's, the
    'symmetric' padding, 'same' size; float32 filters."""
    source = arrays.open_input(str(src), "keep", "auto")
    w = kernel.astype(np.float32)[None, None]
    one = planner.plan(source.logical_shape, w, padding="same", padding_mode="symmetric",
                       partition=(1, 1, 1, 1), engine="threads")
    plan = chunk_plan(one.spec, [(1,), (1,), *(chunk_lengths(args.size, args.chunk),) * 2], one.backend)
    return dask_graph.from_reader(plan, Reader(source, "float32", (1, 1, args.chunk, args.chunk)), np.float32, w,
                                  None)[0, 0]


if __name__ == "__main__":
    main()
