"""FusionBench algorithms FWHard and FWSoft: thin adapters around ``fusion_bench_fw.core``.

They load the pool's pretrained model once (the template the merge is evaluated with),
stream the candidates from safetensors, build the labelled objective on the target
tasks, run the core solver on Fabric's device, and return the merged ``nn.Module``.
The per-iteration history goes to ``<log_dir>/fw_history.json``.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from fusion_bench import BaseAlgorithm, BaseModelPool
from fusion_bench.mixins import CLIPClassificationMixin
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fusion_bench_fw.core.config import FrankWolfeConfig
from fusion_bench_fw.core.history import IterationRecord, RunHistory
from fusion_bench_fw.core.solver import frank_wolfe
from fusion_bench_fw.core.stores import CompositeVertexStore, InMemoryVertexStore
from fusion_bench_fw.core.vertices import plan_vertices

from .distributed import fabric_communicator
from .lm_objectives import build_objective
from .pool_store import STORE_MODES, check_finite
from .validation import ON_INCOMPATIBLE, load_model_checked, validate_pool

log = logging.getLogger(__name__)

PRETRAINED = "_pretrained_"
INIT_FILE = "__init_file__"
INITS = ("pretrained", "task_arithmetic", "file")
AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class _FrankWolfeMerging(CLIPClassificationMixin, BaseAlgorithm):
    """Shared implementation; subclasses fix the variant and its defaults."""

    variant: str = "hard"
    default_init: str = "pretrained"

    def __init__(
        self,
        targets: list[str] | None = None,
        n_per_task: int = 100,
        batch_size: int = 32,
        seed: int = 0,
        init: str | None = None,
        init_scaling: float = 0.3,
        init_models: Any = "all",
        init_path: str | None = None,
        task_weighting: str = "mean",
        allow_fewer_samples: bool = False,
        on_incompatible: str = "error",
        store: str = "auto",
        cache_dir: str | None = None,
        autocast: str | None = None,
        history_path: str | None = None,
        checkpoint_path: str | None = None,
        resume: bool = False,
        progress: bool = True,
        **solver_kwargs,
    ):
        solver_kwargs = {k: _plain(v) for k, v in solver_kwargs.items()}
        self.solver_config = FrankWolfeConfig.build(self.variant, **solver_kwargs)
        init = init or self.default_init
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; use one of {INITS}")
        if init == "file" and not init_path:
            raise ValueError("init=file needs method.init_path (a .safetensors or torch state dict)")
        if on_incompatible not in ON_INCOMPATIBLE:
            raise ValueError(f"unknown on_incompatible {on_incompatible!r}; use one of {ON_INCOMPATIBLE}")
        if store not in STORE_MODES:
            raise ValueError(f"unknown store {store!r}; use one of {STORE_MODES}")
        if autocast not in AUTOCAST:
            raise ValueError(f"unknown autocast {autocast!r}; use null, bf16 or fp16")
        for name, value in (("n_per_task", n_per_task), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.targets = _plain(targets)
        self.n_per_task = n_per_task
        self.batch_size = batch_size
        self.seed = seed
        self.init = init
        self.init_scaling = init_scaling
        self.init_models = _plain(init_models)
        self.init_path = init_path
        self.task_weighting = task_weighting
        self.allow_fewer_samples = allow_fewer_samples
        self.on_incompatible = on_incompatible
        self.store = store
        self.cache_dir = cache_dir
        self.autocast = autocast
        self.history_path = history_path
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.progress = progress
        self.zeroshot_weights = {}
        self.history: RunHistory | None = None
        super().__init__()

    # ------------------------------------------------------------------ helpers
    def _output_dir(self) -> str:
        directory = None
        try:
            directory = self.log_dir
        except Exception:  # no logger configured
            directory = None
        return directory or os.path.join("outputs", "fw_merging")

    def _targets(self, modelpool: BaseModelPool) -> list[str]:
        targets = list(self.targets) if self.targets else list(modelpool.train_dataset_names)
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

    def _init_coefficients(self, candidates: list[str], targets: list[str]) -> dict[str, float]:
        if self.init == "pretrained":
            return {PRETRAINED: 1.0}
        if self.init == "file":
            return {INIT_FILE: 1.0}
        if self.init_models == "all":
            members = candidates
        elif self.init_models == "targets":
            members = [t for t in targets if t in candidates]
        else:
            members = list(self.init_models)
            unknown = [m for m in members if m not in candidates]
            if unknown:
                raise ValueError(f"init_models {unknown} are not in the pool {candidates}")
        lam = float(self.init_scaling)
        return {PRETRAINED: 1.0 - lam * len(members), **{m: lam for m in members}}

    def _load_init_file(self, keys) -> dict[str, torch.Tensor]:
        path = self.init_path
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"init_path {path!r} lacks tensor {missing[0]!r} ({len(missing)} missing)")
        return {k: state[k].float() for k in keys}

    # ------------------------------------------------------------------ run
    def run(self, modelpool: BaseModelPool) -> nn.Module:
        self.modelpool = modelpool
        if not modelpool.has_pretrained:
            raise ValueError(
                "the model pool has no `_pretrained_` model; FW-Merging needs the pretrained checkpoint "
                "(models._pretrained_) to build the task heads and the merged model"
            )
        candidates = list(modelpool.model_names)
        if not candidates:
            raise ValueError("the model pool holds no fine-tuned models to merge (only `_pretrained_`)")
        targets = self._targets(modelpool)
        device = self.fabric.device
        out_dir = self._output_dir()

        template = load_model_checked(modelpool, PRETRAINED)
        if modelpool.has_instance_models:  # the pool hands out its own object: never touch it
            template = copy.deepcopy(template)
        keys_params = {n: p for n, p in template.named_parameters() if p.is_floating_point()}
        shapes = {n: tuple(p.shape) for n, p in keys_params.items()}
        pretrained_state = {n: p.detach().float() for n, p in keys_params.items()}
        checked = validate_pool(  # every check before heavy work; may drop candidates (on_incompatible=skip)
            modelpool,
            candidates,
            targets,
            template,
            shapes,
            n_per_task=self.n_per_task,
            allow_fewer_samples=self.allow_fewer_samples,
            on_incompatible=self.on_incompatible,
            plan=lambda kept: plan_vertices(
                kept, self._init_coefficients(kept, targets), self.solver_config, len(targets), PRETRAINED
            ),
            store=self.store,
            cache_dir=self.cache_dir or os.path.join(out_dir, "vertex_cache"),
        )
        candidates, candidate_store = checked.candidates, checked.store
        resident = {PRETRAINED: pretrained_state}
        if self.init == "file":
            resident[INIT_FILE] = self._load_init_file(list(shapes))
        store = CompositeVertexStore([InMemoryVertexStore(resident, list(shapes)), candidate_store])
        check_finite(store, list(resident))

        template = template.to(device).eval()
        objective = build_objective(  # by pool kind: CLIP, sequence classification, causal LM, seq2seq
            self,
            modelpool,
            template,
            targets,
            self.n_per_task,
            self.batch_size,
            self.seed,
            self.task_weighting,
            AUTOCAST[self.autocast],
            self.allow_fewer_samples,
        )
        history_path = self.history_path or os.path.join(out_dir, "fw_history.json")

        def save(record: IterationRecord, history: RunHistory) -> None:
            if self.fabric.is_global_zero:
                history.save(history_path)

        checkpoint_path = self.checkpoint_path or os.path.join(out_dir, "fw_checkpoint.safetensors")
        if self.resume and not os.path.exists(checkpoint_path):
            log.warning("resume=true but no checkpoint at %s: starting from scratch", checkpoint_path)
        torch.manual_seed(self.seed)
        result = frank_wolfe(
            objective,
            store,
            checked.plan,
            self.solver_config,
            device=device,
            on_iteration=save,
            progress=self.progress and self.fabric.is_global_zero,
            seed=self.seed,
            checkpoint_path=checkpoint_path,  # every rank resumes from it; the core writes it on rank 0
            resume=self.resume,
            communicator=fabric_communicator(self.fabric),
        )
        result.history.extra.update(
            {"targets": targets, "n_per_task": self.n_per_task, "init": self.init, "world_size": self.fabric.world_size}
        )
        self.history = result.history
        if self.fabric.is_global_zero:
            result.history.save(history_path)
            log.info("FW-%s history written to %s", self.variant, history_path)

        # the template is this run's own copy of the pretrained model: it becomes the merge
        merged = template.requires_grad_(True)
        unexpected = merged.load_state_dict(result.params, strict=False).unexpected_keys
        assert not unexpected, unexpected
        return merged


class FWHard(_FrankWolfeMerging):
    """FW-hard: step toward the single LMO vertex (layer-wise by default)."""

    variant = "hard"
    default_init = "task_arithmetic"


class FWSoft(_FrankWolfeMerging):
    """FW-soft: optimise the step weights of the top-k LMO vertices on the simplex."""

    variant = "soft"
