"""Packaging metadata: the entry points name the algorithms, pyproject lists every package
(that the installed configs are found from a fresh interpreter: tests/integration/test_packaging.py)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _installed() -> bool:
    try:
        importlib.metadata.distribution("fusion-bench-fw")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="fusion-bench-fw is not installed (pip install -e .)")
def test_entry_points_name_the_algorithms():
    eps = importlib.metadata.entry_points(group="fusion_bench.algorithms")
    by_name = {ep.name: ep.value for ep in eps}
    assert by_name.get("fw_hard") == "fusion_bench_fw:FWHard"
    assert by_name.get("fw_soft") == "fusion_bench_fw:FWSoft"


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"hydra_plugins"}
    for top in ("fusion_bench_fw", "hydra_plugins"):
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO_ROOT).parts))
    # the repo-root config/ ships as fusion_bench_fw.config, each config group a (data) package
    for group in {p.parent for p in (REPO_ROOT / "config").rglob("*.yaml")} | {REPO_ROOT / "config"}:
        found.add(".".join(("fusion_bench_fw", *group.relative_to(REPO_ROOT).parts)))
    assert listed == found
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {name for name in found if name.startswith("fusion_bench_fw.config")} == set(package_data)
    assert not (REPO_ROOT / "hydra_plugins" / "__init__.py").exists()  # must stay a namespace
