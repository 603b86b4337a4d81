"""Options are values (options.py): each face's keywords read once, one clear error
per mistake naming the parameter, and the values the layers below take."""

import numpy as np
import pytest

import haloconv
from haloconv.options import PlanOptions, RunOptions, StreamOptions


@pytest.mark.parametrize("kw,error,words", [
    (dict(partition="diagonal"), ValueError, "partition"),
    (dict(workers=0), ValueError, "workers must be >= 1"),
    (dict(workers=2.5), TypeError, "workers must be an int"),
    (dict(workers=True), TypeError, "workers must be an int"),
    (dict(worker_weights=[1, -1]), ValueError, "worker_weights must be finite positive"),
    (dict(workers=3, worker_weights=[1, 2]), ValueError, "one entry per worker"),
    (dict(ownership="shared"), ValueError, "ownership"),
    (dict(exchange="gossip"), ValueError, "exchange"),
    (dict(pipeline=0), ValueError, "pipeline"),
    (dict(backend=3), TypeError, "backend must be a str"),
    (dict(memory_budget="lots"), ValueError, "memory_budget"),
    (dict(engine="gpu"), ValueError, "engine"),
])
def test_plan_options_refuse_each_mistake_naming_it(kw, error, words):
    with pytest.raises(error, match=words):
        PlanOptions.of(**kw)
    with pytest.raises(error, match=words):  # the face says the same
        haloconv.plan((1, 1, 32, 32), (1, 1, 3, 3), **kw)


def test_plan_options_are_normalised_values():
    how = PlanOptions.of(partition=(1, 1, 2, 1), workers=np.int64(2), worker_weights=[1, 3], memory_budget="1MiB")
    assert how.workers == 2 and type(how.workers) is int
    assert how.worker_weights == (1, 3) and how.memory_budget == 2**20 and how.partition.split == (1, 1, 2, 1)
    assert how == PlanOptions.of(partition=(1, 1, 2, 1), workers=2, worker_weights=(1, 3), memory_budget=2**20)
    assert PlanOptions.of().chosen_by_model and not PlanOptions.of(partition="rows").chosen_by_model
    # numpy integers are ints on the face too
    p = haloconv.plan((1, 1, 32, 32), (1, 1, 3, 3), padding=np.int64(1), workers=np.int64(2), partition="rows")
    assert p.workers == 2


@pytest.mark.parametrize("kw,words", [
    (dict(engine="gpu"), "engine"),
    (dict(on_failure="ignore"), "on_failure"),
    (dict(schedule="eager"), "schedule"),
    (dict(engine="threads", schedule="dynamic"), "schedule and tiles apply to engine='processes'"),
    (dict(engine="processes", threads=2), "threads applies"),
    (dict(engine="threads", measure_speeds=True), "measuring the workers' speeds"),
    (dict(timeout=0), "timeout"),
    (dict(engine="processes", tiles=0), "tiles"),
])
def test_run_options_refuse_each_mistake_naming_it(kw, words):
    with pytest.raises(ValueError, match=words):
        RunOptions.of(**kw)


@pytest.mark.parametrize("kw,error,words", [
    (dict(memory_budget=0), ValueError, "memory_budget"),
    (dict(memory_budget="1GB", workers=0), ValueError, "workers"),
    (dict(memory_budget="1GB", dtype="int8"), TypeError, "dtype"),
    (dict(memory_budget="1GB", resume="yes"), TypeError, "resume"),
    (dict(memory_budget="1GB", on_failure="later"), ValueError, "on_failure"),
])
def test_stream_options_refuse_each_mistake_naming_it(kw, error, words):
    with pytest.raises(error, match=words):
        StreamOptions.of(**kw)


def test_stream_options_take_torch_and_numpy_dtypes_and_names():
    import torch

    for given in ("float64", np.float64, np.dtype("float64"), torch.float64):
        assert StreamOptions.of(memory_budget="1GB", dtype=given).dtype == np.dtype("float64")
    assert StreamOptions.of(memory_budget=2**30).dtype == np.dtype("float32")
