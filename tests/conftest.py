import functools
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, settings

import haloconv
from haloconv.compute import kernels

# Fixed examples on every run: a failure seen once is seen again (no flaky CI).
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

# `make stress` (HALOCONV_STRESS=1) runs the long loops whole; `make test` runs each a few
# times, which is what catches a change that breaks them, at a fraction of the time
STRESS = os.environ.get("HALOCONV_STRESS") == "1"


def repeat(quick: int, stress: int) -> int:
    """How many times a loop runs: ``stress`` under `make stress`, ``quick`` in `make test`."""
    return stress if STRESS else quick


# haloconv on torch's backend.  A filter (one channel in and out per group) runs by default
# on the fastest backend, equal to its own single-node call; the tests of the torch path,
# which compare with torch bit for bit, name torch's backend.
torch_conv = functools.partial(haloconv.conv, backend="torch")
torch_plan = functools.partial(haloconv.plan, backend="torch")


def torch_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """The single-node call: a torch.nn.ConvNd with these weights on the whole input."""
    nd = x.dim() - 2
    m = _MODULES[nd](
        x.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=bias is not None, padding_mode=padding_mode, dtype=x.dtype,
    )
    with torch.no_grad():
        m.weight.copy_(weight)
        if bias is not None:
            m.bias.copy_(bias)
        return m(x)


def assert_bitwise(y, ref, gemm=False):
    """Bitwise the single-node result (float64 on a machine whose GEMM rounds by size:
    within kernels.GEMM_RTOL, see kernels.matches_single_node)."""
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == ref.dtype
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), "NaN positions differ"
    assert _equal(y, ref, gemm), f"max |diff| {(y - ref).abs().nan_to_num().max().item()}"


def _equal(y, ref, gemm=False):
    return kernels.matches_single_node(y, ref, gemm)


def runs_on_gemm(spec, x, w, b) -> bool:
    """Whether torch computes this conv by im2col + GEMM (kernels.GEMM_BACKENDS)."""
    return kernels.select_backend(spec, x, w, b) in kernels.GEMM_BACKENDS


def assert_single_node_exact(y, reference, gemm=False):
    """y is bitwise the single-node result ``reference()`` (computed at this process's
    thread count).  One documented exception: on tiny problems oneDNN's GEMM algorithm
    makes the single-node result itself depend on the thread count; then y must be
    bitwise the single-node result at one thread, the count each worker thread uses."""
    ref = reference()
    assert y.shape == ref.shape and y.dtype == ref.dtype
    if _equal(y, ref, gemm):
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref1 = reference()
    finally:
        torch.set_num_threads(threads)
    assert not _equal(ref1, ref), f"max |diff| {(y - ref).abs().nan_to_num().max().item()}"
    assert _equal(y, ref1, gemm), "single-node result depends on threads, and y matches neither"


@pytest.fixture
def ref():
    return torch_reference


def count_opencv_paths(monkeypatch, counts) -> None:
    """Count into ``counts`` how the OpenCV backends filter each plane: 'one call' on the
    plane itself or from a padded 'copy' (opencv.direct decides), so a property test can
    check it reached both."""
    from haloconv.compute.backends import opencv

    real = opencv.direct

    def counted(*args):
        chosen = real(*args)
        counts["one call" if chosen else "copy"] += 1
        return chosen

    monkeypatch.setattr(opencv, "direct", counted)



class ClusterPool:
    """LocalClusters shared by every test of a session, one per worker count, started on
    first use: a pool's start-up (a torch import per worker) is paid once, not per file.
    A test that injects faults, throttles or closes its cluster starts its own."""

    def __init__(self):
        self._held: dict[int, haloconv.LocalCluster] = {}

    def __call__(self, workers: int) -> "haloconv.LocalCluster":
        c = self._held.get(workers)
        if c is None or not c.alive:
            c = self._held[workers] = haloconv.LocalCluster(workers=workers, timeout=60)
        return c

    def close(self) -> list[int]:
        pids = [p for c in self._held.values() for p in c.pids()]
        for c in self._held.values():
            c.close()
        self._held.clear()
        return pids


_POOLS: list[ClusterPool] = []


def own_children() -> list[int]:
    """This process's children other than the workers of the session's shared clusters and
    the fork server (it serves the whole session, engines/processes/forkserver.py): what a test
    started (and must not leave behind, or may kill)."""
    from haloconv.engines.host import workers_of

    shared = {p for pool in _POOLS for c in pool._held.values() for p in c.pids()}
    return [p for p in workers_of() if p not in shared]


@pytest.fixture(scope="session")
def clusters():
    pool = ClusterPool()
    _POOLS.append(pool)
    yield pool
    pids = pool.close()
    assert all(_gone(p) for p in pids), "a worker of a shared cluster outlived the session"


def _gone(pid: int, wait: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def pytest_configure(config):
    """The suite's per-test timeout (pyproject's `timeout`) needs pytest-timeout, of the dev
    extra that `make test` installs: without it a hung test would hang the suite."""
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not installed: run `make test` (it installs the dev extra), "
                                "or pip install -e '.[dev]'")


def pytest_collection_modifyitems(config, items):
    """A test module may adjust its collected tests through its own ``swap_params(item)``
    (test_scipy_filters_suite.py: scipy's tests parametrized with scipy's functions get
    haloconv's, and the ones expected to fail are marked).  Every test that shares a session's
    set-up is in the group of workers that share it (`xdist_scope`)."""
    for item in items:
        swap = getattr(getattr(item, "module", None), "swap_params", None)
        if swap is not None:
            swap(item)
        names = getattr(item, "fixturenames", ())
        for fixture, group in (("spmd", "spmd"), ("calibrated", "calibrated")):
            if fixture in names and xdist_scope(item.nodeid) != group:
                raise pytest.UsageError(f"{item.nodeid} uses the session's {fixture!r} but xdist_scope puts it in "
                                        f"{xdist_scope(item.nodeid)!r}: see tests/conftest.py")


# -- make test runs on 2 pytest-xdist workers (Makefile) -----------------------------------------
# A group of tests goes to one worker whole: a file's tests (its module fixtures and the counts
# its reached-class checks sum), every torchrun case (the `spmd` fixture runs a rank count's
# cases in one launch), every user of `calibrated` (calibrate runs once).  The longest groups
# start first, so the two workers end together.  (pytest-xdist's own `--dist loadgroup` marks
# no longer group under pytest >= 9.2, which keeps a node's id elsewhere.)
_SPMD_CASE = re.compile(r"\[(\w+=\S+ )*\d+ \w+\.py\b")
CALIBRATED_FILES = ("test_cost.py", "test_backend_registry.py", "test_plan.py", "test_readme.py")
# streams run in the test process with a 2 GB memory budget, which counts that process's own
# resident memory: they go first, on a worker that has run nothing else (a worker that has
# run the peers' suites can hold more than 2 GB)
FRESH_PROCESS_FILES = ("test_stream.py", "test_safe_writes.py")
LONGEST_FIRST = ("fresh process", "spmd", "calibrated", "test_heal.py", "test_stream_cli.py", "test_faults.py",
                 "test_cli_terminal.py", "test_hard_cases.py", "test_distributed.py", "test_scipy_filters_suite.py")


def xdist_scope(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    name = path.rsplit("/", 1)[-1]
    if _SPMD_CASE.search(nodeid):
        return "spmd"
    if name in FRESH_PROCESS_FILES:
        return "fresh process"
    return "calibrated" if name in CALIBRATED_FILES else name


def _longest_first(group: str) -> int:
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


if importlib.util.find_spec("xdist"):  # the hook exists only with the plugin (pytest refuses unknown hooks)
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class Groups(LoadScopeScheduling):
            def _split_scope(self, nodeid):
                return xdist_scope(nodeid)

            def _assign_work_unit(self, node):
                self.workqueue.move_to_end(min(self.workqueue, key=_longest_first), last=False)
                super()._assign_work_unit(node)

        return Groups(config, log)


CALIBRATE_ARGS = ["calibrate", "--quick"]


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory):
    """`haloconv calibrate --quick` run once per session (it times every backend: the
    slowest command the suite runs): the profile's path, for every test that needs one."""
    from haloconv.cli.main import main

    path = tmp_path_factory.mktemp("calibrate") / "profile.json"
    assert main([*CALIBRATE_ARGS, "--profile", str(path)]) == 0
    return path


# -- many torchrun scripts in one launch (tests/spmd_cases.py) ---------------------------------
# A test that runs a script under torchrun takes a parameter ``spmd_case``: the case's command
# line, ``[NAME=VALUE ...] RANKS SCRIPT [ARGS ...]`` (SCRIPT in tests/), e.g.
# ``"HALOCONV_P2P=batched 4 nn_train_parity.py grid"``.  The ``spmd`` fixture runs every
# selected case of one rank count in a single launch, on first use, and gives each test its
# case's stdout (every rank's, in rank order); a case that failed on any rank fails its test
# with that rank's traceback.  One-shot behaviour (exit codes, Ctrl-C, the CLI, the examples)
# keeps a launch of its own.
SPMD_LAUNCH_TIMEOUT = 280


def _spmd_parse(spec: str) -> tuple[int, str, list[str], dict[str, str]]:
    words = spec.split()
    env = {}
    while "=" in words[0]:
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return int(words[0]), words[1], words[2:], env


def _spmd_launch(ranks: int, specs: list[str], where) -> dict:
    import json
    from pathlib import Path

    here = Path(__file__).parent
    cases = []
    for spec in specs:
        _, script, args, env = _spmd_parse(spec)
        cases.append({"id": spec, "script": script, "args": args, "env": env})
    (where / "cases.json").write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           str(here / "spmd_cases.py"), str(where / "cases.json"), str(where)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=SPMD_LAUNCH_TIMEOUT)
        launch = f"exit {r.returncode}; stderr:\n{r.stderr[-4000:]}"
    except subprocess.TimeoutExpired as e:
        launch = f"timed out after {SPMD_LAUNCH_TIMEOUT} s; stderr:\n{(e.stderr or b'')[-4000:]!r}"
    per_rank = [json.loads(f.read_text()) if (f := where / f"r{k}.json").exists() else {} for k in range(ranks)]
    return {"ranks": per_rank, "launch": launch}


@pytest.fixture(scope="session")
def spmd(request, tmp_path_factory):
    wanted: dict[int, list[str]] = {}
    for item in request.session.items:
        spec = getattr(item, "callspec", None) and item.callspec.params.get("spmd_case")
        if spec and spec not in (same := wanted.setdefault(_spmd_parse(spec)[0], [])):
            same.append(spec)
    launched: dict[int | str, dict] = {}

    def result(spec: str) -> str:
        ranks = _spmd_parse(spec)[0]
        group = ranks if spec in wanted.get(ranks, ()) else spec  # a case not selected up front runs alone
        if group not in launched:
            launched[group] = _spmd_launch(ranks, wanted[ranks] if group == ranks else [spec],
                                           tmp_path_factory.mktemp(f"spmd{ranks}"))
        got = launched[group]
        seen = [r.get(spec) for r in got["ranks"]]
        for k, s in enumerate(seen):
            if s is not None and not s["ok"]:
                pytest.fail(f"{spec!r} failed on rank {k}:\n{s['error']}\n{s['out'][-2000:]}", pytrace=False)
        if any(s is None for s in seen):
            failed = [(k, c) for k, r in enumerate(got["ranks"]) for c, s in r.items() if not s["ok"]]
            why = (f"case {failed[0][1]!r} failed on rank {failed[0][0]} before it" if failed
                   else f"the launch ended: {got['launch']}")
            pytest.fail(f"{spec!r} did not run on every rank: {why}", pytrace=False)
        return "".join(s["out"] for s in seen)

    return result


def cli(*args, cwd) -> subprocess.CompletedProcess:
    """``haloconv ARGS`` run by its own main() in this process, in folder ``cwd``: the exit
    status, stdout and stderr a command would give, without an interpreter start and a torch
    import per call.  A command given a --memory-budget runs as its own process (the budget
    counts the process, and this one holds the test session).  tests/test_cli.py runs the
    entry point itself as a command; tests whose subject is the process (signals, pipes,
    memory) start one of their own."""
    import contextlib
    import io

    from haloconv.cli.main import main

    argv = [str(a) for a in args]
    if "--memory-budget" in argv:  # a budget of the command's own process, not of this test runner's
        return subprocess.run([sys.executable, "-m", "haloconv", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=300)
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse's usage errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["haloconv", *argv], rc, out.getvalue(), err.getvalue())
