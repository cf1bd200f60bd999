"""A LoRA candidate's tensors, as the run's store serves them, are W0 + (alpha/r) * B @ A per
adapted module (the store keeps the factors, store=auto; W0 elsewhere).

The reference is computed by hand from the adapter's saved A and B factors; the pool entry is
the one FusionBench's Flan-T5 LoRA pools use (``load_lora_model``), here without
``merge_and_unload``, so nothing but the plugin forms the delta.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from fusion_bench_fw.fusionbench.pool import build_vertex_store

R, LORA_ALPHA = 2, 6


@pytest.fixture(scope="module")
def lora_pool(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = T5Config(vocab_size=20, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    base = T5ForConditionalGeneration(config)
    base.save_pretrained(root / "base")
    peft_model = get_peft_model(base, LoraConfig(r=R, lora_alpha=LORA_ALPHA, target_modules=["q", "v"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter a real delta
                p.normal_()
    peft_model.save_pretrained(root / "adapter")
    return root


def test_lora_candidate_is_the_full_low_rank_delta(lora_pool, tmp_path):
    from fusion_bench.modelpool import Seq2SeqLMPool
    from transformers import AutoModelForSeq2SeqLM

    pool = Seq2SeqLMPool(
        OmegaConf.create(
            {
                "_pretrained_": {
                    "_target_": "transformers.AutoModelForSeq2SeqLM.from_pretrained",
                    "pretrained_model_name_or_path": str(lora_pool / "base"),
                },
                "lora": {
                    "_target_": "fusion_bench.modelpool.seq2seq_lm.modelpool.load_lora_model",
                    "base_model_path": str(lora_pool / "base"),
                    "peft_model_path": str(lora_pool / "adapter"),
                    "merge_and_unload": False,
                },
            }
        ),
        tokenizer=None,
    )
    base = AutoModelForSeq2SeqLM.from_pretrained(lora_pool / "base")
    shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    store = build_vertex_store(pool, ["lora"], shapes, "auto", str(tmp_path / "cache"))

    adapter = load_file(lora_pool / "adapter" / "adapter_model.safetensors")
    base_state = base.state_dict()
    adapted = 0
    for key in shapes:
        module = key.removesuffix(".weight")
        a_key = f"base_model.model.{module}.lora_A.weight"
        expected = base_state[key].double()
        if a_key in adapter:
            b = adapter[f"base_model.model.{module}.lora_B.weight"].double()
            expected = expected + (LORA_ALPHA / R) * b @ adapter[a_key].double()
            adapted += 1
        torch.testing.assert_close(store.tensor("lora", key).double(), expected, rtol=1e-5, atol=1e-6)
    assert adapted == 6  # q and v of encoder self-, decoder self- and decoder cross-attention
