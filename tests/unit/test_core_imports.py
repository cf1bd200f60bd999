"""The core is pure PyTorch: importing every module of ``fusion_bench_fw.core`` (and the
FusionBench-free tools next to it) leaves ``fusion_bench`` out of ``sys.modules``.

Checked in a fresh interpreter, since this test process has long imported FusionBench (the child's
imports take about 3 s here: the full suite's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import importlib, json, pkgutil, sys
import fusion_bench_fw.core as core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, core.__name__ + "."))
for name in names + ["fusion_bench_fw.load_errors", "fusion_bench_fw.plot_history"]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m == "fusion_bench" or m.startswith("fusion_bench."))
print(json.dumps({"imported": names, "leaked": leaked}))
"""


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_importing_the_core_leaves_fusion_bench_out():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fusion_bench_fw.core.solver" in result["imported"] and "fusion_bench_fw.core.stores" in result["imported"]
    assert result["leaked"] == []
