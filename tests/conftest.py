"""Shared fixtures: the tiny offline CLIP pool and a runner for the real ``fusion_bench`` CLI.

Fixtures:
    repo_root          the checkout (a folder with ./config: FusionBench's "./config trap").
    tiny_clip_root     session-wide tiny pool (``fusion_bench_fw.offline.tiny_clip``), built once
                       into a temporary folder; a ``pathlib.Path``.
    tiny_clip_manifest its manifest (tasks, class names, in-process accuracies, file hashes).
    tiny_lm_root       session-wide tiny language-model pools (``fusion_bench_fw.offline.tiny_lm``:
                       GPT-2 classification, GPT-2 causal LM, T5), built once; a ``pathlib.Path``.
    run_fusion_bench   ``run_fusion_bench(args, cwd=None, env=None, tiny=True, timeout=...)``
                       runs ``fusion_bench *args`` in a subprocess, offline, with outputs, logs
                       and caches in a fresh temporary folder, and returns a ``FusionBenchRun``
                       (``.proc``, ``.log_dir``, ``.report_path``, ``.report``,
                       ``.accuracies()``, ``.check()``). With ``tiny=True`` the environment
                       carries ``FUSION_BENCH_FW_TINY_ROOT`` of the session's tiny pool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fusion_bench_fw.offline import OFFLINE_ENV as _OFFLINE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]

# The CLI must never reach a hub; the tiny models gain nothing from more threads, and lose a
# lot when the cores are shared.
OFFLINE_ENV = {**_OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fusion_bench_executable() -> str:
    """The ``fusion_bench`` console script of the running interpreter's environment."""
    bindir = Path(sys.executable).parent
    for name in ("fusion_bench", "fusion_bench.exe"):
        if (bindir / name).exists():
            return str(bindir / name)
    found = shutil.which("fusion_bench")
    if found is None:
        pytest.fail("the fusion_bench CLI is not installed next to this Python")
    return found


@dataclass
class FusionBenchRun:
    proc: subprocess.CompletedProcess
    args: list
    cwd: Path
    log_dir: Path
    report_path: Path | None = None
    report: object | None = field(default=None, repr=False)

    @property
    def output(self) -> str:
        return (self.proc.stdout or "") + (self.proc.stderr or "")

    def check(self) -> FusionBenchRun:
        """Fail the test, with the end of the CLI's output, unless the run succeeded."""
        if self.proc.returncode != 0:
            tail = self.output[-6000:]
            pytest.fail(f"fusion_bench {' '.join(self.args)} (cwd {self.cwd}) exited {self.proc.returncode}:\n{tail}")
        return self

    def accuracies(self) -> dict[str, float]:
        """``{task: accuracy}`` from the report (the ``average`` entry included)."""
        assert isinstance(self.report, dict), f"no report dict in {self.log_dir}: {self.report!r}"
        return {k: v["accuracy"] for k, v in self.report.items() if isinstance(v, dict) and "accuracy" in v}


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
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    counter = [0]

    def run(
        args: Iterable[str],
        cwd: os.PathLike | None = None,
        env: dict[str, str] | None = None,
        tiny: bool = True,
        timeout: float = 600,
    ) -> FusionBenchRun:
        counter[0] += 1
        out = tmp_path / f"fusion_bench_run{counter[0]}"
        log_dir = out / "log"
        full_env = dict(os.environ)
        full_env.update(OFFLINE_ENV)
        full_env["FUSION_BENCH_CACHE_DIR"] = str(out / "cache")
        full_env.pop(ENV_VAR, None)
        if tiny:
            full_env[ENV_VAR] = str(request.getfixturevalue("tiny_clip_root"))
        full_env.update(env or {})
        args = [str(a) for a in args]
        cli_args = list(args)
        if "--cfg" not in args and "-c" not in args and "--info" not in args:
            cli_args += [f"path.output_dir={out / 'outputs'}", f"path.log_dir={log_dir}"]
        cwd = Path(cwd) if cwd is not None else tmp_path
        proc = subprocess.run(
            [fusion_bench_executable(), *cli_args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = FusionBenchRun(proc=proc, args=cli_args, cwd=cwd, log_dir=log_dir)
        reports = sorted(out.rglob("program_report.json")) if out.exists() else []
        if reports:
            result.report_path = reports[0]
            result.report = json.loads(reports[0].read_text())
        return result

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
