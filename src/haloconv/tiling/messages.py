"""What moves between workers: the phases of a run, one message, the bytes and messages
per worker and phase, and how a box travels (its contiguous runs, or packed).  The list
of a plan's messages is ``Plan.messages``; engines send exactly those."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from haloconv.tiling.boxes import Box

PHASES = ("weights", "scatter", "halo", "compute", "gather")


@dataclass
class Traffic:
    """Bytes and messages one worker sends and receives in one phase."""

    bytes_sent: int = 0
    bytes_recv: int = 0
    messages_sent: int = 0
    messages_recv: int = 0

    def add_send(self, nbytes: int) -> None:
        self.bytes_sent += nbytes
        self.messages_sent += 1

    def add_recv(self, nbytes: int) -> None:
        self.bytes_recv += nbytes
        self.messages_recv += 1


@dataclass(frozen=True)
class Message:
    """One message an engine sends: ``part`` numbers the parts of a pipelined window
    (exchange='master'); ``packed``: the box is not one contiguous run of its tensor, so it
    is copied into (scatter) or out of (gather) a buffer of its own."""

    phase: str
    src: int
    dst: int
    nbytes: int
    part: int = 0
    packed: bool = False


def traffic_of(messages: Sequence[Message], workers: int) -> dict[int, dict[str, Traffic]]:
    """Bytes and messages per worker and phase of a list of messages (Plan.messages)."""
    out = {r: {p: Traffic() for p in PHASES} for r in range(workers)}
    for m in messages:
        out[m.src][m.phase].add_send(m.nbytes)
        out[m.dst][m.phase].add_recv(m.nbytes)
    return out


# A box is sent as its contiguous runs (no packing copy) when each run is at least this big;
# smaller runs are packed into one message instead of many tiny ones.
MIN_RUN_BYTES = 256 * 1024


def _run_dim(box: Box, shape: Sequence[int]) -> int:
    """The innermost dims ``box`` covers fully, plus the next one, make one contiguous run:
    the index of that next one."""
    k = len(shape) - 1
    while k > 0 and box.lo[k] == 0 and box.hi[k] == shape[k]:
        k -= 1
    return k


def is_contiguous_run(box: Box, shape: Sequence[int]) -> bool:
    """Whether ``box`` is one contiguous run of a C-contiguous tensor of ``shape``."""
    return math.prod(box.shape[:_run_dim(box, shape)]) <= 1


def transfer_chunks(box: Box, shape: Sequence[int], itemsize: int) -> list[Box]:
    """How a box of a C-contiguous tensor of ``shape`` travels: its contiguous runs (each a
    sub-box, also contiguous in a box-shaped buffer), or the whole box packed in one message.
    """
    k = _run_dim(box, shape)
    run = math.prod(box.shape[k:])
    count = math.prod(box.shape[:k])
    if count <= 1 or run * itemsize < MIN_RUN_BYTES:
        return [box]
    chunks = []
    for idx in itertools.product(*(range(l, h) for l, h in zip(box.lo[:k], box.hi[:k]))):
        chunks.append(Box((*idx, *box.lo[k:]), (*(i + 1 for i in idx), *box.hi[k:])))
    return chunks
