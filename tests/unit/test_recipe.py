"""FWHard.run as a recipe on the tiny CLIP pool, in process: every train set is loaded once,
the 'fewer samples' warning is logged once, and reading a pool of files writes nothing."""

from __future__ import annotations

import logging

import pytest

TASKS = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes"]


@pytest.fixture
def modelpool(tiny_clip_root, monkeypatch, one_thread_private_cache):
    from fusion_bench.utils import instantiate
    from hydra import compose, initialize_config_dir

    from fusion_bench_fw.offline.tiny_clip import ENV_VAR
    from hydra_plugins.fusion_bench_fw.searchpath import fusion_bench_config_dir

    monkeypatch.setenv(ENV_VAR, str(tiny_clip_root))
    with initialize_config_dir(config_dir=fusion_bench_config_dir(), version_base=None):
        cfg = compose("fabric_model_fusion", overrides=["modelpool=fw_tiny_clip", "taskpool=dummy"])
    return instantiate(cfg.modelpool)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_each_train_set_is_loaded_once_and_warned_about_once(modelpool, tmp_path, caplog, monkeypatch):
    import lightning as L

    from fusion_bench_fw import FWHard

    loads = []
    original = type(modelpool).load_train_dataset
    monkeypatch.setattr(
        type(modelpool), "load_train_dataset", lambda self, name, *a, **k: loads.append(name) or original(self, name)
    )
    algorithm = FWHard(
        n_per_task=100,  # more than the 64 samples each task has
        allow_fewer_samples=True,
        batch_size=64,
        max_iters=1,
        progress=False,
        history_path=str(tmp_path / "h.json"),
        checkpoint_path=str(tmp_path / "c.safetensors"),
        cache_dir=str(tmp_path / "cache"),
    )
    algorithm.fabric = L.Fabric(accelerator="cpu", devices=1)
    with caplog.at_level(logging.WARNING):
        algorithm.run(modelpool)
    assert sorted(loads) == sorted(TASKS)
    warnings = [r.getMessage() for r in caplog.records if "fewer than n_per_task" in r.getMessage()]
    assert sorted(warnings) == sorted(f"task {t}: using all 64 samples (fewer than n_per_task=100)" for t in TASKS)


def test_reading_the_pool_writes_nothing_when_every_candidate_has_a_file(modelpool, tmp_path):
    """The one pass over a pool of safetensors files: every candidate kept, in pool order, each file
    read in place (no spill cache made), the pretrained model as the template."""
    from fusion_bench_fw.fusionbench.options import RunOptions
    from fusion_bench_fw.fusionbench.pool import read_pool

    cache = tmp_path / "cache"
    pool = read_pool(modelpool, RunOptions(n_per_task=8, targets=TASKS[:1]), str(cache))
    assert pool.kind == "clip" and pool.targets == TASKS[:1] and list(pool.train_sets) == TASKS[:1]
    assert pool.models == TASKS and pool.members == TASKS and pool.dropped == {} and pool.far == []
    assert all(c.path.endswith("model.safetensors") and c.state is None for c in pool.candidates.values())
    assert list(pool.store.names) == TASKS and set(pool.distances) == set(TASKS)
    assert not cache.exists()
