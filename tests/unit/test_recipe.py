"""FWHard.run as a recipe on the tiny CLIP pool, in process: every train set is loaded once,
and the 'fewer samples' warning is logged once. (What the pass over the pool reads and refuses:
test_pool_contents.py.)"""

from __future__ import annotations

import logging

import pytest

TASKS = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes"]


@pytest.fixture
def modelpool(tiny_clip_root, monkeypatch, one_thread_private_cache):
    from composed import method_config
    from fusion_bench.utils import instantiate

    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tiny_clip_root))
    return instantiate(method_config([]).modelpool)


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
