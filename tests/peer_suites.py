"""What runs a peer's own filter tests against haloconv.ndimage (test_scipy_filters_suite.py,
test_dask_image_suite.py): the peer's functions swapped for haloconv's, each call split."""

from __future__ import annotations

import contextlib
import functools
import types

import haloconv.ndimage as hndi

SPLIT_WORKERS = 4


class Counts:
    """Calls of haloconv per test, and how many of them were split."""

    def __init__(self):
        self.calls = {"haloconv": 0, "split": 0, "processes": 0}
        self.ran: dict[str, int] = {}  # test id -> calls of haloconv it made
        self.clusters = None  # set: calls run on these worker processes (workers -> LocalCluster)

    def reached(self) -> int:
        return sum(1 for v in self.ran.values() if v)

    @contextlib.contextmanager
    def counting(self, nodeid: str):
        """The calls of haloconv the test ``nodeid`` makes while inside."""
        before = self.calls["haloconv"]
        yield
        self.ran[nodeid] = self.calls["haloconv"] - before


def swap_peer_functions(item, by_theirs: dict) -> None:
    """A test parametrized with one of the peer's functions gets its Split in its place
    (``by_theirs``: the peer's function -> Split; called from conftest through swap_params)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for key, value in list(params.items()):
        if callable(value) and value in by_theirs:
            params[key] = by_theirs[value]


class Split:
    """haloconv.ndimage's ``name`` split into up to SPLIT_WORKERS tiles (a grid over the
    filtered axes; fewer where the image has room for fewer), on threads or, while
    ``counts.clusters`` is set, on those worker processes, standing in for the peer's
    function ``theirs``: equal to it, as tests that pick branches by ``func == peer.X`` expect."""

    def __init__(self, name: str, theirs, counts: Counts):
        self.name, self.ours, self.theirs, self.counts = name, getattr(hndi, name), theirs, counts
        functools.update_wrapper(self, theirs)

    def __eq__(self, other):
        return other is self or other is self.theirs

    def __hash__(self):
        return hash(self.theirs)

    def __call__(self, *args, **kwargs):
        self.counts.calls["haloconv"] += 1
        for workers in range(SPLIT_WORKERS, 0, -1):  # as many tiles as the image has room for
            on = {} if self.counts.clusters is None else {"engine": self.counts.clusters(workers)}
            try:
                result = self.ours(*args, workers=workers, partition="grid", **on, **kwargs)
            except ValueError as e:
                if workers > 1 and "partition" in str(e):
                    continue
                raise
            self.counts.calls["split"] += workers > 1
            self.counts.calls["processes"] += bool(on)
            return result


class Shim(types.ModuleType):
    """The peer's module with the ``splits`` in place of its own functions of those names."""

    def __init__(self, name: str, peer, splits: dict[str, Split]):
        super().__init__(name)
        self._peer = peer
        for split in splits.values():
            setattr(self, split.name, split)
        for theirs_name, split in splits.items():
            setattr(self, theirs_name, split)

    def __getattr__(self, name):
        return getattr(self._peer, name)
