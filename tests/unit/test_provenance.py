"""Where a benchmark result comes from (benchmarks/_common.py): every results file records its
provenance, ``--reuse`` takes an earlier run only when everything it depended on matches, and the
total time adds each run once."""

from __future__ import annotations

import re

import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def common():
    return load_script("_common")


def test_provenance_says_commit_command_machine_packages_and_build(common):
    manifest = {"key": {"seed": 0, "threads": 1}, "scope": "ta8"}
    p = common.provenance(manifest, command=["benchmarks/leaderboard.py", "--quick"])
    assert re.fullmatch(r"[0-9a-f]{40}", p["git_commit"]) and isinstance(p["git_dirty"], bool)
    assert p["command"] == "python benchmarks/leaderboard.py --quick"
    assert {"cpu", "cores", "avx2", "avx512", "torch_cpu_capability", "device"} <= set(p["machine"])
    assert p["packages"]["torch"] and p["packages"]["fusion-bench"] and p["packages"]["fusion-bench-fw"]
    assert p["build_key"] == manifest["key"] and p["build_id"] == common.build_id(manifest)
    assert common.build_id({**manifest, "scope": "all"}) != p["build_id"]
    assert "commit" in common.describe_provenance(p) and "build" in common.describe_provenance(p)


def test_the_code_id_follows_the_plugin_code(common, tmp_path, monkeypatch):
    (tmp_path / "fusion_bench_fw").mkdir()
    module = tmp_path / "fusion_bench_fw" / "a.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    first = common.code_id()
    module.write_text("x = 2\n")
    assert common.code_id() != first


def test_a_run_is_reused_only_when_everything_it_depended_on_matches(common, monkeypatch):
    args = ["modelpool=fw_tiny_clip", "taskpool=dummy", "method=fw_hard", "method.max_iters=3", "path.log_dir=/x"]
    method = common.composed_method(args[:-1])
    assert method["max_iters"] == 3 and method["step_rule"] == "line_search"  # resolved, defaults included
    here = {"code_id": "c1", "packages": {"torch": "2.13.0"}, "build_id": "b1"}
    done = {"args": args, "rc": 0, "seconds": 9.0, "method": method, "provenance": dict(here)}
    assert common._why_not_reusable(done, args, here) is None
    assert common._why_not_reusable(done, [*args[:-2], "method.max_iters=4", args[-1]], here) == "other arguments"
    assert common._why_not_reusable({**done, "rc": 1}, args, here) == "it failed"
    for key, value in (("code_id", "c2"), ("packages", {"torch": "2.14.1"}), ("build_id", "b2")):
        assert common._why_not_reusable(done, args, {**here, key: value}) == f"other {key}"
    # the same arguments resolve to other options once a default changes (the trap of keying on arguments)
    stale = {**done, "method": {**method, "step_rule": "fw_default"}}
    assert common._why_not_reusable(stale, args, here) == "other resolved options"


def test_total_time_adds_each_run_once_and_lists_the_reused(common):
    rows = [
        {"method": "a", "args": ["x"], "seconds": 10.0, "reused": True},
        {"method": "a again", "args": ["x"], "seconds": 10.0, "reused": True},  # the same run, shared
        {"method": "b", "args": ["y"], "seconds": 5.5, "reused": False},
        {"method": "skipped", "seconds": 0.0},
    ]
    assert common.total_seconds(rows) == {"total_seconds": 15.5, "reused_rows": ["a"]}
