"""torch.distributed for real: torchrun ranks, the SPMD face, the CLI across two 'nodes'."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from haloconv.engines.host import workers_of

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("spmd_case", ["3 spmd_chain.py rows", "3 spmd_chain.py grid", "3 spmd_chain.py batch"])
def test_spmd_layers_stay_sharded_and_exact(spmd, spmd_case):
    assert "SPMD CHAIN EXACT" in spmd(spmd_case)


def test_cli_on_two_torchrun_nodes(tmp_path):
    port = _port()
    cmd = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=haloconv-{port}", "--rdzv-conf=join_timeout=60",
           "-m", "haloconv", "run", "--timeout", "60",
           "--random", "120x90", "--kernel", "sobel-y", "--partition", "rows", "--padding-mode", "circular",
           "--verify", "--report", str(tmp_path / "run.json"), "-o", str(tmp_path / "y")]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              start_new_session=True)
             for _ in range(2)]
    try:
        outs = [n.communicate(timeout=150) for n in nodes]
    finally:
        for n in nodes:  # never leave a torchrun agent or its worker behind
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait()
    assert [n.returncode for n in nodes] == [0, 0], "\n=====\n".join(o[1][-8000:] for o in outs)
    printed = "".join(o[0] for o in outs)
    assert "bitwise equal: True" in printed and "torchrun: 2 ranks" in printed
    assert np.load(tmp_path / "y.npy").shape == (1, 1, 120, 90)
    rep = json.loads((tmp_path / "run.json").read_text())
    assert rep["engine"] == "torchrun" and len(rep["workers"]) == 2
    for w in rep["workers"]:
        for phase, v in w["phases"].items():
            if phase != "weights":  # SPMD ranks hold the weights already
                assert (v["bytes_sent"], v["bytes_recv"]) == (v["predicted_bytes_sent"], v["predicted_bytes_recv"])


def test_cli_report_bytes_equal_prediction(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "haloconv", "run", "--random", "2x3x64x48", "--kernel", "box:3", "--workers", "3",
         "--engine", "processes", "--partition", "grid", "--padding-mode", "reflect", "--report",
         str(tmp_path / "r.json"), "-o", str(tmp_path / "y"), "-v"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "predicted sent/recv" in r.stdout  # the traffic table of -v
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["engine"] == "processes" and len(rep["load_average"]) == 3
    assert rep["plan"]["splits"][2:] != [1, 1] and len(rep["plan"]["tiles"]) == 3
    moved = 0
    for w in rep["workers"]:
        for v in w["phases"].values():
            assert v["bytes_sent"] == v["predicted_bytes_sent"] and v["bytes_recv"] == v["predicted_bytes_recv"]
            moved += v["bytes_sent"]
    assert moved > 0


def test_ctrl_c_stops_all_workers(tmp_path):
    # a job of a minute or more in many small tiles: it cannot finish between the start line
    # and the signal however loaded the machine is, and Ctrl-C, which Python sees between
    # two torch calls, is taken within a tile's compute (a huge tile would delay it)
    p = subprocess.Popen(
        [sys.executable, "-m", "haloconv", "run", "--random", "4x32x1024x1024", "--kernel", "box:15",
         "--workers", "3", "--partition", "rows", "--schedule", "dynamic", "--tiles", "384", "-o", str(tmp_path / "y"),
         "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell that starts the suite in the background ignores SIGINT, and the ignoring is
        # inherited (Python then never raises KeyboardInterrupt): give the run a terminal's Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in p.stdout:  # wait until the workers run
            if line.startswith("started 3 worker processes"):
                break
        kids = workers_of(p.pid)
        assert len(kids) == 2
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        assert p.returncode == 130, p.stderr.read()[-2000:]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{k}") for k in kids):
            time.sleep(0.05)
        assert not [k for k in kids if os.path.exists(f"/proc/{k}")]
    finally:  # never leave the job running past the test (later tests count processes)
        p.kill()
        p.wait()


@pytest.mark.parametrize("spmd_case", ["3 empty_tiles_spmd.py"])
def test_tiles_that_own_no_input_under_torchrun(spmd, spmd_case):
    """The SPMD face on a plan whose last tile owns no input rows; haloconv.nn refuses such a
    layout cleanly on every rank and draws halos from several owners exactly."""
    assert "EMPTY TILES EXACT" in spmd(spmd_case)


@pytest.mark.parametrize("spmd_case", ["3 traffic_spmd.py"])
def test_bytes_crossing_the_group_are_the_report_and_the_plan(spmd, spmd_case):
    """Counted below haloconv's own accounting, at the process group: what crosses equals
    the report, and the report equals the Plan's prediction plus the dtype codes (control)."""
    assert "TRAFFIC COUNTED" in spmd(spmd_case)
