"""The LMO pass against direct float64 computations on random checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from toy import SHAPES, random_pool

from fusion_bench_fw.core import lmo
from fusion_bench_fw.core.lmo import Blocks, score_vertices, select_hard, select_per_task, select_topk
from fusion_bench_fw.core.stores import InMemoryVertexStore


def _setup(seed, n=7):
    models = random_pool(n, SHAPES, seed=seed, scale=0.3)
    store = InMemoryVertexStore(models)
    g = torch.Generator().manual_seed(1000 + seed)
    grad = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    theta = {k: models["_pretrained_"][k] + 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()}
    names = [f"m{i}" for i in range(n)]
    return models, store, grad, theta, names


def _dot(a, b):
    return float(torch.sum(a.double() * b.double()))


def _float32_scale(grad, models, theta, names):
    """The size of float32 rounding in <g, v - theta>: sum_p ||g_p|| ||v_p - theta_p||."""
    return [
        sum(float(grad[k].double().norm() * (models[n][k].double() - theta[k].double()).norm()) for k in grad)
        for n in names
    ]


@pytest.mark.parametrize("seed", range(5))
def test_inner_argmin_same_on_checkpoints_task_vectors_and_differences(seed):
    models, store, grad, theta, names = _setup(seed)
    blocks = Blocks.build(store.keys, "task")
    table = score_vertices([grad], theta, names, store.tensor, blocks)
    pre = models["_pretrained_"]
    on_ckpt = [sum(_dot(grad[k], models[n][k]) for k in SHAPES) for n in names]
    on_tv = [sum(_dot(grad[k], models[n][k] - pre[k]) for k in SHAPES) for n in names]
    on_diff = [sum(_dot(grad[k], models[n][k] - theta[k]) for k in SHAPES) for n in names]
    ours = table.inner[0, :, 0].tolist()
    scale = _float32_scale(grad, models, theta, names)
    assert all(abs(a - b) <= 1e-6 * s for a, b, s in zip(ours, on_diff, scale))
    best = int(select_hard(table.inner[0])[0])
    assert best == min(range(len(names)), key=on_ckpt.__getitem__)
    assert best == min(range(len(names)), key=on_tv.__getitem__)
    # the three scores differ by a vertex-independent constant
    assert [a - b for a, b in zip(on_ckpt, on_tv)] == pytest.approx([on_ckpt[0] - on_tv[0]] * len(names))


@pytest.mark.parametrize("seed", range(5))
def test_layerwise_lmo_is_per_tensor_argmin(seed):
    models, store, grad, theta, names = _setup(seed)
    blocks = Blocks.build(store.keys, "layer")
    table = score_vertices([grad], theta, names, store.tensor, blocks)
    chosen = select_hard(table.inner[0])
    for b, key in enumerate(blocks.keys):
        expected = min(range(len(names)), key=lambda i: _dot(grad[key], models[names[i]][key]))
        assert int(chosen[b]) == expected


def _fusionbench_cosine(grad, model):
    """FusionBench's in-tree FW score: sum over tensors of cos(grad_p, param_p)."""
    return sum(float(F.cosine_similarity(grad[k].reshape(-1), model[k].reshape(-1), dim=0)) for k in grad)


@pytest.mark.parametrize("seed", range(5))
def test_cosine_option_equals_fusionbench_formula(seed):
    models, store, grad, theta, names = _setup(seed)
    table = score_vertices([grad], theta, names, store.tensor, Blocks.build(store.keys, "task"), cosine=True)
    expected = [_fusionbench_cosine(grad, models[n]) for n in names]
    assert table.cosine[0, :, 0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    layer = score_vertices([grad], theta, names, store.tensor, Blocks.build(store.keys, "layer"), cosine=True)
    for b, key in enumerate(store.keys):
        exp = [float(F.cosine_similarity(grad[key].reshape(-1), models[n][key].reshape(-1), dim=0)) for n in names]
        assert layer.cosine[0, :, b].tolist() == pytest.approx(exp, rel=1e-5, abs=1e-6)


def test_cosine_with_zero_gradient_is_zero_not_nan():
    models, store, grad, theta, names = _setup(0)
    grad = dict(grad)
    grad["layer0.bias"] = torch.zeros_like(grad["layer0.bias"])
    table = score_vertices([grad], theta, names, store.tensor, Blocks.build(store.keys, "layer"), cosine=True)
    assert torch.isfinite(table.cosine).all()
    assert (table.cosine[0, :, store.keys.index("layer0.bias")] == 0).all()


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_gap_is_max_over_vertices_of_linearised_decrease(granularity):
    models, store, grad, theta, names = _setup(3)
    blocks = Blocks.build(store.keys, granularity)
    table = score_vertices([grad], theta, names, store.tensor, blocks)
    if granularity == "task":
        expected = max(sum(_dot(grad[k], theta[k] - models[n][k]) for k in SHAPES) for n in names)
    else:
        expected = sum(max(_dot(grad[k], theta[k] - models[n][k]) for n in names) for k in SHAPES)
    assert table.gap() == pytest.approx(expected, rel=1e-6)


def test_topk_and_per_task_selection():
    scores = torch.tensor([[3.0], [1.0], [2.0], [0.5]])
    assert select_topk(scores, 2)[:, 0].tolist() == [3, 1]
    with pytest.raises(ValueError, match="k=5"):
        select_topk(scores, 5)
    # two task gradients preferring the same vertex get distinct picks (FusionBench rule)
    per_task = torch.tensor([[[0.0], [1.0], [2.0]], [[0.0], [0.5], [2.0]]])
    assert select_per_task(per_task)[:, 0].tolist() == [0, 1]


def test_multiple_gradients_read_each_vertex_once():
    models, store, grad, theta, names = _setup(1)
    reads = []

    def read(name, key):
        reads.append((name, key))
        return store.tensor(name, key)

    score_vertices([grad, grad, grad], theta, names, read, Blocks.build(store.keys, "task"))
    assert len(reads) == len(set(reads)) == len(names) * len(store.keys)


def _reference(grads, theta, models, names, blocks):
    """Float64 brute force: scores[g, i, b] = sum_{p in b} <grad_g,p, v_i,p - theta_p>, and the
    float32 rounding scale of each, sum_{p in b} ||grad_g,p|| ||v_i,p - theta_p||."""
    scores = torch.zeros(len(grads), len(names), blocks.count, dtype=torch.float64)
    scale = torch.zeros_like(scores)
    for gi, grad in enumerate(grads):
        for i, n in enumerate(names):
            for key in blocks.keys:
                d = models[n][key].double() - theta[key].double()
                scores[gi, i, blocks.block_of[key]] += torch.sum(grad[key].double() * d)
                scale[gi, i, blocks.block_of[key]] += grad[key].double().norm() * d.norm()
    return scores, scale


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("granularity", ["task", "layer"])
@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_streamed_scores_match_float64_reference_on_large_tensors(seed, granularity, chunk, monkeypatch):
    """Tensors larger than a chunk, sizes that do not divide it, several gradients, and
    fine-tuned vertices close to the iterate (the cancellation-prone case)."""
    monkeypatch.setattr(lmo, "CPU_CHUNK", chunk)
    shapes = {"big": (1 << 17) + 3, "mid": (257, 129), "small": (5,)}
    if chunk == 7:
        shapes = {"big": (61,), "mid": (9, 4), "small": (5,)}
    models = random_pool(6, shapes, seed=seed, scale=0.02)
    names = [f"m{i}" for i in range(6)]
    g = torch.Generator().manual_seed(77 + seed)
    theta = {k: models["_pretrained_"][k] + 0.01 * torch.randn(s, generator=g) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    blocks = Blocks.build(list(shapes), granularity)
    table = score_vertices(grads, theta, names, InMemoryVertexStore(models).tensor, blocks)
    expected, scale = _reference(grads, theta, models, names, blocks)
    assert table.inner.dtype == torch.float64
    assert bool(((table.inner - expected).abs() <= 1e-6 * scale).all())
    # the bound is far below the spread of the scores, so it decides argmins
    assert float(scale.max()) * 1e-6 < 1e-3 * float(expected.abs().max())


def test_float64_iterate_gives_float64_exact_scores():
    models, store, grad, theta, names = _setup(4)
    models64 = {n: {k: v.double() for k, v in sd.items()} for n, sd in models.items()}
    theta64 = {k: v.double() for k, v in theta.items()}
    grad64 = {k: v.double() for k, v in grad.items()}
    blocks = Blocks.build(store.keys, "layer")
    table = score_vertices([grad64], theta64, names, InMemoryVertexStore(models64).tensor, blocks)
    expected, _ = _reference([grad64], theta64, models64, names, blocks)
    assert torch.allclose(table.inner, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_vertices_are_scored_in_float32(dtype):
    """Vertices stored in bf16/fp16 (LLM checkpoints) against a float32 iterate."""
    models, store, grad, theta, names = _setup(2)
    half = {n: {k: v.to(dtype) for k, v in sd.items()} for n, sd in models.items()}
    blocks = Blocks.build(store.keys, "layer")
    table = score_vertices([grad], theta, names, InMemoryVertexStore(half).tensor, blocks)
    exact = {n: {k: v.float() for k, v in sd.items()} for n, sd in half.items()}
    expected, scale = _reference([grad], theta, exact, names, blocks)
    assert bool(((table.inner - expected).abs() <= 1e-6 * scale).all())


def test_scores_do_not_depend_on_the_matmul_precision_setting():
    models, store, grad, theta, names = _setup(0)
    blocks = Blocks.build(store.keys, "task")
    before = torch.get_float32_matmul_precision()
    reference = score_vertices([grad], theta, names, store.tensor, blocks)
    torch.set_float32_matmul_precision("medium")
    try:
        again = score_vertices([grad], theta, names, store.tensor, blocks)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(reference.inner, again.inner)


def test_inputs_are_not_modified():
    models, store, grad, theta, names = _setup(5)
    copies = ({k: v.clone() for k, v in grad.items()}, {k: v.clone() for k, v in theta.items()})
    score_vertices([grad], theta, names, store.tensor, Blocks.build(store.keys, "layer"), cosine=True)
    for original, copy in zip((grad, theta), copies):
        assert all(torch.equal(original[k], copy[k]) for k in copy)
    assert all(
        torch.equal(models[n][k], random_pool(7, SHAPES, seed=5, scale=0.3)[n][k]) for n in names for k in SHAPES
    )


@pytest.mark.parametrize("seed", range(4))
def test_rounding_noise_in_the_gradient_is_dropped_and_nothing_else(seed):
    """Against a float64 reference: exactly the tensors at or below NEGLIGIBLE_GRADIENT of the
    whole norm become 0; the others are handed back as they are."""
    from fusion_bench_fw.core.objective import NEGLIGIBLE_GRADIENT, drop_rounding_noise

    g = torch.Generator().manual_seed(seed)
    grad = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grad["noise"] = 1e-9 * torch.randn(4, generator=g)
    grad["zero"] = torch.zeros(3)
    total = sum(float(v.double().pow(2).sum()) for v in grad.values()) ** 0.5
    cleaned = drop_rounding_noise(grad)
    assert list(cleaned) == list(grad)
    for k, v in grad.items():
        if float(v.double().norm()) <= NEGLIGIBLE_GRADIENT * total:
            assert torch.count_nonzero(cleaned[k]) == 0, k
        else:
            assert cleaned[k] is v, k
    assert {k for k, v in cleaned.items() if not v.any()} == {"noise", "zero"}


def test_a_tensor_without_gradient_gets_the_same_vertex_whatever_its_rounding_noise():
    """The LMO's choice for a tensor the loss ignores (zero gradient up to rounding, as CLIP's
    attention key bias) must not follow the noise's sign, which differs between CPUs."""
    from toy import QuadraticObjective, solve

    from fusion_bench_fw.core import HardConfig

    models = random_pool(4, SHAPES, seed=11)
    names = [f"m{i}" for i in range(4)]
    target = {k: 0.6 * models["m1"][k] + 0.4 * models["m3"][k] for k in SHAPES}

    class NoisyBias(QuadraticObjective):
        """The toy loss, with layer0.bias outside it: its gradient is rounding noise of one sign."""

        def __init__(self, target, sign):
            super().__init__(target)
            self.sign = sign

        def loss_and_grad(self, params, per_task=False):
            lg = super().loss_and_grad(params, per_task)
            lg.grads[0]["layer0.bias"] = self.sign * 1e-9 * torch.arange(1.0, 7.0)
            return lg

    chosen = []
    for sign in (1.0, -1.0):
        config = HardConfig(granularity="layer", max_iters=3, include_init_vertex=False)
        store = InMemoryVertexStore(models)
        result = solve(NoisyBias(target, sign), store, names, {"_pretrained_": 1.0}, config, progress=False)
        chosen.append([it.chosen for it in result.history.iterations])
    assert chosen[0] == chosen[1]
