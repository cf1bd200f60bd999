"""Reliability, in process: every bad input of docs/reliability.md gets one clear error before
any heavy work; a model far from the pretrained one (another pre-training) is left out by default
and the merge is the clean pool's; kept, it is never picked by task-wise FW-hard; on a toy, noise
models stay out of the default FW-hard and FW-soft merges; a seeded run is reproducible; the merged model is
written atomically. (The real-CLI kill-and-resume test is test_resume_kill.py.)

The bad inputs run ``FWHard/FWSoft.run`` on copies of the tiny CLIP pool with FusionBench's
zero-shot head set-up patched to fail: an error must come from validation, not after the heads,
the objective and the loop were built."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from toy import TEXTBOOK_SOFT_RULES, QuadraticObjective, solve

from fusion_bench_fw import FWHard, FWSoft
from fusion_bench_fw.core import FrankWolfeConfig
from fusion_bench_fw.core.stores import InMemoryVertexStore, StoreError

TASKS = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes"]
FAST = dict(n_per_task=16, batch_size=16, max_iters=2, progress=False)


class HeavyWorkStarted(AssertionError):
    pass


pytestmark = pytest.mark.usefixtures("one_thread_private_cache")


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Make the first heavy step (building the zero-shot heads) fail loudly."""
    from fusion_bench.mixins import CLIPClassificationMixin

    def refuse(*args, **kwargs):
        raise HeavyWorkStarted("validation let a bad input through to the zero-shot heads")

    monkeypatch.setattr(CLIPClassificationMixin, "setup_zero_shot_classification_head", refuse)


@pytest.fixture
def pool(tiny_clip_root, tiny_clip_manifest, tmp_path):
    """``pool(models=..., train=...)``: a tiny CLIP pool; ``models`` maps names to folders
    (default: the session's pretrained + 4 fine-tuned), ``train`` the tasks with a train split."""
    from omegaconf import OmegaConf

    from fusion_bench_fw import CLIPVisionModelPoolWithTasks

    root = str(tiny_clip_root)
    default_models = {"_pretrained_": f"{root}/models/_pretrained_", **{t: f"{root}/models/{t}" for t in TASKS}}
    clip_tasks = {t: {"classnames": tiny_clip_manifest["tasks"][t]["classnames"]} for t in TASKS}

    def make(models=None, train=TASKS):
        train_datasets = {
            t: {"_target_": "datasets.load_from_disk", "dataset_path": f"{root}/data/{t}/train"} for t in train
        }
        return CLIPVisionModelPoolWithTasks(
            OmegaConf.create(models if models is not None else default_models),
            clip_tasks=clip_tasks,
            processor=f"{root}/models/_pretrained_",
            platform="hf",
            train_datasets=OmegaConf.create(train_datasets),
        )

    make.default_models = default_models
    return make


def run(algorithm_cls, modelpool, out, **kwargs):
    import lightning as L

    algorithm = algorithm_cls(
        **{**FAST, **kwargs},
        history_path=str(out / "fw_history.json"),
        checkpoint_path=str(out / "fw_checkpoint.safetensors"),
        cache_dir=str(out / "vertex_cache"),
    )
    algorithm.fabric = L.Fabric(accelerator="cpu", devices=1)
    return algorithm, algorithm.run(modelpool)


def edited_copy(src_dir, dst_dir, edit):
    """Copy a model folder and rewrite its model.safetensors with ``edit(state) -> state``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src_dir, dst_dir)
    path = os.path.join(dst_dir, "model.safetensors")
    state = edit(dict(load_file(path)))
    save_file(state, path)
    return str(dst_dir)


FC1 = "vision_model.encoder.layers.0.mlp.fc1.weight"


# ------------------------------------------------------------------ bad inputs, one row each
def test_missing_pretrained(pool, tmp_path, no_heavy_work):
    models = {k: v for k, v in pool.default_models.items() if k != "_pretrained_"}
    with pytest.raises(ValueError, match=r"no `_pretrained_` model.*models\._pretrained_"):
        run(FWHard, pool(models=models), tmp_path)


@pytest.mark.parametrize(
    "problem,edit,message",
    [
        ("missing", lambda s: {k: v for k, v in s.items() if k != FC1}, rf"'broken' lacks tensor '{FC1}'"),
        (
            "extra",
            lambda s: {**s, FC1.replace("layers.0", "layers.7"): s[FC1].clone()},
            r"'broken' has tensor 'vision_model\.encoder\.layers\.7\.mlp\.fc1\.weight' that the pretrained model lacks",
        ),
        ("shape", lambda s: {**s, FC1: s[FC1][:-1].contiguous()}, rf"'broken': tensor '{FC1}' has shape"),
    ],
)
def test_incompatible_candidate_is_an_error_by_default(pool, tmp_path, no_heavy_work, problem, edit, message):
    models = dict(pool.default_models)
    models["broken"] = edited_copy(models["tiny_colors"], tmp_path / "broken", edit)
    with pytest.raises(StoreError, match=message) as info:
        run(FWHard, pool(models=models), tmp_path / "out")
    assert "method.on_incompatible=skip" in str(info.value)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_incompatible_candidate_is_dropped_with_a_warning_on_request(pool, tmp_path, caplog):
    models = dict(pool.default_models)
    models["broken"] = edited_copy(
        models["tiny_colors"], tmp_path / "broken", lambda s: {k: v for k, v in s.items() if k != FC1}
    )
    with caplog.at_level(logging.WARNING):
        algorithm, merged = run(FWHard, pool(models=models), tmp_path / "out", on_incompatible="skip")
    assert any("dropping model 'broken' lacks tensor" in r.getMessage() for r in caplog.records)
    assert "broken" not in algorithm.history.vertices and "broken" not in algorithm.history.basis
    assert set(TASKS) <= set(algorithm.history.vertices)
    assert all(torch.isfinite(p).all() for p in merged.parameters())


def test_all_candidates_incompatible_with_skip(pool, tmp_path, no_heavy_work):
    drop = lambda s: {k: v for k, v in s.items() if k != FC1}  # noqa: E731
    models = {
        "_pretrained_": pool.default_models["_pretrained_"],
        "bad": edited_copy(pool.default_models["tiny_colors"], tmp_path / "bad", drop),
    }
    with pytest.raises(ValueError, match="no candidate left to merge"):
        run(FWHard, pool(models=models), tmp_path / "out", on_incompatible="skip")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights(pool, tmp_path, no_heavy_work, value):
    def poison(state):
        state[FC1] = state[FC1].clone()
        state[FC1][0, 0] = value
        return state

    models = dict(pool.default_models)
    models["tiny_sizes"] = edited_copy(models["tiny_sizes"], tmp_path / "sizes", poison)
    with pytest.raises(StoreError, match=rf"'tiny_sizes': tensor '{FC1}' contains NaN or Inf"):
        run(FWHard, pool(models=models), tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_safetensors(pool, tmp_path, no_heavy_work, damage):
    models = dict(pool.default_models)
    folder = tmp_path / "stripes"
    shutil.copytree(models["tiny_stripes"], folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100] if damage == "truncated" else b"\x07" * 64 + data[64:])
    models["tiny_stripes"] = str(folder)
    with pytest.raises(StoreError, match=r"'tiny_stripes'.*truncated or corrupt: re-download"):
        run(FWHard, pool(models=models), tmp_path / "out")


def test_corrupt_pretrained_model(pool, tmp_path, no_heavy_work):
    folder = tmp_path / "pre"
    shutil.copytree(pool.default_models["_pretrained_"], folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StoreError, match=r"checkpoint '_pretrained_': cannot load it.*truncated or corrupt"):
        run(FWHard, pool(models={**pool.default_models, "_pretrained_": str(folder)}), tmp_path / "out")


def test_empty_pool(pool, tmp_path, no_heavy_work):
    with pytest.raises(ValueError, match="holds no fine-tuned models"):
        run(FWHard, pool(models={"_pretrained_": pool.default_models["_pretrained_"]}), tmp_path)


def test_no_target_tasks(pool, tmp_path, no_heavy_work):
    with pytest.raises(ValueError, match=r"no target tasks: set method\.targets"):
        run(FWHard, pool(train=[]), tmp_path)


def test_target_without_training_split(pool, tmp_path, no_heavy_work):
    with pytest.raises(ValueError, match=r"\['tiny_sizes'\] have no training split.*modelpool\.train_datasets"):
        run(FWHard, pool(train=TASKS[:3]), tmp_path, targets=["tiny_colors", "tiny_sizes"])


def test_fewer_samples_than_n_per_task(pool, tmp_path, no_heavy_work):
    with pytest.raises(
        ValueError, match=r"'tiny_colors' has 64 training samples, fewer than n_per_task=100.*allow_fewer_samples=true"
    ):
        run(FWHard, pool(), tmp_path, n_per_task=100)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_fewer_samples_allowed_uses_what_exists(pool, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        algorithm, _ = run(
            FWHard, pool(), tmp_path, targets=["tiny_sizes"], n_per_task=100, allow_fewer_samples=True, max_iters=1
        )
    assert any("using all 64 samples" in r.getMessage() for r in caplog.records)
    assert algorithm.history.extra["n_per_task"] == 100 and len(algorithm.history.iterations) == 1


def test_k_larger_than_the_pool(pool, tmp_path, no_heavy_work):
    with pytest.raises(ValueError, match=r"k=6 is larger than the number of vertices in the pool \(4\)"):
        run(FWSoft, pool(), tmp_path, k=6, soft_select="topk")


@pytest.mark.parametrize(
    "option,value",
    [
        ("granularity", "model"),
        ("lmo_score", "cos"),
        ("step_rule", "armijo"),
        ("merge_fn", "dare"),
        ("on_incompatible", "ignore"),
        ("step_scale", 0.0),
        ("step_scale", -0.5),
    ],
)
def test_unknown_options_and_bad_step_scale_fail_at_construction(option, value):
    expected = (
        "step_scale must be a positive number" if option == "step_scale" else f"unknown {option} '{value}'; use one of"
    )
    for cls in (FWHard, FWSoft):
        if cls is FWSoft and option in ("step_rule", "merge_fn", "step_scale"):  # FW-hard's options
            with pytest.raises(ValueError, match=f"{option} is an FW-hard option; FW-soft never reads it"):
                cls(**{option: value})
            continue
        with pytest.raises(ValueError, match=expected):
            cls(**{option: value})


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_dtype_mismatch_is_cast_with_a_warning(pool, tmp_path, caplog):
    """A float16 candidate merges exactly like a float32 file holding the same (rounded) values."""
    models = dict(pool.default_models)
    half = edited_copy(models["tiny_quadrants"], tmp_path / "half", lambda s: {k: v.half() for k, v in s.items()})
    rounded = edited_copy(
        models["tiny_quadrants"], tmp_path / "rounded", lambda s: {k: v.half().float() for k, v in s.items()}
    )
    with caplog.at_level(logging.WARNING):
        _, merged_half = run(FWHard, pool(models={**models, "tiny_quadrants": half}), tmp_path / "a")
    assert any("different dtypes" in r.getMessage() and "tiny_quadrants: F16" in r.getMessage() for r in caplog.records)
    _, merged_ref = run(FWHard, pool(models={**models, "tiny_quadrants": rounded}), tmp_path / "b")
    for (name, a), b in zip(merged_half.state_dict().items(), merged_ref.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b), name


# ------------------------------------------------------------------ noisy models
@pytest.mark.parametrize(
    "variant, options",
    [
        ("hard", dict(granularity="task")),  # the defaults users get (line search)
        ("hard", dict(granularity="layer")),
        ("soft", dict()),  # FW-soft's default: per-task cosine selection, unconstrained weights
        ("soft", dict(TEXTBOOK_SOFT_RULES, k=2, inner_steps=20, inner_lr=0.05)),
    ],
    ids=["hard-task", "hard-layer", "soft-default", "soft-textbook"],
)
def test_noisy_models_are_never_selected_on_a_toy(variant, options):
    """Two kinds of noise model beside four real ones: models fine-tuned from another pre-trained
    model (far away, random direction) and noise-trained models (the same pre-trained model moved
    by a random update as large as a real task vector's). The gradient at any iterate lies in the
    span of the real task vectors, so in high dimension the noise models' LMO scores are
    ~1/sqrt(dim) of the real ones: the defaults users get never pick them, and the merge is the
    one without them (to float rounding). On this toy only: on the mini and text benchmarks the
    default FW-soft does admit noise-trained and irrelevant models (benchmarks/README.md)."""
    shapes = {"a.weight": (48, 40), "a.bias": (48,), "b.weight": (32, 48), "b.bias": (32,)}
    g = torch.Generator().manual_seed(5)
    pre = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    models = {"_pretrained_": pre}
    for i in range(4):
        models[f"task{i}"] = {k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
    for i in range(3):  # other pre-trained starting points, fine-tuned the same way
        other = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
        models[f"far{i}"] = {k: v + torch.randn(v.shape, generator=g) for k, v in other.items()}
    for i in range(3):  # noise-trained: the same start, a random update of a task vector's size
        models[f"noise_trained{i}"] = {k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
    target = {k: 0.6 * models["task0"][k] + 0.4 * models["task2"][k] for k in shapes}
    clean = [f"task{i}" for i in range(4)]
    noisy = [n for n in models if n.startswith(("far", "noise_trained"))]
    config = FrankWolfeConfig.build(variant, max_iters=8, **options)
    init = {"_pretrained_": 1.0}
    with_noisy = solve(
        QuadraticObjective(target), InMemoryVertexStore(models), clean + noisy, init, config, progress=False
    )
    without = solve(
        QuadraticObjective(target),
        InMemoryVertexStore({k: models[k] for k in ["_pretrained_"] + clean}),
        clean,
        init,
        config,
        progress=False,
    )
    for record in with_noisy.history.iterations:
        picked = record.selected if isinstance(record.selected, list) else list(record.selected)
        assert not set(picked) & set(noisy), (record.t, record.selected)
    for k in shapes:
        torch.testing.assert_close(with_noisy.params[k], without.params[k], rtol=1e-5, atol=1e-5)
    basis = with_noisy.history.basis
    assert all(abs(c) == 0.0 for n in noisy for c in with_noisy.coefficients[basis.index(n)].tolist())
    assert with_noisy.history.final_loss < 0.5 * QuadraticObjective(target).loss(pre)


@pytest.fixture
def noisy_colors(tmp_path):
    """A tiny CLIP vision tower from another pre-training run (seed 1), fine-tuned on tiny_colors."""
    from fusion_bench_fw.offline.tiny_clip import build_tiny_clip_pool

    other = build_tiny_clip_pool(
        tmp_path / "other",
        tasks=["tiny_colors"],
        seed=1,
        irrelevant=0,
        n_train=8,
        n_test=4,
        n_pretrain=16,
        pretrain_steps=20,
        finetune_steps=10,
    )
    return os.path.join(other["root"], "models", "tiny_colors")


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
@pytest.mark.parametrize(
    "cls,options",
    [(FWHard, dict(granularity="task")), (FWHard, dict(granularity="layer")), (FWSoft, dict(inner_steps=20))],
)
def test_a_model_of_another_pretraining_is_left_out(pool, tmp_path, noisy_colors, caplog, cls, options):
    """Far from the pretrained model (another pre-training): left out with a warning, so the
    merge is the clean pool's, exactly. Kept (far_models=keep), it pulls the merge: the default
    FW-soft's cosine LMO picks it (mean coefficient 0.27, final loss 1.28 vs 0.60 on this pool)."""
    models = {**pool.default_models, "noisy_colors": noisy_colors}
    with caplog.at_level(logging.WARNING):
        with_noisy, merged = run(cls, pool(models=models), tmp_path / "with", max_iters=4, **options)
    messages = [r.getMessage() for r in caplog.records]
    assert any("['noisy_colors'] are more than 5x farther from _pretrained_" in m and "left out" in m for m in messages)
    clean, merged_clean = run(cls, pool(), tmp_path / "clean", max_iters=4, **options)
    assert "noisy_colors" not in with_noisy.history.vertices
    for a, b in zip(merged.state_dict().values(), merged_clean.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_a_kept_far_model_is_never_selected_by_task_wise_fw_hard(pool, tmp_path, noisy_colors):
    """With far_models=keep, task-wise FW-hard from a targets-only start still never selects it."""
    models = {**pool.default_models, "noisy_colors": noisy_colors}
    options = dict(granularity="task", init_models="targets", far_models="keep", max_iters=4)
    with_noisy, merged = run(FWHard, pool(models=models), tmp_path / "with", **options)
    history = with_noisy.history
    assert "noisy_colors" in history.vertices
    assert all("noisy_colors" not in r.selected for r in history.iterations)
    assert max(abs(c) for c in history.coefficients[history.basis.index("noisy_colors")]) == 0.0
    _, merged_clean = run(FWHard, pool(), tmp_path / "clean", **options)
    for a, b in zip(merged.state_dict().values(), merged_clean.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_a_far_model_named_in_init_models_is_left_out_of_the_start_too(pool, tmp_path, noisy_colors, caplog):
    """init_models names a far model that far_models=exclude drops: the start leaves it out (with a
    warning) instead of failing, and the merge is the clean pool's with the other start models."""
    models = {**pool.default_models, "noisy_colors": noisy_colors}
    options = dict(granularity="task", max_iters=2, init_models=["tiny_colors", "noisy_colors", "tiny_sizes"])
    with caplog.at_level(logging.WARNING):
        with_noisy, merged = run(FWHard, pool(models=models), tmp_path / "with", **options)
    assert any("init_models" in r.getMessage() and "noisy_colors" in r.getMessage() for r in caplog.records)
    assert "noisy_colors" not in with_noisy.history.basis
    clean_options = {**options, "init_models": ["tiny_colors", "tiny_sizes"]}
    _, merged_clean = run(FWHard, pool(), tmp_path / "clean", **clean_options)
    for a, b in zip(merged.state_dict().values(), merged_clean.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_far_models_are_flagged_by_distance_only():
    from fusion_bench_fw.fusionbench.pool import find_far_models

    assert find_far_models({"a": 1.0, "b": 1.2, "c": 0.9, "d": 6.1}) == ["d"]
    assert find_far_models({"a": 1.0, "b": 1.2, "c": 0.9, "d": 4.9}) == []
    assert find_far_models({"a": 1.0, "d": 60.0}) == []  # too few models to tell


# ------------------------------------------------------------------ determinism
@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_seeded_runs_are_reproducible_and_the_seed_is_recorded(pool, tmp_path):
    kwargs = dict(granularity="task", inner_steps=3, seed=7)
    first, merged_a = run(FWSoft, pool(), tmp_path / "a", **kwargs)
    second, merged_b = run(FWSoft, pool(), tmp_path / "b", **kwargs)
    other, merged_c = run(FWSoft, pool(), tmp_path / "c", **{**kwargs, "seed": 8})
    assert first.history.seed == 7 and other.history.seed == 8
    from fusion_bench_fw.core.history import RunHistory

    assert RunHistory.load(str(tmp_path / "a" / "fw_history.json")).seed == 7
    assert [r.selected for r in first.history.iterations] == [r.selected for r in second.history.iterations]
    a, b, c = merged_a.state_dict(), merged_b.state_dict(), merged_c.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # another seed draws other samples, so the test can tell runs apart
    assert any(not torch.allclose(a[key], c[key]) for key in a)


# ------------------------------------------------------------------ atomic outputs
def test_merged_model_save_is_atomic(pool, tmp_path, monkeypatch):
    from transformers import CLIPVisionModel

    modelpool = pool()
    model = modelpool.load_model("tiny_colors")
    target = tmp_path / "merged"
    modelpool.save_model(model, str(target))
    before = (target / "model.safetensors").read_bytes()

    def dies_half_way(self, path, *args, **kwargs):
        (open(os.path.join(path, "model.safetensors"), "wb")).write(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(CLIPVisionModel, "save_pretrained", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        modelpool.save_model(model, str(target))
    assert (target / "model.safetensors").read_bytes() == before  # the old model is intact
    with pytest.raises(KeyboardInterrupt):
        modelpool.save_model(model, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))) == []


@pytest.mark.parametrize("preset", ["fw_hard", "fw_soft", "fw_hard_fbref", "fw_soft_fbref"])
def test_every_preset_has_on_incompatible_error_by_default(preset):
    from composed import compose

    method = compose(f"method={preset}", "taskpool=dummy").method
    assert method.on_incompatible == "error"
