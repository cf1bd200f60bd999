"""Objectives: the loss of the merged model on fixed labelled samples, and its gradient.

The solver only needs ``loss_and_grad(params)`` and ``loss(params)`` on a dict of merged
tensors; :class:`BatchedObjective` provides them for any ``nn.Module`` by calling it
functionally with those tensors (the module's own parameters are never written), so the
same code serves CLIP, language models and toy problems.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .distributed import SINGLE_PROCESS, Communicator

TASK_WEIGHTINGS = ("mean", "sum_samples")


@dataclass
class LossAndGrad:
    """f(theta), the per-task mean losses, and the gradient(s).

    ``grads`` holds one dict per requested gradient: the total objective, or one per
    task when asked for per-task gradients (in ``task_names`` order).
    """

    loss: float
    task_losses: dict[str, float]
    grads: list[dict[str, Tensor]]


# A tensor whose gradient is at most this fraction of the whole gradient's norm carries float rounding
# only: CLIP's attention key bias, for one, shifts every logit of a query alike, so the softmax ignores it
# and its exact gradient is 0 (computed: ~1e-9 of the whole in float32, the next smallest tensor ~1e-3).
# Left as it is, that noise would pick the LMO's vertex for such a tensor, cast a full cosine vote and
# take Adam steps, all of which differ from one CPU to the next.
NEGLIGIBLE_GRADIENT = 1e-6


def drop_rounding_noise(grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``grad`` with every tensor at or below :data:`NEGLIGIBLE_GRADIENT` of the whole norm set to 0
    (a new dict; the others are the same tensors)."""
    if not grad:
        return dict(grad)
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64).to("cpu") for g in grad.values()])
    negligible = (norms <= NEGLIGIBLE_GRADIENT * torch.linalg.vector_norm(norms)).tolist()
    return {k: torch.zeros_like(g) if zero else g for (k, g), zero in zip(grad.items(), negligible)}


class Objective(Protocol):
    task_names: Sequence[str]

    def loss_and_grad(self, params: Mapping[str, Tensor], per_task: bool = False) -> LossAndGrad: ...

    def loss(self, params: Mapping[str, Tensor]) -> float: ...


# (module, params, inputs, task) -> mean loss over the batch
BatchLoss = Callable[[nn.Module, Mapping[str, Tensor], Any, str], Tensor]


@dataclass
class Batch:
    inputs: Any
    size: int


@dataclass
class BatchedObjective:
    """f(theta) = sum_tau w_tau * mean_{(x, y) in D_tau} loss(theta; x, y).

    ``batches[task]`` are pre-built, fixed batches (D_tau is chosen once, so every
    iteration sees the same objective). ``task_weighting="mean"`` uses w_tau = 1/|T|
    (comparable across settings); ``"sum_samples"`` sums per-sample losses (the authors'
    NLP code). ``to_device`` moves a batch's inputs to the compute device.

    With a multi-process ``communicator`` each rank evaluates a round-robin share of the
    batches (numbered across all tasks) and the losses and gradients are summed over
    ranks, so every rank returns the single-process values.
    """

    module: nn.Module
    batches: Mapping[str, Sequence[Batch]]
    batch_loss: BatchLoss
    task_weighting: str = "mean"
    to_device: Callable[[Any], Any] = lambda x: x
    autocast_dtype: torch.dtype | None = None
    communicator: Communicator = SINGLE_PROCESS
    task_names: list[str] = field(init=False)

    def __post_init__(self):
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"unknown task_weighting {self.task_weighting!r}; use one of {TASK_WEIGHTINGS}")
        self.task_names = list(self.batches)
        if not self.task_names:
            raise ValueError("the objective has no target tasks: give at least one task with labelled samples")
        for task, batches in self.batches.items():
            if sum(b.size for b in batches) == 0:
                raise ValueError(f"target task {task!r} has no labelled samples")
        self.module.requires_grad_(False)
        numbered = [(task, i) for task in self.task_names for i in range(len(self.batches[task]))]
        self._mine = {task: [] for task in self.task_names}
        for task, i in self.communicator.share(numbered):
            self._mine[task].append(self.batches[task][i])

    def _weight(self, task: str, batch: Batch) -> float:
        n = sum(b.size for b in self.batches[task])
        if self.task_weighting == "mean":
            return batch.size / n / len(self.task_names)
        return float(batch.size)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _task_loss(self, task: str, params: Mapping[str, Tensor], device: torch.device, leaves=None, grads=None):
        total = 0.0
        for batch in self._mine[task]:
            with self._autocast(device):
                loss = self.batch_loss(self.module, params, self.to_device(batch.inputs), task)
            weighted = loss.float() * self._weight(task, batch)
            if leaves is not None:
                parts = torch.autograd.grad(weighted, [leaves[k] for k in leaves], allow_unused=True)
                for k, g in zip(leaves, parts):
                    if g is not None:
                        grads[k].add_(g)
            total += float(weighted.detach())
        return total

    def loss_and_grad(self, params: Mapping[str, Tensor], per_task: bool = False) -> LossAndGrad:
        device = next(iter(params.values())).device
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        zero = lambda: {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}  # noqa: E731
        total_grad = None if per_task else zero()
        grads, contributions = [], []
        for task in self.task_names:
            g = zero() if per_task else total_grad
            contributions.append(self._task_loss(task, leaves, device, leaves, g))
            if per_task:
                grads.append(g)
        if not per_task:
            grads.append(total_grad)
        comm = self.communicator
        contributions = comm.sum_floats(contributions, device)
        grads = [comm.sum_tensors(g) for g in grads]
        task_losses = {t: c / self._task_scale(t) for t, c in zip(self.task_names, contributions)}
        return LossAndGrad(sum(contributions), task_losses, grads)

    @torch.no_grad()
    def loss(self, params: Mapping[str, Tensor]) -> float:
        device = next(iter(params.values())).device
        parts = [self._task_loss(task, params, device) for task in self.task_names]
        return sum(self.communicator.sum_floats(parts, device))

    @torch.no_grad()
    def task_losses(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """Each task's mean per-sample loss (the terms of :meth:`loss`, each without its weight)."""
        device = next(iter(params.values())).device
        parts = self.communicator.sum_floats([self._task_loss(t, params, device) for t in self.task_names], device)
        return {t: c / self._task_scale(t) for t, c in zip(self.task_names, parts)}

    def _task_scale(self, task: str) -> float:
        """Factor between a task's contribution to f and its mean per-sample loss."""
        if self.task_weighting == "mean":
            return 1.0 / len(self.task_names)
        return float(sum(b.size for b in self.batches[task]))


def functional_forward(module: nn.Module, params: Mapping[str, Tensor], *args, **kwargs):
    """Run ``module`` with ``params`` substituted for its own tensors, without writing them."""
    return torch.func.functional_call(module, dict(params), args, kwargs, strict=False)
