#!/usr/bin/env python
"""Leaderboard: FusionBench's baselines and FW-Merging side by side, through the ``fusion_bench`` CLI.

Default: the embedded offline mini benchmark (``modelpool=mini_TA8 taskpool=mini_TA8``), built
first if needed (``python -m fusion_bench_fw.offline.minibench build``). ``--pool text_TA4`` runs
the offline text benchmark instead (all-MiniLM-L6-v2 fine-tuned on 4 text tasks, each task's own
head on the merged backbone; ``python -m fusion_bench_fw.offline.textbench build``), with the
methods that run on such pools (:data:`TEXT_METHODS`). ``--hub TA8|TA14|TA20``
runs the real protocol instead (FusionBench's ViT-B/32 pools and datasets; needs a hub or a
local mirror, and a GPU for reasonable times).

Every row is one ``fusion_bench`` run in a subprocess; its ``program_report.json`` gives the
per-task accuracies. Methods that cannot run here are listed with their status ("needs CUDA",
or "failed: <error>"), never dropped. Outputs in ``--out``: ``leaderboard.md``,
``leaderboard.json``, ``leaderboard.png`` and each run's folder (``runs/<method>/``: logs,
report, the CLI's full output).

    python benchmarks/leaderboard.py                  # offline mini benchmark, full settings
    python benchmarks/leaderboard.py --quick          # smoke run: small build, few steps, 4 tasks
    python benchmarks/leaderboard.py --pool text_TA4 --out benchmarks/results/textbench_leaderboard
    python benchmarks/leaderboard.py --hub TA8        # the real protocol (hub + GPU)
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
    RunResult,
    add_run_options,
    composed_method,
    describe_provenance,
    drop_models,
    fmt,
    mini_build,
    provenance,
    resolve_settings,
    run_fusion_bench,
    total_seconds,
)
from _grids import DATA_MATCHED, with_setting  # noqa: E402
from _rows import (  # noqa: E402
    ALL_METHODS,
    FULL,
    MINI_POOLS,
    NEEDS_CUDA,
    QUICK,
    TEXT_FULL,
    TEXT_METHODS,
    TEXT_POOLS,
    TEXT_ROWS,
    ada_weights,
    cuda_available,
    method_args,
)


def run_leaderboard(
    out: Path,
    pools: tuple[str, str],
    tasks: list[str],
    settings: dict,
    methods=ALL_METHODS,
    env: dict[str, str] | None = None,
    device_args: list[str] | None = None,
    threads: int = 1,
    drop_tasks: list[str] | None = None,
    reuse: bool = False,
    clip: bool = True,
    manifest: dict | None = None,
    tuned: dict[str, tuple[str, dict]] | None = None,
) -> dict:
    """``drop_tasks``: tasks of the pools left out (their models and data sets); ``clip=False``:
    pools without CLIP task names or model-pool test sets (the text benchmark's); ``tuned``: extra
    rows, ``{row: (method, setting)}`` (:func:`tuned_rows`), each run after its method's row."""
    tuned = tuned or {}
    methods = [m for name in methods for m in (name, *[t for t, (base, _) in tuned.items() if base == name])]
    modelpool, taskpool = pools
    device_args = device_args or []
    base = [f"modelpool={modelpool}", f"taskpool={taskpool}"]
    for t in drop_tasks or []:
        base += [
            *drop_models([t], datasets=clip, clip=clip),
            f"~modelpool.train_datasets.{t}",
            f"~taskpool.test_datasets.{t}",
        ]
    rows: list[dict] = []
    for name in methods:
        if name == "individual":
            per_task, secs, statuses, runs = {}, 0.0, set(), []
            for t in tasks:
                others = [f"~taskpool.test_datasets.{o}" for o in tasks if o != t]
                # the task's fine-tuned model takes the pretrained slot; method=dummy returns it
                r = run_fusion_bench(
                    f"individual/{t}",
                    [
                        *base,
                        "method=dummy",
                        f"modelpool.models._pretrained_=${{modelpool.models.{t}}}",
                        *others,
                        *device_args,
                    ],
                    out / "runs" / "individual" / t,
                    env=env,
                    threads=threads,
                    reuse=reuse,
                    manifest=manifest,
                )
                runs.append(r)
                secs += r.seconds
                statuses.add(r.status)
                if r.status == "ok":
                    per_task[t] = r.accuracy.get(t)
            ok = statuses == {"ok"}
            avg = sum(per_task.values()) / len(per_task) if ok else None
            rows.append(
                dict(
                    method="individual",
                    status="ok" if ok else "/".join(sorted(statuses)),
                    accuracy=per_task,
                    average=avg,
                    seconds=round(secs, 1),
                    error=None,
                    reused=all(r.reused for r in runs),
                    args={r.label: r.args for r in runs},
                    method_options={r.label: r.method for r in runs},
                    provenance={r.label: r.provenance for r in runs},
                )
            )
            continue
        if name in NEEDS_CUDA and not cuda_available(device_args):
            rows.append(
                dict(
                    method=name,
                    status="needs CUDA",
                    accuracy={},
                    average=None,
                    seconds=0.0,
                    error="not run: FusionBench's in-tree FW calls .cuda() and this machine has no CUDA device",
                )
            )
            continue
        if name == "fw_hard_paper" and not ada_weights(out / "runs" / name).is_file():
            rows.append(
                dict(
                    method=name,
                    status="needs the adamerging_layer_wise row",
                    accuracy={},
                    average=None,
                    seconds=0.0,
                    error=None,
                )
            )
            continue
        row_method, setting = tuned.get(name, (name, None))
        args = method_args(row_method, settings, out / "runs" / name, device_args)
        r: RunResult = run_fusion_bench(
            name,
            [*base, *(with_setting(args, setting) if setting else args)],
            out / "runs" / name,
            env=env,
            threads=threads,
            reuse=reuse,
            manifest=manifest,
        )
        rows.append(r.row(method=name, **({"tuned_setting": setting} if setting else {})))
    normalise(rows, tasks)
    return dict(modelpool=modelpool, taskpool=taskpool, tasks=tasks, settings=settings, rows=rows)


def tuned_rows(tuning: dict, methods, runs_already=None) -> dict[str, tuple[str, dict]]:
    """The rows a ``tuning.json`` (benchmarks/tune.py) adds: each tuned method of ``methods`` at the
    setting chosen on validation (``<method>@val``), and a data-matched method at the setting
    chosen on FW's labelled samples (``<method>@fw_samples``). A choice the method's row already
    runs adds no row: its own setting in the tuning, or ``runs_already(method, setting)`` (a
    default changed to the chosen setting since)."""
    out = {}
    for m in tuning["methods"]:
        chosen, grid = m.get("chosen_setting"), m.get("grid")
        base = DATA_MATCHED.get(m["method"], m["method"])
        if not chosen or base not in methods or chosen == grid[0]:
            continue
        if runs_already and runs_already(base, chosen):
            continue
        suffix = "fw_samples" if m["method"] in DATA_MATCHED else "val"
        out[f"{base}@{suffix}"] = (base, chosen)
    return out


def aggregate(per_seed: list[dict], seeds: list[int]) -> list[dict]:
    """One row per method over the builds of ``seeds``: mean and sample standard deviation of the
    average and of each task, each build's average, the median time."""
    import statistics

    rows = []
    for first in per_seed[0]["rows"]:
        name = first["method"]
        runs = [next(r for r in res["rows"] if r["method"] == name) for res in per_seed]
        ok = all(r["status"] == "ok" and r["average"] is not None for r in runs)
        averages = [r["average"] for r in runs] if ok else None
        tasks = per_seed[0]["tasks"]
        row = dict(
            method=name,
            status="ok" if ok else "/".join(sorted({r["status"] for r in runs})),
            seeds=list(seeds),
            per_seed=averages,
            average=statistics.mean(averages) if ok else None,
            average_std=statistics.stdev(averages) if ok and len(averages) > 1 else None,
            accuracy={t: statistics.mean(r["accuracy"][t] for r in runs) for t in tasks} if ok else {},
            accuracy_std={t: statistics.stdev(r["accuracy"][t] for r in runs) for t in tasks}
            if ok and len(runs) > 1
            else {},
            normalized=statistics.mean(r["normalized"] for r in runs)
            if ok and all(r.get("normalized") is not None for r in runs)
            else None,
            seconds=statistics.median(r["seconds"] for r in runs),
            error=next((r.get("error") for r in runs if r.get("error")), None),
        )
        if "tuned_setting" in first:
            row["tuned_setting"] = first["tuned_setting"]
        rows.append(row)
    return rows


def normalise(rows: list[dict], tasks: list[str]) -> None:
    """Each row's normalised accuracy: merged / individual fine-tuned, averaged over tasks."""
    ind = next((r for r in rows if r["method"] == "individual" and r["status"] == "ok"), None)
    for r in rows:
        if ind and r["status"] == "ok" and all(t in r["accuracy"] for t in tasks):
            r["normalized"] = sum(r["accuracy"][t] / ind["accuracy"][t] for t in tasks) / len(tasks)
        else:
            r["normalized"] = None


def update(previous: dict, result: dict) -> dict:
    """``previous`` (a leaderboard.json of the same pools and tasks) with ``result``'s rows put in
    place of (or beside) its rows of the same methods; the rerun methods are listed in ``rerun``."""
    if (previous["modelpool"], previous["taskpool"], previous["tasks"]) != (
        result["modelpool"],
        result["taskpool"],
        result["tasks"],
    ):
        raise SystemExit("--update: the previous leaderboard.json is of other pools or tasks; use another --out")
    new = {r["method"]: r for r in result["rows"]}
    rows = [new.pop(r["method"], r) for r in previous["rows"]] + list(new.values())
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    rows.sort(key=lambda r: order.get(r["method"], len(order)))
    normalise(rows, result["tasks"])
    rerun = sorted(set(previous.get("rerun", [])) | {r["method"] for r in result["rows"]})
    return dict(
        previous,
        rows=rows,
        rerun=rerun,
        rerun_settings=result["settings"],
        rerun_seconds=result.get("total_seconds"),
        rerun_provenance=result.get("provenance"),
        **total_seconds(rows),
    )


def to_markdown(result: dict) -> str:
    if result.get("build_seeds") and len(result["build_seeds"]) > 1:
        return _spread_markdown(result)
    tasks = result["tasks"]
    head = ["method", *tasks, "avg", "norm.", "time (s)", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        accs = [fmt(r["accuracy"].get(t)) for t in tasks]
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        status += " (reused)" if r.get("reused") else ""
        lines.append(
            "| "
            + " | ".join([r["method"], *accs, fmt(r["average"]), fmt(r["normalized"]), f"{r['seconds']:.0f}", status])
            + " |"
        )
    return "\n".join(lines) + "\n"


def _spread_markdown(result: dict) -> str:
    tasks = result["tasks"]
    seeds = result["build_seeds"]
    head = [
        "method",
        "setting",
        *tasks,
        "avg (mean ± std)",
        *[f"build {s}" for s in seeds],
        "norm.",
        "time (s, median)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        setting = ", ".join(f"{k.removeprefix('method.')}={v}" for k, v in (r.get("tuned_setting") or {}).items())
        if r["status"] != "ok":
            lines.append(
                f"| {r['method']} | {setting} | " + " | ".join(["-"] * (len(head) - 3)) + f" | {r['status']} |"
            )
            continue
        accs = [f"{fmt(r['accuracy'][t])} ± {fmt(r['accuracy_std'].get(t))}" for t in tasks]
        avg = f"{fmt(r['average'])} ± {fmt(r['average_std'])}"
        cells = [r["method"], setting, *accs, avg, *[fmt(a) for a in r["per_seed"]], fmt(r["normalized"])]
        lines.append("| " + " | ".join([*cells, f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in result["rows"] if r["status"] == "ok" and r["average"] is not None]
    tasks = result["tasks"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.45 * len(rows) + 2.5), gridspec_kw={"width_ratios": [2, 1]})
    grid = np.array([[100 * r["accuracy"].get(t, np.nan) for t in tasks] for r in rows])
    im = ax1.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=100)
    ax1.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right")
    ax1.set_yticks(range(len(rows)), [r["method"] for r in rows])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax1.text(
                    j,
                    i,
                    f"{grid[i, j]:.0f}",
                    ha="center",
                    va="center",
                    color="w" if grid[i, j] < 60 else "k",
                    fontsize=8,
                )
    fig.colorbar(im, ax=ax1, label="accuracy (%)")
    ax1.set_title(f"per-task accuracy ({result['modelpool']})")
    y = np.arange(len(rows))
    ax2.barh(y, [100 * r["average"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax2.text(
            100 * r["average"] + 0.5, i, f"{100 * r['average']:.1f}  ({r['seconds']:.0f}s)", va="center", fontsize=8
        )
    ax2.set_yticks(y, [""] * len(rows))
    ax2.set_ylim(ax1.get_ylim())
    ax2.set_xlim(0, 115)
    ax2.set_xlabel("average accuracy (%)  (wall time)")
    skipped = [f"{r['method']}: {r['status']}" for r in result["rows"] if r not in rows]
    if skipped:
        fig.text(0.01, 0.01, "not run: " + "; ".join(skipped), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/minibench_leaderboard"))
    p.add_argument(
        "--pool", default="mini_TA8", choices=sorted(MINI_POOLS) + sorted(TEXT_POOLS), help="benchmark setting"
    )
    p.add_argument(
        "--hub",
        choices=sorted(HUB_TASKS),
        default=None,
        help="run the real protocol on clip-vit-b32_<TA8|TA14|TA20> (needs a hub and a GPU)",
    )
    p.add_argument(
        "--root", default=None, help="mini benchmark root (default $FUSION_BENCH_FW_MINIBENCH_ROOT or the cache dir)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small build, few steps, and on the mini benchmark the pool's first 4 tasks (unless --tasks)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=ALL_METHODS + tuple(TEXT_ROWS.values()),
        help="default: every row of the pool",
    )
    p.add_argument("--tasks", nargs="+", default=None, help="a subset of the pool's tasks (default: all)")
    p.add_argument(
        "--update",
        action="store_true",
        help="rerun only --methods and put their rows into the leaderboard.json already in --out",
    )
    p.add_argument(
        "--tuned",
        type=Path,
        default=None,
        help="a tuning.json of benchmarks/tune.py: add each tuned method's row at its validation-chosen setting "
        "(<method>@val) and the data-matched Task Arithmetic (task_arithmetic@fw_samples) beside the default rows",
    )
    p.add_argument(
        "--build-seeds",
        nargs="+",
        type=int,
        default=[0],
        help="mini benchmark: run every row on the build of each seed (seed 0 at --root, seed k at <root>-seed<k>) "
        "and report mean ± std over the builds",
    )
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    if len(args.build_seeds) > 1 and (args.hub or args.pool in TEXT_POOLS or args.update):
        p.error("--build-seeds: the mini benchmark only, without --update")
    settings = resolve_settings(args, TEXT_FULL if args.pool in TEXT_POOLS and not args.hub else FULL, QUICK)
    t0 = time.perf_counter()
    env, device_args, manifest = {}, [], None
    if args.hub:
        pools = (f"clip-vit-b32_{args.hub}", f"clip-vit-b32_{args.hub}")
        tasks = HUB_TASKS[args.hub]
    elif args.pool in TEXT_POOLS:
        from fusion_bench_fw.offline import textbench

        modelpool, taskpool, tasks = TEXT_POOLS[args.pool]
        params = textbench.BuildParams(scope="targets", **(textbench.QUICK if args.quick else {}))
        manifest = textbench.build(args.root, params)
        env[textbench.ENV_VAR] = manifest["root"]
        pools, tasks, device_args = (modelpool, taskpool), list(tasks), ["fabric.accelerator=cpu"]
        print(f"text benchmark at {manifest['root']} (build {manifest['build_seconds']}s when it was built)")
    else:
        from fusion_bench_fw.offline import minibench

        modelpool, taskpool, tasks = MINI_POOLS[args.pool]
        pools, tasks, device_args = (modelpool, taskpool), list(tasks), ["fabric.accelerator=cpu"]
        if len(tasks) < len(minibench.pool_contents()[modelpool][2]):
            settings["fw_targets"] = tasks
    drop = []
    if args.quick and not args.tasks and not args.hub and args.pool in MINI_POOLS:
        args.tasks = tasks[:4]  # every row still runs; 4 tasks keep the smoke run to minutes
    if args.tasks:
        unknown = [t for t in args.tasks if t not in tasks]
        if unknown:
            p.error(f"unknown tasks {unknown}; the pool has {tasks}")
        drop = [t for t in tasks if t not in args.tasks]
        tasks = [t for t in tasks if t in args.tasks]
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.pool in TEXT_POOLS and not args.hub
    methods = args.methods or list(TEXT_METHODS if text else ALL_METHODS)

    def runs_already(method: str, setting: dict) -> bool:
        resolved = composed_method(method_args(method, settings, args.out / "runs" / method, device_args))
        return all(resolved.get(k.removeprefix("method.")) == v for k, v in setting.items())

    tuned = tuned_rows(json.loads(args.tuned.read_text()), methods, runs_already) if args.tuned else {}

    def run(out: Path, manifest: dict | None) -> dict:
        return run_leaderboard(
            out, pools, tasks, settings, methods, env, device_args, args.threads, drop, args.reuse,
            clip=not text, manifest=manifest, tuned=tuned,
        )  # fmt: skip

    if args.hub or text:
        result = run(args.out, manifest)
    else:
        per_seed = []
        for seed in args.build_seeds:
            manifest = mini_build(modelpool, seed=seed, root=args.root, quick=args.quick, threads=args.threads)
            env[minibench.ENV_VAR] = manifest["root"]
            print(f"mini benchmark at {manifest['root']} (build {manifest['build_seconds']}s when it was built)")
            out = args.out if len(args.build_seeds) == 1 else args.out / f"build_seed{seed}"
            per_seed.append(dict(run(out, manifest), build_seed=seed, provenance=provenance(manifest)))
            per_seed[-1].update(total_seconds(per_seed[-1]["rows"]))
        result = per_seed[0] if len(per_seed) == 1 else dict(
            {k: per_seed[0][k] for k in ("modelpool", "taskpool", "tasks", "settings")},
            build_seeds=args.build_seeds,
            rows=aggregate(per_seed, args.build_seeds),
            per_build=per_seed,
            **total_seconds([r for res in per_seed for r in res["rows"]]),
        )  # fmt: skip
    if args.tuned:
        result["tuning"] = str(args.tuned)
    result.setdefault("provenance", provenance(manifest))  # several builds: each build's is in per_build
    if "per_build" not in result:
        result.update(total_seconds(result["rows"]))  # the rows' measured times (reused rows at theirs)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)  # this invocation, build included
    if args.update and (args.out / "leaderboard.json").is_file():
        result = update(json.loads((args.out / "leaderboard.json").read_text()), result)
    md = to_markdown(result)
    (args.out / "leaderboard.md").write_text(
        f"# Leaderboard: modelpool={pools[0]} taskpool={pools[1]}\n\nAccuracy (%) per task, average, "
        f"normalised accuracy (merged / individual, %), wall time of the fusion_bench run (s).\n"
        f"Settings: {json.dumps(result['settings'])}\n"
        f"{describe_provenance(result.get('provenance'))}\n"
        + (
            f"Rerun later with the settings {json.dumps(result['rerun_settings'])}: {', '.join(result['rerun'])}\n"
            if result.get("rerun")
            else ""
        )
        + "\n"
        + md
    )
    (args.out / "leaderboard.json").write_text(json.dumps(result, indent=1))
    try:
        plot(result, args.out / "leaderboard.png")
    except Exception as e:  # plotting must not lose the table
        print(f"plot failed: {e}", file=sys.stderr)
    print()
    print(md)
    print(
        f"written: {args.out / 'leaderboard.md'}, leaderboard.json, leaderboard.png (total {result.get('rerun_seconds', result['total_seconds'])}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
