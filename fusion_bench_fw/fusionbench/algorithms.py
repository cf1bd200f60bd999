"""FusionBench algorithms FWHard and FWSoft: thin adapters around ``fusion_bench_fw.core``.

A run is a recipe: the target tasks, the template (the pool's pretrained model, which
becomes the merge), the pool's checks (headers, sample counts: nothing written), the
vertex plan, the store, the objective of the pool's kind, the core solver on Fabric's
device, and the merged ``nn.Module``. The history goes to ``<log_dir>/fw_history.json``.
Options, their defaults and their documentation: :mod:`.options`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from fusion_bench import BaseAlgorithm, BaseModelPool
from fusion_bench.mixins import LightningFabricMixin
from torch import nn

from fusion_bench_fw import PRETRAINED
from fusion_bench_fw.core.atomic import remove_stale_temporaries
from fusion_bench_fw.core.history import IterationRecord, RunHistory
from fusion_bench_fw.core.solver import FrankWolfeResult, frank_wolfe
from fusion_bench_fw.core.vertices import plan_vertices

from . import observe
from .distributed import fabric_communicator
from .objectives import ENTROPY_NEEDS_CLIP, build_inner_objective, build_objective
from .objectives.sampling import Sampling
from .options import AUTOCAST_DTYPES, args_docstring, split_options
from .pool import read_pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPaths:
    history: str
    checkpoint: str
    cache_dir: str


class _FrankWolfeMerging(LightningFabricMixin, BaseAlgorithm):
    """Shared implementation; FWHard and FWSoft fix the variant (and with it the options)."""

    variant: ClassVar[str]

    def __init__(self, **options):
        self.options, self.solver_config = split_options(self.variant, options)
        self.history: RunHistory | None = None
        super().__init__()

    def run(self, modelpool: BaseModelPool) -> nn.Module:
        opts, config = self.options, self.solver_config
        paths = self._output_paths()
        entropy = getattr(config, "inner_loss", "ce_train") != "ce_train"
        pool = read_pool(modelpool, opts, paths.cache_dir, clip_only=ENTROPY_NEEDS_CLIP if entropy else None)
        template = pool.template.to(self.fabric.device).eval()

        def objective_on(sampling: Sampling):  # by pool kind: CLIP, sequence classification, causal LM, seq2seq
            return build_objective(
                pool.kind,
                modelpool,
                template,
                pool.train_sets,
                sampling,
                fabric=self.fabric,
                task_weighting=opts.task_weighting,
                autocast_dtype=AUTOCAST_DTYPES[opts.autocast],
            )

        def held_out():  # the guard's and the screen's samples: the next guard_samples of the same seeded order
            return objective_on(Sampling(opts.guard_samples, opts.batch_size, opts.seed, offset=opts.n_per_task))

        # the screen runs before the start (it decides who is in it); else the plan's cheap checks come first
        holdout = held_out() if opts.screen else None
        screened = pool.screen(holdout, self.fabric.device, opts.screen_share) if opts.screen else None
        # init=<method>: its merge, computed here over the models the run keeps
        starting = opts.start.resolved(modelpool, paths.cache_dir, pool.members)
        start = starting.coefficients(pool.members, pool.models, pool.targets, pool.keys)
        plan = plan_vertices(pool.members, start, config, len(pool.targets), PRETRAINED)
        store = pool.store_for(plan, resident=starting.resident(pool.keys))
        inner = None  # FW-soft's inner objective, when it is not the outer one
        if entropy:
            inner = build_inner_objective(
                modelpool, template, pool.targets, fabric=self.fabric, batch_size=config.inner_batch_size
            )
        objective = objective_on(Sampling(opts.n_per_task, opts.batch_size, opts.seed))
        if opts.guard and holdout is None:
            holdout = held_out()
        record = run_record(opts, pool.targets, self.fabric)
        if screened:
            record["screen"] = screened
        result = self._solve(objective, store, plan, paths, inner, record, holdout if opts.guard else None)
        self.save_history(result.history, paths.history)
        return assemble(template, result.params)

    def _solve(
        self, objective, store, plan, paths: OutputPaths, inner_objective, record: dict, holdout=None
    ) -> FrankWolfeResult:
        opts = self.options
        if opts.resume and not os.path.exists(paths.checkpoint):
            log.warning("resume=true but no checkpoint at %s: starting from scratch", paths.checkpoint)
        if opts.resume and self.fabric.is_global_zero:  # a killed run may have left half-written temporaries
            for folder in {os.path.dirname(os.path.abspath(p)) for p in (paths.checkpoint, paths.history)}:
                for stale in remove_stale_temporaries(folder):
                    log.info("removed %s, left by an interrupted run", stale)
        torch.manual_seed(opts.seed)
        return frank_wolfe(
            objective,
            store,
            plan,
            self.solver_config,
            device=self.fabric.device,
            on_iteration=lambda record, history: self.on_iteration(record, history, paths.history),
            progress=opts.progress and self.fabric.is_global_zero,
            seed=opts.seed,
            checkpoint_path=paths.checkpoint,  # every rank resumes from it; the core writes it on rank 0
            resume=opts.resume,
            communicator=fabric_communicator(self.fabric),
            inner_objective=inner_objective,
            holdout_objective=holdout,
            run_record=record,
            sketch_cache_dir=os.path.join(paths.cache_dir, "lmo_sketch"),
        )

    def on_iteration(self, record: IterationRecord, history: RunHistory, history_path: str) -> None:
        """After every iteration (every rank): keep the history file current, log the scalars."""
        if self.fabric.is_global_zero:
            history.save(history_path)
            observe.log_iteration(self.fabric, record)

    def save_history(self, history: RunHistory, history_path: str) -> None:
        """At the end of a run: the one place the final history is kept and written."""
        self.history = history
        if self.fabric.is_global_zero:
            history.save(history_path)
            log.info("FW-%s history written to %s", self.variant, history_path)
            observe.finish(self.fabric, history, history_path)  # its picture; flushes the loggers

    def _output_paths(self) -> OutputPaths:
        opts = self.options
        try:
            directory = self.log_dir
        except Exception:  # no logger configured
            directory = None
        directory = directory or os.path.join("outputs", "fw_merging")
        return OutputPaths(
            history=opts.history_path or os.path.join(directory, "fw_history.json"),
            checkpoint=opts.checkpoint_path or os.path.join(directory, "fw_checkpoint.safetensors"),
            cache_dir=opts.cache_dir or os.path.join(directory, "vertex_cache"),
        )


# the run options a resumed run must share with the saved one (the others name outputs or how it shows)
RESUME_MUST_MATCH = (
    "targets",
    "n_per_task",
    "batch_size",
    "seed",
    "task_weighting",
    "guard",
    "guard_samples",
    "screen",
    "screen_share",
    "init",
    "init_scaling",
    "init_models",
    "init_path",
    "init_options",
    "far_models",
    "on_incompatible",
    "store",
    "autocast",
)


def run_record(options, targets: list[str], fabric) -> dict:
    """What the history records of the run around the solver (``extra``): the resolved targets, the
    run options a resume must match, the world size."""
    from dataclasses import asdict

    chosen = {k: v for k, v in asdict(options).items() if k in RESUME_MUST_MATCH}
    return {**chosen, "targets": targets, "world_size": fabric.world_size}


def assemble(template: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """The merged tensors loaded into the template (its other tensors stay the pretrained ones)."""
    merged = template.requires_grad_(True)
    unexpected = merged.load_state_dict(params, strict=False).unexpected_keys
    assert not unexpected, unexpected
    return merged


class FWHard(_FrankWolfeMerging):
    variant = "hard"
    __doc__ = args_docstring(
        "FW-hard (Chen et al., ICCV 2025): Frank-Wolfe toward the single LMO vertex per block.\n\n"
        "What each default is and why: docs/defaults.md; the authors' protocol: method=fw_hard_paper.",
        "hard",
    )


class FWSoft(_FrankWolfeMerging):
    variant = "soft"
    __doc__ = args_docstring(
        "FW-soft (Chen et al., ICCV 2025): k LMO vertices, their step weights optimised on the objective.\n\n"
        "What each default is and why: docs/defaults.md; the authors' protocol: method=fw_soft_paper.",
        "soft",
    )
