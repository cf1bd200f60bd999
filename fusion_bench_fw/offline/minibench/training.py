"""The mini benchmark's training: the CLIP model it builds, its contrastive pre-training on
captioned images of every source and style, and each task model's fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..tiny_clip import image_embeds, make_clip_model
from .tasks import DIGITS, FASHION, TRANSFORMS

if TYPE_CHECKING:
    from .builder import BuildParams
    from .sources import Sources


def make_model(processor, params: BuildParams):
    """tiny_clip's CLIP (text tower, tokenizer ids) with a wider vision tower, freshly seeded."""
    import torch
    from transformers import CLIPModel

    config = make_clip_model(processor, params.seed).config
    v = config.vision_config
    v.hidden_size, v.num_hidden_layers = params.vision_hidden, params.vision_layers
    v.intermediate_size, v.num_attention_heads = 4 * params.vision_hidden, max(1, params.vision_hidden // 16)
    # a CLIPVisionModel saved alone reports this as its projection size (FusionBench's Surgery reads it)
    v.projection_dim = config.projection_dim
    torch.manual_seed(params.seed)
    return CLIPModel(config)


# Pre-training captions name the source and the style of an image ("a rotated drawing of a
# three."), the way web captions describe a picture, while every task's zero-shot head is built
# from the plain template "a photo of a {class}.". So the pre-trained features separate every
# task's classes in every style (a linear probe on them nearly matches fine-tuning), but the
# zero-shot heads only partly fit: the regime of real CLIP, where fine-tuning is a small move.
SOURCE_WORDS = {"fashion": "product photo", "mnist": "drawing", "digits": "scan"}
STYLE_WORDS = {
    "id": "",
    "inv": "negative ",
    "rot90": "rotated ",
    "rot180": "upside-down ",
    "inv_flip": "mirrored negative ",
}


def pretraining_captions(styles: Sequence[str]) -> list[tuple[str, str, int, str]]:
    """``(source, style, label, caption)`` for every caption the pre-training corpus uses."""
    names = {"fashion": FASHION, "mnist": DIGITS, "digits": DIGITS}
    return [
        (src, style, label, f"a {STYLE_WORDS[style]}{SOURCE_WORDS[src]} of a {c}.")
        for src in SOURCE_WORDS
        for style in styles
        for label, c in enumerate(names[src])
    ]


def pretrain(params: BuildParams, sources: Sources, processor, pixels, progress: bool):
    """Contrastive pre-training; an image's negatives are the captions of its source, all styles."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    # source -> (images, fine labels). Fashion and MNIST: slices no task trains or tests on. The
    # digits: the digits tasks' own train images (sklearn's 1,797 leave no third slice), so the
    # pre-trained model has seen those tasks' train images, captioned with their digit, though
    # never their validation or test images.
    corpus = {
        "fashion": sources.fashion_pre,
        "mnist": sources.mnist_pre,
        "digits": sources.digits_train,
    }
    styles = list(params.pretrain_styles)
    captions = [c for *_, c in pretraining_captions(styles)]
    text_inputs = processor(text=captions, return_tensors="pt", padding=True)
    n_cls = {"fashion": len(FASHION), "mnist": len(DIGITS), "digits": len(DIGITS)}
    offsets, o = {}, 0
    for src in SOURCE_WORDS:  # the caption list's layout: source, then style, then class
        offsets[src] = o
        o += len(styles) * n_cls[src]
    px = {src: torch.stack([pixels(TRANSFORMS[t](x)) for t in styles]) for src, (x, _) in corpus.items()}
    clip = make_model(processor, params)
    gen = torch.Generator().manual_seed(params.seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=params.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.pretrain_lr, total_steps=params.pretrain_steps, pct_start=0.1
    )
    per_source = max(1, params.batch_size // len(corpus))
    clip.train()
    for _ in tqdm(range(params.pretrain_steps), desc="pre-training", disable=not progress, unit="step"):
        txt = F.normalize(clip.text_projection(clip.text_model(**text_inputs)[1]), dim=-1)
        loss = 0.0
        for src, (_x, y) in corpus.items():
            idx = torch.randint(len(y), (per_source,), generator=gen)
            style = torch.randint(len(styles), (per_source,), generator=gen)
            img = image_embeds(clip.vision_model, clip.visual_projection, px[src][style, idx])
            cols = slice(offsets[src], offsets[src] + len(styles) * n_cls[src])
            logits = clip.logit_scale.exp() * img @ txt[cols].t()
            target = style * n_cls[src] + torch.as_tensor(y)[idx]
            loss = loss + F.cross_entropy(logits, target)  # image -> its caption
            present = torch.unique(target)  # caption -> the images that carry it
            match = (target[None, :] == present[:, None]).float()
            logp = torch.log_softmax(logits[:, present].t(), dim=-1)
            loss = loss + (-(logp * match).sum(1) / match.sum(1)).mean()
        opt.zero_grad()
        (loss / len(corpus)).backward()
        opt.step()
        sched.step()
    return clip.eval()


def finetune(pretrained_vision, clip, scale: float, head, x, y, seed: int, params: BuildParams, on_step=None):
    """Full fine-tuning of a copy of the vision tower against a frozen head (AdamW, cosine).
    ``on_step(step, model)``, when given, sees the model after each step (the zoo's snapshots of
    a half-trained model come from inside the run, at no extra cost)."""
    import copy

    import torch
    import torch.nn.functional as F

    vm = copy.deepcopy(pretrained_vision).train().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vm.parameters(), lr=params.finetune_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.finetune_steps)
    for step in range(params.finetune_steps):
        idx = torch.randint(len(y), (params.batch_size,), generator=gen)
        logits = scale * image_embeds(vm, clip.visual_projection, x[idx]) @ head.t()
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, vm)
    return vm.eval().requires_grad_(False)
