"""Shared fixtures: the tiny offline CLIP pool and a runner for the real ``fusion_bench`` CLI.

Layout: ``tests/unit`` runs in process; ``tests/integration`` spawns processes (the
``fusion_bench`` CLI, ``torch.distributed``), builds pools or measures memory, and every test
there is marked ``slow`` here. A unit test that takes seconds (a whole merge on the tiny CLIP
pool, a fresh interpreter) carries the ``slow`` mark itself. The fast loop is
``python -m pytest -n 2 -m "not slow" tests``; the full suite (CI) drops ``-m``.

Torch runs one thread per test process (set here, before any test; the ``fusion_bench`` runs
get one too, :func:`fusion_bench_fw.offline.cli.cli_env`): with ``-n 2`` that is one per core.
Under pytest-xdist the longest tests (:data:`LONGEST`) start first, so that ``--dist worksteal``
can spread the rest around them.

Fixtures:
    repo_root          the checkout (a folder with ./config: FusionBench's "./config trap").
    tiny_clip_root     a session-wide copy of the committed tiny CLIP pool (``tests/data/tiny_clip_pool``,
                       built by ``fusion_bench_fw.offline.tiny_clip``); a ``pathlib.Path``.
    tiny_clip_manifest its manifest (tasks, class names, the builder's accuracies, file hashes).
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

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_TINY_CLIP = REPO_ROOT / "tests" / "data" / "tiny_clip_pool"  # see tests/data/README.md
INTEGRATION = Path(__file__).resolve().parent / "integration"


# the tests that take minutes (the README's blocks, with the quick leaderboard; the text one), by file: started first
LONGEST = ("test_readme.py", "test_textbench.py")
THREADS = 1


def pytest_configure(config):
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # for the processes the tests start
    os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is ``slow``: ``-m "not slow"`` leaves the fast loop.
    The longest tests go first (a stable sort: the rest keep their order)."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: Path(str(item.fspath)).name not in LONGEST)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_clip_root(tmp_path_factory) -> Path:
    """A session copy of the committed tiny CLIP pool (``tests/data/tiny_clip_pool``): the same bytes
    on every machine, nothing to build. A copy, so that no test can write into the checkout."""
    root = tmp_path_factory.mktemp("tiny_clip") / "pool"
    shutil.copytree(GOLDEN_TINY_CLIP, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["root"] = str(root)  # as a build into this folder would have written it
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


@pytest.fixture
def tiny_env(tiny_clip_root, monkeypatch) -> Path:
    """The tiny CLIP pool where its configs look for it (the env var the pool's yaml reads)."""
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tiny_clip_root))
    return tiny_clip_root


@pytest.fixture(scope="session")
def tiny_clip_manifest(tiny_clip_root) -> dict:
    return json.loads((tiny_clip_root / "manifest.json").read_text())


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
    """In-process runs: one torch thread (reproducible, and fair to shared cores; a test may have
    changed it), FusionBench's joblib cache of zero-shot heads under ``tmp_path``, and ``tmp_path``
    as the working folder."""
    import fusion_bench.utils.cache_utils as cache_utils
    import torch

    monkeypatch.setattr(cache_utils, "DEFAULT_CACHE_DIR", tmp_path / "joblib_cache")
    monkeypatch.chdir(tmp_path)
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)
