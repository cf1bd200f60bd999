"""Task pools for language models on local labelled text.

:class:`TextClassificationTaskPool`: FusionBench's GPT-2 text-classification task pool for any
Hugging Face ``*ForSequenceClassification`` family: each task's accuracy with *its own head*
(``modelpool.load_classifier(task)``) on the evaluated backbone, with a
:class:`~fusion_bench_fw.fusionbench.modelpool.SequenceClassificationBackbonePool`.

:class:`TokenLossTaskPool` scores a causal-LM or seq2seq model.

FusionBench's generative task pools (lm-eval-harness, Flan-T5 GLUE generation) fetch their
data from the hub; this one reads local data sets in the same row formats the FW objective
uses (``prompt``/``answer`` text or ``input_ids``/``labels``) and reports, per task, the mean
cross-entropy on the answer (target) tokens and the teacher-forced answer-token accuracy::

    _target_: fusion_bench_fw.fusionbench.lm_taskpool.TokenLossTaskPool
    kind: causal_lm                 # causal_lm | seq2seq
    tokenizer: /path/to/tokenizer   # for prompt/answer text rows
    test_datasets: {task: {_target_: datasets.load_from_disk, dataset_path: ...}}
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from fusion_bench.taskpool import BaseTaskPool, GPT2TextClassificationTaskPool
from fusion_bench.utils import instantiate

from .objectives.lm import IGNORE, TOKEN_LOGITS, collate_tokens, pad_id_of, row_maker

# GLUE's text columns per task (one sentence, or a pair)
GLUE_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


def load_glue_classification(name: str, split: str, tokenizer, max_length: int = 128):
    """A GLUE split tokenised for an encoder classifier: fixed-length ``input_ids`` and
    ``attention_mask`` and the ``label`` column (the rows FW's objective and
    :class:`TextClassificationTaskPool` read). FusionBench's GPT-2 GLUE loader caches its
    tokens under a folder named for GPT-2 whatever the tokenizer, so it is not reused here."""
    from datasets import load_dataset

    if name not in GLUE_COLUMNS:
        raise ValueError(f"unknown GLUE task {name!r}; one of {sorted(GLUE_COLUMNS)}")
    if not callable(tokenizer):
        tokenizer = instantiate(tokenizer)
    columns = GLUE_COLUMNS[name]

    def encode(batch):
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, padding="max_length", truncation=True, max_length=max_length)

    data = load_dataset("glue", name, split=split)
    return data.map(encode, batched=True, remove_columns=[c for c in data.column_names if c != "label"])


class TextClassificationTaskPool(GPT2TextClassificationTaskPool):
    """Accuracy and loss of each task's own head on the evaluated backbone (a whole classifier
    is reduced to its backbone first). Arguments as FusionBench's GPT-2 GLUE task pool
    (``test_datasets`` rows: fixed-length ``input_ids``, ``attention_mask``, ``label``)."""

    def get_classifier(self, task_name: str, model):
        from .modelpool import backbone_of

        modelpool = self._program.modelpool
        if not hasattr(modelpool, "load_classifier"):
            raise ValueError(
                f"TextClassificationTaskPool needs a model pool that loads each task's classifier "
                f"(load_classifier); {type(modelpool).__name__} does not: use "
                "_target_: fusion_bench_fw.SequenceClassificationBackbonePool"
            )
        classifier = modelpool.load_classifier(task_name)
        prefix = getattr(model, "base_model_prefix", None)
        backbone = backbone_of(model) if isinstance(getattr(model, prefix or "", None), torch.nn.Module) else model
        setattr(classifier, classifier.base_model_prefix, copy.deepcopy(backbone))
        return classifier


class TokenLossTaskPool(BaseTaskPool):
    _config_mapping = BaseTaskPool._config_mapping | {
        "_test_datasets": "test_datasets",
        "kind": "kind",
        "_tokenizer": "tokenizer",
        "batch_size": "batch_size",
    }

    def __init__(self, test_datasets, kind: str, tokenizer: str | None = None, batch_size: int = 32, **kwargs):
        if kind not in TOKEN_LOGITS:
            raise ValueError(f"unknown kind {kind!r}; use one of {tuple(TOKEN_LOGITS)}")
        self._test_datasets = test_datasets
        self.kind = kind
        self._tokenizer = tokenizer
        self.batch_size = int(batch_size)
        super().__init__(**kwargs)

    def _load_tokenizer(self):
        if self._tokenizer is None:
            raise ValueError("these rows are text (prompt/answer): give the task pool a `tokenizer` path")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self._tokenizer)

    @torch.no_grad()
    def evaluate(self, model, *args, **kwargs):
        model.eval()
        device = next(model.parameters()).device
        pad_id = pad_id_of(model)
        make_row = row_maker(self.kind, pad_id, self._load_tokenizer)
        report = {}
        for task, config in self._test_datasets.items():
            dataset = instantiate(config)
            rows = [make_row(dataset[i]) for i in range(len(dataset))]
            loss_sum, correct, count = 0.0, 0, 0
            for s in range(0, len(rows), self.batch_size):
                batch = {k: v.to(device) for k, v in collate_tokens(rows[s : s + self.batch_size], pad_id).items()}
                logits, labels = TOKEN_LOGITS[self.kind](model, {}, batch)
                keep = labels != IGNORE
                loss_sum += float(F.cross_entropy(logits.float()[keep], labels[keep], reduction="sum"))
                correct += int((logits.argmax(-1)[keep] == labels[keep]).sum())
                count += int(keep.sum())
            report[task] = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
        if report:
            report["average"] = {k: sum(r[k] for r in report.values()) / len(report) for k in ("loss", "accuracy")}
        return report
