"""Engine 'processes': real worker processes in a gloo group; exact, counted, fault-safe."""

import math
import os
import re
import time
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings

import haloconv
from cases import plan_for
from conftest import assert_bitwise, assert_single_node_exact, torch_conv, torch_plan, torch_reference
from haloconv.tiling.messages import PHASES
from test_conv_exact import CASES, _reference_or_none, _tensors, conv_case


def _gone(pids, wait=5.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and _not_zombie(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _not_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module", params=[2, 3], ids=["2proc", "3proc"])
def cluster(request, clusters):
    return clusters(request.param)


@pytest.mark.parametrize("exchange,pipeline", [("neighbours", 1), ("master", 1), ("master", 3)])
@pytest.mark.parametrize("name,xs,ws,kw,partition,workers", CASES, ids=[c[0] for c in CASES])
def test_named_cases_exact(clusters, name, xs, ws, kw, partition, workers, exchange, pipeline):
    """Each case on as many workers as it names (a tuple: one per tile), so it is what its
    name says: thin tiles, halos from several owners, more workers than rows..."""
    cluster = clusters(math.prod(partition) if isinstance(partition, tuple) else workers)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(*xs, generator=g)
    w = torch.randn(*ws, generator=g)
    b = torch.randn(ws[0], generator=g)
    ref = torch_reference(x, w, b, **kw)
    p = torch_plan(x.shape, w.shape, b.shape, partition=partition, workers=cluster.workers,
                      exchange=exchange, pipeline=pipeline, **kw)
    ex = haloconv.execute(p, x, w, b, engine=cluster)
    assert_bitwise(ex.output, ref)
    _assert_traffic_matches_plan(ex, p, x.element_size())


def _assert_traffic_matches_plan(ex, plan, itemsize):
    predicted = plan.traffic(itemsize)
    for s in ex.workers:
        for phase in PHASES:
            got = s.traffic[phase]
            want = predicted[s.rank][phase]
            assert (got["bytes_sent"], got["bytes_recv"], got["messages_sent"], got["messages_recv"]) == (
                want.bytes_sent, want.bytes_recv, want.messages_sent, want.messages_recv,
            ), (s.rank, phase)


@pytest.mark.parametrize("ownership", ["aligned", "even"])
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
def test_uneven_thin_tiles_and_modes(cluster, mode, ownership):
    x = torch.randn(1, 2, 7, 25, dtype=torch.float64)
    w = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    ref = torch_reference(x, w, None, padding=2, padding_mode=mode, dilation=(1, 1))
    for part in ("rows", "cols", "grid"):
        p = torch_plan(x.shape, w.shape, padding=2, padding_mode=mode, partition=part,
                          workers=cluster.workers, ownership=ownership)
        ex = haloconv.execute(p, x, w, engine=cluster)
        assert_bitwise(ex.output, ref)
        _assert_traffic_matches_plan(ex, p, 8)


def test_tuple_partitions(clusters):
    x = torch.randn(2, 3, 20, 18)
    w = torch.randn(4, 3, 3, 3)
    ref = torch_reference(x, w, None, padding=1, padding_mode="circular")
    for counts in [(2, 1, 2, 1), (1, 2, 1, 2), (2, 2, 1, 1), (1, 1, 2, 2)]:
        y = torch_conv(x, w, padding=1, padding_mode="circular", partition=counts, engine=clusters(4))
        assert_bitwise(y, ref)


def test_property_processes_engine(clusters):
    """Random configurations on clusters of 2-4 workers (the case's own count, and a tuple
    partition on one worker per tile): every example is checked (assume, not return),
    and the worker counts and tuple partitions are reached (counted here)."""
    reached = Counter()

    @settings(max_examples=25)
    @given(conv_case(ndim=2))
    def prop(case):
        x, w, b = _tensors(case, seed=5)
        ref = _reference_or_none(x, w, b, case)
        assume(ref is not None)
        part = case["partition"]
        if isinstance(part, tuple):
            assume(math.prod(part) <= 4)
            plan = plan_for(x, w, b, case, math.prod(part))
        else:
            plan = plan_for(x, w, b, case, min(max(case["workers"], 2), 4))
        cluster = clusters(plan.workers if isinstance(part, tuple) else min(max(case["workers"], 2), 4))
        y = haloconv.execute(plan, x, w, b, engine=cluster).output
        assert_single_node_exact(y, lambda: _reference_or_none(x, w, b, case))
        reached["checked"] += 1
        reached[f"{cluster.workers} workers"] += 1
        reached["tuple" if isinstance(part, tuple) else "named"] += 1

    prop()
    assert reached["checked"] >= 22 and reached["tuple"] and reached["named"], reached
    assert sum(1 for k in reached if k.endswith("workers")) >= 2, reached


def test_one_shot_engine_leaves_no_process(monkeypatch):
    from haloconv.engines.processes import cluster

    started = []
    real = cluster.forkserver.start

    def spy(*a, **kw):
        p = real(*a, **kw)
        started.append(p.pid)
        return p

    monkeypatch.setattr(cluster.forkserver, "start", spy)
    x = torch.randn(1, 1, 30, 30)
    w = torch.randn(1, 1, 3, 3)
    y = torch_conv(x, w, padding=1, partition="rows", workers=2, engine="processes")
    assert_bitwise(y, torch_reference(x, w, None, padding=1))
    assert len(started) == 1 and _gone(started)


@pytest.mark.parametrize("kind", ["exit", "hang"])
def test_worker_fault_raises_within_timeout_without_heal_and_cleans_up(kind):
    c = haloconv.LocalCluster(workers=3, timeout=2, heal=False)
    pids = c.pids()
    c.inject_fault(2, kind)
    x = torch.randn(1, 1, 30, 30)
    w = torch.randn(1, 1, 3, 3)
    t0 = time.monotonic()
    with pytest.raises(haloconv.WorkerError, match="cluster was shut down") as e:
        torch_conv(x, w, padding=1, partition="rows", engine=c)
    took = time.monotonic() - t0
    assert took < 15  # the 2 s timeout, not the 60 s default or a hang
    if kind == "hang":  # the message says how long the call waited, not only the timeout
        waited = float(re.search(r"the call waited ([\d.]+) s", str(e.value)).group(1))
        assert 2 <= waited <= took + 0.05, (waited, took, str(e.value))  # (waited: rounded to 0.1 s)
    assert _gone(pids)
    assert not c.alive
    with pytest.raises(haloconv.WorkerError, match="closed"):
        torch_conv(x, w, padding=1, partition="rows", engine=c)


def test_cluster_validation():
    with pytest.raises(ValueError, match="workers"):
        haloconv.LocalCluster(workers=0)
    with pytest.raises(ValueError, match="timeout"):
        haloconv.LocalCluster(workers=1, timeout=-1)
    with haloconv.LocalCluster(workers=1) as c:  # a cluster of one: the master alone
        x = torch.randn(1, 1, 9, 9)
        w = torch.randn(1, 1, 3, 3)
        assert_bitwise(torch_conv(x, w, padding=1, engine=c), torch_reference(x, w, None, padding=1))
        p = torch_plan(x.shape, w.shape, workers=2, partition="rows")
        with pytest.raises(ValueError, match="2 workers but the cluster has 1"):
            haloconv.execute(p, x, w, engine=c)


def test_resident_shards_chain_layers_without_the_master(clusters):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 96, 40, generator=g, dtype=torch.float64)
    w1 = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    b2 = torch.randn(2, generator=g, dtype=torch.float64)
    c = clusters(3)
    p1 = torch_plan(x.shape, w1.shape, padding=1, partition="rows", workers=3, ownership="even")
    p2 = torch_plan(p1.spec.output_shape, w2.shape, b2.shape, padding=2, padding_mode="reflect",
                       partition="rows", workers=3, ownership="even")
    s = c.scatter(x, p1)
    h = c.conv(s, w1, plan=p1)
    y = c.conv(h, w2, b2, plan=p2)
    ref = torch_reference(torch_reference(x, w1, None, padding=1), w2, b2, padding=2, padding_mode="reflect")
    assert_bitwise(c.gather(y), ref)
    # a layer call moves filters and halos only: no scatter, no gather
    for st in y.execution.workers:
        assert st.traffic["scatter"]["bytes_recv"] == 0 and st.traffic["gather"]["bytes_sent"] == 0
        assert st.traffic["halo"]["bytes_recv"] == p2.traffic(8)[st.rank]["halo"].bytes_recv
    with pytest.raises(ValueError, match="owned input boxes differ"):
        c.conv(h, w2, b2, plan=torch_plan(p1.spec.output_shape, w2.shape, b2.shape, padding=2,
                                             partition="cols", workers=3, ownership="even"))
    c.free(s, h, y)
    with pytest.raises(ValueError, match="not a live shard"):
        c.gather(y)


def test_large_boxes_travel_as_contiguous_runs_exactly_as_predicted(clusters):
    # 256 KiB row bands x 4 channels: owned bands go as one message per channel (no packing copy)
    x = torch.randn(1, 4, 512, 256)
    w = torch.randn(4, 4, 3, 3)
    c = clusters(2)
    for exchange, pipeline in (("neighbours", 1), ("master", 1), ("master", 4)):
        p = torch_plan(x.shape, w.shape, padding=1, partition="rows", workers=2, exchange=exchange,
                          pipeline=pipeline)
        ex = haloconv.execute(p, x, w, engine=c)
        assert_bitwise(ex.output, torch_reference(x, w, None, padding=1))
        _assert_traffic_matches_plan(ex, p, 4)
        assert ex.workers[1].traffic["scatter"]["messages_recv"] >= 4


def test_keep_heap_takes_effect_on_glibc_and_can_be_turned_off(monkeypatch):
    from haloconv.engines.processes.worker import keep_heap

    assert keep_heap() is True  # Linux/glibc here
    monkeypatch.setenv("HALOCONV_KEEP_HEAP", "0")
    assert keep_heap() is False


EMPTY_CASE = dict(stride=(3, 1, 1), dilation=(3, 1, 2), padding=(3, 4, 1), padding_mode="replicate")


@pytest.mark.parametrize("engine", ["cluster", "processes", "threads"])
def test_a_tile_that_owns_no_input(clusters, engine):
    """The reported case: H split in 3 and tile 2 owns rows 3:3 (a worker raised
    ZeroDivisionError); its window is all halo, drawn from the other owners."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 3, 3, 8, generator=g, dtype=torch.float64)
    w = torch.randn(1, 8, 2, 1, 3, generator=g, dtype=torch.float64)
    p = torch_plan(x.shape, w.shape, partition="grid", workers=3, **EMPTY_CASE)
    assert any(t.owned.volume == 0 for t in p.tiles)
    y = haloconv.execute(p, x, w, engine=clusters(3) if engine == "cluster" else engine).output
    assert_bitwise(y, torch_reference(x, w, None, **EMPTY_CASE))
