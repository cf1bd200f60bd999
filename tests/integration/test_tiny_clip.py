"""The tiny offline CLIP pool's builder: format, determinism, and that fine-tuning helped.

Every test here builds its own pool (``built``); the other tests use the committed copy
(``tests/data/tiny_clip_pool``, the ``tiny_clip_root`` fixture), whose bytes do not depend on
the CPU. What a build's bytes depend on is measured in ``docs/reliability.md``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fusion_bench_fw.offline import tiny_clip


def _safetensors_hashes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.safetensors"))
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh build of the default pool (one torch thread, as the builder sets): (root, manifest)."""
    root = tmp_path_factory.mktemp("tiny_clip_build")
    return root, tiny_clip.build_tiny_clip_pool(root)


@pytest.fixture(scope="module")
def tiny_clip_root(built) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def tiny_clip_manifest(built) -> dict:
    return built[1]


def test_layout_and_data_format(tiny_clip_root, tiny_clip_manifest):
    from datasets import ClassLabel, load_from_disk

    m = tiny_clip_manifest
    assert list(m["tasks"]) == list(tiny_clip.DEFAULT_TASKS)
    assert list(m["irrelevant"]) == ["tiny_colors_permuted"]
    assert (tiny_clip_root / "models" / "_pretrained_" / "config.json").is_file()
    assert (tiny_clip_root / "models" / "_pretrained_" / "tokenizer.json").is_file()
    for name, entry in {**m["tasks"], **m["irrelevant"]}.items():
        assert (tiny_clip_root / entry["model"] / "model.safetensors").is_file()
        for split in ("train", "val", "test"):
            n = m["params"][f"n_{split}"]
            assert m["splits"][name][split] == n
            ds = load_from_disk(str(tiny_clip_root / entry["data"] / split))
            assert len(ds) == n
            assert isinstance(ds.features["label"], ClassLabel)
            assert ds.features["label"].names == entry["classnames"]
            assert sorted(set(ds["label"])) == list(range(len(entry["classnames"])))  # all classes present
            assert ds[0]["image"].size == (tiny_clip.IMAGE_SIZE, tiny_clip.IMAGE_SIZE)
    # the manifest hashes are those of the files
    assert {k: v for k, v in m["files"].items() if v} == _safetensors_hashes(tiny_clip_root)


def test_rebuild_is_skipped_when_the_manifest_matches(tiny_clip_root, tiny_clip_manifest):
    weights = tiny_clip_root / "models" / "tiny_colors" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = tiny_clip.build_tiny_clip_pool(tiny_clip_root)
    assert again == tiny_clip_manifest
    assert weights.stat().st_mtime_ns == before


def test_build_is_deterministic_on_one_machine(tiny_clip_root, tmp_path):
    # a second build, from scratch in another folder, writes bit-identical weights (on another
    # CPU the float kernels round otherwise and the weights differ: docs/reliability.md)
    tiny_clip.build_tiny_clip_pool(tmp_path / "again")
    first, second = _safetensors_hashes(tiny_clip_root), _safetensors_hashes(tmp_path / "again")
    assert len(first) == 1 + len(tiny_clip.DEFAULT_TASKS) + 1
    assert first == second


def test_data_is_the_committed_pools_on_any_machine(tiny_clip_root, repo_root):
    """The images and labels come from NumPy's seeded generator, not from float kernels: a build
    anywhere gives the committed pool's data (decoded pixels and labels compared)."""
    import numpy as np
    from datasets import load_from_disk

    committed = repo_root / "tests" / "data" / "tiny_clip_pool"
    folders = sorted(p.relative_to(committed) for p in (committed / "data").glob("*/*"))
    assert len(folders) == 3 * (len(tiny_clip.DEFAULT_TASKS) + 1)  # train, val, test
    for rel in folders:
        ours, theirs = load_from_disk(str(tiny_clip_root / rel)), load_from_disk(str(committed / rel))
        assert ours["label"] == theirs["label"], rel
        assert ours.features == theirs.features, rel
        for a, b in zip(ours["image"], theirs["image"]):
            assert np.array_equal(np.asarray(a), np.asarray(b)), rel


def test_other_parameters_rebuild(tmp_path):
    small = dict(n_train=8, n_test=4, n_pretrain=16, pretrain_steps=2, finetune_steps=1, irrelevant=0)
    m1 = tiny_clip.build_tiny_clip_pool(tmp_path, tasks=["tiny_sizes"], **small)
    assert list(m1["tasks"]) == ["tiny_sizes"] and m1["irrelevant"] == {}
    m2 = tiny_clip.build_tiny_clip_pool(tmp_path, tasks=["tiny_sizes"], seed=1, **small)
    assert m2["params"]["seed"] == 1
    assert m1["files"]["models/tiny_sizes/model.safetensors"] != m2["files"]["models/tiny_sizes/model.safetensors"]
    with pytest.raises(ValueError, match="unknown tiny tasks"):
        tiny_clip.build_tiny_clip_pool(tmp_path, tasks=["mnist"])


@pytest.fixture
def one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_finetuned_models_beat_pretrained_on_their_own_task(tiny_clip_root, tiny_clip_manifest, one_torch_thread):
    """Evaluated independently of the builder, with FusionBench's own zero-shot classifier."""
    import torch
    from datasets import load_from_disk
    from fusion_bench.models.hf_clip import HFCLIPClassifier
    from transformers import CLIPModel, CLIPProcessor, CLIPVisionModel

    pre_dir = str(tiny_clip_root / "models" / "_pretrained_")
    processor = CLIPProcessor.from_pretrained(pre_dir)
    clip = CLIPModel.from_pretrained(pre_dir).eval()
    pretrained_vision = clip.vision_model

    def accuracy(vision_model, task: str) -> float:
        entry = tiny_clip_manifest["tasks"][task]
        clip.vision_model = vision_model
        classifier = HFCLIPClassifier(clip, processor)
        classifier.set_classification_task(
            entry["classnames"], [lambda c, t=t: t.format(c) for t in entry["templates"]]
        )
        ds = load_from_disk(str(tiny_clip_root / entry["data"] / "test"))
        pixels = processor(images=[im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pred = classifier(pixels).argmax(-1)
        return (pred == torch.tensor(ds["label"])).float().mean().item()

    for task in tiny_clip_manifest["tasks"]:
        finetuned = CLIPVisionModel.from_pretrained(str(tiny_clip_root / "models" / task)).eval()
        acc_ft = accuracy(finetuned.vision_model, task)
        acc_pre = accuracy(pretrained_vision, task)
        assert acc_ft >= acc_pre + 0.15, (task, acc_pre, acc_ft)
        assert acc_ft >= 0.75, (task, acc_ft)
        # the builder's own numbers agree with FusionBench's classifier
        assert acc_ft == pytest.approx(tiny_clip_manifest["accuracy"][task][task], abs=1e-6)
        assert acc_pre == pytest.approx(tiny_clip_manifest["accuracy"]["_pretrained_"][task], abs=1e-6)


def test_zero_shot_heads_are_not_random(tiny_clip_manifest):
    # chance is 1/2 to 1/4; the pre-trained model must know something of the clean style
    pre = tiny_clip_manifest["accuracy"]["_pretrained_"]
    chance = {t: 1 / len(e["classnames"]) for t, e in tiny_clip_manifest["tasks"].items()}
    assert sum(pre[t] for t in chance) > sum(chance.values()) + 0.3


def test_cli_module_entry_point(tiny_clip_root):
    import subprocess
    import sys

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_bench_fw.offline.tiny_clip", str(tiny_clip_root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"export {tiny_clip.ENV_VAR}={tiny_clip_root}" in proc.stdout
