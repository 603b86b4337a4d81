"""`haloconv run INPUT --dask local:N -o OUT.zarr`: the input file filtered on a
dask.distributed cluster of worker processes, chunk by chunk, into a Zarr output: the
streamed run's bits, each worker's memory within the chunks' bound whatever the input's
size, the flags that do not apply refused, and an existing output kept."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "haloconv", "run", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _zarr_input(path, n: int, chunk: int, channels: int = 0):
    shape = (n, n, channels) if channels else (n, n)
    z = zarr.open_array(str(path), mode="w", shape=shape, chunks=(chunk, chunk, *shape[2:]), dtype=np.uint8)
    z[:] = np.random.default_rng(n).integers(0, 255, shape, dtype=np.uint8)


def test_a_dask_run_writes_the_streamed_runs_bits_within_its_memory_bound(tmp_path):
    _zarr_input(tmp_path / "in.zarr", 1000, 96)
    _zarr_input(tmp_path / "rgb.zarr", 300, 70, channels=3)
    for name, extra in (("in.zarr", ["--kernel", "gaussian:2", "--padding-mode", "reflect"]),
                        ("rgb.zarr", ["--kernel", "sobel-x", "--stride", "2", "--padding", "1",
                                      "--padding-mode", "replicate"])):
        r = _cli(name, *extra, "--dask", "local:2", "-o", "out.zarr", "--overwrite", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        ref = _cli(name, *extra, "--stream", "--memory-budget", "1GB", "--out-format", "zarr", "-o", "ref",
                   "--overwrite", cwd=tmp_path)
        assert ref.returncode == 0, ref.stderr[-3000:]
        got, want = (np.asarray(zarr.open_array(str(tmp_path / p), mode="r")[:]) for p in ("out.zarr", "ref.zarr"))
        assert got.shape == want.shape and np.array_equal(got, want), extra
        grew, bound = map(int, re.search(r"at most (\d+) MiB over its start \(the chunks' bound: (\d+) MiB\)",
                                         r.stdout).groups())
        assert 0 < grew <= bound, r.stdout
    assert not (tmp_path / "out.zarr.partial").exists()


def test_flags_that_do_not_apply_are_refused_and_an_existing_output_kept(tmp_path, monkeypatch, capsys):
    """Each refused before a cluster starts (so in this process, by the command's main())."""
    from haloconv.cli.main import main

    monkeypatch.chdir(tmp_path)
    _zarr_input(tmp_path / "in.zarr", 64, 32)

    def refused(*args) -> str:
        assert main(["run", "in.zarr", "--kernel", "box:3", *args]) == 2
        return capsys.readouterr().err

    for flag in (["--workers", "2"], ["--partition", "rows"], ["--engine", "processes"], ["--resume"]):
        assert "does not apply to a --dask run" in refused("--dask", "local:1", "-o", "out.zarr", *flag), flag
    assert "writes a .zarr output" in refused("--dask", "local:1", "-o", "out.npy")
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "mine.txt").write_text("not haloconv's")
    assert "--overwrite" in refused("--dask", "local:1", "-o", "out.zarr")
    assert (tmp_path / "out.zarr" / "mine.txt").read_text() == "not haloconv's"
    assert "N >= 1" in refused("--dask", "local:0", "-o", "o2.zarr")


def test_the_readme_recipe_runs_on_a_scheduler_and_a_worker_started_as_a_user_starts_them(tmp_path):
    """`dask scheduler` and `dask worker` as separate commands, the run given the scheduler's
    address (`--dask tcp://...`): the same bits as local workers; both stopped after."""
    import json
    import os
    import signal
    import time

    _zarr_input(tmp_path / "in.zarr", 200, 64)
    info = tmp_path / "scheduler.json"
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask_cli, "--scheduler-file", str(info), "--port", "0", "--no-dashboard"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        for _ in range(600):  # the scheduler writes its address once it listens
            if info.exists() and info.read_text().strip():
                break
            assert procs[0].poll() is None, "the scheduler exited"
            time.sleep(0.05)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--no-dashboard"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        r = _cli("in.zarr", "--kernel", "gaussian:1", "--dask", address, "-o", "out.zarr", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "on 1 Dask workers" in r.stdout, r.stdout
        local = _cli("in.zarr", "--kernel", "gaussian:1", "--dask", "local:2", "-o", "ref.zarr", cwd=tmp_path)
        assert local.returncode == 0, local.stderr[-3000:]
        got, want = (np.asarray(zarr.open_array(str(tmp_path / p), mode="r")[:]) for p in ("out.zarr", "ref.zarr"))
        assert np.array_equal(got, want)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
