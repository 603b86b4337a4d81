"""haloconv.nn: sharded layers and models on real torchrun ranks, and their layout math."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import haloconv.nn as hnn
from conftest import repeat
from haloconv.nn.layout import Layout
from haloconv.tiling.partition import Partition

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _torchrun(ranks: int, *args: str, timeout: int = 240, env: dict | None = None) -> str:
    """Any non-zero exit of any rank fails the test (no rerun: the abort at exit that once
    made one necessary had its cause removed, see haloconv/nn/__init__.py)."""
    r = subprocess.run([*TORCHRUN, f"--nproc-per-node={ranks}", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    return r.stdout


# Each case is a torchrun script's command line (tests/conftest.py's ``spmd`` fixture runs
# every case of one rank count in a single launch).
@pytest.mark.parametrize("spmd_case", ["2 nn_train_parity.py rows", "4 nn_train_parity.py rows",
                                       "HALOCONV_P2P=batched 4 nn_train_parity.py grid",
                                       "3 nn_train_parity.py 1,1,1,3"])
def test_training_parity(spmd, spmd_case):
    """``HALOCONV_P2P=batched``: the halo messages posted as one group per exchange, as on
    NCCL (engines/spmd/comm.Comm.post)."""
    assert "TRAINING PARITY OK" in spmd(spmd_case)


@pytest.mark.parametrize("spmd_case", ["2 nn_layers.py", "4 nn_layers.py"])
def test_layers_equal_torch_layers(spmd, spmd_case):
    assert "LAYERS OK" in spmd(spmd_case)


@pytest.mark.parametrize("spmd_case", ["3 nn_property.py 40"])
def test_property_sharded_layers_equal_torch_layers(spmd, spmd_case):
    assert "PROPERTY OK" in spmd(spmd_case)


@pytest.mark.parametrize("spmd_case", ["2 nn_auto.py"])
def test_auto_overlap_and_halo_depth_decide_by_the_link(spmd, spmd_case):
    """overlap='auto' overlaps a wide layer's halos on a slow link only, halo_depth='auto'
    gives three convs one deep halo on a slow link only; the layers run as decided."""
    out = spmd(spmd_case)
    assert "AUTO slow: overlap=True halo_depth=3" in out and "AUTO fast: overlap=False halo_depth=1" in out, out


@pytest.mark.parametrize("spmd_case", ["2 nn_layers.py gradcheck", "3 nn_layers.py gradcheck"])
def test_gradcheck(spmd, spmd_case):
    assert "GRADCHECK OK" in spmd(spmd_case)


def test_train_large_images_example_equals_one_process_training():
    out = _torchrun(2, str(HERE.parent / "examples" / "train_large_images.py"), "--size", "96", "--steps", "2",
                    "--partition", "grid", "--double", "--verify")
    assert "step   1  loss" in out and "activations MB/rank" in out
    diff = float(out.split("one-process training: ")[1].split()[0])
    assert diff < 1e-10, out


# -- layout math, no processes --------------------------------------------------------------
def test_grid_counts_most_even():
    def grid_counts(ranks, ndim):
        return Partition("grid").layer_counts(ndim, ranks)[2:]

    assert grid_counts(4, 2) == (2, 2)
    assert grid_counts(8, 2) == (4, 2)
    assert grid_counts(8, 3) == (2, 2, 2)
    assert grid_counts(6, 2) == (3, 2)
    assert grid_counts(5, 2) == (5, 1)


@pytest.mark.parametrize("partition,ranks", [("rows", 3), ("cols", 2), ("grid", 4), ("grid", 6), ((1, 1, 2, 3), 6),
                                             ("batch", 2)])
@pytest.mark.parametrize("weights", [False, True])
def test_boxes_tile_the_tensor_and_give_back_its_shape(partition, ranks, weights):
    w = tuple(float(i + 1) for i in range(ranks)) if weights else None
    layout = Layout(partition, ranks, w)
    shape = (3, 2, 23, 17)
    boxes = layout.boxes(shape)
    cover = torch.zeros(shape, dtype=torch.int64)
    for b in boxes:
        cover[b.slices()] += 1
    assert torch.all(cover == 1)
    assert layout.global_shape([b.shape for b in boxes]) == shape


def test_layout_refuses_bad_partitions():
    with pytest.raises(ValueError, match="partition must be one of"):
        Layout("diagonal", 2)
    with pytest.raises(ValueError, match="makes 2 shards for 4 ranks"):
        Layout((1, 1, 2, 1), 4).counts(2)
    with pytest.raises(ValueError, match="worker_weights"):
        Layout("rows", 2, (1.0, -1.0))
    with pytest.raises(ValueError, match="not available for 1-D"):
        Layout("rows", 2).counts(1)



@pytest.mark.parametrize("partition,ranks,shape", [("rows", 4, (1, 1, 3, 10)), ("grid", 4, (2, 3, 1, 1)),
                                                   ("grid", 6, (1, 2, 2, 5)), ("batch", 3, (2, 1, 4, 4))])
def test_thin_activations_leave_trailing_ranks_empty_shards(partition, ranks, shape):
    boxes = Layout(partition, ranks).boxes(shape)
    cover = torch.zeros(shape, dtype=torch.int64)
    for b in boxes:
        cover[b.slices()] += 1
    assert torch.all(cover == 1)
    assert any(b.volume == 0 for b in boxes) and boxes[0].volume > 0
    assert Layout(partition, ranks).global_shape([b.shape for b in boxes]) == shape


# -- one rank in this process: the faces' checks ----------------------------------------------
@pytest.fixture
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_parallelize_refuses_unsupported_layers(one_rank):
    with pytest.raises(ValueError, match=r"layer 1 \(Upsample\) is not supported"):
        hnn.parallelize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2)))
    with pytest.raises(ValueError, match=r"layer 0.1 \(Linear\) would see sharded activations"):
        hnn.parallelize(nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 4))))
    with pytest.raises(ValueError, match="output_size=2"):
        hnn.parallelize(nn.Sequential(nn.AdaptiveAvgPool2d(2)))
    with pytest.raises(ValueError, match="splits samples or filters"):
        hnn.parallelize(nn.Sequential(nn.Conv2d(1, 2, 3)), partition="batch")
    with pytest.raises(ValueError, match="ceil_mode"):
        hnn.parallelize(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)))
    with pytest.raises(TypeError, match="needs a Conv2d"):
        hnn.DistributedConv2d.from_module(nn.Conv1d(1, 1, 3))


def test_single_rank_model_equals_torch(one_rank):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    x = torch.randn(2, 2, 10, 9, dtype=torch.float64)
    want = ref(x)
    par = hnn.parallelize(ref)  # in place: the same parameters
    assert isinstance(par[0], hnn.DistributedConv2d) and isinstance(par[4], hnn.GlobalAvgPool)
    assert par[0].weight is ref[0].weight
    torch.testing.assert_close(par(hnn.shard(x)), want, rtol=1e-12, atol=1e-12)


def test_shard_shape_mismatch_is_a_clear_error(one_rank):
    conv = hnn.DistributedConv2d(1, 1, 3, partition="rows")
    with pytest.raises(ValueError, match="expects a 4-D shard"):
        conv(torch.zeros(1, 10, 10))


@pytest.mark.stress
def test_a_training_script_that_holds_its_last_loss_exits_cleanly_again_and_again():
    """3 ranks, a few SGD steps, barrier and destroy_process_group while the last loss (its
    autograd graph) is alive, as training scripts do: the group and its gloo threads are gone
    after destroy (the script asserts it), and every rank exits 0, runs in a row (2; ten
    under `make stress`)."""
    for _ in range(repeat(2, 10)):
        out = _torchrun(3, str(HERE / "nn_train_exit.py"))
        assert "TRAINED loss" in out and "GROUP FREED" in out
