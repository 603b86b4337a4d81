"""The journal of a streamed run: which tiles are finished, so an interrupted run resumes.

One JSON header line naming the job (input file, size and time stamp, conv, tiling,
output), then one line per finished tile, appended (and fsync'ed) after the tile's output
is durable in the output file.  A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".journal")


class Journal:
    def __init__(self, path: Path, header: dict, resume: bool):
        self.path = Path(path)
        header = json.loads(json.dumps(header))  # as it reads back (tuples become lists)
        self.done: set[int] = set()
        self._lock = threading.Lock()
        if resume and self.path.exists():
            # every complete line ends with a newline: what follows the last one is torn
            lines = self.path.read_text().split("\n")[:-1]
            try:
                old = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                old = None
            if old is None:
                raise ValueError(f"--resume: the journal {str(self.path)!r} has no readable header; "
                                 "delete it to start over")
            for key in header:
                if old.get(key) != header[key]:
                    raise ValueError(f"--resume: {str(self.path)!r} is the journal of another job "
                                     f"({key}: {old.get(key)!r} there, {header[key]!r} now); "
                                     "delete it (and the .partial output) to start over")
            for line in lines[1:]:
                if line.strip().isdigit():
                    self.done.add(int(line))
            self.resumed = True
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(header, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            self.resumed = False
        self._f = open(self.path, "a")

    def record(self, index: int) -> None:
        """Tile ``index`` is finished and its output durable: never compute it again."""
        with self._lock:
            self.done.add(index)
            self._f.write(f"{index}\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
