"""`haloconv run` on real image files: outputs written, --verify bitwise, clear errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import cli, torch_reference
from haloconv.cli.main import main
from haloconv.files import named_kernels


@pytest.fixture
def rgb_png(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "small.png"
    Image.fromarray(img).save(path)
    return path, img


def test_run_png_grid_verify(rgb_png, tmp_path, capsys):
    path, img = rgb_png
    out = tmp_path / "res" / "edges"
    rc = main(["run", str(path), "--kernel", "edge", "--workers", "4", "--partition", "grid",
               "--verify", "-o", str(out), "--mkdir"])  # res/ does not exist yet
    text = capsys.readouterr().out
    assert rc == 0
    assert "bitwise equal: True" in text and "max |diff| = 0" in text
    assert "plan: grid 1x1x2x2 over (N, C_out, H, W): 4 tiles on 4 workers" in text  # the plan in one line
    y = np.load(out.with_suffix(".npy"))
    # independent check: depthwise edge kernel on the image scaled to [0, 1]
    x = torch.from_numpy(np.moveaxis(img, -1, 0)[None].astype(np.float32) / 255)
    w = torch.from_numpy(named_kernels.named_kernel("edge")).float().expand(3, 1, 3, 3).contiguous()
    ref = torch_reference(x, w, None, padding="same", groups=3)
    assert np.array_equal(y, ref.numpy())
    with Image.open(out.with_suffix(".png")) as im:
        assert im.size == (50, 40) and im.mode == "RGB"


@pytest.mark.parametrize("kernel", ["sobel-x", "sobel-y", "prewitt-x", "prewitt-y", "laplacian",
                                    "gaussian:1.5", "box:4", "edge"])
def test_named_kernels_grayscale_tiff(kernel, tmp_path, capsys):
    rng = np.random.default_rng(1)
    img = (rng.random((33, 27)) * 65535).astype(np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, img)
    out = tmp_path / "o"
    rc = main(["run", str(path), "--kernel", kernel, "--workers", "3", "--partition", "rows",
               "--padding-mode", "reflect", "--verify", "--image-format", "tif", "-o", str(out)])
    assert rc == 0, capsys.readouterr()
    assert "bitwise equal: True" in capsys.readouterr().out
    y = tifffile.imread(out.with_suffix(".tif"))
    assert y.shape == (33, 27) and y.dtype == np.float32  # grayscale in, grayscale out


def test_npy_input_and_npy_kernel_with_stride_dilation(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 3, 30, 31)).astype(np.float32))
    np.save(tmp_path / "w.npy", rng.standard_normal((4, 3, 3, 3)))
    rc = main(["run", str(tmp_path / "x.npy"), "--kernel", str(tmp_path / "w.npy"), "--workers", "4",
               "--partition", "2,1,2,1", "--stride", "2", "--padding", "2", "--dilation", "2",
               "--verify", "-o", str(tmp_path / "y")])
    assert rc == 0
    assert "bitwise equal: True" in capsys.readouterr().out
    assert np.load(tmp_path / "y.npy").shape == (2, 4, 15, 16)
    assert not (tmp_path / "y.png").exists()


def test_random_input_weighted(tmp_path, capsys):
    rc = main(["run", "--random", "64x48", "--kernel", "laplacian", "--workers", "3", "--partition", "rows",
               "--worker-speeds", "1,2,1", "--verify", "-o", str(tmp_path / "r"), "-v"])
    text = capsys.readouterr().out
    assert rc == 0 and "bitwise equal: True" in text
    assert "1x1x32x48" in text  # the speed-2 worker got half the rows (the tile table of -v)


@pytest.mark.parametrize(
    "args,words",
    [
        (["run", "does-not-exist.png"], ["does-not-exist.png", "does not exist"]),
        (["run", "--random", "32x32", "--kernel", "blur"], ["unknown kernel", "blur"]),
        (["run", "--random", "32x32", "--kernel", "gaussian:x"], ["gaussian"]),
        (["run", "--random", "32x32", "--workers", "0"], ["workers", "0"]),
        (["run", "--random", "32x32", "--partition", "diagonal"], ["partition", "diagonal"]),
        (["run", "--random", "3x", "--workers", "2"], ["--random"]),
        (["run", "--random", "32x32", "--padding-mode", "mirror"], ["padding_mode", "mirror", "'reflect' here"]),
        (["run", "--random", "32x32", "--stride", "2"], ["same", "stride"]),
    ],
)
def test_cli_errors_exit_2_with_message(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    assert main(["run", str(bad)]) == 2
    assert "cannot read input" in capsys.readouterr().err


def test_console_entry_point_subprocess(tmp_path):
    """The installed command works end to end as a separate process."""
    r = subprocess.run(
        [sys.executable, "-m", "haloconv", "run", "--sample", "hopper", "--kernel", "sobel-y",
         "--workers", "2", "--partition", "cols", "--verify", "-o", str(tmp_path / "h")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "bitwise equal: True" in r.stdout
    assert (tmp_path / "h.png").exists() and (tmp_path / "h.npy").exists()


_cli = cli  # in this process (conftest.cli)


def test_output_suffix_picks_the_format_and_a_plain_name_is_a_prefix(tmp_path):
    """-o y.npy writes y.npy (not y.npy.npy); .tif/.png/.zarr their formats; a name without
    a known suffix (a.b) stays a prefix; a folder holds <input>-<kernel> files."""
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.random((40, 30), dtype=np.float32))
    ref = None
    for out, fmt in (("y.npy", "npy"), ("y.tif", "tif"), ("y.tiff", "tif"), ("y.png", "png"), ("y.zarr", "zarr")):
        r = _cli("run", "x.npy", "--kernel", "laplacian", "-o", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("y"))
        assert written == sorted({"y.npy", "y.tif", "y.tiff", "y.png", "y.zarr"} & {*written, out}), written
        if fmt == "npy":
            ref = np.load(tmp_path / out)
        elif fmt == "tif":
            assert np.array_equal(tifffile.imread(tmp_path / out), ref[0, 0])
        elif fmt == "zarr":
            zarr = pytest.importorskip("zarr")
            assert np.array_equal(zarr.open_array(str(tmp_path / out), mode="r")[:], ref)
        else:
            with Image.open(tmp_path / out) as im:
                assert im.size == (30, 40) and im.mode == "L"
    r = _cli("run", "x.npy", "--kernel", "laplacian", "-o", "a.b", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "a.b.npy").exists(), r.stderr
    (tmp_path / "res").mkdir()
    r = _cli("run", "x.npy", "--kernel", "gaussian:1", "-o", "res", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "res" / "x-gaussian1.npy").exists(), r.stderr


def test_existing_outputs_and_missing_folders_are_refused_before_any_compute(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((20, 20), np.float32))
    r = _cli("run", "x.npy", "--kernel", "box:3", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = (tmp_path / "y.npy").stat().st_mtime_ns
    r = _cli("run", "x.npy", "--kernel", "box:5", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr and "Plan:" not in r.stdout
    assert (tmp_path / "y.npy").stat().st_mtime_ns == before
    r = _cli("run", "x.npy", "--kernel", "box:5", "-o", "y.npy", "--overwrite", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "y.npy").stat().st_mtime_ns != before
    r = _cli("run", "x.npy", "--kernel", "box:3", "-o", "new/dir/y.npy", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist; create it or pass --mkdir" in r.stderr
    assert not (tmp_path / "new").exists()
    r = _cli("run", "x.npy", "--kernel", "box:3", "-o", "new/dir/y.npy", "--mkdir", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "new" / "dir" / "y.npy").exists()
    r = _cli("run", "x.npy", "--kernel", "box:3", "--stream", "--memory-budget", "1GB", "-o", "s.png", cwd=tmp_path)
    assert r.returncode == 2 and "a streamed run writes .npy, .tif or .zarr" in r.stderr
    stream = ("run", "x.npy", "--kernel", "box:3", "--stream", "--memory-budget", "1GB", "-o", "s.zarr")
    assert _cli(*stream, cwd=tmp_path).returncode == 0
    r = _cli(*stream, cwd=tmp_path)
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    r = _cli(*stream, "--resume", cwd=tmp_path)  # finished already: nothing to resume
    assert r.returncode == 0 and "is complete" in r.stdout, r.stderr
    np.save(tmp_path / "b.npy", np.ones((2, 1, 20, 20), np.float32))
    r = _cli("run", "b.npy", "--kernel", "box:3", "-o", "b.png", cwd=tmp_path)
    assert r.returncode == 2 and "holds one 2-D image" in r.stderr


def test_plan_draws_only_when_asked_and_report_dash_is_stdout(tmp_path):
    r = _cli("plan", "--random", "256x256", "--kernel", "sobel-x", cwd=tmp_path)
    assert r.returncode == 0 and list(tmp_path.iterdir()) == [], r.stderr
    r = _cli("plan", "--random", "256x256", "--kernel", "sobel-x", "--png", "p.png", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "p.png").exists()
    r = _cli("run", "--random", "64x64", "--kernel", "sobel-x", "-o", "y.npy", "--report", "-", cwd=tmp_path)
    assert r.returncode == 0 and not (tmp_path / "-").exists(), r.stderr
    rep = json.loads(r.stdout)  # stdout carries the JSON alone; the summary went to stderr
    assert rep["outputs"] == ["y.npy"] and rep["backend"] and "wrote y.npy" in r.stderr


def test_a_closed_pipe_never_loses_the_outputs(tmp_path):
    """`haloconv run ... | head -3`: the reader goes away while the run still prints (here
    before the worker processes have started, so every later line meets a closed pipe);
    the run finishes, exits 0 and writes its outputs."""
    cmd = [sys.executable, "-m", "haloconv", "run", "--random", "256x256", "--kernel", "laplacian", "--workers", "2",
           "--engine", "processes", "--partition", "rows", "-o", "pipe.npy"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("plan:"):
            break
    p.stdout.close()  # head has read its lines
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert np.load(tmp_path / "pipe.npy").shape == (1, 1, 256, 256)


def test_version():
    r = subprocess.run([sys.executable, "-m", "haloconv", "--version"], capture_output=True, text=True, timeout=60)
    import haloconv

    assert r.returncode == 0 and r.stdout.strip() == f"haloconv {haloconv.__version__}"


def test_the_cli_says_when_the_cost_model_uses_fewer_workers_than_asked(tmp_path):
    """A tiny image on 4 worker processes: the cost model keeps it on one; one line says so,
    with the best split over all 4 and the flag that forces it — which then runs on 4."""
    args = ["run", "--random", "64x64", "--kernel", "sobel-x", "--workers", "4", "--engine", "processes"]
    r = _cli(*args, "-o", "a.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(s for s in r.stdout.splitlines() if s.startswith("the cost model runs this on 1 of the 4 workers"))
    forced = line.rsplit("--partition ", 1)[1].split()[0]
    r = _cli(*args, "--partition", forced, "-o", "b.npy", cwd=tmp_path)
    assert r.returncode == 0 and "on 4 workers" in r.stdout and "the cost model runs" not in r.stdout, r.stderr
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("bad, said", [((), None), ((np.nan,), "1 NaN and 0"), ((np.inf,), "0 NaN and 1"),
                                        ((-np.inf,), "0 NaN and 1"), ((np.nan, -np.inf), "1 NaN and 1")])
def test_an_input_not_finite_is_said_whatever_its_values(bad, said):
    """The warning's test (the largest and smallest values) sees a NaN, +Inf and -Inf alone."""
    from haloconv.cli import run

    x = np.random.default_rng(4).random((1, 1, 30, 20), dtype=np.float32) - 0.5
    for k, v in enumerate(bad):
        x[0, 0, 3 + k, 7] = v
    warned = []
    run._warn_not_finite(type("Console", (), {"warn": lambda self, m: warned.append(m)})(), x, "x")
    assert (warned == []) if said is None else (len(warned) == 1 and f"holds {said} infinite" in warned[0])


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_a_nan_input_is_said_and_verified_nan_aware(tmp_path, backend):
    x = np.random.default_rng(3).random((64, 48), dtype=np.float32)
    x[10, 10], x[40, 3] = np.nan, np.inf
    np.save(tmp_path / "x.npy", x)
    r = _cli("run", "x.npy", "--kernel", "laplacian", "--backend", backend, "--verify", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "holds 1 NaN and 1 infinite values" in r.stderr
    assert "bitwise equal: True" in r.stdout and "max |diff| = 0" in r.stdout
    y = np.load(tmp_path / "y.npy")
    assert np.isnan(y).sum() >= 5 and np.isfinite(y).sum() > 0.9 * y.size  # spread to the kernel's reach only


def test_the_run_names_torchs_convolution_as_users_know_it(tmp_path):
    r = _cli("run", "--random", "3x64x64", "--kernel", "sobel-x", "--backend", "torch", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    label = next(s for s in r.stdout.splitlines() if s.startswith("done in"))
    assert re.search(r"compute torch \((oneDNN|im2col \+ GEMM|dilated im2col \+ GEMM)\)", label), label
    assert "Mkldnn" not in r.stdout and "Slow2d" not in r.stdout


def test_verify_exits_1_and_says_so_when_the_result_differs(tmp_path, capsys, monkeypatch):
    """--verify compares with the single-node call: a reference that differs (here made to)
    is exit 1 and one error line, not a pass."""
    from haloconv.compute import backends

    real = backends.single_node
    monkeypatch.setattr(backends, "single_node", lambda *a, **kw: real(*a, **kw) + 1)
    rc = main(["run", "--random", "32x32", "--kernel", "box:3", "--verify", "-o", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert rc == 1 and "haloconv: error: verify: the result differs from the single-node" in err, err


@pytest.mark.parametrize("mode", ["symmetric", "0.25", "reflect"])
def test_every_padding_mode_through_the_command(mode, tmp_path, capsys):
    """scipy's 'reflect' ('symmetric') and a constant value, with a kernel wider than the
    image on one axis (the padding folds), split and verified against the single-node call."""
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((40, 3), dtype=np.float32))
    rc = main(["run", str(tmp_path / "x.npy"), "--kernel", "box:9", "--backend", "torch", "--workers", "3",
               "--partition", "rows", "--padding-mode", mode, "--verify", "-o", str(tmp_path / "y")])
    assert rc == 0, capsys.readouterr()
    assert "bitwise equal: True" in capsys.readouterr().out


@pytest.mark.parametrize("verify", [False, True])
def test_the_input_is_let_go_before_the_outputs_are_written_unless_verify_needs_it(tmp_path, monkeypatch, verify):
    """A run's input is freed before its outputs are written (the page cache then reuses its
    memory), unless --verify compares with it after; the .npy's blocks are reserved before
    its bytes are written (the header's length on, all of them)."""
    import os
    import weakref

    from haloconv.cli import run
    from haloconv.files import images

    np.save(tmp_path / "x.npy", np.random.default_rng(5).random((64, 80), dtype=np.float32))
    alive, reserved = [], []
    load, write, fallocate = run.load, images.write_outputs, os.posix_fallocate
    monkeypatch.setattr(run, "load", lambda args: (p := load(args), alive.append(weakref.ref(p.x)))[0])
    monkeypatch.setattr(images, "write_outputs", lambda *a, **k: (alive.append(alive[0]() is not None),
                                                                  write(*a, **k))[1])
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, at, n: (reserved.append((at, n)), fallocate(fd, at, n)))
    argv = ["run", str(tmp_path / "x.npy"), "--kernel", "box:3", "-o", str(tmp_path / "y.npy")]
    assert main(argv + (["--verify"] if verify else [])) == 0
    assert alive[1] is verify
    assert reserved == [(128, 64 * 80 * 4)] and np.load(tmp_path / "y.npy").shape == (1, 1, 64, 80)
