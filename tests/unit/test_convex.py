"""Frank-Wolfe on f(x) = 0.5 ||x - x*||^2 with x* inside the hull of random vertices.

f* = 0 is known, so the duality gap bound, the O(1/t) rate of FW-hard and FW-soft's
fast convergence are checked against the true optimum.
"""

import pytest
import torch
from toy import SHAPES, TEXTBOOK_SOFT_RULES, QuadraticObjective, random_pool, solve

from fusion_bench_fw.core import FrankWolfeConfig, HardConfig, SoftConfig, materialise
from fusion_bench_fw.core.stores import InMemoryVertexStore

N = 6


def _problem(seed=0, layerwise_target=False):
    models = random_pool(N, SHAPES, seed=seed, scale=1.0)
    store = InMemoryVertexStore(models)
    names = [f"m{i}" for i in range(N)]
    g = torch.Generator().manual_seed(seed + 50)
    target = {}
    w = torch.rand(N, generator=g)
    w = w / w.sum()
    for key in SHAPES:
        if layerwise_target:  # a different convex combination per tensor: only the product hull holds it
            w = torch.rand(N, generator=g)
            w = w / w.sum()
        target[key] = sum(w[i] * models[n][key] for i, n in enumerate(names))
    return models, store, names, target


def _diameter_sq(models, names):
    flat = [torch.cat([models[n][k].reshape(-1) for k in SHAPES]).double() for n in names]
    return max(float(torch.sum((a - b) ** 2)) for a in flat for b in flat)


def test_fw_hard_gap_bounds_suboptimality_and_rate_is_one_over_t():
    models, store, names, target = _problem(0)
    objective = QuadraticObjective(target)
    config = HardConfig(granularity="task", max_iters=200, include_init_vertex=False)
    result = solve(objective, store, names, {"_pretrained_": 1.0}, config, progress=False)
    its = result.history.iterations
    for rec in its:
        assert rec.gap >= rec.loss - 1e-9  # f(x_t) - f* <= gap_t (f* = 0)
    # classic bound f(x_t) - f* <= 2 L D^2 / (t + 2) for t >= 1 (L = 1)
    d2 = _diameter_sq(models, names)
    for rec in its[1:]:
        assert rec.loss <= 2 * d2 / (rec.t + 2) + 1e-9
    # and the rate is really reached: f_t * t stays bounded, f_200 is small
    assert its[-1].loss < its[1].loss / 20
    assert result.history.final_loss < 2 * d2 / 202


def test_fw_hard_layerwise_reaches_a_target_only_the_product_hull_contains():
    models, store, names, target = _problem(1, layerwise_target=True)
    task = solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(granularity="task", max_iters=100, include_init_vertex=False, step_rule="fw_default"),
        progress=False,
    )
    layer = solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(granularity="layer", max_iters=100, include_init_vertex=False, step_rule="fw_default"),
        progress=False,
    )
    assert layer.history.final_loss < 0.05 * task.history.final_loss
    for rec in layer.history.iterations:
        assert rec.gap >= rec.loss - 1e-9


def test_fw_soft_with_all_vertices_gets_close_in_few_iterations():
    models, store, names, target = _problem(2)
    objective = QuadraticObjective(target)
    f0 = objective.loss(models["_pretrained_"])
    config = SoftConfig(
        **TEXTBOOK_SOFT_RULES,
        granularity="task",
        coef_granularity="task",
        k=N,
        max_iters=3,
        inner_steps=300,
        inner_lr=0.02,
        include_init_vertex=False,
    )
    result = solve(objective, store, names, {"_pretrained_": 1.0}, config, progress=False)
    assert result.history.final_loss < 1e-3 * f0
    losses = [r.loss for r in result.history.iterations] + [result.history.final_loss]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))  # never worse than staying put


@pytest.mark.parametrize("minimum", [-0.3, 0.0, 0.2, 0.45, 0.7, 1.0, 1.6])
def test_golden_section_finds_the_minimum_and_never_loses_to_the_scheduled_step(minimum):
    """On convex parabolas with the minimum before, inside and beyond [0, upper]: within the
    bracket's final width of a brute-force grid minimum, and never worse than gamma = upper."""
    from fusion_bench_fw.core.steps import golden_section_search

    upper = 0.8
    phi = lambda g: 3.0 * (g - minimum) ** 2 + 0.25  # noqa: E731
    gamma, value = golden_section_search(phi, upper, evaluations=30)
    grid = [upper * i / 100_000 for i in range(100_001)]
    best = min(grid, key=phi)
    assert value == phi(gamma) and value <= phi(upper)
    assert abs(gamma - best) <= upper * 0.618**27 + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_a_line_search_step_is_never_worse_than_the_open_loop_step(seed):
    """One FW-hard step from the same iterate: the line search on [0, 2/(t+2)] evaluates the
    open-loop step itself, so its loss is at most that step's. (Over many steps neither rule
    dominates: from the pretrained start the open-loop first step jumps into the hull at once.)"""
    _, store, names, target = _problem(seed)
    start = {"_pretrained_": 0.4, names[0]: 0.3, names[1]: 0.3}
    losses = {}
    for rule in ("line_search", "fw_default"):
        config = HardConfig(granularity="task", step_rule=rule, max_iters=1, include_init_vertex=False)
        losses[rule] = solve(QuadraticObjective(target), store, names, start, config, progress=False).history.final_loss
    assert losses["line_search"] <= losses["fw_default"] + 1e-12


@pytest.mark.parametrize("variant", ["hard", "soft"])
@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_coefficients_reproduce_the_merge_and_stay_on_the_simplex(variant, granularity):
    models, store, names, target = _problem(4)
    soft = {**TEXTBOOK_SOFT_RULES, "inner_steps": 5, "k": 2} if variant == "soft" else {}
    config = FrankWolfeConfig.build(variant, granularity=granularity, max_iters=4, **soft)
    init = {"_pretrained_": 1 - 0.3 * N, **{n: 0.3 for n in names}}
    before = {n: {k: v.clone() for k, v in m.items()} for n, m in models.items()}
    result = solve(QuadraticObjective(target), store, names, init, config, progress=False)
    rebuilt = materialise(store, result.coefficients, store.keys, "cpu", torch.float32)
    for key in store.keys:
        assert torch.allclose(rebuilt[key], result.params[key], atol=1e-5)
    # inputs are never mutated
    for n, m in models.items():
        for k, v in m.items():
            assert torch.equal(v, before[n][k])
    # from the TA init (affine, outside the hull) the weights still sum to one per tensor
    assert torch.allclose(result.coefficients.sum(dim=0), torch.ones(len(store.keys), dtype=torch.float64))


def test_fw_hard_from_pretrained_ends_in_the_hull():
    models, store, names, target = _problem(5)
    result = solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(granularity="layer", max_iters=5, step_rule="fw_default"),
        progress=False,
    )
    alpha = result.coefficients
    # gamma_0 = 1 jumps onto a vertex: the pretrained weight drops to zero after step 0
    assert torch.allclose(alpha[store.names.index("_pretrained_")], torch.zeros(alpha.shape[1], dtype=torch.float64))
    assert (alpha >= -1e-12).all()


def test_gap_tol_stops_early():
    models, store, names, target = _problem(6)
    result = solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(granularity="task", max_iters=500, gap_tol=1.0, include_init_vertex=False),
        progress=False,
    )
    assert len(result.history.iterations) < 500
    assert result.history.iterations[-1].gap <= 1.0
    assert "gap_tol" in result.history.stop_reason


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_soft_gap_covers_the_start_it_keeps_weight_on(granularity):
    # FW-soft on the capped simplex keeps weight on its start (here the pretrained model, not a
    # vertex), so its iterates live in conv(start + vertices). With the optimum x* = half start,
    # half vertices (outside the candidates' hull) the gap must still bound f - f* = f, and so
    # never go negative, although every candidate alone is worse than the iterate near x*.
    models, store, names, _ = _problem(7)
    target = {k: 0.5 * models["_pretrained_"][k] + 0.5 * sum(models[n][k] for n in names) / N for k in SHAPES}
    config = SoftConfig(
        **TEXTBOOK_SOFT_RULES,
        granularity=granularity,
        coef_granularity="task",
        k=N,
        max_iters=6,
        inner_steps=200,
        inner_lr=0.02,
        include_init_vertex=False,
    )
    result = solve(QuadraticObjective(target), store, names, {"_pretrained_": 1.0}, config, progress=False)
    its = result.history.iterations
    assert its[-1].loss < 1e-3 * its[0].loss  # it does reach x*, which only the larger set holds
    for rec in its:
        assert rec.gap >= rec.loss - 1e-9
    assert "_pretrained_" not in result.history.vertices  # scored for the gap, never a candidate
