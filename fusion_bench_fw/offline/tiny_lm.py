"""Tiny, fully offline language-model pools for tests and smoke runs on CPU.

Builds in seconds, with no hub access, three pools in FusionBench's formats, all sharing a
character-level tokenizer made in code (``<pad>``=0, ``</s>``=1, ``<unk>``=2, then letters
and a few symbols):

* ``ROOT/gpt2_cls``: FusionBench's GPT-2 GLUE layout. ``models/_pretrained_`` is a tiny
  ``GPT2Model``; ``models/<task>`` a ``GPT2ForSequenceClassification`` (backbone + the task's
  ``score`` head) fine-tuned from it. ``data/<task>/{train,test}`` hold ``input_ids``,
  ``attention_mask`` (padded to a fixed length) and ``labels``, the tokenized-GLUE columns.
  Tasks on random strings of a-p: ``last_half`` (is the last letter in a-h?) and
  ``first_half`` (is the first letter in a-h?).
* ``ROOT/bert_cls``: heads inside the models, as in FusionBench's RoBERTa GLUE pool: every
  ``models/<name>`` is a whole ``BertForSequenceClassification`` (``_pretrained_``'s head is
  unused), fine-tuned from the pretrained backbone with a head of its own label count:
  ``last_half`` (2 labels, as above) and ``first_third`` (3 labels: is the first letter in a-e,
  f-j or k-p?). Data columns ``input_ids``, ``attention_mask``, ``label``.
* ``ROOT/causal``: ``GPT2LMHeadModel``s; tasks ``copy`` ("c:abcd=" -> "abcd") and
  ``reverse`` ("r:abcd=" -> "dcba"); data rows are ``prompt``/``answer`` text.
* ``ROOT/seq2seq``: ``T5ForConditionalGeneration``s on the same two tasks; data rows are
  FusionBench's Flan-T5 GLUE format (``input_ids``, ``attention_mask``, ``labels`` padded
  with the pad id).

Each fine-tuned model is a short full fine-tune of the shared pretrained model, so the pool
is a real merging problem. ``ROOT/manifest.json`` records the build, the test accuracy of
each fine-tuned classifier on its task, and the teacher-forced answer-token accuracy of every
generative model on every task. The configs ``modelpool=fw_tiny_gpt2_cls`` / ``fw_tiny_bert_cls`` / ``fw_tiny_causal`` /
``fw_tiny_t5`` (and task pools of the same names) read ROOT from ``FUSION_BENCH_FW_TINY_LM_ROOT``::

    python -m fusion_bench_fw.offline.tiny_lm /abs/ROOT
    export FUSION_BENCH_FW_TINY_LM_ROOT=/abs/ROOT
    fusion_bench method=fw_hard modelpool=fw_tiny_gpt2_cls taskpool=fw_tiny_gpt2_cls
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fusion_bench_fw import PRETRAINED

ENV_VAR = "FUSION_BENCH_FW_TINY_LM_ROOT"
PAD, EOS, UNK = 0, 1, 2
LETTERS = string.ascii_lowercase[:16]  # a-p
CLS_TASKS = ("last_half", "first_half")
BERT_TASKS = {"last_half": 2, "first_third": 3}  # task -> label count (heads of different shapes)
GEN_TASKS = ("copy", "reverse")
CLS_LEN = 10  # fixed padded length of classification rows (default_data_collator needs one)
SEQ_LEN = 16


def make_tokenizer():
    """A character-level fast tokenizer: one token per character, no merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.ascii_lowercase + ":="))
    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": UNK, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=64
    )


def _words(rng: random.Random, n: int, lo: int = 3, hi: int = 6) -> list[str]:
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def cls_label(task: str, word: str) -> int:
    if task == "first_third":
        return "abcdefghijklmnop".index(word[0]) * 3 // 16
    letter = word[-1] if task == "last_half" else word[0]
    return int(letter < "i")


def gen_example(task: str, word: str):
    return (f"c:{word}=", word) if task == "copy" else (f"r:{word}=", word[::-1])


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _padded(ids: list[int], length: int, value: int = PAD):
    assert len(ids) <= length, (ids, length)
    return ids + [value] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))


def _train(model, loss_fn: Callable, batches: list, steps: int, lr: float, seed: int):
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        loss = loss_fn(model, batches[step % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _batches(rows: list[dict], size: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for s in range(0, len(rows), size):
        chunk = rows[s : s + size]
        out.append({k: torch.tensor([r[k] for r in chunk]) for k in chunk[0]})
    return out


# ---------------------------------------------------------------------- GPT-2 classification
def _cls_rows(tok, task, words, label_key="labels"):
    rows = []
    for w in words:
        ids, mask = _padded(_encode(tok, w), CLS_LEN)
        rows.append({"input_ids": ids, "attention_mask": mask, label_key: cls_label(task, w)})
    return rows


def _gpt2_config(vocab_size: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        pad_token_id=PAD,
        bos_token_id=EOS,
        eos_token_id=EOS,
        num_labels=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def _cls_accuracy(model, rows, label_key="labels") -> float:
    batch = _batches(rows, len(rows))[0]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float((logits.argmax(-1) == batch[label_key]).float().mean())


def build_gpt2_cls(root: str, tok, seed: int, n_train: int, n_test: int, steps: int) -> dict:
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2Model

    config = _gpt2_config(len(tok))
    torch.manual_seed(seed)
    pretrained = GPT2Model(config)
    pretrained.save_pretrained(os.path.join(root, "models", PRETRAINED))
    tok.save_pretrained(os.path.join(root, "tokenizer"))
    accuracy = {}
    for t, task in enumerate(CLS_TASKS):
        rng = random.Random(f"{seed}-{task}")
        train, test = _cls_rows(tok, task, _words(rng, n_train)), _cls_rows(tok, task, _words(rng, n_test))
        for split, rows in (("train", train), ("test", test)):
            Dataset.from_list(rows).save_to_disk(os.path.join(root, "data", task, split))
        torch.manual_seed(seed + 100 + t)
        model = GPT2ForSequenceClassification(config)
        model.transformer.load_state_dict(pretrained.state_dict())
        loss = lambda m, b: F.cross_entropy(
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
        )  # noqa: E731
        _train(model, loss, _batches(train, 32), steps, 3e-3, seed + t)
        model.save_pretrained(os.path.join(root, "models", task))
        accuracy[task] = _cls_accuracy(model, test)
    return {"tasks": list(CLS_TASKS), "finetuned_test_accuracy": accuracy}


def build_bert_cls(root: str, tok, seed: int, n_train: int, n_test: int, steps: int) -> dict:
    """Whole BERT classifiers with heads of 2 and 3 labels over one pretrained backbone."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    def config(num_labels):
        return BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            pad_token_id=PAD,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )

    torch.manual_seed(seed)
    pretrained = BertForSequenceClassification(config(2))
    pretrained.save_pretrained(os.path.join(root, "models", PRETRAINED))
    tok.save_pretrained(os.path.join(root, "tokenizer"))
    accuracy = {}
    for t, (task, num_labels) in enumerate(BERT_TASKS.items()):
        rng = random.Random(f"{seed}-bert-{task}")
        train, test = (_cls_rows(tok, task, _words(rng, n), "label") for n in (n_train, n_test))
        for split, rows in (("train", train), ("test", test)):
            Dataset.from_list(rows).save_to_disk(os.path.join(root, "data", task, split))
        torch.manual_seed(seed + 200 + t)
        model = BertForSequenceClassification(config(num_labels))
        model.bert.load_state_dict(pretrained.bert.state_dict())
        loss = lambda m, b: F.cross_entropy(  # noqa: E731
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["label"]
        )
        _train(model, loss, _batches(train, 32), steps, 3e-3, seed + t)
        model.save_pretrained(os.path.join(root, "models", task))
        accuracy[task] = _cls_accuracy(model, test, "label")
    return {"tasks": list(BERT_TASKS), "finetuned_test_accuracy": accuracy}


# ---------------------------------------------------------------------- generative pools
def causal_rows(tok, prompt: str, answer: str) -> dict:
    p, a = _encode(tok, prompt), _encode(tok, answer) + [EOS]
    return {"input_ids": p + a, "labels": [-100] * len(p) + a}


def _pad_rows(rows, keys_pad):
    width = max(len(r["input_ids"]) for r in rows)
    out = []
    for r in rows:
        n = len(r["input_ids"])
        out.append(
            {k: list(r[k]) + [v] * (width - len(r[k])) for k, v in keys_pad.items()}
            | {"attention_mask": [1] * n + [0] * (width - n)}
        )
    return out


def answer_token_accuracy_causal(model, rows) -> float:
    batch = _batches(_pad_rows(rows, {"input_ids": PAD, "labels": -100}), len(rows))[0]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    return float((logits.argmax(-1)[keep] == labels[keep]).float().mean())


def _causal_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def t5_rows(tok, prompt: str, answer: str) -> dict:
    ids, mask = _padded(_encode(tok, prompt) + [EOS], SEQ_LEN)
    labels, _ = _padded(_encode(tok, answer) + [EOS], SEQ_LEN)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _t5_loss(model, batch):
    labels = batch["labels"].masked_fill(batch["labels"] == PAD, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


def answer_token_accuracy_t5(model, rows) -> float:
    batch = _batches(rows, len(rows))[0]
    labels = batch["labels"].masked_fill(batch["labels"] == PAD, -100)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    keep = labels != -100
    return float((logits.argmax(-1)[keep] == labels[keep]).float().mean())


def build_generative(root: str, tok, kind: str, seed: int, n_train: int, n_test: int, steps: int) -> dict:
    from datasets import Dataset

    if kind == "causal":
        from transformers import GPT2LMHeadModel

        make = lambda: GPT2LMHeadModel(_gpt2_config(len(tok)))  # noqa: E731
        loss_fn, acc_fn = _causal_loss, answer_token_accuracy_causal
    else:
        from transformers import T5Config, T5ForConditionalGeneration

        config = T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            dropout_rate=0.0,
            pad_token_id=PAD,
            eos_token_id=EOS,
            decoder_start_token_id=PAD,
            feed_forward_proj="relu",
        )
        make = lambda: T5ForConditionalGeneration(config)  # noqa: E731
        loss_fn, acc_fn = _t5_loss, answer_token_accuracy_t5
    torch.manual_seed(seed)
    pretrained = make()
    # a little pretraining on both tasks mixed, so the fine-tunes start from a shared, useful point
    encode = causal_rows if kind == "causal" else t5_rows
    rng = random.Random(f"{seed}-{kind}-pre")
    mixed = [encode(tok, *gen_example(GEN_TASKS[i % 2], w)) for i, w in enumerate(_words(rng, 128))]
    pad = (
        (lambda rows: _pad_rows(rows, {"input_ids": PAD, "labels": -100})) if kind == "causal" else (lambda rows: rows)
    )
    _train(
        pretrained,
        loss_fn,
        [_batches(pad(mixed[s : s + 32]), 32)[0] for s in range(0, 128, 32)],
        steps // 2,
        3e-3,
        seed,
    )
    pretrained.save_pretrained(os.path.join(root, "models", PRETRAINED))
    tok.save_pretrained(os.path.join(root, "models", PRETRAINED))
    tok.save_pretrained(os.path.join(root, "tokenizer"))
    accuracy = {}
    state = pretrained.state_dict()
    rows_of = {}
    for t, task in enumerate(GEN_TASKS):
        rng = random.Random(f"{seed}-{kind}-{task}")
        train_words, test_words = _words(rng, n_train), _words(rng, n_test)
        if kind == "causal":  # prompt/answer text: the objective tokenises it with the pool's tokenizer
            splits = {
                s: [dict(zip(("prompt", "answer"), gen_example(task, w))) for w in ws]
                for s, ws in (("train", train_words), ("test", test_words))
            }
            rows_of[task] = {s: [causal_rows(tok, r["prompt"], r["answer"]) for r in v] for s, v in splits.items()}
        else:
            splits = {
                s: [t5_rows(tok, *gen_example(task, w)) for w in ws]
                for s, ws in (("train", train_words), ("test", test_words))
            }
            rows_of[task] = splits
        for split, rows in splits.items():
            Dataset.from_list(rows).save_to_disk(os.path.join(root, "data", task, split))
        model = make()
        model.load_state_dict(state)
        train = rows_of[task]["train"]
        _train(
            model,
            loss_fn,
            [_batches(pad(train[s : s + 32]), 32)[0] for s in range(0, len(train), 32)],
            steps,
            3e-3,
            seed + 1 + t,
        )
        model.save_pretrained(os.path.join(root, "models", task))
    for name in (PRETRAINED, *GEN_TASKS):
        model = make()
        from safetensors.torch import load_file

        model.load_state_dict(load_file(os.path.join(root, "models", name, "model.safetensors")), strict=False)
        model.eval()
        accuracy[name] = {task: acc_fn(model, rows_of[task]["test"]) for task in GEN_TASKS}
    return {"tasks": list(GEN_TASKS), "answer_token_accuracy": accuracy}


def build_tiny_lm_pools(
    root: str,
    seed: int = 0,
    n_train: int = 64,
    n_test: int = 32,
    steps: int = 60,
    kinds=("gpt2_cls", "bert_cls", "causal", "seq2seq"),
) -> dict:
    """Build the pools under ``root`` (skipped when a manifest with the same parameters exists)."""
    root = os.path.abspath(root)
    params = {"seed": seed, "n_train": n_train, "n_test": n_test, "steps": steps, "kinds": list(kinds)}
    manifest_path = os.path.join(root, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("params") == params:
            return manifest
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tok = make_tokenizer()
    manifest = {"root": root, "params": params, "env_var": ENV_VAR}
    for kind in kinds:
        sub = os.path.join(root, kind)
        if kind in ("gpt2_cls", "bert_cls"):
            build_cls = build_gpt2_cls if kind == "gpt2_cls" else build_bert_cls
            manifest[kind] = build_cls(sub, tok, seed, n_train, n_test, steps)
        else:
            manifest[kind] = build_generative(sub, tok, kind, seed, n_train, n_test, steps)
    os.makedirs(root, exist_ok=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Build the tiny offline LM pools into ROOT; then export {ENV_VAR}=ROOT."
    )
    parser.add_argument("root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    manifest = build_tiny_lm_pools(args.root, seed=args.seed, steps=args.steps)
    print(json.dumps({k: v for k, v in manifest.items() if k != "params"}, indent=1))
    print(f"export {ENV_VAR}={manifest['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
