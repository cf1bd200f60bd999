"""Euclidean projections used by FW-soft's coefficient solver.

All functions project every column of a ``(n, m)`` tensor independently, so that
layer-wise coefficients (one column per block) are projected in one vectorised call.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_simplex(v: Tensor, radius: float = 1.0) -> Tensor:
    """Project each column of ``v`` onto ``{x >= 0, sum(x) = radius}``.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008), O(n log n) per column.
    A 1-D input is treated as a single column.
    """
    if radius <= 0:
        raise ValueError(f"simplex radius must be positive, got {radius}")
    squeeze = v.dim() == 1
    x = v.unsqueeze(1) if squeeze else v
    n = x.shape[0]
    u, _ = torch.sort(x, dim=0, descending=True)
    css = torch.cumsum(u, dim=0) - radius
    ind = torch.arange(1, n + 1, dtype=x.dtype, device=x.device).unsqueeze(1)
    cond = (u - css / ind) > 0
    # rho = last index where cond holds (cond is true for a prefix of the sorted order)
    rho = cond.to(torch.int64).cumsum(dim=0).argmax(dim=0, keepdim=True)
    theta = css.gather(0, rho) / (rho + 1).to(x.dtype)
    out = torch.clamp(x - theta, min=0)
    return out.squeeze(1) if squeeze else out


def project_capped_simplex(v: Tensor) -> Tensor:
    """Project each column onto ``{x >= 0, sum(x) <= 1}``.

    This is FW-soft's default set for the step weights lambda: the new iterate
    theta_t + sum_j lambda_j (s_j - theta_t) stays in the hull of theta_t and the s_j.
    """
    clipped = torch.clamp(v, min=0)
    over = clipped.sum(dim=0) > 1
    if not bool(over.any()):
        return clipped
    out = clipped.clone()
    squeeze = v.dim() == 1
    if squeeze:
        return project_simplex(v)
    out[:, over] = project_simplex(v[:, over])
    return out


def project_box(v: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Clamp every coordinate to ``[low, high]`` (no sum constraint)."""
    return torch.clamp(v, min=low, max=high)
