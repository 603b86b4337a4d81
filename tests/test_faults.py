"""Worker faults survived: a real worker process killed mid-run; the job is re-planned on the
workers left and the result is still bitwise exact (--on-failure retry), or the run stops
with a clear error and no output (--on-failure fail)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haloconv.soak import children


def _run_and_kill_a_worker(tmp_path, on_failure: str):
    cmd = [sys.executable, "-m", "haloconv", "run", "--random", "2400x2400", "--kernel", "box:31", "--workers", "3",
           "--partition", "rows", "--timeout", "30", "--on-failure", on_failure, "--verify", "-o",
           str(tmp_path / "out" / "y")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in p.stdout:  # wait until the workers are up and the run has begun
            lines.append(line)
            if line.startswith("started 3 worker processes"):
                break
        time.sleep(0.4)
        victims = children(p.pid)
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, "".join(lines) + out, err, victims


def test_worker_killed_mid_run_is_survived_exactly(tmp_path):
    rc, out, err, victims = _run_and_kill_a_worker(tmp_path, "retry")
    assert rc == 0, err[-3000:]
    assert "re-planning the whole job on 2 worker(s)" in out and "survived 1 worker fault" in out
    assert "started 2 worker processes" in out and "bitwise equal: True" in out
    assert (tmp_path / "out" / "y.npy").exists()
    assert not any(Path(f"/proc/{v}").exists() and children(v) for v in victims)


def test_worker_killed_mid_run_fails_fast_without_output(tmp_path):
    rc, out, err, _ = _run_and_kill_a_worker(tmp_path, "fail")
    assert rc == 1 and "haloconv: error:" in err and "exited" in err, err[-3000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_on_failure_is_validated():
    import torch

    import haloconv

    with pytest.raises(ValueError, match="on_failure"):
        haloconv.conv(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), engine="processes", workers=2,
                      partition="rows", on_failure="ignore")


def test_dynamic_schedule_keeps_finished_tiles_when_a_worker_dies(tmp_path):
    cmd = [sys.executable, "-m", "haloconv", "run", "--random", "3200x3200", "--kernel", "box:31", "--workers", "3",
           "--partition", "rows", "--schedule", "dynamic", "--tiles", "48", "--timeout", "30", "--verify", "-o",
           str(tmp_path / "y")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("started 3 worker processes"):
                break
        time.sleep(0.8)
        os.kill(children(p.pid)[0], signal.SIGKILL)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    out = "".join(lines) + out
    assert p.returncode == 0, err[-3000:]
    import re

    left = re.search(r"going on with 2 process\(es\): (\d+) of 48 tiles left", out)
    assert left and 0 < int(left.group(1)) < 48, out  # finished tiles were kept, not recomputed
    assert "started 2 worker processes" in out and "bitwise equal: True" in out
