"""`haloconv run` out of core: bitwise the single-node torch result, each process's peak
resident memory within --memory-budget on an input several times the budget."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from benchmarks.memory_watch import watch_rss

from conftest import own_children
from haloconv.compute import backends, kernels
from haloconv.files import images as io
from haloconv.files import named_kernels
from haloconv.tiling.spec import ConvSpec


def _single_node(path, kernel: str, padding_mode: str) -> np.ndarray:
    """torch on the whole input, read as the CLI reads it: the reference of every run here."""
    x = io.read_input(path).x
    weight, groups = named_kernels.load_kernel(kernel, x.shape[1], x.ndim - 2)
    spec = ConvSpec.from_args(x.shape, weight.shape, None, padding="same", padding_mode=padding_mode, groups=groups)
    return kernels.single_node(torch.from_numpy(x), torch.from_numpy(weight.astype(np.float32)), None, spec).numpy()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "haloconv", "run", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_streamed_cli_outputs_equal_the_single_node_result(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 160, 120), dtype=np.uint8)
    np.save(tmp_path / "x.npy", a)
    common = ["x.npy", "--kernel", "gaussian:1.5", "--padding-mode", "reflect", "--workers", "2", "--backend", "torch"]
    ref = _single_node(tmp_path / "x.npy", "gaussian:1.5", "reflect")
    for fmt in ("npy", "tif", "zarr"):
        r = _cli(*common, "--stream", "--memory-budget", "2GB", "--out-format", fmt, "-o", "s",
                 "--report", "s.json", "-v", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "streaming:" in r.stdout and "peak RSS" in r.stdout
        path = tmp_path / f"s.{fmt}"
        y = (np.load(path) if fmt == "npy" else tifffile.imread(path) if fmt == "tif"
             else _zarr().open_array(str(path), mode="r")[:])
        np.testing.assert_array_equal(np.asarray(y).reshape(ref.shape), ref)
        rep = json.loads((tmp_path / "s.json").read_text())
        assert rep["stream"] and sum(v["tiles"] for v in rep["ranks"].values()) == rep["tiles"] >= 8
    assert not own_children()


@pytest.mark.parametrize("args, message", [
    (["--random", "64x64", "--stream", "--memory-budget", "1GB"], "--stream reads its input"),
    (["x.npy", "--stream"], "needs --memory-budget"),
    (["x.npy", "--stream", "--memory-budget", "1GB", "--verify"], "--verify does not apply"),
    (["x.npy", "--stream", "--memory-budget", "1GB", "--partition", "cols"], "--partition does not apply"),
    (["x.npy", "--stream", "--memory-budget", "100MB"], "below what a process holds"),
    (["x.npy", "--resume"], "--resume applies to streamed runs"),
    (["x.npy", "--out-format", "zarr"], "--out-format applies to streamed runs"),
])
def test_streamed_cli_refuses_what_does_not_apply(tmp_path, args, message):
    np.save(tmp_path / "x.npy", np.ones((40, 30), np.float32))
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert not list(tmp_path.glob("out/*")) and not own_children()


@pytest.mark.parametrize("engine, processes, mib, times", [("threads", 1, 160, 3), ("processes", 2, 400, 1.5)])
def test_peak_resident_memory_of_every_process_stays_within_the_budget(tmp_path, engine, processes, mib, times):
    """An input ``times`` the budget (a job that could not run in memory): measured by
    psutil from outside while it runs, and by each process's own peak (VmHWM); on threads
    (the default: one process, three tiles in flight, no torch: a small budget) and on
    worker processes (each holds torch: a budget above it)."""
    budget = mib * 2**20
    rows, cols = int(mib * 32 * times), 8192  # float32: `times` the budget in, as much out
    x = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, cols))
    rng = np.random.default_rng(0)
    for r0 in range(0, rows, 2048):
        x[r0:r0 + 2048] = rng.random((min(2048, rows - r0), cols), dtype=np.float32)
    x.flush()
    del x
    assert (tmp_path / "big.npy").stat().st_size >= times * budget
    cmd = [sys.executable, "-m", "haloconv", "run", "big.npy", "--memory-budget", f"{budget}B", "--kernel", "box:3",
           "--backend", "opencv", "--workers", "2", "--engine", engine, "-o", "y", "--report", "r.json", "-v"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = watch_rss(proc)  # psutil, from outside
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    assert "streaming:" in out  # chosen because the input does not fit, no --stream needed
    rep = json.loads((tmp_path / "r.json").read_text())
    peaks = [v["peak_rss"] for v in rep["ranks"].values()]
    assert len(peaks) == processes and len(seen) >= processes
    assert engine == "processes" or len(seen) == 1  # threads: no worker process started
    assert max(peaks) <= budget, (peaks, out)
    assert max(seen.values()) <= budget, (seen, out)
    # and the result is the single-node one (the backend on the whole input: bitwise)
    xin = torch.from_numpy(np.load(tmp_path / "big.npy"))[None, None]
    w = torch.ones(1, 1, 3, 3) / 9
    spec = ConvSpec.from_args(tuple(xin.shape), tuple(w.shape), None, padding="same")
    ref = backends.single_node("opencv", xin, w, None, spec)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "y.npy")), ref)


def test_streamed_under_torchrun_every_rank_shares_the_files(tmp_path):
    """Two torchrun ranks (real gloo process group) stream their round-robin share of the
    tiles through the shared files: the output is bitwise the single-node result."""
    import os
    import signal

    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.random((2, 150, 90), dtype=np.float32))
    common = ["x.npy", "--kernel", "laplacian", "--padding-mode", "replicate"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "haloconv",
           "run", *common, "--stream", "--memory-budget", "2GB", "--out-format", "zarr", "-o", "tr", "--report",
           "tr.json", "-v"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err[-3000:]
    assert "streaming:" in out and "2 ranks" in out
    y = _zarr().open_array(str(tmp_path / "tr.zarr"), mode="r")[:]
    np.testing.assert_array_equal(y, _single_node(tmp_path / "x.npy", "laplacian", "replicate"))
    rep = json.loads((tmp_path / "tr.json").read_text())
    assert set(rep["ranks"]) == {"0", "1"} and all(v["tiles"] > 0 for v in rep["ranks"].values())
    assert not list(tmp_path.glob("tr.zarr.journal*")) and not (tmp_path / "tr.zarr.partial").exists()


def _zarr():
    """zarr (the zarr extra): a test that reads or writes a store is skipped without it."""
    return pytest.importorskip("zarr")
