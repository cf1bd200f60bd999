"""The linear minimisation oracle over a finite vertex set, streamed tensor by tensor.

For a gradient g at the iterate theta and vertices v_i, the LMO is argmin_i <g, v_i>.
It is computed as <g, v_i - theta> (same argmin, better conditioned, and its negated
minimum is directly the Frank-Wolfe gap). Layer-wise granularity is the product of
per-block hulls, so the LMO decomposes into one argmin per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

LMO_SCORES = ("inner", "cosine")
GRANULARITIES = ("task", "layer")


@dataclass(frozen=True)
class Blocks:
    """Partition of the parameter names into LMO blocks."""

    keys: List[str]
    block_of: Dict[str, int]
    names: List[str]

    @property
    def count(self) -> int:
        return len(self.names)

    @classmethod
    def build(cls, keys: Sequence[str], granularity: str) -> "Blocks":
        keys = list(keys)
        if granularity == "task":
            return cls(keys, {k: 0 for k in keys}, ["model"])
        if granularity == "layer":
            return cls(keys, {k: i for i, k in enumerate(keys)}, list(keys))
        raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")


@dataclass
class ScoreTable:
    """Per-gradient, per-vertex, per-block scores of one LMO pass.

    ``inner[g, i, b] = sum_{p in b} <grad_g,p, v_i,p - theta_p>`` (float64);
    ``cosine[g, i, b] = sum_{p in b} cos(grad_g,p, v_i,p)`` when requested, with 0/0 := 0
    (the per-tensor cosine with full weights that FusionBench's in-tree FW uses).
    """

    vertex_names: List[str]
    inner: Tensor
    cosine: Optional[Tensor] = None

    def scores(self, lmo_score: str) -> Tensor:
        if lmo_score == "inner":
            return self.inner
        if lmo_score == "cosine":
            assert self.cosine is not None, "cosine scores were not computed in this pass"
            return self.cosine
        raise ValueError(f"unknown lmo_score {lmo_score!r}; use one of {LMO_SCORES}")

    def gap(self, gradient_index: int = 0) -> float:
        """Frank-Wolfe gap max_{v in hull} <g, theta - v> summed over blocks."""
        return float(-self.inner[gradient_index].min(dim=0).values.sum())


def _dot64(a: Tensor, b: Tensor) -> Tensor:
    return torch.sum(a.reshape(-1).double() * b.reshape(-1).double())


def score_vertices(
    gradients: Sequence[Mapping[str, Tensor]],
    iterate: Mapping[str, Tensor],
    vertex_names: Sequence[str],
    read_vertex: Callable[[str, str], Tensor],
    blocks: Blocks,
    cosine: bool = False,
) -> ScoreTable:
    """One streaming pass: for each tensor name, read that tensor of every vertex once.

    Peak extra memory is one vertex tensor (plus its difference to the iterate); every
    candidate is read exactly once per pass whatever the number of gradients.
    """
    n_grad, n_vert = len(gradients), len(vertex_names)
    device = next(iter(iterate.values())).device
    inner = torch.zeros(n_grad, n_vert, blocks.count, dtype=torch.float64, device=device)
    cos = torch.zeros(n_grad, n_vert, blocks.count, dtype=torch.float64) if cosine else None
    with torch.no_grad():
        for key in blocks.keys:
            b = blocks.block_of[key]
            theta = iterate[key]
            grads = [g[key] for g in gradients]
            grad_norms = [float(torch.linalg.vector_norm(g.double())) for g in grads] if cosine else None
            for i, name in enumerate(vertex_names):
                v = read_vertex(name, key).to(device=theta.device, dtype=theta.dtype)
                diff = v - theta
                v_norm = float(torch.linalg.vector_norm(v.double())) if cosine else 0.0
                for gi, g in enumerate(grads):
                    inner[gi, i, b] += _dot64(g, diff)
                    if cosine:
                        denom = grad_norms[gi] * v_norm
                        if denom > 0:
                            cos[gi, i, b] += float(_dot64(g, v)) / denom
                del v, diff
    return ScoreTable(list(vertex_names), inner.cpu(), cos)


def select_hard(scores: Tensor) -> Tensor:
    """Argmin vertex per block: ``scores`` is ``(V, B)``, returns ``(B,)`` indices."""
    return torch.argmin(scores, dim=0)


def select_topk(scores: Tensor, k: int) -> Tensor:
    """The k smallest-scoring vertices per block, best first: returns ``(k, B)``."""
    n = scores.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of vertices ({n})")
    return torch.topk(scores, k, dim=0, largest=False).indices


def select_per_task(scores: Tensor) -> Tensor:
    """FusionBench's in-tree FW-soft rule: one vertex per task gradient, each the best
    not yet picked for that block. ``scores`` is ``(G, V, B)``; returns ``(min(G, V), B)``."""
    n_grad, n_vert, n_block = scores.shape
    k = min(n_grad, n_vert)
    chosen = torch.empty(k, n_block, dtype=torch.long)
    taken = torch.zeros(n_vert, n_block, dtype=torch.bool)
    for j in range(k):
        masked = scores[j].masked_fill(taken, float("inf"))
        pick = torch.argmin(masked, dim=0)
        chosen[j] = pick
        taken[pick, torch.arange(n_block)] = True
    return chosen
