"""The core is pure PyTorch: ``fusion_bench_fw.core`` imports neither FusionBench, nor the adapter,
nor the offline builders (nor ``load_errors``, which knows them).

Two checks: every import statement of the core's modules, read from their source (fast: which
names each module imports, at any depth of the code); and importing every module of the core in a
fresh interpreter (this test process has long imported FusionBench), then listing what got loaded
(about 3 s: the full suite's)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fusion_bench_fw.core as core

CORE = Path(core.__file__).parent
FORBIDDEN = ("fusion_bench", "fusion_bench_fw.fusionbench", "fusion_bench_fw.offline", "fusion_bench_fw.load_errors")


def _imported(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved within the core)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the core package (level 1) or above it
                parent = ["fusion_bench_fw", "core"][: 3 - node.level]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_core_module_imports_fusion_bench_the_adapter_or_the_builders():
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 15
    found = {p.name: sorted(n for n in _imported(p) if _forbidden(n)) for p in modules}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ..load_errors import explain_load_failure\n    import fusion_bench\n")
    assert {n for n in _imported(module) if _forbidden(n)} == {
        "fusion_bench_fw.load_errors",
        "fusion_bench_fw.load_errors.explain_load_failure",
        "fusion_bench",
    }


CHILD = """
import importlib, json, pkgutil, sys
import fusion_bench_fw.core as core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, core.__name__ + "."))
for name in names + ["fusion_bench_fw.plot_history"]:
    importlib.import_module(name)
forbidden = ("fusion_bench", "fusion_bench_fw.fusionbench", "fusion_bench_fw.offline", "fusion_bench_fw.load_errors")
leaked = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
print(json.dumps({"imported": names, "leaked": leaked}))
"""


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_importing_the_core_loads_none_of_them():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fusion_bench_fw.core.solver" in result["imported"] and "fusion_bench_fw.core.stores" in result["imported"]
    assert result["leaked"] == []
