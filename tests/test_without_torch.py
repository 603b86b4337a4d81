"""Image filters run without torch: `import haloconv` and a filter through `haloconv run`
(planned by the cost model, computed by OpenCV on numpy arrays in this process) never
import it, and give the same bits as the tensor path of the same backend."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import scipy.fft
import torch

import haloconv
from haloconv.compute import backends
from haloconv.compute.backends.fft import next_smooth
from haloconv.engines.inprocess import arrays as array_threads
from haloconv.files import named_kernels
from haloconv.tiling.spec import ConvSpec

PROBE = "import sys; {body}; print('torch imported:', 'torch' in sys.modules)"


def _python(body: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(body=body)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_import_haloconv_and_its_planner_do_not_import_torch(tmp_path):
    r = _python("import haloconv; haloconv.ConvSpec; haloconv.Plan; from haloconv import planner; "
                "planner.plan((1, 1, 64, 64), (1, 1, 5, 5), padding=2)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch imported: False" in r.stdout
    r = _python("import haloconv; haloconv.conv", tmp_path)  # conv imports it on a tensor path only
    assert "torch imported: False" in r.stdout
    r = _python("import haloconv; haloconv.execute", tmp_path)  # the tensor API imports it on first use
    assert "torch imported: True" in r.stdout


@pytest.mark.parametrize("kernel,mode", [("gaussian:2", "reflect"), ("sobel-x", "zeros"), ("random5", "replicate")])
def test_haloconv_conv_on_numpy_filters_runs_without_torch_bitwise_the_tensor_path(tmp_path, kernel, mode):
    """A numpy image and kernel through haloconv.conv: the array engine, no torch; the same
    bits as the tensor path of the same plan."""
    rng = np.random.default_rng(0)
    x = rng.random((301, 257), dtype=np.float32)
    k = (rng.random((5, 5), dtype=np.float32) if kernel == "random5"
         else named_kernels.named_kernel(kernel).astype(np.float32))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "k.npy", k)
    pad = k.shape[0] // 2
    body = ("import numpy as np, haloconv; x = np.load('x.npy'); k = np.load('k.npy'); "
            f"y = haloconv.conv(x, k, padding={pad}, padding_mode={mode!r}, partition='rows', workers=3); "
            "np.save('y.npy', y); print('backend', haloconv.plan((1, 1, *x.shape), k[None, None], "
            f"padding={pad}, padding_mode={mode!r}, partition='rows', workers=3).backend)")
    r = _python(body, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch imported: False" in r.stdout, r.stdout
    backend = r.stdout.split("backend ")[1].split()[0]
    y = np.load(tmp_path / "y.npy")
    ref = haloconv.conv(torch.from_numpy(x), torch.from_numpy(k), padding=pad, padding_mode=mode, partition="rows",
                        workers=3, backend=backend)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y, ref.numpy()), backend


@pytest.mark.parametrize("kernel", ["gaussian:2", "sobel-x", "laplacian"])
def test_a_filter_through_the_cli_runs_without_torch_bitwise_its_backend(tmp_path, kernel):
    rng = np.random.default_rng(0)
    x = rng.random((300, 260), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = ["run", "x.npy", "--kernel", kernel, "--padding-mode", "reflect", "--workers", "2", "--partition", "rows",
            "-o", "y"]
    r = _python(f"from haloconv.cli.main import main; rc = main({argv!r})", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch imported: False" in r.stdout and " on threads" in r.stdout, r.stdout
    backend = next(line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.startswith("backend "))
    assert backend in ("opencv", "separable")
    w = named_kernels.load_kernel(kernel, 1, 2)[0].astype(np.float32)
    spec = ConvSpec.from_args((1, 1, *x.shape), w.shape, None, padding="same", padding_mode="reflect")
    ref = backends.single_node(backend, torch.from_numpy(x)[None, None], torch.from_numpy(w), None, spec)
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref.numpy())


CASES = list(itertools.product(
    ["opencv", "separable"],
    ["zeros", "reflect", "replicate", "circular"],
    ["rows", "cols", "grid", "channels"],
))


@pytest.mark.parametrize("backend, mode, partition", CASES)
def test_array_engine_equals_the_tensor_threads_engine_bit_for_bit(backend, mode, partition):
    """The same plan on numpy arrays (array_threads) and on tensors (the threads engine):
    equal bit for bit, over padding modes whose windows are copies (reflected, replicated,
    wrapped) or views, and partitions cutting rows, columns, both and channels."""
    rng = np.random.default_rng(len(mode) + len(partition))
    x = rng.standard_normal((2, 3, 37, 41)).astype(np.float32)
    if backend == "separable":
        w = (rng.standard_normal((3, 1, 5, 1)) * rng.standard_normal((3, 1, 1, 4))).astype(np.float32)
    else:
        w = rng.standard_normal((3, 1, 5, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    plan = haloconv.plan(x.shape, w, b.shape, padding=(2, 3), dilation=(1, 2), groups=3, padding_mode=mode,
                         partition=partition, workers=4, backend=backend)
    assert len(plan.tiles) > 1
    got = array_threads.run(plan, x, w, b, threads=2)
    ref = haloconv.execute(plan, torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), engine="threads")
    assert isinstance(got.output, np.ndarray) and np.array_equal(got.output, ref.output.numpy())
    whole = backends.single_node(backend, torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), plan.spec)
    assert np.array_equal(got.output, whole.numpy())


def test_the_cases_include_windows_that_are_copies_and_views():
    """The case list above reaches both kinds of window (an independent count)."""
    kinds = set()
    for _, mode, partition in CASES:
        plan = haloconv.plan((2, 3, 37, 41), (3, 1, 5, 4), padding=(2, 3), dilation=(1, 2), groups=3,
                             padding_mode=mode, partition=partition, workers=4, backend="opencv")
        kinds |= {t.window_is_view for t in plan.tiles}
    assert kinds == {True, False}


def test_array_engine_refuses_what_it_cannot_run():
    x, w = np.zeros((1, 1, 20, 20), np.float32), np.ones((1, 1, 3, 3), np.float32)
    strided = haloconv.plan(x.shape, w.shape, stride=2, backend="opencv", partition="rows", workers=2)
    with pytest.raises(ValueError, match="does not compute numpy arrays"):
        array_threads.run(strided, x, w)
    plan = haloconv.plan(x.shape, w.shape, padding=1, backend="opencv", partition="rows", workers=2)
    with pytest.raises(ValueError, match="plan was made for"):
        array_threads.run(plan, x[:, :, :10], w)
    with pytest.raises(TypeError, match="all float32 or all float64"):
        array_threads.run(plan, x, w.astype(np.float64))


def test_next_smooth_is_scipys_next_fast_len_for_real_input():
    rng = np.random.default_rng(0)
    for n in [*range(1, 5000), *rng.integers(5000, 10**9, 3000).tolist()]:
        assert next_smooth(n) == scipy.fft.next_fast_len(n, real=True), n


def test_a_streamed_filter_runs_without_torch_bitwise_its_backend(tmp_path):
    """Out of core on threads (the default) with a filter OpenCV computes: neither the CLI
    nor haloconv.conv_file imports torch, and the output is the backend's single-node call."""
    rng = np.random.default_rng(1)
    x = rng.random((2, 190, 170), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = ["run", "x.npy", "--kernel", "box:5", "--stream", "--memory-budget", "2GB", "--backend", "opencv", "-o", "s",
            "-v"]
    r = _python(f"from haloconv.cli.main import main; rc = main({argv!r})", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch imported: False" in r.stdout and "streaming:" in r.stdout, r.stdout
    w = named_kernels.load_kernel("box:5", 2, 2)[0].astype(np.float32)
    spec = ConvSpec.from_args((1, *x.shape), w.shape, None, padding="same", groups=2)
    ref = backends.single_node("opencv", torch.from_numpy(x)[None], torch.from_numpy(w), None, spec).numpy()
    assert np.array_equal(np.load(tmp_path / "s.npy"), ref)
    r = _python("import numpy as np, haloconv; "
                "res = haloconv.conv_file('x.npy', np.ones((2, 1, 5, 5), np.float32) / 25, 'api.npy', groups=2, "
                "padding='same', memory_budget=2**30, backend='opencv', block=(None, None, 40, None)); "
                "print('tiles', len(res.plan.tiles))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch imported: False" in r.stdout and "tiles 5" in r.stdout, r.stdout
    assert np.array_equal(np.load(tmp_path / "api.npy"), ref)


def test_large_results_are_ordinary_writable_arrays(tmp_path):
    """engines.host.empty: big outputs on ordinary pages (an anonymous mapping), small ones
    from numpy; either is a plain, writable, C-contiguous array that numpy saves and loads."""
    from haloconv.engines.host import SMALL_PAGES_FROM, empty

    for shape in ((1, 1, 8, 8), (1, 1, 1024, SMALL_PAGES_FROM // 4096 + 8)):
        a = empty(shape, np.float32)
        assert a.shape == shape and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous
        a[...] = 1.5
        np.save(tmp_path / "a.npy", a)
        assert np.array_equal(np.load(tmp_path / "a.npy"), a)


def test_conv_writes_into_a_given_output_on_both_paths():
    """out=: the array engine writes the tiles into it (the same bits as a fresh result); the
    tensor path copies its result there; a wrong out is a clear error."""
    rng = np.random.default_rng(3)
    x = rng.random((97, 83), dtype=np.float32)
    k = rng.random((5, 5), dtype=np.float32)
    ref = haloconv.conv(x, k, padding=2, partition="rows", workers=2)
    out = np.full_like(x, np.nan)
    got = haloconv.conv(x, k, padding=2, partition="rows", workers=2, out=out)
    assert got is out and np.array_equal(out, ref)
    t_out = torch.full((1, 1, 97, 83), float("nan"))
    t_got = haloconv.conv(torch.from_numpy(x)[None, None], torch.from_numpy(k)[None, None], padding=2,
                          backend="torch", out=t_out)
    assert t_got is t_out and torch.equal(t_out, torch.nn.functional.conv2d(
        torch.from_numpy(x)[None, None], torch.from_numpy(k)[None, None], padding=2))
    with pytest.raises(ValueError, match="out must have shape"):
        haloconv.conv(x, k, padding=2, out=np.empty((97, 82), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        haloconv.conv(x, k, padding=2, out=np.empty((97, 83), np.float64))
    with pytest.raises(TypeError, match="out must be a numpy"):
        haloconv.conv(x, k, padding=2, out=torch.empty(97, 83))
