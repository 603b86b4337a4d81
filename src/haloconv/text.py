"""Text for people: the one table renderer of the package (plans, run reports, traffic,
the cost model's candidates, benchmark tables).  Pure Python, the lowest layer: every
layer may use it (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence


class Table(str):
    """A table as text, which still knows its ``head`` and ``rows``: printed as it is to a
    file or pipe, drawn as a table by the CLI on a terminal (cli/console.py)."""

    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def table(head: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> Table:
    """``rows`` under ``head``: right-aligned columns two spaces apart, each as wide as its
    widest cell; or, with ``markdown``, a Markdown table.

    >>> print(table(("rank", "tile"), [("0", "1x1x8x8"), ("1", "1x1x8x8")]))
    rank     tile
       0  1x1x8x8
       1  1x1x8x8
    """
    if markdown:
        out = Table("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                                *("| " + " | ".join(r) + " |" for r in rows)]))
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        out = Table("\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)]))
    out.head, out.rows = tuple(head), tuple(tuple(r) for r in rows)
    return out
