"""haloconv.conv on dask arrays: a dask array out, lazily, one task per output chunk (the
chunks follow the input's); bit for bit the single-node torch call on the whole input, for
every padding mode, stride, dilation and group, and odd chunkings (uneven last chunks,
chunks thinner than the halo)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
REACHED: collections.Counter = collections.Counter()


@st.composite
def case(draw):
    ndim = draw(st.integers(1, 3))
    groups = draw(st.sampled_from((1, 2)))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    shape = tuple(draw(st.integers(s, 14 if ndim < 3 else 8)) for s in span)
    chunks = (draw(st.integers(1, 2)), draw(st.integers(1, cin)), *(draw(st.integers(1, n)) for n in shape))
    return dict(x=(draw(st.integers(1, 2)), cin, *shape), w=(cout, cin // groups, *kernel), chunks=chunks,
                groups=groups, dilation=dilation, stride=tuple(draw(st.integers(1, 2)) for _ in range(ndim)),
                padding=tuple(draw(st.integers(0, s // 2)) for s in span), mode=draw(st.sampled_from(MODES)),
                bias=draw(st.booleans()), dtype=draw(st.sampled_from((np.float32, np.float64))))


@settings(max_examples=120, deadline=None)
@given(case())
def test_dask_arrays_give_torchs_bits_chunk_by_chunk(c):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(c["x"]).astype(c["dtype"])
    w = rng.standard_normal(c["w"]).astype(c["dtype"])
    b = rng.standard_normal(c["w"][0]).astype(c["dtype"]) if c["bias"] else None
    kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
              padding_mode=c["mode"])
    d = da.from_array(x, chunks=c["chunks"])
    y = haloconv.conv(d, w, b, backend="torch", **kw)
    assert isinstance(y, da.Array)
    ref = haloconv.conv(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                        partition=(1,) * x.ndim, backend="torch", **kw).numpy()
    if c["mode"] == "zeros":  # the single-node torch call itself
        conv = getattr(torch.nn.functional, f"conv{len(c['w']) - 2}d")
        direct = conv(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                      stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
        assert torch.equal(torch.from_numpy(ref), direct)
    got = y.compute(scheduler="threads")
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.array_equal(got, ref), c
    assert y.numblocks[0] == d.numblocks[0] and y.numblocks[1] == 1
    span = [dl * (k - 1) + 1 for k, dl in zip(c["w"][2:], c["dilation"])]
    REACHED[c["mode"]] += 1
    if any(ch < s for ch, s in zip(c["chunks"][2:], span)):
        REACHED["chunk thinner than the halo"] += 1
    if any(n % ch for n, ch in zip(c["x"][2:], c["chunks"][2:])):
        REACHED["uneven last chunk"] += 1
    if max(c["stride"]) > 1:
        REACHED["strided"] += 1
    if c["chunks"][1] < c["x"][1]:
        REACHED["channels chunked"] += 1
    if any(o < i for o, i in zip(y.numblocks[2:], d.numblocks[2:])):
        REACHED["chunks without outputs joined"] += 1


def test_the_property_reached_its_cases():
    if not REACHED:
        pytest.skip("run with the property test")
    need = (*MODES, "chunk thinner than the halo", "uneven last chunk", "strided", "channels chunked",
            "chunks without outputs joined")
    assert all(REACHED[k] >= 3 for k in need), REACHED


def test_same_size_convolutions_keep_the_input_chunks_and_each_task_reads_its_neighbours_strips():
    """A 'same' 3x3 filter on 4x4 chunks of a 24x24 image keeps the chunks; an interior
    chunk's task reads strips of its 3x3 neighbourhood through slicing tasks, not whole
    chunks; the threads engine's bits (the default backend), also on the sync scheduler."""
    from dask.core import get_dependencies

    img = np.arange(24 * 24, dtype=np.float32).reshape(24, 24) / 7
    k = np.random.default_rng(2).random((3, 3), dtype=np.float32)
    d = da.from_array(img, chunks=4)
    image = haloconv.conv(d, k, padding=1, padding_mode="reflect")  # (H, W) in, (H, W) out
    assert image.chunks == d.chunks
    with dask.config.set(scheduler="sync"):
        assert np.array_equal(image.compute(), haloconv.conv(img, k, padding=1, padding_mode="reflect"))
    y = haloconv.conv(da.from_array(img[None, None], chunks=(1, 1, 4, 4)), k[None, None], padding=1,
                      padding_mode="reflect")
    graph = dict(y.__dask_graph__())
    assert sum(1 for key in graph if isinstance(key, tuple) and key[0] == y.name) == 36  # a task per chunk
    deps = get_dependencies(graph, (y.name, 0, 0, 2, 3))  # an interior chunk
    strips = [key for key in deps if "-strip" in key[0]]
    whole = [key for key in deps if isinstance(key, tuple) and "-strip" not in key[0]]
    assert len(whole) == 1 and len(strips) == 8  # its own chunk, and a strip of each neighbour
    sizes = sorted(dask.get(graph, key).size for key in strips)
    assert sizes == [1, 1, 1, 1, 4, 4, 4, 4]  # corners and edges one pixel deep


def test_arguments_that_say_how_to_split_or_run_are_refused_for_dask_arrays():
    d = da.zeros((1, 1, 8, 8), chunks=4, dtype=np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    for kw in (dict(partition="rows"), dict(workers=2), dict(engine="processes"), dict(out=np.zeros((1, 1, 6, 6)))):
        with pytest.raises(ValueError, match="do not apply to a dask array"):
            haloconv.conv(d, w, **kw)
    with pytest.raises(TypeError, match="one dtype"):
        haloconv.conv(d, w.astype(np.float64))
    with pytest.raises(TypeError, match="numpy arrays"):
        haloconv.conv(d, torch.from_numpy(w))
