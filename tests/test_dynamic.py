"""Dynamic scheduling on a LocalCluster: tiles handed to whichever process is free, exact."""

import logging

import pytest
import torch

from haloconv.engines import LocalCluster
from haloconv.options import RunOptions
from haloconv.tiling.plan import make_plan
from haloconv.tiling.spec import ConvSpec


@pytest.fixture(scope="module")
def cluster(clusters):
    return clusters(3)


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


def test_measured_speeds_follow_a_throttled_process_and_weight_the_split(caplog):
    import haloconv
    from haloconv.engines.processes import local as processes

    spec = ConvSpec.from_args((1, 8, 256, 256), (8, 8, 3, 3), None, padding=1)
    with LocalCluster(2, throttle={1: 5.0}) as cl:
        speeds = cl.speeds(spec)
        assert speeds[0] == 1.0 and speeds[1] < 0.5, speeds  # 5x slower by its sleeps
    x, w = torch.randn(1, 8, 256, 256), torch.randn(8, 8, 3, 3)
    plan = haloconv.plan(x.shape, w.shape, padding=1, partition="rows", workers=2)
    with caplog.at_level(logging.INFO, logger="haloconv"):
        ex = processes.run(plan, x, w, None, RunOptions.of(engine="processes", measure_speeds=True), throttle={1: 5.0})
    logs = [r.getMessage() for r in caplog.records]
    assert torch.equal(ex.output, torch.nn.functional.conv2d(x, w, padding=1))
    rows = [t.out.shape[2] for t in ex.plan.tiles]
    assert rows[0] > 2 * rows[1], (rows, logs)  # the slow process got the smaller share
    assert any("measured speeds" in m for m in logs)


def test_conv_with_a_dynamic_schedule_on_processes_is_exact():
    import haloconv

    x, w = torch.randn(1, 3, 60, 40), torch.randn(4, 3, 3, 3)
    y = haloconv.conv(x, w, padding=1, padding_mode="reflect", partition="rows", workers=2, engine="processes",
                      schedule="dynamic", tiles=6)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), w)
    assert torch.equal(y, ref)
    with pytest.raises(ValueError, match="schedule"):
        haloconv.conv(x, w, padding=1, workers=2, schedule="dynamic")  # threads engine
    with pytest.raises(ValueError, match="schedule"):
        haloconv.conv(x, w, padding=1, workers=2, engine="processes", schedule="greedy")


def test_probe_computes_with_the_backend_the_caller_selected(monkeypatch):
    """speeds/throughput time a tile as a run computes it: with the torch backend selected at
    the caller's thread count, not the one torch would pick at the worker's single thread."""
    from haloconv.compute import kernels
    from haloconv.engines.processes.ops import probes

    seen = []
    real = kernels.conv_tile
    monkeypatch.setattr(kernels, "conv_tile", lambda *a: seen.append(a[5]) or real(*a))

    class OneRank:
        rank = 0

        def pace(self, t0):
            pass

    spec = ConvSpec.from_args((1, 8, 16, 16), (8, 8, 1, 1), None)
    for name in ("Slow2d", "Mkldnn"):
        seen.clear()
        best, total = probes.probe(OneRank(), spec, torch.float32, "torch", 2, torch_backend=name)
        assert 0 < best <= total
        assert seen and all(b == getattr(torch._C._ConvBackend, name) for b in seen), seen
