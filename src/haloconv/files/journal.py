"""The journal of a streamed run: which tiles are finished, so an interrupted run resumes.

One JSON header line naming the job (input file, size and time stamp, conv, tiling,
output), then one line per finished tile, appended once the tile's output is in the output
file.  A torn last line (a crash mid-write) is ignored.

How durable "in the output file" is depends on the run's ``sync``: with it, the output's
writes reach the disk (fdatasync) before the line is appended, and the line is fsync'ed —
the journal survives a power loss.  Without it (the default), the line follows the write
into the page cache: the journal is right for as long as the machine runs, whatever
becomes of the process (Ctrl-C, a kill, a failure), and costs no wait on the disk.  Such a
journal names the boot it was written in (``boot``: the kernel's boot id), and a resume
after the machine restarted does not trust its tiles — they may never have reached the
disk — and computes them again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from haloconv.files import guard

# What makes two streamed runs the same computation: a complete output's receipt must match
# these for --resume to call it done (the tiling may differ: it does not change the result)
IDENTITY = ("input", "input_bytes", "input_mtime_ns", "spec", "weights_sha256", "backend", "dtype", "format")


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".journal")


def rank_journals(output: Path) -> list[Path]:
    """The journals torchrun ranks other than 0 keep beside ``output`` (OUT.journal.r<k>)."""
    main = journal_path(output)
    return sorted(main.parent.glob(main.name + ".r*"))


def receipt_path(output: Path) -> Path:
    """A complete streamed output's receipt: the journal's header, kept once the run is done."""
    return output.with_name(output.name + ".receipt.json")


def write_json(path: Path, data: dict, sync: bool = False) -> None:
    """``data`` as one line of JSON at ``path``, whole or not at all (guard.write_whole)."""
    guard.write_whole(path, lambda tmp: tmp.write_text(json.dumps(data, sort_keys=True) + "\n"), sync)


def read_receipt(output: Path) -> dict | None:
    """The receipt of a complete streamed output, None when it has none (or an unreadable one)."""
    try:
        data = json.loads(receipt_path(output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def receipt_mismatch(receipt: dict, identity: dict) -> str | None:
    """The first way ``receipt`` is not this computation's, in words; None when it is."""
    identity = json.loads(json.dumps(identity))  # as it reads back
    for key in IDENTITY:
        if receipt.get(key) != identity.get(key):
            if key == "weights_sha256":
                return (f"other filters (sha256 {str(receipt.get(key))[:12]}... there, "
                        f"{str(identity.get(key))[:12]}... now)")
            return f"another {key.replace('_', ' ')} ({receipt.get(key)!r} there, {identity.get(key)!r} now)"
    return None


def annotate_receipt(output: Path, **fields) -> None:
    """Add ``fields`` (e.g. the command line's kernel name) to a complete output's receipt."""
    found = read_receipt(output)
    if found is not None:
        write_json(receipt_path(output), {**found, **fields})


def _read(path: Path) -> tuple[dict, list[str]] | None:
    """The journal at ``path``: its header and its complete lines after it; None without one."""
    try:
        lines = Path(path).read_text().split("\n")[:-1]
        head = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    return (head, lines[1:]) if isinstance(head, dict) else None


def header_of(path: Path) -> dict | None:
    """The header of the journal at ``path`` (what its run was: input, kernel, tiling); None
    without a readable one."""
    got = _read(path)
    return None if got is None else got[0]


def progress_of(path: Path) -> tuple[int, int] | None:
    """(tiles finished, tiles in all) as the journal at ``path`` says now; None without one."""
    got = _read(path)
    try:
        total = int(got[0]["tiles"])
    except (TypeError, KeyError, ValueError):
        return None
    return len({line for line in got[1] if line.strip().isdigit()}), total


def boot_id() -> str:
    """This boot of the machine: the kernel's boot id (Linux; empty elsewhere, where a
    restart goes unseen)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Journal:
    def __init__(self, path: Path, header: dict, resume: bool, sync: bool = False):
        self.path = Path(path)
        self.sync = sync
        header = json.loads(json.dumps(header))  # as it reads back (tuples become lists)
        self.done: set[int] = set()
        self.restarted = False  # a resumed journal from before the machine restarted, unsynced: not trusted
        self._lock = threading.Lock()
        self.resumed = bool(resume and self.path.exists())
        if self.resumed:
            # every complete line ends with a newline: what follows the last one is torn
            lines = self.path.read_text().split("\n")[:-1]
            try:
                old = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                old = None
            if old is None:
                raise ValueError(f"--resume: the journal {str(self.path)!r} has no readable header; "
                                 "--overwrite starts over")
            for key in header:
                if old.get(key) != header[key]:
                    raise ValueError(f"--resume: {str(self.path)!r} is the journal of another job "
                                     f"({key}: {old.get(key)!r} there, {header[key]!r} now); resume with the "
                                     "input, kernel and options it was started with (the tiles depend on "
                                     "--memory-budget, --engine and --workers), or --overwrite to start over")
            self.restarted = "boot" in old and old["boot"] != boot_id()
            if not self.restarted:
                self.done = {int(line) for line in lines[1:] if line.strip().isdigit()}
        # (re)written whole: this run's header (its boot, unless synced) and the tiles trusted
        self.header = {**header, "boot": boot_id()} if not sync else header
        text = json.dumps(self.header, sort_keys=True) + "\n" + "".join(f"{i}\n" for i in sorted(self.done))
        guard.write_whole(self.path, lambda tmp: tmp.write_text(text), sync)
        self._f = open(self.path, "a")

    def record(self, index: int) -> None:
        """Tile ``index`` is finished and its output written (with sync: on disk): never
        compute it again."""
        with self._lock:
            self.done.add(index)
            self._f.write(f"{index}\n")
            self._f.flush()
            if self.sync:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def remove(self) -> None:
        self.close()
        guard.remove_own(self.path)

    def receipt(self) -> dict:
        """What the output's receipt says once the run is done: the header, and haloconv's version."""
        from haloconv import __version__

        return {**{k: v for k, v in self.header.items() if k != "boot"}, "complete": True, "haloconv": __version__}
