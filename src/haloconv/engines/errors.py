"""What a failed worker raises (torch-free: the CLI catches it without importing torch)."""

from __future__ import annotations


class WorkerError(RuntimeError):
    """A worker process died, hung past the timeout, or raised (its traceback is in the
    message).

    Attributes
    ----------
    dead : tuple of int
        The ranks that exited.
    hung : tuple of int
        Those that did not answer within the timeout.
    raised : bool
        The cause was an exception in a worker; no process was lost.

    Examples
    --------
    >>> import haloconv
    >>> try:
    ...     raise haloconv.WorkerError("worker(s) [2] exited (killed by SIGKILL)", dead=(2,))
    ... except haloconv.WorkerError as e:
    ...     print(e.dead, e.hung, e.raised)
    (2,) () False
    """

    def __init__(self, message: str, dead: tuple[int, ...] = (), hung: tuple[int, ...] = (), raised: bool = False):
        super().__init__(message)
        self.dead = tuple(dead)
        self.hung = tuple(hung)
        self.raised = raised
