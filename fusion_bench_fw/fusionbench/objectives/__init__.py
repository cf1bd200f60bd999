"""The FW objective of a FusionBench model pool, by the pool's kind.

* :mod:`.clip`: CLIP vision pools (zero-shot heads from the pretrained CLIP's text tower);
* :mod:`..openclip`: OpenCLIP vision pools (the Task Arithmetic paper's checkpoints and heads);
* :mod:`.lm`: sequence classification (backbones merged, per-task heads), causal LM and seq2seq pools;
* :mod:`.sampling`: the fixed labelled samples every kind draws its batches from.

Each kind gives its batches and its loss from what it needs (the pool, the loaded train sets,
a heads provider for CLIP); :func:`build_objective` makes them a
:class:`~fusion_bench_fw.core.objective.BatchedObjective`, data-parallel over Fabric's ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fusion_bench_fw.core.objective import BatchedObjective

from ..distributed import fabric_communicator
from .sampling import Sampling

POOL_KINDS = ("clip", "openclip", "sequence_classification", "causal_lm", "seq2seq")


def pool_kind(modelpool) -> str:
    """Which objective a FusionBench model pool gets (by its class)."""
    from fusion_bench.modelpool import (
        CausalLMPool,
        CLIPVisionModelPool,
        GPT2ForSequenceClassificationPool,
        Seq2SeqLMPool,
        SequenceClassificationModelPool,
    )

    from ..modelpool import SequenceClassificationBackbonePool
    from ..openclip import is_openclip_pool

    if isinstance(modelpool, CLIPVisionModelPool):
        return "clip"
    if is_openclip_pool(modelpool):
        return "openclip"  # its own classification heads, images through the encoder's val_preprocess
    if isinstance(modelpool, (GPT2ForSequenceClassificationPool, SequenceClassificationBackbonePool)):
        return "sequence_classification"  # backbones merged, each task's head from load_classifier
    if isinstance(modelpool, CausalLMPool):
        return "causal_lm"
    if isinstance(modelpool, Seq2SeqLMPool):
        return "seq2seq"
    if isinstance(modelpool, SequenceClassificationModelPool):
        raise ValueError(
            "SequenceClassificationModelPool hands out whole models whose task heads differ (label sets), so "
            "no method can merge them as they are; set the pool's _target_ to "
            "fusion_bench_fw.SequenceClassificationBackbonePool (same arguments): the backbones are merged and "
            "each task keeps its own head (taskpool: fusion_bench_fw.fusionbench.lm_taskpool.TextClassificationTaskPool)"
        )
    raise ValueError(
        f"FW-Merging has no objective for model pool {type(modelpool).__name__}; supported: "
        "CLIPVisionModelPool, OpenCLIPVisionModelPool, GPT2ForSequenceClassificationPool, SequenceClassificationBackbonePool, "
        "CausalLMPool, Seq2SeqLMPool"
    )


def build_objective(
    kind: str,
    modelpool,
    template: nn.Module,
    train_sets: Mapping[str, Any],
    sampling: Sampling,
    *,
    fabric,
    task_weighting: str,
    autocast_dtype,
) -> BatchedObjective:
    """The objective of a pool of ``kind`` (:func:`pool_kind`) on ``train_sets``' tasks."""
    device = fabric.device
    if kind == "clip":
        from .clip import ZeroShotHeads, clip_batches_and_loss

        batches, loss = clip_batches_and_loss(ZeroShotHeads(modelpool, fabric), train_sets, sampling)
    elif kind == "openclip":
        from ..openclip import openclip_batches_and_loss

        batches, loss = openclip_batches_and_loss(modelpool, fabric, train_sets, sampling)
    else:
        from .lm import lm_batches_and_loss

        batches, loss = lm_batches_and_loss(kind, modelpool, template, train_sets, sampling, device)
    return BatchedObjective(
        module=template,
        batches=batches,
        batch_loss=loss,
        task_weighting=task_weighting,
        to_device=lambda inputs: _to_device(inputs, device),
        autocast_dtype=autocast_dtype,
        communicator=fabric_communicator(fabric),
    )


# why a run with FW-soft's entropy inner loss needs a CLIP pool (refused before anything is read)
ENTROPY_NEEDS_CLIP = (
    "inner_loss=entropy_test (AdaMerging-style test-time entropy on the CLIP task pool's test batches; "
    "use method.inner_loss=ce_train elsewhere)"
)


def build_inner_objective(modelpool, template: nn.Module, targets, *, fabric, batch_size: int):
    """FW-soft's ``inner_loss=entropy_test`` objective (:class:`.clip.TestEntropyObjective`): CLIP pools
    only (:data:`ENTROPY_NEEDS_CLIP`)."""
    from .clip import TestEntropyObjective, ZeroShotHeads

    return TestEntropyObjective(
        template, ZeroShotHeads(modelpool, fabric), targets, batch_size, fabric_communicator(fabric)
    )


def _to_device(inputs, device):
    """A batch's tensors on ``device``: a tuple (CLIP: images, labels) or a dict (token batches)."""
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return tuple(x.to(device) for x in inputs)
