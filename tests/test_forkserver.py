"""Workers forked from the warm fork server (engines/processes/forkserver.py): they are the master's
own children, get what a spawned interpreter would (environment, working directory,
stdout, the secret on stdin, an exit status), start in a fraction of a spawn's time, and
die with the master (test_heal.py: test_workers_die_with_their_master)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

import haloconv
from conftest import assert_bitwise, torch_reference
from haloconv.engines.host import children, is_fork_server
from haloconv.engines.processes import forkserver

forked_only = pytest.mark.skipif(os.environ.get(forkserver.ENV) == "0",
                                 reason="workers are spawned (HALOCONV_FORKSERVER=0)")


def _start(target: str, *args, env=None, secret=b"s" * 32):
    module, function = target.rsplit(".", 1)
    return forkserver.start(module, function, args, dict(os.environ if env is None else env), secret)


@forked_only
def test_a_forked_process_gets_the_masters_environment_directory_stdout_and_secret(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "HALOCONV_PROBE": "set-after-the-server-started"}
    secret = os.urandom(32)
    # a shell in the forked process reports what it was given; the secret is read from its stdin
    p = _start("os.system", "echo env=$HALOCONV_PROBE; pwd > cwd; head -c 32 > secret", env=env, secret=secret)
    assert p.wait(30) == 0  # (ownership: test_a_killed_process_is_reaped_by_the_master)
    assert forkserver.server_pids() and all(is_fork_server(s) for s in forkserver.server_pids())
    assert "env=set-after-the-server-started" in capfd.readouterr().out
    assert (tmp_path / "cwd").read_text().strip() == str(tmp_path)
    assert (tmp_path / "secret").read_bytes() == secret


@forked_only
@pytest.mark.parametrize(("target", "args", "code"), [("os._exit", (7,), 7), ("sys.exit", (5,), 5),
                                                      ("operator.truediv", (1, 0), 1)])
def test_the_exit_status_is_the_masters_to_read(target, args, code, capfd):
    p = _start(target, *args)
    assert p.wait(30) == code and p.poll() == code
    if code == 1:  # an exception: its traceback on stderr, as an interpreter prints it
        assert "ZeroDivisionError" in capfd.readouterr().err


@forked_only
def test_a_killed_process_is_reaped_by_the_master():
    p = _start("time.sleep", 60)
    assert p.poll() is None and p.pid in children()
    p.kill()
    assert p.wait(30) == -9 and p.pid not in children()


@forked_only
def test_variables_read_at_import_get_a_new_server(monkeypatch):
    _start("os._exit", 0).wait(30)
    first = forkserver.server_pids()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when its runtime starts
    _start("os._exit", 0).wait(30)
    second = forkserver.server_pids()
    assert len(first) == len(second) == 1 and first != second
    monkeypatch.delenv("OMP_WAIT_POLICY")
    _start("os._exit", 0).wait(30)
    assert forkserver.server_pids() not in (first, second)  # the old one was closed, not kept


@forked_only
def test_a_killed_server_is_started_again():
    _start("os._exit", 0).wait(30)
    (server,) = forkserver.server_pids()
    os.kill(server, 9)
    assert _start("os._exit", 3).wait(30) == 3
    assert forkserver.server_pids() and forkserver.server_pids() != [server]


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "spawned"])
def test_a_pool_outlives_the_thread_that_started_it(forked, monkeypatch):
    """The kernel's death signal follows the parent *thread*: workers started by a thread
    that then ends must not die with it (they are started from a thread kept for that),
    whether forked by the server or spawned (HALOCONV_FORKSERVER=0)."""
    if not forked:
        monkeypatch.setenv(forkserver.ENV, "0")
    elif os.environ.get(forkserver.ENV) == "0":
        pytest.skip("workers are spawned (HALOCONV_FORKSERVER=0)")
    made = []
    t = threading.Thread(target=lambda: made.append((haloconv.LocalCluster(workers=3, timeout=60),
                                                     forkserver.server_pids())))
    t.start()
    t.join()
    ((c, servers),) = made
    with c:
        x, w = torch.randn(1, 2, 40, 40), torch.randn(3, 2, 3, 3)
        y = haloconv.conv(x, w, padding=1, partition="rows", engine=c)
        assert_bitwise(y, torch_reference(x, w, None, padding=1))
        assert c.restarts == []
        assert forkserver.server_pids() == servers  # the server too (it would be started again)
        assert not any(is_fork_server(p) for p in c.pids())
        assert all(open(f"/proc/{p}/comm").read().strip() == f"haloconv-w{r}" for r, p in enumerate(c.pids(), 1))
