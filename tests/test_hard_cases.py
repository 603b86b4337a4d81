"""The property tests that reach the hard cases (tests/cases.py): every padding mode meets
rows, cols, grid and thin tiles, stride > 1 with uneven splits, tiles that own no input,
halos from several owners, wide channels and large sizes — on the threads engine, a held
LocalCluster (outputs, and gradients on a third of the cases); each test asserts the
classes it reached."""

import torch
from hypothesis import assume, given, settings

import haloconv
from cases import CLASSES, Reached, hard_case, plan_for
from conftest import assert_single_node_exact, runs_on_gemm
from test_conv_exact import _reference_or_none, _tensors
from test_grad import assert_grads_close, reference_grads


def _run_case(case, reached, seed, grads=None, **engine):
    """``case`` through haloconv.execute, exact; the gradients too when ``grads`` (None: on
    every third case checked)."""
    x, w, b = _tensors(case, seed=seed)
    ref = _reference_or_none(x, w, b, case)
    if ref is None:  # torch rejects it: no example (test_conv_exact checks haloconv refuses it too)
        assume(False)
    workers = engine.pop("workers", case["workers"])
    plan = plan_for(x, w, b, case, workers)
    reached.record(plan)
    reached.counts["checked"] += 1
    y = haloconv.execute(plan, x, w, b, **engine).output
    assert_single_node_exact(y, lambda: _reference_or_none(x, w, b, case), gemm=runs_on_gemm(plan.spec, x, w, b))
    if grads is None:  # every third case, and every batch split: the gradients too, through the same plan
        grads = reached.counts["checked"] % 3 == 0 or plan.splits[0] > 1
    if grads:
        reached.counts["gradients"] += 1
        if plan.splits[0] > 1:
            reached.counts["gradients of a batch split"] += 1
        gy = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(seed))
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = None if b is None else b.clone().requires_grad_()
        (haloconv.execute(plan, xs, ws, bs, **engine).output * gy).sum().backward()
        assert_grads_close((xs.grad, ws.grad, None if b is None else bs.grad), reference_grads(x, w, b, gy, case),
                           x.dtype)


def _reach_all(examples, engine_kw, seed, classes=CLASSES, max_workers=6):
    reached = Reached()

    @settings(max_examples=examples)
    @given(hard_case(max_workers=max_workers))
    def prop(case):
        _run_case(case, reached, seed, **dict(engine_kw))

    prop()
    engine = engine_kw.get("engine", "threads")
    print(f"case mix ({examples} examples, {engine if isinstance(engine, str) else 'LocalCluster'}):",
          dict(sorted(reached.counts.items())))
    assert not reached.missing(classes), (f"classes never reached: {reached.missing(classes)}; "
                                          f"reached: {dict(reached.counts)}")
    # hypothesis draws until it has ``examples`` that pass assume: every one was checked, a third with gradients
    assert reached.counts["checked"] >= 0.9 * examples, dict(reached.counts)
    assert reached.counts["gradients"] >= reached.counts["checked"] // 3, dict(reached.counts)
    return reached


def test_hard_cases_threads():
    reached = _reach_all(400, {}, seed=1)
    assert reached.counts["gradients of a batch split"], dict(reached.counts)


def test_hard_cases_local_cluster(clusters):
    reached = _reach_all(200, {"engine": clusters(4)}, seed=2, max_workers=4)
    assert reached.counts["gradients of a batch split"], dict(reached.counts)


ONE_SHOT_CLASSES = ("empty owned tile", "stride>1 uneven split", "halo from several owners", "channels>=32")
# engine='processes' starts a pool per call (and one per backward): one fixed case that
# reaches every class above (a tile owning no input, halos from several owners, an uneven
# strided split, 32 channels), forward and backward, instead of a property run
ONE_SHOT_CASES = [
    dict(n=1, c_in=32, c_out=8, groups=1, kernel=(5, 3), dilation=(3, 1), mode="zeros", padding=(12, 1),
         stride=(2, 1), spatial=(7, 9), dtype=torch.float64, bias=True, workers=3, partition="rows"),
]


def test_hard_cases_one_shot_processes():
    reached = Reached()
    for i, case in enumerate(ONE_SHOT_CASES):
        _run_case(case, reached, seed=3 + i, grads=True, engine="processes")
    assert not reached.missing(ONE_SHOT_CLASSES), dict(reached.counts)
    assert reached.counts["gradients"] == len(ONE_SHOT_CASES)
