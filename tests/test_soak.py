"""A short soak: many exact calls on one cluster leave memory, descriptors and processes as they were."""

import pytest
from benchmarks.soak import soak

from conftest import repeat


@pytest.mark.stress
def test_short_soak_no_growth_no_leaks():
    r = soak(calls=repeat(40, 300), workers=3, distinct=20, log=lambda *a: None)
    assert max(r["rss_growth"].values()) < 0.05, r["rss_growth"]
    assert not any(r["fd_growth"].values()), r["fd_growth"]
    assert r["leaked_processes"] == []
