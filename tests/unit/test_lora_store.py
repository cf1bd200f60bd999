"""LoRA candidates as factors against a float64 reference that materialises W0 + s B A.

Random pools (some candidates leave some tensors unadapted; one tensor stored (in, out) as
GPT-2's Conv1D): the factored store must give the reference's vertex tensors, LMO scores
(inner and cosine), selections, FW-hard / FW-soft merges and duality gaps, with the shared
base read once per tensor and nothing written; plus peft's own merge on real adapters.
"""

from __future__ import annotations

import pytest
import torch
from toy import TEXTBOOK_SOFT_RULES, QuadraticObjective

from fusion_bench_fw.core import HardConfig, SoftConfig, frank_wolfe, plan_vertices
from fusion_bench_fw.core.lmo import Blocks, score_vertices, select_hard
from fusion_bench_fw.core.lora_store import (
    LoraFactors,
    LoraFormatError,
    LoraVertexStore,
    low_rank_dots,
    open_safetensors_model,
    read_peft_adapter,
)
from fusion_bench_fw.core.stores import CompositeVertexStore, InMemoryVertexStore, StoreError

SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 7), "c.weight": (5, 5), "d.weight": (3, 4)}
ADAPTED = {"a.weight": False, "b.weight": False, "c.weight": True}  # key -> stored (in, out); d never adapted
BASE = "base"


def _pool(n: int, seed: int, r: int = 2):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    adapters = {}
    for i in range(n):
        factors = {}
        for j, (key, transposed) in enumerate(ADAPTED.items()):
            if (i + j) % 4 == 3:  # leave some tensors of some candidates at W0
                continue
            out, inn = SHAPES[key][::-1] if transposed else SHAPES[key]
            rank = r + (i % 2)
            b, a = torch.randn(out, rank, generator=g), torch.randn(rank, inn, generator=g)
            factors[key] = LoraFactors(b, a, 0.5 + 0.25 * i, transposed)
        adapters[f"lora{i}"] = factors
    return base, adapters


def _materialised(base, adapters) -> dict[str, dict[str, torch.Tensor]]:
    """The float64 reference: every vertex formed in full."""
    out = {BASE: {k: v.double() for k, v in base.items()}}
    for name, factors in adapters.items():
        out[name] = {}
        for key, w0 in base.items():
            f = factors.get(key)
            delta = 0.0
            if f is not None:
                product = f.B.double() @ f.A.double()
                delta = f.scale * (product.T if f.transposed else product)
            out[name][key] = w0.double() + delta
    return out


def _stores(n=6, seed=0):
    base, adapters = _pool(n, seed)
    store = LoraVertexStore(InMemoryVertexStore({BASE: base}), BASE, adapters, include_base=True)
    reference = InMemoryVertexStore(_materialised(base, adapters))
    return store, reference, list(adapters)


def _gradient_and_iterate(seed):
    g = torch.Generator().manual_seed(100 + seed)
    grad = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    theta = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    return grad, theta


@pytest.mark.parametrize("seed", range(3))
def test_vertex_tensors_equal_the_materialised_reference(seed):
    store, reference, names = _stores(seed=seed)
    for name in [BASE, *names]:
        for key in SHAPES:
            torch.testing.assert_close(
                store.tensor(name, key).double(), reference.tensor(name, key), rtol=1e-6, atol=1e-6
            )
    assert store.adapted_keys("lora0") == ["a.weight", "b.weight", "c.weight"]
    assert store.adapted_keys("lora1") == ["a.weight", "b.weight"]  # (1 + 2) % 4 == 3: c left at W0


@pytest.mark.parametrize("granularity", ["task", "layer"])
@pytest.mark.parametrize("seed", range(3))
def test_lmo_scores_from_factors_match_float64_reference(seed, granularity):
    store, reference, names = _stores(seed=seed)
    grad, theta = _gradient_and_iterate(seed)
    blocks = Blocks.build(list(SHAPES), granularity)
    ours = score_vertices([grad], theta, names, store.tensor, blocks, cosine=True, read_parts=store.parts)
    ref = score_vertices(
        [{k: v.double() for k, v in grad.items()}],
        {k: v.double() for k, v in theta.items()},
        names,
        reference.tensor,
        blocks,
        cosine=True,
    )
    scale = max(float(ref.inner.abs().max()), 1.0)
    torch.testing.assert_close(ours.inner, ref.inner, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(ours.cosine, ref.cosine, rtol=0, atol=1e-5)
    assert torch.equal(select_hard(ours.inner[0]), select_hard(ref.inner[0]))
    assert torch.equal(select_hard(ours.cosine[0]), select_hard(ref.cosine[0]))
    assert ours.gap() == pytest.approx(ref.gap(), rel=1e-5, abs=1e-5)
    # every shared base tensor read once per pass for all candidates; no vertex formed
    assert ours.reads["base"] == len(SHAPES) and ours.reads["full"] == 0
    adapted = sum(len(store.adapted_keys(n)) for n in names)
    assert ours.reads["low_rank"] == adapted and ours.reads["base_only"] == len(names) * len(SHAPES) - adapted


def test_low_rank_dots_several_gradients_and_orientations():
    g = torch.Generator().manual_seed(5)
    mats = [torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    terms = [LoraFactors(torch.randn(4, 2, generator=g), torch.randn(2, 4, generator=g), 1.5, t) for t in (False, True)]
    store = LoraVertexStore(
        InMemoryVertexStore({BASE: {"w": torch.zeros(4, 4)}}), BASE, {f"x{i}": {"w": t} for i, t in enumerate(terms)}
    )
    parts = [store.parts(f"x{i}", "w") for i in range(2)]
    dots = low_rank_dots(mats, parts, torch.float64)
    for gi, m in enumerate(mats):
        for j, t in enumerate(terms):
            product = t.B.double() @ t.A.double()
            expected = float(torch.sum(m * (product.T if t.transposed else product))) * t.scale
            assert float(dots[gi, j]) == pytest.approx(expected, rel=1e-9)


def _run(store, candidates, target, config, dtype):
    objective = QuadraticObjective(target, tasks=("t0", "t1"))
    plan = plan_vertices(candidates, {BASE: 1.0}, config, len(objective.task_names))
    return frank_wolfe(objective, store, plan, config, dtype=dtype, progress=False)


@pytest.mark.parametrize(
    "config",
    [
        HardConfig(granularity="layer", max_iters=5),
        HardConfig(granularity="task", max_iters=5, lmo_score="cosine"),
        SoftConfig(granularity="task", max_iters=4, k=2, inner_steps=6, inner_lr=0.05, **TEXTBOOK_SOFT_RULES),
        SoftConfig(
            granularity="layer", max_iters=3, k=3, inner_steps=4, include_init_vertex=True, **TEXTBOOK_SOFT_RULES
        ),
    ],
    ids=["hard-layer", "hard-task-cosine", "soft-task", "soft-layer"],
)
def test_frank_wolfe_on_factors_matches_float64_reference(config):
    store, reference, names = _stores(seed=7)
    g = torch.Generator().manual_seed(8)
    target = {k: reference.tensor(names[1], k).float() + 0.3 * torch.randn(s, generator=g) for k, s in SHAPES.items()}
    ours = _run(store, names, target, config, torch.float32)
    ref = _run(reference, names, target, config, torch.float64)
    for a, b in zip(ours.history.iterations, ref.history.iterations):
        assert a.selected == b.selected
        assert a.gap == pytest.approx(b.gap, rel=1e-5, abs=1e-6)
        assert a.loss == pytest.approx(b.loss, rel=1e-5, abs=1e-6)
    for key in SHAPES:
        torch.testing.assert_close(ours.params[key].double(), ref.params[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.coefficients, ref.coefficients, rtol=1e-5, atol=1e-6)


def test_full_weight_and_lora_candidates_share_one_pool():
    store, reference, names = _stores(seed=3)
    g = torch.Generator().manual_seed(9)
    full = {f"full{i}": {k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for i in range(2)}
    mixed = CompositeVertexStore([InMemoryVertexStore(full), store])
    materialised = {n: reference.state_dict(n) for n in reference.names}
    flat = InMemoryVertexStore({**{n: {k: v.double() for k, v in s.items()} for n, s in full.items()}, **materialised})
    candidates = [*full, *names]
    target = {k: 0.5 * (full["full0"][k] + reference.tensor(names[2], k).float()) for k in SHAPES}
    config = HardConfig(granularity="layer", max_iters=4)
    ours = _run(mixed, candidates, target, config, torch.float32)
    ref = _run(flat, candidates, target, config, torch.float64)
    assert [r.selected for r in ours.history.iterations] == [r.selected for r in ref.history.iterations]
    for key in SHAPES:
        torch.testing.assert_close(ours.params[key].double(), ref.params[key], rtol=1e-5, atol=1e-5)


def test_distances_and_nan_check_from_factors():
    store, reference, names = _stores(seed=1)
    base_params = {k: reference.tensor(BASE, k).float() for k in SHAPES}
    for name in names:
        ours = sum(store.distance_sq(name, k, base_params[k]) for k in SHAPES)
        expected = sum(float(torch.sum((reference.tensor(name, k) - base_params[k].double()) ** 2)) for k in SHAPES)
        assert ours == pytest.approx(expected, rel=1e-6)
    shifted = {k: v + 1 for k, v in base_params.items()}  # a reference that is not the base
    ours = sum(store.distance_sq(names[0], k, shifted[k]) for k in SHAPES)
    expected = sum(float(torch.sum((reference.tensor(names[0], k) - shifted[k].double()) ** 2)) for k in SHAPES)
    assert ours == pytest.approx(expected, rel=1e-6)

    base, adapters = _pool(2, 0)
    adapters["lora1"]["a.weight"].B[0, 0] = float("nan")
    broken = LoraVertexStore(InMemoryVertexStore({BASE: base}), BASE, adapters)
    with pytest.raises(StoreError, match="'lora1'.*a.weight.*NaN"):
        broken.distance_sq("lora1", "a.weight", None)


def test_wrong_factor_shapes_are_refused():
    base, adapters = _pool(1, 0)
    f = adapters["lora0"]["b.weight"]
    adapters["lora0"]["b.weight"] = LoraFactors(f.B, f.A, f.scale, True)  # (4, 7) read as Conv1D
    with pytest.raises(LoraFormatError, match="lora0.*b.weight.*shape"):
        LoraVertexStore(InMemoryVertexStore({BASE: base}), BASE, adapters)


# ------------------------------------------------------------------------------------- peft
def _peft_adapter(model, directory, seed, **lora_kwargs):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter a real delta
                p.normal_()
    peft_model.save_pretrained(directory)
    return peft_model.merge_and_unload().state_dict()


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=12, n_layer=2, n_head=2))


@pytest.mark.parametrize(
    "make,lora_kwargs",
    [
        (_tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
        (
            _tiny_llama,
            dict(
                r=4,
                lora_alpha=8,
                use_rslora=True,
                target_modules=["q_proj", "o_proj"],
                rank_pattern={"o_proj": 2},
                alpha_pattern={"layers.1.self_attn.q_proj": 3},
            ),
        ),
        (_tiny_gpt2, dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    ],
    ids=["llama", "llama-rslora-patterns", "gpt2-conv1d"],
)
def test_peft_adapter_read_as_factors_equals_merge_and_unload(tmp_path, make, lora_kwargs):
    base_model = make()
    base_model.save_pretrained(tmp_path / "base", max_shard_size="8KB")  # sharded: read through the index
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    conv1d = {n for n, m in base_model.named_modules() if type(m).__name__ == "Conv1D"}
    merged = _peft_adapter(make(), tmp_path / "adapter", seed=1, **lora_kwargs)

    factors = read_peft_adapter(str(tmp_path / "adapter"), shapes, conv1d)
    base = open_safetensors_model(BASE, str(tmp_path / "base"), list(shapes), shapes)
    store = LoraVertexStore(base, BASE, {"lora": factors})
    assert set(factors) < set(shapes)
    for key in shapes:
        torch.testing.assert_close(store.tensor("lora", key), merged[key], rtol=1e-6, atol=1e-6)
    assert base._shard_of[next(iter(shapes))] is not base._shard_of[list(shapes)[-1]]  # several shards


def test_unsupported_adapters_are_refused_with_the_reason(tmp_path):
    model = _tiny_llama()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    _peft_adapter(_tiny_llama(), tmp_path / "dora", 0, r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(LoraFormatError, match="use_dora"):
        read_peft_adapter(str(tmp_path / "dora"), shapes)
    _peft_adapter(_tiny_llama(), tmp_path / "saved", 0, r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(LoraFormatError, match="modules_to_save"):
        read_peft_adapter(str(tmp_path / "saved"), shapes)
    _peft_adapter(_tiny_llama(), tmp_path / "ok", 0, r=2, target_modules=["q_proj"])
    with pytest.raises(LoraFormatError, match="no tensor 'model.layers.0.self_attn.q_proj.weight'"):
        read_peft_adapter(str(tmp_path / "ok"), {k: v for k, v in shapes.items() if "q_proj" not in k})


# ----------------------------------------------------------------------- the pool adapter
def test_pool_store_keeps_lora_entries_as_factors_next_to_full_weights(tmp_path, caplog):
    from fusion_bench.modelpool import CausalLMPool
    from omegaconf import OmegaConf

    from fusion_bench_fw.fusionbench.pool import build_vertex_store

    base_model = _tiny_llama()
    base_model.save_pretrained(tmp_path / "base")
    shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    _peft_adapter(_tiny_llama(), tmp_path / "a", 1, r=2, lora_alpha=4, target_modules=["q_proj", "up_proj"])
    _peft_adapter(_tiny_llama(), tmp_path / "b", 2, r=3, lora_alpha=3, target_modules=["v_proj"])
    _peft_adapter(_tiny_llama(), tmp_path / "dora", 3, r=2, target_modules=["q_proj"], use_dora=True)
    full = _tiny_llama()
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1)
    full.save_pretrained(tmp_path / "full")
    lora = lambda name: {  # noqa: E731
        "_target_": "fusion_bench.modelpool.causal_lm.causal_lm.load_peft_causal_lm",
        "base_model_path": str(tmp_path / "base"),
        "peft_model_path": str(tmp_path / name),
        "torch_dtype": "float32",
        "is_trainable": False,
        "merge_and_unload": True,
    }
    models = {"_pretrained_": str(tmp_path / "base"), "a": lora("a"), "full": str(tmp_path / "full"), "b": lora("b")}
    models["dora"] = lora("dora")
    pool = CausalLMPool(OmegaConf.create(models), tokenizer=None)
    names = ["a", "full", "b", "dora"]
    with caplog.at_level("WARNING"):
        factored = build_vertex_store(pool, names, shapes, "auto", str(tmp_path / "cache_auto"))
    assert "dora" in caplog.text and "use_dora" in caplog.text  # falls back to full weights, says why
    spilled = build_vertex_store(pool, names, shapes, "safetensors", str(tmp_path / "cache_full"))
    assert [p.name for p in (tmp_path / "cache_auto").rglob("*.safetensors")] == ["dora.safetensors"]
    assert len(list((tmp_path / "cache_full").rglob("*.safetensors"))) == 3  # a, b, dora (full is read in place)
    assert set(factored.names) == set(names)
    assert factored.parts("a", "model.layers.0.self_attn.q_proj.weight") is not None
    assert factored.parts("full", "model.layers.0.self_attn.q_proj.weight") is None
    for name in names:
        for key in shapes:
            torch.testing.assert_close(factored.tensor(name, key), spilled.tensor(name, key), rtol=1e-6, atol=1e-6)
