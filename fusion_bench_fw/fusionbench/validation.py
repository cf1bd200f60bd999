"""Check a model pool against a run before any heavy work, without side effects.

Pools are assembled from strangers' checkpoints: other architectures, broken downloads, other
dtypes. Everything here is cheap (safetensors headers, data set lengths) and writes nothing;
it runs before the store, the zero-shot heads, the objective and the Frank-Wolfe loop, so a bad
input costs seconds and gets one error naming the model, the tensor and what to do. (The one
streamed pass for NaN/Inf runs as the store is built: :func:`.pool_store.build_store`.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.stores import StoreError, checkpoint_header
from fusion_bench_fw.load_errors import explain_load_failure, model_source

from .options import RunOptions
from .pool_store import full_weights, local_safetensors_file, lora_base_header, pool_entry, spilled_path

log = logging.getLogger(__name__)

SKIP_HINT = "remove it from the pool, or set method.on_incompatible=skip to drop such models with a warning"

SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
Header = dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, dtype name)


class IncompatibleModelError(StoreError):
    """A candidate whose tensor names or shapes differ from the pretrained model's."""


@dataclass
class CheckedPool:
    candidates: list[str]  # the candidates kept (all of them unless on_incompatible=skip dropped some)
    dropped: dict[str, str] = field(default_factory=dict)  # name -> why it was dropped


def check_targets(modelpool, targets: Sequence[str] | None) -> list[str]:
    """The run's target tasks (``targets``, or every task with a train split), after checking
    that the pool has the pretrained model, candidates, and a train split for each target."""
    if not modelpool.has_pretrained:
        raise ValueError(
            f"the model pool has no `{PRETRAINED}` model; FW-Merging needs the pretrained checkpoint "
            f"(models.{PRETRAINED}) to build the task heads and the merged model"
        )
    if not modelpool.model_names:
        raise ValueError(f"the model pool holds no fine-tuned models to merge (only `{PRETRAINED}`)")
    targets = list(targets) if targets else list(modelpool.train_dataset_names)
    if not targets:
        raise ValueError(
            "no target tasks: set method.targets=[...] or give the model pool train_datasets for its tasks"
        )
    missing = [t for t in targets if t not in modelpool.train_dataset_names]
    if missing:
        raise ValueError(
            f"target task(s) {missing} have no training split in the model pool "
            f"(it has {list(modelpool.train_dataset_names)}); add them to modelpool.train_datasets"
        )
    return targets


def check_sample_count(task: str, n: int, n_per_task: int, allow_fewer: bool) -> None:
    """A target task needs ``n_per_task`` labelled samples, or the user's leave to use fewer."""
    if n == 0:
        raise ValueError(f"target task {task!r}: its training split is empty; FW needs labelled samples")
    if n < n_per_task:
        if not allow_fewer:
            raise ValueError(
                f"target task {task!r} has {n} training samples, fewer than n_per_task={n_per_task}; "
                "lower method.n_per_task or set method.allow_fewer_samples=true to use all of them"
            )
        log.warning("task %s: using all %d samples (fewer than n_per_task=%d)", task, n, n_per_task)


def _as_header(header: dict[str, dict]) -> Header:
    return {k: (tuple(info["shape"]), info["dtype"]) for k, info in header.items()}


def _safetensors_header(name: str, path: str) -> Header:
    return _as_header(checkpoint_header(name, path)[1])


def load_model_checked(modelpool, name: str) -> torch.nn.Module:
    """``modelpool.load_model(name)`` (``load_pretrained_model()`` for the pretrained one), with an
    error naming the model, the cause (hub, missing path, bad file) and its fix."""
    try:
        return modelpool.load_pretrained_model() if name == PRETRAINED else modelpool.load_model(name)
    except Exception as exc:
        raise StoreError(explain_load_failure(name, model_source(modelpool, name), exc)) from exc


def _loaded_header(modelpool, name: str) -> Header:
    state = full_weights(load_model_checked(modelpool, name)).state_dict()  # LoRA: W0 + B@A
    return {k: (tuple(v.shape), SAFETENSORS_DTYPE.get(v.dtype, str(v.dtype))) for k, v in state.items()}


def candidate_header(modelpool, name: str, cache_dir: str | None) -> Header:
    """Tensor names, shapes and dtypes of a candidate: from the safetensors header when the
    pool entry is a local file (or was spilled before), else by loading the model once."""
    lora_header = lora_base_header(modelpool, name)  # W0 + s B A has its base model's tensors
    if lora_header is not None:
        return _as_header(lora_header)
    path = local_safetensors_file(modelpool, name)
    reusable = pool_entry(modelpool, name) is not None  # "session" spills may be stale
    if path is None and cache_dir is not None and reusable:
        spilled = spilled_path(modelpool, name, cache_dir)
        path = spilled if os.path.isfile(spilled) else None
    return _safetensors_header(name, path) if path else _loaded_header(modelpool, name)


def incompatibility(name: str, header: Header, shapes: Mapping[str, tuple], template_keys: Sequence[str]) -> str | None:
    """Why ``name`` cannot be a vertex of the merged module, or None.

    Extra tensors count only inside the merged module's own top-level modules: a full CLIP
    checkpoint (text tower next to ``vision_model``) is fine, an extra encoder layer is not."""
    missing = [k for k in shapes if k not in header]
    if missing:
        return f"model {name!r} lacks tensor {missing[0]!r} ({len(missing)} missing)"
    wrong = [k for k in shapes if tuple(header[k][0]) != tuple(shapes[k])]
    if wrong:
        k = wrong[0]
        return (
            f"model {name!r}: tensor {k!r} has shape {tuple(header[k][0])}, the pretrained model's "
            f"has {tuple(shapes[k])} ({len(wrong)} tensor(s) differ)"
        )
    known = set(template_keys)
    namespaces = {k.split(".", 1)[0] for k in known}
    extra = [k for k in header if k not in known and k.split(".", 1)[0] in namespaces]
    if extra:
        return f"model {name!r} has tensor {extra[0]!r} that the pretrained model lacks ({len(extra)} extra)"
    return None


def warn_on_dtypes(headers: Mapping[str, Header], shapes: Mapping[str, tuple]) -> None:
    """Candidates in several dtypes still merge (the solver casts every tensor it reads to
    float32), but the user should know their pool is mixed."""
    dtypes = {name: sorted({h[k][1] for k in shapes}) for name, h in headers.items()}
    if len({tuple(d) for d in dtypes.values()}) > 1:
        log.warning(
            "the candidates store different dtypes (%s); each tensor is cast to float32 when read, so the "
            "merge runs in one precision (cast the checkpoints yourself to silence this)",
            ", ".join(f"{n}: {'/'.join(d)}" for n, d in dtypes.items()),
        )


def check_pool(
    modelpool,
    template: torch.nn.Module,
    shapes: Mapping[str, tuple],
    train_sets: Mapping,
    options: RunOptions,
    cache_dir,
) -> CheckedPool:
    """The pool's checks, in order of cost: each target's sample count, then each candidate's
    tensor names and shapes against the merged ones (``shapes``: the template's floating-point
    parameters). Reads headers (or loads a model once when it has none) and writes nothing.
    Raises ValueError (StoreError for checkpoints) on the first problem."""
    for task, dataset in train_sets.items():
        if hasattr(dataset, "__len__"):
            check_sample_count(task, len(dataset), options.n_per_task, options.allow_fewer_samples)
    template_keys = list(template.state_dict())
    candidates = list(modelpool.model_names)
    kept, dropped, headers = [], {}, {}
    for name in candidates:
        header = candidate_header(modelpool, name, cache_dir)
        problem = incompatibility(name, header, shapes, template_keys)
        if problem is None:
            kept.append(name)
            headers[name] = header
        elif options.on_incompatible == "skip":
            log.warning("dropping %s (method.on_incompatible=skip)", problem)
            dropped[name] = problem
        else:
            raise IncompatibleModelError(
                f"{problem}; every candidate must share the pretrained model's architecture: {SKIP_HINT}"
            )
    if not kept:
        raise ValueError(
            f"no candidate left to merge: all {len(candidates)} were dropped as incompatible ({dropped}); "
            "fix the pool so that its models share the pretrained model's architecture"
        )
    warn_on_dtypes(headers, shapes)
    return CheckedPool(kept, dropped)
