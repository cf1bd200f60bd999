"""benchmarks/perf_zoo.py --quick on tiny shapes: a report with every section, finite numbers,
measured cold and warm states, and Fabric processes that select what one process selects."""

from __future__ import annotations

import json
import math

import pytest
from bench_scripts import load_script, on_tmpfs

pytestmark = pytest.mark.slow


def _numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_quick_zoo_report(tmp_path):
    zoo = load_script("perf_zoo")
    out = tmp_path / "out"
    args = ["--quick", "--passes", "1", "--lora-sets", "qv", "--out", str(out), "--clean"]
    assert zoo.main([*args, "--root", str(tmp_path / "pool"), "--lora-root", str(tmp_path / "lora")]) == 0
    assert not (tmp_path / "pool_quick").exists() and not (tmp_path / "lora_quick").exists()  # --clean
    report = json.loads((out / "perf_zoo.json").read_text())
    assert not [x for x in _numbers(report) if not math.isfinite(x)]

    quick = zoo.SETTINGS["quick"]
    assert [(c["n"], c["state"]) for c in report["scan"]] == [(n, s) for n in quick["sizes"] for s in ("cold", "warm")]
    for c in report["scan"]:
        assert c["read_s"] > 0 and c["read_bytes"] >= c["n"] * c["candidate_bytes"] > 0 and c["peak_rss_mb"] > 0
        assert len(c["passes"]) == 1 and c["passes"][0]["seconds"] > 0
        resident = [c["read_resident"], *(p["resident"] for p in c["passes"])]
        if c["state"] == "warm":
            assert resident == [1.0] * len(resident)
        elif not on_tmpfs(tmp_path):
            assert max(resident) < 0.05
    assert {"per_candidate_ratio_cold", "peak_rss_ratio_warm", "lmo_over_read_cold"} <= set(report["summary"])

    # the paths docs/performance.md's zoo section will quote resolve (claims.py's lookup)
    lookup = load_script("claims").lookup
    for path in (
        "scan/n=4,state=cold/per_candidate_s",
        "scan/n=4,state=warm/lmo_over_read",
        "scan/n=4,state=cold/read_bytes_per_s",
        "summary/speedup_warm",
        "lora/name=qv/runs/n=4/marginal_s",
        "lora/name=qv/runs/n=4/rss_beside_factors_mb",
        "projection/rows/gpus=8/cpu_warm",
        "projection/per_candidate_s/gpu_reference",
        "projection/shared_disk_floor_s",
    ):
        assert math.isfinite(lookup(report, path)), path

    assert [(c["state"], c["processes"]) for c in report["parallel"]] == [
        (s, k) for s in ("cold", "warm") for k in (1, 2)
    ]
    two = next(c for c in report["parallel"] if c["processes"] == 2)
    assert len(two["passes"][0]["per_rank"]) == 2 and len(two["rank_peak_rss_mb"]) == 2
    assert report["summary"]["same_selection_cold"] and report["summary"]["same_selection_warm"]
    assert report["summary"]["speedup_warm"] > 0

    (lora,) = report["lora"]
    assert lora["name"] == "qv" and lora["targets"] == ["q_proj", "v_proj"]
    assert [r["n"] for r in lora["runs"]] == quick["lora_sizes"] and lora["fit"] is not None
    assert lora["runs"][0]["marginal_s"] is None and lora["runs"][1]["marginal_s"] is not None
    assert (out / lora["report"]).is_file()

    projection = report["projection"]
    assert [r["gpus"] for r in projection["rows"]] == list(zoo.GPUS)
    assert {"cpu_cold", "cpu_warm"} <= set(projection["per_candidate_s"]) and projection["shared_disk_floor_s"] > 0
    assert report["provenance"]["git_commit"]
    text = (out / "perf_zoo.md").read_text()
    for heading in ("LMO pass against one sequential read", "Lightning Fabric", "LoRA adapters", "Projection"):
        assert heading in text

    # --render redraws the page from the JSON alone
    assert zoo.main(["--render", str(out / "perf_zoo.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "perf_zoo.md").read_text() == text
