"""A small training script under torchrun that must exit 0 on every rank: a few SGD steps
with haloconv.nn, then barrier() and destroy_process_group() while it still holds its
last loss (its autograd graph) — as training scripts do."""

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

import haloconv.nn as hnn


def _thread_names() -> list[str]:
    """The names of this process's live threads.  A thread listed in /proc/self/task may end
    before its name is read (its entry is then gone): it is not alive, so it is left out."""
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{t}/comm").read_text().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return names


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 1, 1))
    model = hnn.parallelize(net, partition="rows")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    box = hnn.local_box((2, 2, 48, 40), "rows")
    x = torch.randn(2, 2, 48, 40, generator=torch.Generator().manual_seed(1))[box]
    for _ in range(3):
        loss = hnn.sum_shards(model(x).square().sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    rank = dist.get_rank()
    if rank == 0:
        print(f"TRAINED loss {loss.item():.6f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()  # `loss` and its graph are still alive here
    # the group is gone with its threads now, not torn down at interpreter exit (where gloo
    # now and then aborted the process): see haloconv/nn/__init__.py
    names = _thread_names()
    assert not any(n.startswith(("pt_gloo", "gloo")) for n in names), names
    if rank == 0:
        print("GROUP FREED", flush=True)


if __name__ == "__main__":
    main()
