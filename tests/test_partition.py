"""The Partition value: the one place a partition name or split counts becomes split
counts (plans, nn layers, scaling projections, the cost model's candidates)."""

from pathlib import Path

import pytest
import torch

import haloconv
from haloconv import Partition
from haloconv.nn.layout import Layout
from haloconv.planner import choice
from haloconv.tiling.partition import named_kinds, replanned
from haloconv.tiling.spec import ConvSpec

SRC = Path(haloconv.__file__).parent


def test_of_normalises_names_aliases_and_counts():
    assert Partition.of("horizontal") == Partition.of("rows") == Partition("rows")
    assert Partition.of("vertical") == Partition("cols")
    assert Partition.of([1, 1, 2, 2]) == Partition.of((1, 1, 2, 2)) == Partition("counts", (1, 1, 2, 2))
    p = Partition("grid")
    assert Partition.of(p) is p and p.name == "grid" and Partition.of((1, 2)).name == "tuple"
    for bad, err in (("diagonal", ValueError), (3, TypeError), ((1, 0, 1, 1), ValueError),
                     ((1.0, 1, 1, 1), ValueError), ((), ValueError), ("counts", ValueError)):
        with pytest.raises(err, match="partition"):
            Partition.of(bad)
    with pytest.raises(ValueError, match="exactly when"):
        Partition("rows", (1, 2))


def test_counts_for_plans_clamp_to_the_output_and_check_explicit_counts():
    spec = ConvSpec.from_args((3, 4, 5, 40), (6, 4, 3, 3), None, padding=1)
    pick = lambda s, w: (1, 1, 1, w)  # noqa: E731 - a stand-in for the planner's grid choice
    assert Partition("rows").counts(spec, 8, pick) == ("rows", (1, 1, 5, 1))  # 5 rows: 3 workers idle
    assert Partition("batch").counts(spec, 2, pick) == ("batch", (2, 1, 1, 1))
    assert Partition("channels").counts(spec, 9, pick) == ("channels", (1, 6, 1, 1))
    assert Partition("auto").counts(spec, 3, pick) == ("batch", (3, 1, 1, 1))
    assert Partition("auto").counts(spec, 4, pick) == ("grid", (1, 1, 1, 4))
    assert Partition.of((1, 1, 2, 2)).counts(spec, 4, pick) == ("tuple", (1, 1, 2, 2))
    with pytest.raises(ValueError, match="splits H into 6 parts but it has only 5"):
        Partition.of((1, 1, 6, 1)).counts(spec, 6, pick)
    with pytest.raises(ValueError, match="makes 4 tiles but workers=3"):
        Partition.of((1, 1, 2, 2)).counts(spec, 3, pick)
    with pytest.raises(ValueError, match="not available for 2-D"):
        Partition("depth").counts(spec, 2, pick)


def test_layer_counts_do_not_depend_on_shapes():
    assert Partition("grid").layer_counts(2, 6) == (1, 1, 3, 2)
    assert Partition("rows").layer_counts(3, 4) == (1, 1, 1, 4, 1)
    assert Partition("batch").layer_counts(2, 3) == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="makes 2 shards for 4 ranks"):
        Partition.of((1, 1, 2, 1)).layer_counts(2, 4)
    with pytest.raises(ValueError, match="not available for sharded layers"):
        Layout("auto", 2)
    assert Layout("horizontal", 3).counts(2) == Layout(Partition("rows"), 3).counts(2)


def test_exact_counts_use_every_worker_or_none():
    spec = ConvSpec.from_args((2, 4, 6, 50), (8, 4, 3, 3), None, padding=1)
    assert Partition("rows").exact_counts(spec, 6) == (1, 1, 6, 1)
    assert Partition("rows").exact_counts(spec, 7) is None
    assert Partition("batch").exact_counts(spec, 5) == (2, 1, 1, 1)
    assert Partition("batch+grid").exact_counts(spec, 4) == (2, 1, 2, 1)
    assert Partition("channels").exact_counts(spec, 9) is None


def test_replanned_keeps_the_kind_and_drops_counts_that_no_longer_fit():
    assert replanned("rows") == Partition("rows") and replanned("batch") == Partition("batch")
    for name in ("tuple", "hybrid", "single", "auto"):  # counts that no longer fit, the cost model's own names
        assert replanned(name) == Partition("grid")


def test_plan_and_conv_take_a_partition_value():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 31, 27, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    for value, same in (((1, 1, 4, 1), "rows"), (Partition("cols"), "vertical"), (Partition.of([1, 1, 2, 2]), None)):
        p = haloconv.plan(x.shape, w.shape, padding=1, partition=value, workers=4)
        if same is not None:
            assert p.splits == haloconv.plan(x.shape, w.shape, padding=1, partition=same, workers=p.workers).splits
        y = haloconv.conv(x, w, padding=1, partition=value, workers=4)
        assert torch.equal(y, haloconv.conv(x, w, padding=1, partition=p.splits, workers=4))


def test_the_cost_models_candidates_come_from_the_partition_kinds():
    spec = ConvSpec.from_args((1, 2, 40, 40), (2, 2, 3, 3), None, padding=1)
    names = {n for n, _ in choice.candidate_splits(spec, 4)} - {"hybrid"}
    assert names <= set(named_kinds(2)) and {"rows", "cols", "grid"} <= names


def test_only_the_partition_module_knows_the_aliases():
    """One normaliser: no other module of the library spells out the partition aliases."""
    spelled = [p.relative_to(SRC) for p in SRC.rglob("*.py") if '"horizontal"' in p.read_text()]
    assert spelled == [Path("tiling/partition.py")], spelled
