#!/usr/bin/env python
"""The paper's scaling experiments, through the ``fusion_bench`` CLI: Task Arithmetic vs FWHard vs FWSoft.

* ``irrelevant``: the 4 target tasks' models plus 0/4/8/12/16 irrelevant models (pixel-permuted
  and label-permuted tasks, alternating); evaluated on, and FW's labelled data from, the 4 targets.
* ``relevant``: the 4 target models plus 0/4/8/12/16 relevant models (the other 4 tasks' models,
  then second checkpoints of all 8 tasks, then third checkpoints of the targets); evaluated on,
  and FW's data from, all 8 tasks (the paper grows a pool towards the evaluated task set too).
* ``noisy``: the 4 target models plus 0/4/8/12/16 noise-trained models (random labels).

``--pool mini_TALL20`` runs the authors' protocol on the mini benchmark's 20 real tasks instead
(as ``--hub TA20``; no synthetic models, so no ``noisy`` experiment).

Pools are subsets of ``modelpool=mini_all``, selected with ``~modelpool.models.NAME`` overrides.
``--pool text`` runs the irrelevant experiment on the offline text benchmark instead
(``modelpool=text_all``: the 4 MiniLM target models plus 0..5 models fine-tuned on other text
tasks, whose heads are never used; evaluated with each target's own head).
``--pool tiny`` runs the irrelevant and relevant experiments on the tiny CLIP pool (the tests'
pool, ``--root``; targets: its first 2 tasks; relevant: the other 2 tasks' models; irrelevant: its
label-shifted model): a smoke run of this script in seconds, not a result.
``--hub TA20`` runs the irrelevant/relevant experiments on FusionBench's ViT-B/32 TA20 pool
(targets: the first 4 tasks; "irrelevant" there means the other tasks' models, as nothing else
is on the hub; needs a hub and a GPU).

Outputs in ``--out``: ``scaling.md``, ``scaling.json``, ``scaling_<experiment>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HUB_TASKS,
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
from _rows import STYLE  # noqa: E402

EXPERIMENTS = ("irrelevant", "relevant", "noisy")
# rows --methods may add (the leaderboard's rows of the same names)
EXTRA_METHODS = (
    "fw_hard_guard",
    "fw_soft_guard",
    "fw_hard_screen",
    "fw_soft_screen",
    "fw_soft_from_tsv_m",
    "fw_soft_from_tsv_m_screen",
    "tsv_m",
    "simple_average",
    "ties_merging",
)
METHODS = ("task_arithmetic", "fw_hard", "fw_soft")
FULL = dict(fw_iters=10, soft_iters=5, fw_inner=30, n_per_task=100)  # as benchmarks/leaderboard.py
QUICK = dict(fw_iters=3, soft_iters=2, fw_inner=20, n_per_task=32)


def plan(experiment: str, manifest_models: dict[str, dict], tasks: list[str], targets: list[str], counts):
    """``[(count, pool members, FW/eval task list)]`` for an experiment."""
    by_group = {}
    for name, info in manifest_models.items():
        by_group.setdefault(info["group"], []).append(name)
    if experiment == "irrelevant":
        pix = [n for n in by_group["irrelevant"] if n.startswith("irr_pixels")]
        lab = [n for n in by_group["irrelevant"] if n.startswith("irr_labels")]
        extra = [m for pair in zip(pix, lab) for m in pair] or by_group["irrelevant"]  # text: in build order
        eval_tasks = targets
    elif experiment == "relevant":
        others = [t for t in tasks if t not in targets]
        extra = others + by_group.get("relevant", [])
        eval_tasks = tasks
    else:
        extra = by_group["noisy"]
        eval_tasks = targets
    out = []
    for c in counts:
        if c > len(extra):
            raise ValueError(f"{experiment}: only {len(extra)} models to add, asked for {c}")
        out.append((c, list(targets) + extra[:c], eval_tasks))
    return out


def method_args(method: str, s: dict, eval_tasks: list[str]) -> list[str]:
    fw = [f"method.targets=[{','.join(eval_tasks)}]", f"method.n_per_task={s['n_per_task']}", "method.progress=false"]
    rows = {
        "task_arithmetic": ["method=task_arithmetic", "method.scaling_factor=0.3"],
        "simple_average": ["method=simple_average"],
        "ties_merging": ["method=ties_merging", "method.scaling_factor=0.3", "method.threshold=20"],
        "fw_hard": ["method=fw_hard", *fw, f"method.max_iters={s['fw_iters']}"],
        "fw_soft": [
            "method=fw_soft",
            *fw,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
    }
    # the hold-out guard (issue 22): the same runs with the start and every step checked on held-out samples
    rows.update({f"{m}_guard": [*rows[m], "method.guard=true"] for m in ("fw_hard", "fw_soft")})
    # FW from TSV-M's merge, and the screen (issue 22): the leaderboard's rows of the same names
    rows["tsv_m"] = ["method=task_singular_vector/TaskSingularVectorMerging"]
    rows["fw_soft_from_tsv_m"] = [*rows["fw_soft"], "method.init=tsv_m"]
    for m in ("fw_hard", "fw_soft", "fw_soft_from_tsv_m"):
        rows[f"{m}_screen"] = [*rows[m], "method.screen=true"]
    return rows[method]


MINI = dict(pools=("mini_all", "mini_TA8"), clip=True)
TINY = dict(pools=("fw_tiny_clip_irrelevant", "fw_tiny_clip"), clip=True)
TEXT = dict(pools=("text_all", "text_TA4"), clip=False)  # no CLIP task names, no test sets in the model pool


def run_scaling(
    out: Path,
    manifest: dict,
    env: dict,
    settings: dict,
    experiments,
    counts,
    methods,
    threads=1,
    reuse=False,
    bench: dict = MINI,
    layout: dict | None = None,
    split: str = "test",
) -> dict:
    """Every experiment's runs. ``layout`` (default: ``manifest``) names the pool's models with
    their groups (``models``), its ``tasks`` and its ``targets``; ``manifest`` is the build's, for
    provenance. ``split``: ``test`` (the reported numbers) or ``val`` (the validation twin of the task
    pool, for choosing defaults)."""
    layout = layout or manifest
    all_models = list(layout["models"])
    tasks, targets = layout["tasks"], layout["targets"]
    results = dict(
        settings=settings,
        counts=list(counts),
        methods=list(methods),
        tasks=tasks,
        targets=targets,
        split=split,
        experiments={},
    )
    taskpool = bench["pools"][1] + ("_val" if split == "val" else "")
    done: dict[tuple, dict] = {}  # identical (pool, eval tasks, method) runs are shared
    for exp in experiments:
        rows = []
        print(f"[{exp}]", flush=True)
        for count, members, eval_tasks in plan(exp, layout["models"], tasks, targets, counts):
            drop = [m for m in all_models if m not in members]
            drop_eval = [f"~taskpool.test_datasets.{t}" for t in tasks if t not in eval_tasks]
            for method in methods:
                key = (tuple(members), tuple(eval_tasks), method)
                if key not in done:
                    r = run_fusion_bench(
                        f"{exp}+{count} {method}",
                        [
                            f"modelpool={bench['pools'][0]}",
                            f"taskpool={taskpool}",
                            *drop_models(drop, datasets=bench["clip"], keep_clip_tasks=eval_tasks, clip=bench["clip"]),
                            *drop_eval,
                            *method_args(method, settings, eval_tasks),
                            "fabric.accelerator=cpu",
                        ],
                        out / "runs" / f"{exp}_{count:02d}_{method}",
                        env=env,
                        threads=threads,
                        reuse=reuse,
                        manifest=manifest,
                    )
                    done[key] = r
                rows.append(done[key].row(added=count, pool_size=len(members), method=method))
        results["experiments"][exp] = rows
    return results


def to_markdown(results: dict) -> str:
    parts = []
    for exp, rows in results["experiments"].items():
        methods = results["methods"]
        if exp != "relevant":
            evaluated = f"the {len(results['targets'])} targets" if "targets" in results else "the 4 targets"
        elif results.get("pool"):  # a 20-task pool: every task of the pool (4 to 20)
            evaluated = "the pool's tasks"
        else:
            evaluated = f"all {len(results['tasks'])} tasks" if "tasks" in results else "all 8 tasks"
        split = ", validation splits" if results.get("split") == "val" else ""
        parts.append(f"### {exp} models added (average accuracy %, {evaluated}{split})\n")
        parts.append("| added | pool | " + " | ".join(methods) + " |")
        parts.append("|" + "---|" * (len(methods) + 2))
        for count in results["counts"]:
            cells = []
            size = None
            for m in methods:
                r = next(r for r in rows if r["added"] == count and r["method"] == m)
                size = r["pool_size"]
                cells.append(fmt(r["average"]) if r["status"] == "ok" else r["status"])
            parts.append(f"| {count} | {size} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def plot(results: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for exp, rows in results["experiments"].items():
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for m in results["methods"]:
            pts = [(r["added"], 100 * r["average"]) for r in rows if r["method"] == m and r["status"] == "ok"]
            if pts:
                label, color, marker = STYLE.get(m, (m, None, "o"))
                ax.plot(*zip(*pts), marker=marker, color=color, label=label)
        ax.set_xlabel(f"# {exp} models added")
        ax.set_ylabel("average accuracy (%)")
        ax.set_title(f"Adding {exp} models")
        ax.set_xticks(results["counts"])
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"scaling_{exp}.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/minibench_scaling"))
    p.add_argument("--root", default=None)
    p.add_argument("--hub", choices=["TA20"], default=None, help="FusionBench's ViT-B/32 TA20 pool (hub + GPU)")
    p.add_argument(
        "--pool",
        choices=["mini_all", "mini_TALL20", "text", "tiny"],
        default="mini_all",
        help="mini_all: 4 targets plus synthetic irrelevant/relevant/noisy models; mini_TALL20: the authors' "
        "protocol on the 20 real tasks (as --hub TA20: the other tasks' models are the irrelevant ones); "
        "text: the text benchmark's 4 MiniLM targets plus models fine-tuned on other text tasks; "
        "tiny: the tests' tiny CLIP pool (needs --root), a smoke run",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="score on the test splits (reported numbers) or on the validation splits (choosing defaults); "
        "val: mini_all and text only",
    )
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument(
        "--counts", nargs="+", type=int, default=None, help="default 0 4 8 12 16 (text: 0 1 2 3 4 5; tiny: 0 1 2)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=[*METHODS, *EXTRA_METHODS],
    )
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    if args.split == "val" and (args.hub or args.pool not in ("mini_all", "text")):
        p.error("--split val: --pool mini_all or text (the others have no validation task pools here)")
    settings = resolve_settings(args, FULL, QUICK)
    t0 = time.perf_counter()
    manifest = None
    args.out.mkdir(parents=True, exist_ok=True)
    if args.counts is None:
        args.counts = {"text": [0, 1, 2, 3, 4, 5], "tiny": [0, 1, 2]}.get(args.pool, [0, 4, 8, 12, 16])
    if args.hub:
        results = run_task_pool(args, settings, ("clip-vit-b32_TA20", "clip-vit-b32_TA20"), HUB_TASKS["TA20"])
    elif args.pool == "mini_TALL20":
        from fusion_bench_fw.offline import minibench

        manifest = mini_build("tall20", root=args.root, quick=args.quick, threads=args.threads)
        env = {minibench.ENV_VAR: manifest["root"]}
        pools = ("mini_TALL20", "mini_TALL20")
        results = run_task_pool(args, settings, pools, list(minibench.ALL_TASKS), env, mini=True, manifest=manifest)
    elif args.pool == "tiny":
        from fusion_bench_fw.offline import tiny_clip

        if not args.root:
            raise SystemExit("--pool tiny needs --root (where the tiny CLIP pool is, or is to be built)")
        root = str(Path(args.root).resolve())
        manifest = tiny_clip.build_tiny_clip_pool(root)
        experiments = [e for e in args.experiments if e != "noisy"]  # the tiny pool has no noise-trained models
        counts = [c for c in args.counts if c <= 2]
        results = run_scaling(
            args.out,
            manifest,
            {tiny_clip.ENV_VAR: root},  # the committed pool's manifest says root "."
            settings,
            experiments,
            counts,
            args.methods,
            args.threads,
            args.reuse,
            bench=TINY,
            layout=tiny_layout(manifest),
        )
    elif args.pool == "text":
        from fusion_bench_fw.offline import textbench

        params = textbench.BuildParams(scope="all", **(textbench.QUICK if args.quick else {}))
        manifest = textbench.build(args.root, params)
        experiments = [e for e in args.experiments if e == "irrelevant"]  # the text build has no other groups
        results = run_scaling(
            args.out,
            manifest,
            {textbench.ENV_VAR: manifest["root"]},
            settings,
            experiments,
            args.counts,
            args.methods,
            args.threads,
            args.reuse,
            bench=TEXT,
            split=args.split,
        )
    else:
        from fusion_bench_fw.offline import minibench

        manifest = mini_build("all", root=args.root, quick=args.quick, threads=args.threads)
        env = {minibench.ENV_VAR: manifest["root"]}
        results = run_scaling(
            args.out,
            manifest,
            env,
            settings,
            args.experiments,
            args.counts,
            args.methods,
            args.threads,
            args.reuse,
            split=args.split,
        )
    results["provenance"] = provenance(manifest)
    results.update(total_seconds([row for rows in results["experiments"].values() for row in rows]))
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)  # this invocation, build included
    md = to_markdown(results)
    (args.out / "scaling.md").write_text(
        f"# Scaling experiments\n\nSettings: {json.dumps(settings)}\n{describe_provenance(results['provenance'])}\n\n"
        + md
    )
    (args.out / "scaling.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, args.out)
    except Exception as e:
        print(f"plot failed: {e}", file=sys.stderr)
    print()
    print(md)
    print(f"written: {args.out}/scaling.md, scaling.json, scaling_*.png (total {results['total_seconds']}s)")
    failed = [
        f"{r['method']} +{r['added']}" for rows in results["experiments"].values() for r in rows if r["status"] != "ok"
    ]
    if failed:
        print(f"failed runs: {failed} (their errors are in scaling.json)", file=sys.stderr)
        return 1
    return 0


def tiny_layout(manifest: dict) -> dict:
    """The tiny CLIP pool as the experiments see it: its first 2 tasks are the targets; added as
    irrelevant: its label-shifted models, then the other tasks' models (as in the authors' 20-task
    protocol); added as relevant: the other tasks' models, evaluated on all tasks."""
    tasks = list(manifest["tasks"])
    models = {n: {"group": "irrelevant"} for n in manifest["irrelevant"]}
    models.update({t: {"group": "target" if i < 2 else "irrelevant"} for i, t in enumerate(tasks)})
    return {"models": models, "tasks": tasks, "targets": tasks[:2]}


def run_task_pool(
    args, settings, pools: tuple[str, str], tasks: list[str], env=None, mini: bool = False, manifest: dict | None = None
) -> dict:
    """The authors' protocol on a 20-task pool: targets = the first 4 tasks; the "irrelevant"
    models added are the other 16 tasks' models (evaluated on the 4 targets), the "relevant"
    experiment grows the pool towards all 20 tasks (evaluated on all its tasks). ``pools``:
    FusionBench's ViT-B/32 TA20 (hub) or the mini benchmark's mini_TALL20 (``mini``)."""
    targets = tasks[:4]
    counts = [c for c in args.counts if c <= 16]
    results = {
        "settings": settings,
        "counts": counts,
        "methods": list(args.methods),
        "experiments": {},
        "pool": pools[0],
    }
    for exp in [e for e in args.experiments if e in ("irrelevant", "relevant")]:
        rows = []
        print(f"[{exp}]", flush=True)
        for c in counts:
            members = targets + tasks[4 : 4 + c]
            eval_tasks = targets if exp == "irrelevant" else members
            drop = [t for t in tasks if t not in members]
            drop_eval = [f"~taskpool.test_datasets.{t}" for t in tasks if t not in eval_tasks]
            if mini:
                dropped = drop_models(drop, keep_clip_tasks=eval_tasks)
            else:
                dropped = [f"~modelpool.models.{d}" for d in drop]
            dropped += [f"~modelpool.train_datasets.{d}" for d in drop if d not in eval_tasks]
            for m in args.methods:
                r = run_fusion_bench(
                    f"{exp}+{c} {m}",
                    [
                        f"modelpool={pools[0]}",
                        f"taskpool={pools[1]}",
                        *dropped,
                        *drop_eval,
                        *method_args(m, settings, eval_tasks),
                        *(["fabric.accelerator=cpu"] if mini else []),
                    ],
                    args.out / "runs" / f"{exp}_{c:02d}_{m}",
                    env=env,
                    threads=args.threads,
                    reuse=args.reuse,
                    manifest=manifest,
                )
                rows.append(r.row(added=c, pool_size=len(members), method=m))
        results["experiments"][exp] = rows
    return results


if __name__ == "__main__":
    sys.exit(main())
