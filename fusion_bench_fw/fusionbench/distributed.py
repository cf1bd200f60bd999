"""Lightning Fabric's collectives behind the core's :class:`Communicator`.

FusionBench builds one ``lightning.Fabric`` from ``fabric.*`` (``devices``, ``num_nodes``,
``strategy``, ``accelerator``) and launches it; every rank then runs the same method. The
core only sees rank, world size and a sum over ranks.
"""

from __future__ import annotations

from torch import Tensor

from fusion_bench_fw.core.distributed import SINGLE_PROCESS, Communicator


def fabric_communicator(fabric) -> Communicator:
    """Single-process when there is no Fabric or it has one rank."""
    if fabric is None or int(getattr(fabric, "world_size", 1)) <= 1:
        return SINGLE_PROCESS

    def all_reduce_sum(tensor: Tensor) -> Tensor:
        # the collective runs on Fabric's device (NCCL needs CUDA tensors, gloo takes CPU ones)
        summed = fabric.all_reduce(tensor.to(fabric.device).clone(), reduce_op="sum")
        return summed.to(device=tensor.device, dtype=tensor.dtype)

    return Communicator(int(fabric.global_rank), int(fabric.world_size), all_reduce_sum)
