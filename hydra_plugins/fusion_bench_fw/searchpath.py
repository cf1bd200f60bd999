"""Hydra search-path plugin of fusion-bench-fw.

Hydra imports every module under the ``hydra_plugins`` namespace at start-up, so once
fusion-bench-fw is importable (installed, editable, or from a source checkout on
``sys.path``), ``fusion_bench method=fw_hard ...`` finds this package's configs from any
folder. Two entries are appended after the primary config dir:

1. this plugin's configs: the installed ``fusion_bench_fw/config`` directory, or, in a source
   checkout, the repository-root ``config/`` next to the package;
2. FusionBench's own installed configs, as a fallback. ``fusion_bench`` picks ``./config``
   (or ``./fusion_bench_config``) from the current directory as its primary config dir when
   one exists; run from this repository's root, that would hide FusionBench's configs and
   fail with "Cannot find primary config 'fabric_model_fusion'".
"""

from __future__ import annotations

import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

try:  # FusionBench's OpenCLIP pools import typing.override, new in Python 3.12
    from fusion_bench_fw.compat import typing_override

    typing_override()
except ImportError:  # fusion_bench_fw not importable: plugin_config_dir says so
    pass


def plugin_config_dir() -> str | None:
    """The directory that holds fusion-bench-fw's ``method/``, ``modelpool/``... configs."""
    try:
        import fusion_bench_fw  # cheap: its FusionBench adapters are imported lazily
    except ImportError:
        return None
    package_dir = os.path.dirname(os.path.abspath(fusion_bench_fw.__file__))
    installed = os.path.join(package_dir, "config")
    if os.path.isdir(installed):
        return installed
    source_root = os.path.dirname(package_dir)
    checkout = os.path.join(source_root, "config")
    if os.path.isdir(checkout) and os.path.isfile(os.path.join(source_root, "pyproject.toml")):
        return checkout
    return None


def compose_fusion_bench(overrides=()):
    """FusionBench's root config (``fabric_model_fusion``) as ``fusion_bench <overrides>`` composes it,
    with this plugin's configs found: inside the ``fusion_bench`` CLI (Hydra already initialised) on
    its own search path, elsewhere (the Python API, scripts, tests) from FusionBench's config dir. The
    one place this package composes a config outside the CLI."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="fabric_model_fusion", overrides=list(overrides))
    with initialize_config_dir(config_dir=fusion_bench_config_dir(), version_base=None):
        return compose(config_name="fabric_model_fusion", overrides=list(overrides))


def fusion_bench_config_dir() -> str | None:
    """FusionBench's installed config directory (the one holding ``fabric_model_fusion.yaml``)."""
    try:
        import fusion_bench  # a lazy module: cheap, but its __spec__ is None (find_spec fails)
    except ImportError:
        return None
    site_dir = os.path.dirname(os.path.abspath(list(fusion_bench.__path__)[0]))
    for name in ("fusion_bench_config", "config"):
        candidate = os.path.join(site_dir, name)
        if os.path.isfile(os.path.join(candidate, "fabric_model_fusion.yaml")):
            return candidate
    return None


class FusionBenchFWSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        own = plugin_config_dir()
        if own is not None:
            search_path.append(provider="fusion_bench_fw", path=f"file://{own}")
        fallback = fusion_bench_config_dir()
        if fallback is not None:
            search_path.append(provider="fusion_bench_fw-fallback", path=f"file://{fallback}")


def _register_method_schemas() -> None:
    """``method/_fw_hard_schema`` and ``method/_fw_soft_schema``: FWHard's and FWSoft's options with
    their defaults, the base of the ``method=fw_hard|fw_soft`` yamls (registered at Hydra start-up,
    which imports this module)."""
    try:
        from fusion_bench_fw.fusionbench.options import register_hydra_schemas
    except ImportError as exc:
        if exc.name and exc.name.startswith("fusion_bench_fw"):
            return  # not installed: plugin_config_dir() finds no configs either
        raise
    register_hydra_schemas()


_register_method_schemas()
