"""Bad input: a clear ValueError/TypeError naming the parameter and value, never a hang."""

import numpy as np
import pytest
import torch

import haloconv

X = torch.randn(1, 4, 16, 16)
W = torch.randn(6, 4, 3, 3)


@pytest.mark.parametrize(
    "x,w,kw,exc,words",
    [
        (torch.randn(16, 16), W, {}, ValueError, ["x", "(16, 16)"]),
        (torch.randn(1, 1, 1, 2, 2, 2), W, {}, ValueError, ["x", "spatial"]),
        (X, torch.randn(6, 4, 3), {}, ValueError, ["weight", "(6, 4, 3)"]),
        (X, torch.randn(6, 3, 3, 3), {}, ValueError, ["C_in", "weight"]),
        (X, torch.randn(6, 4, 3, 3), dict(groups=3), ValueError, ["groups=3"]),
        (X, torch.randn(5, 2, 3, 3), dict(groups=2), ValueError, ["groups=2", "C_out=5"]),
        (X, torch.randn(6, 4, 20, 3), {}, ValueError, ["kernel", "axis 0"]),
        (X, torch.randn(6, 4, 3, 3), dict(dilation=9), ValueError, ["kernel", "dilation 9"]),
        (X, W, dict(stride=0), ValueError, ["stride", "0"]),
        (X, W, dict(stride=(1, -1)), ValueError, ["stride"]),
        (X, W, dict(dilation=0), ValueError, ["dilation", "0"]),
        (X, W, dict(padding=-1), ValueError, ["padding", "-1"]),
        (X, W, dict(padding="full"), ValueError, ["padding", "full"]),
        (X, W, dict(padding="same", stride=2), ValueError, ["same", "stride"]),
        (X, W, dict(stride=(1, 2, 3)), ValueError, ["stride", "(1, 2, 3)"]),
        (X, W, dict(stride=1.5), TypeError, ["stride", "1.5"]),
        (X, W, dict(workers=0), ValueError, ["workers", "0"]),
        (X, W, dict(workers=2.0), TypeError, ["workers"]),
        (X, W, dict(partition="diagonal"), ValueError, ["partition", "diagonal"]),
        (X, W, dict(partition="depth"), ValueError, ["depth", "2-D"]),
        (X, W, dict(partition=(1, 1, 2)), ValueError, ["partition"]),
        (X, W, dict(partition=(1, 1, 2, 2), workers=3), ValueError, ["4 tiles", "workers=3"]),
        (X, W, dict(partition=(1, 1, 20, 1), workers=20), ValueError, ["H", "20"]),
        (X, W, dict(padding_mode="mirror"), ValueError, ["padding_mode", "mirror"]),
        (X, W, dict(padding_mode="constant"), ValueError, ["padding_mode", "constant", "cval"]),
        (X, W, dict(workers=2, worker_weights=[1]), ValueError, ["worker_weights"]),
        (X, W, dict(workers=2, worker_weights=[1, -1]), ValueError, ["worker_weights"]),
        (X, W, dict(engine="mpi"), ValueError, ["engine", "mpi"]),
        (X.to(torch.int32), W.to(torch.int32), {}, TypeError, ["x", "int32"]),
        (X.to(torch.complex64), W.to(torch.complex64), {}, TypeError, ["x", "complex64"]),
        (X, W.double(), {}, TypeError, ["weight", "float64"]),
        ([[1.0]], W, {}, TypeError, ["x", "list"]),
        (np.zeros((1, 4, 8, 8), dtype=np.uint8), W, {}, TypeError, ["x", "uint8"]),
    ],
)
def test_bad_input_names_the_parameter(x, w, kw, exc, words):
    with pytest.raises(exc) as info:
        haloconv.conv(x, w, **kw)
    msg = str(info.value)
    for word in words:
        assert word in msg, (word, msg)


def test_bad_bias():
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        haloconv.conv(X, W, torch.randn(5))
    with pytest.raises(TypeError, match="bias"):
        haloconv.conv(X, W, torch.randn(6, dtype=torch.float64))


def test_execute_checks_plan_against_data():
    p = haloconv.plan((1, 4, 16, 16), (6, 4, 3, 3), workers=2)
    with pytest.raises(ValueError, match="plan was made for"):
        haloconv.execute(p, torch.randn(1, 4, 17, 16), W)
    with pytest.raises(ValueError, match="without a bias"):
        haloconv.execute(p, X, W, torch.randn(6))


def test_bool_is_not_an_int():
    with pytest.raises(TypeError, match="groups"):
        haloconv.conv(X, W, groups=True)
    with pytest.raises(TypeError, match="stride"):
        haloconv.conv(X, W, stride=True)


def test_the_api_takes_what_the_cli_takes():
    """A 2-D image with a 2-D kernel (as scipy.ndimage takes them) gives a 2-D result; a
    memory budget may be a size ('1GB'); tensors in place of shapes plan; a wrong dtype is
    reported as the caller's own."""
    import numpy as np
    import scipy.ndimage

    rng = np.random.default_rng(0)
    x = rng.random((40, 30)).astype(np.float64)
    w = rng.random((3, 3))
    y = haloconv.conv(x, w, padding=1, backend="ndimage", workers=2, partition="rows")
    assert y.shape == (40, 30) and np.array_equal(y, scipy.ndimage.correlate(x, w, mode="constant"))
    assert haloconv.plan((1, 1, 64, 64), (1, 1, 3, 3), memory_budget="1GB").workers >= 1
    p = haloconv.plan(torch.zeros(1, 2, 16, 16), torch.zeros(3, 2, 3, 3), padding=1, backend="torch")
    assert p.spec.input_shape == (1, 2, 16, 16) and p.spec.weight_shape == (3, 2, 3, 3)
    with pytest.raises(ValueError, match="memory_budget must be a number with a unit"):
        haloconv.plan((1, 1, 64, 64), (1, 1, 3, 3), memory_budget="lots")
    with pytest.raises(TypeError, match="got dtype uint8"):
        haloconv.conv(np.zeros((1, 1, 8, 8), np.uint8), np.ones((1, 1, 3, 3), np.float32))


def test_the_package_declares_its_types():
    """PEP 561: py.typed ships with the package, so type checkers use haloconv's annotations."""
    from importlib.resources import files

    assert files("haloconv").joinpath("py.typed").is_file()
