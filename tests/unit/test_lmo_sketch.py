"""The sketched LMO (``lmo_sketch`` > 0): its sketch is the count sketch it says (a float64 brute-force
reference), its estimates keep the JL error bound, its choice is the exact LMO's when every vertex is
re-checked (or when the sketch is exact), its cache is reused and made again for a changed checkpoint,
bad option values are refused, and the exact LMO stays the default, unchanged."""

from __future__ import annotations

import math
import os

import pytest
import torch
from toy import SHAPES, TEXTBOOK_SOFT_RULES, QuadraticObjective, random_pool, solve, write_pool

from fusion_bench_fw.core import FrankWolfeConfig, HardConfig, InMemoryVertexStore, SafetensorsVertexStore
from fusion_bench_fw.core import sketch as sketch_module
from fusion_bench_fw.core.lmo import Blocks, score_vertices
from fusion_bench_fw.core.sketch import SketchedLMO, count_sketch, hash_constants
from fusion_bench_fw.core.stores import save_safetensors_atomic
from fusion_bench_fw.core.vertices import Vertices, plan_vertices


def reference_sketch(x: torch.Tensor, key: str, size: int) -> torch.Tensor:
    """S x with S written out as a dense float64 matrix, from the hash computed on Python integers."""
    a, b = hash_constants(key)
    n = x.numel()
    dense = torch.zeros(size, n, dtype=torch.float64)
    for j in range(n):
        h = (a * j + b) % (1 << 64)
        dense[((h >> 31) & 0xFFFFFFFF) * size >> 32, j] = -1.0 if h >> 63 else 1.0
    return dense @ x.reshape(-1).double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_count_sketch_is_its_dense_matrix_across_chunks(monkeypatch, dtype):
    monkeypatch.setattr(sketch_module, "HASH_CHUNK_CPU", 7)  # many chunks, a ragged last one
    x = torch.randn(5, 11, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = reference_sketch(x, "layer.weight", 16)
    assert torch.allclose(count_sketch([x], "layer.weight", 16)[0], expected, rtol=1e-6, atol=1e-6)
    small = torch.randn(9, dtype=dtype)
    assert torch.equal(count_sketch([small], "bias", 16)[0], small.double())  # at most `size` entries: itself


def test_sketched_inner_products_keep_the_jl_error_bound():
    """Over tensors (each its own hash), <S g, S x> - <g, x> has a mean square of about
    ||g||^2 ||x||^2 / m; float64 inner products are the reference."""
    n, size, trials = 4000, 128, 200
    gen = torch.Generator().manual_seed(1)
    errors = []
    for t in range(trials):
        g, x = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        sketched = count_sketch([g, x], f"tensor{t}", size)
        exact = float(g.double() @ x.double())
        errors.append((float(sketched[0] @ sketched[1]) - exact) / float(g.double().norm() * x.double().norm()))
    errors = torch.tensor(errors, dtype=torch.float64)
    bound = 1 / math.sqrt(size)
    assert float(errors.pow(2).mean().sqrt()) <= 1.3 * bound
    assert float(errors.abs().max()) <= 4 * bound
    assert abs(float(errors.mean())) <= 4 * bound / math.sqrt(trials)  # unbiased


def _lmo(config, k_tasks=3, seed=0, n=7):
    """A random pool, iterate and gradients around it, and the run's vertices and blocks under ``config``."""
    models = random_pool(n, SHAPES, seed=seed, scale=0.3)
    store = InMemoryVertexStore(models)
    names = [f"m{i}" for i in range(n)]
    gen = torch.Generator().manual_seed(100 + seed)
    theta = {k: models["_pretrained_"][k] + 0.1 * torch.randn(s, generator=gen) for k, s in SHAPES.items()}
    # gradients that point at the task vectors, as a task's loss does (plus noise)
    grads = []
    for j in range(1 + k_tasks):
        pull = models[names[(3 * j) % n]]
        grads.append({k: theta[k] - pull[k] + 0.3 * torch.randn(s, generator=gen) for k, s in SHAPES.items()})
    if not config.per_task_gradients:
        grads = grads[:1]
    plan = plan_vertices(names, {"_pretrained_": 1.0}, config, k_tasks, "_pretrained_")
    alpha = torch.zeros(len(store.names), len(SHAPES), dtype=torch.float64)
    alpha[store.names.index("_pretrained_")] = 1.0
    vertices = Vertices(plan, store, theta, alpha)
    return vertices, Blocks.build(store.keys, config.granularity), plan, grads, theta


CONFIGS = {
    "hard_layer_inner": dict(variant="hard", granularity="layer"),
    "hard_task_cosine": dict(variant="hard", granularity="task", lmo_score="cosine"),
    "soft_task_per_task_cosine": dict(variant="soft"),  # FW-soft's defaults
    "soft_layer_topk": dict(variant="soft", granularity="layer", soft_select="topk", k=2, lmo_score="inner"),
}


def _selection(config, scores, k):
    from fusion_bench_fw.core.lmo import select_hard, select_per_task, select_topk

    if config.variant == "hard":
        return select_hard(scores[0])
    return select_per_task(scores[1:]) if config.per_task_gradients else select_topk(scores[0], k)


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("seed", range(3))
def test_rechecking_every_vertex_is_the_exact_lmo(case, seed):
    options = dict(CONFIGS[case])
    config = FrankWolfeConfig.build(options.pop("variant"), lmo_sketch=4, lmo_recheck=20, **options)
    vertices, blocks, plan, grads, theta = _lmo(config, seed=seed)
    table = SketchedLMO(vertices, blocks, config, plan.k).score(grads, theta)
    cosine = config.lmo_score == "cosine"
    exact = score_vertices(grads, theta, vertices.scored, vertices.read, blocks, cosine=cosine)
    assert torch.equal(table.inner, exact.inner)
    assert cosine is False or torch.equal(table.cosine, exact.cosine)
    assert table.reads["full"] == exact.reads["full"]


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("seed", range(3))
def test_an_exact_sketch_rechecking_the_fewest_makes_the_exact_choice(case, seed):
    """A sketch as large as every tensor is the tensor itself: its estimates rank as the exact scores do,
    so re-checking one per block (and what FW-soft's selection needs) reproduces the exact choice and gap,
    and every other score is +inf."""
    options = dict(CONFIGS[case])
    config = FrankWolfeConfig.build(options.pop("variant"), lmo_sketch=64, lmo_recheck=1, **options)
    vertices, blocks, plan, grads, theta = _lmo(config, seed=seed)
    table = SketchedLMO(vertices, blocks, config, plan.k).score(grads, theta)
    exact = score_vertices(grads, theta, vertices.scored, vertices.read, blocks, cosine=config.lmo_score == "cosine")
    n = len(vertices.names)
    ours, theirs = table.scores(config.lmo_score)[:, :n], exact.scores(config.lmo_score)[:, :n]
    assert torch.equal(_selection(config, ours, plan.k), _selection(config, theirs, plan.k))
    assert table.gap(0) == pytest.approx(exact.gap(0), rel=1e-12)
    checked = torch.isfinite(table.inner)
    assert torch.equal(table.inner[checked], exact.inner[checked])
    assert table.reads["full"] < exact.reads["full"]
    assert table.reads["sketched"] == len(vertices.scored) * len(blocks.keys)


def test_a_refused_vertex_is_not_rechecked_in_its_place():
    config = HardConfig(granularity="task", lmo_sketch=64, lmo_recheck=1)
    vertices, blocks, plan, grads, theta = _lmo(config)
    lmo = SketchedLMO(vertices, blocks, config, plan.k)
    best = int(lmo.score(grads, theta).inner[0, : len(vertices.names)].argmin(dim=0))
    refused = torch.zeros(len(vertices.names), 1, dtype=torch.bool)
    refused[best] = True
    again = lmo.score(grads, theta, refused).inner[0, : len(vertices.names), 0]
    second = int(torch.argsort(score_vertices(grads, theta, vertices.names, vertices.read, blocks).inner[0, :, 0])[1])
    assert torch.isfinite(again[second])


# ------------------------------------------------------------------ the solver
@pytest.mark.parametrize(
    "variant,options",
    [
        ("hard", dict(granularity="layer")),
        ("hard", dict(granularity="task", step_rule="line_search")),
        ("soft", dict(TEXTBOOK_SOFT_RULES, granularity="task", k=2, inner_steps=5)),
    ],
)
def test_a_run_with_an_exact_sketch_takes_the_exact_runs_steps_reading_less(variant, options):
    models = random_pool(6, SHAPES, seed=3)
    names = [f"m{i}" for i in range(6)]
    target = {k: 0.5 * models["m1"][k] + 0.3 * models["m4"][k] + 0.2 * models["_pretrained_"][k] for k in SHAPES}
    init = {"_pretrained_": 1.0}
    runs = {}
    for sketch in (0, 64):
        extra = dict(lmo_sketch=sketch, lmo_recheck=1) if sketch else {}
        config = FrankWolfeConfig.build(variant, max_iters=4, **options, **extra)
        runs[sketch] = solve(
            QuadraticObjective(target), InMemoryVertexStore(models), names, init, config, progress=False
        )
    exact, sketched = runs[0].history.iterations, runs[64].history.iterations
    assert [r.chosen for r in sketched] == [r.chosen for r in exact]
    for key in SHAPES:
        assert torch.equal(runs[0].params[key], runs[64].params[key])
    assert all(r.lmo_reads is None for r in exact)
    assert sketched[0].lmo_reads["sketches_made"] == len(names) + 1  # the candidates and the init point
    assert all(r.lmo_reads["full"] < len(names) * len(SHAPES) for r in sketched)
    assert "lmo_reads" not in runs[0].history.to_dict()["iterations"][0]  # the exact run's history as before


# ------------------------------------------------------------------ the cache
def _made(store, cache, size=8):
    config = HardConfig(lmo_sketch=size)
    names = [n for n in store.names if n != "_pretrained_"]
    plan = plan_vertices(names, {"_pretrained_": 1.0}, config, 1, "_pretrained_")
    alpha = torch.zeros(len(store.names), len(store.keys), dtype=torch.float64)
    alpha[store.names.index("_pretrained_")] = 1.0
    theta = {k: store.tensor("_pretrained_", k).clone() for k in store.keys}
    lmo = SketchedLMO(Vertices(plan, store, theta, alpha), Blocks.build(store.keys, "layer"), config, plan.k, cache)
    return lmo.make_sketches(theta), lmo


def test_the_sketch_cache_is_reused_and_made_again_for_a_changed_checkpoint(tmp_path):
    models = random_pool(3, SHAPES, seed=5)
    (tmp_path / "pool").mkdir()
    paths = write_pool(models, tmp_path / "pool")
    cache = str(tmp_path / "cache")
    store = SafetensorsVertexStore(paths, list(SHAPES))
    # the in-memory init point is sketched at every run; stored checkpoints once
    assert _made(store, cache)[0] == {"sketches_made": 4, "sketches_cached": 0}
    counts, first = _made(SafetensorsVertexStore(paths, list(SHAPES)), cache)
    assert counts == {"sketches_made": 1, "sketches_cached": 3}
    assert len(os.listdir(cache)) == 3
    changed = {k: v + 1.0 for k, v in models["m1"].items()}
    save_safetensors_atomic(changed, paths["m1"])
    stat = os.stat(paths["m1"])
    os.utime(paths["m1"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock's resolution
    counts, again = _made(SafetensorsVertexStore(paths, list(SHAPES)), cache)
    assert counts == {"sketches_made": 2, "sketches_cached": 2}
    row = again.vertices.scored.index("m1")
    for key in SHAPES:
        assert torch.allclose(again.sketches[key][row], count_sketch([changed[key]], key, 8)[0].float())
        assert not torch.equal(again.sketches[key][row], first.sketches[key][row])
    assert _made(SafetensorsVertexStore(paths, list(SHAPES)), cache, size=16)[0]["sketches_cached"] == 0  # per size


# ------------------------------------------------------------------ the options
@pytest.mark.parametrize(
    "options,message",
    [
        (dict(lmo_sketch=-1), "lmo_sketch must be a non-negative integer"),
        (dict(lmo_sketch=2.5), "lmo_sketch must be a non-negative integer"),
        (dict(lmo_sketch=True), "lmo_sketch must be a non-negative integer"),
        (dict(lmo_sketch="1024"), "lmo_sketch must be a non-negative integer"),
        (dict(lmo_sketch=64, lmo_recheck=0), "lmo_recheck must be a positive integer"),
        (dict(lmo_sketch=64, lmo_recheck=1.5), "lmo_recheck must be a positive integer"),
        (dict(lmo_recheck=8), "lmo_recheck=8 is read only by the sketched LMO"),
    ],
)
@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_bad_sketch_options_are_refused(variant, options, message):
    with pytest.raises(ValueError, match=message):
        FrankWolfeConfig.build(variant, **options)


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_the_exact_lmo_is_the_default(variant):
    from fusion_bench_fw.fusionbench.options import split_options

    _, config = split_options(variant, {})
    assert config.lmo_sketch == 0
    assert split_options(variant, {"lmo_sketch": 256, "lmo_recheck": 2})[1].lmo_recheck == 2


def test_the_cli_passes_the_sketch_options():
    from composed import method_config

    method = method_config(["method=fw_hard", "method.lmo_sketch=512", "method.lmo_recheck=2"]).method
    assert (method.lmo_sketch, method.lmo_recheck) == (512, 2)


@pytest.mark.slow  # two whole merges on the tiny CLIP pool (seconds): full suite only
@pytest.mark.usefixtures("one_thread_private_cache")
def test_a_cli_run_with_the_sketched_lmo_caches_its_sketches_for_the_next(tiny_env, tmp_path):
    from composed import run_method

    overrides = ["method=fw_hard", "method.lmo_sketch=256", "method.max_iters=2", "method.n_per_task=8"]
    _, first, _ = run_method([*overrides, "method.progress=false"], tmp_path)  # the same cache_dir for both
    _, second, _ = run_method([*overrides, "method.progress=false"], tmp_path)
    n_stored = len([v for v in first["vertices"] if v != "__init__"])
    assert first["iterations"][0]["lmo_reads"]["sketches_cached"] == 0
    assert second["iterations"][0]["lmo_reads"]["sketches_cached"] == n_stored
    assert len(os.listdir(tmp_path / "vertex_cache" / "lmo_sketch")) == n_stored
    assert [r["chosen"] for r in first["iterations"]] == [r["chosen"] for r in second["iterations"]]
