"""Spatially parallel CNN layers and models on torch.distributed.

Every rank holds a shard of each activation (its box of the samples' rows, columns or
tiles); layers exchange halos with their neighbours in forward and backward, so training
matches single-node training.  See parallelize, shard/unshard, local_box.
"""

# torch.optim imports torch._dynamo when the first optimizer is made.  Imported after
# init_process_group, dynamo keeps 10 references to the default process group (measured with
# sys.getrefcount; the same with plain torch collectives, no haloconv), so
# destroy_process_group does not free it: its gloo threads live on and are torn down at
# interpreter exit, which now and then aborts a rank ("terminate called without an active
# exception").  Imported here, before a training script makes its group, dynamo holds none.
import torch._dynamo  # noqa: F401, I001 - for its import-time side effect, see above

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
