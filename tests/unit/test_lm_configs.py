"""The language-model pool configs compose (FusionBench's root config + this plugin's search
path) and name the intended models and data; nothing is instantiated or downloaded."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

GLUE8 = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
LLAMA_TARGETS = ["code", "pubmedqa", "cnn", "piqa", "wmt"]


@pytest.fixture(scope="module")
def compose():
    from composed import compose

    return compose


@pytest.mark.parametrize("pool,lora", [("flan-t5-base_glue_fw", False), ("flan-t5-base_glue_lora16_fw", True)])
def test_flan_t5_pools_add_glue_train_splits(compose, pool, lora):
    mp = compose(f"modelpool={pool}", "method=fw_hard", "taskpool=dummy").modelpool
    names = [f"glue-{t}" for t in GLUE8]
    assert list(mp.models) == ["_pretrained_"] + names
    assert list(mp.train_datasets) == names
    resolved = OmegaConf.to_container(mp, resolve=True)
    for t in GLUE8:
        data = resolved["train_datasets"][f"glue-{t}"]
        assert data["name"] == t and data["split"] == "train"
        model = resolved["models"][f"glue-{t}"]
        if lora:
            assert model["peft_model_path"] == f"tanganke/flan-t5-base_glue-{t}_lora-16"
        else:
            assert model["pretrained_model_name_or_path"] == f"tanganke/flan-t5-base_glue-{t}"


def test_llama_paper_pool_has_16_lora_models_and_5_targets(compose, monkeypatch):
    monkeypatch.setenv("FW_LLAMA_DATA", "/data/fw_llama")
    mp = compose("modelpool=llama-2-7b_lora16_fw", "method=fw_hard", "taskpool=dummy").modelpool
    resolved = OmegaConf.to_container(mp, resolve=True)
    models = resolved["models"]
    assert models.pop("_pretrained_")["pretrained_model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert len(models) == 16 and list(models)[:5] == LLAMA_TARGETS
    assert all(m["base_model_path"] == "meta-llama/Llama-2-7b-hf" for m in models.values())
    assert len({m["peft_model_path"] for m in models.values()}) == 16
    assert list(resolved["train_datasets"]) == LLAMA_TARGETS
    assert resolved["train_datasets"]["code"]["data_files"] == "/data/fw_llama/code.jsonl"


def test_fusion_bench_gpt2_glue_pool_is_usable_as_is(compose):
    """FW runs on FusionBench's own GPT-2 GLUE pool: it has backbones and train splits."""
    mp = compose("modelpool=gpt-2_glue", "method=fw_hard", "taskpool=gpt-2_glue").modelpool
    assert mp._target_.endswith("HuggingFaceGPT2ClassificationPool")
    assert list(mp.train_datasets) == [t for t in GLUE8 if t != "stsb"]


@pytest.mark.parametrize("pool", ["fw_tiny_gpt2_cls", "fw_tiny_bert_cls", "fw_tiny_causal", "fw_tiny_t5"])
def test_tiny_pools_compose(compose, pool, monkeypatch):
    monkeypatch.setenv("FUSION_BENCH_FW_TINY_LM_ROOT", "/nowhere")
    cfg = compose(f"modelpool={pool}", "method=fw_soft", f"taskpool={pool}")
    resolved = OmegaConf.to_container(cfg.modelpool, resolve=True)
    assert set(resolved["models"]) - {"_pretrained_"} == set(resolved["train_datasets"])
    assert OmegaConf.to_container(cfg.taskpool, resolve=True)["test_datasets"]


def test_flan_t5_task_pool_scores_glue_validation_with_token_loss(compose):
    tp = compose("modelpool=flan-t5-base_glue_fw", "method=fw_hard", "taskpool=flan-t5_glue_fw").taskpool
    resolved = OmegaConf.to_container(tp, resolve=True)
    assert resolved["_target_"].endswith("TokenLossTaskPool") and resolved["kind"] == "seq2seq"
    assert list(resolved["test_datasets"]) == [f"glue-{t}" for t in GLUE8]
    assert resolved["test_datasets"]["glue-mnli"]["split"] == "validation_matched"
    assert resolved["test_datasets"]["glue-rte"]["tokenizer"]["pretrained_model_name_or_path"] == "google/flan-t5-base"


PAPER_GLUE8 = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]  # the alias order
GLUE_TARGETS = ["qqp", "mnli", "qnli", "rte"]  # the FW-Merging paper's RoBERTa targets


def test_roberta_glue_alias_names_the_papers_checkpoints(compose):
    """modelpool/taskpool=roberta-base_glue_fw: the Twin-Merging RoBERTa checkpoints the paper merged,
    whole classifiers handed out as backbones, each target evaluated with its own head."""
    cfg = compose("method=fw_hard", "modelpool=roberta-base_glue_fw", "taskpool=roberta-base_glue_fw")
    mp = OmegaConf.to_container(cfg.modelpool, resolve=True)
    assert mp["_target_"] == "fusion_bench_fw.SequenceClassificationBackbonePool"
    assert list(mp["models"]) == ["_pretrained_"] + [f"glue-{t}" for t in PAPER_GLUE8]
    assert mp["models"]["_pretrained_"]["pretrained_model_name_or_path"] == "roberta-base"
    for t in PAPER_GLUE8:
        entry = mp["models"][f"glue-{t}"]
        assert (entry["pretrained_model_name_or_path"], entry["subfolder"]) == (
            "lu-vae/roberta-glue",
            f"{t}/roberta-base_lr1e-05",
        )
        assert entry["_target_"] == "transformers.AutoModelForSequenceClassification.from_pretrained"
    assert list(mp["train_datasets"]) == [f"glue-{t}" for t in GLUE_TARGETS]
    assert {d["split"] for d in mp["train_datasets"].values()} == {"train"}
    tp = OmegaConf.to_container(cfg.taskpool, resolve=True)
    assert tp["_target_"] == "fusion_bench_fw.fusionbench.lm_taskpool.TextClassificationTaskPool"
    assert list(tp["test_datasets"]) == [f"glue-{t}" for t in GLUE_TARGETS]
    assert tp["test_datasets"]["glue-mnli"]["split"] == "validation_matched"
    assert tp["test_datasets"]["glue-rte"]["tokenizer"]["pretrained_model_name_or_path"] == "roberta-base"
