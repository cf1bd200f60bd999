"""Step-size rules for the Frank-Wolfe update theta <- theta + gamma * direction."""

from __future__ import annotations

import math
from collections.abc import Callable

STEP_RULES = ("fw_default", "constant", "line_search")


def check_step_rule(rule: str, scale: float) -> None:
    if rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {rule!r}; use one of {STEP_RULES}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"step_scale must be a positive number, got {scale!r}")


def scheduled_step(rule: str, t: int, scale: float) -> float:
    """gamma_t for the open-loop rules, clamped to [0, 1] so iterates stay in the hull.

    ``fw_default`` is the classic 2/(t+2) scaled by ``scale`` (1.0 is textbook FW;
    FusionBench's in-tree FW uses step_size * scaling_factor, e.g. 0.1 * 0.3).
    For ``line_search`` this is the upper end of the search interval.
    """
    if rule in ("fw_default", "line_search"):
        gamma = scale * 2.0 / (t + 2.0)
    elif rule == "constant":
        gamma = scale
    else:
        raise ValueError(f"unknown step_rule {rule!r}; use one of {STEP_RULES}")
    return min(max(gamma, 0.0), 1.0)


def golden_section_search(phi: Callable[[float], float], upper: float, evaluations: int = 8) -> tuple[float, float]:
    """Minimise a 1-D function on [0, upper] with ``evaluations`` calls (unimodal assumed).

    Also evaluates the end point ``upper`` and keeps the best value seen, so the result is
    never worse than the scheduled step; returns ``(gamma, phi(gamma))``.
    """
    if evaluations < 1:
        raise ValueError("line search needs at least one evaluation")
    best = (upper, phi(upper))
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = 0.0, upper
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = phi(c), phi(d)
    used = 3
    for gamma, value in ((c, fc), (d, fd)):
        if value < best[1]:
            best = (gamma, value)
    while used < evaluations:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = phi(c)
            cand = (c, fc)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = phi(d)
            cand = (d, fd)
        used += 1
        if cand[1] < best[1]:
            best = cand
    return best
