"""Sharded training at scale (issue 18): what a rank keeps for backward, and a slower
network stood in for on one machine (engines.spmd.comm.Link, $HALOCONV_LINK)."""

import subprocess
import sys
from pathlib import Path

import pytest

from haloconv.engines.spmd.comm import Link

HERE = Path(__file__).parent


@pytest.mark.parametrize("spmd_case", ["2 nn_memory_link.py memory"])
def test_a_rank_keeps_its_shards_and_the_halos_it_received(spmd, spmd_case):
    out = spmd(spmd_case)
    assert out.count("bytes kept = shards + halos") == 2, out


@pytest.mark.parametrize("spmd_case", ["HALOCONV_LINK=30ms,200MB/s 2 nn_memory_link.py link"])
def test_a_slow_link_delays_and_keeps_order_and_training_stays_exact(spmd, spmd_case):
    out = spmd(spmd_case)
    assert out.count("ordered, delayed, exact") == 2, out


@pytest.mark.parametrize("text,want", [("100us", Link(1e-4, None)), ("1ms,1GB/s", Link(1e-3, 1e9)),
                                       ("0,2GB/s", Link(0.0, 2e9))])
def test_link_parses_what_benchmarks_write(text, want):
    got = Link.parse(text)
    assert got.latency_s == pytest.approx(want.latency_s) and got.bandwidth_Bps == want.bandwidth_Bps


@pytest.mark.parametrize("text", ["", "fast", "1ms,2ms,3ms", "-1ms"])
def test_a_bad_link_is_a_clear_error(text):
    with pytest.raises(ValueError, match="HALOCONV_LINK"):
        Link.parse(text)


def test_the_gpu_script_runs_its_checks_on_cpu_ranks():
    """benchmarks/nn_gpu.py is for a machine with GPUs; on gloo ranks here it makes the same
    checks (device placement, agreement with one process, throughput), so it cannot rot."""
    script = HERE.parent / "benchmarks" / "nn_gpu.py"
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--size", "64", "--channels", "8",
                        "--layers", "3", "--steps", "1", "--halo-depth", "auto"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "GPU SCRIPT OK" in r.stdout and "every tensor stayed on cpu" in r.stdout, r.stdout
    diffs = [float(v) for line in r.stdout.splitlines() if line.startswith(("conv:", "network"))
             for v in line.replace(",", " ").split() if v[:1].isdigit() and "e" in v]
    assert len(diffs) == 4 and max(diffs) < 1e-4, r.stdout
