"""haloconv.ndimage on dask arrays: a dask array out, lazily, with the input's chunks; each
chunk computed from exactly the input chunks its halo reaches (the mode's folding included);
bit for bit scipy's call on the whole array, for odd chunkings (uneven last chunks, chunks
thinner than the halo, kernels longer than the array)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import scipy.ndimage as sndi
from hypothesis import example, given, settings
from hypothesis import strategies as st

from haloconv import ndimage as ndi

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

MODES = ("reflect", "mirror", "wrap", "nearest", "constant")
REACHED: collections.Counter = collections.Counter()


@st.composite
def case(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 24 if ndim < 3 else 9)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    dtype = draw(st.sampled_from((np.float64, np.float32, np.uint8, np.int32)))
    mode = draw(st.sampled_from(MODES))
    which = draw(st.sampled_from(("correlate", "convolve", "correlate1d", "gaussian_filter", "sobel",
                                  "laplace", "uniform_filter1d")))
    k = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    origin = tuple(draw(st.integers(-(n // 2), (n - 1) // 2)) for n in k)
    sigma = draw(st.sampled_from((0.7, 1.5, 4.0)))
    return dict(shape=shape, chunks=chunks, dtype=dtype, mode=mode, which=which, k=k, origin=origin, sigma=sigma,
                cval=draw(st.sampled_from((0.0, 2.5, -1.0))))


def _call(mod, c, x, rng_weights):
    which, mode, cval = c["which"], c["mode"], c["cval"]
    if which in ("correlate", "convolve"):
        return getattr(mod, which)(x, rng_weights, mode=mode, cval=cval, origin=c["origin"])
    if which == "correlate1d":
        return mod.correlate1d(x, rng_weights.reshape(-1)[:c["k"][0]], axis=-1, mode=mode, cval=cval,
                               origin=c["origin"][0])
    if which == "gaussian_filter":
        return mod.gaussian_filter(x, c["sigma"], mode=mode, cval=cval)
    if which == "uniform_filter1d":
        return mod.uniform_filter1d(x, c["k"][0], axis=0, mode=mode, cval=cval, origin=c["origin"][0])
    return getattr(mod, which)(x, mode=mode, cval=cval)


_SOBEL_CVAL = dict(shape=(11, 9), chunks=(4, 3), dtype=np.float64, mode="constant", which="sobel", k=(3, 3),
                   origin=(0, 0), sigma=1.5, cval=2.5)


@settings(max_examples=150, deadline=None)
@given(case())
# passes chained along axes under constant padding with a nonzero cval (run whole, exact)
@example(_SOBEL_CVAL)
@example(dict(_SOBEL_CVAL, which="gaussian_filter", dtype=np.uint8, cval=-1.0))
def test_dask_arrays_give_scipys_bits_chunk_by_chunk(c):
    rng = np.random.default_rng(0)
    a = (rng.random(c["shape"]) * 100).astype(c["dtype"])
    w = rng.random(c["k"])
    d = da.from_array(a, chunks=c["chunks"])
    y = _call(ndi, c, d, w)
    assert isinstance(y, da.Array) and y.chunks == d.chunks
    got = y.compute(scheduler="threads")
    ref = _call(sndi, c, a, w)
    assert got.dtype == ref.dtype
    if c["which"] == "uniform_filter1d" and a.dtype.kind == "f":  # a window's sum, not scipy's running one
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    else:
        assert np.array_equal(got, ref), c
    reach = max(c["k"]) if c["which"] != "gaussian_filter" else int(4 * c["sigma"] + 0.5)
    REACHED[c["mode"]] += 1
    if any(n < reach for n in c["chunks"]):
        REACHED["chunk thinner than the halo"] += 1
    if any(n < reach for n in c["shape"]):
        REACHED["kernel longer than the array"] += 1
    if any(n % ch for n, ch in zip(c["shape"], c["chunks"])):
        REACHED["uneven last chunk"] += 1


def test_the_property_reached_its_cases():
    if not REACHED:
        pytest.skip("run with the property test")
    need = (*MODES, "chunk thinner than the halo", "kernel longer than the array", "uneven last chunk")
    assert all(REACHED[k] >= 3 for k in need), REACHED


def test_a_chunk_reads_only_the_chunks_its_halo_reaches_and_runs_anywhere():
    """A 3x3 correlate on 4x4 chunks of 6 x 6 blocks: an interior chunk's task reads its own
    chunk and strips of its 3 x 3 neighbourhood (slicing tasks where the neighbours are, so
    only the strips travel), an edge chunk under 'wrap' strips of the far side's chunks; the
    same values on the synchronous scheduler."""
    from dask.core import get_dependencies

    a = np.arange(24 * 24, dtype=np.float64).reshape(24, 24)
    d = da.from_array(a, chunks=4)
    y = ndi.correlate(d, np.ones((3, 3)), mode="wrap")
    graph = dict(y.__dask_graph__())
    assert sum(1 for k in graph if k[0] == y.name) == 36  # one task per output chunk

    def reads(key):
        inputs, strips = set(), 0
        for dep in get_dependencies(graph, key):
            if dep[0] == d.name:
                inputs.add(dep[1:])
            else:  # a slicing task on one input chunk
                (src,) = get_dependencies(graph, dep)
                inputs.add(src[1:])
                strips += dask.get(graph, dep).size
        return inputs, strips

    interior, strips = reads((y.name, 2, 3))
    assert interior == {(i, j) for i in (1, 2, 3) for j in (2, 3, 4)}
    # the window is the chunk grown by the reach bound (3) on each side: 10 x 10 = 16 own + 84 from strips
    assert strips == 10 * 10 - 16
    corner, _ = reads((y.name, 0, 0))
    assert corner == {(i, j) for i in (5, 0, 1) for j in (5, 0, 1)}
    with dask.config.set(scheduler="sync"):
        assert np.array_equal(y.compute(), sndi.correlate(a, np.ones((3, 3)), mode="wrap"))
    with pytest.raises(TypeError, match="output must be None or a dtype"):
        ndi.correlate(d, np.ones((3, 3)), output=np.zeros((24, 24)))
    with pytest.raises(RuntimeError, match="boundary mode"):
        ndi.correlate(d, np.ones((3, 3)), mode="bogus")


DISTRIBUTED_SCRIPT = """
import numpy as np, dask.array as da, scipy.ndimage as sndi, distributed
from haloconv import ndimage as ndi

if __name__ == "__main__":
    rng = np.random.default_rng(1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \\
            distributed.Client(lc) as client:
        for mode, dtype, chunks in (("reflect", np.float32, (64, 48)), ("wrap", np.uint8, (23, 17)),
                                    ("mirror", np.float64, (3, 100)), ("constant", np.int32, (50, 6))):
            a = (rng.random((150, 100)) * 200).astype(dtype)
            k = rng.random((5, 7))
            y = client.persist(ndi.correlate(da.from_array(a, chunks=chunks), k, mode=mode, cval=-1.0))
            distributed.wait(y)
            held = client.has_what()
            ours = {key for keys in held.values() for key in keys if y.name in str(key)}
            print(mode, len(held), len(ours) == int(np.prod(y.numblocks)),
                  np.array_equal(y.compute(), sndi.correlate(a, k, mode=mode, cval=-1.0)))
        g = ndi.gaussian_filter(da.from_array(a.astype(np.float32), chunks=(40, 30)), 3)
        print("gaussian", np.array_equal(client.compute(g).result(), sndi.gaussian_filter(a.astype(np.float32), 3)))
        # haloconv.conv on an (N, C, H, W) dask array: a layer, torch's bits
        import torch, haloconv
        x = rng.standard_normal((2, 3, 61, 47)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        y = haloconv.conv(da.from_array(x, chunks=(1, 3, 20, 16)), w, stride=2, padding=1, padding_mode="reflect")
        ref = haloconv.conv(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1, padding_mode="reflect",
                            partition=(1, 1, 1, 1), backend="torch").numpy()
        print("conv", np.array_equal(client.compute(y).result(), ref))
"""


def test_a_dask_distributed_cluster_of_worker_processes_computes_it_exactly(tmp_path):
    """The graph is plain Dask: a dask.distributed LocalCluster of 2 worker processes (TCP
    between them and the scheduler) computes it, every output chunk held by one of the two
    workers, bit for bit scipy's whole call, for each mode, thin chunks and integers.  In a
    process of its own: the cluster's multiprocessing helpers live as long as the process
    that started them."""
    import subprocess
    import sys

    pytest.importorskip("distributed")
    script = tmp_path / "cluster.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")
    for mode in ("reflect", "wrap", "mirror", "constant"):
        assert f"{mode} 2 True True" in lines, r.stdout
    assert "gaussian True" in lines and "conv True" in lines, r.stdout
