"""FW objectives for FusionBench's language-model pools, on the same core as CLIP.

Each objective is a :class:`~fusion_bench_fw.core.objective.BatchedObjective`: a loss of
the merged module, called functionally, on fixed labelled samples of each target task.

* sequence classification (``GPT2ForSequenceClassificationPool``, the plugin's
  ``SequenceClassificationBackbonePool`` for BERT/RoBERTa-style models with their heads inside):
  the pool's models are backbones; every task keeps its own classifier head
  (``modelpool.load_classifier``), as in FusionBench's GPT-2 GLUE task pool. The backbone is merged; the loss of task tau is the
  cross-entropy of tau's frozen head on top of the merged backbone.
* causal LM (``CausalLMPool``): next-token cross-entropy on prompt+answer samples, on the
  answer tokens only (rows carry ``input_ids`` and ``labels`` with -100 on the prompt, or
  ``prompt``/``answer`` text that the pool's tokenizer turns into such rows).
* seq2seq (``Seq2SeqLMPool``, Flan-T5): cross-entropy on the target tokens (rows carry
  ``input_ids`` and ``labels``; label padding is ignored), FusionBench's GLUE format.

Samples are a fixed, seeded subset per task, padded per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusion_bench_fw.core.objective import Batch, functional_forward

from .sampling import Sampling, sample_batches

IGNORE = -100


# ---------------------------------------------------------------------- data
def _as_list(value) -> list[int]:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    return [int(v) for v in value]


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def collate_tokens(rows: Sequence[Mapping[str, Any]], pad_id: int, label_pad: int | None = IGNORE) -> dict:
    """Right-pad ``input_ids``/``attention_mask`` (and token ``labels``) to the batch's longest row."""
    ids = [_as_list(r["input_ids"]) for r in rows]
    masks = [_as_list(r["attention_mask"]) if "attention_mask" in r else [1] * len(i) for r, i in zip(rows, ids)]
    batch = {"input_ids": _pad(ids, pad_id), "attention_mask": _pad(masks, 0)}
    labels = [r["labels"] if "labels" in r else r["label"] for r in rows]
    if label_pad is None:  # one class label per row
        batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
    else:
        batch["labels"] = _pad([_as_list(l) for l in labels], label_pad)
    return batch


def prompt_answer_row(tokenizer, prompt: str, answer: str) -> dict:
    """Tokenise prompt+answer; the labels are -100 on the prompt tokens (loss on the answer only)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        a = a + [tokenizer.eos_token_id]
    if not a:
        raise ValueError(f"empty answer for prompt {prompt[:40]!r}: a causal-LM sample needs answer tokens")
    return {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}


# ---------------------------------------------------------------------- losses
class HeadCrossEntropy:
    """Cross-entropy of each task's frozen classifier (head) on the merged backbone.

    ``classifiers[task]`` holds the shared backbone module as its ``prefix`` attribute, so
    the merged tensors are substituted under ``prefix.``-names.
    """

    def __init__(self, classifiers: Mapping[str, nn.Module], prefix: str):
        self.classifiers = dict(classifiers)
        self.prefix = prefix

    def __call__(self, module, params, inputs, task):
        params = {f"{self.prefix}.{k}": v for k, v in params.items()}
        out = functional_forward(
            self.classifiers[task], params, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        return F.cross_entropy(out.logits.float(), inputs["labels"])


def causal_lm_logits(module, params, inputs):
    """Next-token logits and their targets (the labels shifted left; -100 = not scored)."""
    logits = functional_forward(
        module, params, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    ).logits
    return logits[:, :-1], inputs["labels"][:, 1:]


def seq2seq_logits(module, params, inputs):
    """Target-token logits (the decoder reads the labels shifted right) and the labels."""
    out = functional_forward(
        module, params, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
    )
    return out.logits, inputs["labels"]


TOKEN_LOGITS = {"causal_lm": causal_lm_logits, "seq2seq": seq2seq_logits}


class TokenCrossEntropy:
    """Mean cross-entropy over the scored tokens (answer / target tokens only)."""

    def __init__(self, kind: str):
        self.logits = TOKEN_LOGITS[kind]

    def __call__(self, module, params, inputs, task):
        logits, labels = self.logits(module, params, inputs)
        logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


# ---------------------------------------------------------------------- builders
def pad_id_of(template: nn.Module) -> int:
    config = getattr(template, "config", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


def _classifiers(modelpool, template: nn.Module, targets, device) -> dict[str, nn.Module]:
    classifiers = {}
    for task in targets:
        if task not in modelpool.model_names:
            raise ValueError(
                f"target task {task!r} has no fine-tuned model in the pool, so it has no classifier head; "
                f"targets must be among {list(modelpool.model_names)}"
            )
        classifier = modelpool.load_classifier(task)
        prefix = getattr(classifier, "base_model_prefix", "transformer")
        setattr(classifier, prefix, template)  # share the merged backbone; keep the task's head
        classifiers[task] = classifier.to(device).eval().requires_grad_(False)
        if getattr(classifier.config, "pad_token_id", None) is None:
            raise ValueError(
                f"the classifier of task {task!r} has no config.pad_token_id; set it in its config.json "
                "(GPT-2 classification reads the last non-pad token of each padded row)"
            )
    return classifiers


def row_maker(kind: str, pad_id: int, load_tokenizer: Callable[[], Any]):
    """Turn a dataset row into token ids + labels for ``kind`` (tokenizer loaded on first need)."""
    if kind == "sequence_classification":
        return dict
    if kind == "seq2seq":

        def seq2seq_row(row):
            if "input_ids" not in row or "labels" not in row:
                raise ValueError(
                    f"seq2seq samples need `input_ids` and `labels` (target ids); got columns {sorted(row)}"
                )
            return {**row, "labels": [IGNORE if t == pad_id else t for t in _as_list(row["labels"])]}

        return seq2seq_row
    tokenizer = []

    def causal_row(row):
        if "input_ids" in row and "labels" in row:
            return row
        if "prompt" in row and "answer" in row:
            if not tokenizer:
                tokenizer.append(load_tokenizer())
            return prompt_answer_row(tokenizer[0], row["prompt"], row["answer"])
        raise ValueError(
            "causal-LM samples need `input_ids`+`labels` (labels -100 on the prompt) or `prompt`+`answer` "
            f"text; got columns {sorted(row)}"
        )

    return causal_row


def lm_batches_and_loss(
    kind: str, modelpool, template: nn.Module, train_sets: Mapping[str, Any], sampling: Sampling, device
) -> tuple[dict[str, list[Batch]], Callable]:
    """The batches and the loss of the objective of a language-model pool ``kind`` on ``train_sets``' tasks."""
    pad_id = pad_id_of(template)
    if kind == "sequence_classification":
        classifiers = _classifiers(modelpool, template, list(train_sets), device)
        prefix = getattr(next(iter(classifiers.values())), "base_model_prefix", "transformer")
        loss = HeadCrossEntropy(classifiers, prefix)
    elif kind in TOKEN_LOGITS:
        loss = TokenCrossEntropy(kind)
    else:
        raise ValueError(f"unknown language-model pool kind {kind!r}")
    make_row = row_maker(kind, pad_id, lambda: modelpool.load_tokenizer())
    label_pad = None if kind == "sequence_classification" else IGNORE
    collate = lambda rows: collate_tokens(rows, pad_id, label_pad)  # noqa: E731
    return {task: sample_batches(data, sampling, task, make_row, collate) for task, data in train_sets.items()}, loss
