"""Engine 'processes': worker processes in a torch.distributed gloo group on 127.0.0.1.

The calling process is rank 0, the master: it holds the input, computes tile 0, sends the
other workers their filters and owned boxes, and gathers their outputs.  Workers swap
halos with their neighbours point to point (or get whole windows from the master, when
the Plan says exchange='master').  A LocalCluster keeps its workers between calls, so
the start-up (mostly importing torch) is paid once.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from haloconv.compute import kernels, methods
from haloconv.engines import spmd
from haloconv.engines.base import Execution, WorkerStats, assemble_window, execution_from_reports
from haloconv.engines.comm import Comm
from haloconv.engines.host import default_workers
from haloconv.engines.worker import HOST, WorkerError, group_of, keep_heap, shutdown
from haloconv.planning.partition import replanned
from haloconv.planning.plan import Plan, make_plan
from haloconv.planning.spec import ConvSpec


class LocalCluster:
    """A pool of worker processes on this machine, in one gloo process group.

    >>> with LocalCluster(workers=2) as cluster:          # doctest: +SKIP
    ...     y = haloconv.conv(x, w, padding=1, engine=cluster)

    ``timeout`` (seconds) bounds every wait on a worker: a worker that dies or hangs makes
    the call raise WorkerError within it, and the pool shuts down.  ``throttle``: {rank:
    factor} makes those processes (rank 0: the caller) that many times slower in every
    compute — a stand-in for unequal machines in benchmarks and tests.
    """

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
        self._seq = 0
        self._generation = 0
        self._next_id = 0
        self._shards: dict[int, torch.Tensor | None] = {}
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
        """Start worker processes for ``ranks``: plain interpreters running
        haloconv.engines.worker (nothing of the caller's __main__ is re-imported, so scripts
        and notebooks need no main guard); they take commands from number self._seq on and
        join the process group of this generation."""
        for rank in ranks:
            args = (rank, self.workers, self._store.port, self.timeout, self.threads_per_worker, self.start_timeout,
                    self._seq, self._generation)
            cmd = [sys.executable, "-c", f"from haloconv.engines.worker import worker_main; worker_main{args!r}"]
            self._procs[rank] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=_worker_env())

    def _join(self) -> None:
        """Wait until every worker of this generation is ready, then form the group with them."""
        deadline = time.monotonic() + self.start_timeout
        waiting = set(range(1, self.workers))
        while waiting:
            waiting = {r for r in waiting if not self._store.check([f"haloconv/ready/{r}/{self._generation}"])}
            dead = sorted(r for r, p in self._procs.items() if p.poll() is not None)
            if dead or time.monotonic() > deadline:
                why = (f"worker(s) {dead} exited during start-up{self._exit_reasons(dead)}" if dead
                       else f"not ready within {self.start_timeout:g} s")
                self._kill()
                raise WorkerError(f"LocalCluster could not start: {why}")
            if waiting:
                time.sleep(0.02)
        self._comm = Comm(group_of(self._store, 0, self.workers, self.timeout, self._generation), 0, self.workers)

    def _exit_reasons(self, ranks) -> str:
        """The tracebacks that workers ``ranks`` left in the store before exiting, if any (a
        worker that fails outside a step, e.g. forming a group, posts one and exits)."""
        texts = []
        for r in ranks:
            key = f"haloconv/error/{r}"
            if self._store.check([key]):
                texts.append(f"\nworker {r}: {self._store.get(key).decode()}")
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

    def __enter__(self) -> LocalCluster:
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
            self._store.set(f"haloconv/cmd/{rank}/{seq}", pickle.dumps(c))
        return seq

    def _require_alive(self) -> None:
        if self._comm is None:
            raise WorkerError("the cluster is closed (a worker failed, or close() was called)")

    # -- collective steps: the master's half of worker._run -----------------------------------
    def _step(self, cmd: dict, master_side) -> tuple[object, dict[int, dict]]:
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
        failure = self._fault(errors, dead, hung, master_error)
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
                if self._store.check([key]):
                    replies[rank] = pickle.loads(self._store.get(key))
                    self._store.delete_key(key)
                    failed = failed or "error" in replies[rank]
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

    def _fault(self, errors: dict[int, str], dead: list[int], hung: list[int],
               master_error: BaseException | None) -> WorkerError | None:
        """The WorkerError a failed step raises (None: the master's own error is the cause)."""
        # a worker that raised first; the others failed because it closed its connections
        first = {r: e for r, e in errors.items() if not _broken_link(e)}
        if master_error is not None and not (first or dead or hung):
            return None
        what = []
        if dead:
            what.append(f"worker(s) {dead} exited{self._exit_reasons(dead)}")
        if hung:
            what.append(f"worker(s) {hung} did not answer within the timeout of {self.timeout:g} s (hung, or "
                        "waiting on one that hung)")
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
        self._shards.clear()
        self._join()  # raises WorkerError (and closes the cluster) if it cannot
        cause = "raised" if failure is None or getattr(failure, "raised", False) else "lost"
        self.restarts.append(f"generation {self._generation}: replaced {lost or 'no process'} ({cause})")

    def retrying(self, on_failure: str, call):
        """``call()`` on this cluster; when it fails because a worker was lost (died or hung;
        the cluster healed), with on_failure='retry' it runs again, up to once per worker.
        An exception raised in a worker is raised at once (it would be raised again)."""
        if on_failure not in ("retry", "fail"):
            raise ValueError(f"on_failure must be 'retry' or 'fail', got {on_failure!r}")
        failures: list[str] = []
        while True:
            try:
                result = call()
            except WorkerError as e:
                if on_failure == "fail" or e.raised or not self.alive or len(failures) >= self.workers:
                    raise
                failures.append(str(e))
                continue
            if isinstance(result, Execution):
                result.failures = failures
            return result

    def _check(self, plan: Plan) -> None:
        if plan.workers > self.workers:
            raise ValueError(f"plan needs {plan.workers} workers but the cluster has {self.workers}")

    def run(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Execution:
        """End to end: the master scatters, workers exchange halos and compute, the master gathers."""
        self._check(plan)
        if x.device.type != "cpu":
            raise ValueError(f"the processes engine takes CPU tensors, got x on {x.device}")
        t_start = time.perf_counter()
        backend = kernels.select_backend(plan.spec, x, weight, bias)

        def master(comm: Comm) -> torch.Tensor:
            w, b = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
            in_flight: list = []
            if plan.exchange == "master":  # the master computes while the windows travel
                window = spmd.scatter_windows(comm, plan, x, pending=in_flight)
            else:
                window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, x))
            out = torch.empty(plan.spec.output_shape, dtype=x.dtype)
            posted = spmd.post_gather(comm, plan, out)  # outputs land in `out` as workers finish
            y0 = spmd.compute(comm, plan, window, w, b, backend)
            spmd.finish_gather(comm, plan, posted, out, y0)
            with comm.phase("scatter"):
                for works, _ in in_flight:
                    comm.wait(works)
            return out

        cmd = {"op": "conv", "plan": plan, "dtype": x.dtype, "backend": kernels.backend_name(backend)}
        out, reports = self._step(cmd, master)
        return _exec(out, plan, methods.label(plan.backend, backend), time.perf_counter() - t_start, reports)

    def backward(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 grad: torch.Tensor, needs: tuple[bool, bool, bool]) -> tuple:
        """Gradients (x, weight, bias; None where ``needs`` says not) of ``plan``'s conv from
        ``grad``, that of its output: every worker gets its window again (scatter, halo
        exchange) and its output box of ``grad``, computes its tile's gradients, and sends
        them to the master, who adds them up in rank order."""
        self._check(plan)
        spec = plan.spec
        needs = (bool(needs[0]), bool(needs[1]), bool(needs[2]) and bias is not None)
        whole = (x.new_zeros(spec.input_shape) if needs[0] else None,
                 x.new_zeros(spec.weight_shape) if needs[1] else None,
                 x.new_zeros(spec.out_channels) if needs[2] else None)

        def master(comm: Comm):
            w, _ = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
            window = spmd.halo_exchange(comm, plan, spmd.scatter(comm, plan, x))
            grads = spmd.tile_backward(comm, plan, window, w, spmd.scatter_grad(comm, plan, grad), needs)
            spmd.reduce_grads(comm, plan, grads, whole)

        self._step({"op": "backward", "plan": plan, "dtype": x.dtype, "needs": needs}, master)
        return whole

    def pull(self, todo: list[int], feed, local) -> dict[int, int]:
        """Hand out the tiles ``todo`` to whichever process is free: a feeder thread per
        worker calls ``feed(rank, index, keep)`` (returns once the worker finished the tile;
        index -1 tells it to stop), the master calls ``local(index)`` for the tiles it takes
        itself.  Returns tiles done per rank; the first error stops the hand-out and is raised."""
        lock = threading.Lock()
        errors: list[BaseException] = []
        done: dict[int, int] = {}

        def next_index() -> int:
            with lock:
                return todo.pop(0) if todo and not errors else -1

        def count(rank: int) -> None:
            with lock:
                done[rank] = done.get(rank, 0) + 1

        def feeder(rank: int) -> None:
            try:
                while True:
                    keep: list = []  # buffers in flight, alive until the sends complete
                    index = next_index()
                    feed(rank, index, keep)
                    if index < 0:
                        return
                    count(rank)
            except BaseException as e:  # noqa: BLE001 - re-raised by the master below
                errors.append(e)

        feeders = [threading.Thread(target=feeder, args=(r,), daemon=True) for r in range(1, self.workers)]
        for t in feeders:
            t.start()
        try:
            while (index := next_index()) >= 0:  # the master computes tiles while the workers do
                local(index)
                count(0)
        except BaseException as e:
            errors.append(e)
        for t in feeders:
            t.join()
        if errors:
            raise errors[0]
        return done

    def run_dynamic(self, plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                    throttle: dict[int, float] | None = None, out: torch.Tensor | None = None,
                    finished: set[int] | None = None) -> Execution:
        """Master/worker with dynamic scheduling, for unequal workers: the plan's tiles (make
        many more than workers) are handed out one at a time to whichever worker is free; the
        master computes tiles too while no worker is waiting.  Exact like any plan.

        ``throttle``: {rank: factor} for this call (see LocalCluster).  ``out`` and
        ``finished`` (tile indices): go on with a run that a failure stopped — only the tiles
        not in ``finished`` are computed, into ``out``; ``finished`` grows as tiles land."""
        if plan.splits[1] != 1:
            raise ValueError("dynamic scheduling hands out tiles of the whole filter bank; use a partition "
                             "without a channels split")
        if x.device.type != "cpu":
            raise ValueError(f"the processes engine takes CPU tensors, got x on {x.device}")
        t_start = time.perf_counter()
        backend = kernels.select_backend(plan.spec, x, weight, bias)
        done: dict[int, int] = {}
        finished = set() if finished is None else finished
        out = torch.empty(plan.spec.output_shape, dtype=x.dtype) if out is None else out

        def master(comm: Comm) -> torch.Tensor:
            w, b = weight, bias
            xc = x.contiguous()
            armed: set[int] = set()

            def feed(rank: int, index: int, keep: list) -> None:
                if rank not in armed:  # each worker its weights in its own feeder: a stalled one holds up no other
                    armed.add(rank)
                    spmd.broadcast_weights(comm, plan, weight, bias, x.dtype, to=(rank,))
                works, buf = spmd.hand_out(comm, plan, xc, index, rank, out, keep)
                comm.wait(works)
                if buf is not None:
                    out[plan.tiles[index].out.slices()] = buf
                if index >= 0:
                    finished.add(index)

            def local(index: int) -> None:
                tile = plan.tiles[index]
                out[tile.out.slices()] = spmd.compute(comm, plan, assemble_window(xc, tile), w, b, backend, tile)
                finished.add(index)

            done.update(self.pull([i for i in range(len(plan.tiles)) if i not in finished], feed, local))
            return out

        cmd = {"op": "dynamic", "plan": plan, "dtype": x.dtype, "backend": kernels.backend_name(backend),
               "throttle": check_throttle(throttle)}
        out, reports = self._step(cmd, master)
        stats = [WorkerStats(r, (), 0, {p: v["seconds"] for p, v in rep["traffic"].items() if p != "control"},
                             traffic=rep["traffic"]) for r, rep in sorted(reports.items())]
        ex = Execution(out, plan, "processes-dynamic", methods.label(plan.backend, backend),
                       time.perf_counter() - t_start, stats)
        ex.tiles_done = done  # rank -> tiles it computed
        return ex

    def speeds(self, spec: ConvSpec, dtype: torch.dtype = torch.float32, backend: str = "torch",
               repeat: int = 3) -> list[float]:
        """Relative compute speed of every process (1.0 = the fastest), measured by all of
        them at once on the same small problem like ``spec`` (about a 1/16 row band of it):
        weights for a static split over unequal workers (``worker_weights``)."""
        probe = _probe_spec(spec, self.workers)
        tb = _caller_backend(probe, dtype)
        cmd = {"op": "probe", "spec": probe, "dtype": dtype, "backend": backend, "repeat": repeat, "torch_backend": tb}
        (seconds, _), reports = self._step(cmd, lambda comm: spmd.probe(comm, probe, dtype, backend, repeat,
                                                                        torch_backend=tb))
        times = [seconds] + [reports[r]["probe_seconds"] for r in range(1, self.workers)]
        return [min(times) / t for t in times]

    def throughput(self, spec: ConvSpec, busy: int, repeat: int, dtype: torch.dtype = torch.float32,
                   backend: str = "torch") -> float:
        """Seconds the first ``busy`` processes (the master among them) take to each compute
        ``spec`` ``repeat`` times back to back, all at once (the slowest one): how the
        cores are shared by that many busy processes (calibrate's concurrency curve)."""
        if isinstance(busy, bool) or not isinstance(busy, int) or not 1 <= busy <= self.workers:
            raise ValueError(f"busy must be an int from 1 to {self.workers}, got {busy!r}")
        tb = _caller_backend(spec, dtype)
        cmd = {"op": "probe", "spec": spec, "dtype": dtype, "backend": backend, "repeat": repeat, "busy": busy,
               "torch_backend": tb}
        (_, total), reports = self._step(cmd, lambda comm: spmd.probe(comm, spec, dtype, backend, repeat, busy, tb))
        return max(total, *(reports[r]["probe_total"] for r in range(1, self.workers)))

    # -- resident shards ------------------------------------------------------------------------
    def scatter(self, x: torch.Tensor, plan: Plan) -> Sharded:
        """Send every worker its owned box of ``x``; the shards stay in the workers."""
        self._check(plan)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != plan.spec.input_shape or x.device.type != "cpu":
            raise ValueError(f"x must be a CPU tensor of shape {plan.spec.input_shape}")
        sid = self._new_id()
        shard, reports = self._step({"op": "scatter", "plan": plan, "id": sid},
                                    lambda comm: spmd.scatter(comm, plan, x))
        self._shards[sid] = shard
        boxes = tuple(t.owned for t in plan.tiles)
        return Sharded(self, sid, plan.spec.input_shape, boxes, x.dtype, _exec(None, plan, "", 0.0, reports))

    def conv(self, x: Sharded, weight: torch.Tensor, bias: torch.Tensor | None = None, *, plan: Plan) -> Sharded:
        """One layer on resident shards: halo exchange and compute only; the output stays too.

        ``plan`` must own exactly the boxes ``x`` holds (ownership='even' plans of one split
        chain layer to layer)."""
        self._check(plan)
        self._live(x)
        owned = tuple(t.owned for t in plan.tiles)
        if owned != x.boxes:
            raise ValueError(
                "plan's owned input boxes differ from the boxes the shards hold; make both layers' plans "
                "with the same partition and ownership='even'"
            )
        backend = kernels.select_backend(plan.spec, torch.empty(0, dtype=x.dtype), weight, bias)
        sid = self._new_id()

        def master(comm: Comm):
            w, b = spmd.distribute_weights(comm, plan, weight, bias, x.dtype)
            window = spmd.halo_exchange(comm, plan, self._shards[x.id])
            return spmd.compute(comm, plan, window, w, b, backend)

        cmd = {"op": "layer", "plan": plan, "dtype": x.dtype, "backend": kernels.backend_name(backend),
               "src": x.id, "dst": sid}
        t0 = time.perf_counter()
        shard, reports = self._step(cmd, master)
        self._shards[sid] = shard
        boxes = tuple(t.out for t in plan.tiles)
        return Sharded(self, sid, plan.spec.output_shape, boxes, x.dtype,
                       _exec(None, plan, methods.label(plan.backend, backend), time.perf_counter() - t0, reports), plan)

    def gather(self, x: Sharded) -> torch.Tensor:
        """The full tensor the shards make up, on the master."""
        self._live(x)
        if x.plan is None:
            raise ValueError("gather a layer's output (shards made by cluster.conv)")
        plan = x.plan
        out, _ = self._step({"op": "gather", "plan": plan, "id": x.id},
                            lambda comm: spmd.gather(comm, plan, self._shards[x.id],
                                                     out=torch.empty(x.shape, dtype=x.dtype)))
        return out

    def free(self, *shards: Sharded) -> None:
        for s in shards:
            if s.cluster is not self:
                raise ValueError("free() takes shards of this cluster")
        ids = [s.id for s in shards]
        for i in ids:
            self._shards.pop(i, None)
        self._step({"op": "free", "ids": ids}, lambda comm: None)

    def _live(self, x: Sharded) -> None:
        # checked before any command is posted: a refused call leaves the workers in step
        if not isinstance(x, Sharded) or x.cluster is not self or x.id not in self._shards:
            raise ValueError("x is not a live shard set of this cluster (freed, or from another cluster)")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id


class Sharded:
    """A tensor held as shards in a LocalCluster's processes (boxes: one per rank)."""

    def __init__(self, cluster, sid, shape, boxes, dtype, execution, plan=None):
        self.cluster, self.id, self.shape, self.boxes, self.dtype = cluster, sid, tuple(shape), boxes, dtype
        self.execution = execution  # traffic and time of the step that made it
        self.plan = plan

    def __repr__(self) -> str:
        return f"Sharded(shape={list(self.shape)}, shards={len(self.boxes)}, dtype={self.dtype})"


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


def _exec(out, plan: Plan, backend: str, wall: float, reports: dict[int, dict]) -> Execution:
    return execution_from_reports(out, plan, "processes", backend, wall, {r: v["traffic"] for r, v in reports.items()})


SCHEDULES = ("static", "dynamic")


def run(plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
        timeout: float = 60.0, on_failure: str = "retry", log=None, schedule: str = "static",
        tiles: int | None = None, measure_speeds: bool = False,
        throttle: dict[int, float] | None = None) -> Execution:
    """engine='processes': start a LocalCluster for this one call, then stop it.

    ``schedule='static'``: each worker computes its tile of ``plan``; with
    ``measure_speeds`` the processes first time the same small problem
    (LocalCluster.speeds) and the plan is split in proportion to their speeds.
    ``schedule='dynamic'``: the job is cut into ``tiles`` (default 4 per worker) tiles of
    the plan's kind of partition, pulled by whichever process is free.
    ``on_failure='retry'``: when a worker dies or hangs mid-run, the job goes on with the
    workers left (one fewer per lost worker) on a fresh cluster — dynamic: only the tiles
    not finished yet (the others are kept); static: the plan re-made with the same
    partition, run again.  Exact either way.  ``'fail'``: raise WorkerError at once.
    ``throttle``: see LocalCluster (benchmarks and tests)."""
    if on_failure not in ("retry", "fail"):
        raise ValueError(f"on_failure must be 'retry' or 'fail', got {on_failure!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if tiles is not None and (isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1):
        raise ValueError(f"tiles must be an int >= 1, got {tiles!r}")
    if schedule == "dynamic":
        if plan.splits[1] != 1:
            raise ValueError("schedule='dynamic' hands out tiles of the whole filter bank; use a partition "
                             "without a channels split")
        fine = make_plan(plan.spec, replanned(plan.partition), tiles or 4 * plan.workers, backend=plan.backend)
        out = torch.empty(plan.spec.output_shape, dtype=x.dtype)
        finished: set[int] = set()

        def body(cluster: LocalCluster, plan: Plan) -> Execution:
            return cluster.run_dynamic(fine, x, weight, bias, out=out, finished=finished)

        def go_on(plan: Plan, survivors: int) -> tuple[Plan, str]:
            return plan, (f"going on with {survivors} process(es): {len(fine.tiles) - len(finished)} of "
                          f"{len(fine.tiles)} tiles left, the finished ones kept")
    else:
        def body(cluster: LocalCluster, plan: Plan) -> Execution:
            if measure_speeds:
                speeds = cluster.speeds(plan.spec, x.dtype, plan.backend)
                if log is not None:
                    log("measured speeds (1 = fastest): " + ", ".join(f"{v:.2f}" for v in speeds))
                plan = _replan(plan, plan.workers, speeds)
            return cluster.run(plan, x, weight, bias)

        go_on = _go_on_replanned
    ex, failures = _on_fresh_clusters(plan, timeout, on_failure, log, throttle, body, go_on)
    ex.failures = failures
    return ex


def run_backward(plan: Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 grad: torch.Tensor, needs: tuple[bool, bool, bool], *, timeout: float = 60.0,
                 on_failure: str = "retry", log=None) -> tuple:
    """The gradients of engine='processes' run of ``plan`` (LocalCluster.backward), on a
    LocalCluster started for this call; a lost worker is handled as in run (static)."""
    grads, _ = _on_fresh_clusters(plan, timeout, on_failure, log, None,
                                  lambda cluster, p: cluster.backward(p, x, weight, bias, grad, needs),
                                  _go_on_replanned)
    return grads


def _go_on_replanned(plan: Plan, survivors: int) -> tuple[Plan, str]:
    return (_replan(plan, survivors),
            f"re-planning the whole job on {survivors} worker(s) and running it again")


def _on_fresh_clusters(plan: Plan, timeout: float, on_failure: str, log, throttle, body, go_on):
    """(body(cluster, plan), failures survived): ``body`` on a LocalCluster of the plan's
    workers started for it.  A lost worker (on_failure='retry'): ``go_on(plan, survivors)``
    gives the plan to go on with and what that means, and ``body`` runs again on a fresh
    cluster of the survivors.  'fail': WorkerError at once."""
    if on_failure not in ("retry", "fail"):
        raise ValueError(f"on_failure must be 'retry' or 'fail', got {on_failure!r}")
    failures: list[str] = []
    workers = plan.workers
    while True:
        try:
            with LocalCluster(workers, timeout=timeout, throttle=throttle, heal=False) as cluster:
                if log is not None:
                    log(f"started {workers} worker processes in {cluster.startup_seconds:.2f}s")
                return body(cluster, plan), failures
        except WorkerError as e:
            survivors = workers - max(1, len(e.dead))
            if on_failure == "fail" or survivors < 1 or e.raised:
                raise
            failures.append(str(e))
            plan, what = go_on(plan, survivors)
            if log is not None:
                log(f"haloconv: {e}\n{what}")
            workers = survivors


def _replan(plan: Plan, workers: int, weights: list[float] | None = None) -> Plan:
    """The same job with the same kind of partition on ``workers`` workers (split in
    proportion to ``weights`` when given)."""
    if weights is None and plan.weights is not None:
        weights = list(plan.weights[:workers])
    return make_plan(plan.spec, replanned(plan.partition), workers, weights, plan.ownership, plan.exchange,
                     plan.pipeline, plan.backend)


def _caller_backend(spec: ConvSpec, dtype: torch.dtype) -> str:
    """The torch conv backend a run of ``spec`` computes its tiles with: selected here, at the
    caller's thread count, as LocalCluster.run does."""
    return kernels.backend_name(kernels.select_backend(spec, torch.empty(0, dtype=dtype),
                                                       torch.empty(0, dtype=dtype), None))


def _probe_spec(spec: ConvSpec, workers: int) -> ConvSpec:
    """``spec`` on one sample and a band of its first spatial axis: about 1/16 of the work
    of one worker's share, and at least a few kernel spans."""
    axis = spec.axis(0)
    rows = max(4 * axis.span, spec.spatial[0] // (16 * workers))
    shape = (1, spec.in_channels, min(rows, spec.spatial[0]), *spec.spatial[1:])
    return dataclasses.replace(spec, input_shape=shape)
