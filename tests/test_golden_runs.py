"""Plans, messages and outputs of a fixed set of runs, as recorded before the package was
re-laid (issue 15): a refactor that changes any of them fails here.  Inputs are small
integers in float64, so every result is exact whatever the order of the sums: the output
digests are the same on any machine, and a changed digest is a changed result, not
rounding.  Record again (only for an intended change of plans or results):

    .venv/bin/python tests/test_golden_runs.py > tests/data/golden_runs.json
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

import haloconv
from haloconv.compute import kernels
from haloconv.tiling.spec import ConvSpec

CONFIGS = [  # (x shape, w shape, conv kwargs, plan kwargs)
    ((1, 3, 37, 29), (4, 3, 3, 3), dict(padding=1), dict(partition="rows", workers=3)),
    ((2, 4, 30, 31), (6, 2, 5, 3), dict(padding=(2, 1), groups=2, stride=2), dict(partition="grid", workers=4)),
    ((1, 2, 40, 17), (3, 2, 3, 3), dict(padding=2, dilation=2, padding_mode="reflect"),
     dict(partition="cols", workers=3)),
    ((1, 1, 25, 26), (1, 1, 5, 5), dict(padding="same", padding_mode="circular"), dict(partition="grid", workers=6)),
    ((3, 2, 12, 11), (5, 2, 3, 3), dict(padding=1, padding_mode="replicate"), dict(partition="batch", workers=2)),
    ((1, 4, 14, 15), (8, 4, 3, 3), dict(padding=1), dict(partition="channels", workers=3)),
    ((1, 2, 9, 10, 11), (3, 2, 3, 3, 3), dict(padding=1, stride=(1, 2, 1)), dict(partition="grid", workers=4)),
    ((1, 2, 61), (2, 2, 7), dict(padding=3, dilation=2), dict(partition="cols", workers=4)),
    ((1, 3, 33, 35), (2, 3, 3, 3), dict(padding=1), dict(partition="rows", workers=3, ownership="even")),
    ((1, 3, 33, 35), (2, 3, 3, 3), dict(padding=1), dict(partition="rows", workers=3, exchange="master",
                                                              pipeline=2)),
    ((1, 1, 50, 44), (1, 1, 7, 7), dict(padding=3), dict(partition="grid", workers=4,
                                                         worker_weights=[1.0, 2.0, 3.0, 1.5])),
    ((1, 1, 40, 40), (1, 1, 5, 5), dict(padding=2), dict(partition="rows", workers=3, backend="ndimage")),
    ((1, 8, 3, 3, 8), (1, 8, 2, 1, 3), dict(stride=(3, 1, 1), dilation=(3, 1, 2), padding=(3, 4, 1),
                                             padding_mode="replicate"), dict(partition="grid", workers=3)),
    ((1, 2, 20, 20), (2, 2, 3, 3), dict(padding=1), dict(partition=(1, 1, 2, 2), workers=4)),
]


def ints(shape, seed):
    return torch.randint(-4, 5, shape, generator=torch.Generator().manual_seed(seed)).to(torch.float64)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def record(engines=("threads",), cluster=None) -> list[dict]:
    """Per config: digests of the plan, its messages, and the output of each engine
    ('processes': one LocalCluster of the largest worker count, held for every run: the
    given ``cluster``, or one started here)."""
    out = []
    own = cluster is None and "processes" in engines
    if own:
        cluster = haloconv.LocalCluster(max(c[3]["workers"] for c in CONFIGS))
    try:
        for i, (xs, ws, ckw, pkw) in enumerate(CONFIGS):
            x, w, b = ints(xs, i), ints(ws, 100 + i), ints((ws[0],), 200 + i)
            plan = haloconv.plan(xs, ws, bias_shape=(ws[0],), **ckw, **pkw)
            entry = {"plan": digest(repr((plan.splits, tuple(plan.tiles))).encode()),
                     "messages": digest(repr(plan.messages(8)).encode())}
            for engine in engines:
                y = haloconv.execute(plan, x, w, b, engine=cluster if engine == "processes" else engine).output
                entry[engine] = digest(y.contiguous().numpy().tobytes())
            out.append(entry)
    finally:
        if own:
            cluster.close()
    return out



def _recorded() -> list[dict]:
    return json.loads((Path(__file__).parent / "data" / "golden_runs.json").read_text())


def test_plans_messages_and_outputs_are_as_recorded(clusters):
    recorded = _recorded()
    assert len(recorded) == len(CONFIGS)
    now = record(("threads", "processes"), clusters(max(c[3]["workers"] for c in CONFIGS)))
    diff = [(i, CONFIGS[i], a, b) for i, (a, b) in enumerate(zip(now, recorded)) if a != b]
    assert not diff, diff


def test_the_recorded_outputs_are_exact_on_any_machine():
    """Small integers in float64: single-node torch gives the same bits whatever its order
    of sums, so the digests do not depend on the CPU."""
    recorded = _recorded()
    for i, (xs, ws, ckw, _) in enumerate(CONFIGS):
        x, w, b = ints(xs, i), ints(ws, 100 + i), ints((ws[0],), 200 + i)
        ref = kernels.single_node(x, w, b, ConvSpec.from_args(x.shape, w.shape, b.shape, **ckw))
        assert torch.equal(ref, ref.round()) and ref.abs().max() < 2**50
        assert digest(ref.contiguous().numpy().tobytes()) == recorded[i]["threads"]  # the single-node result


if __name__ == "__main__":
    json.dump(record(("threads", "processes")), sys.stdout, indent=1)
    print()
