"""The property tests that reach the hard cases (tests/cases.py): every padding mode meets
rows, cols, grid and thin tiles, stride > 1 with uneven splits, tiles that own no input,
halos from several owners, wide channels and large sizes — on the threads engine, a held
LocalCluster (outputs, and gradients on a third of the cases); each test asserts the
classes it reached."""

import pytest
import torch
from hypothesis import given, settings

import haloconv
from cases import CLASSES, Reached, hard_case, plan_for
from conftest import assert_single_node_exact, runs_on_gemm
from test_conv_exact import _reference_or_none, _tensors
from test_grad import assert_grads_close, reference_grads


def _run_case(case, reached, seed, **engine):
    x, w, b = _tensors(case, seed=seed)
    ref = _reference_or_none(x, w, b, case)
    if ref is None:
        return
    workers = engine.pop("workers", case["workers"])
    plan = plan_for(x, w, b, case, workers)
    reached.record(plan)
    y = haloconv.execute(plan, x, w, b, **engine).output
    assert_single_node_exact(y, lambda: _reference_or_none(x, w, b, case), gemm=runs_on_gemm(plan.spec, x, w, b))
    if case["n"] == 1:  # about a third of the cases: the gradients too, through the same plan
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
    return reached


def test_hard_cases_threads():
    _reach_all(400, {}, seed=1)


@pytest.fixture(scope="module")
def cluster():
    with haloconv.LocalCluster(workers=4, timeout=30) as c:
        yield c


def test_hard_cases_local_cluster(cluster):
    _reach_all(200, {"engine": cluster}, seed=2, max_workers=4)


ONE_SHOT_CLASSES = ("empty owned tile", "stride>1 uneven split", "halo from several owners", "channels>=32")


def test_hard_cases_one_shot_processes():
    """engine='processes' starts a cluster per call (and one per backward): fewer examples,
    and a few classes asserted."""
    _reach_all(15, {"engine": "processes"}, seed=3, classes=ONE_SHOT_CLASSES, max_workers=3)
