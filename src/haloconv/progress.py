"""How a run tells its caller how far it is: a callback, and the ``logging`` module.

The library never prints.  What a run decided and did (workers started, speeds measured, the
tiles of a stream) is logged at INFO on the ``haloconv`` logger's children, faults it survived
at WARNING; how many tiles are finished goes to ``progress(done, total)``, a callback the
caller passes (the CLI draws a bar from it, cli/console.py).  Pure Python, the lowest layer:
every engine may use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

Progress = Callable[[int, int], None]  # progress(done, total): tiles finished so far, of total

# a library adds no handler but this one (logging HOWTO, "Configuring Logging for a Library"):
# the application decides what is shown
logging.getLogger("haloconv").addHandler(logging.NullHandler())


class Counter:
    """Tiles finished, counted from any thread, each count passed on to ``progress``.

    >>> seen = []
    >>> c = Counter(lambda done, total: seen.append((done, total)), total=3, done=1)
    >>> c.tick(); c.tick()
    >>> seen
    [(2, 3), (3, 3)]
    """

    def __init__(self, progress: Progress | None, total: int, done: int = 0):
        self.progress, self.total, self.done = progress, total, done
        self._lock = threading.Lock()

    def tick(self, n: int = 1) -> None:
        if self.progress is None:
            return
        with self._lock:  # the callback sees counts in order, one at a time
            self.done += n
            self.progress(self.done, self.total)
