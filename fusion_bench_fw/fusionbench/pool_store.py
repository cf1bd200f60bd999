"""Turn a FusionBench model pool into a streaming vertex store.

Checkpoints that already sit on disk as one ``model.safetensors`` whose tensor names and
shapes match the merged module are memory-mapped in place. Anything else (hub names
resolved to sharded files, in-memory modules, other formats) is spilled once to a
safetensors cache, one model in memory at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fusion_bench_fw.core.stores import (
    InMemoryVertexStore,
    SafetensorsVertexStore,
    StoreError,
    VertexStore,
    read_safetensors_header,
    spill_to_safetensors,
)

log = logging.getLogger(__name__)

STORE_MODES = ("auto", "safetensors", "memory")


def local_safetensors_file(modelpool, name: str) -> str | None:
    """The single safetensors file behind a pool entry given as a local path, else None."""
    config = modelpool._models[name] if hasattr(modelpool, "_models") else None
    if not isinstance(config, str):
        return None
    if os.path.isfile(config) and config.endswith(".safetensors"):
        return config
    candidate = os.path.join(config, "model.safetensors")
    return candidate if os.path.isfile(candidate) else None


def spilled_path(modelpool, name: str, cache_dir: str) -> str:
    """Where ``name`` is (or would be) spilled: keyed on its config string when it has one
    (reused across runs), else in a per-run ``session`` folder."""
    config = modelpool._models.get(name) if hasattr(modelpool, "_models") else None
    tag = hashlib.sha1(repr(config).encode()).hexdigest()[:12] if isinstance(config, str) else None
    sub = os.path.join(cache_dir, tag) if tag else os.path.join(cache_dir, "session")
    return os.path.join(sub, f"{name.replace(os.sep, '_')}.safetensors")


def _matches(path: str, shapes: Mapping[str, tuple]) -> bool:
    try:
        _, header = read_safetensors_header(path)
    except Exception:
        return False
    return all(k in header and tuple(header[k]["shape"]) == s for k, s in shapes.items())


def full_weights(model):
    """A LoRA/PEFT model as its full weights W0 + scale * B @ A per adapted module.

    FW merges whole checkpoints: a convex combination of full weights combines the full
    low-rank deltas B @ A (never the factors A and B separately, whose combination is not
    the combination of the deltas). The model is a fresh load, so merging in place is safe.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft comes with fusion-bench
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def _state_dict_of(modelpool, name: str, keys: Sequence[str]) -> dict[str, Tensor]:
    model = full_weights(modelpool.load_model(name))
    state = model.state_dict()
    return {k: state[k] for k in keys if k in state}


def check_finite(
    store: VertexStore, names: Sequence[str], reference: Mapping[str, Tensor] | None = None
) -> dict[str, float]:
    """Reject NaN/Inf weights before any heavy work (one streamed pass); with ``reference``
    (the pretrained tensors) also return each checkpoint's L2 distance to it."""
    distances = {}
    for name in names:
        squared = 0.0
        for key in store.keys:
            t = store.tensor(name, key)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise StoreError(
                    f"checkpoint {name!r}: tensor {key!r} contains NaN or Inf values; "
                    "remove this model from the pool or repair its weights"
                )
            if reference is not None:
                squared += float(torch.sum((t.double() - reference[key].double()) ** 2))
        distances[name] = squared**0.5
    return distances


def build_vertex_store(
    modelpool,
    names: Sequence[str],
    shapes: Mapping[str, tuple],
    mode: str = "auto",
    cache_dir: str | None = None,
) -> VertexStore:
    """A store over ``names`` of ``modelpool`` holding the tensors ``shapes`` describes."""
    if mode not in STORE_MODES:
        raise ValueError(f"unknown store {mode!r}; use one of {STORE_MODES}")
    keys = list(shapes)
    if mode == "memory":
        return InMemoryVertexStore({n: _state_dict_of(modelpool, n, keys) for n in names}, keys)

    direct: dict[str, str] = {}
    to_spill: list[str] = []
    for name in names:
        path = local_safetensors_file(modelpool, name)
        if path is not None and _matches(path, shapes):
            direct[name] = path
        else:
            to_spill.append(name)
    if to_spill:
        if cache_dir is None:
            raise ValueError("a cache_dir is needed to spill non-safetensors checkpoints to disk")
        log.info("spilling %d checkpoint(s) to safetensors under %s: %s", len(to_spill), cache_dir, to_spill)
        for name in to_spill:
            sub = os.path.dirname(spilled_path(modelpool, name, cache_dir))
            spilled = spill_to_safetensors([name], lambda n: _state_dict_of(modelpool, n, keys), keys, sub)
            direct[name] = spilled.paths[name]
    return SafetensorsVertexStore({n: direct[n] for n in names}, keys, shapes=shapes)
