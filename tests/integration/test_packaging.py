"""Packaging, in fresh interpreters: the installed configs and the search-path plugin are found
(entry points and the package list: tests/unit/test_packaging_metadata.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


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
