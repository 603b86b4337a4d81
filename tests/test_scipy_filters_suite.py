"""scipy's own filter tests, pointed at haloconv.ndimage with real splits.

scipy ships ``scipy/ndimage/tests/test_filters.py`` in its wheel.  This module collects its
tests and swaps the ``ndimage`` that file calls for a module whose correlations and linear
filters are haloconv.ndimage's, each call split into up to 4 tiles on threads (a grid over
the filtered axes; fewer tiles only where the image has fewer pixels); every other function
(rank filters, generic filters, ...) stays scipy's.  Tests parametrized with scipy's own
functions get haloconv's in their place (tests/conftest.py, pytest_collection_modifyitems),
and haloconv's compare equal to scipy's, as the tests' ``filter_func in [ndimage.correlate,
...]`` expect.  ``test_zz_...`` counts the tests that ran haloconv and the splits they made.

``EXPECTED_TO_FAIL`` lists what fails, with the reason (README, "scipy.ndimage users"):
those run and must keep failing (strict xfail), so a fix is noticed.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import haloconv.ndimage as hndi

scipy_tests = pytest.importorskip("scipy.ndimage.tests.test_filters")
import scipy.ndimage as sndi  # noqa: E402

COVERED = ("correlate", "convolve", "correlate1d", "convolve1d", "gaussian_filter", "gaussian_filter1d",
           "uniform_filter", "uniform_filter1d", "sobel", "prewitt", "laplace", "gaussian_laplace",
           "gaussian_gradient_magnitude")
SPLIT_WORKERS = 4
EXPECTED_TO_FAIL = {
    # scipy refuses float16 (RuntimeError); haloconv computes it in float32 (correlations.py)
    "test_gaussian_filter_float16": "float16 is computed, not refused",
}
calls = {"haloconv": 0, "split": 0}
ran: dict[str, int] = {}  # test id -> calls of haloconv it made


class Split:
    """haloconv.ndimage's ``name`` split into up to SPLIT_WORKERS tiles; equal to scipy's
    function of that name (the tests pick branches by ``filter_func == ndimage.X``)."""

    def __init__(self, name: str):
        self.name, self.ours, self.theirs = name, getattr(hndi, name), getattr(sndi, name)
        functools.update_wrapper(self, self.theirs)

    def __eq__(self, other):
        return other is self or other is self.theirs

    def __hash__(self):
        return hash(self.theirs)

    def __call__(self, *args, **kwargs):
        calls["haloconv"] += 1
        for workers in range(SPLIT_WORKERS, 0, -1):  # as many tiles as the image has room for
            try:
                result = self.ours(*args, workers=workers, partition="grid", **kwargs)
            except ValueError as e:
                if workers > 1 and "partition" in str(e):
                    continue
                raise
            calls["split"] += workers > 1
            return result


class _Shim(types.ModuleType):
    """scipy.ndimage with haloconv's correlations and linear filters."""

    def __getattr__(self, name):
        return getattr(sndi, name)


shim = _Shim("ndimage")
SPLITS = {getattr(sndi, name): Split(name) for name in COVERED}
for _f in SPLITS.values():
    setattr(shim, _f.name, _f)


def swap_params(item) -> None:
    """A test parametrized with scipy's function gets haloconv's (called from conftest)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for key, value in list(params.items()):
        if callable(value) and value in SPLITS:
            params[key] = SPLITS[value]
    for name, reason in EXPECTED_TO_FAIL.items():
        if item.name.split("[")[0] == name:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def xp():
    return np


@pytest.fixture
def num_parallel_threads():
    return 1


@pytest.fixture(autouse=True)
def _pointed_at_haloconv(monkeypatch, request):
    monkeypatch.setattr(scipy_tests, "ndimage", shim)
    before = calls["haloconv"]
    yield
    ran[request.node.nodeid] = calls["haloconv"] - before


# every test of scipy's file, collected here
globals().update({k: v for k, v in vars(scipy_tests).items()
                  if (k.startswith("test_") and callable(v)) or (k.startswith("Test") and isinstance(v, type))})


def test_zz_scipys_tests_ran_haloconv_split():
    """Counted over the whole file (run alone or under -k, too few ran to count)."""
    if len(ran) < 1000:
        pytest.skip(f"only {len(ran)} of scipy's tests ran in this session")
    reached = sum(1 for v in ran.values() if v)
    print(f"scipy's filter tests: {len(ran)} ran, {reached} called haloconv.ndimage; "
          f"{calls['haloconv']} calls, {calls['split']} of them split")
    # (a call on an image of one pixel, or thinner than 2 along every filtered axis, is not split)
    assert reached >= 1800 and calls["split"] >= 0.85 * calls["haloconv"], (reached, calls)
