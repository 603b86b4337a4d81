"""A compute backend is one module of haloconv/compute/backends: the registry finds it, and
the planner, the engines, the cost model (auto), calibrate and the CLI take it from there."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

import haloconv
from haloconv.cli import calibrate
from haloconv.compute import backends
from haloconv.compute.backends.base import Backend
from haloconv.costmodel import cost
from haloconv.tiling.spec import ConvSpec

MODULE = '''
import math

import torch.nn.functional as F

from haloconv.compute.backends.base import Backend, dilated, padded
from haloconv.tiling.spec import ConvSpec


class Plain(Backend):
    name = "plain"
    guarantee = "bitwise equal to its own single-node call"
    default_rates = {"plain.macs": 1e-9}

    def correlate(self, window, weight, spec, groups):
        conv = (F.conv1d, F.conv2d, F.conv3d)[spec.ndim - 1]
        return conv(padded(window, spec), dilated(weight, spec.dilation), groups=groups)

    def work(self, spec, window, out, groups):
        return {"plain.macs": math.prod(out) * math.prod(spec.kernel) * spec.in_channels // spec.groups}

    def calibration(self, side):
        return [ConvSpec.from_args((1, 2, side, side), (2, 2, 3, 3), None, padding=1)]


BACKEND = Plain()
'''


def _plain() -> Backend:
    """The module's backend, for the in-process checks below."""
    namespace: dict = {}
    exec(textwrap.dedent(MODULE), namespace)
    return namespace["BACKEND"]


def test_the_registry_finds_a_backend_module_dropped_into_the_package(tmp_path, monkeypatch):
    (tmp_path / "plain.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(tmp_path)])
    found = backends._discover()
    assert list(found)[0] == "torch" and {"ndimage", "fft", "plain"} <= set(found)
    assert found["plain"].guarantee.startswith("bitwise")


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "plain", _plain())
    return "plain"


def test_a_registered_backend_runs_is_costed_chosen_and_calibrated(plain):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 2, 30, 26, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    y = haloconv.conv(x, w, padding=1, partition="grid", workers=4, engine="threads", backend=plain)
    assert torch.equal(y, backends.single_node(plain, x, w, None, ConvSpec.from_args(x.shape, w.shape, None,
                                                                                       padding=1)))
    assert torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-5)
    # the cost model prices its counts at the profile's rates, and picks it when it is cheapest
    spec = ConvSpec.from_args(x.shape, w.shape, None, padding=1)
    fast = cost.Profile(rates={"plain.macs": 1e-15})
    assert fast.compute_seconds(plain, spec, x.shape, spec.output_shape, 1) == pytest.approx(
        1e-15 * math.prod(spec.output_shape) * 9 * 2)
    assert haloconv.plan(x.shape, w.shape, padding=1, workers=2, partition="rows", backend="auto",
                         profile=fast).backend == plain
    assert cost.Profile().rates["plain.macs"] == 1e-9  # its uncalibrated price
    assert any(key[0] == plain for key in calibrate._compute_grid(quick=True))
