"""What the command line shows, and where (docs/architecture.md, "The command line's output").

- stdout carries results: a short summary by default, the plan and per-worker tables with
  ``-v``; with ``--report -`` it carries the report's JSON alone (the lines for people go to
  stderr then).  stderr carries warnings, errors and progress.
- ``-q``: errors only.  ``-v``: also the plan, the tables and what the library logs at
  INFO (``logging``, logger ``haloconv``); ``-vv``: DEBUG too.
- On a terminal, tables are drawn by rich and a run that has taken over PROGRESS_AFTER_S
  shows a progress bar (tiles, elapsed, time left); elsewhere (a pipe, a file, CI) tables are
  plain text and progress is a line at every tenth of the tiles, so a log stays short.
  rich is imported only when drawing on a terminal.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from haloconv.text import Table

QUIET, NORMAL, VERBOSE, DEBUG = 0, 1, 2, 3
PROGRESS_AFTER_S = 2.0  # a shorter run shows no progress: it is over before anyone looks
PROGRESS = ("auto", "bar", "lines", "none")


class Console:
    """The CLI's output for one command, at ``verbosity`` (QUIET .. DEBUG); ``progress``:
    'auto' (a bar on a terminal, lines elsewhere, once a run takes PROGRESS_AFTER_S), 'bar',
    'lines' (from the first tile on), or 'none'."""

    def __init__(self, verbosity: int = NORMAL, progress: str = "auto", out=None, err=None):
        if progress not in PROGRESS:
            raise ValueError(f"--progress must be one of {PROGRESS}, got {progress!r}")
        self.verbosity, self.progress_mode = verbosity, progress
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err

    def say(self, text: str, level: int = NORMAL) -> None:
        """A result line (or a Table) on stdout, shown at ``level`` and above."""
        if self.verbosity >= level:
            self._emit(self.out, text)

    def detail(self, text: str) -> None:
        """Shown with -v."""
        self.say(text, VERBOSE)

    def warn(self, text: str) -> None:
        if self.verbosity >= NORMAL:
            print(f"haloconv: warning: {text}", file=self.err, flush=True)

    def error(self, text: str) -> None:
        print(f"haloconv: error: {text}", file=self.err, flush=True)

    def stdout_for_data(self) -> None:
        """stdout carries data (``--report -``): the lines for people go to stderr."""
        self.out = self.err

    def _emit(self, stream, text: str) -> None:
        if isinstance(text, Table) and _is_terminal(stream):
            from rich.console import Console as RichConsole
            from rich.table import Table as RichTable

            t = RichTable(*text.head, box=None, header_style="bold")
            for c in t.columns:
                c.justify = "right"
            for row in text.rows:
                t.add_row(*row)
            RichConsole(file=stream, highlight=False).print(t)
            return
        print(text, file=stream, flush=True)

    def tracker(self, what: str = "tiles") -> Tracker:
        """A progress callback ``(done, total)`` for the engines, used as a context manager
        around the run (the bar goes away when it ends, or on Ctrl-C)."""
        mode = self.progress_mode
        if self.verbosity < NORMAL:
            mode = "none"
        elif mode == "auto":
            mode = "bar" if _is_terminal(self.err) else "lines"
        delay = 0.0 if self.progress_mode in ("bar", "lines") else PROGRESS_AFTER_S
        return Tracker(mode, what, self.err, delay)

    def log_handler(self) -> logging.Handler:
        """The library's log records, through this console: warnings as warnings (unless -q),
        the rest as -v details."""
        console = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if record.levelno >= logging.WARNING:
                    console.warn(message)
                else:
                    console.detail(message)

        handler = Handler()
        handler.setLevel({QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}.get(
            self.verbosity, logging.DEBUG))
        return handler


class Tracker:
    """Progress of one run: called ``(done, total)`` by the engines from any thread; shows a
    bar ('bar') or plain lines ('lines') once ``delay`` seconds have passed, or nothing."""

    def __init__(self, mode: str, what: str, stream, delay: float):
        self.mode, self.what, self.stream, self.delay = mode, what, stream, delay
        self.done, self.total = 0, None
        self._first: int | None = None  # the count before this run's first tile (a resumed run starts later)
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._bar = self._task = self._timer = None
        self._tenth = -1

    def __enter__(self) -> Tracker:
        self._t0 = time.monotonic()
        if self.mode == "bar":
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            self.mode = "none"  # a late tick from a thread still running draws nothing

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self._first is None:
                self._first = done - 1
            self.done, self.total = done, total
            if self.mode == "bar" and self._bar is not None:
                self._bar.update(self._task, completed=done, total=total)
            elif self.mode == "lines":
                self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        tenth = 10 * self.done // max(1, self.total)
        if elapsed < self.delay or (tenth == self._tenth and self.done < self.total):
            return
        self._tenth = tenth
        ran = self.done - self._first
        left = f", about {elapsed / ran * (self.total - self.done):.1f} s left" if self.done < self.total else ""
        print(f"  {self.done}/{self.total} {self.what} done, {elapsed:.1f} s{left}", file=self.stream, flush=True)

    def _show(self) -> None:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with self._lock:
            if self.mode != "bar":
                return
            self._bar = Progress(SpinnerColumn(), TextColumn(self.what), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=RichConsole(file=self.stream), transient=True)
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)
            self._bar.start()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
