"""Shared helpers of the benchmark scripts: run the real ``fusion_bench`` CLI in a subprocess,
offline (with the runner the tests use, :mod:`fusion_bench_fw.offline.cli`), read back its
``program_report.json``, and say where every result came from (:func:`provenance`).

Every results file records the provenance of the run that wrote it (git commit and whether the
tree was dirty, the command line, the machine, package versions, the plugin code's id, the
benchmark build's id), and every row its own (a reused row keeps the provenance of the run that
made it) with the method's fully resolved options, as the CLI resolved them. ``--reuse`` reuses a
row only when its arguments, resolved options, build id, plugin code and package versions all match."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
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


# ------------------------------------------------------------------------------------ provenance
PACKAGES = ("fusion-bench-fw", "fusion-bench", "torch", "transformers", "datasets", "lightning", "hydra-core", "numpy")
CODE = ("fusion_bench_fw", "config", "hydra_plugins")  # what the plugin's behaviour depends on


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def code_id() -> str:
    """A hash of the plugin's code and configs (``CODE`` under the checkout): runs of the same
    code id ran the same plugin, whatever the commit says."""
    h = hashlib.sha256()
    for top in CODE:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
    }


def build_id(manifest: dict | None) -> str | None:
    """The id of a benchmark build: a hash of its build settings and seed (its manifest's key and scope)."""
    if not manifest:
        return None
    key = {"key": manifest.get("key"), "scope": manifest.get("scope")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def provenance(manifest: dict | None = None, command: Sequence[str] | None = None) -> dict:
    """Where a result comes from (see the module docstring); ``manifest``: the build it ran on."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": (_git("rev-parse", "HEAD") or "").strip() or None,
        "git_dirty": None if status is None else bool(status.strip()),
        "code_id": code_id(),
        "command": shlex.join(["python", *(command if command is not None else sys.argv)]),
        "machine": machine_info(),
        "packages": package_versions(),
        "build_id": build_id(manifest),
        "build_key": (manifest or {}).get("key"),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_provenance(p: dict | None) -> str:
    """One line for a results page: commit, machine, build, packages."""
    if not p:
        return "Provenance: not recorded."
    m, pk = p["machine"], p["packages"]
    dirty = " (dirty tree)" if p.get("git_dirty") else ""
    return (
        f"Provenance: commit {(p.get('git_commit') or '?')[:10]}{dirty}, plugin code {p['code_id']}, build {p.get('build_id')}; "
        f"{m['cpu']}, {m['cores']} cores, {m['torch_cpu_capability']}, {m['device']}; torch {pk['torch']}, "
        f"fusion-bench {pk['fusion-bench']}, transformers {pk['transformers']}; `{p['command']}` ({p['time']})."
    )


def resolved_method(log_dir: Path) -> dict | None:
    """The method's options as the CLI resolved them (defaults included): its saved config."""
    import yaml

    path = Path(log_dir) / "config.yaml"
    return yaml.safe_load(path.read_text()).get("method") if path.is_file() else None


def composed_method(args: Sequence[str]) -> dict:
    """The method's options as ``fusion_bench *args`` would resolve them, composed here (for --reuse)."""
    from omegaconf import OmegaConf

    from hydra_plugins.fusion_bench_fw.searchpath import compose_fusion_bench

    return OmegaConf.to_container(compose_fusion_bench(args).method, resolve=False)


REUSE_MUST_MATCH = ("code_id", "packages", "build_id")


def total_seconds(rows: Sequence[dict]) -> dict:
    """The rows' measured times added up, each run once (rows that share a run share its time; a
    reused row counts at the time it took when it ran, and is listed)."""
    seen, total, reused = set(), 0.0, []
    for r in rows:
        key = json.dumps(r.get("args"), sort_keys=True) if r.get("args") else id(r)
        if key in seen:
            continue
        seen.add(key)
        total += r.get("seconds") or 0.0
        if r.get("reused"):
            reused.append(r.get("method") or r.get("label"))
    return {"total_seconds": round(total, 1), "reused_rows": reused}


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
    method: dict | None = None  # the resolved options
    provenance: dict | None = None  # of the run that made this result
    reused: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    def row(self, **first) -> dict:
        """A results row: ``first`` (its name...), the scores, and where they came from."""
        return dict(
            **first,
            status=self.status,
            accuracy=self.accuracy,
            average=self.average,
            seconds=self.seconds,
            error=self.error,
            reused=self.reused,
            args=self.args,
            method_options=self.method,
            provenance=self.provenance,
        )


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
    manifest: dict | None = None,
) -> RunResult:
    """Run ``fusion_bench *args`` with outputs, logs and caches under ``out_dir``
    (:func:`fusion_bench_fw.offline.cli.run_fusion_bench`, from ``out_dir``: never the
    checkout, whose ``./config`` would hide FusionBench's own configs). ``manifest``: the build
    the run reads (its id goes into the run's provenance). With ``reuse``, an earlier run in
    ``out_dir`` is returned instead when everything it depended on matches (module docstring)."""
    out_dir = Path(out_dir).resolve()
    full_args = cli_args(args, out_dir)
    here = provenance(manifest)
    if reuse and (out_dir / "run.json").is_file():
        done = json.loads((out_dir / "run.json").read_text())
        why_not = _why_not_reusable(done, full_args, here)
        if why_not is None:
            result = _result(label, full_args, out_dir, (out_dir / "cli_output.txt").read_text(), 0, done["seconds"])
            result.provenance, result.reused = done["provenance"], True
            if verbose:
                print(f"  {label:<28} (reused {out_dir})", flush=True)
            return result
        if verbose:
            print(f"  {label:<28} (not reused: {why_not})", flush=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    run = cli.run_fusion_bench(args, out_dir, env=env, threads=threads, timeout=timeout)
    output, rc, seconds = run.output, (-1 if run.timed_out else run.returncode), round(run.seconds, 1)
    (out_dir / "cli_output.txt").write_text(output)
    method = resolved_method(out_dir / "log")
    record = {"args": run.args, "rc": rc, "seconds": seconds, "method": method, "provenance": here}
    (out_dir / "run.json").write_text(json.dumps(record, indent=1))
    result = _result(label, run.args, out_dir, output, rc, seconds)
    result.provenance = here
    if verbose:
        shown = f"avg {100 * result.average:.1f}" if result.average is not None else f"{result.status}: {result.error}"
        print(f"  {label:<28} {seconds:7.1f}s  {shown}", flush=True)
    return result


def _why_not_reusable(done: dict, args: list[str], here: dict) -> str | None:
    """Why an earlier run cannot stand for this one (None: it can)."""
    if done.get("args") != args:
        return "other arguments"
    if done.get("rc") != 0:
        return "it failed"
    then = done.get("provenance") or {}
    for key in REUSE_MUST_MATCH:
        if then.get(key) != here.get(key):
            return f"other {key}"
    if done.get("method") is None or done["method"] != composed_method([a for a in args if not a.startswith("path.")]):
        return "other resolved options"
    return None


def _result(label: str, cli: list[str], out_dir: Path, output: str, rc: int, seconds: float) -> RunResult:
    result = RunResult(label=label, args=cli, status="ok", seconds=seconds, log_dir=str(out_dir / "log"))
    result.method = resolved_method(out_dir / "log")
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


def mini_build(
    scope_or_pool: str,
    *,
    seed: int = 0,
    root: str | None = None,
    quick: bool = False,
    threads: int = 1,
    zoo: Sequence[str] | None = None,
):
    """The mini benchmark's build (built if needed) for a scope (``ta8``...``all``) or a model pool
    (its smallest scope), returning the manifest: seed 0 at ``root`` (default: the env var or the
    cache dir), seed k beside it at ``<root>-seed<k>``. ``zoo``: also the model zoo over it, with
    these variants, returning the zoo's manifest. The one place the scripts set a build up."""
    from fusion_bench_fw.offline import minibench

    scope = scope_or_pool
    if scope not in minibench.SCOPES:
        scope = minibench.scope_for(minibench.pool_contents()[scope_or_pool][1])
    params = minibench.BuildParams(scope=scope, **(minibench.QUICK if quick else {}), seed=seed, threads=threads)
    root = root or os.environ.get(minibench.ENV_VAR) or minibench.default_root()
    root = root if seed == 0 else f"{root.rstrip('/')}-seed{seed}"
    if zoo is not None:
        return minibench.build_zoo(root, minibench.ZooParams(params, tuple(zoo)))
    return minibench.build(root, params)


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
