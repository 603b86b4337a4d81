"""Text for people: the one table renderer of the package (plans, run reports, traffic,
the cost model's candidates, benchmark tables).  Pure Python, the lowest layer: every
layer may use it (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence


def table(head: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """``rows`` under ``head``: right-aligned columns two spaces apart, each as wide as its
    widest cell; or, with ``markdown``, a Markdown table."""
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])
