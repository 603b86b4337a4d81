"""Spatially parallel CNN layers and models on torch.distributed.

Every rank holds a shard of each activation (its box of the samples' rows, columns or
tiles); layers exchange halos with their neighbours in forward and backward, so training
matches single-node training.  See parallelize, shard/unshard, local_box.
"""

from haloconv.nn.modules import (
    DistributedAvgPool1d,
    DistributedAvgPool2d,
    DistributedAvgPool3d,
    DistributedBatchNorm1d,
    DistributedBatchNorm2d,
    DistributedBatchNorm3d,
    DistributedConv1d,
    DistributedConv2d,
    DistributedConv3d,
    DistributedMaxPool1d,
    DistributedMaxPool2d,
    DistributedMaxPool3d,
    GlobalAvgPool,
    sum_shards,
)
from haloconv.nn.parallel import parallelize
from haloconv.nn.sharding import local_box, shard, unshard

__all__ = [
    "DistributedAvgPool1d", "DistributedAvgPool2d", "DistributedAvgPool3d", "DistributedBatchNorm1d",
    "DistributedBatchNorm2d", "DistributedBatchNorm3d", "DistributedConv1d", "DistributedConv2d",
    "DistributedConv3d", "DistributedMaxPool1d", "DistributedMaxPool2d", "DistributedMaxPool3d", "GlobalAvgPool",
    "local_box", "parallelize", "shard", "sum_shards", "unshard",
]
