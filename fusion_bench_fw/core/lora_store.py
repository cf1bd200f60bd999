"""LoRA candidates kept as factors: vertex i is W0 + s_i B_i A_i on its adapted tensors, W0 elsewhere.

A pool of LoRA adapters differs from its base model only in a few MB of factors per
candidate, so nothing of the size of W0 is ever formed or written per candidate here:

* the base model is opened once, lazily, tensor by tensor, from its (sharded) safetensors
  (:func:`open_safetensors_model`);
* the LMO reads the factors (:meth:`LoraVertexStore.parts`): <G, W0 + s B A - theta> =
  <G, W0 - theta> + s <B^T G, A>, where the first term is shared by every candidate on that
  tensor and is scored once per pass (never skipped: the duality gap needs its value, and the
  init vertex or full-weight candidates in the same pool do not share it), and the second
  costs an (r x m) @ (m x n) product and O(r (m + n)) memory per candidate;
* merges read a whole vertex tensor only for the vertices they select
  (:meth:`LoraVertexStore.tensor` forms W0 + (B A) s for one tensor, as peft's merge does).

Adapters are read from peft's saved format (:func:`read_peft_adapter`): ``adapter_config.json``
(``r``, ``lora_alpha``, ``use_rslora``, ``alpha_pattern``, ``fan_in_fan_out``) and
``adapter_model.safetensors`` (``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``).
Pure PyTorch + safetensors.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .stores import (
    Header,
    SafetensorsVertexStore,
    Shape,
    StoreError,
    VertexStore,
    check_finite_tensor,
    checkpoint_header,
)

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class LoraFormatError(StoreError):
    """An adapter (or base model) this store cannot represent as factors; the message says why."""


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class LowRank:
    """One vertex tensor as ``base + scale * (B @ A)`` (transposed when ``transposed``).

    ``base_id`` is equal for vertices whose ``read_base()`` returns the same tensor, so the
    LMO reads and scores that base once. ``B is None``: the vertex is the base on this tensor.
    """

    base_id: Hashable
    read_base: Callable[[], Tensor]
    B: Tensor | None = None  # (out, r)
    A: Tensor | None = None  # (r, in)
    scale: float = 1.0
    transposed: bool = False  # weight stored (in, out) as in GPT-2's Conv1D: delta = (B A)^T

    def delta(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """scale * B @ A (transposed), in peft's order of operations."""
        product = self.B.to(device=device, dtype=dtype) @ self.A.to(device=device, dtype=dtype)
        return (product.T if self.transposed else product) * self.scale

    def tensor(self) -> Tensor:
        base = self.read_base()
        if self.B is None:
            return base
        work = _work_dtype(base.dtype)
        return base.to(work) + self.delta(work, base.device)

    def delta_norm_sq(self) -> float:
        """||s B A||^2 = s^2 <B^T B, A A^T> from the r x r Gram matrices, in float64."""
        b, a = self.B.double(), self.A.double()
        return float(self.scale**2 * torch.sum((b.T @ b) * (a @ a.T)))


def low_rank_dots(mats: Sequence[Tensor], terms: Sequence[LowRank], work: torch.dtype) -> Tensor:
    """``[[<M, s_j B_j A_j> for j in terms] for M in mats]`` as a float64 (len(mats), len(terms)).

    <M, s B A> = s <B^T M, A>: the B's of all terms are stacked so that each M is read once per
    orientation in one (sum r) x m x n product (a ``transposed`` term pairs with M^T); the
    (r x n) products with A are summed in float64.
    """
    out = torch.zeros(len(mats), len(terms), dtype=torch.float64)
    device = mats[0].device if mats else None
    for flag in (False, True):
        idx = [j for j, t in enumerate(terms) if t.transposed == flag]
        if not idx:
            continue
        stacked = torch.cat([terms[j].B.to(device=device, dtype=work) for j in idx], dim=1)
        ranks = [terms[j].B.shape[1] for j in idx]
        factors_a = [terms[j].A.to(device=device, dtype=work) for j in idx]
        for g, m in enumerate(mats):
            projected = stacked.T @ (m.T if flag else m)  # (sum r, n)
            for j, rows, a in zip(idx, projected.split(ranks), factors_a):
                out[g, j] = float(terms[j].scale) * torch.sum(rows.double() * a.double()).cpu()
    return out


# ----------------------------------------------------------------------------- the base model
class ShardedSafetensorsModel(VertexStore):
    """One checkpoint (``name``) spread over several safetensors files: one memory-mapped
    :class:`SafetensorsVertexStore` per shard, each read tensor by tensor on demand."""

    def __init__(
        self,
        name: str,
        files: Sequence[str],
        keys: Sequence[str] | None = None,
        headers: Mapping[str, Header] | None = None,
    ):
        self.names = [name]
        shard_of: dict[str, SafetensorsVertexStore] = {}
        read = {path: (headers or {}).get(path) or checkpoint_header(name, path) for path in files}
        available = {k: path for path, (_, header) in read.items() for k in header}
        self.keys = list(keys) if keys is not None else list(available)
        missing = [k for k in self.keys if k not in available]
        if missing:
            raise LoraFormatError(
                f"base model {name!r} has no tensor {missing[0]!r} in {list(files)} ({len(missing)} missing); "
                "the base must be the pretrained model the adapters were trained on"
            )
        for path, header in read.items():
            wanted = [k for k in self.keys if available[k] == path]
            if wanted:
                store = SafetensorsVertexStore({name: path}, wanted, headers={name: header})
                shard_of.update({k: store for k in wanted})
        self._shard_of = shard_of

    def tensor(self, name: str, key: str) -> Tensor:
        return self._shard_of[key].tensor(name, key)

    def shape(self, key: str) -> Shape:
        return self._shard_of[key].shape(key)


def safetensors_model_files(path: str) -> list[str]:
    """The safetensors file(s) of a saved model: the file itself, ``model.safetensors``, or the
    shards named by ``model.safetensors.index.json``."""
    if os.path.isfile(path) and path.endswith(".safetensors"):
        return [path]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        return [os.path.join(path, f) for f in dict.fromkeys(weight_map.values())]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise LoraFormatError(
        f"no safetensors weights at {path!r} (model.safetensors or model.safetensors.index.json); "
        "save the base model with save_pretrained(safe_serialization=True)"
    )


def open_safetensors_model(
    name: str,
    path: str,
    keys: Sequence[str] | None = None,
    shapes: Mapping[str, Shape] | None = None,
    headers: Mapping[str, Header] | None = None,
) -> ShardedSafetensorsModel:
    """The saved model at ``path`` as a one-checkpoint store, shapes checked against ``shapes``
    (``headers``: the shards' headers already read, by file)."""
    model = ShardedSafetensorsModel(name, safetensors_model_files(path), keys, headers)
    for key, shape in (shapes or {}).items():
        if tuple(model.shape(key)) != tuple(shape):
            raise LoraFormatError(
                f"base model {path!r}: tensor {key!r} has shape {tuple(model.shape(key))}, the merged model's "
                f"has {tuple(shape)}; the adapters' base must be the pretrained model"
            )
    return model


# ----------------------------------------------------------------------------- peft adapters
@dataclass(frozen=True)
class LoraFactors:
    B: Tensor
    A: Tensor
    scale: float
    transposed: bool


def _pattern_value(pattern: Mapping[str, float], module: str, default: float) -> float:
    """peft's ``get_pattern_key``: the first pattern matching the module name's tail."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _load_adapter_weights(directory: str) -> dict[str, Tensor]:
    for filename in ADAPTER_FILES:
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            if filename.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise LoraFormatError(f"no adapter weights in {directory!r} (looked for {' or '.join(ADAPTER_FILES)})")


def read_peft_adapter(
    directory: str,
    shapes: Mapping[str, Shape],
    conv1d_modules: Collection[str] | None = None,
) -> dict[str, LoraFactors]:
    """``{parameter name: LoraFactors}`` of a peft LoRA adapter saved in ``directory``.

    ``shapes`` are the merged model's tensors (parameter names relative to the model peft
    wrapped); ``conv1d_modules`` the modules whose weight is stored (in, out): when given, they
    decide the orientation as peft's own dispatch does (it overrides ``fan_in_fan_out`` for
    Conv1D and Linear layers), else the config's ``fan_in_fan_out`` does. What this store cannot
    represent as W0 + s B A (DoRA, trained biases, modules_to_save, embedding or conv LoRA)
    raises :class:`LoraFormatError` naming it.
    """
    config_path = os.path.join(directory, "adapter_config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise LoraFormatError(f"cannot read {config_path!r} ({exc}); is {directory!r} a peft adapter?") from exc
    where = f"adapter {directory!r}"
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise LoraFormatError(f"{where} is a {config.get('peft_type')} adapter; only LoRA is kept as factors")
    unsupported = {
        "use_dora": config.get("use_dora"),
        "lora_bias": config.get("lora_bias"),
        "bias": config.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(config.get("modules_to_save")),
    }
    found = [k for k, v in unsupported.items() if v]
    if found:
        raise LoraFormatError(
            f"{where} sets {found[0]} ({config.get(found[0])!r}): its vertex is not W0 + s B A alone; "
            "use the full-weight store (method.store=safetensors) for it"
        )
    weights = _load_adapter_weights(directory)
    lora_alpha, r_default = float(config.get("lora_alpha", 8)), config.get("r", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    config_fan_in_fan_out = bool(config.get("fan_in_fan_out", False))

    factors: dict[str, LoraFactors] = {}
    for file_key in weights:
        if ".lora_A." in file_key or ".lora_B." in file_key:
            continue
        raise LoraFormatError(
            f"{where} holds tensor {file_key!r} that is not a lora_A/lora_B factor (embedding LoRA, "
            "trained biases or saved modules); use the full-weight store (method.store=safetensors) for it"
        )
    for file_key, a in weights.items():
        if not file_key.endswith(".lora_A.weight"):
            continue
        stem = file_key[: -len(".lora_A.weight")]
        module = stem.removeprefix(PEFT_PREFIX)
        b = weights.get(f"{stem}.lora_B.weight")
        if b is None:
            raise LoraFormatError(f"{where}: {file_key!r} has no matching lora_B factor; the file is incomplete")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise LoraFormatError(
                f"{where}: module {module!r} has factors of shapes {tuple(b.shape)} and {tuple(a.shape)} "
                "(conv LoRA or corrupt); only linear LoRA (B: out x r, A: r x in) is kept as factors"
            )
        key = f"{module}.weight"
        if key not in shapes:
            raise LoraFormatError(
                f"{where} adapts module {module!r}, but the merged model has no tensor {key!r}; "
                "the adapter was trained on another model class or architecture"
            )
        rank = a.shape[0]
        expected_rank = _pattern_value(rank_pattern, module, r_default)
        if int(expected_rank) != rank:
            raise LoraFormatError(f"{where}: module {module!r} has rank {rank}, its config says {expected_rank}")
        alpha = float(_pattern_value(alpha_pattern, module, lora_alpha))
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        transposed = config_fan_in_fan_out if conv1d_modules is None else module in conv1d_modules
        if transposed != config_fan_in_fan_out:
            log.warning(
                "%s: module %s is %s, fan_in_fan_out is set to %s in its config; using %s as peft does",
                where,
                module,
                "a Conv1D" if transposed else "not a Conv1D",
                config_fan_in_fan_out,
                transposed,
            )
        delta_shape = (a.shape[1], b.shape[0]) if transposed else (b.shape[0], a.shape[1])
        if tuple(shapes[key]) != delta_shape:
            raise LoraFormatError(
                f"{where}: module {module!r} gives a delta of shape {delta_shape}, its weight {key!r} has shape "
                f"{tuple(shapes[key])}"
                + (
                    "; set fan_in_fan_out in adapter_config.json to match the layer"
                    if delta_shape[::-1] == tuple(shapes[key])
                    else ""
                )
            )
        factors[key] = LoraFactors(b, a, scale, transposed)
    if not factors:
        raise LoraFormatError(f"{where} holds no lora_A/lora_B factors")
    return factors


# ----------------------------------------------------------------------------- the store
class LoraVertexStore(VertexStore):
    """Candidates W0 + s_i B_i A_i over one base model ``base`` (a store holding ``base_name``).

    ``names`` are the adapters' names (plus ``base_name`` with ``include_base``); ``keys`` and
    shapes are the base's. ``tensor`` forms one vertex tensor (float32, or float64 for a float64
    base); ``parts`` gives it factored for the LMO; ``distance_sq`` uses the factors too, so the
    pool's finiteness/distance check reads each base tensor once for all candidates.
    """

    def __init__(
        self,
        base: VertexStore,
        base_name: str,
        adapters: Mapping[str, Mapping[str, LoraFactors]],
        include_base: bool = False,
    ):
        if base_name not in base.names:
            raise StoreError(f"the base store does not hold {base_name!r}")
        self.keys = list(base.keys)
        self.names = ([base_name] if include_base else []) + list(adapters)
        if len(set(self.names)) != len(self.names):
            raise StoreError(f"duplicate checkpoint names in store: {self.names}")
        self._base, self._base_name = base, base_name
        self._base_id = ("lora-base", id(base), base_name)
        self._adapters = {n: dict(f) for n, f in adapters.items()}
        for name, factors in self._adapters.items():
            for key, f in factors.items():
                shape = base.shape(key) if key in self.keys else None
                delta = (f.A.shape[1], f.B.shape[0]) if f.transposed else (f.B.shape[0], f.A.shape[1])
                if shape is None or tuple(shape) != delta:
                    raise LoraFormatError(
                        f"adapter {name!r}: tensor {key!r} gets a delta of shape {delta}, the base has "
                        f"{shape if shape is not None else 'no such tensor'}"
                    )
        self._base_checks: dict[tuple, tuple[float, bool, Tensor | None]] = {}

    def adapted_keys(self, name: str) -> list[str]:
        return [k for k in self.keys if k in self._adapters.get(name, {})]

    def shape(self, key: str) -> Shape:
        return self._base.shape(key)

    def parts(self, name: str, key: str) -> LowRank:
        read = functools.partial(self._base.tensor, self._base_name, key)
        f = self._adapters.get(name, {}).get(key)
        if f is None:
            return LowRank(self._base_id, read)
        return LowRank(self._base_id, read, f.B, f.A, f.scale, f.transposed)

    def tensor(self, name: str, key: str) -> Tensor:
        return self.parts(name, key).tensor()

    def _base_check(self, key: str, reference: Tensor | None) -> tuple[float, bool]:
        """(||W0 - reference||^2, W0 == reference) for one tensor, computed once (finite checked)."""
        memo = (key, None if reference is None else id(reference))
        if memo not in self._base_checks:
            w0 = self._base.tensor(self._base_name, key)
            check_finite_tensor(self._base_name, key, w0)
            if reference is None:
                self._base_checks[memo] = (0.0, True, None)
            else:  # the reference is kept alive so that its id is not reused
                diff = w0.double() - reference.double()
                self._base_checks[memo] = (float(torch.sum(diff**2)), not bool(diff.any()), reference)
        return self._base_checks[memo][:2]

    def distance_sq(self, name: str, key: str, reference: Tensor | None = None) -> float:
        part = self.parts(name, key)
        base_sq, base_is_reference = self._base_check(key, reference)
        if part.B is None:
            return base_sq
        check_finite_tensor(name, f"{key} (lora_B)", part.B)
        check_finite_tensor(name, f"{key} (lora_A)", part.A)
        if reference is None:
            return 0.0
        if base_is_reference:  # ||W0 + s B A - W0||^2 from the r x r Gram matrices
            return part.delta_norm_sq()
        return super().distance_sq(name, key, reference)
