"""The cost model, partition='auto', and the `haloconv plan` / `calibrate` commands."""

import json

import numpy as np
import pytest
from PIL import Image

import haloconv
from haloconv import cost
from haloconv.cli import main
from haloconv.spec import ConvSpec

PROF = cost.Profile()  # the documented defaults: tests never depend on a calibration


def test_profile_round_trip_and_bad_files(tmp_path):
    p = cost.Profile(latency_s=1e-5, bandwidth_Bps=3e9, source="test")
    assert cost.Profile.load(p.save(tmp_path / "p.json")) == p
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        cost.Profile.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"latency_s": 1, "warp_factor": 9}))
    with pytest.raises(ValueError, match="warp_factor"):
        cost.Profile.load(tmp_path / "odd.json")


def test_prediction_moves_the_plans_bytes_and_splits_the_compute():
    spec = ConvSpec.from_args((1, 16, 256, 256), (16, 16, 3, 3), None, padding=1)
    one = cost.predict(haloconv.plan(spec.input_shape, spec.weight_shape, padding=1, workers=1, partition="rows"),
                       PROF)
    plan = haloconv.plan(spec.input_shape, spec.weight_shape, padding=1, workers=2, partition="rows")
    two = cost.predict(plan, PROF)
    tr = plan.traffic(4)
    for r in (0, 1):
        assert two.bytes_moved[r]["halo"] == tr[r]["halo"].bytes_sent + tr[r]["halo"].bytes_recv > 0
    assert two.compute_s < one.compute_s and one.comm_s < two.comm_s
    assert two.memory[1] < one.memory[0]


def test_candidates_ranked_and_memory_budget_respected():
    spec = ConvSpec.from_args((4, 32, 256, 256), (32, 32, 3, 3), None, padding=1)
    ranked = cost.candidates(spec, 4, PROF)
    assert [q.total_s for q in ranked] == sorted(q.total_s for q in ranked)
    labels = {q.plan.partition for q in ranked}
    assert {"single", "batch", "rows", "cols", "grid", "channels"} <= labels
    budget = sorted(q.peak_memory for q in ranked)[len(ranked) // 2]
    assert all(q.peak_memory <= budget for q in cost.candidates(spec, 4, PROF, memory_budget=budget))
    with pytest.raises(ValueError, match="memory_budget"):
        haloconv.plan(spec.input_shape, spec.weight_shape, padding=1, workers=4, memory_budget=1000, profile=PROF)
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        haloconv.plan(spec.input_shape, spec.weight_shape, workers=4, memory_budget=-1, profile=PROF)


def test_auto_partition_is_the_cheapest_candidate_and_exact():
    import torch

    x, w = torch.randn(2, 8, 96, 80), torch.randn(8, 8, 3, 3)
    p = haloconv.plan(x.shape, w.shape, padding=1, workers=3, profile=PROF)
    best = cost.candidates(p.spec, 3, PROF, backend="torch")[0].plan
    assert (p.partition, p.splits, p.backend) == (best.partition, best.splits, best.backend)
    y = haloconv.conv(x, w, padding=1, workers=3, profile=PROF)
    assert torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1))


def test_scaling_projection_spatial_beats_batch_past_the_samples():
    from haloconv import scaling

    spec = ConvSpec.from_args((4, 16, 512, 512), (16, 16, 3, 3), None, padding=1)
    proj = scaling.project(spec, [1, 4, 16, 64], PROF)
    assert proj["batch"]["strong"][2] == proj["batch"]["strong"][1]  # 4 samples: no gain past 4 workers
    assert proj["grid"]["strong"][3] < proj["grid"]["strong"][2] < proj["batch"]["strong"][2]
    assert 0 <= proj["grid"]["halo_share"][3] < 1


def test_plan_command_ranks_draws_and_projects(tmp_path, capsys):
    rc = main(["plan", "--random", "2x3x300x200", "--kernel", "gaussian:2", "--workers", "3",
               "--png", str(tmp_path / "plan.png"), "--simulate-workers", "1,2,4,8,16",
               "--bandwidth", "25GB/s", "--latency", "5us", "--scaling-png", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "predicted s" in out and "chosen:" in out and "strong scaling" in out
    for name in ("plan.png", "s.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and np.asarray(im).std() > 0


def test_plan_command_named_partition_comes_first(tmp_path, capsys):
    rc = main(["plan", "--random", "1x16x128x128", "--weight-shape", "16x16x3x3", "--workers", "2",
               "--partition", "cols", "--png", str(tmp_path / "p.png")])
    assert rc == 0
    assert "chosen: cols" in capsys.readouterr().out


@pytest.mark.parametrize("args,words", [
    (["--bandwidth", "fast"], ["--bandwidth", "fast"]),
    (["--latency", "5 parsecs"], ["--latency"]),
    (["--memory-budget", "0GB"], ["--memory-budget"]),
    (["--weight-shape", "3x3"], ["--weight-shape"]),
])
def test_plan_command_bad_input_exit_2(args, words, capsys, tmp_path):
    rc = main(["plan", "--random", "64x64", "--workers", "2", "--simulate-workers", "1,2",
               "--png", str(tmp_path / "p.png"), "--scaling-png", str(tmp_path / "s.png"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and all(w in err for w in words), err


def test_calibrate_writes_a_profile_the_model_reads(tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert main(["calibrate", "--quick", "--profile", str(path)]) == 0
    prof = cost.Profile.load(path)
    assert prof.source.startswith("calibrated") and prof.bandwidth_Bps > 0 and prof.latency_s > 0
    assert len(prof.torch_rates) >= 10 and all(r[2] > 0 for r in prof.torch_rates)
    spec = ConvSpec.from_args((1, 1, 512, 512), (1, 1, 9, 9), None, padding=4)
    assert cost.candidates(spec, 2, prof)[0].total_s > 0


@pytest.mark.parametrize("backend,marker", [("ndimage", "bitwise equal: True"), ("fft", "within")])
def test_run_with_other_backends_verifies(backend, marker, tmp_path, capsys):
    rc = main(["run", "--random", "120x90", "--kernel", "gaussian:1.5", "--workers", "2", "--partition", "rows",
               "--backend", backend, "--engine", "threads", "--verify", "-o", str(tmp_path / "y")])
    out = capsys.readouterr().out
    assert rc == 0 and marker in out and f"single-node {backend}" in out


def test_bench_command_writes_tables_and_plots(tmp_path, capsys):
    rc = main(["bench", "--only", "peers,scaling", "--quick", "--peers-size", "64", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "strong scaling" in out
    peers = (tmp_path / "peers.md").read_text()
    assert "| haloconv" in peers and "| scipy" in peers and "kernel 15x15" in peers
    for name in ("peers.png", "scaling.png"):
        with Image.open(tmp_path / name) as im:
            assert np.asarray(im).std() > 0
    assert main(["bench", "--only", "everything"]) == 2


def test_filters_and_layers_get_their_own_effective_cores(tmp_path):
    layer = ConvSpec.from_args((1, 16, 512, 512), (16, 16, 3, 3), None, padding=1)
    filt = ConvSpec.from_args((1, 1, 2048, 2048), (1, 1, 3, 3), None, padding=1)
    depthwise = ConvSpec.from_args((1, 3, 512, 512), (3, 1, 5, 5), None, padding=2, groups=3)
    prof = cost.Profile(cores=1.2, filter_cores_ratio=1.5)
    assert prof.effective_cores(layer) == 1.2
    assert prof.effective_cores(filt) == prof.effective_cores(depthwise) == pytest.approx(1.8)
    # a filter's two workers stretch less than a layer's: its split pays more
    plan = haloconv.plan(filt.input_shape, filt.weight_shape, padding=1, workers=2, partition="rows")
    assert cost.predict(plan, prof).compute_s < cost.predict(plan, cost.Profile(cores=1.2)).compute_s
    # a profile written before the field existed still loads (ratio 1)
    old = {k: v for k, v in json.loads(cost.Profile().save(tmp_path / "p.json").read_text()).items()
           if k != "filter_cores_ratio"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert cost.Profile.load(tmp_path / "old.json").filter_cores_ratio == 1.0
