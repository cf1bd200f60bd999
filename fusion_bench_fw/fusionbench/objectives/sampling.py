"""The labelled samples of every objective: each target task's train split, loaded once, and a
fixed, seeded subset of it, preprocessed once into batches (every iteration sees the same
objective)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fusion_bench_fw.core.objective import Batch


@dataclass(frozen=True)
class Sampling:
    """``n_per_task`` samples per task from a seeded permutation of its train split, from position
    ``offset`` on (the hold-out guard's samples follow the objective's: disjoint by construction)."""

    n_per_task: int
    batch_size: int
    seed: int
    offset: int = 0


def load_train_sets(modelpool, targets: Sequence[str]) -> dict[str, Any]:
    """``{task: its training split}`` from the pool, each loaded once, with an error naming the task."""
    train_sets = {}
    for task in targets:
        try:
            train_sets[task] = modelpool.load_train_dataset(task)
        except Exception as exc:
            raise ValueError(
                f"target task {task!r}: cannot load its training split ({type(exc).__name__}: {exc}); "
                "fix modelpool.train_datasets or drop the task from method.targets"
            ) from exc
    return train_sets


def fixed_subset_indices(n_available: int, n_per_task: int, seed: int, task: str, offset: int = 0) -> list[int]:
    """A seeded subset, drawn once per (seed, task) and independent of the other tasks: positions
    ``offset`` to ``offset + n_per_task`` of the task's permutation."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(task.encode()))
    return torch.randperm(n_available, generator=g)[offset : offset + n_per_task].tolist()


def sample_batches(dataset, sampling: Sampling, task: str, make_item: Callable, collate: Callable) -> list[Batch]:
    """The task's fixed subset, each row through ``make_item``, in batches of ``collate``'d items."""
    indices = fixed_subset_indices(len(dataset), sampling.n_per_task, sampling.seed, task, sampling.offset)
    items = [make_item(dataset[i]) for i in indices]
    size = sampling.batch_size
    return [Batch(collate(items[s : s + size]), len(items[s : s + size])) for s in range(0, len(items), size)]
