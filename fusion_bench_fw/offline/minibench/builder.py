"""The mini benchmark's build: its parameters and scopes, and :func:`build`, which writes the
models, the data sets (train, validation, test), each model's cache key and the manifest under
the root."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fusion_bench_fw import PRETRAINED

from .. import builds
from ..builds import digest, flat, key_matches, task_vector_diagnostics, torch_threads, write_key, write_manifest
from ..tiny_clip import TEMPLATES, image_embeds, make_processor, text_head
from .sources import DIGITS_VAL, FASHION_VAL, Sources, load_sources
from .tasks import ALL_TASKS, TALL14, TARGETS, TASKS, ModelSpec, model_specs, task_images, task_labels
from .training import finetune, pretrain

ENV_VAR = "FUSION_BENCH_FW_MINIBENCH_ROOT"
# Bump when the builder's models change for the same parameters (it keys every model; 4: the
# digits' validation split took 300 images from their train set, which pre-training uses too).
BUILDER_VERSION = 4
# Bump when the saved data sets change but no model does: it keys the manifest only, so a build
# over an older root reuses every model and writes what is new (2: the validation splits; 3: the
# digits' validation split).
DATA_VERSION = 3


def default_root() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "fusion_bench_fw", "minibench")


def read_manifest(root: str | None = None) -> dict | None:
    """The manifest of the build under ``root`` (default :func:`default_root`), or None."""
    return builds.read_manifest(root or default_root())


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
    n_val: int = 1000  # validation images per task (mnist: at most 1,000; digits: at most 300, see sources.py)
    n_val_other: int = 300  # validation images saved for irrelevant / noisy models
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

    # what shapes the validation sets only: in the manifest's key, never in a model's
    VAL_FIELDS = ("n_val", "n_val_other")

    def key(self) -> dict:
        """What the models depend on (each model's cache key is derived from it)."""
        import torch
        import transformers

        d = asdict(self)
        d.pop("scope")
        for field in self.VAL_FIELDS:
            d.pop(field)
        d.update(builder_version=BUILDER_VERSION, torch=torch.__version__, transformers=transformers.__version__)
        return json.loads(json.dumps(d))  # as stored in the manifest (tuples become lists)

    def manifest_key(self) -> dict:
        """The build's key (the manifest's ``key``): the models' key, the validation sizes and
        :data:`DATA_VERSION`; a root whose manifest holds another key is built again (its models
        reused where their own keys match)."""
        return {**self.key(), **{f: getattr(self, f) for f in self.VAL_FIELDS}, "data_version": DATA_VERSION}


# tests and CI: a smaller tower, fewer images and steps (the regime is not calibrated at this size)
QUICK = dict(
    train_slice=600,
    n_train_saved=200,
    n_test=300,
    n_test_other=100,
    n_val=300,
    n_val_other=100,
    vision_hidden=64,
    vision_layers=2,
    pretrain_steps=300,
    pretrain_lr=2e-3,
    finetune_steps=60,
    finetune_lr=3e-4,
)


def _log(msg: str):
    print(f"[minibench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _fashion_start(slice_index: int, n: int, pool_size: int) -> int:
    """Where a Fashion-based model's train slice starts in ``sources.fashion_pool``."""
    return (slice_index * n) % (pool_size - n)


def check_fashion_val(params: BuildParams, pool_size: int) -> None:
    """Refuse parameters under which a Fashion-based model's train slice (of the full build, any
    scope) would reach the validation images, the pool's last :data:`FASHION_VAL`."""
    n, limit = params.train_slice, pool_size - FASHION_VAL
    ends = [
        _fashion_start(s.slice_index, n, pool_size) + n
        for s in model_specs(params.n_noisy)
        if s.task.source == "fashion"
    ]
    if max(ends) > limit:
        raise ValueError(
            f"the Fashion-MNIST train slices ({len(ends)} of {n} images) reach into the validation images "
            f"(the last {FASHION_VAL} of the pool of {pool_size}); lower --train-slice or --n-noisy"
        )
    if max(params.n_val, params.n_val_other) > FASHION_VAL:
        raise ValueError(f"n_val and n_val_other must be at most {FASHION_VAL} (the Fashion-MNIST validation images)")


def _slice(sources: Sources, spec: ModelSpec, params: BuildParams) -> tuple[np.ndarray, np.ndarray]:
    src = spec.task.source
    if src == "fashion":
        x, y = sources.fashion_pool
        n = params.train_slice
        start = _fashion_start(spec.slice_index, n, len(x))
        return x[start : start + n], y[start : start + n]
    x, y = sources.mnist_train if src == "mnist" else sources.digits_train
    if src == "digits":
        return x, y
    n = len(x) // 3  # three disjoint MNIST slices, reused round-robin by later models
    start = (spec.slice_index % 3) * n
    return x[start : start + n], y[start : start + n]


def _window(x: np.ndarray, y: np.ndarray, n: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``index``-th task's ``n`` images of a Fashion-MNIST split: tasks on one source see other
    windows of it (in their own styles)."""
    start = (index * n) % (len(x) - n + 1)
    return x[start : start + n], y[start : start + n]


def _test_set(sources: Sources, spec: ModelSpec, n: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    src = spec.task.source
    if src == "fashion":
        return _window(*sources.fashion_test, n, index)
    x, y = sources.mnist_test if src == "mnist" else sources.digits_test
    return x[:n], y[:n]


def _val_set(sources: Sources, spec: ModelSpec, n: int, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The task's validation images and source labels, derived as :func:`_test_set` derives its
    test set."""
    src = spec.task.source
    if src == "fashion":
        return _window(*sources.fashion_val, n, index)
    x, y = sources.mnist_val if src == "mnist" else sources.digits_val
    return x[:n], y[:n]


def source_data(
    sources: Sources, spec: ModelSpec, params: BuildParams, position: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A model's source images and labels (before its task's style and labels): ``train`` (its
    whole fine-tuning slice; the saved train split is its first ``n_train_saved``), ``val`` and
    ``test``. ``position``: the model's place in the build's model list
    (the irrelevant and noisy models' windows follow it; a task's follow its place in ALL_TASKS)."""
    index = ALL_TASKS.index(spec.base_task) if spec.base_task in ALL_TASKS else position
    task = spec.group == "task"
    return {
        "train": _slice(sources, spec, params),
        "val": _val_set(sources, spec, params.n_val if task else params.n_val_other, index),
        "test": _test_set(sources, spec, params.n_test if task else params.n_test_other, index),
    }


def task_data(
    sources: Sources, spec: ModelSpec, params: BuildParams, position: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`source_data` in the task's style: its images and task labels per split."""
    return {
        split: (task_images(spec.task, xy[0]), task_labels(spec.task, xy[1]))
        for split, xy in source_data(sources, spec, params, position).items()
    }


DATA_KEY = "data_key.txt"  # in each saved data set: a digest of its images, labels and class names


def _save_dataset(path: str, images: np.ndarray, labels: np.ndarray, classnames: Sequence[str]):
    """Write the data set unless ``path`` already holds exactly it (its :data:`DATA_KEY` matches):
    a build with another seed or size into an older root rewrites what changed."""
    import shutil

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    labels = [int(v) for v in labels]
    key = digest([hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(), labels, list(classnames)])
    if _has_key(os.path.join(path, DATA_KEY), key) and os.path.isfile(os.path.join(path, "dataset_info.json")):
        return
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(classnames))})
    ds = Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "label": labels}, features=features)
    tmp = path + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    ds.save_to_disk(tmp)
    with open(os.path.join(tmp, DATA_KEY), "w") as f:
        f.write(key + "\n")
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _has_key(path: str, key: str) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() == key
    except OSError:
        return False


def models_present(root: str, names) -> bool:
    """Whether every named model is saved under ``root`` (a manifest whose key matches is reused then)."""
    return all(os.path.isfile(os.path.join(root, "models", m, "model.safetensors")) for m in names)


def build(
    root: str | None = None, params: BuildParams | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Build (or reuse) the benchmark under ``root``; returns the manifest."""
    root = os.path.abspath(root or default_root())
    params = params or BuildParams()
    key = params.manifest_key()
    old = read_manifest(root)
    covers = old and old.get("scope") in SCOPES and SCOPES.index(old["scope"]) >= SCOPES.index(params.scope)
    if not force and old and old.get("key") == key and covers and models_present(root, old["models"]):
        return old
    t0 = time.perf_counter()
    with torch_threads(params.threads):
        return _build(root, params, force, progress, t0)


def pixels(processor, x: np.ndarray):
    """Images (uint8, N x 28 x 28) as the CLIP processor's pixel values, 1,000 at a time."""
    import torch
    from PIL import Image

    out = []
    for i in range(0, len(x), 1000):
        imgs = [Image.fromarray(a).convert("RGB") for a in x[i : i + 1000]]
        out.append(processor(images=imgs, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


class Kit:
    """The pre-trained CLIP and what fine-tuning and scoring a model need from it (its vision
    tower, the frozen zero-shot heads): one place for the build and the zoo (:mod:`.zoo`)."""

    def __init__(self, clip, processor):
        from transformers import CLIPVisionModel

        self.clip, self.processor = clip.requires_grad_(False), processor
        self.scale = float(clip.logit_scale.exp())
        self.vision = CLIPVisionModel(clip.config.vision_config)
        self.vision.vision_model.load_state_dict(clip.vision_model.state_dict())
        self.vision.eval()
        self._heads: dict = {}

    def pixels(self, x: np.ndarray):
        return pixels(self.processor, x)

    def head(self, classnames: tuple[str, ...]):
        import torch

        if classnames not in self._heads:
            with torch.no_grad():
                self._heads[classnames] = text_head(self.clip, self.processor, classnames)
        return self._heads[classnames]

    def accuracy(self, vm, x, y, classnames) -> float:
        import torch

        with torch.no_grad():
            pred = (image_embeds(vm, self.clip.visual_projection, x) @ self.head(classnames).t()).argmax(-1)
        return round(float((pred == torch.as_tensor(y)).float().mean()), 4)

    def finetune(self, spec: ModelSpec, x, y, seed: int, params: BuildParams, on_step=None):
        """``spec``'s task model fine-tuned from the pre-trained tower on pixels ``x``, labels ``y``."""
        import torch

        head = self.head(spec.task.classnames)
        return finetune(self.vision, self.clip, self.scale, head, x, torch.as_tensor(y), seed, params, on_step)


# where each source's validation images come from (the manifest records it; sources.py says why)
VAL_SOURCE_NOTES = {
    "fashion": f"Fashion-MNIST's last {FASHION_VAL} train images: in no model's train slice, no test set, "
    "not in pre-training",
    "mnist": "the MNIST pre-training slice: in no model's train slice and no test set, but seen by pre-training",
    "digits": f"{DIGITS_VAL} of sklearn's digits in no model's train slice, no test set, not in pre-training",
}


def _build(root: str, params: BuildParams, force: bool, progress: bool, t0: float) -> dict:
    import datasets
    import torch
    from tqdm.auto import tqdm
    from transformers import CLIPModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    os.makedirs(root, exist_ok=True)
    key = params.key()  # the models' (manifest_key() adds what shapes only the validation sets)
    sources = load_sources(params.seed)
    check_fashion_val(params, len(sources.fashion_pool[0]))
    processor = make_processor()
    _log(f"data loaded ({time.perf_counter() - t0:.1f}s); root {root}")

    # ---- pre-training ---------------------------------------------------------------------
    pre_key = digest(
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
    if key_matches(pre_dir, pre_key) and not force:
        clip = CLIPModel.from_pretrained(pre_dir).eval()
    else:
        clip = pretrain(params, sources, processor, functools.partial(pixels, processor), progress)
        clip.save_pretrained(pre_dir)
        processor.save_pretrained(pre_dir)
        write_key(pre_dir, pre_key)
    kit = Kit(clip, processor)
    _log(f"pre-trained model ready ({time.perf_counter() - t0:.1f}s)")

    specs = model_specs(params.n_noisy)
    if params.scope != "all":
        specs = [s for s in specs if s.name in SCOPE_TASKS[params.scope]]

    manifest_models: dict[str, dict] = {}
    task_vectors: dict[str, torch.Tensor] = {}
    theta0 = flat(kit.vision)  # each task vector is a model's weights minus these
    accuracies: dict[str, dict[str, float]] = {PRETRAINED: {}}
    val_accuracies: dict[str, float] = {}
    splits: dict[str, dict[str, int]] = {}
    bar = tqdm(specs, desc="fine-tuning", disable=not progress, unit="model")
    for i, spec in enumerate(bar):
        bar.set_postfix_str(spec.name)
        # data sets: the real tasks get train + val + test; the others small val and test sets
        # (AdaMerging)
        data = task_data(sources, spec, params, i)
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
        if spec.group != "relevant":  # extra checkpoints evaluate on their task's data sets
            data_dir = os.path.join(root, "data", spec.name)
            os.makedirs(data_dir, exist_ok=True)
            if spec.group == "task":
                _save_dataset(
                    os.path.join(data_dir, "train"),
                    x_tr[: params.n_train_saved],
                    y_tr[: params.n_train_saved],
                    spec.task.classnames,
                )
            _save_dataset(os.path.join(data_dir, "val"), x_va, y_va, spec.task.classnames)
            _save_dataset(os.path.join(data_dir, "test"), x_te, y_te, spec.task.classnames)
            splits[spec.name] = {
                "train": min(params.n_train_saved, len(x_tr)) if spec.group == "task" else 0,
                "val": len(x_va),
                "test": len(x_te),
            }

        model_dir = os.path.join(root, "models", spec.name)
        mkey = digest([pre_key, key, asdict(spec)])
        px_te = kit.pixels(x_te)
        if key_matches(model_dir, mkey) and not force:
            vm = CLIPVisionModel.from_pretrained(model_dir).eval()
        else:
            vm = kit.finetune(spec, kit.pixels(x_tr), y_tr, spec.seed, params)
            vm.save_pretrained(model_dir)
            write_key(model_dir, mkey)
        task_vectors[spec.name] = flat(vm) - theta0
        acc = kit.accuracy(vm, px_te, y_te, spec.task.classnames)
        px_va = kit.pixels(x_va)
        if spec.group in ("task", "relevant"):
            accuracies[PRETRAINED].setdefault(
                spec.base_task, kit.accuracy(kit.vision, px_te, y_te, spec.task.classnames)
            )
            if spec.base_task not in val_accuracies:
                val_accuracies[spec.base_task] = kit.accuracy(kit.vision, px_va, y_va, spec.task.classnames)
        manifest_models[spec.name] = {
            "group": spec.group,
            "task": spec.base_task,
            "classnames": list(spec.task.classnames),
            "own_test_accuracy": acc,
            "own_val_accuracy": kit.accuracy(vm, px_va, y_va, spec.task.classnames),
            "train_images": int(len(x_tr)),
        }
        bar.set_postfix_str(f"{spec.name} acc {acc:.3f}")
    bar.close()

    manifest = {
        "key": params.manifest_key(),
        "scope": params.scope,
        "root": root,
        "env_var": ENV_VAR,
        "tasks": list(TASKS),
        "all_tasks": list(ALL_TASKS),
        "targets": list(TARGETS),
        "templates": list(TEMPLATES),
        "models": manifest_models,
        "pretrained_accuracy": accuracies[PRETRAINED],
        "pretrained_val_accuracy": val_accuracies,
        # saved images per data set and split (train: what FW and data-using methods draw from)
        "splits": splits,
        "val_sources": {src: VAL_SOURCE_NOTES[src] for src in ("fashion", "mnist", "digits")},
        "task_vectors": task_vector_diagnostics(task_vectors, theta0),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(root, manifest)
    _log(f"done in {manifest['build_seconds']}s")
    return manifest
