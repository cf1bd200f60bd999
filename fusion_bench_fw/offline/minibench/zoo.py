"""The model zoo over the mini benchmark (``python -m fusion_bench_fw.offline.minibench build --zoo``):
many checkpoints per task, as a public zoo has them, from the same pre-trained model, data and
fine-tuning code as the build.

Over a build of some scope (``all``: the 20 tasks), every task's model is joined by the variants
of :data:`RUNS`: another seed (and a snapshot of that run at half its steps), a larger and a smaller
learning rate (the task model's seed and batches), and, for every fourth task, a far one (10x the
learning rate: it ends several times farther from the pre-trained model than the others). A
build of scope ``all`` adds its 16 noise-trained models. The full zoo: 20 x 5 + 5 + 16 = 121
checkpoints from 65 extra fine-tunes (the snapshots are free), each about as long as one of the
build's.

Under the build's root (its layout): ``models/<task>__<variant>`` (each with its own cache key,
written after the model, as the build's), and ``zoo_manifest.json`` (written whole): every
checkpoint of the zoo, the build's own included, with its task, variant, seed, learning rate,
steps, its own validation and test accuracy and its distance from the pre-trained model
(``norm_ratio``: ||tau|| / ||theta_0||), the nested order the pool-size experiments draw from
(:func:`nested_order`), and the time each fine-tune took. A build key other than the manifest's
builds again, reusing every model whose own key matches.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from fusion_bench_fw import PRETRAINED

from .. import builds
from ..builds import digest, flat, key_matches, torch_threads, write_key, write_manifest
from ..tiny_clip import make_processor
from .builder import ENV_VAR, SCOPE_TASKS, BuildParams, Kit, _log, build, default_root, models_present, task_data
from .sources import load_sources
from .tasks import ALL_TASKS, ModelSpec, model_specs

# Bump when the zoo's models change for the same parameters (it keys each of them).
ZOO_VERSION = 1
MANIFEST = "zoo_manifest.json"
SEP = "__"  # <task>__<variant>: a name Hydra overrides can address (no dots, no @)


@dataclass(frozen=True)
class Run:
    """One more fine-tune of a task's model: the task model's seed plus ``seed_offset``, the
    build's learning rate times ``lr_factor``, and the checkpoints it leaves, ``outputs``:
    ``(variant, fraction of the run's steps)``, a fraction below 1 being a snapshot from inside
    the run. ``every``: made for every ``every``-th task of ALL_TASKS only."""

    name: str
    seed_offset: int
    lr_factor: float
    outputs: tuple[tuple[str, float], ...]
    every: int = 1


# 65 fine-tunes for the 20 tasks: at the calibrated size one takes 15 to 20 s on one core (300
# steps at about 60 ms), so the zoo's fine-tunes take about 16 to 22 minutes on top of the build.
RUNS = (
    Run("seed", 4000, 1.0, (("seed", 1.0), ("half", 0.5))),
    Run("lr_hi", 0, 3.0, (("lr_hi", 1.0),)),
    Run("lr_lo", 0, 0.3, (("lr_lo", 1.0),)),
    Run("far", 0, 10.0, (("far", 1.0),), every=4),
)
VARIANTS = tuple(v for run in RUNS for v, _ in run.outputs)


@dataclass(frozen=True)
class ZooParams:
    """A zoo: the build it extends (its scope gives the tasks; ``all`` adds the noise-trained
    models) and which of :data:`VARIANTS` it holds."""

    build: BuildParams = field(default_factory=BuildParams)
    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self):
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown zoo variants {sorted(unknown)}; known: {list(VARIANTS)}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(SCOPE_TASKS[self.build.scope])

    def key(self) -> dict:
        """The zoo's key (the manifest's): the build's, the variants and :data:`ZOO_VERSION`."""
        key = {
            "build": self.build.manifest_key(),
            "scope": self.build.scope,
            "variants": list(self.variants),
            "runs": [asdict(r) for r in RUNS],
            "zoo_version": ZOO_VERSION,
        }
        return json.loads(json.dumps(key))  # as stored in the manifest (tuples become lists)


@dataclass(frozen=True)
class ZooModel:
    """One checkpoint of the zoo: ``spec`` is the build's model of its task (its data and head),
    ``run`` the fine-tune that makes it (None: the build's own model), ``fraction`` how far into
    that run it is taken."""

    name: str
    spec: ModelSpec
    variant: str  # base | noisy | one of VARIANTS
    run: Run | None = None
    fraction: float = 1.0

    @property
    def seed(self) -> int:
        return self.spec.seed + (self.run.seed_offset if self.run else 0)

    def schedule(self, params: BuildParams) -> BuildParams:
        """The build's parameters as this checkpoint's run trains with them (its learning rate)."""
        return replace(params, finetune_lr=params.finetune_lr * (self.run.lr_factor if self.run else 1.0))

    def steps(self, params: BuildParams) -> int:
        return round(params.finetune_steps * self.fraction)


def zoo_models(params: ZooParams | None = None) -> list[ZooModel]:
    """The zoo's checkpoints in a fixed order: per task its build model, then its variants; then the
    noise-trained models (scope ``all``)."""
    params = params or ZooParams()
    specs = model_specs(params.build.n_noisy)
    by_name = {s.name: s for s in specs}
    out: list[ZooModel] = []
    for task in params.tasks:
        spec = by_name[task]
        out.append(ZooModel(task, spec, "base"))
        for run in RUNS:
            if ALL_TASKS.index(task) % run.every:
                continue
            for variant, fraction in run.outputs:
                if variant in params.variants:
                    out.append(ZooModel(f"{task}{SEP}{variant}", spec, variant, run, fraction))
    if params.build.scope == "all":
        out += [ZooModel(s.name, s, "noisy") for s in specs if s.group == "noisy"]
    return out


def variant_names() -> list[str]:
    """The names of the full zoo's fine-tuned variants (what only ``build --zoo`` makes)."""
    return [m.name for m in zoo_models() if m.run]


def read_zoo_manifest(root: str | None = None) -> dict | None:
    return builds.read_manifest(root or default_root(), MANIFEST)


# --------------------------------------------------------------------------------------------
# What the benchmark draws from a zoo: nested pools and the oracle
# --------------------------------------------------------------------------------------------


def nested_order(models: dict[str, dict], tasks, seed: int) -> list[str]:
    """Every checkpoint once, so that each prefix of ``len(tasks)`` or more holds one of every task:
    first one checkpoint per task (drawn at random from the task's), then the rest in a random
    order (noise-trained ones included). Pools of growing size are its prefixes: nested."""
    rng = np.random.default_rng(seed)
    first = []
    for task in tasks:
        own = [n for n, info in models.items() if info["task"] == task and info["group"] != "noisy"]
        first.append(own[int(rng.integers(len(own)))])
    rest = [n for n in models if n not in first]
    return first + [rest[i] for i in rng.permutation(len(rest))]


def nested_pool(manifest: dict, size: int) -> list[str]:
    """The first ``size`` checkpoints of the zoo's nested order (at least one per task of the zoo)."""
    if not len(manifest["tasks"]) <= size <= len(manifest["order"]):
        raise ValueError(f"pool size {size}: between {len(manifest['tasks'])} and {len(manifest['order'])}")
    return manifest["order"][:size]


def oracle(manifest: dict, targets) -> dict[str, str]:
    """Each target's best checkpoint by its own VALIDATION accuracy (never test; the first in the
    zoo's order on a tie)."""
    best = {}
    for target in targets:
        own = [(n, i) for n, i in manifest["models"].items() if i["task"] == target and i["group"] != "noisy"]
        if not own:
            raise ValueError(f"the zoo holds no checkpoint of {target}")
        best[target] = max(own, key=lambda item: item[1]["own_val_accuracy"])[0]
    return best


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def build_zoo(
    root: str | None = None, params: ZooParams | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Build (or reuse) the zoo and the build under it; returns the zoo's manifest."""
    root = os.path.abspath(root or default_root())
    params = params or ZooParams()
    base = build(root, params.build, force=force, progress=progress)
    old = read_zoo_manifest(root)
    if not force and old and old.get("key") == params.key() and models_present(root, old["models"]):
        return old
    t0 = time.perf_counter()
    with torch_threads(params.build.threads):
        return _build_zoo(root, params, base, old or {}, force, progress, t0)


def _build_zoo(root: str, params: ZooParams, base: dict, old: dict, force: bool, progress: bool, t0: float) -> dict:
    from tqdm.auto import tqdm
    from transformers import CLIPModel, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bp = params.build
    sources = load_sources(bp.seed)
    kit = Kit(CLIPModel.from_pretrained(os.path.join(root, "models", PRETRAINED)).eval(), make_processor())
    theta0 = flat(kit.vision)
    models = zoo_models(params)
    info: dict[str, dict] = {}
    made, seconds_made = 0, 0.0
    for m in models:  # the build's own models: as its manifest records them
        if m.run is None:
            own = base["models"][m.name]
            info[m.name] = _record(m, bp, own["own_val_accuracy"], own["own_test_accuracy"])
            info[m.name]["norm_ratio"] = base["task_vectors"]["norm_ratio"][m.name]
    bar = tqdm(params.tasks, desc="zoo", disable=not progress, unit="task")
    for task in bar:
        spec = next(m.spec for m in models if m.name == task)
        data = task_data(sources, spec, bp, ALL_TASKS.index(task))
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
        px_va, px_te, px_tr = kit.pixels(x_va), kit.pixels(x_te), None
        for run in RUNS:
            outs = [m for m in models if m.run == run and m.spec == spec]
            if not outs:
                continue
            run_key = digest([bp.key(), asdict(spec), asdict(run), ZOO_VERSION])
            keys = {m.name: digest([run_key, m.fraction]) for m in outs}
            dirs = {m.name: os.path.join(root, "models", m.name) for m in outs}
            seconds = None
            if not force and all(key_matches(dirs[n], k) for n, k in keys.items()):
                trained = {n: CLIPVisionModel.from_pretrained(dirs[n]).eval() for n in keys}
                seconds = old.get("models", {}).get(outs[0].name, {}).get("run_seconds")
            else:
                bar.set_postfix_str(f"{task} {run.name}")
                px_tr = kit.pixels(x_tr) if px_tr is None else px_tr
                trained, seconds = _train(kit, outs, px_tr, y_tr, bp)
                made, seconds_made = made + 1, seconds_made + seconds
                for n, vm in trained.items():
                    vm.save_pretrained(dirs[n])
                    write_key(dirs[n], keys[n])
            for m in outs:
                vm = trained[m.name]
                classnames = spec.task.classnames
                info[m.name] = _record(
                    m, bp, kit.accuracy(vm, px_va, y_va, classnames), kit.accuracy(vm, px_te, y_te, classnames)
                )
                info[m.name].update(
                    norm_ratio=round(float((flat(vm) - theta0).norm() / theta0.norm()), 5), run_seconds=seconds
                )
    bar.close()
    info = {m.name: info[m.name] for m in models}  # the zoo's order
    manifest = {
        "key": params.key(),
        "scope": bp.scope,
        "root": root,
        "env_var": ENV_VAR,
        "tasks": list(params.tasks),
        "variants": list(params.variants),
        "runs": [asdict(r) for r in RUNS],
        "models": info,
        "order": nested_order(info, params.tasks, bp.seed),
        "pretrained_val_accuracy": {t: base["pretrained_val_accuracy"][t] for t in params.tasks},
        "pretrained_accuracy": {t: base["pretrained_accuracy"][t] for t in params.tasks},
        "finetunes_made": made,  # by this build (the others were reused), and their time
        "finetune_seconds": round(seconds_made, 1),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    write_manifest(root, manifest, MANIFEST)
    _log(f"zoo: {len(info)} checkpoints, {made} fine-tunes made, in {manifest['build_seconds']}s")
    return manifest


def _train(kit: Kit, outs: list[ZooModel], x, y, params: BuildParams) -> tuple[dict, float]:
    """One run: its final model and its snapshots (taken inside it), by name; and its seconds."""
    first = outs[0]
    at = {m.steps(params): m.name for m in outs if m.fraction < 1}
    snapshots = {}

    def on_step(step, vm):
        if step in at:
            snapshots[at[step]] = copy.deepcopy(vm).eval().requires_grad_(False)

    t = time.perf_counter()
    final = kit.finetune(first.spec, x, y, first.seed, first.schedule(params), on_step)
    seconds = round(time.perf_counter() - t, 1)
    return {m.name: final if m.fraction == 1 else snapshots[m.name] for m in outs}, seconds


def _record(m: ZooModel, params: BuildParams, val: float, test: float) -> dict:
    """A checkpoint's manifest entry: what it is (task, variant, seed, learning rate, steps) and how
    it scores on its own task."""
    return {
        "group": {"base": "task", "noisy": "noisy"}.get(m.variant, "zoo"),
        "task": m.spec.base_task,
        "variant": m.variant,
        "run": m.run.name if m.run else None,
        "seed": m.seed,
        "lr": float(f"{m.schedule(params).finetune_lr:.10g}"),
        "steps": m.steps(params),
        "schedule_steps": params.finetune_steps,
        "own_val_accuracy": val,
        "own_test_accuracy": test,
    }
