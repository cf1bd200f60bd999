"""Toy problems with known optima for the pure-PyTorch core (no FusionBench)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fusion_bench_fw.core.objective import LossAndGrad

# FW-soft as the paper's text reads it (the core's defaults before they were chosen by
# measurement): the tests of its mathematical properties pin it. RULES: without the step budget.
TEXTBOOK_SOFT_RULES = dict(
    lmo_score="inner", soft_select="topk", soft_constraint="capped_simplex", inner_init=None, inner_init_later=None
)
TEXTBOOK_SOFT = dict(TEXTBOOK_SOFT_RULES, inner_lr=0.01, inner_steps=100)
TEXTBOOK_HARD = dict(step_rule="fw_default")  # FW-hard's open-loop 2/(t+2), the default before line search


class QuadraticObjective:
    """f(theta) = 0.5 * sum_p ||theta_p - target_p||^2 (L = 1, f* = 0 when target is feasible)."""

    def __init__(self, target: Mapping[str, torch.Tensor], tasks=("toy",)):
        self.target = {k: v.double() for k, v in target.items()}
        self.task_names = list(tasks)
        self.calls = 0

    def _value(self, params):
        return 0.5 * sum(float(torch.sum((params[k].double() - t) ** 2)) for k, t in self.target.items())

    def loss_and_grad(self, params, per_task=False) -> LossAndGrad:
        self.calls += 1
        grad = {k: (params[k].double() - t).to(params[k].dtype) for k, t in self.target.items()}
        value = self._value(params)
        grads = (
            [grad]
            if not per_task
            else [grad] + [{k: torch.zeros_like(v) for k, v in grad.items()}] * (len(self.task_names) - 1)
        )
        return LossAndGrad(value, {self.task_names[0]: value}, grads)

    def loss(self, params) -> float:
        return self._value(params)


def random_pool(n_models: int, shapes: dict[str, tuple], seed: int = 0, scale: float = 1.0):
    """A pretrained checkpoint and n fine-tuned ones = pretrained + random task vectors.

    Drawn with NumPy's seeded generator: the same bytes on every CPU (``torch.randn`` takes
    vectorised paths whose rounding depends on the CPU), which the behaviour lock relies on."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    pre = {k: draw(s) for k, s in shapes.items()}
    models = {"_pretrained_": pre}
    for i in range(n_models):
        models[f"m{i}"] = {k: v + scale * draw(v.shape) for k, v in pre.items()}
    return models


SHAPES = {"layer0.weight": (6, 5), "layer0.bias": (6,), "layer1.weight": (3, 6)}


def write_pool(models, directory) -> dict[str, str]:
    """Each model of ``models`` as ``directory/<name>.safetensors``; returns the paths by name."""
    import os

    from fusion_bench_fw.core.stores import save_safetensors_atomic

    paths = {}
    for name, state in models.items():
        paths[name] = os.path.join(directory, f"{name}.safetensors")
        save_safetensors_atomic(state, paths[name])
    return paths


def solve(objective, store, candidates, start, config, pretrained="_pretrained_", **kwargs):
    """The tests' usual run: plan ``candidates`` from theta_0 = ``start``, then Frank-Wolfe."""
    from fusion_bench_fw.core import frank_wolfe, plan_vertices

    plan = plan_vertices(candidates, start, config, len(objective.task_names), pretrained)
    return frank_wolfe(objective, store, plan, config, **kwargs)
