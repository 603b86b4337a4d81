"""Engines execute a Plan.  They never do index math: they move the boxes it names."""

from haloconv.engines import threads
from haloconv.engines.base import Execution, WorkerStats, assemble_window

ENGINES = {"threads": threads.run}

__all__ = ["ENGINES", "Execution", "WorkerStats", "assemble_window"]
