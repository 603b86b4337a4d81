"""A pool of worker processes on this machine in one gloo group: its lifecycle (start,
stop, faults, healing) and the collective step every operation of engines/processes/ops/ is made of."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from haloconv.engines.errors import WorkerError
from haloconv.engines.execution import Execution, execution_from_reports
from haloconv.engines.host import default_workers
from haloconv.engines.processes import forkserver
from haloconv.engines.processes.sealed import Forged, new_secret, seal, unseal
from haloconv.engines.processes.worker import HOST, group_of, keep_heap, shutdown
from haloconv.engines.spmd.comm import Comm
from haloconv.options import ON_FAILURE
from haloconv.tiling.plan import Plan

log = logging.getLogger(__name__)


class Cluster:
    """The lifecycle of a pool of worker processes in one gloo group: start, stop, faults,
    healing, and ``step``, the collective step every operation is made of (its master half
    runs here while the workers run theirs, engines/processes/worker.py).  The operations themselves
    live in engines/processes/ops/; haloconv.LocalCluster (engines/processes/local.py) is this plus them."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout: float = 60.0,
        threads_per_worker: int = 1,
        start_timeout: float = 120.0,
        throttle: dict[int, float] | None = None,
        heal: bool = True,
    ):
        if workers is None:

            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be an int >= 1, got {threads_per_worker!r}")
        self.workers = workers
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.threads_per_worker = threads_per_worker
        self.throttle = check_throttle(throttle)
        self.heal = bool(heal)
        self.restarts: list[str] = []  # what each healing replaced, and why
        self._procs: dict[int, subprocess.Popen] = {}
        self._comm: Comm | None = None
        self._store = None
        self._secret = new_secret()  # seals every command and reply (engines/processes/sealed.py)
        self._forged: set[str] = set()  # keys where a forged reply was dropped (logged once each)
        self._seq = 0
        self._generation = 0
        self._next_id = 0
        self.shards: dict[int, torch.Tensor | None] = {}
        self._start()

    # -- life cycle -----------------------------------------------------------------------------
    def _start(self) -> None:
        t0 = time.perf_counter()
        keep_heap()  # the master computes tiles too: as fast as a worker's (see keep_heap)
        self._store = dist.TCPStore(HOST, 0, self.workers, True, timedelta(seconds=self.start_timeout),
                                    wait_for_workers=False)
        self._spawn(range(1, self.workers))
        self._join()
        self.startup_seconds = time.perf_counter() - t0

    def _spawn(self, ranks) -> None:
        """Start worker processes for ``ranks`` running haloconv.engines.processes.worker (nothing of
        the caller's __main__ is re-imported, so scripts and notebooks need no main guard):
        forked from the warm fork server, or fresh interpreters (engines/processes/forkserver.py); they
        take commands from number self._seq on and join the process group of this generation."""
        env = _worker_env()
        for rank in ranks:
            args = (rank, self.workers, self._store.port, self.timeout, self.threads_per_worker, self.start_timeout,
                    self._seq, self._generation)
            self._procs[rank] = forkserver.start("haloconv.engines.processes.worker", "worker_main", args, env,
                                                 self._secret)

    def _join(self) -> None:
        """Wait until every worker of this generation is ready, form the group with them, and
        wait until each has formed its end (connected to every other worker too): a worker
        lost after that fails the next step, not the others' group formation."""
        deadline = time.monotonic() + self.start_timeout
        self._await("ready", deadline)
        self._comm = Comm(group_of(self._store, 0, self.workers, self.timeout, self._generation), 0, self.workers)
        self._await("joined", deadline)

    def _await(self, what: str, deadline: float) -> None:
        """Wait until every worker has set its key ``what`` of this generation; a worker that
        exits, or the deadline, closes the cluster with WorkerError."""
        waiting = set(range(1, self.workers))
        while waiting:
            waiting = {r for r in waiting if not self._store.check([f"haloconv/{what}/{r}/{self._generation}"])}
            dead = sorted(r for r, p in self._procs.items() if p.poll() is not None)
            if dead or time.monotonic() > deadline:
                why = (f"worker(s) {dead} exited during start-up{self._exit_reasons(dead)}" if dead
                       else f"not {what} within {self.start_timeout:g} s")
                self._kill()
                raise WorkerError(f"LocalCluster could not start: {why}")
            if waiting:
                time.sleep(0.02)

    def _exit_reasons(self, ranks) -> str:
        """The tracebacks that workers ``ranks`` left in the store before exiting, if any (a
        worker that fails outside a step, e.g. forming a group, posts one and exits)."""
        texts = []
        for r in ranks:
            key = f"haloconv/error/{r}"
            if self._store.check([key]):
                try:
                    texts.append(f"\nworker {r}: {unseal(self._secret, key, self._store.get(key))}")
                except Forged as e:
                    log.warning("dropped %s (not sent by this cluster's workers)", e)
                self._store.delete_key(key)
        return "".join(texts)

    @property
    def alive(self) -> bool:
        return self._comm is not None

    def pids(self) -> list[int]:
        return [self._procs[r].pid for r in sorted(self._procs)]

    def close(self) -> None:
        """Stop the workers (politely, then by force); idempotent."""
        if self._comm is not None:
            self._comm = None
            try:
                self._command({"op": "stop"})
            except Exception:
                pass
            deadline = time.monotonic() + 5
            for p in self._procs.values():
                try:
                    p.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self._kill()

    def _kill(self, ranks=None) -> None:
        """Kill and reap the workers ``ranks`` (default: all, and the cluster is closed)."""
        closing = ranks is None
        ranks = list(self._procs) if closing else list(ranks)
        for r in ranks:
            if self._procs[r].poll() is None:
                self._procs[r].kill()
        for r in ranks:
            self._procs.pop(r).wait()
        if closing:
            shutdown(self._comm)
            self._comm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._kill()
        except Exception:
            pass

    # -- faults, for tests ---------------------------------------------------------------------
    def inject_fault(self, rank: int, kind: str = "exit", seconds: float = 3600) -> None:
        """Make worker ``rank`` exit or hang (sleep) before its next command, or raise in it
        (kind 'exit', 'sleep', 'raise')."""
        self._require_alive()
        noop = {"op": "fault", "kind": "sleep", "seconds": 0}
        self._command({r: ({"op": "fault", "kind": kind, "seconds": seconds} if r == rank else noop)
                       for r in range(1, self.workers)})

    def _command(self, cmd: dict, ranks=None) -> int:
        """Post a command to every worker (or {rank: command}); returns its sequence number."""
        seq = self._seq
        self._seq += 1
        for rank in range(1, self.workers) if ranks is None else ranks:
            c = cmd[rank] if rank in cmd else cmd
            key = f"haloconv/cmd/{rank}/{seq}"
            self._store.set(key, seal(self._secret, key, c))
        return seq

    def _require_alive(self) -> None:
        if self._comm is None:
            raise WorkerError("the cluster is closed (a worker failed, or close() was called)")

    # -- collective steps: the master's half of worker._run -----------------------------------
    def step(self, cmd: dict, master_side) -> tuple[object, dict[int, dict]]:
        """Post ``cmd`` to the workers, run the master's side, collect every report.

        A failure anywhere (a worker raised, died or hung past the timeout; the master's
        side raised) breaks the group: whoever fails closes its connections, so every rank
        waiting on it fails at once instead of at the timeout.  Then the cluster heals
        (_heal) and the call raises: WorkerError for a worker's fault, the master's own
        exception for the master's.  Ctrl-C stops the cluster."""
        self._require_alive()
        comm = self._comm
        comm.reset()
        cmd = {**cmd, "throttle": {**self.throttle, **cmd.get("throttle", {})}}
        comm.slowdown = cmd["throttle"].get(0, 1.0)
        t0 = time.perf_counter()
        # the master is one of the workers: all its torch work in the step (computes, copies
        # into the result) runs on a worker's threads; with more, its idle OpenMP threads
        # would spin on the cores the workers compute on
        caller_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_per_worker)
        seq = self._command(cmd)
        master_error: BaseException | None = None
        try:
            with torch.no_grad():  # gradients come from backward (engines/differentiable.py)
                result = master_side(comm)
            reports = {0: {"rank": 0, "traffic": comm.report(), "seconds": time.perf_counter() - t0}}
        except (KeyboardInterrupt, SystemExit):
            self._kill()  # the workers are out of step and the caller is leaving: stop them
            raise
        except BaseException as e:  # noqa: BLE001 - raised below, after the workers are collected
            master_error = e
            traceback.clear_frames(e.__traceback__)  # its frames' in-flight messages hold the group
            shutdown(comm)  # workers waiting on the master fail now, not at the timeout
        finally:
            torch.set_num_threads(caller_threads)
        replies, dead, hung = self._collect(seq, failed=master_error is not None)
        errors = {r: rep["error"] for r, rep in replies.items() if "error" in rep}
        if master_error is None and not (errors or dead or hung):
            reports.update(replies)
            return result, reports
        failure = self._fault(errors, dead, hung, master_error, time.perf_counter() - t0)
        lost = sorted(set(dead) | set(hung))
        if not self.heal:
            self._kill()
        else:
            try:
                self._heal(lost, failure)
            except WorkerError as e:
                raise e from failure
        if failure is None:
            raise master_error
        raise failure

    def _collect(self, seq: int, failed: bool) -> tuple[dict[int, dict], list[int], list[int]]:
        """Every worker's reply to command ``seq`` (its report, or the error it raised), the
        ranks that died and those that hung past the timeout.  Once anything failed, the
        master's connections are closed (workers blocked on it fail at once) and a worker
        still silent after the timeout is taken for hung."""
        replies: dict[int, dict] = {}
        dead: list[int] = []
        pending = list(range(1, self.workers))
        # a worker blocked on a hung one fails at the group's timeout, so is not taken for hung
        deadline = time.monotonic() + self.timeout + min(self.timeout, 5.0)
        pause = 0.0002
        while pending:
            late = time.monotonic() > deadline
            progressed = False
            for rank in list(pending):  # in turn; once late, every silent one once more
                key = f"haloconv/report/{rank}/{seq}"
                reply = self._reply(key)
                if reply is not None:
                    replies[rank] = reply
                    failed = failed or "error" in reply
                elif self._procs[rank].poll() is not None:
                    dead.append(rank)
                    failed = True
                elif late:
                    continue
                else:
                    break
                pending.remove(rank)
                progressed = True
            if failed:
                shutdown(self._comm)  # idempotent
            if pending and not progressed:
                if late:
                    break
                time.sleep(pause)
                pause = min(2 * pause, 0.002)
        return replies, dead, pending

    def _reply(self, key: str) -> dict | None:
        """The worker's reply under ``key``, or None while there is none.  A value the
        cluster's secret did not seal is left unread (logged once; the worker's own reply
        replaces it under the same key)."""
        if not self._store.check([key]):
            return None
        data = self._store.get(key)
        try:
            reply = unseal(self._secret, key, data)
        except Forged as e:
            if key not in self._forged:
                self._forged.add(key)
                log.warning("dropped %s (not sent by this cluster's workers)", e)
            return None
        self._store.delete_key(key)
        return reply

    def _fault(self, errors: dict[int, str], dead: list[int], hung: list[int],
               master_error: BaseException | None, waited: float) -> WorkerError | None:
        """The WorkerError a failed step raises (None: the master's own error is the cause);
        ``waited``: the step's seconds until then (a hang is found after the master's side
        and the ranks blocked on the hung one have each had their timeout)."""
        # a worker that raised first; the others failed because it closed its connections
        first = {r: e for r, e in errors.items() if not _broken_link(e)}
        if master_error is not None and not (first or dead or hung):
            return None
        what = []
        if dead:
            what.append(f"worker(s) {dead} exited{self._exit_reasons(dead)}")
        if hung:
            what.append(f"worker(s) {hung} did not answer within the timeout of {self.timeout:g} s (hung, or "
                        f"waiting on one that hung; the call waited {waited:.1f} s)")
        if first:
            what.append(f"worker(s) {sorted(first)} raised")
        if master_error is not None and not _broken_link(str(master_error)):
            what.append(f"the master: {type(master_error).__name__}: {master_error}")
        shown = first or ({} if (dead or hung) else errors)
        healed = "the cluster was restored" if self.heal else "the cluster was shut down"
        return WorkerError(
            f"the call failed: {'; '.join(what) or 'a worker failed'}; {healed}"
            + "".join(f"\nworker {r}: {tb}" for r, tb in sorted(shown.items())),
            dead=tuple(dead), hung=tuple(hung), raised=bool(first) and not (dead or hung),
        )

    def _heal(self, lost: list[int], failure: BaseException | None) -> None:
        """After a failed step: the lost workers (dead or hung) replaced by fresh processes of
        the same ranks, every process in a new group (generation).  Resident shards are gone."""
        self._kill(lost)
        self._generation += 1
        survivors = [r for r in range(1, self.workers) if r not in lost]
        self._command({"op": "regroup", "generation": self._generation}, ranks=survivors)
        self._spawn(lost)
        self.shards.clear()
        self._join()  # raises WorkerError (and closes the cluster) if it cannot
        cause = "raised" if failure is None or getattr(failure, "raised", False) else "lost"
        self.restarts.append(f"generation {self._generation}: replaced {lost or 'no process'} ({cause})")

    def retrying(self, on_failure: str, call):
        """``call()`` on this cluster; when it fails because a worker was lost (died or hung;
        the cluster healed), with on_failure='retry' it runs again, up to once per worker.
        An exception raised in a worker is raised at once (it would be raised again)."""
        check_on_failure(on_failure)
        failures: list[str] = []
        while True:
            try:
                result = call()
            except WorkerError as e:
                if not retriable(e, on_failure) or not self.alive or len(failures) >= self.workers:
                    raise
                failures.append(str(e))
                continue
            if isinstance(result, Execution):
                result.failures = failures
            return result

    def check_plan(self, plan: Plan) -> None:
        if plan.workers > self.workers:
            raise ValueError(f"plan needs {plan.workers} workers but the cluster has {self.workers}")

    def new_id(self) -> int:
        """A fresh id for a set of resident shards."""
        self._next_id += 1
        return self._next_id


def check_on_failure(on_failure: object) -> None:
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be 'retry' or 'fail', got {on_failure!r}")


def retriable(error: WorkerError, on_failure: str) -> bool:
    """Whether a failed call is run again: only with on_failure='retry', and only when a
    worker was lost — an exception raised in a worker would be raised again."""
    return on_failure == "retry" and not error.raised


def _broken_link(error: str) -> bool:
    """A worker's error that only says a peer closed its connections (or timed out waiting
    on one): a consequence of another failure, not a cause."""
    return any(s in error for s in ("gloo/transport", "Connection closed by peer", "Connection reset by peer",
                                     "Timed out waiting", "haloconv: broken group"))


def check_throttle(throttle: dict[int, float] | None) -> dict[int, float]:
    throttle = dict(throttle or {})
    if any(not (isinstance(f, (int, float)) and f >= 1) for f in throttle.values()):
        raise ValueError(f"throttle factors must be numbers >= 1, got {throttle}")
    return throttle


def _worker_env() -> dict[str, str]:
    """Workers keep freed tile-sized blocks in their heap (glibc would unmap them), so a
    repeated call reuses warm pages instead of faulting in hundreds of MB again."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 40))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 40))
    return env


def exec_of(out, plan: Plan, backend: str, wall: float, reports: dict[int, dict]) -> Execution:
    return execution_from_reports(out, plan, "processes", backend, wall, {r: v["traffic"] for r, v in reports.items()})
