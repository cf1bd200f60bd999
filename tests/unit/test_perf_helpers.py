"""The benchmarks' page-cache helpers (benchmarks/_perf.py): fast, no model."""

from __future__ import annotations

import os

from bench_scripts import load_script, on_tmpfs


def test_page_cache_helpers_evict_read_and_measure(tmp_path):
    perf = load_script("_perf")
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(4 << 20))
    perf.read_through([str(path)])
    assert perf.resident_fraction([str(path)]) == 1.0
    perf.drop_from_page_cache([str(path)])
    if not on_tmpfs(tmp_path):
        assert perf.resident_fraction([str(path)]) < 0.05
    assert perf.read_through([str(path)]) > 0 and perf.resident_fraction([str(path)]) == 1.0
    assert perf.meminfo("MemTotal") >= perf.meminfo() > 0
