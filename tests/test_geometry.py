"""Unit tests of the per-axis index math."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from haloconv.tiling import geometry
from haloconv.tiling.geometry import Axis

NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@given(st.integers(1, 50), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 4))
def test_output_length_matches_torch(length, k, s, d, p):
    span = d * (k - 1) + 1
    if length + 2 * p < span:
        return
    out = F.conv1d(torch.zeros(1, 1, length), torch.zeros(1, 1, k), stride=s, padding=p, dilation=d)
    assert geometry.output_length(length, k, s, d, p, p) == out.shape[-1]


@given(st.integers(1, 200), st.integers(1, 12))
def test_split_extent_even(extent, parts):
    if parts > extent:
        with pytest.raises(ValueError):
            geometry.split_extent(extent, parts)
        return
    r = geometry.split_extent(extent, parts)
    sizes = [b - a for a, b in r]
    assert r[0][0] == 0 and r[-1][1] == extent
    assert all(r[i][1] == r[i + 1][0] for i in range(parts - 1))
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@given(st.integers(1, 500), st.lists(st.floats(0.1, 10.0), min_size=1, max_size=8))
def test_split_extent_weighted_is_proportional(extent, weights):
    if len(weights) > extent:
        return
    r = geometry.split_extent(extent, len(weights), weights)
    sizes = [b - a for a, b in r]
    assert sum(sizes) == extent and min(sizes) >= 1
    total = sum(weights)
    for size, w in zip(sizes, weights):
        # cumulative rounding keeps each part within about one index of its share
        assert abs(size - extent * w / total) <= 2 + len(weights)


def test_weighted_split_example():
    assert geometry.split_extent(100, 2, [1, 3]) == [(0, 25), (25, 100)]


def test_aligned_halo_formula():
    # owned = [a*s - p, b*s - p): halo_lo = 0, halo_hi = d*(k-1) + 1 - s (docs/architecture.md, "Index math")
    for k, s, d, p in [(3, 1, 1, 1), (5, 2, 1, 2), (3, 1, 3, 3), (4, 3, 2, 0)]:
        ax = Axis(length=400, kernel=k, stride=s, dilation=d, pad_lo=p, pad_hi=p, backend_pad=p, mode="zeros")
        a, b = 40, 90
        assert ax.halo(a, b) == (0, d * (k - 1) + 1 - s)


def test_owned_ranges_partition_the_axis():
    ax = Axis(length=37, kernel=3, stride=2, dilation=1, pad_lo=1, pad_hi=1, backend_pad=1, mode="zeros")
    ranges = geometry.split_extent(ax.out_length, 5)
    owned = [ax.owned(a, b) for a, b in ranges]
    assert owned[0][0] == 0 and owned[-1][1] == 37
    assert all(owned[i][1] == owned[i + 1][0] for i in range(4))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@given(st.integers(1, 12), st.data())
def test_runs_match_numpy_pad(mode, length, data):
    p_max = length - 1 if mode == "reflect" else length
    p = data.draw(st.integers(0, p_max))
    ax = Axis(length=length, kernel=1, stride=1, dilation=1, pad_lo=p, pad_hi=p, backend_pad=0, mode=mode)
    lo = data.draw(st.integers(-p, length + p - 1))
    hi = data.draw(st.integers(lo + 1, length + p))
    src = np.arange(length)
    expected = np.pad(src, p, mode=NP_MODES[mode])[lo + p : hi + p]
    got = np.full(hi - lo, -1)
    for r in ax.runs(lo, hi):
        if r.step == 0:
            got[r.dst : r.dst + r.length] = r.src
        else:
            got[r.dst : r.dst + r.length] = r.src + r.step * np.arange(r.length)
    assert np.array_equal(got, expected)


def test_runs_zero_padding():
    ax = Axis(length=5, kernel=3, stride=1, dilation=1, pad_lo=2, pad_hi=2, backend_pad=2, mode="zeros")
    runs = ax.runs(-2, 7)
    assert [(r.dst, r.length, r.src) for r in runs] == [(0, 2, None), (2, 5, 0), (7, 2, None)]


@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(0, 4),
       st.sampled_from([1, 16]), st.data())
def test_compute_window_reproduces_outputs(length, k, s, d, q, align, data):
    """Convolving the compute window with backend padding q gives the global outputs; with
    ``align`` it computes a multiple of that many outputs (1-D tiles: ROW_ALIGN_1D)."""
    span = d * (k - 1) + 1
    if length + 2 * q < span:
        return
    ax = Axis(length=length, kernel=k, stride=s, dilation=d, pad_lo=q, pad_hi=q, backend_pad=q, mode="zeros")
    n_out = ax.out_length
    a = data.draw(st.integers(0, n_out - 1))
    b = data.draw(st.integers(a + 1, n_out))
    x = torch.arange(1, length + 1, dtype=torch.float64).reshape(1, 1, -1)
    w = torch.rand(1, 1, k, dtype=torch.float64)
    ref = F.conv1d(x, w, None, s, q, d)[..., a:b]
    lo, hi, first = ax.compute_window(a, b, align)
    assert (hi - lo) % s == length % s  # the single-node input's length, modulo the stride
    xp = F.pad(x, (0, max(0, hi - length)))  # zeros past the end
    win = torch.zeros(1, 1, hi - lo, dtype=torch.float64)
    n_lo, n_hi = ax.needed(a, b)
    u, v = max(lo, n_lo, 0), min(hi, n_hi, length)
    if u < v:
        win[..., u - lo : v - lo] = xp[..., u:v]
    y_all = F.conv1d(win, w, None, s, q, d)
    assert y_all.shape[-1] % align == 0
    y = y_all[..., first : first + b - a]
    assert torch.allclose(y, ref)


@given(st.integers(0, 12), st.integers(1, 12), st.one_of(st.none(), st.lists(st.floats(0.1, 10.0), min_size=12,
                                                                               max_size=12)))
def test_split_extent_allows_empty_parts_when_asked(extent, parts, weights):
    w = weights[:parts] if weights is not None else None
    r = geometry.split_extent(extent, parts, w, allow_empty=True)
    assert len(r) == parts and r[0][0] == 0 and r[-1][1] == extent
    assert all(r[i][1] == r[i + 1][0] and r[i][0] <= r[i][1] for i in range(parts - 1))
    sizes = [b - a for a, b in r]
    if parts <= extent:  # as without allow_empty
        assert r == geometry.split_extent(extent, parts, w) and min(sizes) >= 1
    elif w is None:  # one index each, then empty parts
        assert sizes == [1] * extent + [0] * (parts - extent)
