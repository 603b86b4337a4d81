"""Run reports: the plan and what each worker moved and spent, as a table or JSON."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from haloconv import text
from haloconv.engines.execution import Execution
from haloconv.files import guard
from haloconv.tiling.messages import PHASES
from haloconv.tiling.plan import Plan


def plan_dict(plan: Plan) -> dict:
    """A JSON-able description of a Plan."""
    spec = asdict(plan.spec)
    return {
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
        "output_shape": list(plan.spec.output_shape),
        "partition": plan.partition,
        "splits": list(plan.splits),
        "workers": plan.workers,
        "weights": list(plan.weights) if plan.weights else None,
        "ownership": plan.ownership,
        "exchange": plan.exchange,
        "halo_elements": plan.halo_elements,
        "tiles": [
            {
                "rank": t.rank,
                "output_box": [list(t.out.lo), list(t.out.hi)],
                "owned_input": [list(t.owned.lo), list(t.owned.hi)],
                "needed_input": [list(t.needed.lo), list(t.needed.hi)],
                "halo_elements": t.halo_elements,
                "halo_from": list(t.halo_sources),
            }
            for t in plan.tiles
        ],
    }


def run_report(ex: Execution, itemsize: int) -> dict:
    """Per worker and phase: bytes_sent, bytes_recv, messages, seconds, beside the Plan's
    predicted bytes; with the plan and the machine's load average."""
    predicted = ex.plan.traffic(itemsize)
    workers = []
    for s in ex.workers:
        phases = {}
        for p in PHASES:
            got = (s.traffic or {}).get(p, {})
            want = predicted[s.rank][p]
            phases[p] = {
                "bytes_sent": int(got.get("bytes_sent", 0)),
                "bytes_recv": int(got.get("bytes_recv", 0)),
                "messages": int(got.get("messages_sent", 0) + got.get("messages_recv", 0)),
                "seconds": float(got.get("seconds", s.seconds.get(p, 0.0))),
                "predicted_bytes_sent": want.bytes_sent,
                "predicted_bytes_recv": want.bytes_recv,
            }
        workers.append({"rank": s.rank, "tile": list(s.tile_shape), "phases": phases})
    return {
        "engine": ex.engine,
        "backend": ex.backend,
        "wall_seconds": ex.wall_seconds,
        "load_average": list(os.getloadavg()),
        "plan": plan_dict(ex.plan),
        "workers": workers,
    }


def traffic_table(report: dict) -> str:
    """Bytes sent/received per worker and phase, measured vs predicted, and seconds."""
    head = ["rank", "phase", "sent B", "recv B", "predicted sent/recv", "msgs", "seconds"]
    rows = []
    for w in report["workers"]:
        for p, v in w["phases"].items():
            if not (v["bytes_sent"] or v["bytes_recv"] or v["predicted_bytes_sent"] or v["predicted_bytes_recv"]
                    or v["seconds"] > 0):
                continue
            rows.append([
                str(w["rank"]), p, f"{v['bytes_sent']:,}", f"{v['bytes_recv']:,}",
                f"{v['predicted_bytes_sent']:,}/{v['predicted_bytes_recv']:,}", str(v["messages"]),
                f"{v['seconds']:.4f}",
            ])
    return text.table(head, rows)


def header(args, name: str, how: str, shape: list[int], dtype: str, w_shape: list[int], groups: int) -> dict:
    """What a report says about its run before any number: haloconv's version, the command
    line, the input (how it was read) and the kernel."""
    from haloconv import __version__

    return {"haloconv": __version__, "argv": list(getattr(args, "argv", None) or sys.argv),
            "input": {"name": str(name), "read_as": how, "shape": shape, "dtype": dtype},
            "kernel": {"name": args.kernel, "shape": w_shape, "groups": groups}}


def emit(report: dict, where: str, console) -> None:
    """The run report: into the file ``where``, or to stdout for '-' (the console's lines
    for people went to stderr, cli/console.py)."""
    if where == "-":
        print(dumps(report), flush=True)
    else:
        console.say(f"wrote {write_report(report, where)}")


def dumps(report: dict) -> str:
    return json.dumps(report, indent=1)


def write_report(report: dict, path: str | Path) -> Path:
    return guard.write_whole(Path(path), lambda tmp: tmp.write_text(dumps(report)))


def quotes_table(quotes) -> str:
    """The planner's ranking as `haloconv run -v` shows it: one line per candidate with its
    predicted time and peak data bytes per worker (planner.choice.quotes)."""
    rows = [(str(i), q.label, f"{q.total_s:.4f}", f"{q.peak_memory / 2**20:.1f}") for i, q in enumerate(quotes, 1)]
    return text.table(("rank", "candidate", "predicted s", "peak MB/worker"), rows)


def candidates_table(preds) -> str:
    """The cost model's ranking: one line per candidate, built and predicted
    (planner.choice.candidates)."""
    head = ("rank", "candidate", "predicted s", "compute s", "comm s", "halo MB", "moved MB", "peak MB/worker")
    rows = []
    for i, q in enumerate(preds, 1):
        halo, moved = (b / 2**20 for b in q.message_bytes)
        rows.append((str(i), q.label, f"{q.total_s:.4f}", f"{q.compute_s:.4f}", f"{q.comm_s:.4f}", f"{halo:.2f}",
                     f"{moved:.1f}", f"{q.peak_memory / 2**20:.1f}"))
    return text.table(head, rows)
