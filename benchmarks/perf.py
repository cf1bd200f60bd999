"""Constant memory and speed of the streaming Frank-Wolfe core, measured in one run.

Builds (once, then reuses) a pool of ViT-B/32-shaped CLIP vision towers with random weights
on disk (88M parameters, 350 MB of safetensors each), then prints side by side:

1. peak host memory (ru_maxrss of a fresh child process per configuration; peak device
   memory on GPU) of FW-hard and FW-soft through the core solver vs the number N of
   candidates, and the ratio peak(N=max)/peak(N=min) (goal <= 1.15);
2. the LMO pass throughput (candidate bytes scored per second) against the page-cache
   read bandwidth measured in the same child just before (goal >= 50%);
3. the wall time per FW iteration split into gradient / LMO / update (medians);
4. end to end against FusionBench's layer-wise AdaMerging on the same on-disk pool,
   both through the real ``fusion_bench`` CLI (goal: FW-hard <= 0.2x AdaMerging).

CPU: ``python benchmarks/perf.py`` (7-12 minutes on 2 shared cores); ``--quick`` for a smoke
run. GPU: ``python benchmarks/perf.py --device cuda --no-cli`` (the core only: FusionBench
is not needed). Results go to ``--out`` (perf.json, perf.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perf import (  # noqa: E402
    QUICK_VISION,
    TASKS,
    VIT_B32,
    add_child_arguments,
    build_pool,
    candidate_names,
    machine,
    measure,
    med,
    model_paths,
    page_cache_bandwidth,
    run_cli,
    serve_child,
    write_report,
)

# ------------------------------------------------------------------- one configuration (child)


def run_child(spec: dict) -> dict:
    """One FW run through the core solver on ``spec['n']`` streamed candidates."""
    import resource

    import torch
    import torch.nn.functional as F
    from transformers import CLIPVisionModel

    from fusion_bench_fw.core import FrankWolfeConfig, frank_wolfe, plan_vertices
    from fusion_bench_fw.core.objective import Batch, BatchedObjective, functional_forward
    from fusion_bench_fw.core.stores import (
        CompositeVertexStore,
        InMemoryVertexStore,
        SafetensorsVertexStore,
        read_safetensors_header,
    )

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    root = Path(spec["root"])
    names = candidate_names(spec["n"])
    paths = model_paths(root, names)
    bandwidth = page_cache_bandwidth(paths[names[0]])

    template = CLIPVisionModel.from_pretrained(str(root / "models" / "_pretrained_")).to(device).eval()
    params = {n: p for n, p in template.named_parameters() if p.is_floating_point()}
    keys = list(params)
    pretrained = {k: p.detach().float().cpu().clone() for k, p in params.items()}
    # transformers 5 names CLIPVisionModel's parameters without the "vision_model." prefix
    # its files keep: map each parameter to the file's name ending in it
    in_file = read_safetensors_header(paths[names[0]])[1]
    rename = {k: k if k in in_file else next(f for f in in_file if f.endswith("." + k)) for k in keys}
    store = CompositeVertexStore(
        [
            InMemoryVertexStore({"_pretrained_": pretrained}, keys),
            SafetensorsVertexStore(paths, keys, key_in_file={n: rename for n in names}),
        ]
    )
    gen = torch.Generator().manual_seed(0)
    size = template.config.image_size
    hidden = template.config.hidden_size
    projection = torch.nn.Linear(hidden, 512, bias=False).to(device)
    heads, batches = {}, {}
    for task in TASKS:
        heads[task] = F.normalize(torch.randn(4, 512, generator=gen), dim=-1).to(device)
        images = torch.randn(spec["n_per_task"], 3, size, size, generator=gen)
        labels = torch.randint(0, 4, (spec["n_per_task"],), generator=gen)
        batches[task] = [
            Batch(
                (images[i : i + spec["batch_size"]], labels[i : i + spec["batch_size"]]),
                len(labels[i : i + spec["batch_size"]]),
            )
            for i in range(0, spec["n_per_task"], spec["batch_size"])
        ]

    def batch_loss(module, p, inputs, task):
        images, labels = inputs
        pooled = functional_forward(module, p, pixel_values=images)[1]
        embeds = F.normalize(projection(pooled), dim=-1)
        return F.cross_entropy(100.0 * embeds.float() @ heads[task].t(), labels)

    autocast = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["autocast"]]
    objective = BatchedObjective(
        template, batches, batch_loss, to_device=lambda x: tuple(t.to(device) for t in x), autocast_dtype=autocast
    )
    variant = spec["variant"]
    config = FrankWolfeConfig.build(
        variant,
        granularity="layer" if variant == "hard" else "task",
        max_iters=spec["iters"],
        include_init_vertex=variant == "hard",
        **({"inner_steps": spec["inner_steps"]} if variant == "soft" else {}),
    )
    lam = 0.3
    init = {"_pretrained_": 1 - lam * len(names), **{n: lam for n in names}}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    plan = plan_vertices(names, init, config, len(objective.task_names))
    result = frank_wolfe(objective, store, plan, config, device=device, progress=False, seed=0)
    total = time.perf_counter() - t0
    its = result.history.iterations
    vertex_bytes = sum(p.numel() * 4 for p in params.values()) * (len(result.history.vertices))
    return dict(
        variant=variant,
        n=spec["n"],
        device=str(device),
        seconds=total,
        n_params=sum(p.numel() for p in params.values()),
        rss_before_fw_mb=rss_before,
        peak_device_mb=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        page_cache_bytes_per_s=bandwidth,
        lmo_bytes=vertex_bytes,
        grad_s=[r.time_grad_s for r in its],
        lmo_s=[r.time_lmo_s for r in its],
        update_s=[r.time_update_s for r in its],
        losses=[r.loss for r in its],
    )


# ------------------------------------------------------------------- CLI runs (AdaMerging vs FW)


def end_to_end(root: Path, workdir: Path, s: dict, threads: int) -> dict:
    """AdaMerging (layer-wise, FusionBench's class) and FW-hard (this plugin) on the 4-model pool.

    Both methods' cost is linear in their steps: AdaMerging runs twice (``ada_steps`` and
    3x that) for its per-step cost and fixed overhead, FW-hard once, its per-iteration
    grad/LMO/update times read from its history. The ratio at the methods' default settings
    (AdaMerging 1000 steps of 16 images per task; FW-hard 10 iterations on 100 labelled
    images per task) is projected from these measured costs; the ratio of the measured runs
    is reported too.
    """
    ada = lambda steps: [
        "method=adamerging/clip",
        "method.name=clip_layer_wise_adamerging",  # noqa: E731
        f"method.max_steps={steps}",
        f"method.batch_size={s['ada_batch']}",
        "method.num_workers=0",
        f"method.cache_dir={workdir / 'ada_cache'}",
        "method.save_merging_weights=false",
    ]
    a1 = run_cli(ada(s["ada_steps"]), root, workdir / "ada_short", threads)
    a2 = run_cli(ada(3 * s["ada_steps"]), root, workdir / "ada_long", threads)
    per_step = (a2["seconds"] - a1["seconds"]) / (2 * s["ada_steps"])
    ada_fixed = max(0.0, a1["seconds"] - s["ada_steps"] * per_step)
    fw = run_cli(
        [
            "method=fw_hard",
            f"method.max_iters={s['fw_iters']}",
            f"method.n_per_task={s['fw_n']}",
            f"method.batch_size={s['fw_n']}",
            "method.progress=false",
            "method.allow_fewer_samples=true",
        ],
        root,
        workdir / "fw_hard",
        threads,
    )
    history = json.loads(next(Path(fw["run_dir"]).rglob("fw_history.json")).read_text())
    its = history["iterations"]
    grad = statistics.median(r["time_grad_s"] for r in its)
    lmo = statistics.median(r["time_lmo_s"] for r in its)
    update = statistics.median(r["time_update_s"] for r in its)
    fw_fixed = max(0.0, fw["seconds"] - sum(r["time_grad_s"] + r["time_lmo_s"] + r["time_update_s"] for r in its))
    # defaults: AdaMerging 1000 steps x batch 16 (per task); FW-hard 10 iterations x 100 samples per task
    ada_default = ada_fixed + 1000 * per_step * 16 / s["ada_batch"]
    fw_default = fw_fixed + 10 * (grad * 100 / s["fw_n"] + lmo + update)
    return dict(
        settings=s,
        adamerging_short=a1,
        adamerging_long=a2,
        fw_hard=fw,
        ada_seconds_per_step=per_step,
        ada_fixed_s=ada_fixed,
        fw_grad_s=grad,
        fw_lmo_s=lmo,
        fw_update_s=update,
        fw_fixed_s=fw_fixed,
        measured_ratio=fw["seconds"] / a1["seconds"],
        ada_default_s=ada_default,
        fw_default_s=fw_default,
        projected_ratio=fw_default / ada_default,
    )


# ------------------------------------------------------------------------------------ report


def render(report: dict) -> str:
    rows = report["runs"]
    sizes = sorted({r["n"] for r in rows})
    gpu = any(r["peak_device_mb"] is not None for r in rows)
    lines = [
        f"Machine: {report['machine']}. Model: CLIP ViT-B/32-shaped vision tower, "
        f"{report['n_params'] / 1e6:.1f}M parameters ({report['n_params'] * 4 / 2**20:.0f} MiB per candidate, "
        f"float32 safetensors); device {report['device']}; {report['threads']} torch thread(s).",
        "",
    ]
    head = "| variant | " + " | ".join(f"N={n}" for n in sizes) + f" | peak(N={sizes[-1]})/peak(N={sizes[0]}) |"
    lines += ["**Peak host memory (ru_maxrss of a fresh process, MiB)**", "", head, "|" + "---|" * (len(sizes) + 2)]
    by = {(r["variant"], r["n"]): r for r in rows}
    for variant in ("hard", "soft"):
        vals = [by[(variant, n)]["peak_rss_mb"] for n in sizes if (variant, n) in by]
        if vals:
            lines.append(f"| FW-{variant} | " + " | ".join(f"{v:.0f}" for v in vals) + f" | {vals[-1] / vals[0]:.3f} |")
    if gpu:
        lines += [
            "",
            "**Peak device memory (torch.cuda.max_memory_allocated, MiB)**",
            "",
            head,
            "|" + "---|" * (len(sizes) + 2),
        ]
        for variant in ("hard", "soft"):
            vals = [by[(variant, n)]["peak_device_mb"] for n in sizes if (variant, n) in by]
            if vals:
                lines.append(
                    f"| FW-{variant} | " + " | ".join(f"{v:.0f}" for v in vals) + f" | {vals[-1] / vals[0]:.3f} |"
                )
    lines += [
        "",
        "**Wall time per FW iteration (median over iterations, s) and LMO throughput**",
        "",
        "| variant | N | gradient | LMO | update | LMO GB/s | page-cache read GB/s | LMO / read |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lmo = med(r["lmo_s"])
        gbs = r["lmo_bytes"] / lmo / 1e9
        bw = r["page_cache_bytes_per_s"] / 1e9
        lines.append(
            f"| FW-{r['variant']} | {r['n']} | {med(r['grad_s']):.2f} | {lmo:.2f} | {med(r['update_s']):.2f} "
            f"| {gbs:.2f} | {bw:.2f} | {gbs / bw:.0%} |"
        )
    s = report["summary"]
    lines += ["", "LMO bytes = (candidates + the in-memory init vertex of FW-hard) x model bytes per pass.", ""]
    e2e = report.get("end_to_end")
    if e2e:
        st = e2e["settings"]
        lines += [
            "**End to end through the fusion_bench CLI, same 4-model pool (taskpool=dummy)**",
            "",
            "| run | wall s | peak RSS MiB |",
            "|---|---|---|",
            f"| AdaMerging layer-wise, {st['ada_steps']} steps x batch {st['ada_batch']} | "
            f"{e2e['adamerging_short']['seconds']:.1f} | {e2e['adamerging_short']['peak_rss_mb']:.0f} |",
            f"| AdaMerging layer-wise, {3 * st['ada_steps']} steps x batch {st['ada_batch']} | "
            f"{e2e['adamerging_long']['seconds']:.1f} | {e2e['adamerging_long']['peak_rss_mb']:.0f} |",
            f"| FW-hard, {st['fw_iters']} iterations x {st['fw_n']} samples/task | "
            f"{e2e['fw_hard']['seconds']:.1f} | {e2e['fw_hard']['peak_rss_mb']:.0f} |",
            "",
            f"AdaMerging: {e2e['ada_seconds_per_step']:.2f} s/step (batch {st['ada_batch']}) + "
            f"{e2e['ada_fixed_s']:.1f} s fixed. FW-hard: gradient {e2e['fw_grad_s']:.2f} s "
            f"({st['fw_n']} samples/task), LMO {e2e['fw_lmo_s']:.2f} s, update {e2e['fw_update_s']:.2f} s per "
            f"iteration + {e2e['fw_fixed_s']:.1f} s fixed.",
            f"Projected at the defaults (AdaMerging 1000 steps x 16 images/task; FW-hard 10 iterations x "
            f"100 images/task): AdaMerging {e2e['ada_default_s']:.0f} s, FW-hard {e2e['fw_default_s']:.0f} s.",
            "",
        ]
    lines += [
        "**Ratios (goals)**",
        "",
        f"- memory peak(N={sizes[-1]})/peak(N={sizes[0]}): FW-hard {s['mem_ratio_hard']:.3f}, "
        f"FW-soft {s['mem_ratio_soft']:.3f} (goal <= 1.15)",
    ]
    if gpu:
        lines.append(
            f"- device memory peak(N={sizes[-1]})/peak(N={sizes[0]}): FW-hard {s['dev_ratio_hard']:.3f}, "
            f"FW-soft {s['dev_ratio_soft']:.3f}"
        )
    lines.append(
        f"- LMO throughput / page-cache read bandwidth: median {s['lmo_fraction']:.0%} "
        f"(min {s['lmo_fraction_min']:.0%}; goal >= 50%)"
    )
    if e2e:
        lines.append(
            f"- FW-hard / AdaMerging wall time: {e2e['projected_ratio']:.3f} projected at the defaults, "
            f"{e2e['measured_ratio']:.3f} for the short runs above (goal <= 0.2)"
        )
    lines += ["", f"Total benchmark time {report['seconds']:.0f} s. Regenerate: `{report['command']}`"]
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict:
    sizes = sorted({r["n"] for r in rows})
    by = {(r["variant"], r["n"]): r for r in rows}
    out = {}
    for v in ("hard", "soft"):
        if (v, sizes[0]) in by and (v, sizes[-1]) in by:
            out[f"mem_ratio_{v}"] = by[(v, sizes[-1])]["peak_rss_mb"] / by[(v, sizes[0])]["peak_rss_mb"]
            if by[(v, sizes[0])]["peak_device_mb"]:
                out[f"dev_ratio_{v}"] = by[(v, sizes[-1])]["peak_device_mb"] / by[(v, sizes[0])]["peak_device_mb"]
    fractions = [r["lmo_bytes"] / med(r["lmo_s"]) / r["page_cache_bytes_per_s"] for r in rows]
    out["lmo_fraction"], out["lmo_fraction_min"] = med(fractions), min(fractions)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2-layer towers, N in 4, 8: a smoke run")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of candidates (default 4 8 12 16 20)")
    p.add_argument("--variants", nargs="+", default=["hard", "soft"], choices=["hard", "soft"])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1: on a shared 2-core machine more threads spin-wait)",
    )
    p.add_argument("--iters", type=int, default=2, help="FW iterations per configuration")
    p.add_argument("--inner-steps", type=int, default=1, help="FW-soft inner steps (each costs one gradient)")
    p.add_argument("--n-per-task", type=int, default=2, help="labelled images per task (4 tasks)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per configuration; peaks and times are their medians"
    )
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--no-cli", action="store_true", help="skip the fusion_bench CLI comparison (AdaMerging)")
    p.add_argument("--ada-steps", type=int, default=1)
    p.add_argument("--ada-batch", type=int, default=2)
    p.add_argument(
        "--root",
        default=os.environ.get("FUSION_BENCH_FW_PERF_ROOT", os.path.expanduser("~/.cache/fusion_bench_fw/perf_pool")),
    )
    p.add_argument("--out", default="outputs/perf")
    add_child_arguments(p)
    a = p.parse_args(argv)
    if serve_child(a, run_child):
        return 0

    t0 = time.perf_counter()
    sizes = a.sizes or ([4, 8] if a.quick else [4, 8, 12, 16, 20])
    vision = QUICK_VISION if a.quick else VIT_B32
    root = Path(a.root + ("_quick" if a.quick else "")).resolve()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"[perf] {info}", flush=True)
    pool = build_pool(root, max(max(sizes), len(TASKS)), vision, with_data=not a.no_cli)
    print(
        f"[perf] pool at {root}: {pool['n_params'] / 1e6:.1f}M parameters per model (built in {pool['seconds']} s)",
        flush=True,
    )
    rows = []
    for n in sizes:  # interleave variants so load drift hits both alike
        for variant in a.variants:
            spec = dict(
                variant=variant,
                n=n,
                root=str(root),
                device=a.device,
                threads=a.threads,
                iters=a.iters,
                inner_steps=a.inner_steps,
                n_per_task=a.n_per_task,
                batch_size=a.batch_size,
                autocast=a.autocast,
            )
            runs = [measure(dict(spec, repeat=i), out / "children", script=__file__) for i in range(a.repeats)]
            r = (
                runs[len(runs) // 2]
                if a.repeats == 1
                else dict(
                    runs[0],
                    peak_rss_mb=med([x["peak_rss_mb"] for x in runs]),
                    peak_device_mb=med([x["peak_device_mb"] for x in runs]) if runs[0]["peak_device_mb"] else None,
                    page_cache_bytes_per_s=med([x["page_cache_bytes_per_s"] for x in runs]),
                    grad_s=[t for x in runs for t in x["grad_s"]],
                    lmo_s=[t for x in runs for t in x["lmo_s"]],
                    update_s=[t for x in runs for t in x["update_s"]],
                    all_peaks_mb=[x["peak_rss_mb"] for x in runs],
                )
            )
            rows.append(r)
            print(
                f"[perf] FW-{variant} N={n}: peak RSS {r['peak_rss_mb']:.0f} MiB"
                + (f", device {r['peak_device_mb']:.0f} MiB" if r["peak_device_mb"] else "")
                + f", LMO {r['lmo_bytes'] / med(r['lmo_s']) / 1e9:.2f} GB/s vs read {r['page_cache_bytes_per_s'] / 1e9:.2f}"
                f" GB/s, {r['seconds']:.1f} s",
                flush=True,
            )
    report = dict(
        machine=info,
        device=a.device,
        threads=a.threads,
        n_params=rows[0]["n_params"],
        runs=rows,
        summary=summarise(rows),
        command="python benchmarks/perf.py " + " ".join(argv or sys.argv[1:]),
    )
    if not a.no_cli:
        sys.path.insert(0, str(Path(__file__).parent))
        settings = dict(ada_steps=a.ada_steps, ada_batch=a.ada_batch, fw_iters=2, fw_n=a.n_per_task)
        report["end_to_end"] = end_to_end(root, out / "cli", settings, a.threads)
    report["seconds"] = time.perf_counter() - t0
    write_report(out, "perf", report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
