"""LoRA pools through the real ``fusion_bench`` CLI: factors (store=auto) merge as the full weights
of peft's merge_and_unload (store=safetensors, the path every LoRA pool took before) did.

The tiny LM pools' pretrained models get two random peft adapters each (GPT-2: Conv1D layers,
fan_in_fan_out; T5: Linear), loaded by FusionBench's own peft loaders. Both runs of a pool must
select the same vertices, save the same merged model, and only the full-weight run may spill
candidates to disk.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fusion_bench_fw.offline import tiny_lm

TASKS = ("copy", "reverse")
POOLS = {
    # kind: (modelpool, loader, model class, target modules)
    "causal": (
        "fw_tiny_causal",
        "fusion_bench.modelpool.causal_lm.causal_lm.load_peft_causal_lm",
        "GPT2LMHeadModel",
        ["c_attn", "c_fc"],
    ),
    "seq2seq": (
        "fw_tiny_t5",
        "fusion_bench.modelpool.seq2seq_lm.modelpool.load_lora_model",
        "T5ForConditionalGeneration",
        ["q", "v", "wi"],
    ),
}


@pytest.fixture(scope="module")
def adapters(tiny_lm_root, tmp_path_factory):
    import transformers
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("lora_adapters")
    for kind, (_, _, cls, targets) in POOLS.items():
        for t, task in enumerate(TASKS):
            model = getattr(transformers, cls).from_pretrained(tiny_lm_root / kind / "models" / "_pretrained_")
            torch.manual_seed(10 * t + len(kind))
            peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(std=0.05)
            peft_model.save_pretrained(root / kind / task)
    return root


def _run(run_fusion_bench, tiny_lm_root, adapters, kind, method, store, tmp_path):
    pool, loader, _, _ = POOLS[kind]
    out = tmp_path / f"{kind}_{store}"
    args = [
        f"method={method}",
        f"modelpool={pool}",
        f"taskpool={pool}",
        "method.n_per_task=8",
        "method.batch_size=8",
        "method.max_iters=3",
        "method.progress=false",
        f"method.store={store}",
        f"method.cache_dir={out / 'vertex_cache'}",
        f"merged_model_save_path={out / 'merged'}",  # the CLI's own saved merge is compared
    ]
    if method == "fw_soft":
        args.append("method.inner_steps=3")
    for task in TASKS:
        entry = f"modelpool.models.{task}"
        args += [
            f"{entry}._target_={loader}",
            f"~{entry}.pretrained_model_name_or_path",
            f"+{entry}.base_model_path={tiny_lm_root / kind / 'models' / '_pretrained_'}",
            f"+{entry}.peft_model_path={adapters / kind / task}",
            f"+{entry}.is_trainable=false",
        ]
        if kind == "causal":
            args.append(f"+{entry}.torch_dtype=float32")
    result = run_fusion_bench(args, env={tiny_lm.ENV_VAR: str(tiny_lm_root)}, tiny=False).check()
    history = json.loads((result.log_dir / "fw_history.json").read_text())
    saved = out / "merged"  # CausalLMPool: save_pretrained folder; Seq2SeqLMPool: one torch.save file
    merged = torch.load(saved, weights_only=True) if saved.is_file() else load_file(next(saved.rglob("*.safetensors")))
    spilled = sorted(p.name for p in (out / "vertex_cache").rglob("*.safetensors"))
    return result, history, merged, spilled


@pytest.mark.parametrize("kind,method", [("causal", "fw_soft"), ("seq2seq", "fw_hard")])
def test_lora_factors_merge_as_merge_and_unload_did(run_fusion_bench, tiny_lm_root, adapters, tmp_path, kind, method):
    _, h_new, merged_new, spilled_new = _run(run_fusion_bench, tiny_lm_root, adapters, kind, method, "auto", tmp_path)
    _, h_old, merged_old, spilled_old = _run(
        run_fusion_bench, tiny_lm_root, adapters, kind, method, "safetensors", tmp_path
    )
    assert spilled_new == [] and spilled_old == [f"{t}.safetensors" for t in TASKS]
    assert [r["selected"] for r in h_new["iterations"]] == [r["selected"] for r in h_old["iterations"]]
    for new, old in zip(h_new["iterations"], h_old["iterations"]):
        assert new["gap"] == pytest.approx(old["gap"], rel=1e-4, abs=1e-6)
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-5)
    assert merged_new.keys() == merged_old.keys()
    for key in merged_old:
        torch.testing.assert_close(merged_new[key], merged_old[key], rtol=1e-5, atol=1e-6)
