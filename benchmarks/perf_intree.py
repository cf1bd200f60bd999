"""Peak memory vs pool size N: FusionBench's in-tree FW-Merging next to this plugin's FWHard/FWSoft.

FusionBench 0.2.33 ships ``fusion_bench.method.FrankWolfeHardAlgorithm`` and
``FrankWolfeSoftAlgorithm``. They load every pool model into host memory before the first
iteration and call ``.cuda()`` unconditionally, so they run on a CUDA machine only. This script
drives both of them, and the plugin's ``FWHard`` / ``FWSoft``, in-process through
``run(modelpool)`` on the same on-disk pool. Each configuration (implementation, variant, N) runs
in a fresh child process, and two numbers are recorded for it:

- peak host RSS: the child's ``ru_maxrss``, read with ``wait4``, counted from process start;
- peak device memory: ``torch.cuda.max_memory_allocated``, never reset, so also from process start.

The pool is built by ``benchmarks/perf.py``'s ``build_pool``, or reused if already built. It holds
ViT-B/32-shaped CLIP vision towers with random weights (about 88M parameters, 334 MiB each). A
CLIPModel with tiny_clip's text tower makes the zero-shot heads. There are 4 tiny labelled task
data sets (``datasets.save_to_disk``). The pool is a ``CLIPVisionModelPoolWithTasks`` built from a
config dict: the 4 tasks plus ``extra_XX`` names, all registered as CLIP tasks so that the in-tree
methods can build a zero-shot head for every model name, as they do. Gradients use only the 4
tasks (``tasks=`` / ``targets=``). Only memory vs N matters here, so every run is short
(``--iters``, ``--samples``, ``--ada-iters``). Wall times are recorded but not comparable: the
in-tree methods take one image per forward pass, and children run ``--jobs`` at a time.

Needs a CUDA machine with fusion-bench 0.2.33 (and so ``transformers<5.6``), ``datasets`` and this
package importable::

    python benchmarks/perf_intree.py --out outputs/perf_intree            # N = 4 8 12 16 20
    python benchmarks/perf_intree.py --sizes 4 8 --impls intree --jobs 1  # a subset

Results go to ``--out`` (perf_intree.json, perf_intree.md). ``--cpu-smoke`` checks the plumbing on
a machine without a GPU: it turns ``.cuda()`` into a no-op, uses 2-layer towers, and its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = Path(os.environ.get("FUSION_BENCH_FW_REPO", HERE.parent)).resolve()
for _p in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import _perf as perf  # noqa: E402  (the pool builder and report helpers the perf benchmarks share)

IMPLS = ("intree", "plugin")
VARIANTS = ("hard", "soft")


# ------------------------------------------------------------------- one configuration (child)
def pool_config(root: Path, n: int) -> dict:
    """FusionBench model pool config for the first ``n`` candidates of the on-disk pool."""
    from fusion_bench_fw.offline import tiny_clip

    names = perf.candidate_names(n)
    models = root / "models"
    data = lambda task, split: {
        "_target_": "datasets.load_from_disk",  # noqa: E731
        "dataset_path": str(root / "data" / task / split),
    }
    # every model name is a CLIP task (the in-tree methods build a head per model name);
    # the extra names borrow a tiny task's class names
    clip_tasks = {
        name: {"classnames": list(tiny_clip.TASKS[perf.TASKS[i % len(perf.TASKS)]].classnames)}
        for i, name in enumerate(names)
    }
    return {
        "_target_": "fusion_bench_fw.CLIPVisionModelPoolWithTasks",
        "_recursive_": False,
        "processor": str(models / "_pretrained_"),
        "clip_tasks": clip_tasks,
        "models": {"_pretrained_": str(models / "_pretrained_"), **{m: str(models / m) for m in names}},
        "train_datasets": {t: data(t, "train") for t in perf.TASKS},
        "test_datasets": {t: data(t, "test") for t in perf.TASKS},
    }


def make_algorithm(spec: dict):
    tasks = list(perf.TASKS)
    if spec["impl"] == "intree":
        from fusion_bench.method import FrankWolfeHardAlgorithm, FrankWolfeSoftAlgorithm

        if spec["variant"] == "hard":  # fusion_bench_config/method/fw_merging/fw_hard.yaml, shortened
            return FrankWolfeHardAlgorithm(
                merge_fn="task_arithmetic",
                step_size=0.1,
                max_iters=spec["iters"],
                dataset_size=spec["samples"],
                tasks=tasks,
                granularity="task",
                scaling_factor=0.3,
            )
        return FrankWolfeSoftAlgorithm(
            max_iters=spec["iters"],
            dataset_size=spec["samples"],  # fw_soft.yaml
            ada_iters=spec["ada_iters"],
            ada_coeff=1e-8,
            merge_fn="adamerging",
            granularity="task",
            step_size=0.1,
            tasks=tasks,
            ada_loss="entropy_loss",
        )
    from fusion_bench_fw import FWHard, FWSoft

    common = dict(
        targets=tasks,
        n_per_task=spec["samples"],
        batch_size=spec["samples"],
        max_iters=spec["iters"],
        progress=False,
        allow_fewer_samples=True,
    )
    if spec["variant"] == "hard":
        return FWHard(**common)
    return FWSoft(inner_steps=spec["ada_iters"], **common)


def relax_parameter_type_check() -> None:
    """Let fusion-bench 0.2.33's state-dict arithmetic accept a Parameter next to a plain Tensor.

    Its ``task_arithmetic_merge`` (fw_hard.py) adds ``state_dict(keep_vars=True)`` (Parameters) to
    a task vector (plain Tensors), and ``_validate_state_dict_same_keys`` rejects that with
    ``TypeError: Tensor type mismatch ... expected Parameter, got Tensor``. So the in-tree FW-hard
    with ``merge_fn=task_arithmetic`` (its default config) fails in its first merge, on any device.
    The check sees ``.data`` views instead (no copy), so the algorithm's memory is unchanged.
    """
    import torch
    from fusion_bench.utils import state_dict_arithmetic as sda

    original = sda._validate_state_dict_same_keys

    def validate(state_dicts):
        plain = [{k: v.data if isinstance(v, torch.nn.Parameter) else v for k, v in sd.items()} for sd in state_dicts]
        return original(plain)

    sda._validate_state_dict_same_keys = validate


def run_child(spec: dict) -> dict:
    import lightning as L
    import torch
    from lightning.fabric.loggers import TensorBoardLogger
    from omegaconf import OmegaConf

    torch.set_num_threads(spec["threads"])
    if spec["cpu_smoke"]:  # plumbing check only: the in-tree methods call .cuda() unconditionally
        torch.nn.Module.cuda = lambda self, *a, **k: self
        torch.Tensor.cuda = lambda self, *a, **k: self
    from fusion_bench.utils import instantiate

    if spec["impl"] == "intree" and spec["variant"] == "hard" and not spec["unpatched"]:
        relax_parameter_type_check()

    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    modelpool = instantiate(OmegaConf.create(pool_config(Path(spec["root"]), spec["n"])))
    algorithm = make_algorithm(spec)
    algorithm.fabric = L.Fabric(
        accelerator="cpu" if spec["cpu_smoke"] else "cuda", devices=1, loggers=TensorBoardLogger(str(workdir / "logs"))
    )
    algorithm.fabric.launch()
    cuda = torch.cuda.is_available() and not spec["cpu_smoke"]
    t0 = time.perf_counter()
    merged = algorithm.run(modelpool)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in merged.parameters())
    return dict(
        seconds=seconds,
        n_params=n_params,
        peak_device_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
    )


def measure(spec: dict) -> dict:
    """Run ``spec`` in a fresh child; its ``ru_maxrss`` (via wait4) is the configuration's peak RSS."""
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    out, log = workdir / "child.json", workdir / "child.log"
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(spec["threads"]),
        MKL_NUM_THREADS=str(spec["threads"]),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        FUSION_BENCH_CACHE_DIR=str(workdir / "cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    row = {k: spec[k] for k in ("impl", "variant", "n")}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec), "--child-out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    if os.waitstatus_to_exitcode(status) != 0 or not out.is_file():
        tail = log.read_text()[-3000:]
        errors = [l.strip() for l in tail.splitlines() if "Error" in l or "error" in l]
        row["error"] = errors[-1] if errors else f"exit status {os.waitstatus_to_exitcode(status)}"
        print(f"[perf_intree] {row['impl']} FW-{row['variant']} N={row['n']} FAILED; log tail:\n{tail}", flush=True)
        return row
    row.update(json.loads(out.read_text()))
    print(
        f"[perf_intree] {row['impl']} FW-{row['variant']} N={row['n']}: peak RSS {row['peak_rss_mb']:.0f} MiB"
        + (f", device {row['peak_device_mb']:.0f} MiB" if row.get("peak_device_mb") else "")
        + f", {row['seconds']:.1f} s",
        flush=True,
    )
    return row


# ------------------------------------------------------------------------------------ report
LABELS = {
    ("intree", "hard"): "FusionBench in-tree FW-hard",
    ("intree", "soft"): "FusionBench in-tree FW-soft",
    ("plugin", "hard"): "plugin FWHard",
    ("plugin", "soft"): "plugin FWSoft",
}


def render(report: dict) -> str:
    rows, s = report["runs"], report["settings"]
    sizes = sorted({r["n"] for r in rows})
    by = {(r["impl"], r["variant"], r["n"]): r for r in rows}
    head = "| method | " + " | ".join(f"N={n}" for n in sizes) + f" | N={sizes[-1]} / N={sizes[0]} |"
    lines = [
        f"Machine: {report['machine']}. Pool: CLIP ViT-B/32-shaped vision towers with random weights, "
        f"{report['model_mib']:.0f} MiB each (float32). Settings: {s['iters']} FW iteration(s), "
        f"{s['samples']} images per task for each gradient (4 tasks), in-tree FW-soft AdaMerging steps / plugin "
        f"FW-soft inner steps: {s['ada_iters']}; one fresh process per cell, {s['jobs']} at a time.",
        "",
    ]
    for key, title in (
        ("peak_rss_mb", "Peak host memory (ru_maxrss of the process, MiB)"),
        ("peak_device_mb", "Peak device memory (torch.cuda.max_memory_allocated, MiB)"),
    ):
        lines += [f"**{title}**", "", head, "|" + "---|" * (len(sizes) + 2)]
        for impl in IMPLS:
            for variant in VARIANTS:
                cells = [by.get((impl, variant, n)) for n in sizes]
                if not any(cells):
                    continue
                vals = [c.get(key) if c and "error" not in c else None for c in cells]
                text = [
                    f"{v:.0f}" if v is not None else ("failed" if c and "error" in c else "-")
                    for v, c in zip(vals, cells)
                ]
                ratio = f"{vals[-1] / vals[0]:.2f}" if vals[0] and vals[-1] else "-"
                lines.append(f"| {LABELS[(impl, variant)]} | " + " | ".join(text) + f" | {ratio} |")
        lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["**Failures**", ""] + [f"- {r['impl']} FW-{r['variant']} N={r['n']}: {r['error']}" for r in errors]
        lines.append("")
    if not s.get("unpatched") and ("intree", "hard") in {(r["impl"], r["variant"]) for r in rows}:
        lines += [
            "In-tree FW-hard ran with `relax_parameter_type_check`: without it, fusion-bench 0.2.33's own "
            "`task_arithmetic_merge` raises `TypeError: Tensor type mismatch ... expected Parameter, got Tensor` "
            "in its first merge (`--unpatched` reproduces it). The shim copies nothing.",
            "",
        ]
    lines.append(f"Total {report['seconds']:.0f} s (pool build included). Regenerate: `{report['command']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16, 20], help="numbers of pool models N")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--iters", type=int, default=2, help="FW iterations")
    p.add_argument(
        "--samples",
        type=int,
        default=4,
        help="images per task per gradient (in-tree dataset_size; plugin n_per_task = batch_size)",
    )
    p.add_argument("--ada-iters", type=int, default=2, help="in-tree FW-soft ada_iters; plugin FW-soft inner_steps")
    p.add_argument("--jobs", type=int, default=1, help="children at a time (peaks are per process)")
    p.add_argument("--threads", type=int, default=4, help="torch threads per child")
    p.add_argument(
        "--root",
        default=os.environ.get("FUSION_BENCH_FW_PERF_ROOT", os.path.expanduser("~/.cache/fusion_bench_fw/perf_pool")),
    )
    p.add_argument("--work", default=None, help="children's working dirs (default: OUT/children)")
    p.add_argument("--out", default="outputs/perf_intree")
    p.add_argument(
        "--unpatched",
        action="store_true",
        help="run the in-tree FW-hard without relax_parameter_type_check (fails in fusion-bench 0.2.33)",
    )
    p.add_argument("--cpu-smoke", action="store_true", help="no GPU: .cuda() is a no-op, 2-layer towers")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        result = run_child(json.loads(a.child))
        Path(a.child_out).write_text(json.dumps(result))
        return 0

    t0 = time.perf_counter()
    vision = perf.QUICK_VISION if a.cpu_smoke else perf.VIT_B32
    root = Path(a.root + ("_quick" if a.cpu_smoke else "")).resolve()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work).resolve() if a.work else out / "children"
    info = perf.machine()
    print(f"[perf_intree] {info}", flush=True)
    pool = perf.build_pool(root, max(max(a.sizes), len(perf.TASKS)), vision, with_data=True)
    print(
        f"[perf_intree] pool at {root}: {pool['n_params'] / 1e6:.1f}M parameters per model "
        f"(built in {pool['seconds']} s)",
        flush=True,
    )
    specs = [
        dict(
            impl=impl,
            variant=variant,
            n=n,
            root=str(root),
            iters=a.iters,
            samples=a.samples,
            ada_iters=a.ada_iters,
            threads=a.threads,
            cpu_smoke=a.cpu_smoke,
            unpatched=a.unpatched,
            workdir=str(work / f"{impl}_{variant}_{n}"),
        )
        for n in sorted(a.sizes, reverse=True)
        for impl in a.impls
        for variant in a.variants
    ]
    with ThreadPoolExecutor(max_workers=a.jobs) as ex:  # largest N first, so the long ones start early
        rows = list(ex.map(measure, specs))
    rows.sort(key=lambda r: (IMPLS.index(r["impl"]), VARIANTS.index(r["variant"]), r["n"]))
    report = dict(
        machine=info,
        model_mib=pool["n_params"] * 4 / 2**20,
        runs=rows,
        settings=dict(
            iters=a.iters,
            samples=a.samples,
            ada_iters=a.ada_iters,
            jobs=a.jobs,
            threads=a.threads,
            cpu_smoke=a.cpu_smoke,
            unpatched=a.unpatched,
        ),
        seconds=time.perf_counter() - t0,
        command="python benchmarks/perf_intree.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    perf.write_report(out, "perf_intree", report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
