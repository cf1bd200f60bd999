"""A tiny, offline OpenCLIP model pool in the Task Arithmetic paper's format, built with open_clip itself.

FusionBench's ``OpenCLIPVisionModelPool`` / ``OpenCLIPVisionModelTaskPool`` read the paper's checkpoints:
a pickled ``ImageEncoder`` per model and a pickled zero-shot ``ClassificationHead`` per task. This
builds the same files, small enough for CPU tests, in about 10 s (one thread):

* ``ROOT/open_clip/<MODEL>.json``: the architecture, an open_clip model config (``MODEL`` is
  ``fw-tiny-vit``: a ViT of width 32, 2 layers, 8x8 patches, 32x32 images; a 2-layer text tower of
  width 32 with open_clip's own tokenizer), registered with ``open_clip.add_model_config``;
* ``ROOT/<MODEL>/zeroshot.pt``: the pre-trained ``ImageEncoder`` (``open_clip.create_model_and_transforms``
  of that config, pre-trained contrastively on the tiny tasks' captions, its text transformer
  removed as the paper's encoders are), saved with ``torch.save`` and pickled under the paper's class
  path ``src.modeling.ImageEncoder`` (FusionBench redirects it to its own class when it reads one);
* ``ROOT/<MODEL>/<Task>/finetuned.pt``: the encoder fine-tuned on each task against its frozen head;
* ``ROOT/<MODEL>/head_<Task>.pt``: the task's zero-shot head (``src.modeling.ClassificationHead``:
  normalised inputs, class-name text embeddings times the logit scale);
* ``ROOT/data/<task>/{train,val,test}``: the data sets, the same synthetic tasks and images as
  :mod:`.tiny_clip` (its generator; the mini benchmark's real data would make the build minutes long);
* ``ROOT/manifest.json``: parameters, file hashes and every model's accuracy on every task's test set
  (computed here with the encoder and the head, the classifier FusionBench's task pool evaluates).

Use::

    python -m fusion_bench_fw.offline.tiny_openclip /abs/path/ROOT
    export FUSION_BENCH_FW_TINY_OPENCLIP_ROOT=/abs/path/ROOT
    fusion_bench method=fw_soft modelpool=fw_tiny_openclip taskpool=fw_tiny_openclip

Needs open_clip (``scripts/install.sh --openclip``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from . import tiny_clip
from .builds import read_manifest, write_manifest

ENV_VAR = "FUSION_BENCH_FW_TINY_OPENCLIP_ROOT"
MODEL = "fw-tiny-vit"
BUILDER_VERSION = 1
# the paper's task folders: CamelCase names (``Cars``, ``SVHN``...), here the tiny tasks'
TASK_FOLDERS = {name: "".join(part.capitalize() for part in name.split("_")) for name in tiny_clip.TASKS}


def model_config(width: int = 32) -> dict:
    """The open_clip config of the tiny model (``width``: the vision tower's)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": tiny_clip.IMAGE_SIZE,
            "layers": 2,
            "width": width,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


@dataclass(frozen=True)
class BuildParams(tiny_clip.BuildParams):
    """Everything that determines a build: :mod:`.tiny_clip`'s fields (same meanings; no irrelevant
    models here), and ``model``/``width``: the open_clip config's name and vision width (another
    width is another open_clip model, for the tests of a pool that mixes them)."""

    irrelevant: int = 0
    pretrain_steps: int = 300
    model: str = MODEL
    width: int = 32

    def to_json(self) -> dict:
        import open_clip
        import torch

        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d.update(builder_version=BUILDER_VERSION, torch=torch.__version__, open_clip=open_clip.__version__)
        return d


def pool_paths(root: str, model: str = MODEL, task: str | None = None) -> dict[str, str]:
    """Where a build keeps ``zeroshot.pt``, and a task's ``finetuned.pt`` and head (absolute)."""
    base = os.path.join(os.path.abspath(root), model)
    paths = {
        "zeroshot": os.path.join(base, "zeroshot.pt"),
        "config": os.path.join(os.path.abspath(root), "open_clip", f"{model}.json"),
    }
    if task is not None:
        folder = TASK_FOLDERS[task]
        paths["finetuned"] = os.path.join(base, folder, "finetuned.pt")
        paths["head"] = os.path.join(base, f"head_{folder}.pt")
    return paths


def build_tiny_openclip_pool(root: str, *, force: bool = False, verbose: bool = False, **params) -> dict:
    """Build the pool under ``root`` (``params``: :class:`BuildParams` fields); skipped when
    ``root/manifest.json`` already matches. Returns the manifest."""
    root = os.path.abspath(os.fspath(root))
    build = BuildParams(**params)
    old = read_manifest(root)
    if not force and old is not None and old.get("params") == build.to_json():
        if all(os.path.isfile(os.path.join(root, rel)) for rel in old.get("files", {})):
            return old
    with tiny_clip._torch_threads(build.threads), tiny_clip._quiet():
        return _build(root, build, verbose)


@contextlib.contextmanager
def paper_class_paths():
    """Pickle FusionBench's ``ImageEncoder`` / ``ClassificationHead`` under the paper's class path,
    ``src.modeling``, as the Task Arithmetic checkpoints name them (FusionBench's loaders map that
    module back to its own)."""
    from fusion_bench.models.open_clip import modeling

    from fusion_bench_fw.fusionbench.openclip import redirect_paper_modules

    redirect_paper_modules()  # sys.modules["src.modeling"] is FusionBench's modeling module
    classes = (modeling.ImageEncoder, modeling.ClassificationHead)
    old = [cls.__module__ for cls in classes]
    for cls in classes:
        cls.__module__ = "src.modeling"
    try:
        yield
    finally:
        for cls, module in zip(classes, old):
            cls.__module__ = module


def make_encoder(model_name: str, seed: int):
    """open_clip's model of ``model_name`` (random init from ``seed``) in FusionBench's ``ImageEncoder``
    (built around it: its constructor only takes the three pretrained names), with its transforms."""
    import open_clip
    import torch
    from fusion_bench.models.open_clip import ImageEncoder

    torch.manual_seed(seed)
    clip, train_preprocess, val_preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    encoder = ImageEncoder.__new__(ImageEncoder)
    torch.nn.Module.__init__(encoder)
    encoder.model, encoder.train_preprocess, encoder.val_preprocess = clip, train_preprocess, val_preprocess
    encoder.cache_dir = None
    return encoder


def zero_shot_head(clip, tokenizer, classnames: Sequence[str], templates: Sequence[str] = tiny_clip.TEMPLATES):
    """A task's zero-shot ``ClassificationHead``: per class the mean of its normalised template
    embeddings, normalised, times the logit scale; the head normalises the image features."""
    import torch
    import torch.nn.functional as F
    from fusion_bench.models.open_clip import ClassificationHead

    with torch.no_grad():
        rows = [
            F.normalize(
                F.normalize(clip.encode_text(tokenizer([t.format(c) for t in templates])), dim=-1).mean(0), dim=0
            )
            for c in classnames
        ]
        weights = clip.logit_scale.exp() * torch.stack(rows)
    return ClassificationHead(normalize=True, weights=weights).requires_grad_(False)


def _build(root: str, build: BuildParams, verbose: bool) -> dict:
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    t_start = time.perf_counter()
    for sub in ("manifest.json", build.model, "data", "open_clip"):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    config_path = pool_paths(root, build.model)["config"]
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    with open(config_path, "w") as f:
        json.dump(model_config(build.width), f, indent=1)
    open_clip.add_model_config(config_path)

    _, arrays, labels, files, sizes = tiny_clip.write_task_data(root, build)
    encoder = make_encoder(build.model, build.seed)
    clip, preprocess = encoder.model, encoder.val_preprocess
    tokenizer = open_clip.get_tokenizer(build.model)

    def to_pixels(images):
        return torch.stack([preprocess(Image.fromarray(a)) for a in images])

    pixels = {t: {s: to_pixels(arrays[t][s]) for s in sizes} for t in build.tasks}
    targets = {t: {s: torch.tensor(ys) for s, ys in labels[t].items()} for t in build.tasks}
    tiny_clip._log(verbose, f"data written ({time.perf_counter() - t_start:.1f}s)")

    captions, corpus = tiny_clip.pretraining_corpus(build, to_pixels)
    tokens = tokenizer(captions)
    tiny_clip.contrastive_pretrain(
        clip,
        lambda images: F.normalize(clip.encode_image(images), dim=-1),
        lambda: F.normalize(clip.encode_text(tokens), dim=-1),
        lambda: clip.logit_scale,
        corpus,
        build,
    )
    heads = {t: zero_shot_head(clip, tokenizer, tiny_clip.TASKS[t].classnames) for t in build.tasks}
    del clip.transformer  # the paper's encoders keep no text transformer (FusionBench's keep_lang=False)
    tiny_clip._log(verbose, f"pre-trained ({time.perf_counter() - t_start:.1f}s)")

    encoders = {"_pretrained_": encoder}
    for task in build.tasks:
        tuned = copy.deepcopy(encoder)
        tiny_clip.finetune(
            tuned, lambda x, m=tuned, h=heads[task]: h(m(x)), pixels[task]["train"], targets[task]["train"], task, build
        )
        encoders[task] = tuned
    tiny_clip._log(verbose, f"fine-tuned {len(build.tasks)} models ({time.perf_counter() - t_start:.1f}s)")

    accuracy: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, enc in encoders.items():
            accuracy[name] = {
                t: (heads[t](enc(pixels[t]["test"])).argmax(-1) == targets[t]["test"]).float().mean().item()
                for t in build.tasks
            }

    written = {pool_paths(root, build.model)["zeroshot"]: encoder}
    for task in build.tasks:
        paths = pool_paths(root, build.model, task)
        written[paths["finetuned"]], written[paths["head"]] = encoders[task], heads[task]
    with paper_class_paths():
        for path, module in written.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.save(module, path)
    for path in [*written, config_path]:
        files[os.path.relpath(path, root)] = tiny_clip._sha256(path)

    manifest = {
        "params": build.to_json(),
        "root": root,
        "env_var": ENV_VAR,
        "model": build.model,
        "tasks": {
            t: {
                "classnames": list(tiny_clip.TASKS[t].classnames),
                "folder": TASK_FOLDERS[t],
                "data": os.path.join("data", t),
            }
            for t in build.tasks
        },
        "accuracy": accuracy,
        "splits": {t: dict(sizes) for t in build.tasks},
        "files": dict(sorted(files.items())),
        "build_seconds": round(time.perf_counter() - t_start, 2),
    }
    write_manifest(root, manifest)  # last: marks the build complete
    return manifest


def main(argv: Iterable[str] | None = None) -> int:
    prog = "python -m fusion_bench_fw.offline.tiny_openclip"
    parser = tiny_clip.build_arg_parser(prog, "tiny offline OpenCLIP pool", ENV_VAR, BuildParams)
    args = vars(parser.parse_args(None if argv is None else list(argv)))
    root, force = args.pop("root"), args.pop("force")
    manifest = build_tiny_openclip_pool(root, force=force, verbose=True, **args)
    tiny_clip.print_accuracy(manifest["accuracy"], list(manifest["tasks"]))
    print(f"root: {manifest['root']} (build {manifest['build_seconds']}s)")
    print(f"export {ENV_VAR}={manifest['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
