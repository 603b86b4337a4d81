"""How worker processes start: forked from a warm fork server, or as fresh interpreters.

A worker is an interpreter that imports torch before it can do anything: 1.5-2 s of CPU
per worker, paid again by every pool and every replacement of a lost worker.  The fork
server is one process per master, started with its first pool, that has imported the
libraries a worker needs once; it forks each worker, which starts in a fraction of that.

Ownership is what a plain spawn gives (docs/architecture.md, "Worker processes"):

- Each worker is the master's own child.  The server double-forks it while the master is a
  child subreaper (prctl(2), PR_SET_CHILD_SUBREAPER, set only around the request), so the
  worker is re-parented to the master: the master waits for it, kills it and reads its exit
  status like any child's, and no helper process sits between them.
- The kernel kills a worker when the master dies: the worker sets PR_SET_PDEATHSIG once it
  sees the master as its parent (the kernel hands it to the master's first live thread).
  The death signal follows the parent *thread*, so the server, and a spawned worker, are
  started from a thread kept for the life of the process, never from a caller's thread
  that may end first (a pool made in a thread would die with it).
- The server never computes: a process whose thread pools ran (OpenMP) cannot be forked
  safely, so it only imports modules that start no pool, and a worker imports the rest.
- A worker gets what a spawned one would: the master's environment, working directory,
  stdout and stderr at the moment of the request (the descriptors travel with it,
  SCM_RIGHTS), and its secret through a pipe on its stdin (sealed.py).  Variables that
  libraries read when imported (OMP_*, MKL_*, MALLOC_*, ...) are those the server started
  with, so a request whose values differ gets a new server.

HALOCONV_FORKSERVER=0 starts every worker as a fresh interpreter; so does any host where
the server cannot work (not Linux, or a worker not re-parented to the master).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

from haloconv.engines.host import FORK_SERVER_NAME, WORKER_NAME, die_with_parent, set_name

log = logging.getLogger(__name__)

ENV = "HALOCONV_FORKSERVER"
# what a worker needs, imported once by the server: none of them starts a thread pool on import
PRELOAD = ("numpy", "torch", "torch.distributed", "scipy.ndimage", "scipy.fft", "cv2",
           "haloconv.engines.spmd.comm", "haloconv.engines.processes.sealed", "haloconv.tiling.plan")
# variables read when a library is imported or its runtime starts: a server started with
# other values would hand them to its workers, so they key the server
IMPORT_TIME = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "MALLOC_", "TORCH", "PYTORCH", "GLOO_", "NCCL_",
               "CUDA", "LD_", "PYTHON", "OPENCV_", "HALOCONV_MKL")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 1, 36, 37
REPARENT_S = 10.0  # how long a forked worker waits to see the master as its parent


def start(module: str, function: str, args: tuple, env: dict[str, str], secret: bytes):
    """A worker process running ``module.function(*args)`` with environment ``env`` and
    ``secret`` on its stdin: forked by the server where it can be, else a fresh
    interpreter.  Returns a handle with Popen's pid, poll(), wait(timeout) and kill()."""
    if os.environ.get(ENV, "1") != "0" and _usable():
        try:
            return _SERVERS.fork(module, function, args, env, secret)
        except _Unusable as e:  # this host cannot: every later worker is spawned
            log.warning("haloconv: workers start as fresh interpreters (%s)", e)
            _disable()
    return _spawn(module, function, args, env, secret)


def server_pids() -> list[int]:
    """The fork servers this process runs (a test's count of workers leaves them out)."""
    return _SERVERS.pids()


# -- the plain spawn (from the keeper thread too: a pool outlives the thread that made it) ----------
def _spawn(module: str, function: str, args: tuple, env: dict[str, str], secret: bytes) -> subprocess.Popen:
    # bound to this process's life before anything slow (importing torch) runs
    code = (f"from haloconv.engines.host import die_with_parent; die_with_parent({os.getpid()}); "
            f"from {module} import {function}; {function}{tuple(args)!r}")
    proc = _KEEPER.popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env)
    try:  # the secret goes through the pipe, seen by no other process (sealed.py)
        proc.stdin.write(secret)
        proc.stdin.close()
    except OSError:  # the worker is already gone: found dead by the wait for it
        pass
    return proc


# -- the master's side ----------------------------------------------------------------------------
class _Unusable(RuntimeError):
    """This host cannot fork workers from a server (workers are spawned instead)."""


_DISABLED = False


def _disable() -> None:
    global _DISABLED
    _DISABLED = True


def _usable() -> bool:
    return not _DISABLED and sys.platform == "linux" and hasattr(socket, "send_fds")


class Forked:
    """A worker forked by the server, re-parented to this process: Popen's pid, returncode,
    poll(), wait(timeout) and kill(), by waitpid(2) on this process's own child."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else's wait(): gone all the same
                self.returncode = -signal.SIGKILL
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.poll() is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    self.returncode = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.returncode = -signal.SIGKILL
            return self.returncode
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Server:
    """One running fork server: its process, its end of the socket, the variables it started with."""

    def __init__(self, key: tuple, env: dict[str, str]):
        self.key = key
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cmd = [sys.executable, "-c", f"from haloconv.engines.processes.forkserver import serve; "
                   f"serve({theirs.fileno()}, {os.getpid()})"]
            self.proc = _KEEPER.popen(cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock = mine

    def fork(self, request: dict) -> int:
        """The pid of the worker the server forked for ``request`` (now this process's child)."""
        fds = [_open_or_null(1), _open_or_null(2)]  # what a spawned worker would inherit
        try:
            _send(self.sock, request, [fd for fd, _ in fds])
        finally:
            for fd, opened in fds:
                if opened:
                    os.close(fd)
        kind, value = _receive(self.sock)[0]
        if kind != "ok":
            raise _Unusable(f"the fork server failed: {value}")
        return value

    def close(self) -> None:
        self.sock.close()  # the server exits at the end of its socket
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a server that ignores it
            self.proc.kill()
            self.proc.wait()


class _Servers:
    """This process's fork server (one at a time), started on first use and replaced when it
    died or the import-time variables of a request differ from those it started with."""

    def __init__(self):
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def pids(self) -> list[int]:
        with self._lock:
            s = self._server
            return [s.proc.pid] if s is not None and s.proc.poll() is None else []

    def fork(self, module: str, function: str, args: tuple, env: dict[str, str], secret: bytes) -> Forked:
        key = (sys.executable, *sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME)))
        request = {"module": module, "function": function, "args": tuple(args), "env": env, "cwd": os.getcwd(),
                   "master": os.getpid(), "secret": secret}
        with self._lock:
            for attempt in (1, 2):  # a server that died since its last request is started again once
                if self._server is not None and (self._server.key != key or self._server.proc.poll() is not None):
                    self._server.close()
                    self._server = None
                if self._server is None:
                    self._server = _Server(key, env)
                try:
                    with _subreaper():
                        pid = self._server.fork(request)
                    break
                except (OSError, EOFError) as e:  # the server is gone (killed, or died starting)
                    self._server.close()
                    self._server = None
                    if attempt == 2:
                        raise _Unusable(f"the fork server did not answer: {e}") from e
        worker = Forked(pid)
        try:  # raises unless the worker is this process's child (a worker that exited is reaped)
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            os.kill(pid, signal.SIGKILL)
            raise _Unusable(f"worker {pid} was not re-parented to this process") from None
        if done:
            worker.returncode = os.waitstatus_to_exitcode(status)
        return worker


class _Keeper:
    """A thread that lives as long as this process and starts the fork server: the server's
    death signal, and its workers', follow the parent thread, which must not end first."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: queue.Queue | None = None

    def popen(self, cmd, **kw) -> subprocess.Popen:
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(target=self._serve, args=(self._queue,), name="haloconv-forkserver",
                                 daemon=True).start()
            done: queue.Queue = queue.Queue()
            self._queue.put((cmd, kw, done))
            ok, value = done.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _serve(requests: queue.Queue) -> None:
        while True:
            cmd, kw, done = requests.get()
            try:
                done.put((True, subprocess.Popen(cmd, **kw)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                done.put((False, e))


_KEEPER = _Keeper()
_SERVERS = _Servers()


class _subreaper:
    """This process is a child subreaper while a worker is forked (orphans of its
    descendants come to it, not to init): the worker the server double-forks becomes its
    child.  The previous setting comes back after, so other orphans are not kept."""

    def __enter__(self):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        was = ctypes.c_int(0)
        self.libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was))
        self.was = was.value
        if self.libc.prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
            raise _Unusable(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
        return self

    def __exit__(self, *exc):
        self.libc.prctl(PR_SET_CHILD_SUBREAPER, self.was)


def _open_or_null(fd: int) -> tuple[int, bool]:
    """``fd`` if this process has it open, else /dev/null opened for the worker (and whether
    it was opened here, to close after the request)."""
    try:
        os.fstat(fd)
        return fd, False
    except OSError:
        return os.open(os.devnull, os.O_RDWR), True


# -- messages: a length, the pickled value, and descriptors with the first bytes ------------------
def _send(sock: socket.socket, value, fds=()) -> None:
    data = pickle.dumps(value)
    head = struct.pack("!Q", len(data))
    socket.send_fds(sock, [head], list(fds)) if fds else sock.sendall(head)
    sock.sendall(data)


def _receive(sock: socket.socket) -> tuple[object, list[int]]:
    head, fds, _, _ = socket.recv_fds(sock, 8, 4)
    while len(head) < 8:
        if not head:
            raise EOFError("the socket closed")
        more = sock.recv(8 - len(head))
        if not more:
            raise EOFError("the socket closed")
        head += more
    (n,) = struct.unpack("!Q", head)
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the socket closed")
        data += chunk
    return pickle.loads(data), fds


# -- the server's side ----------------------------------------------------------------------------
def serve(fd: int, master: int) -> None:
    """The fork server's loop (its process is started by _Server): preload, then fork one
    worker per request until the master closes the socket or dies."""
    die_with_parent(master)
    set_name(FORK_SERVER_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the workers and the master, not this
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library: the worker imports what it needs
            pass
    sock = socket.socket(fileno=fd)
    while True:
        try:
            request, fds = _receive(sock)
        except (EOFError, OSError):
            os._exit(0)
        try:
            reply = ("ok", _fork_worker(request, fds, sock))
        except Exception as e:  # noqa: BLE001 - answered to the master
            reply = ("error", f"{type(e).__name__}: {e}")
        finally:
            for f in fds:
                os.close(f)
        _send(sock, reply)


def _fork_worker(request: dict, fds: list[int], sock: socket.socket) -> int:
    """Fork an intermediate process that forks the worker and exits at once, so the worker
    is re-parented to the master (a subreaper during the request); returns the worker's pid."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            middle_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_worker(request, fds, sock, middle_pid)  # never returns
            os.write(w, struct.pack("!q", pid))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while len(data) < 8:
            chunk = os.read(r, 8 - len(data))
            if not chunk:
                raise RuntimeError("the intermediate process could not fork the worker")
            data += chunk
    finally:
        os.close(r)
        os.waitpid(middle, 0)  # once it is reaped, the worker has its new parent
    return struct.unpack("!q", data)[0]


def _become_worker(request: dict, fds: list[int], sock: socket.socket, middle: int) -> None:
    """In the forked worker: wait to be the master's child, bind to its life, take its
    stdout/stderr, environment and working directory, the secret on stdin; run the target."""
    code = 1
    try:
        sock.close()
        master = request["master"]
        deadline = time.monotonic() + REPARENT_S
        while os.getppid() == middle and time.monotonic() < deadline:
            time.sleep(0.0002)
        if os.getppid() != master:  # not re-parented to the master: it sees this pid is not its child
            os._exit(1)
        die_with_parent(master)
        set_name(WORKER_NAME)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for f in fds:
            os.close(f)
        r, w = os.pipe()
        os.write(w, request["secret"])
        os.close(w)
        os.dup2(r, 0)
        os.close(r)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        target = getattr(importlib.import_module(request["module"]), request["function"])
        target(*request["args"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker's last words, as an interpreter would print them
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)
