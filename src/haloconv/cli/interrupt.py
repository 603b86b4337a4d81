"""Ctrl-C on the command line: said at once, and the command gone within STOP_GRACE_S.

Python raises KeyboardInterrupt only when the main thread next runs Python code, which a
tile's compute (one long OpenCV or torch call) may not do for many seconds.  So a thread
watches for SIGINT through ``signal.set_wakeup_fd`` (the interpreter's C handler writes
the signal's number there at once, whatever the main thread is doing): it says
"interrupted", gives the main thread STOP_GRACE_S to unwind cleanly (stop its worker
processes, close its files), and otherwise kills this process's children and exits
with 130 itself.  Nothing is lost that a run keeps: a streamed run's journal counts only
tiles whose output is written (``--resume`` goes on from it), and every other output is
written beside its name and renamed into place, so none is left half written.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

STOP_GRACE_S = 0.5
EXIT_CODE = 130  # 128 + SIGINT, as shells report a command Ctrl-C stopped

# what an interrupted command says, once (a streamed run: how far it got, and how to go on)
_describe: Callable[[], str] | None = None


@contextmanager
def describing(describe: Callable[[], str]):
    """While inside, Ctrl-C says ``describe()`` (read at that moment) instead of 'interrupted'."""
    global _describe
    previous, _describe = _describe, describe
    try:
        yield
    except KeyboardInterrupt:
        previous = describe  # the command is leaving: main says it, from the journal as it is now
        raise
    finally:
        _describe = previous


def message() -> str:
    """The one line an interrupted command prints."""
    text = "interrupted"
    if _describe is not None:
        try:
            text = _describe() or text
        except Exception:  # noqa: BLE001 - a line about the interruption never fails it
            pass
    return f"haloconv: {text}"


class Guard:
    """Installed around a command run from the command line (in the main thread)."""

    def __init__(self):
        self.said = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        # a pipe the signal's number is written to (a socket pair would do, at socket's import)
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._writer, False)
        self._previous = signal.set_wakeup_fd(self._writer, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="haloconv-interrupt", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._reader, 64)
            except OSError:
                return
            if not data or self._done.is_set():
                return
            if signal.SIGINT not in data:
                continue
            self.say()
            if self._done.wait(STOP_GRACE_S):
                return
            _stop_now()

    def say(self) -> None:
        """Print the interruption's line, once: this thread and the main thread's unwinding
        (cli/main.py) both call it, in either order."""
        with self._lock:
            if self.said:
                return
            self.said = True
        print(message(), file=sys.stderr, flush=True)

    def close(self) -> None:
        self._done.set()
        signal.set_wakeup_fd(self._previous)
        os.close(self._writer)
        self._thread.join(timeout=1.0)
        os.close(self._reader)


def _stop_now() -> None:
    """The main thread is still inside a compute: stop the worker processes and leave."""
    from haloconv.engines.host import children

    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.stderr.flush()
    os._exit(EXIT_CODE)
