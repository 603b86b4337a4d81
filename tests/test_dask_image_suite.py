"""dask-image's own filter tests, pointed at haloconv.ndimage with real splits.

dask-image ships its tests in its sdist (not its wheel); `make test` downloads the sdist of
the installed version into ``.venv/peer-tests`` (Makefile).  This module loads the test files
of the filters haloconv.ndimage has (correlate/convolve, the Gaussians, uniform, sobel and
prewitt, laplace), swaps ``dask_image.ndfilters`` for a module whose functions of those names
are haloconv.ndimage's, each call split into up to 4 tiles on threads, and collects every test
here; the tests that compare with scipy run on worker processes (the session's shared
clusters), the others on threads.  A dask array given to haloconv.ndimage gives a dask array
(haloconv/ndimage/lazy.py), as dask-image's functions do.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

from peer_suites import Counts, Shim, Split, swap_peer_functions

dask_ndf = pytest.importorskip("dask_image.ndfilters")
FILES = ("test__conv.py", "test__gaussian.py", "test__smooth.py", "test__edge.py", "test__diff.py")
# dask-image's name -> haloconv.ndimage's
COVERED = {"convolve": "convolve", "correlate": "correlate", "gaussian": "gaussian_filter",
           "gaussian_filter": "gaussian_filter", "gaussian_gradient_magnitude": "gaussian_gradient_magnitude",
           "gaussian_laplace": "gaussian_laplace", "uniform_filter": "uniform_filter", "sobel": "sobel",
           "prewitt": "prewitt", "laplace": "laplace"}


# Where dask-image's own argument checks differ from scipy.ndimage's, haloconv.ndimage keeps
# scipy's: these run and must keep failing (strict xfail), so a change is noticed.
DIFFERS_FROM_SCIPY = {  # the test's name, up to its end or its last "-": why, what haloconv raises
    "test_convolutions_params[ValueError-weights0-0-": ("weights of the wrong rank: scipy raises RuntimeError",
                                                        RuntimeError),
    "test_convolutions_params[ValueError-weights1-0-": ("an empty weights axis: scipy raises RuntimeError",
                                                        RuntimeError),
    "test_uniform_filter_params[TypeError-3.0-0]": ("size=3.0: scipy accepts a float size", None),
    "test_edge_func_params[prewitt-ValueError-0.0]": ("axis=0.0: scipy raises TypeError", TypeError),
    "test_edge_func_params[sobel-ValueError-0.0]": ("axis=0.0: scipy raises TypeError", TypeError),
}


def _tests_folder() -> Path | None:
    root = Path(sys.prefix) / "peer-tests"
    found = sorted(root.glob("dask_image-*/tests/test_dask_image/test_ndfilters"))
    return found[-1] if found else None


FOLDER = _tests_folder()
if FOLDER is None:
    why = f"dask-image's tests are not in {Path(sys.prefix) / 'peer-tests'}: `make test` downloads them"
    if os.environ.get("HALOCONV_PEER_TESTS") == "required":  # make test: their absence is a failure
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

counts = Counts()
SPLITS = {name: Split(ours, getattr(dask_ndf, name), counts) for name, ours in COVERED.items()}
shim = Shim("ndfilters", dask_ndf, SPLITS)
modules = []
for _file in FILES:
    _spec = importlib.util.spec_from_file_location(f"dask_image_tests_{_file[:-3]}", FOLDER / _file)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    modules.append(_module)
    # every test of dask-image's file, collected here (no two files share a test's name)
    globals().update({k: v for k, v in vars(_module).items() if k.startswith("test_") and callable(v)})
BY_THEIRS = {split.theirs: split for split in SPLITS.values()}


def swap_params(item) -> None:
    """A test parametrized with dask-image's function gets haloconv's (called from conftest)."""
    swap_peer_functions(item, BY_THEIRS)
    for start, (reason, raises) in DIFFERS_FROM_SCIPY.items():
        if item.name == start or (start.endswith("-") and item.name.startswith(start)):
            item.add_marker(pytest.mark.xfail(strict=True, raises=raises, reason=reason))


ON_PROCESSES = ("compare", "modes")  # tests whose name has one of these run on worker processes


@pytest.fixture(autouse=True)
def _pointed_at_haloconv(monkeypatch, request):
    for module in modules:  # the calls in the tests' bodies
        monkeypatch.setattr(module, "dask_image", types.SimpleNamespace(ndfilters=shim))
    if any(word in request.node.name for word in ON_PROCESSES):
        monkeypatch.setattr(counts, "clusters", request.getfixturevalue("clusters"))
    with counts.counting(request.node.nodeid):
        yield


def test_zz_dask_images_tests_ran_haloconv_split():
    """Counted over the whole file (run alone or under -k, too few ran to count)."""
    ran, calls, reached = counts.ran, counts.calls, counts.reached()
    if len(ran) < 250:
        pytest.skip(f"only {len(ran)} of dask-image's tests ran in this session")
    print(f"dask-image's filter tests: {len(ran)} ran, {reached} called haloconv.ndimage; "
          f"{calls['haloconv']} calls, {calls['split']} of them split, {calls['processes']} on worker processes")
    # dask-image's own test skips 4 cases before its call (odd derivatives with truncate 0)
    # (calls its argument checks refuse are not split)
    assert reached >= len(ran) - 4 and calls["split"] >= 0.85 * calls["haloconv"], (len(ran), reached, calls)
    assert calls["processes"] >= 150, calls
