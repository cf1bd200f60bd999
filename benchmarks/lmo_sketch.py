"""The sketched LMO (``method.lmo_sketch``) against the exact one, side by side in one run.

On a pool of N ViT-B/32-shaped checkpoints on disk (``_perf.build_pool``: random weights, each
fine-tuned model the pretrained one plus a small random task vector), at the Task Arithmetic (0.3)
start, for each sketch size m and re-check depth r:

1. speed: one LMO pass with one gradient as FW-hard makes it (layer-wise, inner score), the exact
   pass (every candidate tensor read) against the sketched one (S g and S theta, the estimate, the
   re-check of the r best per tensor), and the candidate bytes each reads; FW-soft's pass (task-wise,
   cosine, the total and one gradient per target) likewise; the one-off cost of the sketches (one
   read of the pool) and of loading them from their cache;
2. exactness: over several gradients, how often the sketched LMO's vertex differs from the exact
   LMO's, per tensor for FW-hard and per target for FW-soft (each target picks one).

The gradients are synthetic: per tensor and target, a unit vector at cosine ``alignment`` with a
heavy-tailed random combination of the candidates' directions from the iterate (what a task's loss
gradient leans toward), the rest Gaussian noise. Alignment 0 (a gradient unrelated to the pool) is
a sketch's worst case. Accuracy on a real pool: a ``fusion_bench`` run with ``method.lmo_sketch``
(docs/options.md). The times are from the page cache (the pool read once before); the bytes read
bound what a cold disk would add.

``python benchmarks/lmo_sketch.py --out benchmarks/results/lmo_sketch_cpu`` (N = 20: 7 GB of disk,
built once under ``--root``); ``--quick``: a tiny pool, a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perf import (  # noqa: E402
    TINY_VISION,  # --quick
    VIT_B32,
    build_pool,
    candidate_names,
    machine,
    page_cache_bandwidth,
    write_report,
)

TARGETS = 4  # FW-soft's per-target selection: one gradient per target
START = 0.3  # the Task Arithmetic start, FW-hard's


def open_pool(root: Path, n: int):
    """The N candidates as a streaming store, their float tensors, and the Task Arithmetic start."""
    import torch

    from fusion_bench_fw.core.solver import materialise
    from fusion_bench_fw.core.stores import CompositeVertexStore, SafetensorsVertexStore, read_safetensors_header

    names = candidate_names(n)
    paths = {name: str(root / "models" / name / "model.safetensors") for name in names}
    header = read_safetensors_header(paths[names[0]])[1]
    keys = [k for k, info in header.items() if info["dtype"] in ("F32", "F16", "BF16")]
    candidates = SafetensorsVertexStore(paths, keys)
    pretrained = SafetensorsVertexStore(
        {"_pretrained_": str(root / "models" / "_pretrained_" / "model.safetensors")}, keys
    )
    both = CompositeVertexStore([pretrained, candidates])
    coefficients = torch.full((n + 1, len(keys)), START, dtype=torch.float64)
    coefficients[0] = 1.0 - START * n
    theta = materialise(both, coefficients, keys, "cpu", torch.float32)
    return candidates, names, keys, theta, paths


def draw_gradients(store, names, keys, theta, alignment: float, gen):
    """``[total, target_1, ...]``: target t's gradient per tensor is ``alignment`` u/||u|| plus
    sqrt(1 - alignment^2) xi/||xi||, u = -sum_i c_ti (v_i - theta), c = |z|^3 (a few candidates weigh
    most), xi Gaussian. One read of the pool."""
    import torch

    weights = torch.randn(TARGETS, len(names), generator=gen, dtype=torch.float64).abs() ** 3
    grads = [{} for _ in range(TARGETS)]
    for key in keys:
        here = theta[key].reshape(-1).double()
        pull = torch.zeros(TARGETS, here.numel(), dtype=torch.float64)
        for i, name in enumerate(names):
            pull.addr_(weights[:, i], store.tensor(name, key).reshape(-1).double() - here)
        for t in range(TARGETS):
            noise = torch.randn(here.numel(), generator=gen, dtype=torch.float64)
            g = -alignment * pull[t] / pull[t].norm() + math.sqrt(1 - alignment**2) * noise / noise.norm()
            grads[t][key] = g.float().reshape(theta[key].shape)
    return [{k: sum(g[k] for g in grads) for k in keys}, *grads]


def bytes_read(table, blocks, tensor_bytes) -> int:
    """Candidate bytes the pass read in full: the finite (re-checked) pairs' tensors."""
    import torch

    checked = torch.isfinite(table.inner[0]).sum(dim=0).tolist()
    return sum(tensor_bytes[k] * checked[blocks.block_of[k]] for k in blocks.keys)


def timed(fn, *args):
    """``(fn(*args), seconds)``."""
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def run(a) -> dict:
    import torch

    from fusion_bench_fw.core import HardConfig, SoftConfig
    from fusion_bench_fw.core.lmo import Blocks, score_vertices, select_hard, select_per_task
    from fusion_bench_fw.core.sketch import SketchedLMO
    from fusion_bench_fw.core.vertices import VertexPlan, Vertices

    torch.set_num_threads(a.threads)
    vision = TINY_VISION if a.quick else VIT_B32
    root = Path(a.root + ("_quick" if a.quick else "")).resolve()
    pool = build_pool(root, a.n, vision, with_data=False)
    print(f"[lmo_sketch] pool at {root}: {pool['n_params'] / 1e6:.2f}M parameters per model", flush=True)
    store, names, keys, theta, paths = open_pool(root, a.n)
    tensor_bytes = {k: math.prod(store.shape(k)) * 4 for k in keys}
    model_bytes = sum(tensor_bytes.values())
    plan = VertexPlan(candidates=names, start={}, vertices=names, anchor=None, k=TARGETS, n_tasks=TARGETS)
    vertices = Vertices(plan, store, theta, torch.zeros(len(names), len(keys), dtype=torch.float64))
    layer, task = Blocks.build(keys, "layer"), Blocks.build(keys, "task")
    cache = Path(a.out) / "sketch_cache"
    shutil.rmtree(cache, ignore_errors=True)

    # the sketches: made from one read (cached), then loaded from the cache as a later run would
    sketches, making = {}, []
    for m in a.sketch:
        made = SketchedLMO(vertices, layer, HardConfig(lmo_sketch=m), None, str(cache))
        _, make_s = timed(made.make_sketches, theta)
        loaded = SketchedLMO(vertices, layer, HardConfig(lmo_sketch=m), None, str(cache))
        counts, load_s = timed(loaded.make_sketches, theta)
        assert counts["sketches_cached"] == len(names), counts
        sketches[m] = made
        floats = sum(s.shape[1] for s in made.sketches.values())
        making.append(
            dict(sketch=m, make_s=make_s, load_s=load_s, floats_per_model=floats, model_floats=model_bytes // 4)
        )
        print(f"[lmo_sketch] m={m}: sketches made in {make_s:.2f} s, loaded in {load_s:.3f} s", flush=True)

    def sketched(m: int, r: int, soft: bool) -> SketchedLMO:
        config = SoftConfig(lmo_sketch=m, lmo_recheck=r) if soft else HardConfig(lmo_sketch=m, lmo_recheck=r)
        lmo = SketchedLMO(vertices, task if soft else layer, config, TARGETS if soft else None)
        lmo.sketches, lmo.norms = sketches[m].sketches, sketches[m].norms  # made once per m
        return lmo

    gen = torch.Generator().manual_seed(a.seed)
    exact_times = {"hard": [], "soft": []}
    cells = {
        (m, r): dict(sketch=m, recheck=r, hard_s=[], soft_s=[], estimate_s=[], hard_bytes=[], soft_bytes=[])
        for m in a.sketch
        for r in a.recheck
    }
    for cell in cells.values():
        cell.update({f"hard_differs@{x}": 0 for x in a.alignment} | {f"soft_differs@{x}": 0 for x in a.alignment})
    for alignment in a.alignment:
        for draw in range(a.gradients):
            grads = draw_gradients(store, names, keys, theta, alignment, gen)
            exact, seconds = timed(score_vertices, grads[:1], theta, names, store.tensor, layer)
            exact_times["hard"].append(seconds)
            exact_hard = select_hard(exact.inner[0])
            exact, seconds = timed(score_vertices, grads, theta, names, store.tensor, task, True)
            exact_times["soft"].append(seconds)
            exact_soft = select_per_task(exact.cosine[1:])
            for (m, r), cell in cells.items():
                lmo = sketched(m, r, soft=False)
                table, seconds = timed(lmo.score, grads[:1], theta)
                cell["hard_s"].append(seconds)
                cell["hard_bytes"].append(bytes_read(table, layer, tensor_bytes))
                cell[f"hard_differs@{alignment}"] += int((select_hard(table.inner[0]) != exact_hard).sum())
                cell["estimate_s"].append(timed(lmo.estimate, grads[:1], theta)[1])
                lmo = sketched(m, r, soft=True)
                table, seconds = timed(lmo.score, grads, theta)
                cell["soft_s"].append(seconds)
                cell["soft_bytes"].append(bytes_read(table, task, tensor_bytes))
                cell[f"soft_differs@{alignment}"] += int((select_per_task(table.cosine[1:]) != exact_soft).sum())
            print(f"[lmo_sketch] alignment {alignment}, gradient {draw + 1}/{a.gradients} done", flush=True)
    rows = []
    for cell in cells.values():
        row = {k: v for k, v in cell.items() if not isinstance(v, list)}
        for what in ("hard", "soft"):
            row[f"{what}_seconds"] = statistics.median(cell[f"{what}_s"])
            row[f"{what}_speedup"] = statistics.median(exact_times[what]) / row[f"{what}_seconds"]
            row[f"{what}_read_fraction"] = statistics.mean(cell[f"{what}_bytes"]) / (model_bytes * len(names))
        row["estimate_seconds"] = statistics.median(cell["estimate_s"])
        for x in a.alignment:
            row[f"hard_differs@{x}"] /= a.gradients * layer.count  # per tensor
            row[f"soft_differs@{x}"] /= a.gradients * TARGETS  # per target
        rows.append(row)
    return dict(
        machine=machine(),
        threads=a.threads,
        n_candidates=a.n,
        n_params=pool["n_params"],
        n_tensors=len(keys),
        model_mib=model_bytes / 2**20,
        targets=TARGETS,
        gradients_per_alignment=a.gradients,
        alignments=a.alignment,
        page_cache_bytes_per_s=page_cache_bandwidth(paths[names[0]]),
        exact=dict(
            hard_seconds=statistics.median(exact_times["hard"]),
            soft_seconds=statistics.median(exact_times["soft"]),
            hard_all_s=exact_times["hard"],
            soft_all_s=exact_times["soft"],
        ),
        sketches=making,
        rows=rows,
    )


def render(r: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    n, exact = r["n_candidates"], r["exact"]
    lines = [
        f"# Sketched LMO against the exact one: N = {n} candidates of {r['n_params'] / 1e6:.3g}M parameters "
        f"({r['model_mib']:.3g} MiB, {r['n_tensors']} tensors each)",
        "",
        f"{r['machine']}; {r['threads']} torch thread(s); page-cache read {r['page_cache_bytes_per_s'] / 1e9:.2f} GB/s. "
        f"Exact pass (every candidate read, from the page cache): FW-hard {exact['hard_seconds']:.2f} s, "
        f"FW-soft {exact['soft_seconds']:.2f} s (medians).",
        "",
        "## One LMO pass (median s; speed-up over the exact pass; candidate bytes read, of the pool's)",
        "",
        "| m | r | FW-hard s | speed-up | read | FW-soft s | speed-up | read | estimate alone (FW-hard) s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['sketch']} | {row['recheck']} | {row['hard_seconds']:.3f} | {row['hard_speedup']:.1f}x | "
            f"{pct(row['hard_read_fraction'])} | {row['soft_seconds']:.3f} | {row['soft_speedup']:.1f}x | "
            f"{pct(row['soft_read_fraction'])} | {row['estimate_seconds']:.3f} |"
        )
    lines += [
        "",
        "## Making the sketches (once per pool and m)",
        "",
        "| m | from one read of the pool, s | from the cache, s | sketch floats per model (of its parameters) |",
        "|---|---|---|---|",
    ]
    for s in r["sketches"]:
        lines.append(
            f"| {s['sketch']} | {s['make_s']:.2f} | {s['load_s']:.3f} | {s['floats_per_model']} "
            f"({pct(s['floats_per_model'] / s['model_floats'])}) |"
        )
    heads = " | ".join(f"alignment {x}" for x in r["alignments"])
    lines += [
        "",
        f"## How often the sketched LMO's choice differs from the exact LMO's ({r['gradients_per_alignment']} "
        "gradients per alignment)",
        "",
        f"FW-hard: per tensor ({r['n_tensors']} per gradient); FW-soft: per target ({r['targets']} per gradient).",
        "",
        f"| m | r | FW-hard: {heads} | FW-soft: {heads} |",
        "|---|---|" + "---|" * (2 * len(r["alignments"])),
    ]
    for row in r["rows"]:
        hard = " | ".join(pct(row[f"hard_differs@{x}"]) for x in r["alignments"])
        soft = " | ".join(pct(row[f"soft_differs@{x}"]) for x in r["alignments"])
        lines.append(f"| {row['sketch']} | {row['recheck']} | {hard} | {soft} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny pool, 5 candidates, few settings: a smoke run")
    p.add_argument("--n", type=int, default=None, help="candidates (default 20; --quick 5)")
    p.add_argument("--sketch", type=int, nargs="+", default=None, help="sketch sizes m (default 256 1024 4096)")
    p.add_argument("--recheck", type=int, nargs="+", default=None, help="re-check depths r (default 1 2 4)")
    p.add_argument("--alignment", type=float, nargs="+", default=None, help="gradient alignments (default 0 0.05 0.2)")
    p.add_argument("--gradients", type=int, default=None, help="gradients per alignment (default 4; --quick 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--root",
        default=os.environ.get(
            "FUSION_BENCH_FW_SKETCH_ROOT", os.path.expanduser("~/.cache/fusion_bench_fw/lmo_sketch_pool")
        ),
        help="where the pool is built once (its own folder: build_pool replaces a pool of other settings)",
    )
    p.add_argument("--out", default="outputs/lmo_sketch")
    a = p.parse_args(argv)
    quick = a.quick
    a.n = a.n or (5 if quick else 20)
    a.sketch = a.sketch or ([16, 64] if quick else [256, 1024, 4096])
    a.recheck = a.recheck or ([1, 2] if quick else [1, 2, 4])
    a.alignment = a.alignment if a.alignment is not None else ([0.0, 0.3] if quick else [0.0, 0.05, 0.2])
    a.gradients = a.gradients or (2 if quick else 4)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    a.out = str(out)
    started = time.perf_counter()
    report = run(a)
    report["seconds"] = time.perf_counter() - started
    shutil.rmtree(out / "sketch_cache", ignore_errors=True)
    write_report(out, "lmo_sketch", report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
