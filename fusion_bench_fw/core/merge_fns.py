"""Merge functions: how the selected vertices turn into an update direction.

A direction is computed tensor by tensor from the iterate theta_p and the selected
vertex tensors s_{j,p} with weights w_j, so the update pass streams like the LMO pass.
Task arithmetic gives the exact Frank-Wolfe direction sum_j w_j (s_j - theta) and keeps
iterates in the hull; TIES trims and sign-elects it, which may leave the hull (the paper
notes this), so the solver stops tracking hull coefficients when TIES is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MERGE_FNS = ("task_arithmetic", "ties")
TIES_DISJOINT = ("mean", "sum")


def task_arithmetic_direction(theta: Tensor, vertices: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    direction = torch.zeros_like(theta)
    for v, w in zip(vertices, weights):
        direction.add_(v.to(theta) - theta, alpha=float(w))
    return direction


def trim_threshold(values: Tensor, density: float) -> Tensor:
    """Magnitude at or above which the top ``density`` fraction of ``values`` is kept."""
    flat = values.reshape(-1).abs()
    keep = max(1, int(round(density * flat.numel())))
    if keep >= flat.numel():
        return torch.zeros((), dtype=flat.dtype, device=flat.device)
    return torch.topk(flat.float(), keep, sorted=False).values.min().to(flat.dtype)


def ties_direction(
    theta: Tensor,
    vertices: Sequence[Tensor],
    weights: Sequence[float],
    density: float,
    disjoint: str = "sum",
    thresholds: Sequence[Tensor] | None = None,
) -> Tensor:
    """TIES-merging of the weighted directions w_j (s_j - theta): trim each to its top
    ``density`` magnitudes (per tensor unless global ``thresholds`` are given), elect a
    sign per coordinate from the sum, and combine the agreeing entries (mean or sum)."""
    if disjoint not in TIES_DISJOINT:
        raise ValueError(f"unknown TIES disjoint merge {disjoint!r}; use one of {TIES_DISJOINT}")
    trimmed = []
    for j, (v, w) in enumerate(zip(vertices, weights)):
        d = (v.to(theta) - theta) * float(w)
        tau = thresholds[j] if thresholds is not None else trim_threshold(d, density)
        trimmed.append(torch.where(d.abs() >= tau, d, torch.zeros_like(d)))
    stack = torch.stack(trimmed)
    elected = torch.sign(stack.sum(dim=0))
    agree = (torch.sign(stack) == elected) & (stack != 0)
    kept = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    if disjoint == "sum":
        return kept
    count = agree.sum(dim=0).clamp(min=1)
    return kept / count
