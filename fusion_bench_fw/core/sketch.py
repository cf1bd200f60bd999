"""The sketched LMO (``lmo_sketch`` > 0): candidates scored from count sketches, only the best few read.

The exact LMO (:func:`.lmo.score_vertices`) reads every candidate tensor once per iteration, so an
iteration costs a read of the pool. Both of its scores need one unknown per candidate v and tensor
p, <g_p, v_p - theta_p> (the cosine adds <g_p, theta_p>, ||g_p|| and ||v_p||, all known exactly). A
count sketch S of m buckets per tensor (linear, hashed from the tensor's name) estimates it as
<S g_p, S v_p - S theta_p>: unbiased, with an error of the order of ||g_p|| ||v_p - theta_p|| / sqrt(m),
the scale of the task vectors rather than of the weights. S v_p and ||v_p|| are made once per
checkpoint, in one read, and cached in a file keyed by the checkpoint file's path, size and mtime;
S g_p and S theta_p are made in memory every iteration. The ``lmo_recheck`` best candidates of each
block by the estimate are then scored exactly (only their tensors are read) and the selection is
made among them: the others score +inf. With ``lmo_recheck`` >= the number of vertices it is the
exact LMO; with fewer it differs when the exact choice is not among the re-checked
(``benchmarks/lmo_sketch.py`` measures how often).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .distributed import SINGLE_PROCESS, Communicator
from .lmo import (
    CPU_CHUNK,
    DEVICE_CHUNK,
    Blocks,
    ScoreTable,
    _work_dtype,
    cosine_from_inner,
    cosine_terms,
    score_vertices_sharded,
)
from .stores import save_safetensors_atomic
from .vertices import Vertices

log = logging.getLogger(__name__)

SCHEME = 1  # the hash of count_sketch: sketches cached under another scheme are made again
# Elements hashed at a time: on the CPU the int64 temporaries stay in cache (measured fastest);
# on an accelerator fewer, larger kernels.
HASH_CHUNK_CPU = 1 << 14
HASH_CHUNK_DEVICE = 1 << 22
NORMS = "__norms__"  # the cache file's tensor of ||v_p|| (one per tensor, in key order)


def _int64(x: int) -> int:
    """``x`` mod 2^64 as a two's-complement int64: what torch's wrapping int64 arithmetic holds."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


def hash_constants(key: str) -> tuple[int, int]:
    """(a, b) of tensor ``key``'s hash, from its name alone: every process and device agrees."""
    digest = hashlib.sha256(f"fw-lmo-sketch/{SCHEME}/{key}".encode()).digest()
    return _int64(int.from_bytes(digest[:8], "little")), _int64(int.from_bytes(digest[8:16], "little"))


def count_sketch(vectors: Sequence[Tensor], key: str, size: int) -> Tensor:
    """S x for each ``x`` of ``vectors`` (tensor ``key`` of several points): ``(len, size)`` float64.

    Element j adds s(j) x_j to bucket h(j), both from the top 33 bits of (a j + b) mod 2^64
    (multiply-shift hashing: pairwise independent for j < 2^31), computed chunk by chunk and never
    stored, the same on every device. A tensor of at most ``size`` elements is its own sketch (exact).
    """
    flat = [v.reshape(-1) for v in vectors]
    n = flat[0].numel()
    if n <= size:
        return torch.stack([v.to(torch.float64) for v in flat])
    device = flat[0].device
    a, b = hash_constants(key)
    chunk = HASH_CHUNK_CPU if device.type == "cpu" else HASH_CHUNK_DEVICE
    steps = torch.arange(min(chunk, n), device=device) * a
    # each chunk's bucket sums: float32 on the CPU (faster, and deterministic there), float64 on an
    # accelerator (its atomic adds come in any order) or for float64 data; chunks add up in float64
    exact = device.type != "cpu" or any(v.dtype == torch.float64 for v in flat)
    part_dtype = torch.float64 if exact else torch.float32
    out = torch.zeros(len(flat), size, dtype=torch.float64, device=device)
    part = torch.empty(size, dtype=part_dtype, device=device)
    for begin in range(0, n, chunk):
        stop = min(n, begin + chunk)
        x = steps[: stop - begin] + _int64(a * begin + b)  # a j + b, wrapping
        bucket = (((x >> 31) & 0xFFFFFFFF) * size) >> 32  # bits 31..62, onto [0, size)
        negative = x < 0  # bit 63
        for row, v in zip(out, flat):
            values = v[begin:stop].to(part_dtype)
            part.zero_().index_add_(0, bucket, torch.where(negative, -values, values))
            row += part
    return out


class SketchedLMO:
    """The LMO pass of a run with ``lmo_sketch`` > 0 (the module docstring); the first pass makes the
    sketches (or loads them from ``cache_dir``), every pass after reads only the re-checked tensors."""

    def __init__(
        self,
        vertices: Vertices,
        blocks: Blocks,
        config,
        k: int | None,
        cache_dir: str | None = None,
        comm: Communicator = SINGLE_PROCESS,
    ):
        self.vertices, self.blocks, self.comm, self.cache_dir = vertices, blocks, comm, cache_dir
        self.size, self.recheck, self.cosine = config.lmo_sketch, config.lmo_recheck, config.lmo_score == "cosine"
        # the score rows that select, and how many of each row's best to re-check: FW-soft's per-task rule
        # lets the q-th target take the best vertex the q before it left (its q + 1 best), top-k takes k
        if config.per_task_gradients:
            self.depths = {1 + q: max(self.recheck, q + 1) for q in range(k)}
        else:
            self.depths = {0: max(self.recheck, k or 1)}
        shapes = [[key, list(vertices.store.shape(key))] for key in blocks.keys]
        self.layout = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
        self.sketches: dict[str, Tensor] = {}  # key -> (scored vertices, buckets) float32
        self.norms: Tensor | None = None  # (scored vertices, keys) float64

    def score(self, grads: Sequence[Mapping[str, Tensor]], theta: Mapping[str, Tensor], exclude=None) -> ScoreTable:
        """The pass's table: exact scores for the re-checked (vertex, block) pairs, +inf for the others.
        ``exclude`` (selectable vertices x blocks, bool): pairs not to re-check for selection (refused)."""
        made = self.make_sketches(theta) if self.norms is None else {}
        inner, cosine = self.estimate(grads, theta)
        wanted = self.shortlist(cosine if self.cosine else inner, inner[0], exclude)
        v = self.vertices
        table = score_vertices_sharded(
            grads, theta, v.scored, v.read, self.blocks, self.cosine, self.comm, v.parts, wanted
        )
        for scores in (table.inner, table.cosine):
            if scores is not None:
                scores.masked_fill_(~wanted, math.inf)
        table.reads.update(sketched=inner.shape[1] * len(self.blocks.keys), **made)
        return table

    def estimate(self, grads, theta) -> tuple[Tensor, Tensor | None]:
        """Every scored vertex's scores from the sketches: (inner, cosine or None), gradients x vertices x
        blocks, float64 on the CPU. Costs S g and S theta (one hashing of each tensor), no vertex read."""
        device = next(iter(theta.values())).device
        inner = torch.zeros(
            len(grads), len(self.vertices.scored), self.blocks.count, dtype=torch.float64, device=device
        )
        cos = torch.zeros_like(inner) if self.cosine else None
        chunk = CPU_CHUNK if device.type == "cpu" else DEVICE_CHUNK
        with torch.no_grad():
            for p, key in enumerate(self.blocks.keys):
                b = self.blocks.block_of[key]
                work = _work_dtype(theta[key].dtype)
                here = theta[key].reshape(-1).to(work)
                gs = [g[key].reshape(-1).to(device=device, dtype=work) for g in grads]
                sketched = count_sketch([*gs, here], key, self.size)
                est = sketched[:-1] @ (self.sketches[key].to(torch.float64) - sketched[-1]).T
                inner[:, :, b] += est
                if cos is not None:
                    scratch = torch.empty(min(chunk, here.numel()), dtype=work, device=device)
                    grad_norms, grad_dot_theta = cosine_terms(gs, here, scratch, chunk)
                    cos[:, :, b] += cosine_from_inner(
                        est, grad_dot_theta[:, None], grad_norms[:, None], self.norms[:, p]
                    )
        return inner.cpu(), (cos.cpu() if cos is not None else None)

    def shortlist(self, selecting: Tensor, inner0: Tensor, exclude: Tensor | None) -> Tensor:
        """The (vertex, block) pairs to score exactly (scored vertices x blocks, bool): each selecting row's
        best selectable vertices by the estimate (``exclude``'s pairs ranked last), and the ``lmo_recheck``
        best of all by the total gradient's inner estimate (the Frank-Wolfe gap's minimiser)."""
        n_select = len(self.vertices.names)
        wanted = torch.zeros(inner0.shape, dtype=torch.bool)
        for row, depth in self.depths.items():
            scores = selecting[row, :n_select]
            if exclude is not None:
                scores = scores.masked_fill(exclude, math.inf)
            wanted[:n_select].scatter_(0, torch.topk(scores, min(depth, n_select), dim=0, largest=False).indices, True)
        return wanted.scatter_(
            0, torch.topk(inner0, min(self.recheck, len(inner0)), dim=0, largest=False).indices, True
        )

    # ------------------------------------------------------------------ the sketches
    def make_sketches(self, theta) -> dict[str, int]:
        """S v and ||v|| of every scored vertex, shared out over ranks like the exact pass; returns how
        many were made from a read and how many came from the cache."""
        device = next(iter(theta.values())).device
        names, keys = self.vertices.scored, self.blocks.keys
        buckets = {k: min(self.size, math.prod(self.vertices.store.shape(k))) for k in keys}
        sketches = {k: torch.zeros(len(names), buckets[k], dtype=torch.float32, device=device) for k in keys}
        norms = torch.zeros(len(names), len(keys), dtype=torch.float64, device=device)
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # made, cached
        for i, name in enumerate(names):
            if self.comm.owns(i):
                sketch, cached = self._vertex_sketch(name, device)
                for key in keys:
                    sketches[key][i] = sketch[key].to(device)
                norms[i] = sketch[NORMS].to(device)
                counts[int(cached)] += 1
        summed = self.comm.sum_tensors({**sketches, NORMS: norms, "counts": counts})
        self.sketches = {k: summed[k] for k in keys}
        self.norms, counts = summed[NORMS], summed["counts"].tolist()
        return {"sketches_made": int(counts[0]), "sketches_cached": int(counts[1])}

    def _vertex_sketch(self, name: str, device) -> tuple[dict[str, Tensor], bool]:
        """One vertex's sketches and norms (``NORMS``), and whether they came from the cache."""
        source = self.vertices.source(name)
        path = identity = None
        if self.cache_dir is not None and source is not None:
            path, identity = self._cache_entry(source)
            cached = _load(path, identity)
            if cached is not None:
                return cached, True
        sketch, norms = {}, []
        for key in self.blocks.keys:
            t = self.vertices.read(name, key).to(device)
            sketch[key] = count_sketch([t], key, self.size)[0].float()
            norms.append(torch.linalg.vector_norm(t.to(_work_dtype(t.dtype))).to(torch.float64))  # as the exact pass
            del t
        sketch[NORMS] = torch.stack(norms)
        if path is not None:
            os.makedirs(self.cache_dir, exist_ok=True)
            save_safetensors_atomic(sketch, path, metadata={"identity": json.dumps(identity)})
        return sketch, False

    def _cache_entry(self, source: str) -> tuple[str, dict]:
        """The cache file of checkpoint file ``source`` (one per file, sketch size and tensor layout) and
        the identity it must record: a changed checkpoint (size, mtime) is sketched again."""
        fixed = {"path": os.path.realpath(source), "sketch": self.size, "scheme": SCHEME, "tensors": self.layout}
        name = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:24]
        stat = os.stat(source)
        return os.path.join(self.cache_dir, f"{name}.safetensors"), {
            **fixed,
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }


def _load(path: str, identity: dict) -> dict[str, Tensor] | None:
    """The cached sketches at ``path`` if it records ``identity``, else None (missing, stale, unreadable)."""
    if not os.path.exists(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            if json.loads((f.metadata() or {}).get("identity", "null")) != identity:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a damaged cache file is made again
        log.warning("cannot read the cached sketches %s (%s): making them again", path, exc)
        return None
