"""The command line's conventions, through the real command: how much it says (-q, default,
-v), what its help shows, old spellings, how inputs are read and said, what the report
carries; and the library's own output (logging, never print)."""

import json
import logging

import numpy as np
import tifffile
import torch
from PIL import Image

import haloconv
from conftest import cli, torch_reference
from haloconv.cli.options import build_parser
from haloconv.files import named_kernels

_cli = cli  # in this process (conftest.cli)


def test_quiet_by_default_detail_with_v_nothing_with_q(tmp_path):
    run = ("run", "--random", "96x80", "--kernel", "sobel-x", "--partition", "rows", "--workers", "2", "--verify")
    r = _cli(*run, "-o", "a.npy", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert [s.split()[0] for s in lines] == ["input:", "plan:", "backend", "done", "wrote", "verify:"], lines
    v = _cli(*run, "-o", "b.npy", "-v", cwd=tmp_path)
    assert v.returncode == 0 and "halo elems" in v.stdout and "compute s" in v.stdout  # the plan and tile tables
    assert len(v.stdout.splitlines()) > len(lines) + 5
    q = _cli(*run, "-o", "c.npy", "-q", cwd=tmp_path)
    assert q.returncode == 0 and q.stdout == "" and q.stderr == ""
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "c.npy"))
    bad = _cli("run", "--random", "8x8", "--kernel", "blur", "-q", cwd=tmp_path)  # errors still speak
    assert bad.returncode == 2 and "unknown kernel" in bad.stderr and bad.stdout == ""


def test_every_option_shows_its_default_and_help_runs():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.default in (False,) or action.help == "==SUPPRESS==":
                continue
            if action.dest in ("help", "random", "sample"):  # the input's alternatives: no default to show
                continue
            shown = sub._get_formatter()._get_help_string(action)
            assert "default" in shown or "deprecated" in shown, (name, action.option_strings, shown)
        assert "(default: sobel-x)" in text if name in ("run", "plan") else True
    for name in (*commands, None):
        r = _cli(*([name] if name else []), "--help", cwd=".")
        assert r.returncode == 0 and "usage: haloconv" in r.stdout


def test_weights_is_the_deprecated_spelling_of_worker_speeds(tmp_path):
    run = ("run", "--random", "64x48", "--kernel", "laplacian", "--workers", "3", "--partition", "rows",
           "--engine", "processes", "-v")
    old = _cli(*run, "--weights", "1,2,1", "-o", "a.npy", cwd=tmp_path)
    new = _cli(*run, "--worker-speeds", "1,2,1", "-o", "b.npy", cwd=tmp_path)
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert "--weights is deprecated; use --worker-speeds" in old.stderr and "deprecated" not in new.stderr
    assert "1x1x32x48" in old.stdout and "1x1x32x48" in new.stdout  # the speed-2 worker got half the rows


def test_integer_arrays_keep_their_values_pictures_are_scaled_and_it_is_said(tmp_path):
    a = np.random.default_rng(0).integers(0, 40000, (50, 40), dtype=np.int32)
    np.save(tmp_path / "counts.npy", a)
    tifffile.imwrite(tmp_path / "slide.tif", a.astype(np.uint16))
    w = torch.from_numpy(named_kernels.load_kernel("box:3", 1, 2)[0].astype(np.float64))  # the CLI's kernel
    for args, scale, said in ((("counts.npy",), 1, "int32 values kept"),
                              (("counts.npy", "--integers", "unit"), 2**31 - 1, "int32 scaled by 1/2147483647"),
                              (("slide.tif",), 65535, "uint16 scaled by 1/65535 to [0, 1]"),
                              (("slide.tif", "--integers", "keep"), 1, "uint16 values kept")):
        r = _cli("run", *args, "--kernel", "box:3", "--backend", "torch", "--dtype", "float64", "-o", "y.npy",
                 "--overwrite", cwd=tmp_path)
        assert r.returncode == 0 and said in r.stdout, (args, r.stdout, r.stderr)
        x = torch.from_numpy(a.astype(np.float64))[None, None]
        ref = torch_reference(x / scale if scale != 1 else x, w, None, padding="same")
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref.numpy(), rtol=1e-12, err_msg=str(args))


def test_channels_last_arrays_and_tiff_stacks_are_read_as_said(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.random((40, 30, 3), dtype=np.float32)
    np.save(tmp_path / "rgb.npy", hwc)
    r = _cli("run", "rgb.npy", "--kernel", "laplacian", "--verify", "-o", "y.npy", cwd=tmp_path)
    assert r.returncode == 0 and "H x W x C, channels last: 3 channels" in r.stdout, r.stdout + r.stderr
    assert np.load(tmp_path / "y.npy").shape == (1, 3, 40, 30)
    r = _cli("run", "rgb.npy", "--kernel", "laplacian", "--layout", "chw", "-o", "z.npy", cwd=tmp_path)
    assert r.returncode == 0 and "C x H x W: 40 channels" in r.stdout
    assert np.load(tmp_path / "z.npy").shape == (1, 40, 30, 3)
    stack = rng.random((6, 32, 24), dtype=np.float32)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    r = _cli("run", "stack.tif", "--kernel", "box:3", "-o", "s.npy", cwd=tmp_path)
    assert r.returncode == 0 and "6 pages x H x W: each page a channel" in r.stdout, r.stdout
    np.save(tmp_path / "cube.npy", np.full((1, 1, 3, 3, 3), 1 / 27, np.float32))
    r = _cli("run", "stack.tif", "--kernel", "cube.npy", "--layout", "dhw", "--verify", "-o", "v.npy", cwd=tmp_path)
    assert r.returncode == 0 and "a volume of 6 slices" in r.stdout and "bitwise equal: True" in r.stdout, r.stderr
    y = np.load(tmp_path / "v.npy")
    cube = torch.full((1, 1, 3, 3, 3), 1 / 27)
    ref = torch_reference(torch.from_numpy(stack)[None, None], cube, None, padding="same")
    assert y.shape == (1, 1, 6, 32, 24) and np.allclose(y, ref.numpy(), atol=1e-6)


def test_a_png_preview_of_many_channels_says_which_it_shows(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((8, 20, 20), dtype=np.float32))
    r = _cli("run", "x.npy", "--kernel", "box:3", "-o", "y.png", cwd=tmp_path)
    assert r.returncode == 0 and "channel 0 of 8" in r.stdout, r.stdout + r.stderr
    with Image.open(tmp_path / "y.png") as im:
        assert im.size == (20, 20)


def test_the_report_carries_version_command_input_kernel_and_outputs(tmp_path):
    tifffile.imwrite(tmp_path / "slide.tif", np.zeros((30, 20), np.uint8))
    r = _cli("run", "slide.tif", "--kernel", "gaussian:1", "-o", "y.npy", "--report", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["haloconv"] == haloconv.__version__
    assert rep["argv"] == ["haloconv", "run", "slide.tif", "--kernel", "gaussian:1", "-o", "y.npy", "--report",
                           "r.json"]
    assert rep["input"]["shape"] == [1, 1, 30, 20] and "uint8 scaled" in rep["input"]["read_as"]
    assert rep["kernel"] == {"name": "gaussian:1", "shape": [1, 1, 9, 9], "groups": 1}  # 4 sigma each side
    assert rep["outputs"] == ["y.npy"]
    np.save(tmp_path / "x.npy", np.zeros((40, 30), np.float32))
    r = _cli("run", "x.npy", "--kernel", "box:3", "--stream", "--memory-budget", "1GB", "-o", "s.npy", "--report",
             "-", cwd=tmp_path)
    rep = json.loads(r.stdout)
    assert rep["stream"] and rep["outputs"] == ["s.npy"] and rep["kernel"]["name"] == "box:3" and rep["argv"]


def test_the_library_logs_and_never_prints(tmp_path, capsys, caplog):
    np.save(tmp_path / "x.npy", np.random.default_rng(3).random((64, 50), dtype=np.float32))
    seen = []
    with caplog.at_level(logging.INFO, logger="haloconv"):
        haloconv.conv_file(tmp_path / "x.npy", np.ones((1, 1, 3, 3), np.float32), tmp_path / "y.npy",
                           memory_budget="8GB", padding=1, progress=lambda done, total: seen.append((done, total)))
    assert capsys.readouterr() == ("", "")
    assert any("streaming:" in r.getMessage() for r in caplog.records)
    total = seen[-1][1]
    assert seen == [(k, total) for k in range(1, total + 1)]
