"""Worker faults survived: a real worker process killed mid-run; the job is re-planned on the
workers left and the result is still bitwise exact (--on-failure retry), or the run stops
with a clear error and no output (--on-failure fail)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import own_children
from haloconv.engines.host import proc_status, workers_of
from haloconv.options import RunOptions


def _run_and_kill_a_worker(tmp_path, on_failure: str):
    """The victim is stopped as soon as the workers are up, then killed: its tile's dense
    compute takes a hundred times longer than the stop does (the library-level test below
    makes it certain with a throttled victim)."""
    cmd = [sys.executable, "-m", "haloconv", "run", "--random", "1600x1600", "--kernel", "box:31", "--backend", "torch",
           "--workers", "3", "--engine", "processes", "--partition", "rows", "--timeout", "30", "--on-failure",
           on_failure, "--verify",
           "-o", str(tmp_path / "out" / "y"), "--mkdir", "-v"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in p.stdout:  # wait until the workers are up and the run has begun
            lines.append(line)
            if line.startswith("started 3 worker processes"):
                break
        workers = workers_of(p.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGSTOP)
        os.kill(workers[0], signal.SIGKILL)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, "".join(lines) + out, err, workers


def _gone(pids):
    return not any(Path(f"/proc/{v}").exists() and proc_status(v, "State")[0] != "Z" for v in pids)


def test_worker_killed_mid_run_is_survived_exactly(tmp_path):
    rc, out, err, workers = _run_and_kill_a_worker(tmp_path, "retry")
    assert rc == 0, err[-3000:]
    assert "survived 1 worker fault" in out
    assert "haloconv: warning: " in err and "re-planning the whole job on 2 worker(s)" in err  # stderr
    assert "started 2 worker processes" in out and "finished on 2 worker processes" in out
    assert "bitwise equal: True" in out and (tmp_path / "out" / "y.npy").exists()
    assert _gone(workers), "a worker of the first cluster outlived the run"


def test_worker_killed_mid_run_fails_fast_without_output(tmp_path):
    rc, out, err, workers = _run_and_kill_a_worker(tmp_path, "fail")
    assert rc == 1 and "haloconv: error:" in err and "exited" in err, err[-3000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert _gone(workers)


def test_on_failure_is_validated():
    import torch

    import haloconv

    with pytest.raises(ValueError, match="on_failure"):
        haloconv.conv(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), engine="processes", workers=2,
                      partition="rows", on_failure="ignore")


def _worker_pid(rank: int) -> int:
    """The pid of this process's worker of ``rank`` (its process name says it)."""
    for pid in own_children():
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == f"haloconv-w{rank}":
                return pid
    raise AssertionError(f"no worker of rank {rank} among {own_children()}")


@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_a_throttled_worker_killed_once_the_first_tile_is_in_is_survived(schedule):
    """Rank 2 sleeps 5000x its compute time before it answers (throttle: seconds, where the
    others answer in milliseconds), and is killed by the progress callback as soon as the
    first tile is in: it cannot have finished, however fast the machine.  Static: the whole
    job is planned again on 2 workers; dynamic: only the tiles not yet in are computed again."""
    import torch

    import haloconv
    from haloconv.engines.processes import local as processes

    x, w = torch.randn(1, 2, 240, 200, dtype=torch.float64), torch.randn(3, 2, 5, 5, dtype=torch.float64)
    plan = haloconv.plan(x.shape, w.shape, padding=2, partition="rows", workers=3, backend="torch")
    killed, seen = [], []

    def progress(done, total):
        seen.append((done, total))
        if not killed:
            killed.append(_worker_pid(2))
            os.kill(killed[0], signal.SIGKILL)

    how = RunOptions.of(engine="processes", timeout=30, on_failure="retry", progress=progress, schedule=schedule,
                        tiles=12 if schedule == "dynamic" else None)
    ex = processes.run(plan, x, w, None, how, throttle={2: 5000.0})
    assert torch.equal(ex.output, torch.nn.functional.conv2d(x, w, padding=2))
    assert killed and len(ex.failures) == 1 and "exited" in ex.failures[0], ex.failures
    assert seen[0][0] < seen[0][1]  # killed mid-run
    if schedule == "dynamic":  # the tiles that were in were kept
        assert len(ex.workers) == 2
    assert _gone(killed) and not own_children()


def test_dynamic_schedule_keeps_finished_tiles_when_a_worker_hangs(tmp_path):
    """A worker stopped once the first of 48 tiles is done (a progress line) holds the tile it
    was handed; the others pull the rest, and once the timeout calls it hung, only its tiles
    are left.  Each tile computes densely (torch), so dozens are still to do at the stop."""
    cmd = [sys.executable, "-m", "haloconv", "run", "--random", "1600x1600", "--kernel", "box:31", "--backend", "torch",
           "--workers", "3", "--partition", "rows", "--schedule", "dynamic", "--tiles", "48", "--timeout", "2",
           "--verify", "--progress", "lines", "-o", str(tmp_path / "y"), "-v"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in p.stderr:  # progress goes to stderr
            lines.append(line)
            if "/48 tiles done" in line:
                break
        workers = workers_of(p.pid)
        os.kill(workers[0], signal.SIGSTOP)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    err = "".join(lines) + err
    assert p.returncode == 0, err[-3000:]
    import re

    left = re.search(r"going on with 2 process\(es\): (\d+) of 48 tiles left", err)  # a warning: stderr
    assert left and 0 < int(left.group(1)) < 48, err  # finished tiles were kept, not recomputed
    assert "started 2 worker processes" in out and "bitwise equal: True" in out
    assert _gone(workers)
