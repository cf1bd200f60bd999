"""FW-hard's update: theta <- theta + gamma_t * MergeFn(s_t - theta) toward the LMO's vertex per block."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import HardConfig
from .lmo import Blocks, select_hard
from .merge_fns import task_arithmetic_direction, ties_direction, trim_threshold
from .objective import Objective
from .steps import golden_section_search, scheduled_step
from .vertices import Vertices


class HardStep:
    """FW-hard's iteration after the LMO pass: the argmin vertex of each block, then the step."""

    def __init__(self, config: HardConfig, objective: Objective, vertices: Vertices, blocks: Blocks, guard=None, **_):
        self.config, self.objective, self.vertices, self.blocks = config, objective, vertices, blocks
        self.guard = guard

    def update(self, theta, alpha, scores: Tensor, record, t: int) -> Tensor:
        """Move ``theta`` (and ``alpha``, unless None) by ``scores`` (gradients x vertices x blocks);
        records the step size; returns the choice, (1, blocks) vertex indices."""
        chosen = select_hard(scores[0])
        if self.guard is None:
            record.step_size = hard_step(
                self.objective, theta, self.vertices, self.blocks, chosen, t, self.config, alpha
            )
            return chosen.unsqueeze(0)
        before = self.guard.loss_here(theta)
        saved = ({k: v.clone() for k, v in theta.items()}, None if alpha is None else alpha.clone())
        gamma = hard_step(self.objective, theta, self.vertices, self.blocks, chosen, t, self.config, alpha)
        if gamma == 0.0:
            record.guard = {"holdout_here": before, "refused": [], "refused_pairs": [], "step": "none"}
        else:
            record.guard = self.guard.check_move(before, theta, chosen.unsqueeze(0))
            if record.guard["step"] != "kept":  # back to where the step started
                for k, v in saved[0].items():
                    theta[k].copy_(v)
                if alpha is not None:
                    alpha.copy_(saved[1])
                gamma = 0.0
        record.step_size = gamma
        return chosen.unsqueeze(0)


def hard_step(
    objective: Objective, theta, vertices: Vertices, blocks: Blocks, chosen: Tensor, t: int, config: HardConfig, alpha
) -> float:
    """Move theta (in place) toward the ``chosen`` vertex of each block; with ``alpha`` (the
    coefficients; None once TIES left the hull) take the same step on them. Returns gamma."""
    keys = blocks.keys
    picked = {key: vertices.names[int(chosen[blocks.block_of[key]])] for key in keys}
    with torch.no_grad():
        direction = {
            key: task_arithmetic_direction(theta[key], [vertices.read(picked[key], key)], [1.0]) for key in keys
        }
        if config.merge_fn == "ties":
            direction = _ties(direction, config)
        gamma = scheduled_step(config.step_rule, t, config.step_scale)
        if config.step_rule == "line_search":
            phi = lambda g: objective.loss({k: theta[k] + g * direction[k] for k in keys})  # noqa: E731
            gamma, _ = golden_section_search(phi, gamma, config.line_search_evals)
        for p, key in enumerate(keys):
            theta[key].add_(direction[key], alpha=gamma)
            if alpha is not None:
                alpha[:, p].mul_(1.0 - gamma).add_(vertices.row(picked[key])[:, p], alpha=gamma)
    return gamma


def _ties(direction: dict[str, Tensor], config: HardConfig) -> dict[str, Tensor]:
    """One direction: TIES reduces to magnitude trimming of s - theta (per tensor or globally)."""
    thresholds = None
    if config.ties_trim_scope == "global":
        thresholds = [trim_threshold(torch.cat([d.reshape(-1) for d in direction.values()]), config.ties_density)]
    return {
        key: ties_direction(torch.zeros_like(d), [d], [1.0], config.ties_density, config.ties_disjoint, thresholds)
        for key, d in direction.items()
    }
