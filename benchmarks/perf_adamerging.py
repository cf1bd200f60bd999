"""The paper's memory claim side by side: FusionBench's layer-wise AdaMerging, FWHard and FWSoft on
the same ViT-B/32-shaped pool as ``perf.py``, N = 4 / 8 / 12 / 16 / 20, one fresh ``fusion_bench``
process per cell, all in one run.

Every cell is a real end-to-end CLI run with equal step counts: AdaMerging ``--steps`` steps
(each: one batch of ``--batch`` test images per model's task, entropy loss, one Adam step on the
layer-wise weights) and FW ``--steps`` iterations (each: one gradient on ``--batch`` labelled
images per target task, the LMO pass over the N candidates, the update; FW-soft adds
``--inner-steps`` gradients for its step weights). Every method gets the pool's N tasks (FW's
targets = every task with a train split, AdaMerging adapts on every model's test split); FW-soft
keeps ``--soft-k`` selected vertices (4, as in ``perf.py``; its default k = number of targets
would hold N deltas). For N > 4 the extra models reuse the four tiny tasks' images and class
names under their own names.

AdaMerging's memory grows with N; a cell whose peak, projected linearly from the two previous
cells of the same method, would exceed ``--mem-limit`` of the machine's RAM is skipped and
reported as such (a run past the RAM would be killed, or take other processes with it).

Reported per cell: wall seconds and peak host RSS (ru_maxrss of the CLI process via wait4), and
the ratios peak(N=20)/peak(N=4) and FW / AdaMerging wall time per N.

    flock /tmp/fw-cpu.lock nice -n 5 python benchmarks/perf_adamerging.py --out benchmarks/results/perf_adamerging

The pool is ``perf.py``'s (``perf.build_pool``, same ``--root``, reused when already built).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf import TASKS, VIT_B32, build_pool, candidate_names, machine, run_cli, write_report  # noqa: E402

METHODS = ("adamerging", "fw_hard", "fw_soft")


def write_pool_config(root: Path, n: int, config_dir: Path) -> str:
    """A modelpool config with N models of ``root`` (``config_dir/modelpool/perf_nN.yaml``)."""
    import yaml

    from fusion_bench_fw.offline import tiny_clip

    names = candidate_names(n)
    task_of = {name: TASKS[i % len(TASKS)] for i, name in enumerate(names)}
    data = lambda name, split: {  # noqa: E731
        "_target_": "datasets.load_from_disk",
        "dataset_path": str(root / "data" / task_of[name] / split),
    }
    config = {
        "_target_": "fusion_bench_fw.CLIPVisionModelPoolWithTasks",
        "_recursive_": False,
        "platform": "hf",
        "processor": str(root / "models" / "_pretrained_"),
        "clip_tasks": {
            name: {"classnames": list(tiny_clip.TASKS[task_of[name]].classnames), "templates": ["a photo of a {}."]}
            for name in names
        },
        "models": {"_pretrained_": str(root / "models" / "_pretrained_")}
        | {name: str(root / "models" / name) for name in names},
        "train_datasets": {name: data(name, "train") for name in names},
        "test_datasets": {name: data(name, "test") for name in names},
    }
    (config_dir / "modelpool").mkdir(parents=True, exist_ok=True)
    (config_dir / "modelpool" / f"perf_n{n}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return f"perf_n{n}"


def method_args(method: str, s: dict, workdir: Path) -> list[str]:
    if method == "adamerging":
        return [
            "method=adamerging/clip",
            "method.name=clip_layer_wise_adamerging",
            f"method.max_steps={s['steps']}",
            f"method.batch_size={s['batch']}",
            "method.num_workers=0",
            f"method.cache_dir={workdir / 'ada_cache'}",
            "method.save_merging_weights=false",
        ]
    args = [
        f"method={method}",
        f"method.max_iters={s['steps']}",
        f"method.n_per_task={s['batch']}",
        f"method.batch_size={s['batch']}",
        "method.progress=false",
        "method.allow_fewer_samples=true",
    ]
    return args + ([f"method.inner_steps={s['inner_steps']}", f"method.k={s['soft_k']}"] if method == "fw_soft" else [])


def project_peak(previous: list[dict], n: int) -> float | None:
    """Peak RSS at ``n`` on the line through the method's last two measured cells."""
    done = [r for r in previous if "peak_rss_mb" in r][-2:]
    if len(done) < 2:
        return None
    (n0, p0), (n1, p1) = ((r["n"], r["peak_rss_mb"]) for r in done)
    return p1 + (p1 - p0) / (n1 - n0) * (n - n1)


def render(report: dict) -> str:
    s, rows = report["settings"], report["runs"]
    sizes = sorted({r["n"] for r in rows})
    skipped = {(r["method"], r["n"]): r["skipped"] for r in rows if "skipped" in r}
    by = {(r["method"], r["n"]): r for r in rows if "skipped" not in r}
    names = {
        "adamerging": "AdaMerging (layer-wise, FusionBench)",
        "fw_hard": "FWHard (this plugin)",
        "fw_soft": "FWSoft (this plugin)",
    }
    lines = [
        f"Machine: {report['machine']}. Pool: perf.py's CLIP ViT-B/32-shaped vision towers "
        f"({report['n_params'] / 1e6:.1f}M parameters, float32 safetensors), N candidates with N tasks; "
        f"{report['threads']} torch thread(s); one fresh `fusion_bench` process per cell (taskpool=dummy).",
        f"Equal step counts: AdaMerging {s['steps']} steps x {s['batch']} test images per task; FW "
        f"{s['steps']} iterations x {s['batch']} labelled images per task (FW-soft: + {s['inner_steps']} inner "
        f"gradient(s) per iteration, k = {s['soft_k']}).",
        "",
        "**Peak host RSS (MiB, ru_maxrss of the CLI process)**",
        "",
        "| method | " + " | ".join(f"N={n}" for n in sizes) + f" | peak(N={sizes[-1]})/peak(N={sizes[0]}) |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for m in METHODS:
        vals = [by[(m, n)]["peak_rss_mb"] if (m, n) in by else None for n in sizes]
        if any(v is not None for v in vals):
            measured = [(n, v) for n, v in zip(sizes, vals) if v is not None]
            ratio = f"{measured[-1][1] / measured[0][1]:.2f}"
            if measured[-1][0] != sizes[-1] or measured[0][0] != sizes[0]:
                ratio += f" (N={measured[-1][0]}/N={measured[0][0]})"
            lines.append(
                f"| {names[m]} | " + " | ".join("-" if v is None else f"{v:.0f}" for v in vals) + f" | {ratio} |"
            )
    lines += [
        "",
        "**End-to-end wall time (s, whole CLI run incl. start-up and model loading) and FW / AdaMerging**",
        "",
        "| method | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for m in METHODS:
        vals = [by[(m, n)]["seconds"] if (m, n) in by else None for n in sizes]
        if any(v is not None for v in vals):
            lines.append(f"| {names[m]} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    for m in ("fw_hard", "fw_soft"):
        ratios = [
            by[(m, n)]["seconds"] / by[("adamerging", n)]["seconds"]
            if (m, n) in by and ("adamerging", n) in by
            else None
            for n in sizes
        ]
        if any(r is not None for r in ratios):
            lines.append(
                f"| {names[m]} / AdaMerging | " + " | ".join("-" if r is None else f"{r:.2f}" for r in ratios) + " |"
            )
    for (m, n), why in skipped.items():
        lines.append(f"\n{names[m]} at N={n} was not run: {why} > {report['mem_limit_mb'] / 1024:.1f} GiB allowed.")
    lines += ["", f"Total benchmark time {report['seconds']:.0f} s. Regenerate: `{report['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16, 20])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=2, help="AdaMerging steps = FW iterations")
    p.add_argument("--batch", type=int, default=2, help="images per task per step")
    p.add_argument("--inner-steps", type=int, default=1, help="FW-soft inner steps (each costs one gradient)")
    p.add_argument("--soft-k", type=int, default=4, help="FW-soft's number of selected vertices")
    p.add_argument("--mem-limit", type=float, default=0.8, help="skip cells projected above this fraction of RAM")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--root",
        default=os.environ.get("FUSION_BENCH_FW_PERF_ROOT", os.path.expanduser("~/.cache/fusion_bench_fw/perf_pool")),
    )
    p.add_argument("--out", default="outputs/perf_adamerging")
    p.add_argument("--workdir", default="/tmp/fw-perf-adamerging", help="CLI runs (deleted at the end; --keep)")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    root, out = Path(a.root).resolve(), Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"[perf_adamerging] {info}", flush=True)
    pool = build_pool(root, max(a.sizes), VIT_B32, with_data=True)
    settings = dict(steps=a.steps, batch=a.batch, inner_steps=a.inner_steps, soft_k=a.soft_k)
    limit_mb = a.mem_limit * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    workdir = Path(a.workdir).resolve()
    rows = []
    for n in a.sizes:  # interleave methods so load drift hits all alike
        name = write_pool_config(root, n, workdir / "config")
        for m in a.methods:
            projected = project_peak([r for r in rows if r["method"] == m], n)
            if projected is not None and projected > limit_mb:
                rows.append(dict(method=m, n=n, skipped=f"projected peak {projected / 1024:.1f} GiB"))
                print(f"[perf_adamerging] {m} N={n}: skipped, {rows[-1]['skipped']} > {limit_mb / 1024:.1f} GiB")
                continue
            run = run_cli(
                method_args(m, settings, workdir),
                root,
                workdir / f"{m}_{n}",
                a.threads,
                pool_args=("-cd", str(workdir / "config"), f"modelpool={name}"),
            )
            rows.append(dict(method=m, n=n, seconds=run["seconds"], peak_rss_mb=run["peak_rss_mb"]))
            print(
                f"[perf_adamerging] {m} N={n}: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    report = dict(
        machine=info,
        n_params=pool["n_params"],
        threads=a.threads,
        settings=settings,
        mem_limit_mb=limit_mb,
        runs=rows,
        command="python benchmarks/perf_adamerging.py " + " ".join(argv or sys.argv[1:]),
    )
    report["seconds"] = time.perf_counter() - t0
    write_report(out, "perf_adamerging", report, render)
    if not a.keep:  # each FW run leaves a checkpoint of the merged model
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
