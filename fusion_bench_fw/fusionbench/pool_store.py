"""Turn a FusionBench model pool into the run's vertex store.

Checkpoints that already sit on disk as one ``model.safetensors`` whose tensor names and
shapes match the merged module are memory-mapped in place. LoRA entries (``peft_model_path``
on a ``base_model_path``, as FusionBench's peft loaders take them) stay factors over their base
model's safetensors (:mod:`fusion_bench_fw.core.lora_store`) with ``store=auto``. Anything else
(hub names resolved to sharded files, in-memory modules, other formats, adapters the factored
store cannot represent, every LoRA entry with ``store=safetensors``) is spilled once to a
safetensors cache as full weights, one model in memory at a time. The pretrained model (and
an explicit init file) are held in memory next to them: :func:`build_store`.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.lora_store import (
    LoraFormatError,
    LoraVertexStore,
    open_safetensors_model,
    read_peft_adapter,
    safetensors_model_files,
)
from fusion_bench_fw.core.stores import (
    CompositeVertexStore,
    InMemoryVertexStore,
    SafetensorsVertexStore,
    VertexStore,
    read_safetensors_header,
    spill_to_safetensors,
)

from .options import INIT_FILE

log = logging.getLogger(__name__)


def pool_config(modelpool, name: str):
    """The pool's config for ``name`` (a path or hub name, or a loader's dict), through its public
    API; None for pools holding in-memory modules (they have no files, and get_model_config warns)."""
    if modelpool.has_instance_models:
        return None
    return modelpool.get_model_config(name, return_copy=False)


def pool_entry(modelpool, name: str) -> str | None:
    """The pool's entry for ``name`` when it is a plain string (a local path or a hub name), else None."""
    entry = pool_config(modelpool, name)
    return entry if isinstance(entry, str) else None


def local_safetensors_file(modelpool, name: str) -> str | None:
    """The single safetensors file behind a pool entry given as a local path, else None."""
    config = pool_entry(modelpool, name)
    if config is None:
        return None
    if os.path.isfile(config) and config.endswith(".safetensors"):
        return config
    candidate = os.path.join(config, "model.safetensors")
    return candidate if os.path.isfile(candidate) else None


def spilled_path(modelpool, name: str, cache_dir: str) -> str:
    """Where ``name`` is (or would be) spilled: keyed on its config string when it has one
    (reused across runs), else in a per-run ``session`` folder."""
    config = pool_entry(modelpool, name)
    tag = hashlib.sha1(repr(config).encode()).hexdigest()[:12] if config is not None else None
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
    return {
        name: sum(store.distance_sq(name, key, None if reference is None else reference[key]) for key in store.keys)
        ** 0.5
        for name in names
    }


def lora_entry(modelpool, name: str) -> tuple[str, str] | None:
    """``(base_model_path, peft_model_path)`` of a pool entry that loads a peft adapter, else None."""
    config = pool_config(modelpool, name)
    if config is None or isinstance(config, str) or not hasattr(config, "get"):
        return None
    base, adapter = config.get("base_model_path"), config.get("peft_model_path")
    return (str(base), str(adapter)) if base and adapter else None


def _local_folder(path: str, patterns: Sequence[str]) -> str:
    """A local folder (or file) as is; a hub name through the hub's local cache/download."""
    if os.path.exists(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=list(patterns))
    except Exception as exc:
        raise LoraFormatError(f"cannot resolve {path!r} to local files ({type(exc).__name__}: {exc})") from exc


def _lora_paths(modelpool, name: str) -> tuple[str, str] | None:
    entry = lora_entry(modelpool, name)
    if entry is None:
        return None
    base = _local_folder(entry[0], ["*.safetensors", "*.json"])
    return base, _local_folder(entry[1], ["adapter_config.json", "adapter_model.*"])


def lora_base_header(modelpool, name: str) -> dict[str, dict] | None:
    """The safetensors header (all shards) of a LoRA entry's base model, or None when the entry
    is not a LoRA adapter over local safetensors: its candidate has the base's tensors."""
    try:
        paths = _lora_paths(modelpool, name)
        files = safetensors_model_files(paths[0]) if paths else None
    except LoraFormatError:
        return None
    if not files:
        return None
    header = {}
    for path in files:
        header.update(read_safetensors_header(path)[1])
    return header


def lora_stores(
    modelpool, names: Sequence[str], shapes: Mapping[str, tuple], conv1d_modules=None
) -> tuple[list[LoraVertexStore], list[str]]:
    """The LoRA entries among ``names`` as factored stores (one per base model), and the names
    left for the full-weight path (not LoRA, or an adapter the factored store cannot represent:
    logged with the reason)."""
    by_base: dict[str, dict] = {}
    rest = []
    for name in names:
        try:
            paths = _lora_paths(modelpool, name)
            if paths is not None:
                by_base.setdefault(paths[0], {})[name] = read_peft_adapter(paths[1], shapes, conv1d_modules)
                continue
        except LoraFormatError as exc:
            log.warning("LoRA candidate %s enters as full weights (merged and spilled): %s", name, exc)
        rest.append(name)
    stores = []
    for base_path, adapters in by_base.items():
        try:
            base = open_safetensors_model(f"base:{base_path}", base_path, list(shapes), shapes)
        except LoraFormatError as exc:
            log.warning("LoRA candidates %s enter as full weights (merged and spilled): %s", list(adapters), exc)
            rest.extend(adapters)
            continue
        stores.append(LoraVertexStore(base, base.names[0], adapters))
        log.info("%d LoRA candidate(s) kept as factors over %s: %s", len(adapters), base_path, list(adapters))
    return stores, [n for n in names if n in rest]


def build_vertex_store(
    modelpool,
    names: Sequence[str],
    shapes: Mapping[str, tuple],
    mode: str = "auto",
    cache_dir: str | None = None,
    conv1d_modules=None,
) -> VertexStore:
    """A store over ``names`` of ``modelpool`` holding the tensors ``shapes`` describes
    (``mode``: ``memory``, or ``auto``/``safetensors`` for the safetensors store;
    ``conv1d_modules``: the merged model's modules with (in, out) weights, for LoRA)."""
    keys = list(shapes)
    if mode == "memory":
        return InMemoryVertexStore({n: _state_dict_of(modelpool, n, keys) for n in names}, keys)

    factored, names = lora_stores(modelpool, names, shapes, conv1d_modules) if mode == "auto" else ([], names)
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
    stores = [SafetensorsVertexStore({n: direct[n] for n in names}, keys, shapes=shapes)] if names else []
    stores += factored
    return stores[0] if len(stores) == 1 else CompositeVertexStore(stores)


FAR_FACTOR = 5.0


def find_far_models(distances: Mapping[str, float], pretrained: str = PRETRAINED, exclude: bool = True) -> list[str]:
    """Candidates far farther from the pretrained model than the typical one: most likely
    fine-tuned from another pre-trained model ("noisy" models). They merge without error but
    pull the merge toward them: the cosine LMO of the default FW-soft ranks their unrelated
    weights first, and a task-arithmetic start or layer-wise FW-hard takes them in. Logged;
    ``exclude``: the run leaves them out."""
    if len(distances) < 3:
        return []
    median = sorted(distances.values())[len(distances) // 2]
    far = sorted(n for n, d in distances.items() if d > FAR_FACTOR * median)
    if far:
        log.warning(
            "model(s) %s are more than %gx farther from %s than the median candidate (%s vs %.3g): probably "
            "fine-tuned from another pre-trained model; %s",
            far,
            FAR_FACTOR,
            pretrained,
            ", ".join(f"{distances[n]:.3g}" for n in far),
            median,
            "left out of this run (method.far_models=keep merges them)"
            if exclude
            else "kept (method.far_models=keep): they can pull the start and the merge toward them",
        )
    return far


def load_init_file(path: str, keys: Sequence[str]) -> dict[str, Tensor]:
    """The start point of ``init=file``: a .safetensors file, a torch state dict, or a
    ``save_pretrained`` folder (FusionBench's ``merged_model_save_path`` of a CLIP pool) holding ``keys``."""
    from safetensors.torch import load_file

    if os.path.isdir(path):
        shards = sorted(glob.glob(os.path.join(path, "*.safetensors"))) or sorted(
            glob.glob(os.path.join(path, "pytorch_model*.bin"))
        )
        if not shards:
            raise ValueError(f"init_path {path!r} is a folder without *.safetensors or pytorch_model*.bin weights")
        state = {}
        for shard in shards:
            state.update(load_file(shard) if shard.endswith(".safetensors") else torch.load(shard, map_location="cpu"))
    elif path.endswith(".safetensors"):
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"init_path {path!r} lacks tensor {missing[0]!r} ({len(missing)} missing)")
    return {k: state[k].float() for k in keys}


def merging_weights_start(
    path: str, candidates: Sequence[str], keys: Sequence[str], pretrained: str
) -> dict[str, list[float]]:
    """theta_0 from FusionBench AdaMerging's saved merging weights (``save_merging_weights``):
    pretrained + sum_i w[i, p] * tau_i,p, with one row per pool model (in the pool's order) and
    one column per merged tensor (layer-wise; in parameter order) or none (task-wise)."""
    from fusion_bench.utils import load_tensor_from_file

    if not os.path.exists(path):
        raise ValueError(f"init_path {path!r}: no such merging-weights file (AdaMerging's save_merging_weights)")
    weights = torch.as_tensor(load_tensor_from_file(path), dtype=torch.float64).detach()
    if weights.dim() == 1:
        weights = weights[:, None].expand(-1, len(keys))
    if weights.dim() != 2 or weights.shape != (len(candidates), len(keys)):
        raise ValueError(
            f"init_path {path!r}: merging weights of shape {tuple(weights.shape)}, but this pool has "
            f"{len(candidates)} models and {len(keys)} merged tensors: expected ({len(candidates)}, {len(keys)}) "
            f"or ({len(candidates)},); run AdaMerging on the same pool (same models, same order)"
        )
    if not torch.isfinite(weights).all():
        raise ValueError(f"init_path {path!r}: the merging weights hold NaN or Inf")
    start = {name: weights[i].tolist() for i, name in enumerate(candidates)}
    return {pretrained: (1.0 - weights.sum(dim=0)).tolist(), **start}


def build_store(
    modelpool,
    candidates: Sequence[str],
    template: torch.nn.Module,
    shapes: Mapping[str, tuple],
    mode: str,
    cache_dir: str,
    init_path: str | None = None,
    exclude_far: bool = True,
) -> tuple[VertexStore, list[str]]:
    """Every checkpoint a run reads: the pretrained model (``template``'s parameters) and the
    ``init_path`` start point in memory, the candidates streamed. One pass checks them for
    NaN/Inf and finds candidates far from the pretrained model (:func:`find_far_models`);
    returns the store and those far candidates."""
    conv1d = {n for n, m in template.named_modules() if type(m).__name__ == "Conv1D"}  # (in, out) weights
    candidate_store = build_vertex_store(modelpool, candidates, shapes, mode, cache_dir, conv1d_modules=conv1d)
    params = {n: p.detach() for n, p in template.named_parameters() if n in shapes}
    far = find_far_models(check_finite(candidate_store, candidates, reference=params), exclude=exclude_far)
    resident = {PRETRAINED: {n: p.float() for n, p in params.items()}}
    if init_path:
        resident[INIT_FILE] = load_init_file(init_path, list(shapes))
    store = CompositeVertexStore([InMemoryVertexStore(resident, list(shapes)), candidate_store])
    check_finite(store, list(resident))
    return store, far
