"""What a failed worker raises (torch-free: the CLI catches it without importing torch)."""

from __future__ import annotations


class WorkerError(RuntimeError):
    """A worker process died, hung past the timeout, or raised (its traceback is in the
    message).  ``dead``: the ranks that exited; ``hung``: those that did not answer in time;
    ``raised``: the cause was an exception in a worker, no process was lost."""

    def __init__(self, message: str, dead: tuple[int, ...] = (), hung: tuple[int, ...] = (), raised: bool = False):
        super().__init__(message)
        self.dead = tuple(dead)
        self.hung = tuple(hung)
        self.raised = raised
