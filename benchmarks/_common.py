"""Shared helpers of the benchmark scripts: run the real ``fusion_bench`` CLI in a subprocess,
offline (with the runner the tests use, :mod:`fusion_bench_fw.offline.cli`), and read back
its ``program_report.json``."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusion_bench_fw.offline import cli
from fusion_bench_fw.offline.cli import cli_args, report_accuracies
from fusion_bench_fw.offline.cli import hydra_quote as quote  # noqa: F401 (the scripts' name for it)

REPO_ROOT = Path(__file__).resolve().parents[1]

# The real protocol: FusionBench's ViT-B/32 pools, through the plugin's aliases.
_TALL20 = [
    *("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"),
    *("oxford_flowers102", "pcam", "fer2013", "oxford-iiit-pet", "stl10", "cifar100"),
    *("cifar10", "food101", "fashion_mnist", "emnist_letters", "kmnist", "rendered-sst2"),
]
HUB_TASKS = {"TA8": _TALL20[:8], "TA14": _TALL20[:14], "TA20": _TALL20}  # each pool extends the one before

CUDA_PATTERNS = (
    "Torch not compiled with CUDA enabled",
    "Found no NVIDIA driver",
    "CUDA driver",
    "No CUDA GPUs are available",
    "cuda is not available",
)


@dataclass
class RunResult:
    label: str
    args: list[str]
    status: str  # ok | needs CUDA | failed
    seconds: float
    accuracy: dict[str, float] = field(default_factory=dict)  # task -> accuracy in [0, 1]
    average: float | None = None
    error: str | None = None
    log_dir: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _error_line(output: str) -> str:
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for l in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", l) or "Error:" in l:
            return l[:300]
    return (lines[-1] if lines else "no output")[:300]


def run_fusion_bench(
    label: str,
    args: Sequence[str],
    out_dir: Path,
    env: dict[str, str] | None = None,
    threads: int = 2,
    timeout: float = 3600,
    verbose: bool = True,
    reuse: bool = False,
) -> RunResult:
    """Run ``fusion_bench *args`` with outputs, logs and caches under ``out_dir``
    (:func:`fusion_bench_fw.offline.cli.run_fusion_bench`, from ``out_dir``: never the
    checkout, whose ``./config`` would hide FusionBench's own configs)."""
    out_dir = Path(out_dir).resolve()
    full_args = cli_args(args, out_dir)
    if reuse and (out_dir / "run.json").is_file():
        done = json.loads((out_dir / "run.json").read_text())
        if done.get("args") == full_args and done.get("rc") == 0:
            result = _result(label, full_args, out_dir, (out_dir / "cli_output.txt").read_text(), 0, done["seconds"])
            if verbose:
                print(f"  {label:<28} (reused {out_dir})", flush=True)
            return result
    if out_dir.exists():
        shutil.rmtree(out_dir)
    run = cli.run_fusion_bench(args, out_dir, env=env, threads=threads, timeout=timeout)
    output, rc, seconds = run.output, (-1 if run.timed_out else run.returncode), round(run.seconds, 1)
    (out_dir / "cli_output.txt").write_text(output)
    (out_dir / "run.json").write_text(json.dumps({"args": run.args, "rc": rc, "seconds": seconds}))
    result = _result(label, run.args, out_dir, output, rc, seconds)
    if verbose:
        shown = f"avg {100 * result.average:.1f}" if result.average is not None else f"{result.status}: {result.error}"
        print(f"  {label:<28} {seconds:7.1f}s  {shown}", flush=True)
    return result


def _result(label: str, cli: list[str], out_dir: Path, output: str, rc: int, seconds: float) -> RunResult:
    result = RunResult(label=label, args=cli, status="ok", seconds=seconds, log_dir=str(out_dir / "log"))
    reports = sorted(out_dir.rglob("program_report.json"))
    if rc != 0 or not reports:
        cuda = any(p.lower() in output.lower() for p in CUDA_PATTERNS)
        result.status = "needs CUDA" if cuda else "failed"
        if rc < 0:  # a signal: its output ends mid progress bar, say what killed it instead
            result.error = f"killed by signal {-rc}" + (" (SIGKILL: out of memory?)" if rc == -9 else "")
        else:
            result.error = _error_line(output) if rc != 0 else "no program_report.json"
    else:
        acc = report_accuracies(json.loads(reports[0].read_text()))
        result.average = acc.pop("average", None)
        result.accuracy = acc
        if not acc:
            result.status, result.error = "failed", "no accuracies in program_report.json"
        elif result.average is None:
            result.average = sum(acc.values()) / len(acc)
    return result


def drop_models(
    names: Sequence[str], datasets: bool = True, keep_clip_tasks: Sequence[str] = (), clip: bool = True
) -> list[str]:
    """Hydra overrides removing models (and their data sets) from the composed model pool.

    ``keep_clip_tasks``: names whose CLIP task registration stays (tasks FW still targets:
    it builds their zero-shot heads before the task pool registers anything); ``clip=False``:
    a pool without CLIP task names (the text benchmark's)."""
    out = []
    for n in names:
        out.append(f"~modelpool.models.{n}")
        if clip and n not in keep_clip_tasks:
            out.append(f"~modelpool.clip_tasks.{n}")
        if datasets:
            out.append(f"~modelpool.test_datasets.{n}")
    return out


def add_run_options(parser, full: dict, quick: dict) -> None:
    """Options both scripts share: reuse, threads, and one flag per step-count setting."""
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a run whose folder in --out holds a successful run with the same arguments",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per fusion_bench run (1: the tiny models "
        "gain nothing from more, and 2 threads thrash on shared cores)",
    )
    for k, v in full.items():
        parser.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {v} (quick: {quick[k]})")


def resolve_settings(args, full: dict, quick: dict) -> dict:
    """The step counts of this run: the full or quick defaults, with the flags given on top."""
    check_threads(args.threads)
    settings = dict(quick if args.quick else full)
    for k in full:
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    return settings


def check_threads(threads: int):
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if load > cores:
        print(f"note: load average {load:.1f} on {cores} cores; timings will be inflated", file=sys.stderr)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"
