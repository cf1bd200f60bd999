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
    python benchmarks/leaderboard.py --quick          # CI: small build, few steps
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
    drop_models,
    fmt,
    quote,
    resolve_settings,
    run_fusion_bench,
)

# (row, group, CLI method args); group "individual" is expanded per task
# mini-benchmark defaults: FW keeps 10 iterations and 100 samples per task; FW-soft uses 30 inner
# steps instead of 100 (the inner loss flattens by then, and each step is a pass over all samples)
# ent_inner: the entropy inner steps of fw_soft_paper (the authors' 500 take 190 s per iteration
# on mini_TA8 on 2 shared cores; see benchmarks/ablation.py)
# fw_iters / soft_iters / fw_inner: FW-hard's and FW-soft's iterations and FW-soft's inner steps
# (FULL: their defaults)
FULL = dict(ada_steps=200, surgery_steps=200, fw_iters=10, soft_iters=5, fw_inner=30, ent_inner=100, n_per_task=100)
QUICK = dict(ada_steps=20, surgery_steps=20, fw_iters=3, soft_iters=2, fw_inner=20, ent_inner=10, n_per_task=32)
# the text benchmark: each FW-soft inner step is a forward and backward pass of MiniLM over every
# sample (100 x 4 texts), about 8 s on one core, so 10 inner steps instead of 30 (AdaMerging and
# Surgery are CLIP-only: their steps are unused)
TEXT_FULL = dict(FULL, fw_inner=10)


def _mini_pools() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """``--pool`` name -> (model pool, task pool, evaluated tasks)."""
    from fusion_bench_fw.offline.minibench import ALL_TASKS, TALL14, TARGETS, TASKS

    return {
        "mini_TA8": ("mini_TA8", "mini_TA8", TASKS),
        "mini_TALL14": ("mini_TALL14", "mini_TALL14", TALL14),
        "mini_TALL20": ("mini_TALL20", "mini_TALL20", ALL_TASKS),
        # the 4 targets plus 16 irrelevant models (the scaling experiments' largest pool)
        "mini_TA20": ("mini_TA20", "mini_TA20", TARGETS),
        # the authors' ViT protocol: 20 real tasks' models, 4 of them the targets
        "mini_TALL20_TA4": ("mini_TALL20", "mini_TA4", TARGETS),
    }


MINI_POOLS = _mini_pools()


def _text_pools() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    from fusion_bench_fw.offline.textbench import TARGETS

    return {"text_TA4": ("text_TA4", "text_TA4", TARGETS)}


TEXT_POOLS = _text_pools()

# rows that fail inside FusionBench 0.2.33 itself on this stack; they keep their row and the reason
UPSTREAM_FAILURES = {
    "regmean_plusplus": "IndexError in RegMeanAlgorithmForCLIPPlusPlus.layer_batches_forward "
    "(a CLIP encoder layer called with 2-D hidden states; transformers 5.5)",
}

ALL_METHODS = (
    "pretrained",
    "individual",
    "simple_average",
    "task_arithmetic",
    "ties_merging",
    "tsv_m",
    "iso_c",
    "iso_cts",
    "wudi",
    "regmean",
    "regmean_plusplus",
    "adamerging_task_wise",
    "adamerging_layer_wise",
    "surgery",
    "fusionbench_fw_soft",
    "fusionbench_fw_hard",
    "fw_hard",
    "fw_soft",
    "fw_hard_paper",
    "fw_soft_paper",
)


# the rows that run on a text pool (backbones handed out, each task's own head): FusionBench's CLIP-only
# methods (AdaMerging, Surgery, RegMean++) and its in-tree FW (CLIP and CUDA) are left out; RegMean runs
# as FusionBench's GPT-2 RegMean on the backbone's linear layers (regmean_text), and WUDI without the word
# embeddings (wudi_text)
# (fw_hard_paper starts from AdaMerging's weights, fw_soft_paper's entropy search uses the CLIP loaders)
CLIP_ONLY = {
    "regmean_plusplus",
    "adamerging_task_wise",
    "adamerging_layer_wise",
    "surgery",
    "fw_hard_paper",
    "fw_soft_paper",
}
TEXT_ROWS = {"regmean": "regmean_text", "wudi": "wudi_text"}
TEXT_METHODS = tuple(
    TEXT_ROWS.get(m, m) for m in ALL_METHODS if m not in CLIP_ONLY and not m.startswith("fusionbench_fw")
)


def method_args(name: str, s: dict, run_dir: Path, device_args: list[str]) -> list[str]:
    ada_common = [
        f"method.max_steps={s['ada_steps']}",
        "method.num_workers=0",
        "method.batch_size=16",
        # absolute: the CLI runs with the run folder as its working directory
        f"method.cache_dir={quote(Path(run_dir).resolve())}",
        "method.save_merging_weights=merging_weights.pt",
    ]
    samples = [f"method.n_per_task={s['n_per_task']}", "method.progress=false"]
    targets = f"[{','.join(s['fw_targets'])}]" if s.get("fw_targets") else "null"
    # a pool whose evaluated tasks are a subset of its models' tasks names them; the presets always set theirs
    fw_common = [*samples, f"method.targets={targets}"] if s.get("fw_targets") else samples
    paper_common = [f"method.targets={targets}", *samples]
    return {
        "pretrained": ["method=dummy"],
        "simple_average": ["method=simple_average"],
        "task_arithmetic": ["method=task_arithmetic", "method.scaling_factor=0.3"],
        "ties_merging": ["method=ties_merging", "method.scaling_factor=0.3", "method.threshold=20"],
        # FusionBench 0.2.33's current strongest data-free and data-light baselines, at their defaults
        "tsv_m": ["method=task_singular_vector/TaskSingularVectorMerging"],
        "iso_c": ["method=isotropic_merging/iso_c"],
        "iso_cts": ["method=isotropic_merging/iso_cts"],
        "wudi": ["method=wudi/wudi"],
        # WUDI optimises every 2-D tensor through a (models x rows x rows) product: for a word-embedding matrix
        # that is 4 x 30522^2 floats (15 GB; the text row was killed for memory), and the embeddings are frozen
        # while fine-tuning, so their task vectors are 0 and WUDI's division by ||tau||^2 gives NaN. Left out,
        # they are averaged (FusionBench's own exclude_keys); every other matrix gets WUDI's optimisation.
        "wudi_text": ["method=wudi/wudi", "method.exclude_keys=[embeddings.word_embeddings.weight]"],
        "regmean": ["method=regmean/clip_regmean", "method.dataloader_kwargs.num_workers=0"],
        # FusionBench 0.2.33's class cannot be constructed (see fusion_bench_fw.fusionbench.upstream_fixes);
        # once constructed, its layer-by-layer forward still fails under transformers 5.5 (UPSTREAM_FAILURES)
        "regmean_text": [
            "method=regmean/gpt2_regmean",
            "method._target_=fusion_bench_fw.fusionbench.upstream_fixes.RegMeanForSequenceClassification",
            "method.weight_transpose=true",
        ],
        "regmean_plusplus": [
            "method=regmean_plusplus/clip_regmean_plusplus",
            "method._target_=fusion_bench_fw.fusionbench.upstream_fixes.RegMeanPlusPlusForCLIP",
            "method.dataloader_kwargs.num_workers=0",
        ],
        "adamerging_task_wise": ["method=adamerging/clip", "method.name=clip_task_wise_adamerging", *ada_common],
        "adamerging_layer_wise": ["method=adamerging/clip", "method.name=clip_layer_wise_adamerging", *ada_common],
        "surgery": [
            "method=surgery/adamerging_surgery",
            *ada_common,
            f"method.surgery_steps={s['surgery_steps']}",
            f"method.eval_iterations={max(1, s['surgery_steps'] // 2)}",
        ],
        # FusionBench's in-tree FW (hard-codes .cuda()); init_weight=base as its yaml default crashes
        "fusionbench_fw_soft": [
            "method=fw_merging/fw_soft",
            "method.init_weight=base",
            f"method.max_iters={s['fw_iters']}",
            f"method.ada_iters={s['fw_inner']}",
            f"method.dataset_size={s['n_per_task']}",
        ],
        "fusionbench_fw_hard": [
            "method=fw_merging/fw_hard",
            "method.init_weight=base",
            f"method.max_iters={s['fw_iters']}",
            f"method.dataset_size={s['n_per_task']}",
        ],
        "fw_hard": ["method=fw_hard", *fw_common, f"method.max_iters={s['fw_iters']}"],
        # the authors' protocol (their iteration counts); FW-hard starts from the AdaMerging row's weights
        "fw_hard_paper": ["method=fw_hard_paper", f"method.init_path={quote(ada_weights(run_dir))}", *paper_common],
        "fw_soft_paper": ["method=fw_soft_paper", f"method.inner_steps={s['ent_inner']}", *paper_common],
        "fw_soft": [
            "method=fw_soft",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
    }[name] + device_args


def ada_weights(run_dir: Path) -> Path:
    """Where the adamerging_layer_wise row of the same leaderboard saves its merging weights."""
    return (Path(run_dir).parent / "adamerging_layer_wise" / "log" / "merging_weights.pt").resolve()


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
) -> dict:
    """``drop_tasks``: tasks of the pools left out (their models and data sets); ``clip=False``:
    pools without CLIP task names or model-pool test sets (the text benchmark's)."""
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
            per_task, secs, statuses = {}, 0.0, set()
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
                )
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
        r: RunResult = run_fusion_bench(
            name,
            [*base, *method_args(name, settings, out / "runs" / name, device_args)],
            out / "runs" / name,
            env=env,
            threads=threads,
            reuse=reuse,
        )
        rows.append(
            dict(method=name, status=r.status, accuracy=r.accuracy, average=r.average, seconds=r.seconds, error=r.error)
        )
    normalise(rows, tasks)
    return dict(modelpool=modelpool, taskpool=taskpool, tasks=tasks, settings=settings, rows=rows)


# rows that cannot run without CUDA (FusionBench's in-tree FW hard-codes .cuda()): on a machine
# without it they are listed as such without a run (about 20 s each of CLI start-up and failure)
NEEDS_CUDA = ("fusionbench_fw_soft", "fusionbench_fw_hard")


def cuda_available(device_args) -> bool:
    """Whether the runs would get a CUDA device (``fabric.accelerator=cpu`` in the args: no)."""
    import torch

    return torch.cuda.is_available() and "fabric.accelerator=cpu" not in (device_args or [])


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
        previous, rows=rows, rerun=rerun, rerun_settings=result["settings"], rerun_seconds=result.get("total_seconds")
    )


def to_markdown(result: dict) -> str:
    tasks = result["tasks"]
    head = ["method", *tasks, "avg", "norm.", "time (s)", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        accs = [fmt(r["accuracy"].get(t)) for t in tasks]
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        lines.append(
            "| "
            + " | ".join([r["method"], *accs, fmt(r["average"]), fmt(r["normalized"]), f"{r['seconds']:.0f}", status])
            + " |"
        )
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
    p.add_argument("--quick", action="store_true", help="small build and few steps (CI)")
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
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    settings = resolve_settings(args, TEXT_FULL if args.pool in TEXT_POOLS and not args.hub else FULL, QUICK)
    t0 = time.perf_counter()
    env, device_args = {}, []
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
        params = minibench.BuildParams(
            scope=minibench.scope_for(minibench.pool_contents()[modelpool][1]),
            **(minibench.QUICK if args.quick else {}),
            threads=args.threads,
        )
        manifest = minibench.build(args.root, params)
        env[minibench.ENV_VAR] = manifest["root"]
        pools = (modelpool, taskpool)
        tasks = list(tasks)
        if len(tasks) < len(minibench.pool_contents()[modelpool][2]):
            settings["fw_targets"] = tasks
        device_args = ["fabric.accelerator=cpu"]
        print(f"mini benchmark at {manifest['root']} (build {manifest['build_seconds']}s when it was built)")
    drop = []
    if args.tasks:
        unknown = [t for t in args.tasks if t not in tasks]
        if unknown:
            p.error(f"unknown tasks {unknown}; the pool has {tasks}")
        drop = [t for t in tasks if t not in args.tasks]
        tasks = [t for t in tasks if t in args.tasks]
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.pool in TEXT_POOLS and not args.hub
    methods = args.methods or list(TEXT_METHODS if text else ALL_METHODS)
    result = run_leaderboard(
        args.out, pools, tasks, settings, methods, env, device_args, args.threads, drop, args.reuse, clip=not text
    )
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    if args.update and (args.out / "leaderboard.json").is_file():
        result = update(json.loads((args.out / "leaderboard.json").read_text()), result)
    md = to_markdown(result)
    (args.out / "leaderboard.md").write_text(
        f"# Leaderboard: modelpool={pools[0]} taskpool={pools[1]}\n\nAccuracy (%) per task, average, "
        f"normalised accuracy (merged / individual, %), wall time of the fusion_bench run (s).\n"
        f"Settings: {json.dumps(result['settings'])}\n"
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
