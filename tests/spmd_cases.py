"""Many torchrun scripts in one launch: ``torchrun --nproc-per-node=N tests/spmd_cases.py
CASES.json RESULTS_DIR`` makes the gloo group once and runs each case of CASES.json
(``[{"id", "script", "args", "env"}]``) in turn, as its script run alone would run
(``__main__``, its argv, its environment), on every rank.  A torchrun launch costs every rank
a Python and torch start-up; tests/conftest.py's ``spmd`` fixture pays it once per rank count.

After each case, every rank writes what it saw to RESULTS_DIR/r<rank>.json: ``{id: {"ok",
"out", "error", "s"}}`` (its stdout while the case ran, the traceback of a failure, seconds).
A case that fails on a rank ends that rank (exit 1), and torchrun ends the others: the cases
after it are not run, and the fixture says which case stopped them."""

import contextlib
import io
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

import torch.distributed as dist

import spmd_group

HERE = Path(__file__).parent


def run_case(case: dict) -> dict:
    saved_env = {k: os.environ.get(k) for k in case["env"]}
    saved_argv = sys.argv
    os.environ.update(case["env"])
    sys.argv = [str(HERE / case["script"]), *case["args"]]
    out, t0 = io.StringIO(), time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
        error = None
    except (Exception, SystemExit):  # a failed assert, or a script's own exit
        error = traceback.format_exc()
    finally:
        sys.argv = saved_argv
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"ok": error is None, "out": out.getvalue(), "error": error, "s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results_dir = Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=spmd_group.TIMEOUT)  # the group: the runner's, not a case's
    rank = dist.get_rank()
    results = {}
    for case in cases:
        results[case["id"]] = got = run_case(case)
        (results_dir / f"r{rank}.json").write_text(json.dumps(results))
        if not got["ok"]:
            print(f"rank {rank}: case {case['id']!r} failed:\n{got['error']}", file=sys.stderr, flush=True)
            os._exit(1)  # the peers may wait in a collective this rank will never join
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
