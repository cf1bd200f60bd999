"""The one pass over a pool (``fusionbench.pool.read_pool``) on tiny pools of each kind: what it
finds, that it reads each file once, and what it refuses, before any objective is built.

CLIP: the committed tiny pool (files read in place, nothing written). Language models: a tiny
Llama saved here, as a path (read in place), as a loader config (loaded once and spilled) and as
a LoRA adapter (kept as factors over its base). A far model and a NaN tensor: edited copies of
the tiny CLIP pool's models."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from fusion_bench_fw.core.stores import StoreError
from fusion_bench_fw.fusionbench.options import RunOptions
from fusion_bench_fw.fusionbench.pool import read_pool

TASKS = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes"]
FC1 = "vision_model.encoder.layers.0.mlp.fc1.weight"

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


@pytest.fixture
def clip_pool(tiny_clip_root, tiny_clip_manifest):
    """``clip_pool(models=None)``: the tiny CLIP pool, its models replaced by ``models`` when given."""
    from fusion_bench_fw import CLIPVisionModelPoolWithTasks

    root = str(tiny_clip_root)
    default = {"_pretrained_": f"{root}/models/_pretrained_", **{t: f"{root}/models/{t}" for t in TASKS}}

    def make(models=None):
        return CLIPVisionModelPoolWithTasks(
            OmegaConf.create(models or default),
            clip_tasks={t: {"classnames": tiny_clip_manifest["tasks"][t]["classnames"]} for t in TASKS},
            processor=f"{root}/models/_pretrained_",
            platform="hf",
            train_datasets=OmegaConf.create(
                {t: {"_target_": "datasets.load_from_disk", "dataset_path": f"{root}/data/{t}/train"} for t in TASKS}
            ),
        )

    make.default = default
    return make


def edited(src_dir, dst_dir, edit) -> str:
    from test_reliability import edited_copy

    return edited_copy(src_dir, dst_dir, edit)


def test_a_clip_pool_of_files_is_read_in_place_once_and_nothing_is_written(clip_pool, tmp_path, monkeypatch):
    import fusion_bench_fw.fusionbench.pool as pool_module

    reads = []
    original = pool_module.checkpoint_header
    monkeypatch.setattr(pool_module, "checkpoint_header", lambda name, path: reads.append(path) or original(name, path))
    cache = tmp_path / "cache"
    pool = read_pool(clip_pool(), RunOptions(n_per_task=8, targets=TASKS[:2]), str(cache))
    assert pool.kind == "clip" and pool.targets == TASKS[:2] and list(pool.train_sets) == TASKS[:2]
    assert pool.models == TASKS and pool.members == TASKS and not pool.dropped and not pool.far
    assert all(c.path.endswith("model.safetensors") and c.state is None for c in pool.candidates.values())
    assert sorted(reads) == sorted(c.path for c in pool.candidates.values())  # each header once
    assert list(pool.store.names) == TASKS and not cache.exists()
    # the distances the far-model rule reads are the L2 distances to the pretrained model
    pre = pool.pretrained_tensors()
    expected = math.sqrt(
        sum(float(((pool.store.tensor("tiny_sizes", k).double() - pre[k].double()) ** 2).sum()) for k in pre)
    )
    assert pool.distances["tiny_sizes"] == pytest.approx(expected, rel=1e-9)


def test_a_far_model_is_found_by_the_pass_and_left_out_of_the_members_and_the_store(clip_pool, tmp_path):
    from fusion_bench_fw.core import HardConfig
    from fusion_bench_fw.core.vertices import plan_vertices

    models = dict(clip_pool.default)
    g = torch.Generator().manual_seed(0)
    models["far"] = edited(
        models["tiny_colors"],
        tmp_path / "far",
        lambda s: {k: v + torch.randn(v.shape, generator=g) for k, v in s.items()},
    )
    pool = read_pool(clip_pool(models), RunOptions(n_per_task=8), str(tmp_path / "cache"))
    assert pool.far == ["far"] and pool.excluded == ["far"] and pool.members == TASKS
    assert pool.distances["far"] > 5 * sorted(pool.distances.values())[2]
    plan = plan_vertices(pool.members, {"_pretrained_": 1.0}, HardConfig(), len(pool.targets), "_pretrained_")
    assert "far" not in pool.store_for(plan).names
    kept = read_pool(clip_pool(models), RunOptions(n_per_task=8, far_models="keep"), str(tmp_path / "cache"))
    assert kept.far == ["far"] and kept.excluded == [] and "far" in kept.members


def test_a_nan_tensor_is_refused_by_the_pass_naming_model_and_tensor(clip_pool, tmp_path):
    models = dict(clip_pool.default)
    models["tiny_sizes"] = edited(
        models["tiny_sizes"], tmp_path / "nan", lambda s: {**s, FC1: torch.full_like(s[FC1], float("nan"))}
    )
    with pytest.raises(StoreError, match=f"checkpoint 'tiny_sizes': tensor '{FC1}' contains NaN or Inf"):
        read_pool(clip_pool(models), RunOptions(n_per_task=8), str(tmp_path / "cache"))


@pytest.fixture
def llama_pool(tmp_path):
    """A tiny Llama pool: the base as a path, a fine-tuned copy as a path and as a loader config,
    and a LoRA adapter over the base (peft's format), with one small train split."""
    from datasets import Dataset
    from fusion_bench.modelpool import CausalLMPool
    from test_lora_store import _peft_adapter, _tiny_llama

    _tiny_llama().save_pretrained(tmp_path / "base")
    finetuned = _tiny_llama()
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(0.1)  # as far from the base as the LoRA adapter: no far model here
    finetuned.save_pretrained(tmp_path / "ft")
    _peft_adapter(_tiny_llama(), tmp_path / "lora", 1, r=2, lora_alpha=4, target_modules=["q_proj"])
    Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "attention_mask": [[1, 1, 1]] * 4}).save_to_disk(tmp_path / "data")
    loader = {
        "_target_": "transformers.AutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": str(tmp_path / "ft"),
    }
    lora = {
        "_target_": "fusion_bench.modelpool.causal_lm.causal_lm.load_peft_causal_lm",
        "base_model_path": str(tmp_path / "base"),
        "peft_model_path": str(tmp_path / "lora"),
        "torch_dtype": "float32",
        "is_trainable": False,
        "merge_and_unload": True,
    }
    models = {"_pretrained_": str(tmp_path / "base"), "ft": str(tmp_path / "ft"), "loaded": loader, "lora": lora}
    data = {"ft": {"_target_": "datasets.load_from_disk", "dataset_path": str(tmp_path / "data")}}
    return CausalLMPool(OmegaConf.create(models), tokenizer=None, train_datasets=OmegaConf.create(data))


def test_a_language_model_pool_each_candidate_read_the_way_it_is_stored(llama_pool, tmp_path):
    cache = tmp_path / "cache"
    pool = read_pool(llama_pool, RunOptions(n_per_task=4), str(cache))
    assert pool.kind == "causal_lm" and pool.targets == ["ft"] and pool.far == []
    assert pool.members == ["ft", "loaded", "lora"]
    ft, loaded, lora = (pool.candidates[n] for n in pool.members)
    assert ft.path == str(tmp_path / "ft" / "model.safetensors")  # in place
    assert loaded.path.startswith(str(cache)) and loaded.state is None  # loaded once, spilled
    assert lora.lora is not None and lora.path is None  # factors over the base
    key = "model.layers.0.self_attn.q_proj.weight"
    assert pool.store.parts("lora", key) is not None and pool.store.parts("ft", key) is None
    torch.testing.assert_close(pool.store.tensor("loaded", key), pool.store.tensor("ft", key))
    assert pool.distances["ft"] == pytest.approx(pool.distances["loaded"])


def test_options_for_another_kind_are_refused_before_anything_is_read(llama_pool, tmp_path):
    with pytest.raises(ValueError, match="entropy_test.*needs a CLIP vision pool; this pool is causal_lm"):
        read_pool(llama_pool, RunOptions(n_per_task=4), str(tmp_path / "cache"), clip_only="inner_loss=entropy_test")
    assert not (tmp_path / "cache").exists()
