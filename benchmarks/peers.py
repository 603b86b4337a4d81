"""haloconv against its peers on one big image filter (issue target).

    .venv/bin/pip install -c constraints.txt -e '.[bench]'     # dask-image, for this benchmark only
    .venv/bin/python benchmarks/peers.py [--size 8192] [--kernels 3,15] [--repeat 3] [--warm 5]

S x S float32, a random k x k kernel, zero padding ('same'), 2 workers:
  haloconv     every default of `haloconv run` on 2 cores: the cost model's partition and
               backend, in this process (numpy arrays through OpenCV: no torch in the timed call)
  opencv       cv2.filter2D on the whole image, 2 threads (sepFilter2D for named separable kernels)
  *-out        the same, into an output made (and touched) before the clock
  scipy        scipy.ndimage.correlate, one thread
  dask-image   dask_image.ndfilters.correlate, row chunks (S/2 x S), threaded scheduler, 2 threads
  torch        F.conv2d in one process, 2 threads
Every run is a fresh process (its memory high-water mark is its own); methods interleaved,
best of N and the median; --warm W also times W more calls in each process after its first
(best reported: a process filtering image after image, apart from a fresh process's state).
Peak extra memory: the high-water mark above the process's resident memory once the input
exists (for haloconv, plus each worker's growth over its idle size). Outputs are compared
with scipy's. Load average beside every figure. Not a test. (haloconv.cli.bench.peers)
"""

import argparse

from haloconv.cli import bench

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=8192)
ap.add_argument("--kernels", default="3,7,15,gaussian:2,box:15",
                help="k (a random k x k kernel) or a named kernel, comma-separated")
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--methods", default=",".join(bench.PEERS))
ap.add_argument("--warm", type=int, default=0,
                help="also time this many more calls in each process, after its first (best reported)")
args = ap.parse_args()
bench.peers(args.size, [int(k) if k.isdigit() else k for k in args.kernels.split(",")], args.repeat,
            args.methods.split(","), warm=args.warm)
