"""benchmarks/scaling.py, the paper's scaling experiments, on the committed tiny CLIP pool through the
real CLI: each pool size runs on exactly the models its plan names, FW targets and the task pool
score exactly the experiment's tasks, and the results file adds up (rows, times, provenance)."""

from __future__ import annotations

import json

import pytest
import yaml
from bench_scripts import load_script

pytestmark = pytest.mark.slow


def test_plan_grows_each_experiment_from_the_targets():
    """The pure plan: targets first, then the experiment's models in order; too many is an error."""
    scaling = load_script("scaling")
    models = {
        "t0": {"group": "target"},
        "t1": {"group": "target"},
        "irr_pixels_a": {"group": "irrelevant"},
        "irr_labels_a": {"group": "irrelevant"},
        "irr_pixels_b": {"group": "irrelevant"},
        "r0": {"group": "relevant"},
        "n0": {"group": "noisy"},
        "n1": {"group": "noisy"},
    }
    tasks, targets = ["t0", "t1", "t2"], ["t0", "t1"]
    irrelevant = scaling.plan("irrelevant", models, tasks, targets, [0, 2])
    assert irrelevant == [(0, targets, targets), (2, [*targets, "irr_pixels_a", "irr_labels_a"], targets)]
    relevant = scaling.plan("relevant", models, tasks, targets, [1, 2])
    assert relevant == [(1, [*targets, "t2"], tasks), (2, [*targets, "t2", "r0"], tasks)]
    assert scaling.plan("noisy", models, tasks, targets, [2])[0][1] == [*targets, "n0", "n1"]
    with pytest.raises(ValueError, match="only 2 models to add, asked for 3"):
        scaling.plan("noisy", models, tasks, targets, [3])


def test_scaling_on_the_tiny_pool(tiny_clip_root, tmp_path):
    scaling = load_script("scaling")
    out = tmp_path / "scaling"
    methods = ["task_arithmetic", "fw_hard"]
    rc = scaling.main(
        ["--pool", "tiny", "--root", str(tiny_clip_root), "--quick", "--out", str(out)]
        + ["--experiments", "irrelevant", "--counts", "0", "2", "--methods", *methods]
    )
    assert rc == 0
    result = json.loads((out / "scaling.json").read_text())
    manifest = json.loads((tiny_clip_root / "manifest.json").read_text())
    tasks = list(manifest["tasks"])
    targets = tasks[:2]
    assert result["targets"] == targets and result["counts"] == [0, 2]
    added = [*manifest["irrelevant"], *tasks[2:]][:2]  # the label-shifted model first, then other tasks'
    rows = result["experiments"]["irrelevant"]
    assert [(r["added"], r["method"]) for r in rows] == [(c, m) for c in (0, 2) for m in methods]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["pool_size"] == len(targets) + r["added"]
        assert set(r["accuracy"]) == set(targets)
        assert r["provenance"]["build_id"] == result["provenance"]["build_id"]
        config = yaml.safe_load(
            (out / "runs" / f"irrelevant_{r['added']:02d}_{r['method']}" / "log" / "config.yaml").read_text()
        )
        members = {m for m in config["modelpool"]["models"] if m != "_pretrained_"}
        assert members == set(targets) | set(added[: r["added"]]), (r["added"], members)
        assert set(config["taskpool"]["test_datasets"]) == set(targets)
        if r["method"] == "fw_hard":
            assert config["method"]["targets"] == targets
    assert result["total_seconds"] == pytest.approx(sum(r["seconds"] for r in rows), abs=0.05 * len(rows))
    assert "### irrelevant models added (average accuracy %, the 2 targets)" in (out / "scaling.md").read_text()
    assert (out / "scaling_irrelevant.png").stat().st_size > 0
