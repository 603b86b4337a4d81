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

import numpy as np
import pytest

from peer_suites import Counts, Shim, Split, swap_peer_functions

scipy_tests = pytest.importorskip("scipy.ndimage.tests.test_filters")
import scipy.ndimage as sndi  # noqa: E402

COVERED = ("correlate", "convolve", "correlate1d", "convolve1d", "gaussian_filter", "gaussian_filter1d",
           "uniform_filter", "uniform_filter1d", "sobel", "prewitt", "laplace", "gaussian_laplace",
           "gaussian_gradient_magnitude")
EXPECTED_TO_FAIL = {
    # scipy refuses float16 (RuntimeError); haloconv computes it in float32 (correlations.py)
    "test_gaussian_filter_float16": "float16 is computed, not refused",
}
counts = Counts()
SPLITS = {getattr(sndi, name): Split(name, getattr(sndi, name), counts) for name in COVERED}
shim = Shim("ndimage", sndi, {name: SPLITS[getattr(sndi, name)] for name in COVERED})


def swap_params(item) -> None:
    """A test parametrized with scipy's function gets haloconv's (called from conftest)."""
    swap_peer_functions(item, SPLITS)
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
    with counts.counting(request.node.nodeid):
        yield


# every test of scipy's file, collected here
globals().update({k: v for k, v in vars(scipy_tests).items()
                  if (k.startswith("test_") and callable(v)) or (k.startswith("Test") and isinstance(v, type))})


def test_zz_scipys_tests_ran_haloconv_split():
    """Counted over the whole file (run alone or under -k, too few ran to count)."""
    ran, calls, reached = counts.ran, counts.calls, counts.reached()
    if len(ran) < 1000:
        pytest.skip(f"only {len(ran)} of scipy's tests ran in this session")
    print(f"scipy's filter tests: {len(ran)} ran, {reached} called haloconv.ndimage; "
          f"{calls['haloconv']} calls, {calls['split']} of them split")
    # (a call on an image of one pixel, or thinner than 2 along every filtered axis, is not split)
    assert reached >= 1800 and calls["split"] >= 0.85 * calls["haloconv"], (reached, calls)
