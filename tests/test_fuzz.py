"""Bad input, fuzzed: invalid arguments and malformed files get a ValueError/TypeError (or a
clean CLI error, exit 2) naming the problem, within seconds, with no worker process left
and no output file written."""

import math
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import haloconv
from conftest import own_children
from haloconv.cli.main import main

BAD_ARGS = [
    ("stride", 0), ("stride", -2), ("stride", 1.5), ("stride", (1, 2, 3)), ("stride", True),
    ("dilation", 0), ("dilation", "2"), ("padding", -1), ("padding", "full"), ("padding", (1, 2, 3)),
    ("padding", 1.0), ("groups", 0), ("groups", 5), ("groups", 2.0), ("padding_mode", "mirror"),
    ("padding_mode", None), ("workers", 0), ("workers", -3), ("workers", 2.5), ("workers", "4"),
    ("partition", "diagonal"), ("partition", (1, 1, 0, 1)), ("partition", (1, 1, 2)), ("partition", 3),
    ("worker_weights", [1.0, -1.0]), ("worker_weights", [1.0, float("nan")]), ("worker_weights", [1.0]),
    ("ownership", "owned"), ("exchange", "gossip"), ("pipeline", 0), ("backend", "winograd"),
    ("memory_budget", -5), ("memory_budget", 0), ("engine", "gpu"),
]


@pytest.mark.parametrize("bad", BAD_ARGS, ids=[f"{n}={v!r}" for n, v in BAD_ARGS])
@settings(max_examples=3)
@given(st.integers(1, 3), st.integers(5, 30), st.integers(5, 30))
def test_fuzz_bad_arguments_name_the_parameter(bad, c, h, w):
    """Every entry of the table, every run, on a few input shapes."""
    name, value = bad
    x, wt = torch.randn(1, c, h, w), torch.randn(2, c, 3, 3)
    kw = {"padding": 1, "workers": 2, name: value}  # the bad value replaces a good default
    t0 = time.perf_counter()
    with pytest.raises((ValueError, TypeError)) as e:
        haloconv.conv(x, wt, **kw)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert name in msg and "multiple values" not in msg, msg


def _truncated_npy(tmp: Path, rng) -> Path:
    p = tmp / "t.npy"
    np.save(p, rng.standard_normal((20, 30)).astype(np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: rng.integers(1, len(data) - 1)])
    return p


def _wrong_dtype_npy(tmp: Path, rng) -> Path:
    p = tmp / "c.npy"
    np.save(p, (rng.standard_normal((12, 12)) + 1j).astype(np.complex64))
    return p


def _object_npy(tmp: Path, rng) -> Path:
    p = tmp / "o.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return p


def _empty_npy(tmp: Path, rng) -> Path:
    p = tmp / "e.npy"
    np.save(p, np.zeros((int(rng.integers(0, 3)), 0, 7), dtype=np.float32))
    return p


def _six_d_npy(tmp: Path, rng) -> Path:
    p = tmp / "six.npy"
    np.save(p, np.zeros((1, 1, 2, 2, 2, 2), dtype=np.float32))
    return p


def _corrupt_tiff(tmp: Path, rng) -> Path:
    p = tmp / "bad.tif"
    good = tmp / "good.tif"
    tifffile.imwrite(good, (rng.random((40, 40)) * 255).astype(np.uint8))
    data = bytearray(good.read_bytes())
    for i in rng.integers(0, len(data), 40):
        data[i] = int(rng.integers(0, 256))
    p.write_bytes(bytes(data[: int(rng.integers(8, len(data)))]))
    return p


def _garbage_png(tmp: Path, rng) -> Path:
    p = tmp / "noise.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(int(rng.integers(0, 300))))
    return p


def _text_as_npy(tmp: Path, rng) -> Path:
    p = tmp / "text.npy"
    p.write_text("not an array")
    return p


MALFORMED = [_truncated_npy, _wrong_dtype_npy, _object_npy, _empty_npy, _six_d_npy, _corrupt_tiff, _garbage_png,
             _text_as_npy]


@settings(max_examples=40)
@given(st.sampled_from(MALFORMED), st.integers(0, 2**31 - 1), st.sampled_from(["processes", "threads"]))
def test_fuzz_malformed_files_exit_2_cleanly(tmp_path_factory, make, seed, engine):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = make(tmp, np.random.default_rng(seed))
    out = tmp / "out" / "y"
    before = set(own_children())
    t0 = time.perf_counter()
    rc = main(["run", str(path), "--workers", "2", "--engine", engine, "--kernel", "box:3", "-o", str(out), "--mkdir"])
    assert time.perf_counter() - t0 < 20
    assert rc == 2
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir()), "no output for a refused input"
    assert set(own_children()) <= before, "no worker left behind"


def test_malformed_file_messages_name_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for make in MALFORMED:
        path = make(tmp_path, rng)
        assert main(["run", str(path), "--engine", "threads", "-o", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err
        assert path.name in err and "haloconv: error:" in err, (make.__name__, err)


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    """A write that fails half way leaves neither a partial file nor its temporary."""
    from haloconv.files import images as io

    y = np.zeros((1, 1, 8, 8), dtype=np.float32)

    real_write = io._write

    def boom(arr, path, fmt, preview):
        """Half of the bytes reach the file, then the disk is full: a write straight to the
        final path would leave them there."""
        real_write(arr.reshape(-1)[: arr.size // 2], path, fmt, preview)
        raise OSError("disk full")

    monkeypatch.setattr(io, "_write", boom)
    with pytest.raises(OSError):
        io.write_output(y, tmp_path / "y.npy", "npy")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    written = [io.write_output(y, tmp_path / f"a.b.{fmt}", fmt) for fmt in ("npy", "png", "tif", "zarr")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.b.npy", "a.b.png", "a.b.tif", "a.b.zarr"]
    assert math.prod(np.load(written[0]).shape) == 64
