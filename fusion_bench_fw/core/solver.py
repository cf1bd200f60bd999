"""The Frank-Wolfe merging loop (FW-hard and FW-soft), independent of FusionBench.

Constraint set: the convex hull of the candidate checkpoints (task-wise), or the product
of per-tensor hulls (layer-wise). Each iteration: gradient of the objective at the
current merge, one streaming LMO pass over the candidates, then

* hard: theta <- theta + gamma_t * MergeFn(s_t - theta) toward the single argmin s_t;
* soft: the top-k vertices' step weights lambda are optimised on the same objective by
  projected gradient on the (capped) simplex, theta <- theta + sum_j lambda_j (s_j - theta).

The iterate is also tracked as coefficients over the stored checkpoints (``basis``),
theta_p = sum_i alpha[i, p] * basis_i,p, so a merge is reproducible from alpha alone.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import check_resumable, checkpoint_exists, load_checkpoint, save_checkpoint
from .distributed import SINGLE_PROCESS, Communicator
from .history import IterationRecord, RunHistory
from .lmo import (
    GRANULARITIES,
    LMO_SCORES,
    Blocks,
    ScoreTable,
    score_vertices,
    select_hard,
    select_per_task,
    select_topk,
)
from .merge_fns import MERGE_FNS, TIES_DISJOINT, task_arithmetic_direction, ties_direction, trim_threshold
from .objective import Objective
from .simplex import project_box, project_capped_simplex, project_simplex
from .steps import check_step_rule, golden_section_search, scheduled_step
from .stores import VertexStore

log = logging.getLogger(__name__)

INIT_VERTEX = "__init__"
SOFT_SELECTS = ("topk", "per_task")
SOFT_CONSTRAINTS = ("capped_simplex", "simplex_selected", "box", "none")
INNER_OPTIMIZERS = ("adam", "sgd")
TRIM_SCOPES = ("per_tensor", "global")


@dataclass
class FrankWolfeConfig:
    variant: str = "hard"
    granularity: str = "layer"
    lmo_score: str = "inner"
    max_iters: int = 10
    gap_tol: float | None = None
    step_rule: str = "fw_default"
    step_scale: float = 1.0
    line_search_evals: int = 8
    merge_fn: str = "task_arithmetic"
    ties_density: float = 0.2
    ties_trim_scope: str = "per_tensor"
    ties_disjoint: str = "sum"
    include_init_vertex: bool = True
    include_pretrained_vertex: bool = False
    # FW-soft
    k: int | None = None
    soft_select: str = "topk"
    soft_constraint: str = "capped_simplex"
    coef_granularity: str = "layer"
    inner_steps: int = 100
    inner_lr: float = 0.01
    inner_optimizer: str = "adam"
    inner_init: float | None = None

    def validate(self) -> None:
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; use one of {tuple(options)}")

        choice("variant", self.variant, ("hard", "soft"))
        choice("granularity", self.granularity, GRANULARITIES)
        choice("coef_granularity", self.coef_granularity, GRANULARITIES)
        choice("lmo_score", self.lmo_score, LMO_SCORES)
        choice("merge_fn", self.merge_fn, MERGE_FNS)
        choice("ties_trim_scope", self.ties_trim_scope, TRIM_SCOPES)
        choice("ties_disjoint", self.ties_disjoint, TIES_DISJOINT)
        choice("soft_select", self.soft_select, SOFT_SELECTS)
        choice("soft_constraint", self.soft_constraint, SOFT_CONSTRAINTS)
        choice("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        check_step_rule(self.step_rule, self.step_scale)
        if not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"max_iters must be a positive integer, got {self.max_iters!r}")
        if self.gap_tol is not None and not self.gap_tol >= 0:
            raise ValueError(f"gap_tol must be >= 0 or null, got {self.gap_tol!r}")
        if not 0 < self.ties_density <= 1:
            raise ValueError(f"ties_density must be in (0, 1], got {self.ties_density!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer or null, got {self.k!r}")
        if self.variant == "soft":
            if self.merge_fn != "task_arithmetic":
                raise ValueError("FW-soft optimises its own step weights; merge_fn must be task_arithmetic")
            if not isinstance(self.inner_steps, int) or self.inner_steps < 0:
                raise ValueError(f"inner_steps must be a non-negative integer, got {self.inner_steps!r}")
            if not self.inner_lr > 0:
                raise ValueError(f"inner_lr must be positive, got {self.inner_lr!r}")
            if self.inner_init is not None and not 0 <= self.inner_init <= 1:
                raise ValueError(f"inner_init must be in [0, 1] or null, got {self.inner_init!r}")


def lmo_vertex_names(
    candidates: Sequence[str],
    init_coefficients: Mapping[str, float],
    config: FrankWolfeConfig,
    pretrained: str | None = None,
) -> list[str]:
    """The LMO's vertices in order: the candidates, then the pretrained checkpoint and the
    init point (:data:`INIT_VERTEX`) when the config adds them (the init only if it is not
    already a single vertex). Cheap, so adapters can check ``k`` before any heavy work."""
    names = list(candidates)
    if config.include_pretrained_vertex and pretrained is not None:
        names.append(pretrained)
    if config.include_init_vertex and single_checkpoint(init_coefficients) not in names:
        names.append(INIT_VERTEX)
    return names


def single_checkpoint(coefficients: Mapping[str, float]) -> str | None:
    """The checkpoint a combination is, when it has one non-zero term (else None)."""
    support = [n for n, c in coefficients.items() if c != 0]
    return support[0] if len(support) == 1 else None


def effective_k(config: FrankWolfeConfig, n_tasks: int, n_vertices: int) -> int | None:
    """FW-soft's number of selected vertices (null k = number of target tasks)."""
    if config.variant != "soft":
        return config.k
    if config.soft_select == "per_task" or config.k is None:
        return min(n_tasks, n_vertices)
    if config.k > n_vertices:
        raise ValueError(
            f"k={config.k} is larger than the number of vertices in the pool ({n_vertices}); lower method.k"
        )
    return config.k


@dataclass
class FrankWolfeResult:
    params: dict[str, Tensor]
    history: RunHistory
    coefficients: Tensor | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_device_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _global_norm(grad: Mapping[str, Tensor]) -> float:
    return float(torch.sqrt(sum(torch.sum(g.double() ** 2) for g in grad.values())))


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


def score_vertices_sharded(
    grads,
    theta,
    vertex_names: Sequence[str],
    read_vertex,
    blocks: Blocks,
    cosine: bool,
    comm: Communicator,
    read_parts=None,
) -> ScoreTable:
    """The LMO score pass with the candidates split round-robin over ranks.

    Each rank scores its share with :func:`score_vertices`; the partial tables (zero
    outside the rank's rows) are summed over ranks, so every rank gets the full table and
    takes the same selection as a single process would.
    """
    names = list(vertex_names)
    if not comm.distributed:
        return score_vertices(grads, theta, names, read_vertex, blocks, cosine=cosine, read_parts=read_parts)
    mine = [i for i in range(len(names)) if comm.owns(i)]
    inner = torch.zeros(len(grads), len(names), blocks.count, dtype=torch.float64)
    cos = torch.zeros_like(inner) if cosine else None
    if mine:
        part = score_vertices(
            grads, theta, [names[i] for i in mine], read_vertex, blocks, cosine=cosine, read_parts=read_parts
        )
        inner[:, mine] = part.inner.to(inner)
        if cosine:
            cos[:, mine] = part.cosine.to(cos)
    tables = comm.sum_tensors({"inner": inner, **({"cosine": cos} if cosine else {})})
    return ScoreTable(names, tables["inner"], tables.get("cosine"))


class _Vertices:
    """Candidates streamed from the store plus in-memory pseudo-vertices (the init point)."""

    def __init__(self, store: VertexStore, candidates: Sequence[str], n_keys: int):
        self.store = store
        self._n_keys = n_keys
        self._pseudo: dict[str, dict[str, Tensor]] = {}
        self._rows: dict[str, Tensor] = {}
        self.names: list[str] = []
        self.anchor: str | None = None  # scored for the gap, never selected
        for name in candidates:
            self.add_stored(name)

    def add_stored(self, name: str) -> None:
        row = torch.zeros(len(self.store.names), self._n_keys, dtype=torch.float64)
        row[self.store.names.index(name)] = 1.0
        self.names.append(name)
        self._rows[name] = row

    def add_pseudo(self, name: str, params: dict[str, Tensor], row: Tensor) -> None:
        self.names.append(name)
        self._pseudo[name] = params
        self._rows[name] = row

    def add_anchor(self, name: str, params: dict[str, Tensor] | None = None) -> None:
        """A point scored for the gap but never selected (the start the iterate may keep weight on)."""
        self.anchor = name
        if params is not None:
            self._pseudo[name] = params

    @property
    def scored(self) -> list[str]:
        """The LMO's vertices, then the gap-only anchor if any."""
        return self.names + ([self.anchor] if self.anchor else [])

    def read(self, name: str, key: str) -> Tensor:
        if name in self._pseudo:
            return self._pseudo[name][key]
        return self.store.tensor(name, key)

    def parts(self, name: str, key: str):
        """The stored vertex's factored form (LoRA candidates), None for whole tensors."""
        return None if name in self._pseudo else self.store.parts(name, key)

    def row(self, name: str) -> Tensor:
        return self._rows[name]


def frank_wolfe(
    objective: Objective,
    store: VertexStore,
    candidates: Sequence[str],
    init_coefficients: Mapping[str, float],
    config: FrankWolfeConfig,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_iteration: Callable[[IterationRecord, RunHistory], None] | None = None,
    progress: bool = True,
    seed: int | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
    communicator: Communicator = SINGLE_PROCESS,
) -> FrankWolfeResult:
    """Run FW-hard or FW-soft and return the merged tensors, the history and alpha.

    ``store`` holds every checkpoint the merge may read (pretrained, candidates, an
    explicit init); ``candidates`` are the LMO's vertices; ``init_coefficients`` gives
    theta_0 as a combination of stored checkpoints (e.g. {pretrained: 1} or task
    arithmetic {pretrained: 1 - n*lam, m_i: lam}); ``pretrained`` names theta_0 in the
    store (needed only for ``include_pretrained_vertex``). Nothing in the store is modified.

    With ``checkpoint_path`` the state is saved atomically after every iteration; with
    ``resume`` a run restarts from that file and ends exactly as an uninterrupted run.

    With a multi-process ``communicator`` the LMO pass is sharded over ranks (the
    objective shards its own batches); give every rank the same ``checkpoint_path``: all
    of them resume from it, only rank 0 writes it.
    """
    config.validate()
    device = torch.device(device)
    candidates = list(candidates)
    if not candidates:
        raise ValueError("the pool has no candidate checkpoints to merge")
    for name in list(candidates) + list(init_coefficients):
        if name not in store.names:
            raise ValueError(f"checkpoint {name!r} is not in the store (it holds {store.names})")
    keys = list(store.keys)
    blocks = Blocks.build(keys, config.granularity)
    basis = list(store.names)

    alpha = torch.zeros(len(basis), len(keys), dtype=torch.float64)
    for name, c in init_coefficients.items():
        alpha[basis.index(name)] = float(c)
    theta = materialise(store, alpha, keys, device, dtype)

    if config.include_pretrained_vertex and (pretrained is None or pretrained not in basis):
        raise ValueError("include_pretrained_vertex needs the pretrained checkpoint in the store")
    vertices = _Vertices(store, candidates, len(keys))
    for name in lmo_vertex_names(candidates, init_coefficients, config, pretrained)[len(candidates) :]:
        if name == INIT_VERTEX:
            vertices.add_pseudo(INIT_VERTEX, {k: v.clone() for k, v in theta.items()}, alpha.clone())
        else:
            vertices.add_stored(name)
    start_point = single_checkpoint(init_coefficients)
    if INIT_VERTEX not in vertices.names and start_point not in vertices.names:
        # The iterate may keep weight on its starting point (FW-soft on the capped simplex, damped
        # steps), so it lives in conv(vertices + start): the gap is taken over that set, or it can
        # go negative and stop a gap_tol run for the wrong reason. The start is scored, never picked.
        if start_point is not None:
            vertices.add_anchor(start_point)  # a stored checkpoint (e.g. the pretrained model)
        else:
            vertices.add_anchor(INIT_VERTEX, {k: v.clone() for k, v in theta.items()})
    k = effective_k(config, len(objective.task_names), len(vertices.names))
    track_alpha = config.merge_fn == "task_arithmetic"

    history = RunHistory(
        variant=config.variant,
        config={**asdict(config), "k_effective": k},
        tasks=list(objective.task_names),
        basis=basis,
        vertices=list(vertices.names),
        keys=keys,
        seed=seed,
    )
    cosine = config.lmo_score == "cosine"
    per_task_grads = config.variant == "soft" and config.soft_select == "per_task"

    start = 0
    history.stop_reason = "max_iters"
    if resume and checkpoint_exists(checkpoint_path):
        saved_theta, saved_alpha, saved, rng = load_checkpoint(checkpoint_path)
        check_resumable(saved, history, checkpoint_path)
        theta = {k: saved_theta[k].to(device=device, dtype=dtype) for k in keys}
        if saved_alpha is not None:
            alpha.copy_(saved_alpha)
        torch.set_rng_state(rng)
        history.iterations = saved.iterations
        start = len(saved.iterations)
        if saved.stop_reason.startswith("gap"):
            history.stop_reason, start = saved.stop_reason, config.max_iters
        log.info("resuming FW-%s from %s after %d iteration(s)", config.variant, checkpoint_path, start)

    def finish_iteration(record: IterationRecord) -> None:
        history.coefficients = alpha.tolist() if track_alpha else None
        history.iterations.append(record)
        if checkpoint_path and communicator.rank == 0:  # every rank holds the same state
            save_checkpoint(checkpoint_path, theta, alpha if track_alpha else None, history)
        if on_iteration:
            on_iteration(record, history)

    bar = tqdm(
        range(start, config.max_iters),
        desc=f"FW-{config.variant}",
        disable=not progress,
        initial=start,
        total=config.max_iters,
    )
    for t in bar:
        t0 = time.perf_counter()
        lg = objective.loss_and_grad(theta, per_task=per_task_grads)
        if per_task_grads:
            total = {key: sum(g[key] for g in lg.grads) for key in keys}
            grads = [total] + lg.grads
        else:
            grads = lg.grads
        _sync(device)
        t1 = time.perf_counter()
        table = score_vertices_sharded(
            grads, theta, vertices.scored, vertices.read, blocks, cosine, communicator, vertices.parts
        )
        t2 = time.perf_counter()
        gap = table.gap(0)
        scores = table.scores(config.lmo_score)[:, : len(vertices.names)]  # the anchor is never selected
        record = IterationRecord(
            t=t,
            loss=lg.loss,
            task_losses=lg.task_losses,
            grad_norm=_global_norm(grads[0]),
            gap=gap,
            step_size=None,
            selected=None,
            scores=({n: float(scores[0, i, 0]) for i, n in enumerate(vertices.names)} if blocks.count == 1 else None),
            time_grad_s=t1 - t0,
            time_lmo_s=t2 - t1,
        )
        del grads, lg
        if config.gap_tol is not None and gap <= config.gap_tol:
            history.stop_reason = f"gap {gap:.3g} <= gap_tol {config.gap_tol}"
            record.peak_host_rss_mb, record.peak_device_mb = _peak_rss_mb(), _peak_device_mb(device)
            finish_iteration(record)
            break

        if config.variant == "hard":
            chosen = select_hard(scores[0])
            gamma = _hard_update(objective, theta, vertices, blocks, chosen, t, config, alpha if track_alpha else None)
            record.step_size = gamma
            record.selected = _describe_selection(vertices.names, chosen.unsqueeze(0), blocks)
            record.chosen = chosen.unsqueeze(0).tolist()
        else:
            chosen = select_per_task(scores[1:]) if per_task_grads else select_topk(scores[0], k)
            record.inner = _soft_update(objective, theta, vertices, blocks, chosen, t, config, alpha, record.loss)
            record.selected = _describe_selection(vertices.names, chosen, blocks)
            record.chosen = chosen.tolist()
        _sync(device)
        record.time_update_s = time.perf_counter() - t2
        record.peak_host_rss_mb, record.peak_device_mb = _peak_rss_mb(), _peak_device_mb(device)
        bar.set_postfix(loss=f"{record.loss:.4f}", gap=f"{gap:.3g}")
        log.info("FW-%s t=%d loss=%.5f gap=%.4g selected=%s", config.variant, t, record.loss, gap, record.selected)
        finish_iteration(record)

    history.final_loss = objective.loss(theta)
    history.coefficients = alpha.tolist() if track_alpha else None
    return FrankWolfeResult(theta, history, alpha if track_alpha else None)


def _describe_selection(names: list[str], chosen: Tensor, blocks: Blocks):
    """Task-wise: the selected names in order; layer-wise: how many blocks each got."""
    if blocks.count == 1:
        return [names[int(i)] for i in chosen[:, 0]]
    counts: dict[str, int] = {}
    for i in chosen.reshape(-1).tolist():
        counts[names[i]] = counts.get(names[i], 0) + 1
    return counts


def _hard_update(objective, theta, vertices: _Vertices, blocks: Blocks, chosen, t, config, alpha) -> float:
    keys = blocks.keys
    with torch.no_grad():
        direction = {}
        for key in keys:
            name = vertices.names[int(chosen[blocks.block_of[key]])]
            direction[key] = task_arithmetic_direction(theta[key], [vertices.read(name, key)], [1.0])
        if config.merge_fn == "ties":
            if config.ties_trim_scope == "global":
                tau = trim_threshold(torch.cat([d.reshape(-1) for d in direction.values()]), config.ties_density)
                thresholds = [tau]
            else:
                thresholds = None
            for key in keys:
                # one direction: TIES reduces to magnitude trimming of s - theta
                direction[key] = ties_direction(
                    torch.zeros_like(direction[key]),
                    [direction[key]],
                    [1.0],
                    config.ties_density,
                    config.ties_disjoint,
                    thresholds,
                )
        gamma = scheduled_step(config.step_rule, t, config.step_scale)
        if config.step_rule == "line_search":
            phi = lambda g: objective.loss({k: theta[k] + g * direction[k] for k in keys})  # noqa: E731
            gamma, _ = golden_section_search(phi, gamma, config.line_search_evals)
        for p, key in enumerate(keys):
            theta[key].add_(direction[key], alpha=gamma)
            if alpha is not None:
                name = vertices.names[int(chosen[blocks.block_of[key]])]
                alpha[:, p].mul_(1.0 - gamma).add_(vertices.row(name)[:, p], alpha=gamma)
    return gamma


def _project(lam: Tensor, constraint: str) -> Tensor:
    if constraint == "capped_simplex":
        return project_capped_simplex(lam)
    if constraint == "simplex_selected":
        return project_simplex(lam)
    if constraint == "box":
        return project_box(lam)
    return lam


def _soft_update(objective, theta, vertices: _Vertices, blocks: Blocks, chosen, t, config, alpha, loss_here) -> dict:
    """Optimise the step weights lambda (k x columns) of the selected vertices by
    projected gradient on the labelled objective, then move theta.

    d f / d lambda_{j,c} = sum_{p in column c} <grad_p, s_{j,p} - theta_p>, so each inner
    step costs one gradient of the objective and k inner products, no extra graph.
    """
    keys = blocks.keys
    k = chosen.shape[0]
    n_cols = 1 if config.coef_granularity == "task" else len(keys)
    col_of = {key: (0 if n_cols == 1 else p) for p, key in enumerate(keys)}
    with torch.no_grad():
        deltas = []  # deltas[j][key] = s_j - theta (k models resident: constant in N)
        for j in range(k):
            deltas.append(
                {
                    key: vertices.read(vertices.names[int(chosen[j, blocks.block_of[key]])], key).to(theta[key])
                    - theta[key]
                    for key in keys
                }
            )
    init = config.inner_init if config.inner_init is not None else 1.0 / (k + 1)
    if config.soft_constraint == "simplex_selected" and config.inner_init is None:
        init = 1.0 / k
    lam = _project(torch.full((k, n_cols), float(init), dtype=torch.float64), config.soft_constraint)
    lam.requires_grad_(True)
    optimiser = (
        torch.optim.Adam([lam], lr=config.inner_lr)
        if config.inner_optimizer == "adam"
        else torch.optim.SGD([lam], lr=config.inner_lr)
    )

    def combine(weights: Tensor) -> dict[str, Tensor]:
        w = weights.detach().to(torch.float32)
        out = {}
        for key in keys:
            acc = theta[key].clone()
            for j in range(k):
                acc.add_(deltas[j][key], alpha=float(w[j, col_of[key]]))
            out[key] = acc
        return out

    # staying put (lambda = 0) is feasible for every constraint but simplex_selected
    best_loss, best_lam = (
        (loss_here, torch.zeros_like(lam.detach()))
        if config.soft_constraint != "simplex_selected"
        else (float("inf"), None)
    )
    trace = []
    for _ in range(config.inner_steps):
        lg = objective.loss_and_grad(combine(lam))
        trace.append(lg.loss)
        if lg.loss < best_loss:
            best_loss, best_lam = lg.loss, lam.detach().clone()
        # one BLAS dot per (vertex, tensor) on the compute device, one transfer per step
        g = lg.grads[0]
        grad = torch.zeros(lam.shape, dtype=torch.float64, device=g[keys[0]].device)
        for key in keys:
            flat = g[key].reshape(-1).float()
            for j in range(k):
                grad[j, col_of[key]] += torch.dot(flat, deltas[j][key].reshape(-1).float()).double()
        optimiser.zero_grad()
        lam.grad = grad.cpu()
        optimiser.step()
        with torch.no_grad():
            lam.copy_(_project(lam, config.soft_constraint))
    final_loss = objective.loss(combine(lam))
    trace.append(final_loss)
    if final_loss < best_loss or best_lam is None:
        best_loss, best_lam = final_loss, lam.detach().clone()

    with torch.no_grad():
        w = best_lam.to(torch.float32)
        for p, key in enumerate(keys):
            c = col_of[key]
            for j in range(k):
                theta[key].add_(deltas[j][key], alpha=float(w[j, c]))
            total = float(best_lam[:, c].sum())
            alpha[:, p].mul_(1.0 - total)
            for j in range(k):
                name = vertices.names[int(chosen[j, blocks.block_of[key]])]
                alpha[:, p].add_(vertices.row(name)[:, p], alpha=float(best_lam[j, c]))
    return {
        "loss_start": loss_here,
        "loss_best": best_loss,
        "trace": trace,
        "lambda_sum_mean": float(best_lam.sum(dim=0).mean()),
        "lambda": best_lam.mean(dim=1).tolist() if n_cols > 1 else best_lam[:, 0].tolist(),
    }
