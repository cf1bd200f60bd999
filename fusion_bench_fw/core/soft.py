"""FW-soft's update: optimise the step weights lambda of the selected vertices, then move.

With k selected vertices s_j (per block) and weights lambda (k x columns: one column per
tensor, or one for the whole model), the candidate iterate is
theta(lambda) = theta + sum_j lambda_j (s_j - theta), and
d f / d lambda_{j,c} = sum_{p in column c} <grad_p, s_{j,p} - theta_p>: each inner step
costs one gradient of the objective and k inner products, no extra graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import SoftConfig
from .lmo import Blocks, select_per_task, select_topk
from .objective import Objective, drop_rounding_noise
from .simplex import project_box, project_capped_simplex, project_simplex
from .vertices import Vertices

PROJECTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "capped_simplex": project_capped_simplex,
    "simplex_selected": project_simplex,
    "box": project_box,
    "none": lambda lam: lam,
}


@dataclass
class Selection:
    """The selected vertices' differences to theta (k models resident: constant in the pool size)."""

    names: list[list[str]]  # names[j][p]: the j-th selected vertex of tensor p
    deltas: list[dict[str, Tensor]]  # deltas[j][key] = s_j - theta
    column: dict[str, int]  # key -> its lambda column

    @classmethod
    def gather(cls, vertices: Vertices, blocks: Blocks, chosen: Tensor, theta, coef_granularity: str) -> Selection:
        keys = blocks.keys
        names = [[vertices.names[int(chosen[j, blocks.block_of[key]])] for key in keys] for j in range(chosen.shape[0])]
        with torch.no_grad():
            deltas = [
                {key: vertices.read(row[p], key).to(theta[key]) - theta[key] for p, key in enumerate(keys)}
                for row in names
            ]
        column = {key: (0 if coef_granularity == "task" else p) for p, key in enumerate(keys)}
        return cls(names, deltas, column)

    @property
    def k(self) -> int:
        return len(self.deltas)

    @property
    def n_columns(self) -> int:
        return max(self.column.values()) + 1

    def combine(self, theta: dict[str, Tensor], weights: Tensor) -> dict[str, Tensor]:
        """theta + sum_j weights_j (s_j - theta), a new dict (theta is untouched)."""
        w = weights.detach().to(torch.float32)
        out = {}
        for key, value in theta.items():
            acc = value.clone()
            for j in range(self.k):
                acc.add_(self.deltas[j][key], alpha=float(w[j, self.column[key]]))
            out[key] = acc
        return out

    def gradient(self, grad: dict[str, Tensor], shape) -> Tensor:
        """d f / d lambda from the objective's gradient: one BLAS dot per (vertex, tensor)
        on the compute device, one transfer per step."""
        keys = list(self.column)
        out = torch.zeros(shape, dtype=torch.float64, device=grad[keys[0]].device)
        for key in keys:
            flat = grad[key].reshape(-1).float()
            for j in range(self.k):
                out[j, self.column[key]] += torch.dot(flat, self.deltas[j][key].reshape(-1).float()).double()
        return out


class SoftStep:
    """FW-soft's iteration after the LMO pass: k vertices per block (each target's own, or the k
    best), their step weights searched on the inner objective (the outer one unless given), the move."""

    def __init__(
        self,
        config: SoftConfig,
        objective: Objective,
        vertices: Vertices,
        blocks: Blocks,
        k: int,
        inner=None,
        guard=None,
        **_,
    ):
        if config.needs_inner_objective and inner is None:
            raise ValueError(f"inner_loss={config.inner_loss} needs its inner objective; none was given")
        self.config, self.vertices, self.blocks, self.k = config, vertices, blocks, k
        self.inner, self.inner_is_outer = inner or objective, inner is None or inner is objective
        self.guard = guard

    def update(self, theta, alpha, scores: Tensor, record, t: int) -> Tensor:
        """Move ``theta`` and ``alpha`` by ``scores`` (gradients x vertices x blocks: the total, then
        one per task when the selection is per task); records the inner search; returns the choice,
        (k, blocks) vertex indices."""
        chosen = select_per_task(scores[1:]) if self.config.per_task_gradients else select_topk(scores[0], self.k)
        loss_here = record.loss if self.inner_is_outer else None
        record.inner = soft_step(
            self.inner, theta, self.vertices, self.blocks, chosen, self.config, alpha, loss_here, t, self.guard
        )
        record.guard = record.inner.pop("guard", None)
        return chosen


def soft_step(
    objective: Objective,
    theta,
    vertices: Vertices,
    blocks: Blocks,
    chosen: Tensor,
    config: SoftConfig,
    alpha,
    loss_here,
    t: int = 0,
    guard=None,
):
    """Search lambda for the ``chosen`` vertices (k x blocks) on ``objective`` (the outer one, or
    the inner loss the config names), let the hold-out ``guard`` (if any) refuse weights, then move
    theta (in place) and its coefficients ``alpha``. Returns the search's summary for the history."""
    selection = Selection.gather(vertices, blocks, chosen, theta, config.coef_granularity)
    best_loss, best_lam, trace = inner_search(objective, theta, selection, config, loss_here, t)
    verdict = None
    if guard is not None:
        best_lam, verdict = guard.check_weights(theta, lambda lam: selection.combine(theta, lam), best_lam, chosen)
    move(theta, alpha, vertices, selection, best_lam)
    return {
        **({"guard": verdict} if verdict is not None else {}),
        "loss_start": loss_here,
        "loss_best": best_loss,
        "trace": trace,
        "lambda_sum_mean": float(best_lam.sum(dim=0).mean()),
        "lambda": best_lam.mean(dim=1).tolist() if selection.n_columns > 1 else best_lam[:, 0].tolist(),
    }


def inner_search(
    objective: Objective, theta, selection: Selection, config: SoftConfig, loss_here: float | None, t: int = 0
):
    """Projected gradient on lambda; returns (kept loss, kept lambda, losses along the way).

    On a deterministic objective the best lambda seen is kept: staying put (lambda = 0,
    ``loss_here``) is feasible, and so the best so far, for every constraint but
    ``simplex_selected``, and FW-soft never makes the objective worse. On a stochastic one
    (``objective.stochastic``: fresh batches every call, losses not comparable) the last is kept."""
    project = PROJECTIONS[config.soft_constraint]
    k = selection.k
    lam = project(torch.full((k, selection.n_columns), float(config.inner_start(t, k)), dtype=torch.float64))
    lam.requires_grad_(True)
    optimiser = torch.optim.Adam if config.inner_optimizer == "adam" else torch.optim.SGD
    optimiser = optimiser([lam], lr=config.inner_lr)
    if getattr(objective, "stochastic", False):
        return _last(objective, theta, selection, project, lam, optimiser, config.inner_steps)
    if loss_here is None:  # an inner objective other than the outer one
        loss_here = objective.loss(theta)
    best_loss, best_lam = (
        (loss_here, torch.zeros_like(lam.detach()))
        if config.soft_constraint != "simplex_selected"
        else (float("inf"), None)
    )
    trace = []
    for _ in range(config.inner_steps):
        here = lam.detach().clone()
        loss = _projected_step(objective, theta, selection, project, lam, optimiser)
        trace.append(loss)
        if loss < best_loss:
            best_loss, best_lam = loss, here
    final_loss = objective.loss(selection.combine(theta, lam))
    trace.append(final_loss)
    if final_loss < best_loss or best_lam is None:
        best_loss, best_lam = final_loss, lam.detach().clone()
    return best_loss, best_lam, trace


def _last(objective: Objective, theta, selection: Selection, project, lam: Tensor, optimiser, steps: int):
    """``steps`` projected steps on a stochastic objective; the last lambda is kept (its loss:
    the mean of the last 10 steps' batches, for the history)."""
    trace = [_projected_step(objective, theta, selection, project, lam, optimiser) for _ in range(steps)]
    tail = trace[-10:]
    return (sum(tail) / len(tail) if tail else float("nan")), lam.detach().clone(), trace


def _projected_step(objective: Objective, theta, selection: Selection, project, lam: Tensor, optimiser) -> float:
    """One optimiser step on lambda (in place) from its current value, then the projection;
    returns the loss at the value it started from."""
    lg = objective.loss_and_grad(selection.combine(theta, lam))
    optimiser.zero_grad()
    lam.grad = selection.gradient(drop_rounding_noise(lg.grads[0]), lam.shape).cpu()
    optimiser.step()
    with torch.no_grad():
        lam.copy_(project(lam))
    return lg.loss


def move(theta, alpha: Tensor, vertices: Vertices, selection: Selection, lam: Tensor) -> None:
    """theta += sum_j lam_j (s_j - theta), and the same step on its coefficients alpha."""
    with torch.no_grad():
        w = lam.to(torch.float32)
        for p, key in enumerate(selection.column):
            c = selection.column[key]
            for j in range(selection.k):
                theta[key].add_(selection.deltas[j][key], alpha=float(w[j, c]))
            alpha[:, p].mul_(1.0 - float(lam[:, c].sum()))
            for j in range(selection.k):
                alpha[:, p].add_(vertices.row(selection.names[j][p])[:, p], alpha=float(lam[j, c]))
