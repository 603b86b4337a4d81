"""Engines execute a Plan.  They never do index math: they move the boxes it names."""

from haloconv.engines import processes, threads
from haloconv.engines.base import Execution, WorkerStats, assemble_window
from haloconv.engines.processes import LocalCluster, WorkerError

ENGINES = {"threads": threads.run, "processes": processes.run}

__all__ = ["ENGINES", "Execution", "LocalCluster", "WorkerError", "WorkerStats", "assemble_window"]
