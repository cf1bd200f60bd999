"""Which checkpoints a run starts from, which the LMO may pick, and how many FW-soft takes.

:func:`plan_vertices` decides it once, from names only (cheap: an adapter plans before any
heavy work, so a bad ``k`` fails in seconds) and the solver runs the plan it is given.
:class:`Vertices` is the plan at run time: the stored candidates plus the in-memory init point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import FrankWolfeConfig
from .stores import VertexStore

INIT_VERTEX = "__init__"  # the starting point as a vertex (a combination, not a stored checkpoint)
INITS = ("pretrained", "task_arithmetic", "file", "merging_weights")
INIT_MODELS = ("all", "targets")


def single_checkpoint(coefficients: Mapping[str, float | Sequence[float]]) -> str | None:
    """The checkpoint a combination is, when it has one non-zero term (else None)."""
    support = [n for n, c in coefficients.items() if any(x != 0 for x in _per_tensor(c))]
    return support[0] if len(support) == 1 else None


def start_coefficients(
    init: str,
    candidates: Sequence[str],
    targets: Sequence[str],
    *,
    pretrained: str,
    init_path_checkpoint: str,
    scaling: float,
    members="all",
) -> dict[str, float]:
    """theta_0 over the stored checkpoints: the pretrained model, the model read from init_path (stored as
    ``init_path_checkpoint``), or task
    arithmetic ``pretrained + scaling * sum_i (m_i - pretrained)`` over ``members`` (``all``
    candidates, the ``targets`` among them, or a list of names)."""
    if init == "pretrained":
        return {pretrained: 1.0}
    if init == "file":
        return {init_path_checkpoint: 1.0}
    if init != "task_arithmetic":
        raise ValueError(f"unknown init {init!r}; use one of {INITS}")
    if members == "all":
        chosen = list(candidates)
    elif members == "targets":
        chosen = [t for t in targets if t in candidates]
    else:
        chosen = list(members)
        unknown = [m for m in chosen if m not in candidates]
        if unknown:
            raise ValueError(f"init_models {unknown} are not in the pool {list(candidates)}")
    lam = float(scaling)
    return {pretrained: 1.0 - lam * len(chosen), **{m: lam for m in chosen}}


def _per_tensor(c) -> list[float]:
    return [float(x) for x in c] if isinstance(c, Sequence) else [float(c)]


@dataclass(frozen=True)
class VertexPlan:
    """A run's vertices, by name.

    ``start``: theta_0 as coefficients over stored checkpoints, one number per checkpoint or
    one per tensor (a layer-wise start, as AdaMerging's merging weights give). ``vertices``: the LMO's
    vertices in order (the candidates, then the pretrained checkpoint and the init point
    when the config adds them). ``anchor``: a point scored for the gap but never selected
    (the start, when it is not a vertex), or None. ``k``: how many vertices FW-soft selects
    (None for FW-hard). ``n_tasks``: the number of target tasks ``k`` was planned for.
    """

    candidates: list[str]
    start: dict[str, float | list[float]]
    vertices: list[str]
    anchor: str | None
    k: int | None
    n_tasks: int
    pretrained: str | None = None

    @property
    def checkpoints(self) -> list[str]:
        """Every stored checkpoint the run reads: the start's terms and the stored vertices."""
        names = list(self.start) + [v for v in self.vertices + [self.anchor] if v and v != INIT_VERTEX]
        return list(dict.fromkeys(names))


def plan_vertices(
    candidates: Sequence[str],
    start: Mapping[str, float],
    config: FrankWolfeConfig,
    n_tasks: int,
    pretrained: str | None = None,
) -> VertexPlan:
    """The plan for ``candidates`` from theta_0 = ``start`` under ``config`` (see :class:`VertexPlan`).

    The iterate may keep weight on its starting point (FW-soft on the capped simplex, damped
    steps), so it lives in conv(vertices + start): when the start is no vertex, it becomes the
    gap's anchor, or the gap could go negative and stop a gap_tol run for the wrong reason.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("the pool has no candidate checkpoints to merge")
    vertices = list(candidates)
    if config.include_pretrained_vertex:
        if pretrained is None:
            raise ValueError("include_pretrained_vertex needs the pretrained checkpoint in the store")
        vertices.append(pretrained)
    start_point = single_checkpoint(start)
    if config.include_init_vertex and start_point not in vertices:
        vertices.append(INIT_VERTEX)
    anchor = None
    if INIT_VERTEX not in vertices and start_point not in vertices:
        anchor = start_point if start_point is not None else INIT_VERTEX
    return VertexPlan(
        candidates, dict(start), vertices, anchor, config.selection_size(n_tasks, len(vertices)), n_tasks, pretrained
    )


class Vertices:
    """A plan's vertices at run time: stored checkpoints streamed from the store, the init
    point held in memory, each with its coefficient row over the store's checkpoints."""

    def __init__(self, plan: VertexPlan, store: VertexStore, theta: dict[str, Tensor], alpha: Tensor):
        self.store = store
        self.names = list(plan.vertices)
        self.anchor = plan.anchor
        self._pseudo: dict[str, dict[str, Tensor]] = {}
        self._rows: dict[str, Tensor] = {}
        for name in self.names + ([plan.anchor] if plan.anchor else []):
            if name == INIT_VERTEX:
                self._pseudo[name] = {k: v.clone() for k, v in theta.items()}
                self._rows[name] = alpha.clone()
            else:
                self._rows[name] = torch.zeros_like(alpha)
                self._rows[name][store.names.index(name)] = 1.0

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

    def source(self, name: str) -> str | None:
        """The file a stored vertex is read from (None for the in-memory init point)."""
        return None if name in self._pseudo else self.store.source(name)

    def row(self, name: str) -> Tensor:
        return self._rows[name]
