"""The model zoo at a tiny size, end to end: ``minibench build --zoo`` (the QUICK build of the 8 TA8
tasks, three variants each) through its command line, then benchmarks/zoo.py through the real
``fusion_bench`` CLI on its 4 targets. The checks read what each run really merged (its saved
config) against the zoo's manifest: the oracle pool holds each target's best checkpoint by
validation accuracy, the nested pools are prefixes of one another that hold every target, and
FW's recorded picks are its pool's checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml
from bench_scripts import load_script

from fusion_bench_fw.offline import minibench

pytestmark = pytest.mark.slow

VARIANTS = ("seed", "half", "lr_hi")


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    try:
        minibench.load_fashion()
    except FileNotFoundError as exc:
        pytest.skip(f"needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist): {exc}")
    if any(importlib.util.find_spec(m) is None for m in ("mlxtend", "sklearn", "matplotlib")):
        pytest.skip("needs the [bench] extra")
    root = tmp_path_factory.mktemp("zoo") / "minibench"
    command = [sys.executable, "-m", "fusion_bench_fw.offline.minibench", "build", "--quick", "--scope", "ta8"]
    command += ["--zoo", "--zoo-variants", *VARIANTS, "--root", str(root), "--no-progress"]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"root: {root} (32 checkpoints" in proc.stdout
    return root


def test_the_zoo_records_each_checkpoint_variant(zoo_root):
    manifest = json.loads((zoo_root / minibench.ZOO_MANIFEST).read_text())
    build = json.loads((zoo_root / "manifest.json").read_text())
    quick = minibench.BuildParams(**minibench.QUICK)
    assert list(manifest["models"]) == [
        m.name
        for m in minibench.zoo_models(
            minibench.ZooParams(minibench.BuildParams(scope="ta8", **minibench.QUICK), VARIANTS)
        )
    ]
    for name, info in manifest["models"].items():
        task = info["task"]
        assert (zoo_root / "models" / name / "model.safetensors").is_file()
        assert 0 <= info["own_val_accuracy"] <= 1 and info["norm_ratio"] > 0
        base_seed = next(s.seed for s in minibench.model_specs() if s.name == task)
        expected = {
            "base": (base_seed, quick.finetune_lr, quick.finetune_steps),
            "seed": (base_seed + 4000, quick.finetune_lr, quick.finetune_steps),
            "half": (base_seed + 4000, quick.finetune_lr, quick.finetune_steps // 2),
            "lr_hi": (base_seed, 3 * quick.finetune_lr, quick.finetune_steps),
        }[info["variant"]]
        assert (info["seed"], info["lr"], info["steps"]) == pytest.approx(expected), name
        if info["variant"] == "base":  # the build's own model, as its manifest records it
            assert info["own_val_accuracy"] == build["models"][name]["own_val_accuracy"]
    # the half-trained snapshot is a model of its own: nearer the pre-trained one than its run's end
    for task in manifest["tasks"]:
        assert manifest["models"][f"{task}__half"]["norm_ratio"] < manifest["models"][f"{task}__seed"]["norm_ratio"]


def test_the_zoo_benchmark_through_the_cli(zoo_root, tmp_path):
    zoo = load_script("zoo")
    out = tmp_path / "zoo"
    args = ["--quick", "--scope", "ta8", "--variants", *VARIANTS, "--root", str(zoo_root), "--out", str(out)]
    args += ["--targets", "TA4", "--sizes", "8", "16", "--methods", "fw_soft", "task_arithmetic"]
    assert zoo.main(args) == 0
    result = json.loads((out / "zoo.json").read_text())
    manifest = json.loads((out / "zoo_manifest.json").read_text())
    models, order = manifest["models"], manifest["order"]
    targets = list(minibench.TARGETS)

    def merged(row) -> list[str]:
        config = yaml.safe_load(
            (
                out / "runs" / f"TA4_{row['pool']}{row['pool_size']:03d}_{row['method']}" / "log" / "config.yaml"
            ).read_text()
        )
        assert set(config["taskpool"]["test_datasets"]) == set(targets)
        assert set(config["modelpool"]["train_datasets"]) == set(targets)
        return sorted(m for m in config["modelpool"]["models"] if m != "_pretrained_")

    rows = {(r["pool"], r["pool_size"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {
        ("all", 32, "fw_soft"),
        ("all", 32, "task_arithmetic"),
        ("oracle", 4, "task_arithmetic"),
        ("size", 8, "fw_soft"),
        ("size", 16, "fw_soft"),
    }
    for r in rows.values():
        assert r["status"] == "ok", r
        assert sorted(r["members"]) == merged(r)
        assert set(r["accuracy"]) == set(targets)
        assert r["provenance"]["build_id"] == result["provenance"]["build_id"]
    # the oracle: each target's best checkpoint by its own validation accuracy, from the manifest
    best = {
        t: max((n for n, i in models.items() if i["task"] == t), key=lambda n: models[n]["own_val_accuracy"])
        for t in targets
    }
    assert merged(rows["oracle", 4, "task_arithmetic"]) == sorted(best.values())
    assert result["targets"]["TA4"]["oracle"] == best
    # the nested pools: prefixes of the zoo's order, each with a checkpoint of every target
    pools = [rows["size", 8, "fw_soft"]["members"], rows["size", 16, "fw_soft"]["members"], order]
    for small, large in zip(pools, pools[1:]):
        assert large[: len(small)] == small
    for pool in pools:
        assert set(targets) <= {models[m]["task"] for m in pool}
    # FW-soft's picks: one checkpoint of its pool per target and iteration
    for key in (("all", 32, "fw_soft"), ("size", 8, "fw_soft"), ("size", 16, "fw_soft")):
        sel = rows[key]["selection"]
        assert set(sel["picked"]) <= set(rows[key]["members"])
        assert sum(sel["picked"].values()) == sel["iterations"] * len(targets) > 0
        assert set(sel["oracle_picked"]) == {t for t in targets if best[t] in sel["picked"]}
    md = (out / "zoo.md").read_text()
    assert "## TA4: 4 targets" in md and "Which checkpoints FW picked" in md
    assert (out / "zoo.png").stat().st_size > 0
    # a second run reuses every finished row (the same arguments, code and build)
    assert zoo.main([*args, "--reuse"]) == 0
    again = json.loads((out / "zoo.json").read_text())
    assert all(r["reused"] for r in again["rows"])
