"""CLIPVisionModelPoolWithTasks registers custom CLIP task names with FusionBench."""

from __future__ import annotations

import logging

import pytest


def test_pool_registers_clip_tasks():
    from fusion_bench.tasks.clip_classification import get_classnames_and_templates
    from omegaconf import OmegaConf

    from fusion_bench_fw import CLIPVisionModelPoolWithTasks

    tasks = OmegaConf.create(
        {
            "fwtest_a": {"classnames": ["cat", "dog"], "templates": ["a {}.", "the {}!"]},
            "fwtest_b": {"classnames": ["x", "y", "z"]},
        }
    )
    pool = CLIPVisionModelPoolWithTasks({"_pretrained_": "/nonexistent", "fwtest_a": "/nonexistent"}, clip_tasks=tasks)
    assert pool.clip_task_names == ["fwtest_a", "fwtest_b"]
    assert pool.model_names == ["fwtest_a"]
    names, templates = get_classnames_and_templates("fwtest_a")
    assert names == ["cat", "dog"] and [t("cat") for t in templates] == ["a cat.", "the cat!"]
    names, templates = get_classnames_and_templates("fwtest_b")
    assert names == ["x", "y", "z"] and [t("x") for t in templates] == ["a photo of a x."]
    assert pool.config.clip_tasks.fwtest_b.classnames == ["x", "y", "z"]


def test_registration_is_idempotent_and_warns_on_change(caplog):
    from fusion_bench.tasks.clip_classification import get_classnames

    from fusion_bench_fw.fusionbench.modelpool import register_clip_task

    register_clip_task("fwtest_c", ["one", "two"])
    with caplog.at_level(logging.WARNING):
        register_clip_task("fwtest_c", ["one", "two"])
    assert "Replacing" not in caplog.text
    with caplog.at_level(logging.WARNING):
        register_clip_task("fwtest_c", ["one", "three"])
    assert "Replacing" in caplog.text
    assert get_classnames("fwtest_c") == ["one", "three"]
    with pytest.raises(ValueError):
        register_clip_task("fwtest_d", ["a"], ["no placeholder"])


def test_load_local_dataset_registers_from_classlabel(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    from fusion_bench.tasks.clip_classification import get_classnames

    from fusion_bench_fw.fusionbench.modelpool import load_local_dataset

    feats = Features({"x": Value("int32"), "label": ClassLabel(names=["left", "right"])})
    Dataset.from_dict({"x": list(range(5)), "label": [0, 1, 0, 1, 0]}, features=feats).save_to_disk(str(tmp_path / "d"))
    ds = load_local_dataset(str(tmp_path / "d"), num_samples=3, register_as="fwtest_e")
    assert len(ds) == 3
    assert get_classnames("fwtest_e") == ["left", "right"]


def test_load_local_dataset_keeps_exactly_fws_labelled_samples(tmp_path):
    """fw_samples selects the rows FW's objective draws for that task and seed (its own sampler,
    sample_batches, on the same split), in its order; a wrong key is refused, naming the keys."""
    from datasets import Dataset

    from fusion_bench_fw.fusionbench.modelpool import load_local_dataset
    from fusion_bench_fw.fusionbench.objectives.sampling import Sampling, sample_batches

    Dataset.from_dict({"x": list(range(50)), "label": [i % 3 for i in range(50)]}).save_to_disk(str(tmp_path / "d"))
    for task, seed in (("fwtest_a", 0), ("fwtest_a", 1), ("fwtest_b", 0)):
        ds = load_local_dataset(str(tmp_path / "d"), fw_samples={"task": task, "n_per_task": 7, "seed": seed})
        batches = sample_batches(
            Dataset.load_from_disk(str(tmp_path / "d")), Sampling(7, 4, seed), task, lambda row: row["x"], list
        )
        assert ds["x"] == [x for b in batches for x in b.inputs]
    every = load_local_dataset(str(tmp_path / "d"), fw_samples={"task": "t", "n_per_task": 99, "seed": 0})["x"]
    assert sorted(every) == list(range(50)) != every  # fewer rows than asked: all of them, in FW's order
    with pytest.raises(ValueError, match="fw_samples takes task, n_per_task and seed"):
        load_local_dataset(str(tmp_path / "d"), fw_samples={"task": "t", "n": 7, "seed": 0})
