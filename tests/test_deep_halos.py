"""Deep halos (tiling/deep.py): the boxes a rank computes through a run of convolutions,
checked in one process against the single-node layers, step by step, bit for bit; and the
run's one exchange.  Training through runs on real ranks: tests/nn_train_parity.py."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from conftest import assert_bitwise, runs_on_gemm
from haloconv.compute import kernels
from haloconv.compute.tile import compute_tile
from haloconv.engines.spmd import steps as spmd
from haloconv.nn import deep as nn_deep
from haloconv.nn.layout import Layout
from haloconv.tiling.boxes import Box
from haloconv.tiling.deep import deep_run, local_tile, shapes_of
from haloconv.tiling.spec import ConvSpec

REACHED: Counter = Counter()


@st.composite
def conv_chain(draw):
    nd = draw(st.sampled_from((2, 2, 3)))
    c = draw(st.sampled_from((2, 4)))
    convs = []
    for _ in range(draw(st.integers(2, 4))):
        k = draw(st.integers(1, 5))
        d = draw(st.sampled_from((1, 1, 2)))
        convs.append(dict(kernel=k, dilation=d, stride=draw(st.sampled_from((1, 1, 1, 2))),
                          padding=draw(st.integers(0, ((k - 1) * d + 1) // 2 + 1)),
                          mode=draw(st.sampled_from(("zeros", "reflect", "replicate"))),
                          groups=draw(st.sampled_from((1, 2))), bias=draw(st.booleans())))
    size = 20 if nd == 2 else 9
    spatial = tuple(draw(st.integers(3, size)) for _ in range(nd))
    partition = draw(st.sampled_from(("rows", "cols", "grid")))
    ranks = draw(st.integers(2, 4))
    return nd, c, convs, spatial, partition, ranks


def _layers(nd, c, convs):
    cls = nn.Conv2d if nd == 2 else nn.Conv3d
    return [cls(c, c, v["kernel"], stride=v["stride"], padding=v["padding"], dilation=v["dilation"],
                groups=v["groups"], bias=v["bias"], padding_mode=v["mode"]) for v in convs]


def _specs(layers, shape):
    steps = []
    for layer in layers:
        steps.append(ConvSpec.from_args(shape, tuple(layer.weight.shape),
                                        None if layer.bias is None else tuple(layer.bias.shape),
                                        stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                        groups=layer.groups, padding_mode=layer.padding_mode))
        shape = tuple(steps[-1].output_shape)
    return tuple(steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_chain())
def test_each_rank_computes_its_boxes_of_a_run_like_the_single_node_layers(case):
    nd, c, convs, spatial, partition, ranks = case
    torch.manual_seed(0)
    layers = _layers(nd, c, convs)
    x = torch.randn(1, c, *spatial)
    refs = [x]
    try:
        with torch.no_grad():
            for layer in layers:
                refs.append(layer(refs[-1]))
    except RuntimeError:  # torch refuses it (reflect padding wider than the input, an empty output)
        assume(False)
    assume(all(r.numel() for r in refs))
    steps = _specs(layers, tuple(x.shape))
    layout = Layout(partition, ranks)
    shapes = shapes_of(steps, x.shape)
    shards = tuple(tuple(layout.boxes(s)) for s in shapes)
    run = deep_run(steps, shards)
    for r in range(ranks):
        assert run.boxes[r][-1] == shards[-1][r]  # the run ends on the rank's shard
        for i, box in enumerate(run.boxes[r]):  # and computes at least its shard of each activation
            assert not shards[i][r].volume or box.contains(shards[i][r])
        for i, (spec, tile, layer) in enumerate(zip(steps, run.tiles[r], layers)):
            assert tile.owned == run.boxes[r][i] and tile.out == run.boxes[r][i + 1]
            if not tile.out.volume:
                REACHED["empty box"] += 1
                continue
            have = refs[i][run.boxes[r][i].slices()]  # the exact input box: each step checked alone
            window = spmd.part_window(tile, tile, have, [], spec.input_shape)
            with torch.no_grad():
                y = compute_tile(layout.plan(spec), tile, window, layer.weight, layer.bias,
                                 kernels.select_backend(spec, x, layer.weight, layer.bias))
            assert_bitwise(y, refs[i + 1][tile.out.slices()], gemm=runs_on_gemm(spec, x, layer.weight, layer.bias))
            grown = tile.out.volume > shards[i + 1][r].volume
            REACHED["computes the neighbours' rows" if grown else "only its shard"] += 1
            if spec.padding_mode != "zeros" and any(a < 0 for a in tile.needed.lo[2:]):
                REACHED[f"{spec.padding_mode} border"] += 1
            if max(spec.stride) > 1:
                REACHED["stride>1 in a run"] += 1
        # the exchange: every element of the run's input box once, each from its owner
        ex = run.exchange.tiles[r]
        assert sum(p.dst.volume for p in ex.pieces) == run.boxes[r][0].volume
        for p in ex.pieces:
            assert shards[0][p.owner].contains(p.src)
        if ex.halo_pieces:
            REACHED["halo from several owners" if len(ex.halo_sources) > 1 else "halo from one owner"] += 1
    event(f"{len(steps)} convs, {partition}")


def test_the_property_reached_its_cases():
    need = ("computes the neighbours' rows", "reflect border", "replicate border", "stride>1 in a run",
            "halo from several owners", "halo from one owner")
    missing = [k for k in need if REACHED[k] == 0]
    if not REACHED:
        pytest.skip("run with the property test")
    assert not missing, (missing, REACHED)


def test_one_exchange_deep_enough_for_the_run():
    """Three 3x3 'same' convs over 4 row shards of 32: an inner rank's one exchange brings 3
    rows from each neighbour, and its first conv computes 2 rows of each neighbour's."""
    layers = [nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)]
    steps = _specs(layers, (1, 4, 128, 16))
    layout = Layout("rows", 4)
    run = deep_run(steps, tuple(tuple(layout.boxes(s)) for s in shapes_of(steps, (1, 4, 128, 16))))
    ex = run.exchange.tiles[1]
    assert [(p.owner, p.src.lo[2], p.src.hi[2]) for p in ex.pieces] == [(1, 32, 64), (0, 29, 32), (2, 64, 67)]
    assert [(b.lo[2], b.hi[2]) for b in run.boxes[1]] == [(29, 67), (30, 66), (31, 65), (32, 64)]
    assert run.halo_elements(1) == 2 * 3 * 4 * 16
    assert run.computed_elements(1) == [36 * 64, 34 * 64, 32 * 64]


def test_a_tile_of_a_box_reads_the_bounding_box_of_its_window():
    spec = ConvSpec.from_args((1, 1, 10, 10), (1, 1, 3, 3), None, padding=1, padding_mode="reflect")
    t = local_tile(spec, Box((0, 0, 0, 0), (1, 1, 2, 10)), 3)
    # rows 0-1 read rows -1..2, -1 mirrored to 1: the input rows 0-2; all pieces this rank's
    assert (t.owned.lo[2], t.owned.hi[2]) == (0, 3) and {p.owner for p in t.pieces} == {3}


def test_runs_break_at_pools_dropout_and_circular_padding():
    import torch.distributed as dist

    import haloconv.nn as hnn

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        def conv(mode="zeros"):
            return nn.Conv2d(2, 2, 3, padding=1, padding_mode=mode)

        model = hnn.parallelize(nn.Sequential(
            conv(), nn.ReLU(), conv(), nn.BatchNorm2d(2), conv(),  # 0-4: a run of 3
            nn.MaxPool2d(2), conv(), nn.Dropout(), conv(),  # 5-8: broken by the pool and the dropout
            conv("circular"), conv(), nn.GELU(), conv(), conv(),  # 9-13: circular alone, then 10-13
        ), "rows", halo_depth=3)
        layers = list(model)
        assert nn_deep.segments(layers, 3) == [(0, 1, 2, 3, 4), (5,), (6,), (7,), (8,), (9,), (10, 11, 12, 13)]
        assert nn_deep.segments(layers, 2) == [(0, 1, 2), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10, 11, 12),
                                               (13,)]
        assert nn_deep.segments(layers, 1) == [(i,) for i in range(14)]
        # a module of the user's own hides the shape; the run after it learns it again
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = conv()

            def forward(self, x):
                return x + self.conv(x)

        torch.manual_seed(0)
        ref = nn.Sequential(Block(), conv(), nn.ReLU(), conv(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        x = torch.randn(2, 2, 12, 10)
        want = ref(x)
        par = hnn.parallelize(copy.deepcopy(ref), "rows", halo_depth=2)
        assert nn_deep.segments(list(par), 2)[1] == (1, 2, 3)
        got = par(hnn.shard(x, "rows"))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        got.sum().backward()
        want.sum().backward()
        for a, b in zip(par.parameters(), ref.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="halo_depth"):
            hnn.parallelize(nn.Sequential(conv()), "rows", halo_depth=0)
    finally:
        dist.destroy_process_group()
