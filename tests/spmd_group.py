"""The process group of the scripts the tests run under torchrun (nn_*.py, *_spmd.py,
spmd_chain.py).  Each script calls ``join()`` at its top and ``leave()`` at its end: run alone
(``torchrun --nproc-per-node=N tests/nn_layers.py``) it makes the gloo group and destroys it;
run by tests/spmd_cases.py, which runs many scripts in one launch, the group is the runner's
and outlives the script."""

from datetime import timedelta

import torch.distributed as dist

# a rank that never comes (a peer that failed) ends a collective in this time, not gloo's 30 min
TIMEOUT = timedelta(seconds=180)
_made = False


def join() -> tuple[int, int]:
    """This rank and the world size, the group made if nobody has made it."""
    global _made
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)
        _made = True
    return dist.get_rank(), dist.get_world_size()


def leave() -> None:
    """Leave together (a rank tearing gloo down while a peer still works can abort at exit),
    then destroy the group if ``join`` made it."""
    global _made
    dist.barrier()
    if _made:
        dist.destroy_process_group()
        _made = False
