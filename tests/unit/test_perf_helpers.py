"""The benchmarks' page-cache helpers (benchmarks/_perf.py) and lora_scale.py's refusal of cells that
cannot fit, before anything is built: fast, no model."""

from __future__ import annotations

import os

import pytest
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


def test_lora_cells_past_memory_or_disk_are_refused():
    """The factored store holds every adapter's factors: 1000 adapters of all seven modules of a
    1.1B LLaMA need about 23.5 GiB of them; on q/v only, 4.3 GiB."""
    lora = load_script("lora_scale")
    gib = 2**30
    assert lora.adapter_bytes(lora.LLAMA_1B) / 2**20 == pytest.approx(24.1, abs=0.1)
    reason = lora.skip_reason("factored", 1000, lora.LLAMA_1B, lora.TARGETS, int(18.4 * gib), 60 * gib)
    assert reason and "factors 23.5" in reason
    assert lora.skip_reason("factored", 1000, lora.LLAMA_1B, ("q_proj", "v_proj"), int(18.4 * gib), 60 * gib) is None
    assert "on disk" in lora.skip_reason("factored", 1000, lora.LLAMA_1B, ("q_proj", "v_proj"), 30 * gib, 1 * gib)
    written = lora.skip_reason("factored", 1000, lora.LLAMA_1B, ("q_proj", "v_proj"), 30 * gib, 1 * gib, on_disk=1000)
    assert written is None  # adapters already written cost no disk
