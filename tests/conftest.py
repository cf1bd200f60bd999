"""Shared fixtures: the tiny offline CLIP pool and a runner for the real ``fusion_bench`` CLI.

Layout: ``tests/unit`` runs in process in seconds; ``tests/integration`` spawns processes (the
``fusion_bench`` CLI, ``torch.distributed``), builds pools or measures memory, and every test
there is marked ``slow`` here. The fast loop is ``python -m pytest -m "not slow" tests``.

Fixtures:
    repo_root          the checkout (a folder with ./config: FusionBench's "./config trap").
    tiny_clip_root     session-wide tiny pool (``fusion_bench_fw.offline.tiny_clip``), built once
                       into a temporary folder; a ``pathlib.Path``.
    tiny_clip_manifest its manifest (tasks, class names, in-process accuracies, file hashes).
    tiny_lm_root       session-wide tiny language-model pools (``fusion_bench_fw.offline.tiny_lm``:
                       GPT-2 classification, GPT-2 causal LM, T5), built once; a ``pathlib.Path``.
    run_fusion_bench   ``run_fusion_bench(args, cwd=None, env=None, tiny=True, timeout=...)``
                       runs ``fusion_bench *args`` with :func:`fusion_bench_fw.offline.cli.run_fusion_bench`
                       (offline, outputs, logs and caches in a fresh temporary folder) and returns
                       its ``CLIRun`` (``.stdout``, ``.log_dir``, ``.report_path``, ``.report``,
                       ``.accuracies()``, ``.check()``). With ``tiny=True`` the environment carries
                       ``FUSION_BENCH_FW_TINY_ROOT`` of the session's tiny pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is ``slow``: ``-m "not slow"`` leaves the fast loop."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_clip_manifest(tmp_path_factory) -> dict:
    from fusion_bench_fw.offline.tiny_clip import build_tiny_clip_pool

    root = tmp_path_factory.mktemp("tiny_clip")
    return build_tiny_clip_pool(root)


@pytest.fixture(scope="session")
def tiny_clip_root(tiny_clip_manifest) -> Path:
    return Path(tiny_clip_manifest["root"])


@pytest.fixture
def run_fusion_bench(request, tmp_path):
    """See the module docstring."""
    from fusion_bench_fw.offline.cli import CLIRun, run_fusion_bench
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    counter = [0]

    def run(
        args: Iterable[str],
        cwd: os.PathLike | None = None,
        env: dict[str, str] | None = None,
        tiny: bool = True,
        timeout: float = 600,
    ) -> CLIRun:
        counter[0] += 1
        tiny_env = {ENV_VAR: str(request.getfixturevalue("tiny_clip_root")) if tiny else None}
        out = tmp_path / f"fusion_bench_run{counter[0]}"
        return run_fusion_bench(args, out, cwd=cwd or tmp_path, env={**tiny_env, **(env or {})}, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tiny_lm_root(tmp_path_factory) -> Path:
    import torch

    from fusion_bench_fw.offline.tiny_lm import build_tiny_lm_pools

    torch.set_num_threads(1)
    return Path(build_tiny_lm_pools(str(tmp_path_factory.mktemp("tiny_lm")))["root"])


@pytest.fixture
def one_thread_private_cache(monkeypatch, tmp_path):
    """In-process runs: one torch thread (reproducible, and fair to shared cores), FusionBench's
    joblib cache of zero-shot heads under ``tmp_path``, and ``tmp_path`` as the working folder."""
    import fusion_bench.utils.cache_utils as cache_utils
    import torch

    monkeypatch.setattr(cache_utils, "DEFAULT_CACHE_DIR", tmp_path / "joblib_cache")
    monkeypatch.chdir(tmp_path)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
