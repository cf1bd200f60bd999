#!/usr/bin/env python
"""Tuning with one budget for every method, chosen on validation, reported on test.

For each tunable row of the leaderboard (:data:`_grids.GRIDS`), every setting of its grid runs
through the real ``fusion_bench`` CLI on the pool's validation task pool (``<taskpool>_val``); the
setting with the best validation average is chosen (ties: the earlier setting in the grid) and
then run once on the test task pool, beside the row's own setting (FusionBench's default, or the
plugin's) on test. Nothing is chosen by test accuracy.

The data-matched baseline (:data:`_grids.DATA_MATCHED`): Task Arithmetic with its scaling factor
chosen on the labelled samples FW optimises on (each target's ``n_per_task`` seeded train samples,
the very rows FW's objective draws), then reported on test.

    python benchmarks/tune.py                                   # mini_TA8, every tunable row
    python benchmarks/tune.py --methods task_arithmetic tsv_m --budget 3
    python benchmarks/tune.py --pool text_TA4 --out benchmarks/results/tune_text_TA4

Outputs in ``--out``: ``tuning.json`` (grids, validation scores, choices, test scores, times, the
provenance of the run and of every fusion_bench run), ``tuning.md``, and each run's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_run_options,
    describe_provenance,
    fmt,
    mini_build,
    provenance,
    resolve_settings,
    run_fusion_bench,
    total_seconds,
)
from _grids import BUDGET, DATA_MATCHED, GRIDS, with_setting  # noqa: E402
from _rows import FULL, MINI_POOLS, QUICK, TEXT_FULL, TEXT_POOLS, method_args  # noqa: E402

TINY_POOL = "fw_tiny_clip"  # the tiny CLIP pool (the tests' pool)


def fw_run_options() -> dict:
    """FW's sampling options at their defaults (what the data-matched baseline must match)."""
    from fusion_bench_fw.fusionbench.options import RunOptions

    defaults = {f.name: f.default for f in fields(RunOptions)}
    return {"n_per_task": defaults["n_per_task"], "seed": defaults["seed"]}


def fw_samples_overrides(train_paths: dict[str, str], n_per_task: int, seed: int) -> list[str]:
    """Overrides that make the task pool score each task on FW's labelled samples of it."""
    from fusion_bench_fw.offline.cli import hydra_path

    out = []
    for task, path in train_paths.items():
        entry = f"taskpool.test_datasets.{task}"
        out += [
            f"++{entry}._target_=fusion_bench_fw.fusionbench.modelpool.load_local_dataset",
            f"++{entry}.dataset_path={hydra_path(path)}",
            f"++{entry}.fw_samples={{task:{task},n_per_task:{n_per_task},seed:{seed}}}",
        ]
    return out


def train_paths(modelpool: str, tasks: list[str], env: dict[str, str]) -> dict[str, str]:
    """Each task's train split folder, as the composed model pool names it."""
    from omegaconf import OmegaConf

    from hydra_plugins.fusion_bench_fw.searchpath import compose_fusion_bench

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = compose_fusion_bench([f"modelpool={modelpool}"])
        datasets = OmegaConf.to_container(cfg.modelpool.train_datasets, resolve=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {t: datasets[t]["dataset_path"] for t in tasks}


def tune_method(
    name: str,
    grid: list[dict],
    base: list[str],
    select_base: list[str],
    test_base: list[str],
    settings: dict,
    out: Path,
    run,
    device_args: list[str],
) -> dict:
    """Every setting of ``grid`` on ``select_base`` (the selection split), the best one and the
    row's own setting (``grid[0]``) on ``test_base``."""
    row = name if name in GRIDS else DATA_MATCHED[name]
    scores, runs = [], []
    for i, setting in enumerate(grid):
        d = out / "runs" / name / f"select_{i}"
        r = run(
            f"{name}/select_{i}",
            [*base, *select_base, *with_setting(method_args(row, settings, d, device_args), setting)],
            d,
        )
        runs.append(r)
        scores.append(r.average)
    ok = [i for i, s in enumerate(scores) if s is not None]
    chosen = max(ok, key=lambda i: (scores[i], -i)) if ok else None
    tests = {}
    for label, i in (("chosen", chosen), ("own", 0)):
        if i is None:
            continue
        if label == "own" and i == chosen:
            tests["own"] = tests["chosen"]
            continue
        d = out / "runs" / name / f"test_{label}"
        r = run(
            f"{name}/test_{label}",
            [*base, *test_base, *with_setting(method_args(row, settings, d, device_args), grid[i])],
            d,
        )
        runs.append(r)
        tests[label] = r.row(setting=grid[i])
    return dict(
        method=name,
        tuned_as=row,
        grid=grid,
        selection_scores=scores,
        selection_tasks=next((sorted(r.accuracy) for r in runs[: len(grid)] if r.accuracy), None),
        selection_errors=[r.error for r in runs[: len(grid)]],
        chosen=chosen,
        chosen_setting=None if chosen is None else grid[chosen],
        test_chosen=tests.get("chosen"),
        test_own=tests.get("own"),
        runs=[r.row(label=r.label, log_dir=r.log_dir) for r in runs],
        seconds=round(sum(r.seconds for r in runs), 1),
    )


def pool_setup(args) -> tuple[str, str, list[str], dict, dict, list[str], bool]:
    """(model pool, test task pool, tasks, env, manifest, device args, clip) of ``--pool``, built if needed."""
    if args.pool == TINY_POOL:
        from fusion_bench_fw.offline import tiny_clip

        if not args.root:
            raise SystemExit("--pool fw_tiny_clip needs --root (where the tiny pool is, or is to be built)")
        manifest = tiny_clip.build_tiny_clip_pool(str(Path(args.root).resolve()))
        env = {tiny_clip.ENV_VAR: str(Path(args.root).resolve())}
        return TINY_POOL, TINY_POOL, list(tiny_clip.DEFAULT_TASKS), env, manifest, ["fabric.accelerator=cpu"], True
    if args.pool in TEXT_POOLS:
        from fusion_bench_fw.offline import textbench

        modelpool, taskpool, tasks = TEXT_POOLS[args.pool]
        manifest = textbench.build(
            args.root, textbench.BuildParams(scope="targets", **(textbench.QUICK if args.quick else {}))
        )
        return (
            modelpool,
            taskpool,
            list(tasks),
            {textbench.ENV_VAR: manifest["root"]},
            manifest,
            ["fabric.accelerator=cpu"],
            False,
        )
    from fusion_bench_fw.offline import minibench

    modelpool, taskpool, tasks = MINI_POOLS[args.pool]
    manifest = mini_build(modelpool, root=args.root, quick=args.quick, threads=args.threads)
    return (
        modelpool,
        taskpool,
        list(tasks),
        {minibench.ENV_VAR: manifest["root"]},
        manifest,
        ["fabric.accelerator=cpu"],
        True,
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", default="mini_TA8", choices=[*MINI_POOLS, *TEXT_POOLS, TINY_POOL])
    p.add_argument("--root", default=None, help="the benchmark's root (default: its env var or cache dir)")
    p.add_argument("--methods", nargs="+", default=None, help=f"default: {[*GRIDS, *DATA_MATCHED]}")
    p.add_argument("--budget", type=int, default=BUDGET, help=f"settings per method, the same for all (max {BUDGET})")
    p.add_argument("--quick", action="store_true", help="small build and few steps (smoke run)")
    p.add_argument("--out", type=Path, default=Path("outputs/tuning"))
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start tuning.json afresh (default: keep the methods an earlier run in --out measured "
        "and this run does not redo, each with its own provenance)",
    )
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    if not 1 <= args.budget <= BUDGET:
        p.error(f"--budget must be between 1 and {BUDGET}, got {args.budget}")
    text = args.pool in TEXT_POOLS
    settings = resolve_settings(args, TEXT_FULL if text else FULL, QUICK)
    methods = args.methods or [*GRIDS, *DATA_MATCHED]
    unknown = [m for m in methods if m not in GRIDS and m not in DATA_MATCHED]
    if unknown:
        p.error(f"no grid for {unknown}; tunable: {[*GRIDS, *DATA_MATCHED]}")
    t0 = time.perf_counter()
    modelpool, taskpool, tasks, env, manifest, device_args, clip = pool_setup(args)
    pool_targets = _pool_targets(modelpool, tasks)
    if len(tasks) < len(pool_targets):  # as the leaderboard: FW targets the evaluated tasks
        settings["fw_targets"] = tasks
    base = [f"modelpool={modelpool}"]
    val = [f"taskpool={taskpool}_val"]
    test = [f"taskpool={taskpool}"]
    fw = fw_run_options()
    fw["n_per_task"] = settings["n_per_task"]  # the leaderboard's FW rows pass theirs explicitly
    args.out.mkdir(parents=True, exist_ok=True)

    def run(label, cli, d):
        return run_fusion_bench(label, cli, d, env=env, threads=args.threads, reuse=args.reuse, manifest=manifest)

    here = provenance(manifest)  # this invocation's, taken once (each run keeps its own)
    results = [] if args.fresh else kept_methods(args.out / "tuning.json", args.pool, methods)

    def write() -> dict:  # after every method, so an interrupted run keeps what it measured
        runs = [r for m in results for r in m.get("runs", [])]
        result = dict(
            pool=args.pool,
            modelpool=modelpool,
            taskpool=taskpool,
            selection_taskpool=f"{taskpool}_val",
            tasks=tasks,
            budget=args.budget,
            settings=settings,
            fw_samples=fw,
            methods=results,
            methods_asked=methods,
            provenance=here,
            **total_seconds(runs),
            wall_seconds=round(time.perf_counter() - t0, 1),
        )
        (args.out / "tuning.json").write_text(json.dumps(result, indent=1))
        (args.out / "tuning.md").write_text(to_markdown(result))
        return result

    for name in methods:
        grid = GRIDS[name if name in GRIDS else DATA_MATCHED[name]][: args.budget]
        if name in DATA_MATCHED:
            if not clip:
                results.append(dict(method=name, status="not run: CLIP pools only (FW's samples as a task pool)"))
                write()
                continue
            targets = settings.get("fw_targets") or pool_targets
            select = [*test, *fw_samples_overrides(train_paths(modelpool, targets, env), fw["n_per_task"], fw["seed"])]
            select += [f"~taskpool.test_datasets.{t}" for t in tasks if t not in targets]
        else:
            select = val
        t = time.perf_counter()
        results.append(tune_method(name, grid, base, select, test, settings, args.out, run, device_args))
        results[-1]["wall_seconds"] = round(time.perf_counter() - t, 1)
        results[-1]["provenance"] = here
        print(f"  {name:<28} chosen {results[-1].get('chosen_setting')}", flush=True)
        write()
    result = write()
    print(to_markdown(result))
    return result


def kept_methods(path: Path, pool: str, redo: list[str]) -> list[dict]:
    """The method records of an earlier ``tuning.json`` of ``pool`` that this run does not redo,
    each with the provenance of the invocation that measured it."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("pool") != pool:
        raise SystemExit(f"{path} tuned pool {earlier.get('pool')!r}, not {pool!r}: pass --fresh or another --out")
    kept = [m for m in earlier["methods"] if m["method"] not in redo and "grid" in m]
    for m in kept:
        m.setdefault("provenance", earlier.get("provenance"))
    if kept:
        print(f"  keeping {[m['method'] for m in kept]} from {path} (--fresh to redo them)", flush=True)
    return kept


def _pool_targets(modelpool: str, tasks: list[str]) -> list[str]:
    """The tasks with a train split in the model pool (FW's default targets)."""
    if modelpool == TINY_POOL:
        return tasks
    from fusion_bench_fw.offline import minibench, textbench

    contents = minibench.pool_contents()
    if modelpool in contents:
        return list(contents[modelpool][2])
    return list(textbench.TARGETS)


def to_markdown(result: dict) -> str:
    lines = [
        f"# Tuning: modelpool={result['modelpool']}, chosen on {result['selection_taskpool']}, reported on "
        f"taskpool={result['taskpool']}",
        "",
        f"Budget: {result['budget']} settings per method. Average accuracy (%); test over {len(result['tasks'])} tasks, "
        "selection over the tasks the selection split has (each method's `selection_tasks` in the JSON; builds of the "
        "mini benchmark before its data version 3 have no validation split for the digits tasks). "
        f"The data-matched rows choose on FW's own labelled samples ({result['fw_samples']}), not on validation.",
        *_provenance_lines(result),
        "",
        "| method | settings tried: selection score | chosen | test at chosen | test at own setting | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["methods"]:
        if "grid" not in m:
            lines.append(f"| {m['method']} | {m['status']} | | | | |")
            continue
        tried = "; ".join(
            f"{_short(s)}: {fmt(v)}{' (own)' if i == 0 else ''}"
            for i, (s, v) in enumerate(zip(m["grid"], m["selection_scores"]))
        )
        chosen = _short(m["chosen_setting"]) if m["chosen_setting"] else "none ran"
        tc = fmt((m["test_chosen"] or {}).get("average"))
        to = fmt((m["test_own"] or {}).get("average"))
        lines.append(f"| {m['method']} | {tried} | {chosen} | {tc} | {to} | {m['seconds']:.0f} |")
    measured = {m["method"] for m in result["methods"]}
    missing = [m for m in result.get("methods_asked", []) if m not in measured]
    if missing:
        lines += ["", f"Asked and not measured (the run stopped before them): {', '.join(missing)}."]
    untuned = [m for m in [*GRIDS, *DATA_MATCHED] if m not in measured and m not in missing]
    if untuned:
        lines += ["", f"Tunable and not asked in this file: {', '.join(untuned)}."]
    return "\n".join(lines) + "\n"


def _provenance_lines(result: dict) -> list[str]:
    """One line per invocation that measured rows of this file, naming its methods."""
    groups: dict[str, tuple[dict, list[str]]] = {}
    for m in result["methods"]:
        prov = m.get("provenance") or result.get("provenance")
        key = json.dumps(prov, sort_keys=True)
        groups.setdefault(key, (prov, []))[1].append(m["method"])
    if len(groups) <= 1:
        return [describe_provenance(result.get("provenance"))]
    return [f"{', '.join(names)}: {describe_provenance(prov)}" for prov, names in groups.values()]


def _short(setting: dict) -> str:
    return ", ".join(f"{k.removeprefix('method.')}={v}" for k, v in setting.items())


if __name__ == "__main__":
    main()
