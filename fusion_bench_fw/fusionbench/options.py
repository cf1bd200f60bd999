"""The options of FWHard and FWSoft: one home for each default and its documentation.

An algorithm's options are its :class:`RunOptions` (targets, samples, the start point, the
pool checks, outputs) and its solver config (:class:`~fusion_bench_fw.core.HardConfig` or
:class:`~fusion_bench_fw.core.SoftConfig`), passed flat, as a user writes them. Each is a
frozen dataclass whose fields hold the defaults and whose ``Args:`` document them; from
them come:

* the algorithms' constructors (:func:`split_options`) and their ``Args:`` docstrings
  (:func:`args_docstring`);
* the Hydra config nodes ``method/_fw_hard_schema`` and ``method/_fw_soft_schema``
  (:func:`register_hydra_schemas`, called by this package's Hydra plugin), on which the
  ``method=fw_hard|fw_soft`` yamls build, so ``--cfg job`` shows every option.

Imported by the Hydra plugin at start-up: nothing here imports FusionBench.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

import torch

from fusion_bench_fw.core.config import CONFIGS, FrankWolfeConfig, check_choice, check_positive_int
from fusion_bench_fw.core.objective import TASK_WEIGHTINGS
from fusion_bench_fw.core.vertices import INIT_MODELS, INITS

from .method_start import is_method
from .start import Start

ON_INCOMPATIBLE = ("error", "skip")
FAR_MODELS = ("exclude", "keep")
STORE_MODES = ("auto", "safetensors", "memory")
AUTOCAST_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = {"hard": "fusion_bench_fw.FWHard", "soft": "fusion_bench_fw.FWSoft"}  # the classes, by import path


def plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes) as plain Python lists and dicts."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class RunOptions:
    """What FW-Merging needs around the solver.

    Args:
        targets: the target tasks (labelled data from the pool's ``train_datasets``); null: every
            task with a train split in the pool.
        n_per_task: fixed, seeded labelled samples per target task.
        batch_size: samples per forward pass (the objective is the same for any batch size).
        seed: draws the samples; recorded in the history.
        task_weighting: ``mean`` (each task weighs 1/|T|) or ``sum_samples`` (per-sample losses summed).
        allow_fewer_samples: a task with fewer than ``n_per_task`` samples uses all of them
            (with a warning) instead of failing.
        guard: the hold-out guard (:mod:`fusion_bench_fw.core.guard`): the start's task vectors and every
            step are checked on ``guard_samples`` other labelled samples per target task (train split,
            disjoint from the objective's), and a checkpoint that does not lower their loss is refused.
        guard_samples: the guard's held-out labelled samples per target task (after the objective's
            ``n_per_task`` in the same seeded order).
        screen: before the start, keep only the candidates whose own weights, on some target task, take
            the loss on those ``guard_samples`` held-out samples down from the pretrained model's by at
            least ``screen_share`` of the largest drop any candidate achieves on it; the others leave
            the run (the start, a FusionBench method's start included, and the LMO), named with their
            losses in the history (``screen``).
        screen_share: the screen's bar, in (0, 1]: the share of the best candidate's drop of a
            target's held-out loss that a candidate must reach on some target.
        on_incompatible: ``error`` or ``skip`` (drop, with a warning, candidates whose tensor
            names or shapes differ from the pretrained model's).
        far_models: ``exclude`` (leave out, with a warning, candidates more than 5x farther from the
            pretrained model than the median candidate: fine-tuned from another pre-training, most
            likely) or ``keep`` them (they pull the start and the cosine LMO toward them).
        init: the start point: ``pretrained``, ``task_arithmetic``, ``file`` (a merged model, e.g.
            FusionBench AdaMerging's, saved with ``merged_model_save_path``), ``merging_weights``
            (AdaMerging's ``save_merging_weights`` file: models x tensors, or models, over this pool),
            or any FusionBench merging method (``tsv_m``, ``ties_merging``, ``wudi``, ``iso_c``,
            ``iso_cts``, ``simple_average`` or a config name under ``method/``): run on the pool
            inside this run, FW starts from its merge (:mod:`.method_start`).
        init_scaling: the task-arithmetic scale lambda of ``init=task_arithmetic``.
        init_models: the models in the task-arithmetic start: ``all``, ``targets`` or a list of names.
        init_path: ``init=file``: a .safetensors file, a torch state dict or a ``save_pretrained``
            folder of the start point; ``init=merging_weights``: the weights file (.pt or .np).
        init_options: ``init=<a FusionBench method>``: that method's options, over its config's
            (e.g. ``{alpha: 1.5}`` for ``tsv_m``); null: the config's own.
        store: where candidates are read from: ``auto`` (memory-map local safetensors, keep LoRA
            adapters as factors over their base model, spill the others once to a safetensors
            cache), ``safetensors`` (the same with every candidate as full weights) or ``memory``.
        cache_dir: where non-safetensors checkpoints are spilled and the sketched LMO (``lmo_sketch``)
            keeps its sketches; null: ``<log_dir>/vertex_cache`` (a fixed folder reuses them across runs).
        autocast: forward passes in ``bf16`` or ``fp16`` (GPU), or null (float32).
        history_path: the run's history (JSON); null: ``<log_dir>/fw_history.json``.
        checkpoint_path: the resumable state, written after every iteration; null:
            ``<log_dir>/fw_checkpoint.safetensors``.
        resume: continue from ``checkpoint_path`` (fix ``path.log_dir`` or ``checkpoint_path`` to resume).
        progress: show a progress bar.
    """

    targets: list[str] | None = None
    n_per_task: int = 100
    batch_size: int = 32
    seed: int = 0
    task_weighting: str = "mean"
    allow_fewer_samples: bool = False
    guard: bool = False
    guard_samples: int = 50
    screen: bool = False
    screen_share: float = 0.5
    on_incompatible: str = "error"
    far_models: str = "exclude"
    init: str = "pretrained"
    init_scaling: float = 0.3
    init_models: Any = "all"
    init_path: str | None = None
    init_options: Any = None
    store: str = "auto"
    cache_dir: str | None = None
    autocast: str | None = None
    history_path: str | None = None
    checkpoint_path: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        check_positive_int("n_per_task", self.n_per_task)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("guard_samples", self.guard_samples)
        if not 0 < self.screen_share <= 1:
            raise ValueError(f"screen_share must be in (0, 1], got {self.screen_share!r}")
        for name in ("guard", "screen"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_choice("task_weighting", self.task_weighting, TASK_WEIGHTINGS)
        check_choice("on_incompatible", self.on_incompatible, ON_INCOMPATIBLE)
        check_choice("far_models", self.far_models, FAR_MODELS)
        if self.init not in INITS and not (isinstance(self.init, str) and is_method(self.init)):
            raise ValueError(
                f"init must be one of {list(INITS)} or a FusionBench merging method (a config under method/: "
                f"tsv_m, ties_merging, wudi, iso_c, iso_cts, simple_average, ...), got {self.init!r}"
            )
        if self.init_options is not None:
            if self.init in INITS:
                raise ValueError(
                    f"init_options is read only with init=<a FusionBench method>, not init={self.init}: remove it"
                )
            if not isinstance(self.init_options, dict):
                raise ValueError(f"init_options must be a mapping of the method's options, got {self.init_options!r}")
        if isinstance(self.init_scaling, bool) or not isinstance(self.init_scaling, (int, float)):
            raise ValueError(f"init_scaling must be a number, got {self.init_scaling!r}")
        if self.init in ("file", "merging_weights") and not self.init_path:
            raise ValueError(
                f"init={self.init} needs method.init_path (a merged model file or folder for init=file; "
                "AdaMerging's merging-weights file for init=merging_weights)"
            )
        if isinstance(self.init_models, str):
            check_choice("init_models", self.init_models, INIT_MODELS)
        elif not (isinstance(self.init_models, list) and all(isinstance(m, str) for m in self.init_models)):
            raise ValueError(f"init_models must be all, targets or a list of model names, got {self.init_models!r}")
        if self.targets is not None and not (
            isinstance(self.targets, list) and self.targets and all(isinstance(t, str) for t in self.targets)
        ):
            raise ValueError(f"targets must be null or a non-empty list of task names, got {self.targets!r}")
        check_choice("store", self.store, STORE_MODES)
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {self.autocast!r}; use null, bf16 or fp16")

    @property
    def start(self) -> Start:
        """The run's start point (:mod:`.start`)."""
        return Start(self.init, float(self.init_scaling), self.init_models, self.init_path, self.init_options)


@dataclass(frozen=True)
class HardRunOptions(RunOptions):
    """FW-hard's run options: it starts from task arithmetic (the paper's setting)."""

    init: str = "task_arithmetic"


RUN_OPTIONS: dict[str, type[RunOptions]] = {"hard": HardRunOptions, "soft": RunOptions}


def option_classes(variant: str) -> tuple[type, type]:
    return RUN_OPTIONS[variant], CONFIGS[variant]


def split_options(variant: str, options: dict[str, Any]) -> tuple[RunOptions, FrankWolfeConfig]:
    """Flat options (Python keywords or Hydra's ``method.*``) -> (run options, solver config),
    each checked once; an option that only the other variant reads is refused."""
    options = {k: plain(v) for k, v in options.items()}
    run_cls, solver_cls = option_classes(variant)
    run_names = {f.name for f in fields(run_cls)}
    everything = run_names | {f.name for cls in CONFIGS.values() for f in fields(cls)}
    unknown = sorted(set(options) - everything)
    if unknown:
        known = sorted(run_names | {f.name for f in fields(solver_cls)})
        raise ValueError(f"unknown FW option(s) {unknown}; FW-{variant} takes {known}")
    run = run_cls(**{k: v for k, v in options.items() if k in run_names})
    solver = FrankWolfeConfig.build(variant, **{k: v for k, v in options.items() if k not in run_names})
    return run, solver


# ---------------------------------------------------------------------- documentation
def _documented(cls) -> dict[str, str]:
    """``{option: text}`` from the ``Args:`` sections of ``cls`` and its bases (nearest first)."""
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        if "Args:" not in text:
            continue
        body = text.split("Args:", 1)[1]
        for name, entry in re.findall(r"^ {4}(\w+): (.*?)(?=^ {4}\w+: |\Z)", body, flags=re.M | re.S):
            docs.setdefault(name, " ".join(entry.split()))
    return docs


def args_docstring(summary: str, variant: str) -> str:
    """``summary`` and an ``Args:`` section with every option of ``variant`` and its default."""
    lines = [summary.rstrip(), "", "Args:"]
    for cls in option_classes(variant):
        docs = _documented(cls)
        for f in fields(cls):
            lines.append(f"    {f.name}: {docs[f.name]} Default: ``{f.default!r}``.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- Hydra
def hydra_schema(variant: str) -> type:
    """A dataclass with ``_target_`` and every option of ``variant`` (typed, with its default)."""
    spec: list[tuple] = [("_target_", str, field(default=TARGETS[variant]))]
    for cls in option_classes(variant):
        hints = get_type_hints(cls)
        for f in fields(cls):
            assert f.default is not MISSING, f"{cls.__name__}.{f.name} needs a default"
            spec.append((f.name, hints[f.name], field(default=f.default)))
    return make_dataclass(f"FW{variant.title()}Options", spec)


SCHEMA_NAMES = {"hard": "_fw_hard_schema", "soft": "_fw_soft_schema"}


def register_hydra_schemas() -> None:
    """``method/_fw_hard_schema`` and ``method/_fw_soft_schema`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    for variant, name in SCHEMA_NAMES.items():
        ConfigStore.instance().store(group="method", name=name, node=hydra_schema(variant))
