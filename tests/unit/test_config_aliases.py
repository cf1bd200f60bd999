"""The clip-vit-{b32,b16,l14}_{TA8,TA14,TA20} aliases compose FusionBench's own CLIP pools (and
openclip-vit-{b32,b16,l14}_TA8 its OpenCLIP ones).

Nothing is instantiated, so nothing is downloaded: the configs only name hub repositories.
(The same through the real CLI: tests/integration/test_config_aliases_cli.py.)
"""

from __future__ import annotations

import pytest

ARCHS = {
    "b32": ("clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
    "b16": ("clip-vit-base-patch16", "openai/clip-vit-base-patch16"),
    "l14": ("clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
}
SUITES = {"TA8": ("TA8", 8), "TA14": ("TALL14", 14), "TA20": ("TALL20", 20)}
TA8 = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
TALL14 = TA8 + ["oxford_flowers102", "pcam", "fer2013", "oxford-iiit-pet", "stl10", "cifar100"]
TALL20 = TALL14 + ["cifar10", "food101", "fashion_mnist", "emnist_letters", "kmnist", "rendered-sst2"]
TASKS = {"TA8": TA8, "TA14": TALL14, "TA20": TALL20}


def _model_id(entry):
    """A model entry is a repo id, or a from_pretrained call naming one."""
    if isinstance(entry, str):
        return entry
    return entry["pretrained_model_name_or_path"]


@pytest.fixture(scope="module")
def compose():
    """FusionBench's root config composed in process (with this plugin's search path)."""
    from composed import compose

    return compose


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("suite", list(SUITES))
def test_alias_equals_fusion_bench_config(compose, arch, suite):
    from omegaconf import OmegaConf

    fb_arch, base = ARCHS[arch]
    fb_suite, n = SUITES[suite]
    alias = f"clip-vit-{arch}_{suite}"

    fb_name = (
        f"clip-vit-classification_TA8_{arch.upper()}"
        if (suite == "TA8" and arch != "b32")
        else f"clip-vit-classification_{fb_suite}"
    )
    ours = compose(f"modelpool={alias}", f"taskpool={alias}")
    theirs = compose(
        f"modelpool=CLIPVisionModelPool/{fb_arch}_{fb_suite}", f"taskpool=CLIPVisionModelTaskPool/{fb_name}"
    )
    mp, mp_fb = ours.modelpool, theirs.modelpool
    assert OmegaConf.to_container(mp) == OmegaConf.to_container(mp_fb)
    assert list(mp.models) == ["_pretrained_"] + TASKS[suite]
    assert {_model_id(mp.models[t]) for t in TASKS[suite]} == {f"tanganke/{fb_arch}_{t}" for t in TASKS[suite]}
    assert _model_id(mp.models["_pretrained_"]) == base
    assert list(mp.test_datasets) == TASKS[suite] and list(mp.train_datasets) == TASKS[suite]

    tp, tp_fb = ours.taskpool, theirs.taskpool
    tp_fb.base_model = base  # FusionBench has no B16/L14 variant of its TALL14/20 task pools
    assert OmegaConf.to_container(tp) == OmegaConf.to_container(tp_fb)
    assert list(tp.test_datasets) == TASKS[suite]
    assert tp.base_model == base
    resolved = OmegaConf.to_container(tp, resolve=True)
    assert resolved["clip_model"]["pretrained_model_name_or_path"] == base


@pytest.mark.parametrize("arch", ["B-32", "B-16", "L-14"])
def test_openclip_alias_is_fusion_bench_s_pool_with_the_loader_fix(compose, arch):
    # openclip-vit-{b32,b16,l14}_TA8: FusionBench's OpenCLIP TA8 pools and task pools, the model pool's
    # class swapped for fusion_bench_fw.OpenCLIPVisionModelPool (composed only: no open_clip needed)
    from omegaconf import OmegaConf

    alias = f"openclip-vit-{arch.replace('-', '').lower()}_TA8"
    ours = compose(f"modelpool={alias}", f"taskpool={alias}")
    theirs = compose(
        f"modelpool=OpenCLIPVisionModelPool/ViT-{arch}_TA8", f"taskpool=OpenCLIPVisionModelTaskPool/ViT-{arch}_TA8"
    )
    assert ours.modelpool._target_ == "fusion_bench_fw.OpenCLIPVisionModelPool"
    assert theirs.modelpool._target_ == "fusion_bench.modelpool.OpenCLIPVisionModelPool"
    mp = OmegaConf.to_container(ours.modelpool, resolve=True)
    mp_fb = OmegaConf.to_container(theirs.modelpool, resolve=True)
    assert {k: v for k, v in mp.items() if k != "_target_"} == {k: v for k, v in mp_fb.items() if k != "_target_"}
    assert list(mp["models"]) == ["_pretrained_"] + TA8 and list(mp["classification_heads"]) == TA8
    pretrained = mp["models"]["_pretrained_"]  # B-32: {model_name, pickle_path}; B-16, L-14: a path
    assert (pretrained if isinstance(pretrained, str) else pretrained["pickle_path"]).endswith(
        f"ViT-{arch}/zeroshot.pt"
    )
    assert OmegaConf.to_container(ours.taskpool) == OmegaConf.to_container(theirs.taskpool)
    assert ours.taskpool._target_ == "fusion_bench.taskpool.OpenCLIPVisionModelTaskPool"
