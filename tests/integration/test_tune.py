"""benchmarks/tune.py on the committed tiny CLIP pool, through the real CLI: every setting is scored
on the validation split (or, for the data-matched baseline, on FW's own labelled samples), the
best validation score is the one chosen, and only the chosen and the row's own settings touch test."""

from __future__ import annotations

import json

import pytest
import yaml
from bench_scripts import load_script

pytestmark = pytest.mark.slow


def _datasets(run: dict) -> dict:
    """The task pool's data sets as the CLI resolved them for that run."""
    return yaml.safe_load(open(f"{run['log_dir']}/config.yaml"))["taskpool"]["test_datasets"]


def test_tuning_chooses_on_validation_and_reports_on_test(tiny_clip_root, tmp_path):
    tune = load_script("tune")
    out = tmp_path / "tune"
    methods = ["task_arithmetic", "task_arithmetic_fw_samples"]
    tune.main(
        [
            "--pool",
            "fw_tiny_clip",
            "--root",
            str(tiny_clip_root),
            "--budget",
            "2",
            "--out",
            str(out),
            "--methods",
            *methods,
        ]
    )
    result = json.loads((out / "tuning.json").read_text())
    assert result["provenance"]["build_id"] and result["provenance"]["code_id"]
    tasks = result["tasks"]
    n, seed = result["fw_samples"]["n_per_task"], result["fw_samples"]["seed"]
    by_name = {m["method"]: m for m in result["methods"]}
    assert list(by_name) == methods
    for name, m in by_name.items():
        scores = m["selection_scores"]
        assert len(m["grid"]) == len(scores) == 2 and None not in scores, m
        assert m["chosen"] == max(range(2), key=lambda i: (scores[i], -i))
        assert m["test_chosen"]["setting"] == m["grid"][m["chosen"]]
        assert m["test_own"]["setting"] == m["grid"][0]
        selection, tests = m["runs"][:2], m["runs"][2:]
        assert len(tests) == (1 if m["chosen"] == 0 else 2)
        for run in selection:
            data = _datasets(run)
            assert set(data) == set(tasks)
            for task, d in data.items():
                if name == "task_arithmetic":
                    assert d["dataset_path"].endswith(f"{task}/val"), d
                else:  # FW's labelled samples: the train split, the same seeded rows FW draws
                    assert d["dataset_path"].endswith(f"{task}/train") and d["fw_samples"] == dict(
                        task=task, n_per_task=n, seed=seed
                    ), d
        for run in tests:
            assert all(d["dataset_path"].endswith(f"{t}/test") for t, d in _datasets(run).items())
    md = (out / "tuning.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
