"""Backend 'separable': rank-1 kernels as two 1-D passes; a split run is bitwise the same
passes on the whole image, within its tolerance of torch; chosen only for kernels that are
rank 1, and refused with a clear error for others."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv
from conftest import count_opencv_paths
from haloconv.compute import backends
from haloconv.compute.backends import separable
from haloconv.costmodel.cost import Profile
from haloconv.files import named_kernels
from haloconv.tiling.spec import ConvSpec


@st.composite
def rank1_case(draw):
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    c = draw(st.sampled_from((1, 1, 2, 3)))
    kh, kw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    column, row = torch.randn(c, 1, kh, 1, generator=g, dtype=dtype), torch.randn(c, 1, 1, kw, generator=g, dtype=dtype)
    if draw(st.booleans()):  # symmetric, like a Gaussian or a box
        column, row = column + column.flip(2), row + row.flip(3)
    w = column * row
    x = torch.randn(draw(st.integers(1, 2)), c, draw(st.integers(12, 160)), draw(st.integers(12, 200)), generator=g,
                    dtype=dtype)
    kw_args = dict(padding=draw(st.one_of(st.just("same"), st.integers(0, 3))),
                   dilation=(draw(st.sampled_from((1, 1, 2))), draw(st.sampled_from((1, 1, 2)))),
                   padding_mode=draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate"))), groups=c)
    run = dict(partition=draw(st.sampled_from(("rows", "cols", "grid", "batch"))), workers=draw(st.integers(1, 5)))
    return x, w, kw_args, run


def test_property_separable_split_is_bitwise_its_whole_image_passes(monkeypatch):
    """Symmetric kernels too (OpenCV sums them in pairs when anchored at their centre), and
    planes filtered in one call on the plane itself as well as from padded copies."""
    reached: collections.Counter = collections.Counter()
    count_opencv_paths(monkeypatch, reached)
    check()
    assert reached["one call"] >= 10 and reached["copy"] >= 10, reached


@settings(max_examples=60, deadline=None)
@given(rank1_case())
def check(case):
    x, w, kw, run = case
    try:
        spec = ConvSpec.from_args(x.shape, w.shape, None, **kw)
        ref = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, [p for lo, hi in zip(reversed(spec.pad_lo), reversed(spec.pad_hi))
                                        for p in (lo, hi)],
                                    mode="constant" if kw["padding_mode"] == "zeros" else kw["padding_mode"]),
            w, dilation=kw["dilation"], groups=kw["groups"])
    except (ValueError, RuntimeError, NotImplementedError):
        return
    y = haloconv.conv(x, w, backend="separable", **kw, **run)
    assert torch.equal(y, backends.single_node("separable", x, w, None, spec))
    assert (y - ref).abs().max() <= separable.BACKEND.tolerance[x.dtype] * ref.abs().max()


def test_named_separable_kernels_are_rank_one_and_others_are_not():
    for name in ("gaussian:2", "box:15", "sobel-x", "prewitt-y", "gaussian:0.7"):
        k = named_kernels.named_kernel(name).astype(np.float32)
        kx, ky = separable.factors(k)
        assert np.abs(np.outer(ky, kx) - k).max() <= 1e-6 * np.abs(k).max()
    assert separable.factors(named_kernels.named_kernel("laplacian").astype(np.float32)) is None
    assert separable.factors(np.random.default_rng(0).standard_normal((5, 5))) is None


def test_refused_for_kernels_not_rank_one_and_never_chosen_for_them():
    x = torch.randn(1, 1, 64, 64)
    dense = torch.randn(1, 1, 7, 7)
    with pytest.raises(ValueError, match="rank 1"):
        haloconv.conv(x, dense, backend="separable", padding=3)
    plan = haloconv.plan(x.shape, (1, 1, 7, 7), padding=3, backend="separable", workers=2, partition="rows")
    with pytest.raises(ValueError, match="rank 1"):  # a plan made from shapes: the values are checked at run time
        haloconv.execute(plan, x, dense)
    cheap = Profile(rates={"separable.taps": 1e-15, "separable.pixels": 1e-15})
    assert haloconv.plan(x.shape, dense, padding=3, backend="auto", profile=cheap).backend != "separable"
    assert haloconv.plan(x.shape, (1, 1, 7, 7), padding=3, backend="auto", profile=cheap).backend != "separable"
    gauss = torch.from_numpy(named_kernels.named_kernel("gaussian:2").astype(np.float32))[None, None]
    assert haloconv.plan(x.shape, gauss, padding=8, backend="auto", profile=cheap).backend == "separable"


def test_separable_on_worker_processes_and_the_cli_gaussian(clusters, tmp_path, capsys):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 150, 333, generator=g)
    k = torch.from_numpy(named_kernels.named_kernel("gaussian:2").astype(np.float32))
    w = k.expand(3, 1, *k.shape).contiguous()
    spec = ConvSpec.from_args(x.shape, w.shape, None, padding="same", groups=3, padding_mode="reflect")
    y = haloconv.conv(x, w, padding="same", groups=3, padding_mode="reflect", backend="separable",
                      engine=clusters(3), workers=3, partition="grid")
    assert torch.equal(y, backends.single_node("separable", x, w, None, spec))
    from haloconv.cli.main import main

    np.save(tmp_path / "x.npy", x[0, 0].numpy())
    assert main(["run", str(tmp_path / "x.npy"), "--kernel", "gaussian:2", "--backend", "separable", "--workers", "2",
                 "--partition", "rows", "--engine", "threads", "--verify", "-o", str(tmp_path / "y")]) == 0
    assert "bitwise equal: True" in capsys.readouterr().out
