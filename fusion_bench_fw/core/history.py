"""A JSON-serialisable record of a Frank-Wolfe run: one entry per iteration."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .atomic import atomic_path


@dataclass
class IterationRecord:
    t: int
    loss: float
    task_losses: dict[str, float]
    grad_norm: float
    gap: float
    step_size: float | None
    # vertex names picked this iteration: hard -> one per block (layer-wise: counts per
    # vertex), soft -> the k selected (task-wise) or counts (layer-wise)
    selected: Any
    # the LMO score of every vertex (task-wise only; layer-wise keeps selections only)
    scores: dict[str, float] | None = None
    inner: dict[str, Any] | None = None
    time_grad_s: float = 0.0
    time_lmo_s: float = 0.0
    time_update_s: float = 0.0
    peak_host_rss_mb: float = 0.0
    peak_device_mb: float | None = None
    # the LMO's choice as indices into RunHistory.vertices: one row per selected vertex (hard: 1,
    # soft: k), one column per block (task-wise: 1; layer-wise: one per tensor of `keys`), so
    # that a layer-wise run's picks can be drawn per layer (`selected` only counts them)
    chosen: list[list[int]] | None = None
    # the hold-out guard's verdict on this step (core.guard): held-out losses, refused vertices and why
    guard: dict[str, Any] | None = None
    # the sketched LMO's (core.sketch) reads, in (vertex, tensor) pairs: "full" re-checked, "sketched"
    # estimated; at its first pass, the checkpoints sketched from a read and those found in the cache
    lmo_reads: dict[str, int] | None = None


@dataclass
class RunHistory:
    variant: str
    config: dict[str, Any]
    tasks: list[str]
    basis: list[str]
    vertices: list[str]
    keys: list[str]
    seed: int | None = None
    iterations: list[IterationRecord] = field(default_factory=list)
    final_loss: float | None = None
    stop_reason: str = ""
    # theta = sum_i coefficients[i][p] * basis_i (per tensor p); None once TIES left the hull
    coefficients: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for record in data["iterations"]:  # a run without the guard or the sketched LMO: as it was before them
            for optional in ("guard", "lmo_reads"):
                if record[optional] is None:
                    del record[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunHistory:
        data = dict(data)
        data["iterations"] = [IterationRecord(**r) for r in data.get("iterations", [])]
        return cls(**data)

    def save(self, path: str) -> None:
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> RunHistory:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def write_json_atomic(data: Any, path: str) -> None:
    """Write JSON through a temporary file and a rename: readers never see half a file."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
