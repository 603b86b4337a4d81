"""Dynamic scheduling on a LocalCluster: tiles handed to whichever process is free, exact."""

import pytest
import torch

from haloconv.engines import LocalCluster
from haloconv.plan import make_plan
from haloconv.spec import ConvSpec


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(3, timeout=60) as c:
        yield c


@pytest.mark.parametrize("partition,tiles,kw", [
    ("rows", 12, dict(padding=1)),
    ("grid", 9, dict(padding=2, padding_mode="reflect", dilation=2)),
    ("batch", 4, dict(padding=1, stride=2)),
    ("cols", 7, dict(padding="same", padding_mode="circular")),
])
def test_dynamic_schedule_is_exact_and_hands_out_every_tile(cluster, partition, tiles, kw):
    g = torch.Generator().manual_seed(tiles)
    x = torch.randn(4, 3, 41, 37, generator=g)
    w = torch.randn(5, 3, 3, 3, generator=g)
    b = torch.randn(5, generator=g)
    spec = ConvSpec.from_args(x.shape, w.shape, b.shape, **kw)
    plan = make_plan(spec, partition, tiles)
    ex = cluster.run_dynamic(plan, x, w, b, throttle={2: 3.0})
    mode = kw.get("padding_mode", "zeros")
    pad = kw["padding"]
    ref = torch.nn.Conv2d(3, 5, 3, stride=kw.get("stride", 1), padding=pad, dilation=kw.get("dilation", 1),
                          padding_mode=mode)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
        assert torch.equal(ex.output, ref(x))
    assert sum(ex.tiles_done.values()) == len(plan.tiles)
    # the cluster is still in step afterwards
    assert torch.equal(cluster.run(make_plan(spec, "rows", 3), x, w, b).output, ex.output)


def test_dynamic_refuses_filter_splits_and_bad_throttle(cluster):
    spec = ConvSpec.from_args((1, 2, 8, 8), (4, 2, 3, 3), None, padding=1)
    x, w = torch.randn(1, 2, 8, 8), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="channels split"):
        cluster.run_dynamic(make_plan(spec, "channels", 4), x, w, None)
    with pytest.raises(ValueError, match="throttle"):
        cluster.run_dynamic(make_plan(spec, "rows", 4), x, w, None, throttle={1: 0.5})
