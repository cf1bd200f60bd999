#!/usr/bin/env python
"""Ablation: the authors' FW-Merging protocol, each of its choices switched one at a time.

For each variant the base row is the ``*_paper`` preset (the authors' published ViT command,
which follows their code where it and the paper's text differ); every other row changes one
choice to the paper's text or to textbook Frank-Wolfe:

* FW-hard: step (0.3 * 0.01 * 2/(t+2) vs textbook 2/(t+2)), start (AdaMerging's merging weights
  vs Task Arithmetic(0.3)), LMO score (cosine vs inner product), granularity (layer vs task),
  and the step scale of a Task Arithmetic start (the candidates for the plain default);
* FW-soft: inner objective (test-batch entropy vs labelled cross-entropy), constraint (none vs
  capped simplex), inner init (0.3 then 1e-2 vs 1/(k+1)), LMO score, selection (per task vs
  top-k), granularity (task vs layer).

References in the same run: Task Arithmetic(0.3) and layer-wise AdaMerging (whose merging
weights FW-hard's paper protocol starts from). Every row is one ``fusion_bench`` CLI run.
Outputs in ``--out``: ``ablation.md``, ``ablation.json`` and the runs.

    python benchmarks/ablation.py                          # both pools (about 50 minutes on 2 cores)
    python benchmarks/ablation.py --pool mini_TALL20_TA4   # one of them
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_run_options,
    describe_provenance,
    fmt,
    mini_build,
    provenance,
    quote,
    resolve_settings,
    run_fusion_bench,
    total_seconds,
)
from _rows import MINI_POOLS, ada_weights, method_args  # noqa: E402

# fw_inner: inner steps of a labelled-CE inner search (each a pass over every labelled sample;
# the leaderboard's FW-soft uses 30). ent_inner: steps of an entropy inner search (a batch of 16
# per target each); the authors' 500 cost 190 s per iteration on mini_TA8 (2 shared cores), so
# every FW-soft row here takes 100 (FW-soft's budget is equal across its rows: 5 iterations).
POOLS = ("mini_TA8", "mini_TALL20_TA4")  # the 8-task pool, and 4 targets among 20 models
FULL = dict(ada_steps=200, surgery_steps=200, fw_iters=10, fw_inner=30, ent_inner=100, n_per_task=100)
QUICK = dict(ada_steps=20, surgery_steps=20, fw_iters=3, fw_inner=20, ent_inner=10, n_per_task=32)

WEIGHTS = "{weights}"  # replaced by AdaMerging's merging-weights file of this run
TEXTBOOK = "@textbook"  # first override: on top of the variant's textbook preset (None: the preset as is)

# (row, what it changes, overrides on top of the variant's paper preset)
HARD = [
    ("fw_hard_paper", "the authors' FW-hard: AdaMerging start, step 0.003*2/(t+2), cosine LMO, layer", []),
    ("hard: textbook step", "gamma_t = 2/(t+2) (gamma_0 = 1)", ["method.step_scale=1.0"]),
    ("hard: TA start", "start at Task Arithmetic(0.3) instead of AdaMerging", ["method.init=task_arithmetic"]),
    ("hard: inner-product LMO", "LMO scores <g, v> (paper text)", ["method.lmo_score=inner"]),
    ("hard: task-wise LMO", "one model for the whole network per step", ["method.granularity=task"]),
    (
        "hard: TA start, step 0.03",
        "TA start, gamma_t = 0.03*2/(t+2) (FusionBench's yaml)",
        ["method.init=task_arithmetic", "method.step_scale=0.03"],
    ),
    (
        "hard: TA start, step 0.3",
        "TA start, gamma_t = 0.3*2/(t+2)",
        ["method.init=task_arithmetic", "method.step_scale=0.3"],
    ),
    (
        "hard: TA start, line search",
        "TA start, gamma_t by golden section on [0, 2/(t+2)]",
        ["method.init=task_arithmetic", "method.step_rule=line_search", "method.step_scale=1.0"],
    ),
    (
        "hard: TA start, line search, inner LMO",
        "the same with the inner-product LMO",
        [
            "method.init=task_arithmetic",
            "method.step_rule=line_search",
            "method.step_scale=1.0",
            "method.lmo_score=inner",
        ],
    ),
    ("fw_hard_textbook", "textbook FW: TA start, gamma_0 = 1, inner LMO, layer", None),
    (
        "hard: textbook, line search",
        "textbook FW with gamma_t by golden section on [0, 2/(t+2)]",
        [TEXTBOOK, "method.step_rule=line_search"],
    ),
]
SOFT = [
    ("fw_soft_paper", "the authors' FW-soft: entropy inner, init 0.3 then 1e-2, unconstrained, per task", []),
    (
        "soft: labelled-CE inner",
        "inner search on the labelled objective (paper text)",
        ["method.inner_loss=ce_train", "method.inner_steps={fw_inner}"],
    ),
    ("soft: capped simplex", "lambda >= 0, sum <= 1 (paper text: simplex)", ["method.soft_constraint=capped_simplex"]),
    (
        "soft: init 1/(k+1)",
        "inner search starts at 1/(k+1) every iteration",
        ["method.inner_init=null", "method.inner_init_later=null"],
    ),
    ("soft: inner-product LMO", "LMO scores <g, v> (paper text)", ["method.lmo_score=inner"]),
    ("soft: top-k selection", "the k best by the total gradient (paper text)", ["method.soft_select=topk"]),
    ("soft: layer-wise LMO", "selection per tensor", ["method.granularity=layer"]),
    ("fw_soft_textbook", "capped simplex, 1/(k+1), labelled CE, inner LMO, top-k", None),
]


def fw_rows(settings: dict, targets: list[str]) -> list[tuple[str, str, list[str]]]:
    """(row, what it changes, CLI args) of every FW row."""
    common = [
        f"method.n_per_task={settings['n_per_task']}",
        "method.progress=false",
        f"method.targets=[{','.join(targets)}]",
    ]
    rows = []
    for variant, table in (("hard", HARD), ("soft", SOFT)):
        for name, what, extra in table:
            if extra is None or extra[:1] == [TEXTBOOK]:  # the textbook preset with the run's budget
                iters = settings["fw_iters"] if variant == "hard" else 5
                args = [f"method=fw_{variant}_textbook", f"method.max_iters={iters}", *(extra or [])[1:]]
                if variant == "soft":
                    args.append(f"method.inner_steps={settings['fw_inner']}")
            else:
                args = [f"method=fw_{variant}_paper"]
                if variant == "hard":
                    args.append(f"method.init_path={WEIGHTS}")
                elif not any(e.startswith("method.inner_steps=") for e in extra):
                    args.append(f"method.inner_steps={settings['ent_inner']}")
                args += [e.format(**settings) for e in extra]
            rows.append((name, what, [*args, *common]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default="both", choices=["both", *POOLS], help="both: one after the other")
    p.add_argument("--out", type=Path, default=None, help="default outputs/ablation_<pool>")
    p.add_argument("--root", default=None, help="mini benchmark root (default: the cache dir)")
    p.add_argument("--quick", action="store_true", help="small build and few steps (a smoke test)")
    p.add_argument("--only", nargs="+", default=None, help="run only these rows (and the references)")
    add_run_options(p, FULL, QUICK)
    args = p.parse_args(argv)
    settings = resolve_settings(args, FULL, QUICK)
    if args.pool == "both" and args.out:
        p.error("--out needs one --pool")
    for pool in POOLS if args.pool == "both" else [args.pool]:
        ablate(args, pool, settings, args.out or Path(f"outputs/ablation_{pool}"))
    return 0


def ablate(args, pool: str, settings: dict, out: Path) -> None:
    """Every row of the ablation on one pool; writes ``ablation.md`` and ``ablation.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from fusion_bench_fw.offline import minibench

    modelpool, taskpool, tasks = MINI_POOLS[pool]
    manifest = mini_build(modelpool, root=args.root, quick=args.quick, threads=args.threads)
    env = {minibench.ENV_VAR: manifest["root"]}
    base = [f"modelpool={modelpool}", f"taskpool={taskpool}", "fabric.accelerator=cpu"]
    tasks = list(tasks)

    def run(label: str, cli: list[str]):
        r = run_fusion_bench(
            label,
            [*base, *cli],
            out / "runs" / label.replace(" ", "_").replace(":", ""),
            env=env,
            threads=args.threads,
            reuse=args.reuse,
            manifest=manifest,
        )
        return r.row(row=label, overrides=cli)

    rows = []
    ada_settings = dict(settings, fw_targets=None)
    for name in ("task_arithmetic", "adamerging_layer_wise"):
        rows.append(dict(run(name, method_args(name, ada_settings, out / "runs" / name, [])), changes="reference"))
    weights = ada_weights(out / "runs" / "fw_hard_paper")  # where the leaderboard's AdaMerging row saves them
    if not weights.is_file():
        raise SystemExit(f"AdaMerging saved no {weights}: FW-hard's paper protocol cannot start")
    for name, what, cli in fw_rows(settings, tasks):
        if args.only and name not in args.only:
            continue
        cli = [c.replace(WEIGHTS, quote(weights)) for c in cli]
        rows.append(dict(run(name, cli), changes=what))

    result = dict(
        pool=pool,
        modelpool=modelpool,
        taskpool=taskpool,
        tasks=tasks,
        settings=settings,
        rows=rows,
        provenance=provenance(manifest),
        **total_seconds(rows),
        wall_seconds=round(time.perf_counter() - t0, 1),
    )
    md = to_markdown(result)
    (out / "ablation.md").write_text(
        f"# Ablation on {pool} (modelpool={modelpool} taskpool={taskpool})\n\n"
        f"Average accuracy (%) over {len(tasks)} tasks; each FW row changes one choice of the authors' "
        f"protocol (the first row of its block). Settings: {json.dumps(settings)}\n"
        f"{describe_provenance(result['provenance'])}\n\n" + md
    )
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    print()
    print(md)
    print(f"written: {out / 'ablation.md'}, ablation.json (total {result['total_seconds']}s)")


def to_markdown(result: dict) -> str:
    base = {}
    lines = ["| row | changes | avg | vs. its base | time (s) | status |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] in ("fw_hard_paper", "fw_soft_paper"):
            base["hard" if "hard" in r["row"] else "soft"] = r["average"]
        variant = "hard" if "hard" in r["row"] else "soft" if "soft" in r["row"] else None
        delta = "-"
        is_base = r["row"] in ("fw_hard_paper", "fw_soft_paper")
        if variant and not is_base and r["average"] is not None and base.get(variant) is not None:
            delta = f"{100 * (r['average'] - base[variant]):+.1f}"
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        lines.append(f"| {r['row']} | {r['changes']} | {fmt(r['average'])} | {delta} | {r['seconds']:.0f} | {status} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
