"""benchmarks/lmo_sketch.py --quick on a tiny pool: one run measures the exact and the sketched LMO side by
side, and its results file holds every cell it promises (times, bytes, how often the choice differs) with
its provenance."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_script

pytestmark = pytest.mark.slow


def test_quick_run_writes_every_cell(tmp_path):
    bench = load_script("lmo_sketch")
    out = tmp_path / "out"
    assert bench.main(["--quick", "--root", str(tmp_path / "pool"), "--out", str(out)]) == 0
    report = json.loads((out / "lmo_sketch.json").read_text())
    assert report["provenance"]["git_commit"] and report["n_candidates"] == 5
    assert [(r["sketch"], r["recheck"]) for r in report["rows"]] == [(16, 1), (16, 2), (64, 1), (64, 2)]
    for row in report["rows"]:
        assert 0 < row["hard_read_fraction"] < 1  # the re-check reads some of the pool, not all of it
        assert 0 < row["soft_read_fraction"] <= 1
        for alignment in report["alignments"]:
            assert 0 <= row[f"hard_differs@{alignment}"] <= 1 and 0 <= row[f"soft_differs@{alignment}"] <= 1
    assert all(s["load_s"] > 0 and s["make_s"] > 0 for s in report["sketches"])
    assert not (out / "sketch_cache").exists()
    assert "How often the sketched LMO's choice differs" in (out / "lmo_sketch.md").read_text()
