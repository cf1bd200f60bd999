"""A tiny communicator so the core can run data-parallel without knowing who launched it.

The core needs two things from a multi-process run: which share of the work is this
rank's (``rank``, ``world_size``) and a sum over ranks (``all_reduce_sum``). An adapter
wires them to Lightning Fabric (or ``torch.distributed``); the default is one process,
where the sum is the identity. Every rank ends each reduction with identical tensors, so
all ranks take the same Frank-Wolfe decisions and hold the same merge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class Communicator:
    rank: int = 0
    world_size: int = 1
    # returns the elementwise sum of ``tensor`` over all ranks (same shape, dtype, device)
    all_reduce_sum: Callable[[Tensor], Tensor] = lambda tensor: tensor

    def __post_init__(self):
        if not (isinstance(self.world_size, int) and self.world_size >= 1):
            raise ValueError(f"world_size must be a positive integer, got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank!r}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Round-robin ownership of work item ``index`` (batches, candidate vertices)."""
        return index % self.world_size == self.rank

    def share(self, items: Sequence[T]) -> list[T]:
        return [x for i, x in enumerate(items) if self.owns(i)]

    def sum_tensors(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All-reduce each tensor in its own dtype: no flat copy of a whole gradient (for a
        large model a float64 buffer of all of it would cost more than the model)."""
        if not self.distributed:
            return dict(tensors)
        return {k: self.all_reduce_sum(t) for k, t in tensors.items()}

    def sum_floats(self, values: Sequence[float], device="cpu") -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        return self.all_reduce_sum(torch.tensor(list(values), dtype=torch.float64, device=device)).tolist()


SINGLE_PROCESS = Communicator()


def torch_distributed_communicator() -> Communicator:
    """The communicator of an initialised ``torch.distributed`` default group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS

    def all_reduce_sum(tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    return Communicator(dist.get_rank(), dist.get_world_size(), all_reduce_sum)
