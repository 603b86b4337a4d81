"""The Plan: a frozen, printable value; owned boxes partition the input; pieces cover it."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv
from haloconv.tiling import geometry
from haloconv.tiling.plan import Plan


def _coverage(plan: Plan):
    """Per tile: count how often each window position is written by a piece."""
    for t in plan.tiles:
        cover = np.zeros(t.window.shape, dtype=np.int64)
        for p in t.pieces:
            assert any(o.rank == p.owner and o.owned.contains(p.src) for o in plan.tiles), p
            cover[p.dst.slices()] += 1
        yield t, cover


@pytest.mark.parametrize(
    "kw",
    [
        dict(padding=1, partition="grid", workers=4),
        dict(padding=2, dilation=3, partition="rows", workers=6),
        dict(padding=2, padding_mode="circular", partition="rows", workers=2),
        dict(padding=3, padding_mode="reflect", partition="grid", workers=6),
        dict(padding=2, padding_mode="replicate", partition="cols", workers=3),
        dict(stride=2, padding=1, partition="grid", workers=5),
    ],
)
def test_owned_boxes_partition_and_pieces_cover_each_needed_element_once(kw):
    p = haloconv.plan((2, 3, 13, 11), (4, 3, 5, 5), **kw)
    # owned boxes: disjoint, and together exactly the input
    count = np.zeros((2, 3, 13, 11), dtype=np.int64)
    for t in p.tiles:
        count[t.owned.slices()] += 1
    assert (count == 1).all()
    for t, cover in _coverage(p):
        assert cover.max() <= 1
        if kw.get("padding_mode", "zeros") != "zeros":
            # every needed element comes from some owner (the rest of the window stays zero)
            region = tuple(slice(n0 - w0, n1 - w0) for n0, n1, w0 in zip(t.needed.lo, t.needed.hi, t.window.lo))
            assert (cover[region] == 1).all()
            assert cover.sum() == cover[region].sum()


def test_plan_is_frozen_and_counts_halo():
    p = haloconv.plan((1, 1, 100, 100), (1, 1, 3, 3), padding=1, partition="rows", workers=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.workers = 3
    # row bands of 25 rows, halo rows = k - s = 2 per interior border, split 1 + 1? aligned: 0 above, 2 below
    per = p.halo_elements_per_worker()
    assert per == [200, 200, 200, 0]
    assert p.halo_elements == 600
    assert p.halo_messages == 3


def test_thin_tiles_take_halo_from_several_owners():
    p = haloconv.plan((1, 1, 12, 4), (1, 1, 7, 1), padding=(3, 0), partition="rows", workers=6)
    middle = p.tiles[2]
    assert len(middle.halo_sources) >= 2
    assert set(middle.halo_sources) >= {3, 4}


def test_circular_first_and_last_tiles_are_neighbours():
    p = haloconv.plan((1, 1, 20, 5), (1, 1, 3, 3), padding=1, padding_mode="circular",
                      partition="rows", workers=4)
    assert 3 in p.tiles[0].halo_sources
    assert 0 in p.tiles[3].halo_sources


@pytest.mark.parametrize("kw", [dict(padding=4), dict(padding=2, stride=3), dict(dilation=2, padding=8)])
def test_1d_tiles_compute_whole_blocks_of_16_outputs(kw):
    """A 1-D tile computes a multiple of ROW_ALIGN_1D outputs (oneDNN runs other lengths up
    to 1.9x slower); the extra window positions are zeros, nothing extra moves."""
    p = haloconv.plan((1, 4, 5003), (8, 4, 9), partition="cols", workers=3, **kw)
    ax = p.spec.axis(0)
    for t in p.tiles:
        computed = (t.window.shape[2] + 2 * ax.backend_pad - ax.span) // ax.stride + 1
        assert computed % geometry.ROW_ALIGN_1D == 0 and computed >= t.first[0] + t.out.shape[2]
        assert all(t.needed.contains(pc.src) for pc in t.pieces)  # the extra positions are zeros, never fetched


def test_channels_partition_has_no_halo_and_batch_caps_workers():
    p = haloconv.plan((1, 3, 30, 30), (8, 3, 3, 3), padding=1, partition="channels", workers=4)
    assert p.halo_elements == 0 and len(p.tiles) == 4
    q = haloconv.plan((2, 3, 30, 30), (8, 3, 3, 3), padding=1, partition="batch", workers=5)
    assert len(q.tiles) == 2 and q.idle_workers == 3


def test_grid_picks_least_halo():
    # a wide image: the cheapest split of 4 cuts columns more than rows
    p = haloconv.plan((1, 1, 16, 1024), (1, 1, 3, 3), padding=1, partition="grid", workers=4)
    assert p.splits == (1, 1, 1, 4)
    q = haloconv.plan((1, 1, 512, 512), (1, 1, 3, 3), padding=1, partition="grid", workers=4)
    assert q.splits == (1, 1, 2, 2)
    best = min(
        haloconv.plan((1, 1, 512, 512), (1, 1, 3, 3), padding=1, partition=(1, 1, a, 4 // a), workers=4).halo_elements
        for a in (1, 2, 4)
    )
    assert q.halo_elements == best


def test_weighted_rows_proportional():
    p = haloconv.plan((1, 1, 400, 50), (1, 1, 3, 3), padding=1, partition="rows",
                      workers=3, worker_weights=[1, 2, 1])
    assert [t.out.shape[2] for t in p.tiles] == [100, 200, 100]


def test_weighted_grid_gives_each_worker_its_share():
    w = [1, 3, 2, 2]
    p = haloconv.plan((1, 1, 64, 64), (1, 1, 3, 3), padding=1, partition=(1, 1, 2, 2), workers=4,
                      worker_weights=w)
    areas = [t.out.volume for t in p.tiles]
    for a, wi in zip(areas, w):
        assert abs(a / 4096 - wi / 8) < 0.03


def test_str_is_a_table():
    p = haloconv.plan((1, 3, 64, 48), (8, 3, 3, 3), padding=1, partition="grid", workers=4)
    s = str(p)
    assert "rank" in s and "halo" in s and "splits" in s
    assert len(s.splitlines()) == 2 + 1 + 4 + 1


def test_aliases():
    a = haloconv.plan((1, 1, 20, 20), (1, 1, 3, 3), partition="horizontal", workers=2)
    b = haloconv.plan((1, 1, 20, 20), (1, 1, 3, 3), partition="rows", workers=2)
    assert a.tiles == b.tiles and a.splits == (1, 1, 2, 1)
    c = haloconv.plan((1, 1, 20, 20), (1, 1, 3, 3), partition="vertical", workers=2)
    assert c.splits == (1, 1, 1, 2)


def test_all_partitions_3d():
    for part in ("depth", "rows", "cols", "grid", "batch", "channels"):
        p = haloconv.plan((2, 2, 8, 9, 10), (4, 2, 3, 3, 3), padding=1, partition=part, workers=2)
        assert len(p.tiles) == 2
        assert sum(t.out.volume for t in p.tiles) == 2 * 4 * 8 * 9 * 10


def test_pieces_from_other_owners_are_the_halo():
    p = haloconv.plan((1, 2, 30, 30), (2, 2, 5, 5), padding=2, partition="grid", workers=4)
    for t in p.tiles:
        assert t.halo_elements == sum(pc.src.volume for pc in t.pieces if pc.owner != t.rank)
        needed_data = 1
        for lo, hi, n in zip(t.needed.lo, t.needed.hi, (1, 2, 30, 30)):
            needed_data *= min(hi, n) - max(lo, 0)
        owned_in_needed = 1
        for lo, hi, olo, ohi in zip(t.needed.lo, t.needed.hi, t.owned.lo, t.owned.hi):
            owned_in_needed *= max(0, min(hi, ohi) - max(lo, olo))
        assert t.halo_elements == needed_data - owned_in_needed


def test_every_tuple_partition_covers_the_output_once():
    for counts in itertools.product((1, 2), (1, 2), (1, 3), (1, 2)):
        p = haloconv.plan((2, 3, 10, 9), (4, 3, 3, 3), padding=1, partition=counts, workers=24)
        cover = np.zeros(p.spec.output_shape, dtype=np.int64)
        for t in p.tiles:
            cover[t.out.slices()] += 1
        assert (cover == 1).all()


def test_transfer_chunks_are_contiguous_runs_or_one_packed_box():
    from haloconv.tiling.boxes import Box
    from haloconv.tiling.messages import MIN_RUN_BYTES, transfer_chunks

    shape = (2, 8, 512, 512)
    rows = Box((0, 0, 100, 0), (2, 8, 300, 512))  # full width: one run per (n, c)
    chunks = transfer_chunks(rows, shape, 4)
    assert len(chunks) == 16 and sum(c.volume for c in chunks) == rows.volume
    t = torch.zeros(shape)
    for c in chunks:
        assert t[c.slices()].is_contiguous()
    cols = Box((0, 0, 0, 0), (2, 8, 512, 100))  # runs of 100 floats: packed into one message
    assert transfer_chunks(cols, shape, 4) == [cols]
    whole = Box((0, 0, 0, 0), shape)
    assert transfer_chunks(whole, shape, 4) == [whole]
    assert 200 * 512 * 4 >= MIN_RUN_BYTES


def test_traffic_prediction_counts_every_phase():
    p = haloconv.plan((1, 2, 40, 40), (3, 2, 3, 3), (3,), padding=1, partition="rows", workers=2)
    tr = p.traffic(4)
    assert tr[0]["weights"].bytes_sent == (3 * 2 * 9 + 3) * 4  # tile 1: all 3 filters + bias
    assert tr[1]["scatter"].bytes_recv == p.tiles[1].owned.volume * 4
    assert tr[0]["halo"].bytes_recv == p.tiles[0].halo_elements * 4
    assert tr[1]["gather"].bytes_sent == p.tiles[1].out.volume * 4
    q = haloconv.plan((1, 2, 40, 40), (3, 2, 3, 3), padding=1, partition="rows", workers=2, exchange="master")
    trq = q.traffic(4)
    assert trq[0]["halo"].bytes_recv == 0
    assert trq[1]["scatter"].bytes_recv == sum(pc.src.volume for pc in q.tiles[1].pieces) * 4


@settings(max_examples=150)
@given(st.data())
def test_property_plan_invariants(data):
    """Owned boxes partition the input (per channel block); every needed input element of a
    tile comes from exactly one piece; outputs are covered once; halo = pieces from others."""
    nd = data.draw(st.sampled_from((1, 2, 3)))
    spatial = tuple(data.draw(st.integers(1, 14 if nd < 3 else 7)) for _ in range(nd))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    mode = data.draw(st.sampled_from(("zeros", "reflect", "replicate", "circular")))
    pad = tuple(data.draw(st.integers(0, 3)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    workers = data.draw(st.integers(1, 6))
    ownership = data.draw(st.sampled_from(("aligned", "even")))
    weights = data.draw(st.one_of(st.none(), st.lists(st.floats(0.3, 3), min_size=workers, max_size=workers)))
    part = data.draw(st.sampled_from(("grid", "batch", "channels", "cols")))
    x_shape, w_shape = (2, 2, *spatial), (4, 2, *kernel)
    try:
        p = haloconv.plan(x_shape, w_shape, padding=pad, stride=stride, dilation=dil, padding_mode=mode,
                          partition=part, workers=workers, worker_weights=weights, ownership=ownership)
    except ValueError:
        return  # torch would reject it too (kernel beyond the padded input, reflect pad >= size, ...)
    out = np.zeros(p.spec.output_shape, dtype=np.int64)
    for t in p.tiles:
        out[t.out.slices()] += 1
    assert (out == 1).all()
    blocks = {}
    for t in p.tiles:
        # each block of output channels holds its own copy of the input it needs
        blocks.setdefault((t.out.lo[1], t.out.hi[1]) if p.splits[1] > 1 else 0, []).append(t)
    for ts in blocks.values():
        own = np.zeros(x_shape, dtype=np.int64)
        for t in ts:
            own[t.owned.slices()] += 1
        c0, c1 = ts[0].owned.lo[1], ts[0].owned.hi[1]
        assert (own[:, c0:c1] == 1).all()
    for t in p.tiles:
        cover = np.zeros(t.window.shape, dtype=np.int64)
        for pc in t.pieces:
            cover[pc.dst.slices()] += 1
        region = []
        for d, (n0, n1, w0) in enumerate(zip(t.needed.lo, t.needed.hi, t.window.lo)):
            if mode == "zeros" and d >= 2:  # zero padding is not data: only the in-range part
                n0, n1 = max(n0, 0), min(n1, x_shape[d])
                n1 = max(n0, n1)
            region.append(slice(n0 - w0, n1 - w0))
        region = tuple(region)
        assert (cover[region] == 1).all()
        assert cover.sum() == cover[region].sum()
        assert t.halo_elements == sum(pc.src.volume for pc in t.pieces if pc.owner != t.rank)


def _traffic(plan, itemsize, phase):
    return [tuple(getattr(plan.traffic(itemsize)[r][phase], k) for k in
                  ("bytes_sent", "bytes_recv", "messages_sent", "messages_recv")) for r in range(plan.workers)]


def test_bytes_and_messages_equal_counts_worked_out_by_hand():
    """The counts the engines' reports are compared with (Plan.messages), against arithmetic
    done here from the geometry, not from the plan."""
    # rows of a (1, 2, 10, 8) float32 input, 3x3 'same': tile 0 owns rows [0, 4) and needs [0, 6),
    # tile 1 owns [4, 10) and needs [4, 10); 3 filters of 2x3x3
    p = haloconv.plan((1, 2, 10, 8), (3, 2, 3, 3), padding=1, partition="rows", workers=2, backend="torch")
    row = 8 * 2 * 4  # one input row of both channels, in bytes
    assert _traffic(p, 4, "halo") == [(0, 2 * row, 0, 1), (2 * row, 0, 1, 0)]
    assert _traffic(p, 4, "scatter") == [(6 * row, 0, 1, 0), (0, 6 * row, 0, 1)]
    assert _traffic(p, 4, "gather") == [(0, 5 * 8 * 3 * 4, 0, 1), (5 * 8 * 3 * 4, 0, 1, 0)]
    assert _traffic(p, 4, "weights") == [(3 * 2 * 9 * 4, 0, 1, 0), (0, 3 * 2 * 9 * 4, 0, 1)]
    # a 2x2 grid of a 9x9 float64 image, 5x5 kernel, padding 4 (outputs 13x13): tile 0 owns
    # [0, 3)^2 and needs [0, 7)^2 (40 elements from its three neighbours); tiles 1 and 2 own
    # 3x6 / 6x3 and need 7x6 / 6x7 (24 from tile 3); tile 3 owns [3, 9)^2 and needs nothing
    p = haloconv.plan((1, 1, 9, 9), (1, 1, 5, 5), padding=4, partition="grid", workers=4, backend="torch")
    assert _traffic(p, 8, "halo") == [(0, 40 * 8, 0, 3), (3 * 4 * 8, 24 * 8, 1, 1), (4 * 3 * 8, 24 * 8, 1, 1),
                                      ((4 * 4 + 24 + 24) * 8, 0, 3, 0)]


def test_a_chosen_plan_is_kept_per_configuration_filters_and_profile(tmp_path):
    """The cost model's choice is kept (a small call does not plan again), keyed by all it
    depends on: the same call gets the same Plan; other filter values of the same shape
    (separable or not), another profile, or the profile file rewritten get their own."""
    import os

    import numpy as np

    from haloconv import planner
    from haloconv.costmodel import cost

    x = (1, 1, 300, 300)
    g = np.random.default_rng(0)
    rank1 = (g.random((9, 1)) @ g.random((1, 9))).astype(np.float32)[None, None]
    dense = g.random((1, 1, 9, 9)).astype(np.float32)
    a = haloconv.plan(x, rank1, padding=4, workers=2, engine="threads")
    assert haloconv.plan(x, rank1.copy(), padding=4, workers=2, engine="threads") is a  # equal values: kept
    b = haloconv.plan(x, dense, padding=4, workers=2, engine="threads")
    assert a.backend == "separable" and b.backend != "separable"
    path = tmp_path / "p.json"
    cost.Profile().save(path)
    c = haloconv.plan(x, dense, padding=4, workers=2, profile=str(path))
    assert haloconv.plan(x, dense, padding=4, workers=2, profile=str(path)) is c
    cost.Profile(cores=7.0).save(path)  # recalibrated: another file
    os.utime(path, ns=(1, 1))  # (its time changed whatever the clock's resolution)
    assert haloconv.plan(x, dense, padding=4, workers=2, profile=str(path)) is not c
    prof = cost.Profile()
    d = haloconv.plan(x, dense, padding=4, workers=2, profile=prof)
    assert haloconv.plan(x, dense, padding=4, workers=2, profile=cost.Profile(cores=3.0)) is not d
    assert haloconv.plan(x, dense, padding=4, workers=2, profile=cost.Profile()) is d  # equal values: kept
    # fresh, it is the same choice
    planner.forget()
    assert haloconv.plan(x, rank1, padding=4, workers=2, engine="threads") == a


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_grid_owner_lookup_finds_the_boxes_a_brute_force_search_finds(data):
    """Plans of many tiles find a window's owners by bisection per axis (_GridOwners); it
    must name exactly the ranks whose owned boxes overlap, in rank order, as checking every
    box does; boxes that do not form a grid are left to that search."""
    from haloconv.tiling.boxes import Box
    from haloconv.tiling.plan import _GridOwners

    dims = data.draw(st.integers(1, 3))
    cuts = [sorted(set(data.draw(st.lists(st.integers(1, 19), max_size=4)))) for _ in range(dims)]
    intervals = [list(zip([0, *c], [*c, 20])) for c in cuts]
    boxes = [(rk, Box(tuple(iv[0] for iv in combo), tuple(iv[1] for iv in combo)))
             for rk, combo in enumerate(itertools.product(*intervals))]
    order = data.draw(st.permutations(range(len(boxes))))  # ranks need not follow the grid's order
    boxes = [(order[rk], b) for rk, b in boxes]
    grid = _GridOwners.of(boxes)
    assert grid is not None
    for _ in range(10):
        lo = [data.draw(st.integers(-2, 21)) for _ in range(dims)]
        hi = [a + data.draw(st.integers(1, 12)) for a in lo]
        brute = sorted(rk for rk, b in boxes if all(bl < h and bh > a for bl, bh, a, h in zip(b.lo, b.hi, lo, hi)))
        assert grid.owners(lo, hi) == brute
    if len(boxes) > 1:  # two boxes overlapping on an axis: not a grid
        a, b = boxes[0][1], boxes[1][1]
        assert _GridOwners.of([(0, a), (1, Box(a.lo, tuple(h + 1 for h in a.hi))), (2, b)]) is None


def _random_spec(data, min_side=1):
    dims = data.draw(st.integers(1, 3))
    g = data.draw(st.sampled_from([1, 2]))
    cin, cout = g * data.draw(st.integers(1, 2)), g * data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 5)) for _ in range(dims)]
    try:
        return haloconv.tiling.spec.ConvSpec.from_args(
            (data.draw(st.integers(1, 3)), cin, *(data.draw(st.integers(min_side, 20)) for _ in range(dims))),
            (cout, cin // g, *kernel), None, padding=tuple(data.draw(st.integers(0, k)) for k in kernel),
            stride=tuple(data.draw(st.integers(1, 2)) for _ in kernel),
            dilation=tuple(data.draw(st.integers(1, 2)) for _ in kernel), groups=g,
            padding_mode=data.draw(st.sampled_from(["zeros", "reflect", "replicate", "circular", "symmetric"])))
    except ValueError:
        return None


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_tile_shapes_and_grid_halo_are_those_of_the_built_plan(data):
    """The cost model prices many-tile candidates from tile_shapes and ranks grids by
    grid_halo without building them: both must equal what the built plan holds, shape for
    shape and count for count, halo element for element."""
    import collections
    import math

    from haloconv.tiling import plan as plans

    spec = _random_spec(data)
    if spec is None:
        return
    ownership = data.draw(st.sampled_from(["aligned", "even"]))
    extra = 1 if ownership == "even" else 0  # even ownership may leave tiles empty
    counts = [data.draw(st.integers(1, max(1, min(e, 4)) + extra)) for e in plans.split_extents(spec)]
    try:
        built = plans.build(spec, counts, "x", math.prod(counts), ownership=ownership)
    except ValueError:
        return
    want = collections.Counter((t.out.shape, t.owned.shape, t.window.shape, t.groups, t.window_is_view)
                               for t in built.tiles)
    got = collections.Counter({(s.out, s.owned, s.window, s.groups, s.view): s.count
                               for s in plans.tile_shapes(spec, counts, ownership)})
    assert got == want
    assert plans.grid_halo(spec, counts, ownership) == (built.halo_elements, max(t.out.volume for t in built.tiles))


@pytest.mark.parametrize("seed", range(3))
def test_grid_tiles_made_when_asked_equal_the_tiles_built_one_by_one(seed):
    """A grid of equal workers' tiles (GridTiles) makes each tile when it is asked for: tile
    for tile equal to build_on_ranges' (every tile built at once), its halo and owned
    elements and its messages' bytes (counted per axis) the built tiles' sums, pickled as its
    recipe, equal as a plan; every padding mode, stride, dilation, groups, channel splits, both ownerships."""
    import pickle
    import random

    from haloconv.tiling.plan import GridTiles, _axis_ranges, build_on_ranges, make_plan
    from haloconv.tiling.spec import ConvSpec

    rng = random.Random(seed)
    reached = set()
    for _ in range(200):
        groups = rng.choice([1, 2])
        cin, cout, nd = 2 * rng.randint(1, 2), groups * rng.randint(1, 2), rng.choice([1, 2, 3])
        try:
            spec = ConvSpec.from_args((rng.randint(1, 3), cin, *(rng.randint(3, 14) for _ in range(nd))),
                                      (cout, cin // groups, *(rng.randint(1, 4) for _ in range(nd))),
                                      (cout,) if rng.random() < 0.5 else None,
                                      padding=rng.randint(0, 2), stride=rng.randint(1, 2),
                                      dilation=rng.randint(1, 2), groups=groups,
                                      padding_mode=rng.choice(["zeros", "reflect", "replicate", "circular",
                                                               "symmetric"]))
        except ValueError:
            continue
        counts = (rng.randint(1, 2), rng.randint(1, 2), *(rng.randint(1, 4) for _ in range(nd)))
        ownership = rng.choice(["aligned", "even"])
        try:
            grid = GridTiles.of(spec, counts, ownership)
        except ValueError:  # more parts than outputs on an axis: refused as build refuses it
            continue
        if grid is None:
            continue
        ranges = _axis_ranges(spec, counts, ownership)
        owned = None if ownership == "aligned" else [[i for _, i in rs] for rs in ranges[2:]]
        built = build_on_ranges(spec, [[r for r, _ in rs] for rs in ranges], "grid", owned=owned).tiles
        assert isinstance(built, tuple) and len(built) == len(grid)
        assert [grid[i] for i in reversed(range(len(grid)))] == list(reversed(built))  # any order of asking
        assert grid == built and built == grid
        assert grid.halo_elements() == sum(t.halo_elements for t in built)
        assert grid.owned_elements() == sum(t.owned.volume for t in built)
        plan = make_plan(spec, counts, math.prod(counts), ownership=ownership)
        assert isinstance(plan.tiles, GridTiles) and pickle.loads(pickle.dumps(plan)) == plan
        assert list(pickle.loads(pickle.dumps(plan)).tiles) == list(built)
        msgs = plan.messages(4)  # the messages' bytes, counted per axis without making the tiles
        assert plan.message_totals(4) == (sum(m.nbytes for m in msgs if m.phase == "halo"),
                                          sum(m.nbytes for m in msgs))
        reached.add((nd, ownership, counts[1] > 1, spec.padding_mode))
    assert {nd for nd, *_ in reached} == {1, 2, 3} and {o for _, o, *_ in reached} == {"aligned", "even"}


def test_a_plan_of_65536_tiles_is_made_without_making_its_tiles():
    """Planning is O(axes) for a grid: a 256x256 grid of 65,536 tiles is made, summarised
    and asked for one tile without the others being made."""
    from haloconv.tiling.plan import GridTiles

    p = haloconv.plan((1, 1, 8192, 8192), (1, 1, 3, 3), padding=1, partition=(1, 1, 256, 256), backend="opencv")
    assert isinstance(p.tiles, GridTiles) and len(p.tiles) == 65536
    assert "65536 tiles on 65536 workers" in p.summary() and not p.tiles._made
    t = p.tiles[257]  # row 1, column 1: an inner tile with 8 neighbours
    assert len(p.tiles._made) == 1 and t.out.shape == (1, 1, 32, 32)
    assert t.halo_sources == (258, 513, 514)  # aligned ownership: one-sided halos (right, below, below right)
