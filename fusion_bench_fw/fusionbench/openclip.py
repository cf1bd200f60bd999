"""FusionBench's OpenCLIP vision pools for FW-Merging: the Task Arithmetic paper's checkpoints.

FusionBench's ``OpenCLIPVisionModelPool`` names, per model, ``zeroshot.pt`` or ``<Task>/finetuned.pt``:
a whole pickled ``ImageEncoder`` (an open_clip ``CLIP`` without its text transformer), as a path, as
``{model_name, pickle_path}`` (the module is rebuilt from open_clip's ``model_name`` and the pickle's
weights loaded into it) or as ``{model_name, state_dict_path}``; and per task a pickled zero-shot
``ClassificationHead`` (``head_<Task>.pt``).

How FW reads them (:func:`read_checkpoint`): each file is unpickled once, after FusionBench's own
redirect of the paper's ``src.modeling`` classes. A pickle runs code when it is read, so only pools
you trust can be read at all; FusionBench 0.2.33 means to read them the same way, but with torch 2.6
or later its loader asks torch for ``weights_only=True`` first and does not catch the refusal
(``UnpicklingError``), so it cannot read them (:class:`OpenCLIPVisionModelPool` is FusionBench's pool
with that fixed). A candidate's state dict is written once to FW's spill cache as safetensors (keyed
on the file's path, size and modification time: with a fixed ``method.cache_dir`` it is converted
once, not once per run); the solver then streams it one tensor at a time, like any other pool.

The objective's heads are the pool's own ``classification_heads``, set up by FusionBench's
``OpenCLIPClassificationMixin`` as its OpenCLIP methods do; its images go through the pretrained
encoder's deterministic ``val_preprocess`` (the train transform augments at random, and FW's
objective is a fixed set of samples).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.objective import Batch, functional_forward
from fusion_bench_fw.core.stores import StoreError

from .modelpool import pool_entry
from .objectives.sampling import Sampling

POOL_CLASS = "OpenCLIPVisionModelPool"


def is_openclip_pool(modelpool) -> bool:
    """Whether ``modelpool`` is FusionBench's OpenCLIP vision pool (or a subclass), without importing
    it (its module needs open_clip)."""
    return any(
        cls.__name__ == POOL_CLASS and cls.__module__.startswith("fusion_bench.modelpool")
        for cls in type(modelpool).__mro__
    )


# ---------------------------------------------------------------------------------- entries and files
def _plain(entry):
    """A pool entry as plain Python (DictConfig -> dict); strings and modules as they are."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(entry, DictConfig):
            return OmegaConf.to_container(entry, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with fusion-bench
        pass
    return entry


def checkpoint_file(entry) -> str | None:
    """The file an OpenCLIP pool entry reads (a path, ``pickle_path`` or ``state_dict_path``), else None."""
    entry = _plain(entry)
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        path = entry.get("pickle_path") or entry.get("state_dict_path")
        return str(path) if path else None
    return None


def model_name_of(entry) -> str | None:
    """The open_clip ``model_name`` an entry declares (dict entries only)."""
    entry = _plain(entry)
    return str(entry["model_name"]) if isinstance(entry, Mapping) and entry.get("model_name") else None


def spill_key(entry) -> str | None:
    """What a spilled candidate is keyed on: its file's path, size and modification time."""
    path = checkpoint_file(entry)
    if path is None or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return f"openclip:{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def _fix_hint(name: str) -> str:
    if name == PRETRAINED:
        return (
            f"fix modelpool.models.{PRETRAINED} (FusionBench's OpenCLIP configs look under "
            "modelpool.model_dir, ./.cache/task_vectors_checkpoints/ by default: set model_dir to the folder "
            "that holds <model name>/zeroshot.pt)"
        )
    return f"fix modelpool.models.{name} (or modelpool.model_dir), or remove {name} from the pool"


def redirect_paper_modules() -> None:
    """FusionBench's redirect of the paper's ``src.modeling`` (and old open_clip class names) to
    its own classes, which its loaders run before they unpickle."""
    from fusion_bench_fw.compat import typing_override

    typing_override()  # that module needs typing.override (Python 3.12+)
    from fusion_bench.modelpool.openclip_vision.modelpool import _check_and_redirect_open_clip_modeling

    _check_and_redirect_open_clip_modeling()


def read_checkpoint(name: str, path: str):
    """The object pickled in ``path`` (an ``ImageEncoder``, a head or a state dict), read on the CPU;
    one clear error when the file is missing or does not unpickle."""
    if not os.path.isfile(path):
        what = "zeroshot.pt (the pretrained encoder)" if name == PRETRAINED else "its checkpoint"
        raise StoreError(f"checkpoint {name!r}: {what} {os.path.abspath(path)} does not exist: {_fix_hint(name)}")
    redirect_paper_modules()
    try:
        if zipfile.is_zipfile(path):  # torch.save's format; mmap: tensors are paged in as read
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        with open(path, "rb") as f:  # a plain pickle (the paper's older files)
            return pickle.load(f)
    except Exception as exc:
        raise StoreError(
            f"checkpoint {name!r}: {os.path.abspath(path)} does not unpickle ({type(exc).__name__}: "
            f"{_first_line(exc)}); it must be a torch.save'd or pickled ImageEncoder (the Task Arithmetic "
            "paper's zeroshot.pt / finetuned.pt) or its state dict: re-download or re-save it"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def state_of(name: str, path: str, obj) -> dict[str, Tensor]:
    """The state dict of what :func:`read_checkpoint` returned."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    raise StoreError(
        f"checkpoint {name!r}: {os.path.abspath(path)} holds a {type(obj).__name__}, not an ImageEncoder or a "
        "state dict: point the pool at the encoder's zeroshot.pt / finetuned.pt"
    )


# ---------------------------------------------------------------------------------- architectures
def architecture(state: Mapping[str, Tensor], prefix: str = "model.") -> dict[str, int] | None:
    """An open_clip ViT's vision tower as open_clip's config names it (width, layers, patch_size,
    image_size), read from its state dict; None for anything else."""
    conv = state.get(prefix + "visual.conv1.weight")
    pos = state.get(prefix + "visual.positional_embedding")
    if conv is None or pos is None:
        return None
    blocks = {
        m.group(1) for k in state if (m := re.match(re.escape(prefix) + r"visual\.transformer\.resblocks\.(\d+)\.", k))
    }
    grid = round((pos.shape[0] - 1) ** 0.5)
    patch = int(conv.shape[-1])
    return {"width": int(conv.shape[0]), "layers": len(blocks), "patch_size": patch, "image_size": grid * patch}


def config_architecture(model_name: str) -> dict[str, int] | None:
    """open_clip's own config of ``model_name`` in the form of :func:`architecture`, or None."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    vision = (config or {}).get("vision_cfg")
    if not vision or "patch_size" not in vision:
        return None
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    try:
        return {k: int(vision[k]) for k in ("width", "layers", "patch_size")} | {"image_size": int(size)}
    except (KeyError, TypeError, ValueError):  # not a plain ViT (per-stage layers, a timm tower...)
        return None


def describe(arch: Mapping[str, int] | None) -> str:
    """An architecture in words, with the open_clip model names that have it."""
    if arch is None:
        return "not an open_clip ViT"
    import open_clip

    names = [n for n in open_clip.list_models() if config_architecture(n) == dict(arch)]
    shown = f" ({', '.join(names[:3])})" if names else ""
    return (
        f"a ViT of width {arch['width']}, {arch['layers']} layers, patch {arch['patch_size']}, "
        f"{arch['image_size']}px images{shown}"
    )


def check_model_name(name: str, path: str, model_name: str | None, state: Mapping[str, Tensor]) -> None:
    """A checkpoint must be of the open_clip ``model_name`` its entry declares."""
    expected = config_architecture(model_name) if model_name else None
    found = architecture(state)
    if expected is None or found == expected:
        return
    raise StoreError(
        f"checkpoint {name!r}: {os.path.abspath(path)} is {describe(found)}, but its entry says model_name "
        f"{model_name} ({describe(expected)}): point it at {model_name}'s files or set its model_name"
    )


def mismatch_hint(modelpool, name: str) -> str:
    """For the compatibility check's message: the two files and their architectures, when they are
    open_clip ViTs of different shapes (checkpoints of another open_clip model)."""
    path, reference = (checkpoint_file(pool_entry(modelpool, n)) for n in (name, PRETRAINED))
    if not path or not reference or not (os.path.isfile(path) and os.path.isfile(reference)):
        return ""
    archs = [architecture(state_of(n, p, read_checkpoint(n, p))) for n, p in ((name, path), (PRETRAINED, reference))]
    if archs[0] == archs[1]:
        return ""
    return (
        f" ({os.path.abspath(path)} is {describe(archs[0])}; the pool's {os.path.abspath(reference)} is "
        f"{describe(archs[1])}: checkpoints of another open_clip model; use files fine-tuned from that zeroshot.pt)"
    )


# ---------------------------------------------------------------------------------- loading
def read_entry(name: str, entry) -> tuple[str, object, dict[str, Tensor]]:
    """An entry's file, what it unpickles to and its state dict, checked against the entry's
    ``model_name`` (when it has one)."""
    path = checkpoint_file(entry)
    obj = read_checkpoint(name, path)
    state = state_of(name, path, obj)
    check_model_name(name, path, model_name_of(entry), state)
    return path, obj, state


def read_state(modelpool, name: str) -> dict[str, Tensor] | None:
    """A candidate's state dict, read from its file (None when its entry names none: the pool loads it)."""
    entry = pool_entry(modelpool, name)
    return read_entry(name, entry)[2] if checkpoint_file(entry) is not None else None


def load_encoder(name: str, entry) -> nn.Module:
    """The ``ImageEncoder`` an OpenCLIP pool entry describes, as FusionBench's pool builds it (a path:
    the pickled module; ``model_name`` + ``pickle_path`` / ``state_dict_path``: open_clip's
    ``model_name`` with the file's weights), read with :func:`read_checkpoint`."""
    path, obj, state = read_entry(name, entry)
    model_name = model_name_of(entry)
    if model_name is None:
        if not isinstance(obj, nn.Module):
            raise StoreError(
                f"checkpoint {name!r}: {os.path.abspath(path)} is a state dict; give its entry a model_name "
                "({model_name: ..., state_dict_path: ...}) so that the encoder can be built"
            )
        return obj
    from fusion_bench.models.open_clip import ImageEncoder

    encoder = ImageEncoder(model_name)  # open_clip's pretrained weights (its cache), as FusionBench's pool does
    encoder.load_state_dict(state)
    return encoder


def load_pool_encoder(modelpool, name: str) -> nn.Module | None:
    """``name``'s encoder read by :func:`load_encoder`, with the pool's processors set from it the
    way its own ``load_model`` sets them; None when its entry names no file (the pool loads it)."""
    entry = pool_entry(modelpool, name)
    if checkpoint_file(entry) is None:
        return None
    encoder = load_encoder(name, entry)
    if getattr(modelpool, "_train_processor", None) is None and hasattr(encoder, "train_preprocess"):
        modelpool._train_processor = encoder.train_preprocess
    if getattr(modelpool, "_test_processor", None) is None and hasattr(encoder, "val_preprocess"):
        modelpool._test_processor = encoder.val_preprocess
    return encoder


# ---------------------------------------------------------------------------------- the objective
def _heads_mixin():
    redirect_paper_modules()  # (and typing.override, which the mixin's imports need)
    from fusion_bench.mixins.openclip_classification import OpenCLIPClassificationMixin

    return OpenCLIPClassificationMixin


def pool_heads(modelpool, fabric, tasks) -> dict[str, nn.Module]:
    """The pool's zero-shot heads of ``tasks``, frozen on Fabric's device, set up by FusionBench's
    ``OpenCLIPClassificationMixin`` (``modelpool.load_classification_head``)."""

    class Heads(_heads_mixin()):
        def __init__(self):
            self.modelpool = modelpool
            self._fabric_instance = fabric
            self.zero_shot_heads = {}  # the mixin's class-level dict would be shared by every instance

    heads = Heads()
    try:
        heads.setup_zero_shot_classification_head(task_names=list(tasks))
    except Exception as exc:
        raise ValueError(
            f"the OpenCLIP pool's classification heads of {list(tasks)} cannot be loaded ({type(exc).__name__}: "
            f"{_first_line(exc)}); fix modelpool.classification_heads (one head_<Task>.pt per target task)"
        ) from exc
    return heads.zero_shot_heads


class OpenCLIPHeadLoss:
    """Cross-entropy of the merged encoder's features under the task's frozen zero-shot head."""

    def __init__(self, heads: Mapping[str, nn.Module]):
        self.heads = dict(heads)

    def __call__(self, module, params, inputs, task):
        images, labels = inputs
        return F.cross_entropy(self.heads[task](functional_forward(module, params, images)).float(), labels)


def openclip_batches_and_loss(
    modelpool, fabric, train_sets: Mapping[str, object], sampling: Sampling
) -> tuple[dict[str, list[Batch]], OpenCLIPHeadLoss]:
    """The batches and the loss of the objective on ``train_sets``' tasks of an OpenCLIP pool."""
    from .objectives.clip import labelled_batches

    heads = pool_heads(modelpool, fabric, list(train_sets))
    processor = modelpool.test_processor  # the encoder's val_preprocess: deterministic
    batches = {task: labelled_batches(data, processor, sampling, task) for task, data in train_sets.items()}
    return batches, OpenCLIPHeadLoss(heads)
