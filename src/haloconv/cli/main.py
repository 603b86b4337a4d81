"""`haloconv` command line: `haloconv run` convolves an image or array across workers;
`plan` ranks partitions by predicted cost; `bench` and `calibrate` measure this machine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import warnings

from haloconv.engines.errors import WorkerError
from haloconv.files import guard

from . import interrupt, options
from .console import DEBUG, NORMAL, QUIET, Console


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(__doc__)


class _ClosablePipe:
    """stdout that outlives its reader: once the pipe is closed (``haloconv run ... | head``),
    what is printed is dropped instead of raising BrokenPipeError, so the run goes on and
    writes its outputs."""

    def __init__(self, stream):
        self._stream, self._closed = stream, False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self._closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's last flush at exit goes nowhere
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: sys.argv[1:] when None).  Returns the exit status: 0 done,
    1 a verify mismatch or a worker fault, 2 bad input, 130 interrupted.  Run as the
    command (``argv`` None), Ctrl-C stops it within a second (cli/interrupt.py); a Python
    caller passing ``argv`` keeps its own signal handling."""
    args = build_parser().parse_args(argv)
    guard = interrupt.Guard() if argv is None and threading.current_thread() is threading.main_thread() else None
    args.argv = ["haloconv", *(sys.argv[1:] if argv is None else argv)]
    caller_stdout = sys.stdout
    sys.stdout = _ClosablePipe(caller_stdout)
    verbosity = QUIET if args.quiet else min(DEBUG, NORMAL + args.verbose)
    console = Console(verbosity, args.progress)
    if getattr(args, "report", None) == "-":
        console.stdout_for_data()  # stdout carries the report's JSON alone
    library = logging.getLogger("haloconv")
    handler, level = console.log_handler(), library.level
    library.addHandler(handler)
    library.setLevel(handler.level)
    try:
        with warnings.catch_warnings():  # a library's warning is one line on the warning channel
            warnings.showwarning = lambda message, category, *rest, **kw: console.warn(
                f"{message} ({category.__name__})")
            return _command(args, console)
    except KeyboardInterrupt:
        if guard is None:
            print(interrupt.message(), file=sys.stderr, flush=True)
        else:
            guard.say()
        return interrupt.EXIT_CODE
    finally:
        if guard is not None:
            guard.close()
        library.removeHandler(handler)
        library.setLevel(level)
        sys.stdout = caller_stdout


def _command(args: argparse.Namespace, console: Console) -> int:
    from . import plan_command, run, stream

    try:
        if args.command == "run":
            if args.dask:
                from . import dask_run

                return dask_run.run(args, console)
            source = stream.source(args)
            if source is not None:
                args.engine = args.engine or "threads"
                run.pool_only(args)
                return stream.run(args, console, source)
            if options.under_torchrun():
                return run.run_spmd(args, console)
            return run.run(args, console)
        if args.command == "plan":
            return plan_command.command(args, console)
        if args.command == "calibrate":
            from . import calibrate

            return calibrate.command(args, console)
        if args.command == "bench":
            from . import bench

            return bench.command(args, console)
    except (ValueError, TypeError) as e:
        console.error(str(e))
        return 2
    except OSError as e:  # a full disk, an I/O error, a file system gone read-only: one line
        console.error(guard.os_error_line(e))
        return 1
    except WorkerError as e:
        console.error(str(e))
        return 1
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
