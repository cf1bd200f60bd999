"""Run the real ``fusion_bench`` CLI in a subprocess, offline, and read back what it wrote.

One runner for the tests (``tests/conftest.py``'s ``run_fusion_bench`` fixture) and the
benchmark scripts (``benchmarks/_common.py``)::

    run = run_fusion_bench(["method=fw_hard", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip"], out_dir)
    run.check().accuracies()      # {"tiny_colors": 0.9, ..., "average": ...}

Outputs, logs and FusionBench's cache go under ``out_dir`` (a fresh cache per run keeps its
joblib zero-shot-head cache, keyed on model paths, from serving heads of an older build); the
environment never reaches a hub (:data:`fusion_bench_fw.offline.OFFLINE_ENV`) and pins the
thread count (the tiny models gain nothing from more threads and lose a lot on shared cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import OFFLINE_ENV

INFO_FLAGS = ("--cfg", "-c", "--info")  # the CLI prints and exits: no output or log folders


def fusion_bench_executable() -> str:
    """The ``fusion_bench`` console script of the running interpreter's environment."""
    for name in ("fusion_bench", "fusion_bench.exe"):
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which("fusion_bench")
    if found is None:
        raise FileNotFoundError("the fusion_bench CLI is not installed next to this Python: pip install fusion-bench")
    return found


def cli_env(out_dir: os.PathLike, threads: int = 1, env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The CLI's environment: this one, offline, ``threads`` threads, FusionBench's cache under
    ``out_dir``, then ``env`` (a ``None`` value removes the variable)."""
    full = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    full["FUSION_BENCH_CACHE_DIR"] = str(Path(out_dir) / "cache")
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = str(value)
    return full


def cli_args(args: Iterable, out_dir: os.PathLike) -> list[str]:
    """``args`` with the output and log folders set under ``out_dir`` (unless the CLI only prints)."""
    args = [str(a) for a in args]
    if any(flag in args for flag in INFO_FLAGS):
        return args
    out_dir = Path(out_dir)
    return [*args, f"path.output_dir={hydra_path(out_dir / 'outputs')}", f"path.log_dir={hydra_path(out_dir / 'log')}"]


def hydra_path(path: os.PathLike) -> str:
    """A path as a Hydra override value: as is, or quoted when it holds characters that Hydra's
    override grammar reads (a comma would make it a list)."""
    text = str(path)
    return hydra_quote(text) if re.search(r"[,\s'\"\[\]{}()=\\$*?:]", text) else text


def hydra_quote(value) -> str:
    """A Hydra override value that is a plain string whatever it contains (in Hydra's quoted
    strings a backslash is an escape only before a quote or at the end)."""
    text = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, str(value))
    return '"' + text.replace('"', '\\"') + '"'


def report_accuracies(report) -> dict[str, float]:
    """``{task: accuracy}`` of a ``program_report.json`` (``average`` included when present); a
    report that nests several evaluated models (Surgery: ``{"adamerging": {...}, "surgery":
    {...}}``) gives its last one."""
    acc = {k: float(v["accuracy"]) for k, v in report.items() if isinstance(v, dict) and "accuracy" in v}
    if acc:
        return acc
    nested = [v for v in report.values() if isinstance(v, dict) and report_accuracies(v)]
    return report_accuracies(nested[-1]) if nested else {}


@dataclass
class CLIRun:
    """One finished ``fusion_bench`` run."""

    args: list[str]  # as passed to the CLI (output and log folders included)
    cwd: Path
    out_dir: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "log"

    @property
    def report_path(self) -> Path | None:
        reports = sorted(self.out_dir.rglob("program_report.json")) if self.out_dir.exists() else []
        return reports[0] if reports else None

    @property
    def report(self):
        path = self.report_path
        return json.loads(path.read_text()) if path is not None else None

    def accuracies(self) -> dict[str, float]:
        report = self.report
        assert isinstance(report, dict), f"no report dict under {self.out_dir}: {report!r}"
        return report_accuracies(report)

    def check(self) -> CLIRun:
        """Raise AssertionError, with the end of the CLI's output, unless the run succeeded."""
        if self.returncode != 0:
            raise AssertionError(
                f"fusion_bench {' '.join(self.args)} (cwd {self.cwd}) exited {self.returncode}"
                f"{' (timed out)' if self.timed_out else ''}:\n{self.output[-6000:]}"
            )
        return self


def run_fusion_bench(
    args: Iterable,
    out_dir: os.PathLike,
    cwd: os.PathLike | None = None,
    env: Mapping[str, str | None] | None = None,
    threads: int = 1,
    timeout: float = 600,
) -> CLIRun:
    """Run ``fusion_bench *args`` (see the module docstring); ``cwd`` defaults to ``out_dir``.

    Never run it from a checkout of this project without meaning to: its ``./config`` shadows
    FusionBench's config folder (the plugin's search path brings FusionBench's back, and the
    tests check that). The child's stdout and stderr are kept in ``out_dir`` too; a run past
    ``timeout`` seconds is killed and reported with ``timed_out``."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path(cwd) if cwd is not None else out_dir
    full_args = cli_args(args, out_dir)
    streams = out_dir / "cli_stdout.txt", out_dir / "cli_stderr.txt"
    t0 = time.perf_counter()
    with open(streams[0], "w") as stdout, open(streams[1], "w") as stderr:
        proc = subprocess.Popen(
            [fusion_bench_executable(), *full_args],
            cwd=cwd,
            env=cli_env(out_dir, threads, env),
            stdout=stdout,
            stderr=stderr,
        )
        killed = threading.Event()
        timer = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's peak memory too
        except BaseException:  # interrupted: never leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return CLIRun(
        args=full_args,
        cwd=cwd,
        out_dir=out_dir,
        returncode=proc.returncode,
        stdout=streams[0].read_text(),
        stderr=streams[1].read_text() + (f"\nTimeoutError: killed after {timeout}s" if killed.is_set() else ""),
        seconds=time.perf_counter() - t0,
        peak_rss_mb=usage.ru_maxrss / 1024,
        timed_out=killed.is_set(),
    )
