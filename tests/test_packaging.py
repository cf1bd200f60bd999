"""Packaging: entry points, the package list, and that the installed configs are findable."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_installed_plugin_finds_its_configs(tmp_path):
    # run outside the checkout, so that what is installed (editable or not) is what is tested
    code = (
        "import os, fusion_bench_fw\n"
        "from hydra_plugins.fusion_bench_fw.searchpath import plugin_config_dir, fusion_bench_config_dir\n"
        "print(fusion_bench_fw.__file__); print(plugin_config_dir()); print(fusion_bench_config_dir())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip("fusion-bench-fw is not installed")
    assert proc.returncode == 0, proc.stderr
    _, own, fallback = proc.stdout.split()
    for rel in (
        "modelpool/fw_tiny_clip.yaml",
        "taskpool/fw_tiny_clip.yaml",
        "modelpool/clip-vit-b32_TA20.yaml",
        "taskpool/clip-vit-l14_TA14.yaml",
    ):
        assert os.path.isfile(os.path.join(own, rel)), (own, rel)
    assert os.path.isfile(os.path.join(fallback, "fabric_model_fusion.yaml"))


def test_searchpath_plugin_is_discovered_by_hydra(tmp_path):
    code = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.search_path_plugin import SearchPathPlugin\n"
        "print([p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip("hydra or fusion-bench-fw is not installed")
    assert proc.returncode == 0, proc.stderr
    assert "FusionBenchFWSearchPathPlugin" in proc.stdout
