"""Every example in the README runs."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from conftest import CALIBRATE_ARGS

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run():
    """The blocks in a fresh interpreter, as a user runs them, each with fresh globals; a
    block with a memory budget in an interpreter of its own (the budget counts the calling
    process).  A block that fails names itself."""
    blocks = _blocks("python")
    assert len(blocks) >= 4
    runner = ("import sys, traceback\n"
              "for i, code in enumerate(sys.argv[1:]):\n"
              "    try:\n"
              "        exec(compile(code, f'<README block {i}>', 'exec'), {'__name__': '__main__'})\n"
              "    except BaseException:\n"
              "        sys.exit(f'README block {i} failed:\\n{code}\\n{traceback.format_exc()}')\n")
    budgeted = [b for b in blocks if "memory_budget" in b]  # each alone: its budget is its process's
    for group in [[b for b in blocks if b not in budgeted]] + [[b] for b in budgeted]:
        r = subprocess.run([sys.executable, "-c", runner, *group], capture_output=True, text=True, timeout=600,
                           cwd=README.parent)
        assert r.returncode == 0, r.stderr[-4000:]


def test_torchrun_example_runs(tmp_path):
    lines = [line.split("#")[0].strip() for block in _blocks("console") for line in block.splitlines()
             if line.startswith("torchrun --nproc-per-node")]
    assert lines
    tifffile.imwrite(tmp_path / "slide.tif", (np.random.default_rng(0).random((256, 256)) * 65535).astype(np.uint16))
    for line in lines:
        args = shlex.split(line)[1:]
        streamed = "--stream" in args  # reads the slide the example names
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", *args],
                             cwd=tmp_path if streamed else README.parent, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=300)
        finally:
            if p.poll() is None:  # never leave the launcher's workers behind
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == 0, (line, err[-3000:])
        if streamed:
            assert "plan: 8 tiles" in out and "wrote out/slide-ranks.zarr" in out, out
        elif "train_large_images" in line:  # trained on shards vs on whole images in one process
            assert "step   1  loss" in out, out
            diff = float(re.search(r"one-process training: (\S+)", out).group(1))
            assert diff < 1e-3, out  # float32 sums over every pixel, in another order
        else:
            assert "bitwise equal to single-process torch: True" in out


def test_two_host_recipe_runs_as_two_nodes_here(tmp_path):
    """The quick start's two-host torchrun line, both nodes on this machine: node 0 at
    MASTER_ADDR=127.0.0.1 (a free port for the README's), node 1 the same line with
    --node-rank=1; both exit 0 and rank 0's check says bitwise equal."""
    import socket

    (line,) = [line.split("#")[0].strip() for block in _blocks("console") for line in block.splitlines()
               if line.startswith("torchrun --nnodes=2 --node-rank=0")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = line.replace("$MASTER_ADDR", "127.0.0.1").replace("--master-port=29511", f"--master-port={port}")
    args = shlex.split(line)
    procs = []
    try:
        for rank in (0, 1):
            argv = [a.replace("--node-rank=0", f"--node-rank={rank}") for a in args[1:]]
            procs.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv], cwd=tmp_path,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # never leave a launcher's workers behind
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert "bitwise equal: True" in outs[0][0], outs[0][0][-3000:]


def test_cli_examples_run(tmp_path, monkeypatch, capsys, calibrated):
    """Each `haloconv ...` line of the README, run by the command's own main() in this
    process (the entry point itself is run as a command by tests/test_cli.py): the same
    parsing, outputs and exit status, without an interpreter and a torch import per line."""
    from haloconv.cli.main import main

    monkeypatch.chdir(tmp_path)
    # the files the examples name
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "slide.tif", (rng.random((256, 256)) * 65535).astype(np.uint16))
    import zarr

    zarr.open_array(str(tmp_path / "slide.zarr"), mode="w", shape=(300, 200), chunks=(128, 128), dtype=np.uint16)[:] = \
        (rng.random((300, 200)) * 65535).astype(np.uint16)
    np.save(tmp_path / "image.npy", rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    np.save(tmp_path / "weights.npy", rng.standard_normal((8, 3, 3, 3)))
    lines = [
        line.split("#")[0].strip()
        for block in _blocks("console")
        for line in block.splitlines()
        if line.startswith("haloconv ")
    ]
    assert len(lines) >= 4
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "calibrate":  # the session ran this very command once (conftest.calibrated)
            i = args.index("--profile")
            assert args[:i] + args[i + 2:] == CALIBRATE_ARGS, line
            Path(args[i + 1]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(calibrated, args[i + 1])
            continue
        if "--dask" in args:  # the scheduler's address: tests/test_dask_cli.py runs one; here local workers
            args[args.index("--dask") + 1] = "local:2"
        if "--memory-budget" in args or "--dask" in args:  # the command's own process (and its Dask cluster)
            r = subprocess.run([sys.executable, "-m", "haloconv", *args], capture_output=True, text=True,
                               timeout=300)
            rc, stdout, stderr = r.returncode, r.stdout, r.stderr
        else:
            rc = main(args)
            stdout, stderr = capsys.readouterr()
        assert rc == 0, (line, stdout[-2000:], stderr[-2000:])
        if "--verify" in args:  # exit 0 already says it; the FFT backend is checked within its tolerance
            assert "bitwise equal: True" in stdout or re.search(r"fft within \S+ x max\|y\|: True", stdout)
