"""One pass over a FusionBench model pool: everything a run reads from it, checked, in one object.

:func:`read_pool` goes through the pool once, top to bottom, cheapest first, and never back:

1. its kind (which objective it gets), the target tasks, the start's files and names;
2. the pretrained model (the template the merge is written into, and the merged tensors' shapes);
3. each target's train split (loaded once) and its sample count;
4. each candidate: where its weights are and their tensor header, each file read once: a local
   safetensors file (memory-mapped in place), a LoRA adapter over its base model's safetensors
   (kept as factors, ``store=auto``), or anything else (hub names, loader configs, in-memory
   modules, ``store=memory``), loaded once; then whether it fits the pretrained architecture;
5. the writes, after every cheap check: loaded candidates are spilled to a safetensors cache;
6. one streamed pass over the candidates' tensors: NaN/Inf, and each one's distance to the
   pretrained model, which finds the far ones (:func:`find_far_models`).

The result, :class:`PoolContents`, answers every later question without the pool: the members
the run merges, the store of the checkpoints a plan names (:meth:`PoolContents.store_for`).
Problems get one error naming the model, the tensor and the fix (``docs/reliability.md``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.lora_store import (
    LoraFactors,
    LoraFormatError,
    LoraVertexStore,
    open_safetensors_model,
    read_peft_adapter,
    safetensors_model_files,
)
from fusion_bench_fw.core.stores import (
    CompositeVertexStore,
    Header,
    InMemoryVertexStore,
    SafetensorsVertexStore,
    StoreError,
    UnreadableCheckpointError,
    VertexStore,
    check_finite_tensor,
    checkpoint_header,
    save_safetensors_atomic,
)
from fusion_bench_fw.core.vertices import VertexPlan
from fusion_bench_fw.load_errors import explain_load_failure, model_source

from . import openclip
from .modelpool import pool_entry
from .objectives import pool_kind
from .objectives.sampling import load_train_sets
from .options import RunOptions

log = logging.getLogger(__name__)

SKIP_HINT = "remove it from the pool, or set method.on_incompatible=skip to drop such models with a warning"
SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
FAR_FACTOR = 5.0  # a candidate this many times farther from the pretrained model than the median is "far"
TensorInfo = dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, dtype name)


class IncompatibleModelError(StoreError):
    """A candidate whose tensor names or shapes differ from the pretrained model's."""


@dataclass(frozen=True)
class LoraSource:
    """A candidate kept as LoRA factors over a base model's (sharded) safetensors."""

    base: str  # the base model's local folder
    factors: dict[str, LoraFactors]
    base_headers: dict[str, Header]  # shard file -> its header


@dataclass
class Candidate:
    """One model of the pool as the run reads it: ``tensors`` for the checks, then exactly one of
    ``path`` (+ its ``header``), ``lora`` or ``state`` for the store."""

    name: str
    tensors: TensorInfo
    path: str | None = None  # a safetensors file: in place, in the spill cache, or to be spilled to
    header: Header | None = None
    lora: LoraSource | None = None
    state: dict[str, Tensor] | None = None  # loaded weights: kept (store=memory) or written to ``path``


@dataclass
class PoolContents:
    """What :func:`read_pool` found (see the module docstring)."""

    kind: str
    targets: list[str]
    template: nn.Module  # this run's own copy of the pretrained model
    shapes: dict[str, tuple[int, ...]]  # the merged tensors, in parameter order
    train_sets: dict[str, Any]
    models: list[str]  # every model of the pool, in its order (AdaMerging's weights index them)
    candidates: dict[str, Candidate]  # the compatible ones, in pool order
    dropped: dict[str, str] = field(default_factory=dict)  # incompatible, dropped (on_incompatible=skip): why
    distances: dict[str, float] = field(default_factory=dict)  # L2 distance to the pretrained model
    far: list[str] = field(default_factory=list)  # far from the pretrained model
    excluded: list[str] = field(default_factory=list)  # left out: far (far_models=exclude), or screened out
    store: VertexStore | None = None  # every compatible candidate

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    @property
    def members(self) -> list[str]:
        """The candidates this run merges: the compatible ones but the excluded ones."""
        return [n for n in self.candidates if n not in self.excluded]

    def pretrained_tensors(self) -> dict[str, Tensor]:
        """The pretrained model's merged tensors, on the CPU (where the store keeps them)."""
        params = dict(self.template.named_parameters())
        return {k: params[k].detach().float().cpu() for k in self.shapes}

    def screen(self, holdout, device: torch.device, share: float) -> dict:
        """``method.screen``: leave out the members whose own weights lower no target's held-out loss by
        ``share`` of the best member's drop (:func:`fusion_bench_fw.core.guard.screen_candidates`). Returns
        the report the history keeps."""
        from fusion_bench_fw.core.guard import screen_candidates

        def on_device(name: str) -> dict[str, Tensor]:
            read = self.pretrained_tensors() if name == PRETRAINED else None
            return {k: (read[k] if read else self.store.tensor(name, k)).to(device, torch.float32) for k in self.keys}

        report = screen_candidates(holdout, on_device(PRETRAINED), on_device, self.members, share)
        refused = [r["model"] for r in report["refused"]]
        if refused:
            log.warning(
                "screen: %d of %d models lower no target's held-out loss enough, left out: %s",
                len(refused),
                len(self.members),
                refused,
            )
        if not report["kept"]:
            raise ValueError(
                "screen: no model of the pool lowers any target task's held-out loss below the pretrained "
                "model's: nothing to merge (check the targets and the pool, or set method.screen=false)"
            )
        self.excluded += refused
        return report

    def store_for(self, plan: VertexPlan, resident: Mapping[str, Mapping[str, Tensor]] | None = None) -> VertexStore:
        """The checkpoints ``plan`` reads: the pretrained model and ``resident`` (the start's file)
        in memory, the plan's candidates streamed (a candidate the plan leaves out is not in it)."""
        in_memory = {PRETRAINED: self.pretrained_tensors(), **(resident or {})}
        memory = InMemoryVertexStore(in_memory, self.keys)
        for name in resident or {}:
            for key in self.keys:
                memory.distance_sq(name, key)  # NaN/Inf in the start's file
        wanted = [n for n in plan.checkpoints if n in self.candidates]
        if wanted == list(self.candidates):
            return CompositeVertexStore([memory, self.store])
        return CompositeVertexStore([memory, open_candidates({n: self.candidates[n] for n in wanted}, self.shapes)])


# ---------------------------------------------------------------------------------- the pass
def read_pool(modelpool, options: RunOptions, cache_dir: str, clip_only: str | None = None) -> PoolContents:
    """Read and check ``modelpool`` for a run with ``options`` (spills go under ``cache_dir``);
    ``clip_only``: why the run needs a CLIP pool (another kind is refused first)."""
    kind = pool_kind(modelpool)
    if clip_only and kind != "clip":
        raise ValueError(f"{clip_only} needs a CLIP vision pool; this pool is {kind}")
    targets = check_targets(modelpool, options.targets)
    options.start.check(list(modelpool.model_names))
    template = load_template(modelpool)
    shapes = {n: tuple(p.shape) for n, p in template.named_parameters() if p.is_floating_point()}
    train_sets = load_train_sets(modelpool, targets)
    for task, dataset in train_sets.items():
        if hasattr(dataset, "__len__"):
            guard_samples = options.guard_samples if options.guard or options.screen else 0
            check_sample_count(task, len(dataset), options.n_per_task, options.allow_fewer_samples, guard_samples)
    conv1d = {n for n, m in template.named_modules() if type(m).__name__ == "Conv1D"}  # (in, out) weights
    models = list(modelpool.model_names)
    hint = (lambda name: openclip.mismatch_hint(modelpool, name)) if kind == "openclip" else None
    check = CompatibilityCheck(shapes, list(template.state_dict()), options.on_incompatible, hint)
    kept = read_candidates(modelpool, models, shapes, options.store, cache_dir, conv1d, keep=check)
    check.finish(kept, len(models))
    pool = PoolContents(kind, targets, template, shapes, train_sets, models, kept, check.dropped)
    pool.store = open_candidates(kept, shapes)
    reference = pool.pretrained_tensors()
    for key, tensor in reference.items():
        check_finite_tensor(PRETRAINED, key, tensor)
    pool.distances = {  # one streamed pass; distance_sq refuses NaN/Inf
        n: sum(pool.store.distance_sq(n, k, reference[k]) for k in pool.keys) ** 0.5 for n in kept
    }
    exclude = options.far_models == "exclude"
    pool.far = find_far_models(pool.distances, exclude=exclude)
    pool.excluded = list(pool.far) if exclude else []
    return pool


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


def check_sample_count(task: str, n: int, n_per_task: int, allow_fewer: bool, guard_samples: int = 0) -> None:
    """A target task needs ``n_per_task`` labelled samples, or the user's leave to use fewer; with the
    hold-out guard, ``guard_samples`` more (never fewer: the guard's samples must not be the objective's)."""
    if n == 0:
        raise ValueError(f"target task {task!r}: its training split is empty; FW needs labelled samples")
    if guard_samples and n < n_per_task + guard_samples:
        raise ValueError(
            f"target task {task!r} has {n} training samples; the hold-out guard needs n_per_task + guard_samples = "
            f"{n_per_task} + {guard_samples} distinct ones: lower method.n_per_task or method.guard_samples, "
            "or set method.guard=false and method.screen=false"
        )
    if n < n_per_task:
        if not allow_fewer:
            raise ValueError(
                f"target task {task!r} has {n} training samples, fewer than n_per_task={n_per_task}; "
                "lower method.n_per_task or set method.allow_fewer_samples=true to use all of them"
            )
        log.warning("task %s: using all %d samples (fewer than n_per_task=%d)", task, n, n_per_task)


def load_model_checked(modelpool, name: str) -> nn.Module:
    """``modelpool.load_model(name)`` (``load_pretrained_model()`` for the pretrained one), with an
    error naming the model, the cause (hub, missing path, bad file) and its fix."""
    try:
        return modelpool.load_pretrained_model() if name == PRETRAINED else modelpool.load_model(name)
    except Exception as exc:
        raise StoreError(explain_load_failure(name, model_source(modelpool, name), exc)) from exc


def load_template(modelpool) -> nn.Module:
    """The pool's pretrained model, this run's own copy: the merge is written into it. An OpenCLIP
    pool's ``zeroshot.pt`` is read by :func:`.openclip.load_pool_encoder` (FusionBench 0.2.33's own
    loader cannot read it with torch 2.6+)."""
    template = openclip.load_pool_encoder(modelpool, PRETRAINED) if openclip.is_openclip_pool(modelpool) else None
    if template is not None:
        return template
    template = load_model_checked(modelpool, PRETRAINED)
    if modelpool.has_instance_models:  # the pool hands out its own object: never touch it
        template = copy.deepcopy(template)
    return template


# ---------------------------------------------------------------------------------- candidates
def local_safetensors_file(entry) -> str | None:
    """The single safetensors file behind a pool entry given as a local path, else None."""
    if not isinstance(entry, str):
        return None
    if os.path.isfile(entry) and entry.endswith(".safetensors"):
        return entry
    candidate = os.path.join(entry, "model.safetensors")
    return candidate if os.path.isfile(candidate) else None


def spill_entry(modelpool, name: str):
    """What a spilled candidate is keyed on: its pool entry; an OpenCLIP checkpoint's file (path, size,
    modification time), whatever the form of its entry."""
    entry = pool_entry(modelpool, name)
    if openclip.is_openclip_pool(modelpool):
        return openclip.spill_key(entry) or entry
    return entry


def load_state(modelpool, name: str) -> dict[str, Tensor]:
    """A candidate's full weights, loaded once: an OpenCLIP checkpoint's state dict read from its file
    (:func:`.openclip.read_state`), anything else through the pool's loader."""
    state = openclip.read_state(modelpool, name) if openclip.is_openclip_pool(modelpool) else None
    return state if state is not None else full_weights(load_model_checked(modelpool, name)).state_dict()


def spill_path(entry, name: str, cache_dir: str) -> tuple[str, bool]:
    """Where a loaded candidate is spilled, and whether a file there may be reused: keyed on the
    entry's config string when it has one (reused across runs), else a per-run ``session`` folder."""
    reusable = isinstance(entry, str)
    tag = hashlib.sha1(repr(entry).encode()).hexdigest()[:12] if reusable else "session"
    return os.path.join(cache_dir, tag, f"{name.replace(os.sep, '_')}.safetensors"), reusable


def read_header(name: str, path: str) -> Header:
    """A candidate file's header, with an error that says where the file came from and its fix."""
    try:
        return checkpoint_header(name, path)
    except UnreadableCheckpointError as exc:
        raise StoreError(
            explain_load_failure(name, path, exc.cause, what=f"cannot read safetensors file {path!r}")
        ) from exc


def _tensors_of_header(header: Header) -> TensorInfo:
    return {k: (tuple(info["shape"]), info["dtype"]) for k, info in header[1].items()}


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


def lora_entry(entry) -> tuple[str, str] | None:
    """``(base_model_path, peft_model_path)`` of a pool entry that loads a peft adapter, else None."""
    if entry is None or isinstance(entry, str) or not hasattr(entry, "get"):
        return None
    base, adapter = entry.get("base_model_path"), entry.get("peft_model_path")
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


def read_lora(name: str, entry, shapes, conv1d, base_headers: dict) -> LoraSource | None:
    """A LoRA entry as factors over its base model's safetensors, or None (not LoRA, or an adapter
    the factored store cannot represent: logged, it enters as full weights)."""
    paths = lora_entry(entry)
    if paths is None:
        return None
    try:
        base = _local_folder(paths[0], ["*.safetensors", "*.json"])
        adapter = _local_folder(paths[1], ["adapter_config.json", "adapter_model.*"])
        factors = read_peft_adapter(adapter, shapes, conv1d)
        files = safetensors_model_files(base)
    except LoraFormatError as exc:
        log.warning("LoRA candidate %s enters as full weights (merged and spilled): %s", name, exc)
        return None
    for path in files:  # read once per base, whatever the number of adapters on it
        if path not in base_headers:
            base_headers[path] = read_header(f"base:{base}", path)
    return LoraSource(base, factors, {p: base_headers[p] for p in files})


def read_candidates(
    modelpool, names: Sequence[str], shapes, mode: str = "auto", cache_dir: str | None = None, conv1d=(), keep=None
) -> dict[str, Candidate]:
    """Each candidate's source and tensor header, in pool order (``mode``: ``auto``, ``safetensors``
    or ``memory``, see :class:`.options.RunOptions` ``store``). Files are read once; a candidate
    without a usable file is loaded once and spilled at once to a safetensors cache (one model in
    memory at a time), or kept in memory (``memory``). ``keep(candidate)`` decides (or raises)
    whether a candidate is kept, from its tensors: every candidate with a file is checked before
    any model is loaded or written."""
    keep = keep or (lambda candidate: True)
    located: dict[str, Candidate] = {}
    to_load: list[str] = []
    base_headers: dict[str, Header] = {}
    for name in names:
        candidate = (
            None
            if mode == "memory"
            else _with_file(name, spill_entry(modelpool, name), shapes, cache_dir, conv1d, mode, base_headers)
        )
        if candidate is None:
            to_load.append(name)
        else:
            located[name] = candidate
    kept = {n: c for n, c in located.items() if keep(c)}
    for name in to_load:
        state = load_state(modelpool, name)
        tensors = {k: (tuple(v.shape), SAFETENSORS_DTYPE.get(v.dtype, str(v.dtype))) for k, v in state.items()}
        candidate = Candidate(name, tensors, state=state)
        if not keep(candidate):
            continue
        if mode != "memory":
            if cache_dir is None:
                raise ValueError("a cache_dir is needed to spill non-safetensors checkpoints to disk")
            candidate.path = spill_path(spill_entry(modelpool, name), name, cache_dir)[0]
            log.info("spilling %s to %s", name, candidate.path)
            save_safetensors_atomic({k: state[k] for k in shapes}, candidate.path)
            candidate.state, candidate.header = None, read_header(name, candidate.path)
        kept[name] = candidate
    return {n: kept[n] for n in names if n in kept}


def _with_file(name, entry, shapes, cache_dir, conv1d, mode, base_headers) -> Candidate | None:
    """The candidate read from its file(s): LoRA factors (``auto``), a local safetensors file, or a
    spill of an earlier run; None when it has none of them (it must be loaded)."""
    lora = read_lora(name, entry, shapes, conv1d, base_headers) if mode == "auto" else None
    if lora is not None:
        tensors = {k: v for h in lora.base_headers.values() for k, v in _tensors_of_header(h).items()}
        return Candidate(name, tensors, lora=lora)
    path = local_safetensors_file(entry)
    if path is None and cache_dir is not None:
        path, reusable = spill_path(entry, name, cache_dir)
        path = path if reusable and os.path.isfile(path) else None
    if path is None:
        return None
    header = read_header(name, path)
    return Candidate(name, _tensors_of_header(header), path=path, header=header)


def incompatibility(name: str, tensors: TensorInfo, shapes: Mapping[str, tuple], template_keys: Sequence[str]):
    """Why ``name`` cannot be a vertex of the merged module, or None.

    Extra tensors count only inside the merged module's own top-level modules: a full CLIP
    checkpoint (text tower next to ``vision_model``) is fine, an extra encoder layer is not."""
    missing = [k for k in shapes if k not in tensors]
    if missing:
        return f"model {name!r} lacks tensor {missing[0]!r} ({len(missing)} missing)"
    wrong = [k for k in shapes if tuple(tensors[k][0]) != tuple(shapes[k])]
    if wrong:
        k = wrong[0]
        return (
            f"model {name!r}: tensor {k!r} has shape {tuple(tensors[k][0])}, the pretrained model's "
            f"has {tuple(shapes[k])} ({len(wrong)} tensor(s) differ)"
        )
    known = set(template_keys)
    namespaces = {k.split(".", 1)[0] for k in known}
    extra = [k for k in tensors if k not in known and k.split(".", 1)[0] in namespaces]
    if extra:
        return f"model {name!r} has tensor {extra[0]!r} that the pretrained model lacks ({len(extra)} extra)"
    return None


class CompatibilityCheck:
    """``keep`` of :func:`read_candidates`: a candidate that does not fit the merged module is an
    error, or dropped with a warning (``on_incompatible=skip``; :attr:`dropped` says why)."""

    def __init__(self, shapes, template_keys, on_incompatible: str, hint=None):
        self.shapes, self.template_keys, self.on_incompatible = shapes, template_keys, on_incompatible
        self.hint = hint  # hint(name): more about an incompatible candidate (its file, its architecture)
        self.dropped: dict[str, str] = {}

    def __call__(self, candidate: Candidate) -> bool:
        problem = incompatibility(candidate.name, candidate.tensors, self.shapes, self.template_keys)
        if problem is None:
            return True
        if self.hint is not None:
            problem += self.hint(candidate.name)
        if self.on_incompatible != "skip":
            raise IncompatibleModelError(
                f"{problem}; every candidate must share the pretrained model's architecture: {SKIP_HINT}"
            )
        log.warning("dropping %s (method.on_incompatible=skip)", problem)
        self.dropped[candidate.name] = problem
        return False

    def finish(self, kept: Mapping[str, Candidate], n_models: int) -> None:
        """After the pass: at least one candidate is left; a warning when they mix dtypes."""
        if not kept:
            raise ValueError(
                f"no candidate left to merge: all {n_models} were dropped as incompatible ({self.dropped}); "
                "fix the pool so that its models share the pretrained model's architecture"
            )
        dtypes = {name: sorted({c.tensors[k][1] for k in self.shapes}) for name, c in kept.items()}
        if len({tuple(d) for d in dtypes.values()}) > 1:
            log.warning(
                "the candidates store different dtypes (%s); each tensor is cast to float32 when read, so the "
                "merge runs in one precision (cast the checkpoints yourself to silence this)",
                ", ".join(f"{n}: {'/'.join(d)}" for n, d in dtypes.items()),
            )


def open_candidates(candidates: Mapping[str, Candidate], shapes: Mapping[str, tuple]) -> VertexStore:
    """One store over ``candidates``: safetensors files memory-mapped (headers as read), LoRA factors
    over their base models (one per base), loaded weights in memory."""
    keys = list(shapes)
    files = {n: c for n, c in candidates.items() if c.path is not None and c.state is None}
    memory = {n: c for n, c in candidates.items() if c.state is not None}
    by_base: dict[str, dict[str, Candidate]] = {}
    for n, c in candidates.items():
        if c.lora is not None:
            by_base.setdefault(c.lora.base, {})[n] = c
    stores: list[VertexStore] = []
    if files:
        stores.append(
            SafetensorsVertexStore(
                {n: c.path for n, c in files.items()},
                keys,
                shapes=shapes,
                headers={n: c.header for n, c in files.items()},
            )
        )
    if memory:
        stores.append(InMemoryVertexStore({n: {k: c.state[k] for k in keys} for n, c in memory.items()}, keys))
    for base, members in by_base.items():
        headers = next(iter(members.values())).lora.base_headers
        base_store = open_safetensors_model(f"base:{base}", base, keys, shapes, headers)
        stores.append(LoraVertexStore(base_store, base_store.names[0], {n: c.lora.factors for n, c in members.items()}))
        log.info("%d LoRA candidate(s) kept as factors over %s: %s", len(members), base, list(members))
    store = stores[0] if len(stores) == 1 else CompositeVertexStore(stores)
    if list(store.names) != list(candidates):  # pool order, whatever the kinds
        store = _Ordered(store, list(candidates))
    return store


class _Ordered(VertexStore):
    """A store with its checkpoints listed in the given order (the pool's)."""

    def __init__(self, store: VertexStore, names: list[str]):
        self._store, self.names, self.keys = store, names, list(store.keys)

    def tensor(self, name: str, key: str) -> Tensor:
        return self._store.tensor(name, key)

    def parts(self, name: str, key: str):
        return self._store.parts(name, key)

    def source(self, name: str) -> str | None:
        return self._store.source(name)

    def distance_sq(self, name: str, key: str, reference: Tensor | None = None) -> float:
        return self._store.distance_sq(name, key, reference)

    def shape(self, key: str):
        return self._store.shape(key)


def build_vertex_store(modelpool, names, shapes, mode: str = "auto", cache_dir: str | None = None, conv1d=()):
    """A store over ``names`` of ``modelpool`` (no compatibility checks): for tools and tests that
    want a pool's checkpoints as a store without a run."""
    return open_candidates(read_candidates(modelpool, names, shapes, mode, cache_dir, conv1d), shapes)


# ---------------------------------------------------------------------------------- far models
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
