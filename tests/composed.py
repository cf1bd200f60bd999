"""Configs composed by Hydra exactly as the ``fusion_bench`` CLI composes them (the tests' one
compose helper), and in-process runs of FWHard/FWSoft on the tiny CLIP pool on a CPU Fabric."""

from __future__ import annotations

from pathlib import Path


def compose(*overrides: str):
    """FusionBench's root config as ``fusion_bench <overrides>`` composes it, with this plugin's
    search path (the tests' one Hydra compose)."""
    from hydra_plugins.fusion_bench_fw.searchpath import compose_fusion_bench

    return compose_fusion_bench(overrides)


def method_config(overrides, modelpool: str = "fw_tiny_clip"):
    """The config as ``fusion_bench <overrides>`` composes it on ``modelpool`` (taskpool: dummy)."""
    return compose(f"modelpool={modelpool}", "taskpool=dummy", *overrides)


def run_method(overrides, out: Path):
    """Instantiate the composed pool and method, run it; returns (merged state dict, history dict, pool)."""
    import lightning as L
    from fusion_bench.utils import instantiate

    cfg = method_config(
        [
            *overrides,
            f"method.history_path={out / 'fw_history.json'}",
            f"method.checkpoint_path={out / 'fw_checkpoint.safetensors'}",
            f"method.cache_dir={out / 'vertex_cache'}",
        ]
    )
    modelpool = instantiate(cfg.modelpool)
    algorithm = instantiate(cfg.method)
    algorithm.fabric = L.Fabric(accelerator="cpu", devices=1)
    merged = algorithm.run(modelpool)
    return dict(merged.state_dict()), algorithm.history.to_dict(), modelpool
