"""The Frank-Wolfe merging loop (FW-hard and FW-soft), independent of FusionBench.

Constraint set: the convex hull of the candidate checkpoints (task-wise), or the product
of per-tensor hulls (layer-wise). Each iteration: gradient of the objective at the
current merge, one streaming LMO pass over the vertices, then the variant's update
(:mod:`.hard`: a step toward the single argmin; :mod:`.soft`: optimised step weights of
the top-k). The iterate is also tracked as coefficients over the stored checkpoints,
theta_p = sum_i alpha[i, p] * basis_i,p, so a merge is reproducible from alpha alone.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import check_resumable, checkpoint_exists, load_checkpoint, save_checkpoint
from .config import FrankWolfeConfig, HardConfig, SoftConfig
from .distributed import SINGLE_PROCESS, Communicator
from .guard import HoldoutGuard
from .hard import HardStep
from .history import IterationRecord, RunHistory
from .lmo import Blocks, score_vertices_sharded
from .objective import Objective, drop_rounding_noise
from .sketch import SketchedLMO
from .soft import SoftStep
from .stores import VertexStore
from .vertices import VertexPlan, Vertices

log = logging.getLogger(__name__)

OnIteration = Callable[[IterationRecord, RunHistory], None]
STEPS = {HardConfig: HardStep, SoftConfig: SoftStep}  # each variant's iteration after the LMO pass


@dataclass
class FrankWolfeResult:
    params: dict[str, Tensor]
    history: RunHistory
    coefficients: Tensor | None


def frank_wolfe(
    objective: Objective,
    store: VertexStore,
    plan: VertexPlan,
    config: FrankWolfeConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_iteration: OnIteration | None = None,
    progress: bool = True,
    seed: int | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
    communicator: Communicator = SINGLE_PROCESS,
    inner_objective: Objective | None = None,
    holdout_objective: Objective | None = None,
    run_record: dict | None = None,
    sketch_cache_dir: str | None = None,
) -> FrankWolfeResult:
    """Run ``config``'s variant on ``plan`` (:func:`~.vertices.plan_vertices`) and return the
    merged tensors, the history and the coefficients alpha (None once TIES left the hull).

    ``store`` holds every checkpoint the plan names (nothing in it is modified). With
    ``checkpoint_path`` the state is saved atomically after every iteration; with ``resume``
    a run restarts from that file and ends exactly as an uninterrupted run. With a
    multi-process ``communicator`` the LMO pass is sharded over ranks (the objective shards
    its own batches); every rank resumes from the same ``checkpoint_path``, rank 0 writes it.
    FW-soft's inner search runs on ``inner_objective`` (required by ``inner_loss=entropy_test``;
    a stochastic one makes a resumed run differ from an uninterrupted one) or on ``objective``.
    With ``holdout_objective`` (labelled samples of the same tasks, disjoint from ``objective``'s) the
    hold-out guard (:mod:`.guard`) checks the start and every step on it and refuses what does not help.
    ``run_record``: what the caller ran around the solver (its options, the data it drew), kept in
    the history's ``extra``; a resume under another record is refused like one under other settings.
    ``sketch_cache_dir``: where the sketched LMO (``config.lmo_sketch`` > 0) keeps the sketches of
    checkpoint files for later runs; None: they are made in memory at each run's first pass.
    """
    run = _Run(
        objective,
        store,
        plan,
        config,
        torch.device(device),
        dtype,
        communicator,
        seed,
        inner_objective,
        holdout_objective,
        sketch_cache_dir,
    )
    run.history.extra.update(run_record or {})
    first = run.resume(checkpoint_path) if resume and checkpoint_exists(checkpoint_path) else 0
    bar = tqdm(
        range(first, config.max_iters),
        desc=f"FW-{config.variant}",
        disable=not progress,
        initial=first,
        total=config.max_iters,
    )
    for t in bar:
        record, scores = run.measure(t)
        if config.gap_tol is not None and record.gap <= config.gap_tol:
            run.history.stop_reason = f"gap {record.gap:.3g} <= gap_tol {config.gap_tol}"
            run.finish(record, checkpoint_path, on_iteration)
            break
        started = time.perf_counter()
        run.update(record, scores, t)
        _sync(run.device)
        record.time_update_s = time.perf_counter() - started
        bar.set_postfix(loss=f"{record.loss:.4f}", gap=f"{record.gap:.3g}")
        log.info(
            "FW-%s t=%d loss=%.5f gap=%.4g selected=%s", config.variant, t, record.loss, record.gap, record.selected
        )
        stop = run.guard.stop if run.guard else None  # the guard ends a run it cannot move further
        if stop:
            run.history.stop_reason = stop
        run.finish(record, checkpoint_path, on_iteration)
        if stop:
            break
    run.history.final_loss = objective.loss(run.theta)
    run.history.coefficients = run.coefficients_list()
    return FrankWolfeResult(run.theta, run.history, run.alpha if run.track_alpha else None)


class _Run:
    """The state of one run (theta, alpha, history) and the steps of an iteration."""

    def __init__(
        self,
        objective,
        store,
        plan: VertexPlan,
        config,
        device,
        dtype,
        comm: Communicator,
        seed,
        inner=None,
        holdout=None,
        sketch_cache_dir=None,
    ):
        _check_plan(plan, store, objective)
        self.objective, self.config, self.device, self.dtype, self.comm = objective, config, device, dtype, comm
        self.keys, basis = list(store.keys), list(store.names)
        self.blocks = Blocks.build(self.keys, config.granularity)
        self.alpha = torch.zeros(len(basis), len(self.keys), dtype=torch.float64)
        for name, c in plan.start.items():  # one coefficient per checkpoint, or one per tensor
            row = torch.as_tensor(c, dtype=torch.float64)
            if row.dim() == 1 and row.numel() != len(self.keys):
                raise ValueError(f"start coefficients of {name!r}: {row.numel()} values for {len(self.keys)} tensors")
            self.alpha[basis.index(name)] = row
        self.theta = materialise(store, self.alpha, self.keys, device, dtype)
        self.guard = HoldoutGuard(holdout, plan.vertices, self.blocks.count) if holdout is not None else None
        start_guard = self.guard_start(plan, store) if self.guard else None
        self.vertices = Vertices(plan, store, self.theta, self.alpha)
        self.step = STEPS[type(config)](
            config, objective, self.vertices, self.blocks, k=plan.k, inner=inner, guard=self.guard
        )
        self.sketched = None
        if config.lmo_sketch:
            self.sketched = SketchedLMO(self.vertices, self.blocks, config, plan.k, sketch_cache_dir, comm)
        self.track_alpha = config.tracks_coefficients
        self.per_task = config.per_task_gradients
        self.history = RunHistory(
            variant=config.variant,
            config={**config.to_dict(), "k_effective": plan.k, **({"holdout_guard": True} if holdout else {})},
            tasks=list(objective.task_names),
            basis=basis,
            vertices=list(self.vertices.names),
            keys=self.keys,
            seed=seed,
            stop_reason="max_iters",
        )
        if self.guard:
            self.history.extra["guard_start"] = start_guard

    def guard_start(self, plan: VertexPlan, store) -> dict:
        """The guard's pass over the start's terms (a pretrained + task-vector combination only)."""
        pre = plan.pretrained
        if pre is None or pre not in plan.start or pre not in store.names:
            return {"skipped": "the start is not the pretrained model plus task vectors of the pool's models"}
        members = [n for n in plan.start if n != pre and bool(self.alpha[list(store.names).index(n)].abs().sum() > 0)]
        read = lambda name, key: store.tensor(name, key).to(self.device)  # noqa: E731
        return self.guard.check_start(self.theta, self.alpha, list(store.names), read, pre, members)

    def resume(self, path: str) -> int:
        """Load the saved state; returns the iteration to continue from."""
        saved_theta, saved_alpha, saved, rng = load_checkpoint(path)
        check_resumable(saved, self.history, path)
        self.theta = {k: saved_theta[k].to(device=self.device, dtype=self.dtype) for k in self.keys}
        if saved_alpha is not None:
            self.alpha.copy_(saved_alpha)
        torch.set_rng_state(rng)
        self.history.iterations = saved.iterations
        if self.guard:
            self.guard.restore(saved.iterations)
            self.guard.moved()
        first = len(saved.iterations)
        if saved.stop_reason.startswith(("gap", "guard")):  # the saved run had ended
            self.history.stop_reason, first = saved.stop_reason, self.config.max_iters
        log.info("resuming FW-%s from %s after %d iteration(s)", self.config.variant, path, first)
        return first

    def measure(self, t: int) -> tuple[IterationRecord, Tensor]:
        """The gradient(s) at theta and the LMO scores: the iteration's record (loss, gap...)
        and the scores of the selectable vertices (gradients x vertices x blocks)."""
        t0 = time.perf_counter()
        lg = self.objective.loss_and_grad(self.theta, per_task=self.per_task)
        grads = [drop_rounding_noise(g) for g in lg.grads]
        if self.per_task:
            grads = [{key: sum(g[key] for g in grads) for key in self.keys}] + grads
        _sync(self.device)
        t1 = time.perf_counter()
        vertices, cosine = self.vertices, self.config.lmo_score == "cosine"
        if self.sketched:
            table = self.sketched.score(grads, self.theta, self.guard.refused if self.guard else None)
        else:
            table = score_vertices_sharded(
                grads, self.theta, vertices.scored, vertices.read, self.blocks, cosine, self.comm, vertices.parts
            )
        t2 = time.perf_counter()
        scores = table.scores(self.config.lmo_score)[:, : len(vertices.names)]  # the anchor is never selected
        record = IterationRecord(
            t=t,
            loss=lg.loss,
            task_losses=lg.task_losses,
            grad_norm=_global_norm(grads[0]),
            gap=table.gap(0),
            step_size=None,
            selected=None,
            scores=(
                {n: float(scores[0, i, 0]) for i, n in enumerate(vertices.names)} if self.blocks.count == 1 else None
            ),
            time_grad_s=t1 - t0,
            time_lmo_s=t2 - t1,
            lmo_reads=dict(table.reads) if self.sketched else None,
        )
        return record, scores

    def update(self, record: IterationRecord, scores: Tensor, t: int) -> None:
        """The variant's step from theta toward the selected vertices, recorded in ``record``."""
        if self.guard:
            scores = self.guard.mask(scores)
        chosen = self.step.update(self.theta, self.alpha if self.track_alpha else None, scores, record, t)
        record.selected = _describe_selection(self.vertices.names, chosen, self.blocks)
        record.chosen = chosen.tolist()

    def finish(self, record: IterationRecord, checkpoint_path: str | None, on_iteration: OnIteration | None) -> None:
        record.peak_host_rss_mb, record.peak_device_mb = _peak_rss_mb(), _peak_device_mb(self.device)
        self.history.coefficients = self.coefficients_list()
        self.history.iterations.append(record)
        if checkpoint_path and self.comm.rank == 0:  # every rank holds the same state
            save_checkpoint(checkpoint_path, self.theta, self.alpha if self.track_alpha else None, self.history)
        if on_iteration:
            on_iteration(record, self.history)

    def coefficients_list(self) -> list[list[float]] | None:
        return self.alpha.tolist() if self.track_alpha else None


def _check_plan(plan: VertexPlan, store: VertexStore, objective: Objective) -> None:
    for name in plan.checkpoints:
        if name not in store.names:
            raise ValueError(f"checkpoint {name!r} is not in the store (it holds {store.names})")
    if plan.n_tasks != len(objective.task_names):
        raise ValueError(
            f"the plan was made for {plan.n_tasks} target task(s), the objective has {len(objective.task_names)}"
        )


def materialise(store: VertexStore, coefficients: Tensor, keys: Sequence[str], device, dtype) -> dict[str, Tensor]:
    """theta_p = sum_i coefficients[i, p] * basis_i,p, reading only non-zero terms."""
    params = {}
    for p, key in enumerate(keys):
        acc = torch.zeros(store.shape(key), device=device, dtype=torch.float64)
        for i, name in enumerate(store.names):
            c = float(coefficients[i, p])
            if c != 0.0:
                acc.add_(store.tensor(name, key).to(device=device, dtype=torch.float64), alpha=c)
        params[key] = acc.to(dtype)
    return params


def _describe_selection(names: list[str], chosen: Tensor, blocks: Blocks):
    """Task-wise: the selected names in order; layer-wise: how many blocks each got."""
    if blocks.count == 1:
        return [names[int(i)] for i in chosen[:, 0]]
    counts: dict[str, int] = {}
    for i in chosen.reshape(-1).tolist():
        counts[names[i]] = counts.get(names[i], 0) + 1
    return counts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_device_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _global_norm(grad) -> float:
    return float(torch.sqrt(sum(torch.sum(g.double() ** 2) for g in grad.values())))
