"""The FW objective for CLIP vision pools: zero-shot-head cross-entropy on fixed samples.

Heads come from FusionBench's own CLIP classification code (text tower of the pretrained
CLIP, the task's class names and prompt templates), so the objective is the same
classifier the CLIP task pool evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from fusion_bench.mixins import CLIPClassificationMixin

from fusion_bench_fw.core.objective import Batch, functional_forward

from .sampling import Sampling, sample_batches


class ZeroShotHeads(CLIPClassificationMixin):
    """FusionBench's zero-shot heads of a CLIP pool: after :meth:`setup_zero_shot_classification_head`,
    ``zeroshot_weights[task]``, ``visual_projection``, ``logit_scale_exp`` and ``clip_processor``."""

    def __init__(self, modelpool, fabric):
        self.modelpool = modelpool
        self._fabric_instance = fabric
        self.zeroshot_weights = {}  # the mixin's class-level dict would be shared by every instance


def labelled_batches(dataset, processor, sampling: Sampling, task: str) -> list[Batch]:
    """Preprocess the task's fixed subset once into (pixel_values, labels) batches."""
    from fusion_bench.dataset.image_dataset import ImageClassificationDataset

    def stack(chunk):
        return torch.stack([x for x, _ in chunk]), torch.tensor([int(y) for _, y in chunk])

    return sample_batches(ImageClassificationDataset(dataset, processor), sampling, task, lambda item: item, stack)


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


def clip_batches_and_loss(
    heads: ZeroShotHeads, train_sets: Mapping[str, object], sampling: Sampling
) -> tuple[dict[str, list[Batch]], CLIPZeroShotLoss]:
    """The batches and the loss of the objective on ``train_sets``' tasks (``heads`` set up for them)."""
    targets = list(train_sets)
    heads.setup_zero_shot_classification_head(task_names=targets)
    processor = heads.clip_processor
    batches = {task: labelled_batches(data, processor, sampling, task) for task, data in train_sets.items()}
    loss = CLIPZeroShotLoss(
        {t: heads.zeroshot_weights[t] for t in targets}, heads.visual_projection, heads.logit_scale_exp
    )
    return batches, loss
