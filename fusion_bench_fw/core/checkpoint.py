"""Resumable Frank-Wolfe state in one atomically written safetensors file.

The file holds the iterate theta (``theta/<key>``), the coefficients alpha, the torch RNG
state and, in its metadata, the JSON history. One file means one rename: a run killed at
any instant leaves either the previous complete state or the new one, never a mix.
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor

from .history import RunHistory
from .stores import save_safetensors_atomic

THETA = "theta/"


def save_checkpoint(path: str, theta: dict[str, Tensor], alpha: Tensor | None, history: RunHistory) -> None:
    tensors = {THETA + k: v for k, v in theta.items()}
    if alpha is not None:
        tensors["alpha"] = alpha
    tensors["rng_state"] = torch.get_rng_state()
    save_safetensors_atomic(tensors, path, metadata={"history": json.dumps(history.to_dict())})


def load_checkpoint(path: str) -> tuple[dict[str, Tensor], Tensor | None, RunHistory, Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            history = RunHistory.from_dict(json.loads(f.metadata()["history"]))
            theta = {k[len(THETA) :]: f.get_tensor(k) for k in f.keys() if k.startswith(THETA)}
            alpha = f.get_tensor("alpha") if "alpha" in f.keys() else None
            rng = f.get_tensor("rng_state")
    except Exception as exc:
        raise ValueError(f"cannot resume from {path!r} ({exc}); delete it to start over or set resume=false") from exc
    return theta, alpha, history, rng


RESUMABLE_CHANGES = {"max_iters", "gap_tol"}  # solver settings a resume may change (e.g. to run longer)
RESUMABLE_RECORD_CHANGES = {"world_size"}  # the sharded LMO and objective give the same run on any number of ranks


def check_resumable(saved: RunHistory, fresh: RunHistory, path: str) -> None:
    """Refuse to resume a run whose settings, pool or tasks differ from the saved one."""
    for field in ("variant", "tasks", "basis", "vertices", "keys", "seed"):
        if getattr(saved, field) != getattr(fresh, field):
            raise ValueError(
                f"checkpoint {path!r} was made with a different {field} "
                f"({getattr(saved, field)!r} vs {getattr(fresh, field)!r}); delete it or set resume=false"
            )
    for what, saved_values, fresh_values, ignore in (
        ("settings", saved.config, fresh.config, RESUMABLE_CHANGES),
        ("run options", saved.extra, fresh.extra, RESUMABLE_RECORD_CHANGES),
    ):
        a = {k: v for k, v in saved_values.items() if k not in ignore}
        b = {k: v for k, v in fresh_values.items() if k not in ignore}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            shown = ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in diff)
            raise ValueError(
                f"checkpoint {path!r} was made with other {what} ({shown}); run with the saved values, "
                "delete the checkpoint, or set resume=false"
            )


def checkpoint_exists(path: str | None) -> bool:
    return bool(path) and os.path.exists(path)
