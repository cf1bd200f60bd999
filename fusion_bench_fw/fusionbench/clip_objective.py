"""The FW objective for CLIP vision pools: zero-shot-head cross-entropy on fixed samples.

Heads come from FusionBench's own CLIP classification code (text tower of the
pretrained CLIP, the task's class names and prompt templates), so the objective is the
same classifier the CLIP task pool evaluates.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fusion_bench_fw.core.objective import Batch, BatchedObjective, functional_forward

from .validation import check_sample_count

log = logging.getLogger(__name__)


def fixed_subset_indices(n_available: int, n_per_task: int, seed: int, task: str) -> list[int]:
    """A seeded subset, drawn once per (seed, task) and independent of the other tasks."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(task.encode()))
    return torch.randperm(n_available, generator=g)[:n_per_task].tolist()


def fixed_subset(n: int, n_per_task: int, seed: int, task: str, allow_fewer: bool = False) -> list[int]:
    """The task's fixed subset of its ``n`` training samples, after the sample-count check."""
    check_sample_count(task, n, n_per_task, allow_fewer)
    return fixed_subset_indices(n, n_per_task, seed, task)


def labelled_batches(
    dataset, processor, n_per_task: int, batch_size: int, seed: int, task: str, allow_fewer: bool = False
) -> list[Batch]:
    """Preprocess the task's fixed subset once into (pixel_values, labels) batches."""
    from fusion_bench.dataset.clip_dataset import CLIPDataset

    wrapped = CLIPDataset(dataset, processor)
    items = [wrapped[i] for i in fixed_subset(len(dataset), n_per_task, seed, task, allow_fewer)]
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = torch.stack([x for x, _ in chunk])
        labels = torch.tensor([int(y) for _, y in chunk])
        batches.append(Batch((images, labels), len(chunk)))
    return batches


class CLIPZeroShotLoss:
    """Cross-entropy of the merged vision tower under frozen zero-shot text heads."""

    def __init__(self, heads: dict[str, torch.Tensor], visual_projection: torch.nn.Module, logit_scale: torch.Tensor):
        self.heads = heads
        self.visual_projection = visual_projection
        self.logit_scale = logit_scale

    def logits(self, module, params, images, task):
        pooled = functional_forward(module, params, pixel_values=images)[1]
        embeds = self.visual_projection(pooled)
        embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        return self.logit_scale * embeds @ self.heads[task].t()

    def __call__(self, module, params, inputs, task):
        images, labels = inputs
        return F.cross_entropy(self.logits(module, params, images, task).float(), labels)


def build_clip_objective(
    algorithm,
    modelpool,
    template: torch.nn.Module,
    targets: Sequence[str],
    n_per_task: int,
    batch_size: int,
    seed: int,
    task_weighting: str,
    autocast_dtype,
    allow_fewer_samples: bool,
) -> BatchedObjective:
    """``algorithm`` is a CLIPClassificationMixin (heads through FusionBench's code)."""
    algorithm.setup_zero_shot_classification_head(task_names=list(targets))
    processor = algorithm.clip_processor
    batches = {}
    for task in targets:
        dataset = modelpool.load_train_dataset(task)
        batches[task] = labelled_batches(dataset, processor, n_per_task, batch_size, seed, task, allow_fewer_samples)
    loss = CLIPZeroShotLoss(
        {t: algorithm.zeroshot_weights[t] for t in targets}, algorithm.visual_projection, algorithm.logit_scale_exp
    )
    device = algorithm.fabric.device
    return BatchedObjective(
        module=template,
        batches=batches,
        batch_loss=loss,
        task_weighting=task_weighting,
        to_device=lambda inputs: tuple(x.to(device) for x in inputs),
        autocast_dtype=autocast_dtype,
    )
