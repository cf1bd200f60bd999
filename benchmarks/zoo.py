#!/usr/bin/env python
"""The model-zoo benchmark (issue 24): FW-Merging and the data-free baselines on a pool that holds
many checkpoints per task, as a public zoo does, through the ``fusion_bench`` CLI.

The pool is the mini benchmark's zoo (``modelpool=mini_zoo``; built first if needed, with
``python -m fusion_bench_fw.offline.minibench build --zoo``): each of the 20 tasks' models with
its variants (another seed, half-trained, a larger and a smaller learning rate, and far ones), and
the 16 noise-trained models, 121 checkpoints. For each target set (``TA4``: the scaling
experiments' 4 targets, ``TA8``, ``TALL20``; FW's labelled samples and the scores are the
targets'):

* ``all``: FW-hard and FW-soft at the plugin's defaults, Task Arithmetic, TIES and TSV-M (as the
  leaderboard runs them) over every checkpoint;
* ``oracle``: the three baselines over each target's best checkpoint by its own *validation*
  accuracy (the zoo's manifest; never test), what a user who knew the zoo would merge;
* ``size``: FW-hard and FW-soft over nested pools of 20, 50 and 100 checkpoints, prefixes of the
  zoo's seeded order (one checkpoint of every task first, drawn from its variants; then the rest
  at random), so each holds every target.

Which checkpoints FW picked comes from each FW run's ``fw_history.json`` (the LMO's picks per
iteration, the final coefficients, the candidates it left out as far). Outputs in ``--out``:
``zoo.json``, ``zoo.md``, ``zoo.png`` (FW's accuracy against pool size, the baselines as lines),
``zoo_manifest.json`` (the zoo it ran on) and each run's folder.

    python benchmarks/zoo.py --out benchmarks/results/zoo_mini       # the zoo build, then 42 runs
    python benchmarks/zoo.py --quick --out outputs/zoo_quick         # smoke run: QUICK build, few steps
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_run_options,
    describe_provenance,
    drop_models,
    fmt,
    mini_build,
    provenance,
    resolve_settings,
    run_fusion_bench,
    total_seconds,
)
from _rows import FULL as ROW_SETTINGS  # noqa: E402
from _rows import STYLE, method_args  # noqa: E402

FW = ("fw_hard", "fw_soft")
BASELINES = ("task_arithmetic", "ties_merging", "tsv_m")
SIZES = (20, 50, 100)
TOP = 8  # picks listed per FW run in zoo.md (zoo.json has them all)
# FW's settings (FULL: the plugin's defaults), as the leaderboard's rows name them
FULL = {k: ROW_SETTINGS[k] for k in ("fw_iters", "soft_iters", "fw_inner", "n_per_task")}
QUICK = dict(fw_iters=3, soft_iters=2, fw_inner=20, n_per_task=32)


def target_sets() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``--targets`` name -> (task pool, target tasks)."""
    from fusion_bench_fw.offline.minibench import ALL_TASKS, TARGETS, TASKS

    return {"TA4": ("mini_TA4", TARGETS), "TA8": ("mini_TA8", TASKS), "TALL20": ("mini_TALL20", ALL_TASKS)}


def plan(manifest: dict, targets, sizes, methods) -> list[tuple[str, int, list[str], str]]:
    """``[(pool kind, pool size, members, method)]`` for one target set: every checkpoint, the
    oracle pool and the nested pools (a size that is the whole zoo is the ``all`` run)."""
    from fusion_bench_fw.offline.minibench import nested_pool, oracle

    everything = list(manifest["order"])
    best = list(oracle(manifest, targets).values())
    out = [("all", len(everything), everything, m) for m in methods]
    out += [("oracle", len(best), best, m) for m in methods if m in BASELINES]
    for size in sizes:
        if size < len(everything):
            out += [("size", size, nested_pool(manifest, size), m) for m in methods if m in FW]
    return out


def fw_selection(log_dir: str | Path, members) -> dict:
    """What an FW run picked (its ``fw_history.json``): how often the LMO chose each checkpoint,
    each one's final mean coefficient, and the candidates it left out (far from the pre-trained
    model)."""
    from fusion_bench_fw.core.history import RunHistory

    history = RunHistory.load(str(next(Path(log_dir).rglob("fw_history.json"))))
    picked: Counter = Counter()
    for record in history.iterations:
        chosen = record.selected or []
        picked.update([chosen] if isinstance(chosen, str) else chosen)  # a dict (layer-wise) counts
    weights = {}
    for name, row in zip(history.basis, history.coefficients or []):
        w = sum(row) / len(row) if row else 0.0
        if abs(w) > 1e-6 and name in members:
            weights[name] = round(w, 4)
    return {
        "picked": dict(picked.most_common()),
        "weights": dict(sorted(weights.items(), key=lambda kv: -abs(kv[1]))),
        "left_out": [m for m in members if m not in history.vertices],
        "iterations": len(history.iterations),
    }


def summarise(selection: dict, manifest: dict, targets, best: dict) -> dict:
    """A selection in the zoo's terms: picks by kind of checkpoint, and the targets whose
    oracle checkpoint FW picked."""
    models = manifest["models"]
    kinds: Counter = Counter()
    for name, count in selection["picked"].items():
        info = models.get(name)
        if info is None:  # not a checkpoint: layer-wise FW-hard's "keep the start" choice (__init__)
            kinds["start"] += count
            continue
        kind = "noisy" if info["group"] == "noisy" else ("target" if info["task"] in targets else "other task")
        kinds[kind] += count
        kinds[f"variant {info['variant']}"] += count
    return {
        "picks_by_kind": dict(kinds),
        "oracle_picked": [t for t in targets if best[t] in selection["picked"]],
        "left_out_variants": dict(Counter(models[m]["variant"] for m in selection["left_out"])),
    }


def run_targets(name: str, args, settings: dict, manifest: dict, env: dict) -> list[dict]:
    """Every run of one target set; rows with their pool, and FW rows with their selection."""
    from fusion_bench_fw.offline.minibench import oracle, pool_contents

    taskpool, targets = target_sets()[name]
    missing = [t for t in targets if t not in manifest["tasks"]]
    if missing:
        raise SystemExit(f"--targets {name}: the zoo has no checkpoints of {missing} (build a larger scope)")
    configured = pool_contents()["mini_zoo"][1]
    best = oracle(manifest, targets)
    s = {**ROW_SETTINGS, **settings, "fw_targets": list(targets)}
    rows = []
    print(f"[{name}: {len(targets)} targets]", flush=True)
    for kind, size, members, method in plan(manifest, targets, args.sizes, args.methods):
        run_dir = args.out / "runs" / f"{name}_{kind}{size:03d}_{method}"
        drop = [m for m in configured if m not in members]
        r = run_fusion_bench(
            f"{name} {kind} {size} {method}",
            [
                "modelpool=mini_zoo",
                f"taskpool={taskpool}",
                *drop_models(drop, keep_clip_tasks=targets),
                # FW's labelled samples: the targets' train splits only
                *[f"~modelpool.train_datasets.{t}" for t in pool_contents()["mini_zoo"][2] if t not in targets],
                *method_args(method, s, run_dir, ["fabric.accelerator=cpu"]),
            ],
            run_dir,
            env=env,
            threads=args.threads,
            reuse=args.reuse,
            manifest=manifest,
        )
        row = r.row(targets=name, pool=kind, pool_size=size, method=method, members=members)
        if method in FW and r.status == "ok":
            row["selection"] = fw_selection(r.log_dir, members)
            row["selection"].update(summarise(row["selection"], manifest, targets, best))
        rows.append(row)
    return rows


def to_markdown(result: dict) -> str:
    models = result["zoo"]["models"]

    def label(m):
        info = models.get(m)
        if info is None:
            return f"`{m}`"
        return f"`{m}` ({info['variant']}, val {fmt(info['own_val_accuracy'])})"

    parts = []
    for name, spec in result["targets"].items():
        rows = [r for r in result["rows"] if r["targets"] == name]
        cell = lambda r: fmt(r["average"]) if r["status"] == "ok" else r["status"]  # noqa: E731
        parts += [
            f"## {name}: {len(spec['tasks'])} targets (average test accuracy %, the targets)\n",
            f"| method | all ({result['zoo']['size']}) | oracle ({len(spec['oracle'])}) |",
            "|---|---|---|",
        ]
        for m in result["methods"]:
            by = {r["pool"]: cell(r) for r in rows if r["method"] == m and r["pool"] != "size"}
            parts.append(f"| {STYLE.get(m, (m,))[0]} | {by.get('all', '-')} | {by.get('oracle', '-')} |")
        sizes = sorted({r["pool_size"] for r in rows if r["pool"] in ("size", "all")})
        fw = [m for m in result["methods"] if m in FW]
        parts += ["", "FW against pool size (nested pools; the largest is the whole zoo):", ""]
        parts += ["| pool | " + " | ".join(STYLE[m][0] for m in fw) + " |", "|---|" + "---|" * len(fw)]
        for size in sizes:
            cells = [next((cell(r) for r in rows if r["method"] == m and r["pool_size"] == size), "-") for m in fw]
            parts.append(f"| {size} | " + " | ".join(cells) + " |")
        parts += ["", "Oracle pool (each target's best checkpoint by validation accuracy): "]
        parts[-1] += ", ".join(f"{t}: {label(m)}" for t, m in spec["oracle"].items())
        parts += ["", "Which checkpoints FW picked (LMO picks over its iterations; candidates it left out as far):", ""]
        for r in rows:
            if "selection" in r:
                sel = r["selection"]
                picked = list(sel["picked"].items())
                picks = ", ".join(f"{label(m)} x{c}" for m, c in picked[:TOP])
                picks += f" and {len(picked) - TOP} more" if len(picked) > TOP else ""
                parts.append(
                    f"- {STYLE[r['method']][0]}, pool {r['pool_size']}: {picks}; oracle checkpoint picked for "
                    f"{len(sel['oracle_picked'])}/{len(spec['tasks'])} targets; left out: {len(sel['left_out'])} "
                    f"{sel['left_out_variants'] or ''}"
                )
        parts.append("")
    return "\n".join(parts)


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["targets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in result["rows"] if r["targets"] == name and r["status"] == "ok"]
        for m in result["methods"]:
            label, color, marker = STYLE.get(m, (m, None, "o"))
            if m in FW:
                pts = sorted((r["pool_size"], 100 * r["average"]) for r in rows if r["method"] == m)
                if pts:
                    ax.plot(*zip(*pts), marker=marker, color=color, label=label)
                continue
            for r in rows:
                if r["method"] == m:
                    style = "--" if r["pool"] == "all" else ":"
                    ax.axhline(100 * r["average"], ls=style, color=color, label=f"{label} ({r['pool']})")
        ax.set_xticks(sorted({r["pool_size"] for r in rows if r["method"] in FW}))
        ax.set_xlabel("checkpoints in the pool")
        ax.set_ylabel("average accuracy (%)")
        ax.set_title(f"{name}: {len(result['targets'][name]['tasks'])} targets")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/minibench_zoo"))
    p.add_argument("--root", default=None, help="the mini benchmark's root (default: its env var or cache dir)")
    p.add_argument("--quick", action="store_true", help="the QUICK build and few FW steps (a smoke run)")
    from fusion_bench_fw.offline import minibench

    p.add_argument(
        "--scope",
        default="all",
        choices=minibench.SCOPES,
        help="the build the zoo extends: its tasks (all: the 20, and the noise-trained models)",
    )
    p.add_argument("--variants", nargs="+", default=None, choices=minibench.VARIANTS, help="default: all")
    p.add_argument("--targets", nargs="+", default=list(target_sets()), choices=list(target_sets()))
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="nested pool sizes for FW")
    p.add_argument("--methods", nargs="+", default=[*FW, *BASELINES], choices=[*FW, *BASELINES])
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    settings = resolve_settings(args, FULL, QUICK)
    t0 = time.perf_counter()
    variants = tuple(args.variants or minibench.VARIANTS)
    manifest = mini_build(args.scope, root=args.root, quick=args.quick, threads=args.threads, zoo=variants)
    too_small = [n for n in args.sizes if n < len(manifest["tasks"])]
    if too_small:
        p.error(
            f"--sizes {too_small}: a pool needs at least one checkpoint of each of the zoo's {len(manifest['tasks'])} tasks"
        )
    env = {minibench.ENV_VAR: manifest["root"]}
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(manifest["root"]) / minibench.ZOO_MANIFEST, args.out / "zoo_manifest.json")
    rows = [row for name in args.targets for row in run_targets(name, args, settings, manifest, env)]
    result = {
        "settings": settings,
        "methods": list(args.methods),
        "sizes": list(args.sizes),
        "zoo": {
            "size": len(manifest["order"]),
            "variants": list(manifest["variants"]),
            "order": manifest["order"],
            "models": manifest["models"],
        },
        "targets": {
            name: {"tasks": list(target_sets()[name][1]), "oracle": minibench.oracle(manifest, target_sets()[name][1])}
            for name in args.targets
        },
        "rows": rows,
        "provenance": provenance(manifest),
    }
    result.update(total_seconds(rows))
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)  # this invocation, builds included
    md = to_markdown(result)
    (args.out / "zoo.md").write_text(
        f"# Model zoo\n\nSettings: {json.dumps(settings)}\n{describe_provenance(result['provenance'])}\n\n"
        f"The zoo: {result['zoo']['size']} checkpoints, variants {', '.join(result['zoo']['variants'])} "
        f"(`zoo_manifest.json`: each one's seed, learning rate, steps and own accuracies).\n\n" + md
    )
    (args.out / "zoo.json").write_text(json.dumps(result, indent=1))
    try:
        plot(result, args.out / "zoo.png")
    except Exception as e:
        print(f"plot failed: {e}", file=sys.stderr)
    print()
    print(md)
    print(f"written: {args.out}/zoo.md, zoo.json, zoo.png (runs {result['total_seconds']}s)")
    failed = [f"{r['targets']} {r['pool']} {r['pool_size']} {r['method']}" for r in rows if r["status"] != "ok"]
    if failed:
        print(f"failed runs: {failed} (their errors are in zoo.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
