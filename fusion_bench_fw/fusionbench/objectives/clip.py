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


class TestEntropyObjective:
    """AdaMerging's test-time objective, for FW-soft's ``inner_loss=entropy_test``: the entropy
    of the merged tower's zero-shot predictions on a fresh shuffled batch of each target task's
    unlabelled test split, summed over tasks (as FusionBench's AdaMerging does). The batches come
    from FusionBench's own CLIP mixin loaders and the loss is its ``entropy_loss``. Every call
    draws new batches, so losses of two calls are not comparable (``stochastic``)."""

    stochastic = True

    def __init__(self, module, heads: ZeroShotHeads, tasks, batch_size: int, communicator):
        from fusion_bench.method.adamerging.entropy_loss import entropy_loss

        heads.setup_zero_shot_classification_head(task_names=list(tasks))
        self.module = module
        self.task_names = list(tasks)
        self.entropy = entropy_loss
        self.logits = CLIPZeroShotLoss(
            {t: heads.zeroshot_weights[t] for t in tasks}, heads.visual_projection, heads.logit_scale_exp
        ).logits
        self.loaders = {}
        for task in tasks:
            try:
                self.loaders[task] = heads.get_shuffled_test_loader_iter(task, batch_size=batch_size, num_workers=0)
            except Exception as exc:
                raise ValueError(
                    f"target task {task!r}: inner_loss=entropy_test needs its unlabelled test split, which the pool "
                    f"cannot load ({type(exc).__name__}: {exc}); add it to modelpool.test_datasets or use "
                    "method.inner_loss=ce_train"
                ) from exc
        self.comm = communicator

    def _task_losses(self, params) -> dict[str, torch.Tensor]:
        device = next(iter(params.values())).device
        out = {}
        for task in self.task_names:
            images = next(self.loaders[task])[0].to(device)
            out[task] = self.entropy(self.logits(self.module, params, images, task).float())
        return out

    def loss_and_grad(self, params, per_task: bool = False):
        from fusion_bench_fw.core.objective import LossAndGrad

        if per_task:
            raise ValueError("the test-entropy objective only serves FW-soft's inner search (no per-task gradients)")
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        losses = self._task_losses(leaves)
        total = sum(losses.values())
        parts = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        grads = {k: (g if g is not None else torch.zeros_like(v)).float() for (k, v), g in zip(leaves.items(), parts)}
        world = self.comm.world_size  # each rank drew its own batches: average over ranks
        grads = {k: g / world for k, g in self.comm.sum_tensors(grads).items()}
        values = [v / world for v in self.comm.sum_floats([float(v.detach()) for v in losses.values()], total.device)]
        return LossAndGrad(sum(values), dict(zip(self.task_names, values)), [grads])

    @torch.no_grad()
    def loss(self, params) -> float:
        device = next(iter(params.values())).device
        values = self.comm.sum_floats([float(v) for v in self._task_losses(params).values()], device)
        return sum(values) / self.comm.world_size
