"""FW-Merging on tiny language-model pools, end to end through the ``fusion_bench`` CLI.

The pools are built in code (``fusion_bench_fw.offline.tiny_lm``): GPT-2 sequence
classification in FusionBench's GPT-2 GLUE layout (evaluated by FusionBench's own
GPT2TextClassificationTaskPool), a GPT-2 causal LM and a T5 seq2seq pool (evaluated by the
plugin's TokenLossTaskPool). Each run is checked against an independent in-test reference:
the merged weights rebuilt from the run's coefficients, and the first objective value
recomputed with Hugging Face's own loss.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fusion_bench_fw.fusionbench.objectives.sampling import fixed_subset_indices
from fusion_bench_fw.offline import tiny_lm

N_PER_TASK = 32


def _run(run_fusion_bench, root, method, pool, *extra):
    args = [
        f"method={method}",
        f"modelpool={pool}",
        f"taskpool={pool}",
        f"method.n_per_task={N_PER_TASK}",
        "method.batch_size=64",
        "method.progress=false",
        *extra,
    ]
    result = run_fusion_bench(args, env={tiny_lm.ENV_VAR: str(root)}, tiny=False).check()
    history = json.loads((result.log_dir / "fw_history.json").read_text())
    return result, history


def _combine(history, states):
    """theta = sum_i alpha[i, p] * basis_i,p in float64, from the run's own coefficients."""
    alpha = torch.tensor(history["coefficients"], dtype=torch.float64)
    return {
        key: sum(alpha[i, p] * states[name][key].double() for i, name in enumerate(history["basis"])).float()
        for p, key in enumerate(history["keys"])
    }


def test_gpt2_classification_fw_hard_cli_matches_independent_merge(run_fusion_bench, tiny_lm_root):
    from datasets import load_from_disk
    from transformers import GPT2ForSequenceClassification

    result, history = _run(run_fusion_bench, tiny_lm_root, "fw_hard", "fw_tiny_gpt2_cls")
    acc = result.accuracies()
    assert set(acc) == {"last_half", "first_half", "average"}
    assert history["iterations"][-1]["loss"] < history["iterations"][0]["loss"] or history["final_loss"] < 0.2

    root = tiny_lm_root / "gpt2_cls" / "models"
    states = {
        n: {k.removeprefix("transformer."): v for k, v in load_file(root / n / "model.safetensors").items()}
        for n in history["basis"]
    }
    merged = _combine(history, states)
    for task in ("last_half", "first_half"):
        model = GPT2ForSequenceClassification.from_pretrained(root / task).eval()
        missing = model.transformer.load_state_dict(merged, strict=False)
        assert not missing.unexpected_keys
        data = load_from_disk(str(tiny_lm_root / "gpt2_cls" / "data" / task / "test"))[:]
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])
            ).logits
        expected = float((logits.argmax(-1) == torch.tensor(data["labels"])).float().mean())
        assert acc[task] == pytest.approx(expected, abs=1e-6), task
    assert acc["average"] >= 0.8  # the fine-tuned heads score 1.0; the pretrained backbone ~0.6


def _hf_subset_loss(model, rows_of_task):
    """Mean over tasks of Hugging Face's token-mean loss on each task's fixed subset (one batch)."""
    losses = []
    for task, rows in rows_of_task.items():
        rows = [rows[i] for i in fixed_subset_indices(len(rows), N_PER_TASK, 0, task)]
        losses.append(float(model(**rows_to_batch(rows)).loss))
    return sum(losses) / len(losses)


def rows_to_batch(rows):
    width = max(len(r["input_ids"]) for r in rows)
    pad = lambda seq, v: list(seq) + [v] * (width - len(seq))  # noqa: E731
    labels = [pad(r["labels"], -100) for r in rows]
    labels = [[-100 if t == tiny_lm.PAD else t for t in l] for l in labels] if "attention_mask" in rows[0] else labels
    return {
        "input_ids": torch.tensor([pad(r["input_ids"], tiny_lm.PAD) for r in rows]),
        "attention_mask": torch.tensor([pad(r.get("attention_mask", [1] * len(r["input_ids"])), 0) for r in rows]),
        "labels": torch.tensor(labels),
    }


@pytest.mark.parametrize(
    "method,pool,kind",
    [("fw_soft", "fw_tiny_causal", "causal"), ("fw_hard", "fw_tiny_t5", "seq2seq")],
)
def test_generative_pools_cli_first_objective_equals_hf_loss(run_fusion_bench, tiny_lm_root, method, pool, kind):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    result, history = _run(run_fusion_bench, tiny_lm_root, method, pool, "method.max_iters=4")
    report = result.report
    for task in ("copy", "reverse"):
        assert math.isfinite(report[task]["loss"]) and 0 <= report[task]["accuracy"] <= 1
    losses = [r["loss"] for r in history["iterations"]] + [history["final_loss"]]
    assert min(losses[1:]) < losses[0]  # FW lowered the objective on the fixed samples

    # theta_0 rebuilt independently: pretrained (FW-soft) or task arithmetic 0.3 (FW-hard)
    root = tiny_lm_root / kind
    loader = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    model = loader.from_pretrained(root / "models" / "_pretrained_").eval()
    if method == "fw_hard":
        pre = {k: v.clone() for k, v in model.state_dict().items()}
        fts = [load_file(root / "models" / t / "model.safetensors") for t in ("copy", "reverse")]
        # only the saved tensors: tied aliases (T5's embed_tokens) must not overwrite the merged ones
        model.load_state_dict({k: pre[k] + sum(0.3 * (ft[k] - pre[k]) for ft in fts) for k in fts[0]}, strict=False)
    tok = tiny_lm.make_tokenizer()
    rows_of_task = {}
    for task in ("copy", "reverse"):
        data = load_from_disk(str(root / "data" / task / "train"))
        if kind == "causal":
            rows_of_task[task] = [tiny_lm.causal_rows(tok, r["prompt"], r["answer"]) for r in data]
        else:
            rows_of_task[task] = [dict(r) for r in data]
    with torch.no_grad():
        expected = _hf_subset_loss(model, rows_of_task)
    assert history["iterations"][0]["loss"] == pytest.approx(expected, rel=1e-4)


def test_bert_heads_inside_pool_cli_each_task_own_head(run_fusion_bench, tiny_lm_root):
    """Whole BERT classifiers (heads of 2 and 3 labels inside the checkpoints): FW-soft merges the
    backbones; its first objective is each task's own head on the pretrained backbone (Hugging
    Face's loss), and the task pool's accuracies are each task's own head on the merged backbone
    rebuilt here from the run's coefficients and the checkpoint files."""
    from datasets import load_from_disk
    from transformers import BertForSequenceClassification

    result, history = _run(run_fusion_bench, tiny_lm_root, "fw_soft", "fw_tiny_bert_cls", "method.max_iters=4")
    acc = result.accuracies()
    tasks = list(tiny_lm.BERT_TASKS)
    assert set(acc) == {*tasks, "average"}
    root = tiny_lm_root / "bert_cls"
    assert all(not k.startswith(("bert.", "classifier.")) for k in history["keys"])  # the backbone's tensors only

    classifiers = {t: BertForSequenceClassification.from_pretrained(root / "models" / t).eval() for t in tasks}
    assert [c.num_labels for c in classifiers.values()] == list(tiny_lm.BERT_TASKS.values())
    data = {t: load_from_disk(str(root / "data" / t / "test"))[:] for t in tasks}
    pretrained = load_file(root / "models" / "_pretrained_" / "model.safetensors")

    def own_head(task, backbone_state, rows):
        model = classifiers[task]
        model.bert.load_state_dict(backbone_state)
        with torch.no_grad():
            return model(input_ids=torch.tensor(rows["input_ids"]), attention_mask=torch.tensor(rows["attention_mask"]))

    # the first objective: the mean over tasks of each own head's loss on the pretrained backbone
    backbone0 = {k.removeprefix("bert."): v for k, v in pretrained.items() if k.startswith("bert.")}
    losses = []
    for t in tasks:
        train = load_from_disk(str(root / "data" / t / "train"))
        rows = train[fixed_subset_indices(len(train), N_PER_TASK, 0, t)]
        logits = own_head(t, backbone0, rows).logits
        losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(rows["label"]))))
    assert history["iterations"][0]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)

    # the evaluation: each task's own head on the merged backbone
    states = {
        n: {k.removeprefix("bert."): v for k, v in load_file(root / "models" / n / "model.safetensors").items()}
        for n in history["basis"]
    }
    merged = _combine(history, states)
    for t in tasks:
        logits = own_head(t, {**backbone0, **merged}, data[t]).logits
        expected = float((logits.argmax(-1) == torch.tensor(data[t]["label"])).float().mean())
        assert acc[t] == pytest.approx(expected, abs=1e-6), t


def test_plain_sequence_classification_pool_is_refused_with_the_fix(run_fusion_bench, tiny_lm_root):
    """FusionBench's own SequenceClassificationModelPool hands out whole models (heads of 2 and 3
    labels): the error names the plugin's backbone pool as the fix."""
    result = run_fusion_bench(
        [
            "method=fw_hard",
            "modelpool=fw_tiny_bert_cls",
            "modelpool._target_=fusion_bench.modelpool.SequenceClassificationModelPool",
            "taskpool=dummy",
        ],
        env={tiny_lm.ENV_VAR: str(tiny_lm_root)},
        tiny=False,
    )
    assert result.returncode != 0
    assert "fusion_bench_fw.SequenceClassificationBackbonePool" in result.output
