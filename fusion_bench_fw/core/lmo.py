"""The linear minimisation oracle over a finite vertex set, streamed tensor by tensor.

For a gradient g at the iterate theta and vertices v_i, the LMO is argmin_i <g, v_i>.
It is computed as <g, v_i - theta> (same argmin, better conditioned, and its negated
minimum is directly the Frank-Wolfe gap). Layer-wise granularity is the product of
per-block hulls, so the LMO decomposes into one argmin per block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .distributed import Communicator
from .lora_store import low_rank_dots

LMO_SCORES = ("inner", "cosine")
GRANULARITIES = ("task", "layer")


@dataclass(frozen=True)
class Blocks:
    """Partition of the parameter names into LMO blocks."""

    keys: list[str]
    block_of: dict[str, int]
    names: list[str]

    @property
    def count(self) -> int:
        return len(self.names)

    @classmethod
    def build(cls, keys: Sequence[str], granularity: str) -> Blocks:
        keys = list(keys)
        if granularity == "task":
            return cls(keys, {k: 0 for k in keys}, ["model"])
        if granularity == "layer":
            return cls(keys, {k: i for i, k in enumerate(keys)}, list(keys))
        raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")


@dataclass
class ScoreTable:
    """Per-gradient, per-vertex, per-block scores of one LMO pass.

    ``inner[g, i, b] = sum_{p in b} <grad_g,p, v_i,p - theta_p>`` (float64);
    ``cosine[g, i, b] = sum_{p in b} cos(grad_g,p, v_i,p)`` when requested, with 0/0 := 0
    (the per-tensor cosine with full weights that FusionBench's in-tree FW uses).
    """

    vertex_names: list[str]
    inner: Tensor
    cosine: Tensor | None = None
    # what the pass read: whole vertex tensors ("full"), shared base tensors scored once for
    # all factored vertices ("base"), vertex tensors scored from their factors ("low_rank")
    # or equal to their base ("base_only", scored by the shared term alone)
    reads: dict[str, int] = field(default_factory=dict)

    def scores(self, lmo_score: str) -> Tensor:
        if lmo_score == "inner":
            return self.inner
        if lmo_score == "cosine":
            assert self.cosine is not None, "cosine scores were not computed in this pass"
            return self.cosine
        raise ValueError(f"unknown lmo_score {lmo_score!r}; use one of {LMO_SCORES}")

    def gap(self, gradient_index: int = 0) -> float:
        """Frank-Wolfe gap max_{v in hull} <g, theta - v> summed over blocks."""
        return float(-self.inner[gradient_index].min(dim=0).values.sum())


# Elements per chunk of the CPU dot products: the float32 difference buffer stays in L2
# cache and float32 accumulation error stays negligible; chunk sums add up in float64.
CPU_CHUNK = 1 << 16
# On accelerators one kernel per tensor (launch overhead dominates small chunks; the
# device BLAS reduces in a tree, so float32 accumulation is already accurate).
DEVICE_CHUNK = 1 << 26


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores are formed in float32 at least (bf16/fp16 differences lose too many bits)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _exact_float32_matmul():
    """BLAS dots in true float32: TF32 / reduced-precision settings would spoil the scores."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def chunked_dots(grads: Sequence[Tensor], theta: Tensor, vertex: Tensor, scratch: Tensor, chunk: int) -> Tensor:
    """``[<g, vertex - theta> for g in grads]`` as float64, reading ``vertex`` once.

    All arguments are flat tensors of the work dtype (``vertex`` may be any dtype: it is
    cast chunk by chunk). Per chunk, the difference goes to ``scratch`` (no allocation) and
    each gradient takes one BLAS dot with it; chunk results accumulate in float64.
    """
    n = theta.numel()
    if n == 0:
        return torch.zeros(len(grads), dtype=torch.float64, device=theta.device)
    parts = []
    for begin in range(0, n, chunk):
        stop = min(n, begin + chunk)
        diff = torch.sub(vertex[begin:stop], theta[begin:stop], out=scratch[: stop - begin])
        if len(grads) == 1:
            parts.append(torch.dot(grads[0][begin:stop], diff))
        else:
            parts.append(torch.stack([torch.dot(g[begin:stop], diff) for g in grads]))
    total = torch.stack(parts).to(torch.float64).sum(dim=0)
    return total.reshape(len(grads))


def cosine_terms(grads: Sequence[Tensor], theta: Tensor, scratch: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """``(||g||, <g, theta>)`` per gradient, float64: what the cosine adds to <g, v - theta>."""
    norms = torch.stack([torch.linalg.vector_norm(g).to(torch.float64) for g in grads])
    return norms, chunked_dots(grads, torch.zeros_like(theta), theta, scratch, chunk)


def cosine_from_inner(inner: Tensor, grad_dot_theta: Tensor, grad_norms: Tensor, vertex_norm: Tensor) -> Tensor:
    """cos(g, v) = (<g, v - theta> + <g, theta>) / (||g|| ||v||), with 0/0 := 0."""
    denom = grad_norms * vertex_norm
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, (inner + grad_dot_theta) / safe, torch.zeros_like(denom))


def score_vertices(
    gradients: Sequence[Mapping[str, Tensor]],
    iterate: Mapping[str, Tensor],
    vertex_names: Sequence[str],
    read_vertex: Callable[[str, str], Tensor],
    blocks: Blocks,
    cosine: bool = False,
    read_parts: Callable[[str, str], object] | None = None,
    wanted: Tensor | None = None,
) -> ScoreTable:
    """One streaming pass: for each tensor name, read that tensor of every vertex once.

    Candidate data resident at a time: one vertex tensor as the reader gives it (a
    zero-copy view for memory-mapped stores) plus one chunk of its difference to the
    iterate. Every candidate is read exactly once per pass whatever the number of
    gradients; <g, v - theta> is formed in float32 chunks accumulated in float64 (see
    :func:`chunked_dots`), so it matches a float64 computation to float32 rounding of the
    difference, relative to ||g|| ||v - theta||.

    ``read_parts(name, key)``, when given, may return a vertex tensor in factored form (a
    :class:`~.lora_store.LowRank`, base + s B A): such vertices are scored by
    :func:`_score_factored` without forming them, their shared base read once per tensor.

    ``wanted`` (vertices x blocks, bool), when given, limits the pass to the pairs it marks: the
    others are not read and score 0 (the sketched LMO's exact re-check, :mod:`.sketch`).
    """
    n_grad, n_vert = len(gradients), len(vertex_names)
    device = next(iter(iterate.values())).device
    chunk = CPU_CHUNK if device.type == "cpu" else DEVICE_CHUNK
    inner = torch.zeros(n_grad, n_vert, blocks.count, dtype=torch.float64, device=device)
    cos = torch.zeros(n_grad, n_vert, blocks.count, dtype=torch.float64, device=device) if cosine else None
    largest = max(iterate[k].numel() for k in blocks.keys)
    scratch: dict[torch.dtype, Tensor] = {}
    reads = dict.fromkeys(("full", "base", "low_rank", "base_only"), 0)
    pairs = None if wanted is None else wanted.tolist()
    with torch.no_grad(), _exact_float32_matmul():
        for key in blocks.keys:
            b = blocks.block_of[key]
            work = _work_dtype(iterate[key].dtype)
            if work not in scratch:
                scratch[work] = torch.empty(max(1, min(chunk, largest)), dtype=work, device=device)
            theta = iterate[key].reshape(-1).to(work)
            grads = [g[key].reshape(-1).to(device=device, dtype=work) for g in gradients]
            todo = [i for i in range(n_vert) if pairs is None or pairs[i][b]]
            if not todo:
                continue
            if cosine:
                grad_norms, grad_dot_theta = cosine_terms(grads, theta, scratch[work], chunk)
            factored = {}
            if read_parts is not None:
                factored = {i: p for i in todo if (p := read_parts(vertex_names[i], key)) is not None}
            if factored:
                shared = (grad_norms, grad_dot_theta) if cosine else None
                _score_factored(
                    factored, grads, theta, iterate[key].shape, scratch[work], chunk, inner, cos, b, shared, reads
                )
            reads["full"] += len(todo) - len(factored)
            for i in todo:
                if i in factored:
                    continue
                vertex = read_vertex(vertex_names[i], key).reshape(-1).to(device=device)
                scores = chunked_dots(grads, theta, vertex, scratch[work], chunk)
                inner[:, i, b] += scores
                if cosine:
                    # <g, v> = <g, v - theta> + <g, theta>: no second pass over the vertex
                    v_norm = torch.linalg.vector_norm(vertex.to(work)).to(torch.float64)
                    cos[:, i, b] += cosine_from_inner(scores, grad_dot_theta, grad_norms, v_norm)
                del vertex
    return ScoreTable(list(vertex_names), inner.cpu(), cos.cpu() if cos is not None else None, reads)


def _score_factored(factored, grads, theta, shape, scratch, chunk, inner, cos, b, shared, reads) -> None:
    """Add the scores of vertices given as base + s B A (``factored``: index -> LowRank) to
    ``inner``/``cos`` block ``b``.

    <g, base + s B A - theta> = <g, base - theta> + s <B^T g, A>: the first term once per
    distinct base (one read of it), the second from the factors (:func:`low_rank_dots`).
    Cosine needs ||v||^2 = ||base||^2 + 2 s <base, B A> + ||s B A||^2, from the same reads.
    """
    work = theta.dtype
    groups: dict[object, list[int]] = {}
    for i, part in factored.items():
        groups.setdefault(part.base_id, []).append(i)
    mats = [g.view(shape) for g in grads] if len(shape) == 2 else []
    for members in groups.values():
        base = factored[members[0]].read_base().reshape(-1).to(device=theta.device)
        reads["base"] += 1
        base_scores = chunked_dots(grads, theta, base, scratch, chunk)
        adapted = [i for i in members if factored[i].B is not None]
        reads["low_rank"] += len(adapted)
        reads["base_only"] += len(members) - len(adapted)
        if adapted and not mats:
            raise ValueError(f"a low-rank vertex on a tensor of shape {tuple(shape)}: only matrices can be factored")
        deltas = low_rank_dots(mats, [factored[i] for i in adapted], work).to(inner) if adapted else None
        for i in members:
            inner[:, i, b] += base_scores
        for j, i in enumerate(adapted):
            inner[:, i, b] += deltas[:, j]
        if cos is None:
            continue
        grad_norms, grad_dot_theta = shared
        base_work = base.to(work)
        base_sq = torch.dot(base_work, base_work).to(torch.float64)
        cross = low_rank_dots([base_work.view(shape)], [factored[i] for i in adapted], work)[0] if adapted else None
        for i in members:
            norm_sq = base_sq
            extra = torch.zeros((), dtype=torch.float64)
            if factored[i].B is not None:
                j = adapted.index(i)
                norm_sq = base_sq + 2 * cross[j].to(base_sq) + factored[i].delta_norm_sq()
                extra = deltas[:, j]
            v_norm = torch.sqrt(torch.clamp(norm_sq, min=0.0))
            cos[:, i, b] += cosine_from_inner(base_scores + extra.to(base_scores), grad_dot_theta, grad_norms, v_norm)


def select_hard(scores: Tensor) -> Tensor:
    """Argmin vertex per block: ``scores`` is ``(V, B)``, returns ``(B,)`` indices."""
    return torch.argmin(scores, dim=0)


def select_topk(scores: Tensor, k: int) -> Tensor:
    """The k smallest-scoring vertices per block, best first: returns ``(k, B)``."""
    n = scores.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of vertices ({n})")
    return torch.topk(scores, k, dim=0, largest=False).indices


def select_per_task(scores: Tensor) -> Tensor:
    """FusionBench's in-tree FW-soft rule: one vertex per task gradient, each the best
    not yet picked for that block. ``scores`` is ``(G, V, B)``; returns ``(min(G, V), B)``."""
    n_grad, n_vert, n_block = scores.shape
    k = min(n_grad, n_vert)
    chosen = torch.empty(k, n_block, dtype=torch.long)
    taken = torch.zeros(n_vert, n_block, dtype=torch.bool)
    for j in range(k):
        masked = scores[j].masked_fill(taken, float("inf"))
        pick = torch.argmin(masked, dim=0)
        chosen[j] = pick
        taken[pick, torch.arange(n_block)] = True
    return chosen


def score_vertices_sharded(
    grads,
    theta,
    vertex_names: Sequence[str],
    read_vertex,
    blocks: Blocks,
    cosine: bool,
    comm: Communicator,
    read_parts=None,
    wanted: Tensor | None = None,
) -> ScoreTable:
    """The LMO score pass with the candidates split round-robin over ranks.

    Each rank scores its share with :func:`score_vertices`; the partial tables (zero
    outside the rank's rows) are summed over ranks, so every rank gets the full table and
    takes the same selection as a single process would.
    """
    names = list(vertex_names)
    if not comm.distributed:
        return score_vertices(grads, theta, names, read_vertex, blocks, cosine, read_parts, wanted)
    mine = [i for i in range(len(names)) if comm.owns(i)]
    inner = torch.zeros(len(grads), len(names), blocks.count, dtype=torch.float64)
    cos = torch.zeros_like(inner) if cosine else None
    if mine:
        part = score_vertices(
            grads,
            theta,
            [names[i] for i in mine],
            read_vertex,
            blocks,
            cosine,
            read_parts,
            None if wanted is None else wanted[mine],
        )
        inner[:, mine] = part.inner.to(inner)
        if cosine:
            cos[:, mine] = part.cosine.to(cos)
    tables = comm.sum_tensors({"inner": inner, **({"cosine": cos} if cosine else {})})
    return ScoreTable(names, tables["inner"], tables.get("cosine"))
