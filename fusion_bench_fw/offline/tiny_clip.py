"""A tiny, fully offline CLIP model pool for tests and smoke runs on CPU.

Builds, deterministically and in seconds, everything FusionBench's CLIP model pool and CLIP task
pool need, with no hub access:

* ``ROOT/models/_pretrained_``: a tiny ``transformers.CLIPModel`` (text tower included; hidden
  size 32, 2 layers, 32x32 images, 8x8 patches) with a character-level ``CLIPTokenizer`` built
  in code and a ``CLIPProcessor``. It is pre-trained contrastively (negatives: the other
  captions and images of the same task) on the captions ``"a photo of a {classname}."`` of a
  generated corpus of all tasks in their plain style, so its zero-shot heads work.
* ``ROOT/models/<task>``: one ``CLIPVisionModel`` per task, the pre-trained vision tower
  fine-tuned with cross-entropy against the frozen zero-shot head of that task (as in Task
  Arithmetic); saved with ``save_pretrained`` (safetensors).
* ``ROOT/models/<task>_permuted`` ("irrelevant" models, ``irrelevant=`` of them): fine-tuned the
  same way on a task whose labels are cyclically shifted, so they conflict with that task.
* ``ROOT/data/<name>/{train,val,test}``: ``datasets.Dataset`` with ``image`` (PIL) and ``label``
  (``ClassLabel`` with the class names) features, saved with ``save_to_disk``: ``train`` is the
  fine-tuning data and what FW draws from, ``val`` is for choosing hyperparameters
  (``taskpool=fw_tiny_clip_val``), ``test`` gives the reported numbers. Each split is drawn from
  its own seeded generator, so adding ``val`` left the models, ``train`` and ``test`` as they were.
* ``ROOT/manifest.json``: the build parameters, tasks, class names, templates, file hashes and
  the in-process accuracies of every model on every task's test set (``accuracy``) and
  validation set (``val_accuracy``), each data set's split sizes. A build whose manifest
  matches the requested parameters is skipped.

Default tasks (all learnable from one simple visual cue): ``tiny_colors`` (colour of a
rectangle), ``tiny_stripes`` (stripe orientation), ``tiny_quadrants`` (where a square is) and
``tiny_sizes`` (how large a square is). 64 train, 32 validation and 32 test images each; 75% of them are drawn
in a "shifted" style pre-training never saw (bright ground, inverted contrast, wide stripes), so
on the default build the pre-trained model scores 0.25-0.72 and each fine-tuned model 0.84-1.0
on its own task (``manifest["accuracy"]``). About 7 s, 2.2 MB on disk.

Use::

    python -m fusion_bench_fw.offline.tiny_clip /abs/path/ROOT      # prints the manifest summary
    export FUSION_BENCH_FW_TINY_ROOT=/abs/path/ROOT
    fusion_bench method=task_arithmetic modelpool=fw_tiny_clip taskpool=fw_tiny_clip

or from Python: ``build_tiny_clip_pool(root, tasks=DEFAULT_TASKS, seed=0, irrelevant=1)``.
The configs ``modelpool=fw_tiny_clip`` / ``taskpool=fw_tiny_clip`` (and
``modelpool=fw_tiny_clip_irrelevant``, which adds the irrelevant models) read the root from
the environment variable ``FUSION_BENCH_FW_TINY_ROOT`` (:data:`ENV_VAR`) and describe the default
build. Methods that cache zero-shot heads (FusionBench's ``cache_with_joblib``) key them on the
model path, so do not rebuild with other parameters into a root that such a cache has seen.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from fusion_bench_fw import PRETRAINED

from .builds import read_manifest, write_manifest

ENV_VAR = "FUSION_BENCH_FW_TINY_ROOT"
TEMPLATES = ("a photo of a {}.",)
IMAGE_SIZE = 32
# Bump when the output of the builder changes for the same parameters.
BUILDER_VERSION = 1


# --------------------------------------------------------------------------------------------
# Synthetic tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyTask:
    """A synthetic image-classification task: ``draw(label, rng, shifted) -> HxWx3 uint8``.

    ``shifted=False`` draws from the "web" distribution of the pre-training corpus;
    ``shifted=True`` draws the same cue in a style pre-training never saw (inverted contrast,
    other scale...). A task's saved train/test images mix both (``shift_fraction`` of them are
    shifted), so the pre-trained model's zero-shot accuracy sits well below what fine-tuning on
    the task reaches.
    """

    name: str
    classnames: Sequence[str]
    draw: Callable[[int, np.random.Generator, bool], np.ndarray]


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def _ground(rng: np.random.Generator, bright: bool) -> np.ndarray:
    low, high = (170, 250) if bright else (0, 70)
    return rng.integers(low, high, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)


def _place(rng: np.random.Generator, h: int, w: int, region=(0, 0, IMAGE_SIZE, IMAGE_SIZE)):
    y0, x0, y1, x1 = region
    return int(rng.integers(y0, y1 - h + 1)), int(rng.integers(x0, x1 - w + 1))


_COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 210, 40)}


def _draw_colors(label: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    # shifted: a smaller patch of the colour on a bright ground
    img = _ground(rng, bright=shifted)
    h, w = rng.integers(8, 15, size=2) if shifted else rng.integers(12, 25, size=2)
    y, x = _place(rng, h, w)
    color = np.array(list(_COLORS.values())[label]) + rng.integers(-25, 26, size=3)
    img[y : y + h, x : x + w] = color + rng.integers(-15, 16, size=(h, w, 3))
    return _finish(img)


def _draw_stripes(label: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    # shifted: much wider stripes (a patch sees an edge rather than a texture)
    period = int(rng.integers(12, 17) if shifted else rng.integers(4, 9))
    phase = int(rng.integers(0, period))
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    coord = (yy, xx, yy + xx)[label]
    mask = ((coord + phase) % period) < period // 2
    light, dark = rng.integers(160, 256, size=3), rng.integers(0, 80, size=3)
    img = np.where(mask[..., None], light, dark).astype(np.int16)
    return _finish(img + rng.integers(-15, 16, size=img.shape))


def _draw_quadrants(label: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    # shifted: a dark square on a bright ground
    img = _ground(rng, bright=shifted)
    half = IMAGE_SIZE // 2
    qy, qx = divmod(label, 2)  # top left, top right, bottom left, bottom right
    size = int(rng.integers(8, 15))
    y, x = _place(rng, size, size, (qy * half, qx * half, (qy + 1) * half, (qx + 1) * half))
    img[y : y + size, x : x + size] = rng.integers(0, 60, size=3) if shifted else rng.integers(150, 256, size=3)
    return _finish(img)


def _draw_sizes(label: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    # shifted: a dark square on a bright ground
    img = _ground(rng, bright=shifted)
    size = int(rng.integers(4, 9)) if label == 0 else int(rng.integers(17, 26))
    y, x = _place(rng, size, size)
    img[y : y + size, x : x + size] = rng.integers(0, 60, size=3) if shifted else rng.integers(150, 256, size=3)
    return _finish(img)


TASKS: dict[str, TinyTask] = {
    t.name: t
    for t in (
        TinyTask("tiny_colors", tuple(_COLORS), _draw_colors),
        TinyTask("tiny_stripes", ("horizontal stripes", "vertical stripes", "diagonal stripes"), _draw_stripes),
        TinyTask(
            "tiny_quadrants",
            ("top left square", "top right square", "bottom left square", "bottom right square"),
            _draw_quadrants,
        ),
        TinyTask("tiny_sizes", ("small square", "large square"), _draw_sizes),
    )
}
DEFAULT_TASKS = tuple(TASKS)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends on the seed and the keys only (not on what else is built)."""
    return np.random.default_rng([seed] + [zlib.crc32(k.encode()) for k in keys])


def irrelevant_names(tasks: Sequence[str], count: int) -> list[tuple]:
    """``[(name, base_task, shift), ...]`` for ``count`` label-permuted models."""
    out = []
    for i in range(count):
        base = tasks[i % len(tasks)]
        rnd = i // len(tasks)
        n_classes = len(TASKS[base].classnames)
        shift = 1 + rnd % (n_classes - 1)
        out.append((f"{base}_permuted" + (str(rnd + 1) if rnd else ""), base, shift))
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer / processor / model built in code
# --------------------------------------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2/CLIP) uses for the bytes 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def make_processor():
    """A character-level CLIP tokenizer (no merges) and a 32x32 image processor, in code."""
    from transformers import CLIPProcessor, CLIPTokenizer

    try:  # the PIL backend, named explicitly: the default one needs torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:  # a word's last character carries the end-of-word marker
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)
    image_processor = ImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_clip_model(processor, seed: int):
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


# --------------------------------------------------------------------------------------------
# Training helpers
# --------------------------------------------------------------------------------------------


def text_head(clip_model, processor, classnames: Sequence[str], templates: Sequence[str] = TEMPLATES):
    """Zero-shot head, computed as FusionBench's HFCLIPClassifier does (normalised template mean)."""
    import torch
    import torch.nn.functional as F

    rows = []
    for c in classnames:
        inputs = processor(text=[t.format(c) for t in templates], return_tensors="pt", padding=True)
        emb = clip_model.text_projection(clip_model.text_model(**inputs)[1])
        rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def image_embeds(vision_model, visual_projection, pixel_values):
    import torch.nn.functional as F

    return F.normalize(visual_projection(vision_model(pixel_values=pixel_values)[1]), dim=-1)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _quiet():
    """No datasets / transformers progress bars during the build (restored afterwards)."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_bars = datasets.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildParams:
    """Everything that determines a build (a manifest must match all of it to be reused).

    Attributes:
        tasks: names from :data:`TASKS`.
        seed: the one seed everything derives from.
        n_train / n_val / n_test: saved images per task and split (the fine-tuning data is
            ``train``; each split has its own generator, so ``n_val`` changes no other split).
        irrelevant: how many label-permuted "irrelevant" models (and data sets) to add.
        shift_fraction: share of a task's saved images drawn in the shifted style.
        n_pretrain: images per task in the pre-training corpus (generated, never saved).
        pretrain_steps / pretrain_lr: contrastive pre-training of the whole CLIP.
        finetune_steps / finetune_lr: fine-tuning of each vision tower.
        batch_size: images per optimiser step.
        threads: torch threads during the build (restored afterwards). The exact weights depend
            on it; one thread is about as fast for models this small, and far faster when
            other jobs share the cores (two threads then spin-wait on each other).
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    seed: int = 0
    n_train: int = 64
    n_test: int = 32
    n_val: int = 32
    irrelevant: int = 1
    shift_fraction: float = 0.75
    n_pretrain: int = 512
    pretrain_steps: int = 400
    pretrain_lr: float = 2e-3
    finetune_steps: int = 60
    finetune_lr: float = 1e-3
    batch_size: int = 64
    threads: int | None = 1

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown tiny tasks {unknown or '(none given)'}; known: {list(TASKS)}")
        if min(self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError("n_train, n_val and n_test must each be at least 1")

    def to_json(self) -> dict:
        import torch
        import transformers

        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d.update(builder_version=BUILDER_VERSION, torch=torch.__version__, transformers=transformers.__version__)
        return d


def _is_complete(root: str, manifest: dict) -> bool:
    return all(os.path.isfile(os.path.join(root, rel)) for rel in manifest.get("files", {}))


def build_tiny_clip_pool(
    root: str,
    tasks: Sequence[str] = DEFAULT_TASKS,
    seed: int = 0,
    *,
    force: bool = False,
    verbose: bool = False,
    **params,
) -> dict:
    """Build the tiny pool under ``root``; skipped if ``root/manifest.json`` already matches.

    Args:
        root: output folder; ``models/``, ``data/`` and ``manifest.json`` in it are (re)written.
        tasks, seed, **params: the fields of :class:`BuildParams` (``n_train``, ``irrelevant``,
            ``pretrain_steps``, ``threads``, ...).
        force: rebuild even when the manifest matches.
        verbose: print progress to stderr.

    Returns:
        The manifest (a dict; also written to ``root/manifest.json``).
    """
    root = os.path.abspath(os.fspath(root))
    build = BuildParams(tasks=tuple(tasks), seed=seed, **params)
    old = read_manifest(root)
    if not force and old is not None and old.get("params") == build.to_json() and _is_complete(root, old):
        return old
    with _torch_threads(build.threads), _quiet():
        return _build(root, build, verbose)


def _log(verbose: bool, msg: str):
    if verbose:
        print(f"[tiny_clip] {msg}", file=sys.stderr, flush=True)


def _draw_set(task: str, n: int, rng: np.random.Generator, shift_fraction: float):
    """``n`` images of ``task``: balanced shuffled labels, ``shift_fraction`` of them shifted."""
    spec = TASKS[task]
    n_classes = len(spec.classnames)
    ys = np.arange(n) % n_classes
    # the first ones cycle through the classes too, so both parts stay balanced
    shifted = np.arange(n) < int(round(shift_fraction * n))
    order = rng.permutation(n)
    ys, shifted = ys[order], shifted[order]
    return [spec.draw(int(y), rng, bool(s)) for y, s in zip(ys, shifted)], [int(y) for y in ys]


def pretraining_corpus(build, to_pixels) -> tuple[list[str], tuple]:
    """The captions ``"a photo of a {classname}."`` of every task of ``build``, and the generated
    pre-training corpus: ``build.n_pretrain`` plain-style images per task (``to_pixels``: a list of
    arrays to a batch), their caption indices, and each caption's task index."""
    import torch

    captions, offsets, caption_task = [], {}, []
    for i, t in enumerate(build.tasks):
        offsets[t] = len(captions)
        captions += [TEMPLATES[0].format(c) for c in TASKS[t].classnames]
        caption_task += [i] * len(TASKS[t].classnames)
    corpus_x, corpus_y = [], []
    for t in build.tasks:
        xs, ys = _draw_set(t, build.n_pretrain, _rng(build.seed, "pretrain", t), 0.0)
        corpus_x.append(to_pixels(xs))
        corpus_y.append(torch.tensor(ys) + offsets[t])
    return captions, (torch.cat(corpus_x), torch.cat(corpus_y), torch.tensor(caption_task))


def contrastive_pretrain(model, embed_images, embed_texts, logit_scale, corpus, build) -> None:
    """CLIP's symmetric contrastive loss on ``corpus`` (:func:`pretraining_corpus`), ``build.pretrain_steps``
    AdamW steps on every parameter of ``model``; ``embed_images(pixels)`` and ``embed_texts()`` (all
    captions) give normalised embeddings, ``logit_scale()`` the log temperature. Leaves ``model``
    frozen in eval mode.

    The negatives are the other captions / images *of the same task* (tasks overlap visually: a
    quadrant image is also a "small square"): image -> its caption, and each caption in the batch ->
    the images that carry it."""
    import torch
    import torch.nn.functional as F

    corpus_x, corpus_y, caption_task = corpus
    gen = torch.Generator().manual_seed(build.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=build.pretrain_lr, weight_decay=0.0)
    model.train()
    for _ in range(build.pretrain_steps):
        idx = torch.randperm(len(corpus_x), generator=gen)[: build.batch_size]
        y = corpus_y[idx]
        txt = embed_texts()
        logits = logit_scale().exp() * embed_images(corpus_x[idx]) @ txt.t()
        same_task = caption_task[None, :] == caption_task[y][:, None]  # (images, captions)
        loss_img = F.cross_entropy(logits.masked_fill(~same_task, float("-inf")), y)
        present = torch.unique(y)
        match = (y[None, :] == present[:, None]).float()  # (captions present, images)
        per_caption = logits[:, present].t().masked_fill(~same_task[:, present].t(), float("-inf"))
        log_p = torch.log_softmax(per_caption, dim=-1).masked_fill(match == 0, 0.0)
        loss_txt = -(log_p * match / match.sum(1, keepdim=True)).sum(1).mean()
        opt.zero_grad()
        (loss_img + loss_txt).backward()
        opt.step()
    model.eval().requires_grad_(False)


def finetune(model, logits_of, x, y, name: str, build) -> None:
    """Fine-tune ``model`` with cross-entropy of ``logits_of(images)`` (a frozen zero-shot head, as in
    Task Arithmetic) on ``(x, y)``: ``build.finetune_steps`` AdamW steps on shuffled batches drawn
    from a generator of the seed and ``name``. Leaves ``model`` frozen in eval mode."""
    import torch
    import torch.nn.functional as F

    model.train().requires_grad_(True)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{build.seed}/finetune/{name}".encode()))
    opt = torch.optim.AdamW(model.parameters(), lr=build.finetune_lr, weight_decay=0.0)
    for _ in range(build.finetune_steps):
        idx = torch.randperm(len(x), generator=gen)[: build.batch_size]
        loss = F.cross_entropy(logits_of(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)


def write_task_data(root: str, build) -> tuple[dict, dict, dict, dict, dict]:
    """Every data set of a build under ``root/data/<name>/<split>`` (``save_to_disk``): each task of
    ``build.tasks`` and, for ``build.irrelevant``, its label-permuted copies. Returns ``spec`` (name ->
    (base task, label map or None)), the images and labels (name -> split -> list), the files written
    (relative path -> None) and the split sizes. ``build``: :class:`BuildParams`' data fields."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    seed, tasks = build.seed, build.tasks
    irr = irrelevant_names(tasks, build.irrelevant)
    spec: dict[str, tuple] = {t: (t, None) for t in tasks}
    for name, base, shift in irr:
        n_cls = len(TASKS[base].classnames)
        spec[name] = (base, [(y + shift) % n_cls for y in range(n_cls)])

    arrays: dict[str, dict[str, list[np.ndarray]]] = {}
    labels: dict[str, dict[str, list[int]]] = {}
    sizes = {"train": build.n_train, "val": build.n_val, "test": build.n_test}
    for t in tasks:
        arrays[t], labels[t] = {}, {}
        for split, n in sizes.items():  # each split from its own generator: disjoint draws
            arrays[t][split], labels[t][split] = _draw_set(t, n, _rng(seed, "data", t, split), build.shift_fraction)
    for name, (base, label_map) in spec.items():
        if label_map is not None:
            arrays[name] = arrays[base]
            labels[name] = {s: [label_map[y] for y in ys] for s, ys in labels[base].items()}

    files: dict[str, str | None] = {}
    for name, (base, _) in spec.items():
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(TASKS[base].classnames))})
        for split in sizes:
            rel = os.path.join("data", name, split)
            images = [Image.fromarray(a) for a in arrays[name][split]]
            Dataset.from_dict({"image": images, "label": labels[name][split]}, features=features).save_to_disk(
                os.path.join(root, rel)
            )
            files[os.path.join(rel, "dataset_info.json")] = None
    return spec, arrays, labels, files, sizes


def _build(root: str, build: BuildParams, verbose: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from transformers import CLIPVisionModel

    t_start = time.perf_counter()
    seed, tasks = build.seed, build.tasks
    os.makedirs(root, exist_ok=True)
    for sub in ("manifest.json", "models", "data"):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    processor = make_processor()

    def to_pixels(arrays: list[np.ndarray]):
        return processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]

    spec, arrays, labels, files, sizes = write_task_data(root, build)
    pixels = {t: {s: to_pixels(arrays[t][s]) for s in sizes} for t in tasks}
    targets = {name: {s: torch.tensor(ys) for s, ys in labels[name].items()} for name in spec}
    _log(verbose, f"data written ({time.perf_counter() - t_start:.1f}s)")

    # ---- contrastive pre-training of the whole CLIP on a generated corpus ------------------
    clip = make_clip_model(processor, seed)
    captions, corpus = pretraining_corpus(build, to_pixels)
    text_inputs = processor(text=captions, return_tensors="pt", padding=True)
    contrastive_pretrain(
        clip,
        lambda images: image_embeds(clip.vision_model, clip.visual_projection, images),
        lambda: F.normalize(clip.text_projection(clip.text_model(**text_inputs)[1]), dim=-1),
        lambda: clip.logit_scale,
        corpus,
        build,
    )
    pre_dir = os.path.join(root, "models", PRETRAINED)
    clip.save_pretrained(pre_dir)
    processor.save_pretrained(pre_dir)
    _log(verbose, f"pre-trained ({time.perf_counter() - t_start:.1f}s)")

    # ---- fine-tune the vision tower per data set against its frozen zero-shot head ---------
    with torch.no_grad():
        heads = {t: text_head(clip, processor, TASKS[t].classnames) for t in tasks}
    scale = clip.logit_scale.exp().item()
    projection = clip.visual_projection

    def pretrained_vision():
        vm = CLIPVisionModel(clip.config.vision_config)
        vm.vision_model.load_state_dict(clip.vision_model.state_dict())
        return vm

    vision_models = {PRETRAINED: pretrained_vision().eval()}
    for name, (base, _) in spec.items():
        vm = pretrained_vision()
        finetune(
            vm,
            lambda images, vm=vm, base=base: scale * image_embeds(vm, projection, images) @ heads[base].t(),
            pixels[base]["train"],
            targets[name]["train"],
            name,
            build,
        )
        vm.save_pretrained(os.path.join(root, "models", name))
        vision_models[name] = vm
    _log(verbose, f"fine-tuned {len(spec)} models ({time.perf_counter() - t_start:.1f}s)")

    # ---- every model on every test and val set (same head and scale as FusionBench's classifier)
    accuracy: dict[str, dict[str, dict[str, float]]] = {"test": {}, "val": {}}
    with torch.no_grad():
        for split, table in accuracy.items():
            for model_name, vm in vision_models.items():
                table[model_name] = {}
                for name, (base, _) in spec.items():
                    pred = (image_embeds(vm, projection, pixels[base][split]) @ heads[base].t()).argmax(-1)
                    table[model_name][name] = (pred == targets[name][split]).float().mean().item()

    for dirpath, _, filenames in os.walk(os.path.join(root, "models")):
        for fn in filenames:
            files[os.path.relpath(os.path.join(dirpath, fn), root)] = None
    for rel in files:
        if rel.endswith(".safetensors"):
            files[rel] = _sha256(os.path.join(root, rel))

    def task_entry(name, base):
        return {
            "classnames": list(TASKS[base].classnames),
            "templates": list(TEMPLATES),
            "model": os.path.join("models", name),
            "data": os.path.join("data", name),
        }

    manifest = {
        "params": build.to_json(),
        "root": root,
        "env_var": ENV_VAR,
        "pretrained": os.path.join("models", PRETRAINED),
        "tasks": {t: task_entry(t, t) for t in tasks},
        "irrelevant": {
            name: dict(task_entry(name, base), base_task=base, label_shift=shift)
            for name, base, shift in irrelevant_names(tasks, build.irrelevant)
        },
        "accuracy": accuracy["test"],
        "val_accuracy": accuracy["val"],
        "splits": {name: dict(sizes) for name in spec},
        "files": dict(sorted(files.items())),
        "build_seconds": round(time.perf_counter() - t_start, 2),
    }
    write_manifest(root, manifest)  # last: marks the build complete
    return manifest


def build_arg_parser(prog: str, what: str, env_var: str, params_cls) -> argparse.ArgumentParser:
    """The command line of a tiny builder: ROOT, ``--tasks``, one option per field of ``params_cls``
    (a dataclass of defaults), ``--force``."""
    defaults = params_cls()
    parser = argparse.ArgumentParser(prog=prog, description=f"Build the {what} into ROOT; then export {env_var}=ROOT.")
    parser.add_argument("root", help="output folder")
    parser.add_argument("--tasks", nargs="+", default=list(defaults.tasks), choices=list(TASKS))
    for f in fields(params_cls):
        if f.name != "tasks":
            value = getattr(defaults, f.name)
            kind = float if isinstance(value, float) else str if isinstance(value, str) else int
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=value)
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    return parser


def print_accuracy(accuracy: dict[str, dict[str, float]], names: Sequence[str]) -> None:
    """The builder's table: each model (rows) on each test set (columns)."""
    width = max(len(n) for n in [PRETRAINED, *names])
    print("accuracy of each model (rows) on each test set (columns):")
    print(" " * width + "".join(f"  {n[:16]:>16}" for n in names))
    for model_name, row in accuracy.items():
        print(f"{model_name:<{width}}" + "".join(f"  {row[n]:>16.3f}" for n in names))


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_arg_parser(
        "python -m fusion_bench_fw.offline.tiny_clip", "tiny offline CLIP pool", ENV_VAR, BuildParams
    )
    args = vars(parser.parse_args(None if argv is None else list(argv)))
    root, force = args.pop("root"), args.pop("force")
    t0 = time.perf_counter()
    manifest = build_tiny_clip_pool(root, force=force, verbose=True, **args)
    print_accuracy(manifest["accuracy"], list(manifest["tasks"]) + list(manifest["irrelevant"]))
    print(f"root: {manifest['root']} (build {manifest['build_seconds']}s; this call {time.perf_counter() - t0:.1f}s)")
    print(f"export {ENV_VAR}={manifest['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
