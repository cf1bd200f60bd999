"""A CLIP vision model pool that can declare its own task names.

FusionBench looks up class names and prompt templates by *task name* in its CLIP template
registry (``fusion_bench.tasks.clip_classification``): the CLIP task pool does it for every test
set, and methods that build zero-shot heads (AdaMerging-style mixins, FW-Merging) do it for every
model name, before any dataset is loaded. Only FusionBench's own datasets (mnist, svhn, ...) are
known there. :class:`CLIPVisionModelPoolWithTasks` registers extra names from its config::

    _target_: fusion_bench_fw.CLIPVisionModelPoolWithTasks
    clip_tasks:
      tiny_colors:
        classnames: [red, green, blue]
        templates: ["a photo of a {}."]     # optional; "{}" is replaced by the class name
    models: {...}

The program instantiates the model pool before the method and the task pool, so registering in
the constructor is early enough for both. Registration is process-wide, like FusionBench's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from fusion_bench.modelpool import CLIPVisionModelPool, SequenceClassificationModelPool

from .options import plain

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template as FusionBench expects one (a callable: class name -> text).

    A small class rather than a lambda so that templates compare equal by text and pickle.
    """

    text: str

    def __call__(self, classname: str) -> str:
        return self.text.format(classname)


def register_clip_task(
    name: str,
    classnames: Sequence[str],
    templates: Iterable[str] | None = None,
) -> None:
    """Register (or re-register) a CLIP classification task with FusionBench's template registry.

    ``templates`` are format strings with one ``{}`` for the class name; by default
    ``"a photo of a {}."``. Re-registering identical class names and templates is a no-op;
    replacing an existing, different entry logs a warning.
    """
    from fusion_bench.tasks.clip_classification import CLIPTemplateFactory

    classnames = [str(c) for c in classnames]
    templates = [PromptTemplate(str(t)) for t in (templates or DEFAULT_TEMPLATES)]
    if not classnames:
        raise ValueError(f"clip task {name!r}: classnames must not be empty")
    for template in templates:
        if "{}" not in template.text:
            raise ValueError(f"clip task {name!r}: template {template.text!r} has no '{{}}'")

    if name in CLIPTemplateFactory.get_available_datasets():
        try:
            old_classnames, old_templates = CLIPTemplateFactory.get_classnames_and_templates(name)
        except Exception:  # a broken earlier entry: just replace it
            old_classnames, old_templates = None, None
        if list(old_classnames or []) == classnames and list(old_templates or []) == templates:
            return
        log.warning(f"Replacing the CLIP class names/templates registered for task {name!r}")

    info = {"classnames": classnames, "templates": templates}
    # fusion-bench 0.2.33's register_dataset stores classnames=/templates= under a misspelt key
    # and asserts the wrong way round when only dataset_info= is given; passing all three stores
    # `info` as is, and keeps working once that is fixed upstream.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already registered.*")
        CLIPTemplateFactory.register_dataset(name, dataset_info=info, classnames=classnames, templates=templates)


class CLIPVisionModelPoolWithTasks(CLIPVisionModelPool):
    """:class:`fusion_bench.modelpool.CLIPVisionModelPool` plus ``clip_tasks``.

    Args:
        models: as for ``CLIPVisionModelPool``.
        clip_tasks: ``{task_name: {"classnames": [...], "templates": [...]}}``; ``templates`` is
            optional. Each task is registered with FusionBench's CLIP template registry.
        **kwargs: the rest of ``CLIPVisionModelPool``'s arguments (``processor``,
            ``train_datasets``, ``test_datasets``, ``platform``, ...).
    """

    _config_mapping = CLIPVisionModelPool._config_mapping | {"_clip_tasks": "clip_tasks"}

    def __init__(self, models, *, clip_tasks: Mapping[str, Mapping] | None = None, **kwargs):
        clip_tasks = plain(clip_tasks) or {}
        for name, spec in clip_tasks.items():
            spec = spec or {}
            if "classnames" not in spec:
                raise ValueError(f"clip_tasks.{name} needs `classnames`")
            register_clip_task(name, spec["classnames"], spec.get("templates"))
        self._clip_tasks = clip_tasks
        super().__init__(models, **kwargs)

    def save_model(self, model, path: str, *args, **kwargs):
        """Save the merged model (the program's ``merged_model_save_path``) atomically: written to a
        temporary folder and renamed, so a crash or kill never leaves a partial model at ``path``."""
        from fusion_bench_fw.core.atomic import atomic_dir

        with atomic_dir(path) as tmp:
            super().save_model(model, tmp, *args, **kwargs)

    @property
    def clip_task_names(self) -> list[str]:
        """The task names this pool registered."""
        return list(self._clip_tasks)


def load_local_dataset(
    dataset_path: str,
    split: str | None = None,
    num_samples: int | None = None,
    register_as: str | None = None,
    templates: Iterable[str] | None = None,
    fw_samples: dict | None = None,
):
    """Load a dataset saved with ``save_to_disk`` (no hub access).

    Args:
        dataset_path: the folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
        split: the split to take when the folder holds a ``DatasetDict``.
        num_samples: keep only the first ``num_samples`` rows (all when None).
        register_as: also register this CLIP task name, with the class names of the dataset's
            ``label`` feature (a ``ClassLabel``) and ``templates``, so that a task pool can
            evaluate it without a :class:`CLIPVisionModelPoolWithTasks`.
        templates: prompt templates for ``register_as`` (default ``"a photo of a {}."``).
        fw_samples: ``{task, n_per_task, seed}``: keep exactly the labelled samples FW's objective
            draws from this (train) split for that task and seed, so a task pool can score a merge
            on FW's own data (the data-matched baselines of ``benchmarks/tune.py``).
    """
    from datasets import DatasetDict, load_from_disk

    from .objectives.sampling import fixed_subset_indices

    dataset = load_from_disk(dataset_path)
    if isinstance(dataset, DatasetDict):
        if split is None:
            raise ValueError(f"{dataset_path} holds splits {list(dataset)}; pass split=")
        dataset = dataset[split]
    elif split is not None:
        log.debug(f"{dataset_path} holds a single split; ignoring split={split!r}")
    if register_as is not None:
        names = getattr(dataset.features.get("label"), "names", None)
        if not names:
            raise ValueError(f"{dataset_path}: register_as needs a ClassLabel `label` feature")
        register_clip_task(register_as, names, plain(templates))
    if fw_samples is not None:
        fw = plain(fw_samples)
        if set(fw) != {"task", "n_per_task", "seed"}:
            raise ValueError(
                f"{dataset_path}: fw_samples takes task, n_per_task and seed (all three); got {sorted(fw)}"
            )
        dataset = dataset.select(fixed_subset_indices(len(dataset), int(fw["n_per_task"]), int(fw["seed"]), fw["task"]))
    if num_samples is not None:
        dataset = dataset.select(range(min(int(num_samples), len(dataset))))
    return dataset


class SequenceClassificationBackbonePool(SequenceClassificationModelPool):
    """FusionBench's :class:`~fusion_bench.modelpool.SequenceClassificationModelPool` (each model a
    whole ``*ForSequenceClassification`` checkpoint, its task head inside) seen as FusionBench's
    GPT-2 GLUE pool sees its models: ``load_model`` hands out the *backbone* (``model.base_model``),
    so every merging method merges backbones only, and ``load_classifier(name)`` the whole model,
    so a task pool (:class:`~fusion_bench_fw.fusionbench.lm_taskpool.TextClassificationTaskPool`)
    and FW's objective put each task's own head on the merged backbone. Heads of different label
    counts (GLUE: stsb 1, mnli 3, the rest 2) never meet. Same arguments as the parent class::

        _target_: fusion_bench_fw.SequenceClassificationBackbonePool
        models: {_pretrained_: ..., task: ...}   # loaders: {_target_: ...from_pretrained, ...}
        tokenizer: {...}
        train_datasets: {task: ...}              # FW's labelled samples (input_ids, attention_mask, label)

    Entries are loader dicts (FusionBench's pools do not load plain strings), so FW spills each
    backbone once to its vertex cache rather than memory-mapping the whole-classifier files.
    """

    def load_classifier(self, model_name_or_config, *args, **kwargs):
        """The whole fine-tuned model of a task: its backbone and its head."""
        return super().load_model(model_name_or_config, *args, **kwargs)

    def load_model(self, model_name_or_config, *args, **kwargs):
        """The backbone of ``model_name_or_config`` (what merging methods merge)."""
        return backbone_of(self.load_classifier(model_name_or_config, *args, **kwargs))


def backbone_of(model):
    """The backbone of a Hugging Face ``*ForSequenceClassification`` model (``model.<base_model_prefix>``),
    with an error naming the model's class when it has none."""
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if prefix else None
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no backbone attribute (base_model_prefix={prefix!r}); "
            "SequenceClassificationBackbonePool needs Hugging Face *ForSequenceClassification models"
        )
    return backbone


def pool_entry(modelpool, name: str):
    """The pool's config for ``name`` (a path or hub name, or a loader's dict), through its public
    API; None for pools holding in-memory modules (they have no files, and get_model_config warns)."""
    if modelpool.has_instance_models:
        return None
    return modelpool.get_model_config(name, return_copy=False)


def subpool(modelpool, members: Sequence[str]):
    """``modelpool`` with only ``members`` of its models (and its special ones, the pretrained model):
    what a FusionBench method run inside an FW run sees once FW has left models out. A shallow copy:
    datasets, processors and loaded models are shared, the pool itself is not changed."""
    import copy

    if list(members) == list(modelpool.model_names):
        return modelpool
    from omegaconf import DictConfig, OmegaConf

    kept = set(members) | {n for n in modelpool.all_model_names if modelpool.is_special_model(n)}
    models = {n: modelpool._models[n] for n in modelpool.all_model_names if n in kept}
    sub = copy.copy(modelpool)
    sub._models = OmegaConf.create(models) if isinstance(modelpool._models, DictConfig) else models
    return sub
