"""Where a run starts: theta_0 as coefficients over the checkpoints the store holds.

``method.init`` chooses the start:

* ``pretrained``: the pool's pretrained model;
* ``task_arithmetic``: pretrained + ``init_scaling`` * sum of the task vectors of ``init_models``
  (``all`` candidates, the ``targets`` among them, or a list of names);
* ``file``: a merged model read from ``init_path`` (a .safetensors file, a torch state dict, or a
  ``save_pretrained`` folder such as FusionBench's ``merged_model_save_path``), held in memory as
  the store's checkpoint :data:`INIT_PATH_CHECKPOINT`;
* ``merging_weights``: AdaMerging's ``save_merging_weights`` file (one row per pool model, in the
  pool's order; one column per merged tensor, or none);
* any FusionBench merging method (``tsv_m``, ``ties_merging``...): run on the pool first
  (:mod:`.method_start`), then the run starts from its merge as ``file`` does
  (:meth:`Start.from_method`, :meth:`Start.resolved`).

:class:`Start` is made from the options (:attr:`.options.RunOptions.start`), checked against the
pool before anything heavy (a missing ``init_path``, an unknown ``init_models`` name) and gives the coefficients once the run knows which
candidates it merges (:meth:`Start.coefficients`): a model the run leaves out (far from the
pretrained one) is left out of the start too, with a warning.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.vertices import INITS, start_coefficients

log = logging.getLogger(__name__)

INIT_PATH_CHECKPOINT = "__init_path__"  # the store's name for the model read from init_path


@dataclass(frozen=True)
class Start:
    """The start options of a run (see the module docstring)."""

    init: str
    scaling: float
    models: str | list[str]
    path: str | None
    method_options: dict | None = None

    @property
    def from_method(self) -> bool:
        """Whether the start is a FusionBench method's merge, still to be computed."""
        return self.init not in INITS

    def resolved(self, modelpool, cache_dir: str, members: Sequence[str] | None = None) -> Start:
        """The start with a FusionBench method's merge computed (written under ``cache_dir``) over the
        run's ``members`` (the pool's models the run keeps; null: all): an ``init=file`` start from it.
        Any other start as it is."""
        if not self.from_method:
            return self
        from dataclasses import replace

        from .method_start import merge_start
        from .modelpool import subpool

        models = subpool(modelpool, members) if members is not None else modelpool
        return replace(self, init="file", path=merge_start(models, self.init, self.method_options, cache_dir))

    def check(self, pool_models: Sequence[str]) -> None:
        """Before anything heavy: ``init_path`` exists, and ``init_models`` names models of the pool.
        (The option values themselves are checked when the options are made: :class:`.options.RunOptions`.)"""
        if self.init in ("file", "merging_weights") and not os.path.exists(str(self.path)):
            what = "merged model" if self.init == "file" else "merging-weights file (AdaMerging's save_merging_weights)"
            raise ValueError(f"init_path {self.path!r}: no such {what}")
        if self.init == "task_arithmetic" and not isinstance(self.models, str):
            unknown = [m for m in self.models if m not in pool_models]
            if unknown:
                raise ValueError(f"init_models {unknown} are not in the pool {list(pool_models)}")

    def coefficients(
        self, members: Sequence[str], pool_models: Sequence[str], targets: Sequence[str], keys: Sequence[str]
    ) -> dict[str, float | list[float]]:
        """theta_0 over the stored checkpoints. ``members``: the candidates this run merges;
        ``pool_models``: every model of the pool, in its order (AdaMerging weighed them all);
        ``keys``: the merged tensors, in the order of the model's parameters."""
        if self.init == "merging_weights":  # over the whole pool: a left-out model keeps AdaMerging's weight
            return merging_weights_start(self.path, pool_models, keys)
        models = self.models
        if self.init == "task_arithmetic" and not isinstance(models, str):
            left_out = [m for m in models if m not in members]
            if left_out:
                log.warning("init_models %s are left out of this run, so they are left out of the start too", left_out)
            models = [m for m in models if m in members]
        return start_coefficients(
            self.init,
            members,
            targets,
            pretrained=PRETRAINED,
            init_path_checkpoint=INIT_PATH_CHECKPOINT,
            scaling=self.scaling,
            members=models,
        )

    def resident(self, keys: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        """The start's checkpoints held in memory beside the pretrained model: the init_path model."""
        return {INIT_PATH_CHECKPOINT: load_init_path(self.path, keys)} if self.init == "file" else {}


def load_init_path(path: str, keys: Sequence[str]) -> dict[str, Tensor]:
    """The model of ``init=file``: a .safetensors file, a torch state dict, or a ``save_pretrained``
    folder (FusionBench's ``merged_model_save_path`` of a CLIP pool) holding ``keys``."""
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


def merging_weights_start(path: str, pool_models: Sequence[str], keys: Sequence[str]) -> dict[str, list[float]]:
    """theta_0 from FusionBench AdaMerging's saved merging weights (``save_merging_weights``):
    pretrained + sum_i w[i, p] * tau_i,p, with one row per pool model (in the pool's order) and
    one column per merged tensor (layer-wise; in parameter order) or none (task-wise)."""
    from fusion_bench.utils import load_tensor_from_file

    if not os.path.exists(path):
        raise ValueError(f"init_path {path!r}: no such merging-weights file (AdaMerging's save_merging_weights)")
    weights = torch.as_tensor(load_tensor_from_file(path), dtype=torch.float64).detach()
    if weights.dim() == 1:
        weights = weights[:, None].expand(-1, len(keys))
    if weights.dim() != 2 or weights.shape != (len(pool_models), len(keys)):
        raise ValueError(
            f"init_path {path!r}: merging weights of shape {tuple(weights.shape)}, but this pool has "
            f"{len(pool_models)} models and {len(keys)} merged tensors: expected ({len(pool_models)}, {len(keys)}) "
            f"or ({len(pool_models)},); run AdaMerging on the same pool (same models, same order)"
        )
    if not torch.isfinite(weights).all():
        raise ValueError(f"init_path {path!r}: the merging weights hold NaN or Inf")
    start = {name: weights[i].tolist() for i, name in enumerate(pool_models)}
    return {PRETRAINED: (1.0 - weights.sum(dim=0)).tolist(), **start}
