"""Engines execute a Plan.  They never do index math: they move the boxes it names.

The names below are imported on first use (PEP 562), so that a torch-free module of this
package (windows, execution, arrays, host) can be imported without torch."""

from __future__ import annotations

import importlib

_WHERE = {
    "Execution": "haloconv.engines.execution", "WorkerStats": "haloconv.engines.execution",
    "assemble_window": "haloconv.engines.windows",
    "LocalCluster": "haloconv.engines.processes.local", "WorkerError": "haloconv.engines.errors",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'haloconv.engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
