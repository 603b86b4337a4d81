"""`haloconv run` on real image files: outputs written, --verify bitwise, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import torch_reference
from haloconv.cli.main import main
from haloconv.files import filters


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
               "--verify", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "bitwise equal: True" in text and "max |diff| = 0" in text
    assert "splits(N,C_out,H,W)=(1, 1, 2, 2)" in text  # the plan is printed
    y = np.load(out.with_suffix(".npy"))
    # independent check: depthwise edge kernel on the image scaled to [0, 1]
    x = torch.from_numpy(np.moveaxis(img, -1, 0)[None].astype(np.float32) / 255)
    w = torch.from_numpy(filters.named_kernel("edge")).float().expand(3, 1, 3, 3).contiguous()
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
    assert y.shape == (1, 33, 27) and y.dtype == np.float32


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
               "--weights", "1,2,1", "--verify", "-o", str(tmp_path / "r")])
    text = capsys.readouterr().out
    assert rc == 0 and "bitwise equal: True" in text
    assert "1x1x32x48" in text  # the weight-2 worker got half the rows


@pytest.mark.parametrize(
    "args,words",
    [
        (["run", "does-not-exist.png"], ["does-not-exist.png", "does not exist"]),
        (["run", "--random", "32x32", "--kernel", "blur"], ["unknown kernel", "blur"]),
        (["run", "--random", "32x32", "--kernel", "gaussian:x"], ["gaussian"]),
        (["run", "--random", "32x32", "--workers", "0"], ["workers", "0"]),
        (["run", "--random", "32x32", "--partition", "diagonal"], ["partition", "diagonal"]),
        (["run", "--random", "3x", "--workers", "2"], ["--random"]),
        (["run", "--random", "32x32", "--padding-mode", "mirror"], ["padding_mode", "mirror"]),
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
