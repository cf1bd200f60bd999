"""Model-zoo scale: the LMO over hundreds of checkpoints, measured in one run.

1. **Scan vs read.** The solver's streamed LMO pass (``score_vertices``: one FW-hard iteration's
   layer-wise scores by default) over N = 20 / 50 / 100 ViT-B/32-shaped checkpoints (``_perf``'s
   pool: float32 safetensors, 334 MiB each, built once under ``--root``), beside one sequential
   ``read()`` of the same files. Each timed step starts cold (the files evicted from the page cache
   with ``posix_fadvise(DONTNEED)``) or warm (read into it), and the resident fraction is measured
   with ``mincore`` just before it. One fresh process per cell, whose ru_maxrss is its peak.
   Reported: seconds per pass and per candidate, the pass's time over the read's, peak RSS vs N.
2. **LoRA adapters.** The factored store at N = 10 / 100 / 1000 rank-16 adapters of a
   TinyLlama-1.1B-shaped base, on all seven linear modules (24 MiB each) and on q/v only (4.3 MiB):
   ``lora_scale.py`` once per adapter set (adapters written once, as needed). The store holds every
   adapter's factors in memory, so a cell that cannot fit is refused and says why.
3. **Processes.** The same pass split over 1 and 2 processes by Lightning Fabric (gloo; the
   ``ddp_spawn`` launcher) through the solver's own sharded LMO (``score_vertices_sharded`` with
   ``fabric_communicator``): per-candidate cost and speed-up, and whether the selections agree.
4. **Projection.** A 1000-checkpoint pool on G GPUs from the per-candidate costs measured here.

The disk caps N (the pool is N models; ``--disk-reserve-gib`` is left for the LoRA pools); a warm
cell runs only when its files fit in the memory available. Results: ``--out``/perf_zoo.{json,md},
and ``--out``/lora_<set>/lora_scale.{json,md}. The full run writes about 45 GB (the ViT pool 35 GB
under ``--root``, the LoRA base and adapters 9 GB under ``--lora-root``; ``--clean`` deletes them).

    flock /tmp/fw-cpu.lock nice -n 5 python benchmarks/perf_zoo.py --out benchmarks/results/perf_zoo
    python benchmarks/perf_zoo.py --quick --out outputs/perf_zoo_quick    # tiny shapes: a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _perf import (  # noqa: E402
    REPO_ROOT,
    TINY_VISION,
    VIT_B32,
    add_child_arguments,
    build_pool,
    built_pool,
    candidate_names,
    child_env,
    drop_from_page_cache,
    machine,
    measure,
    med,
    meminfo,
    model_paths,
    read_through,
    resident_fraction,
    serve_child,
    write_report,
)

LMO_KINDS = {  # what one Frank-Wolfe iteration's LMO scores
    "hard": dict(granularity="layer", gradients=1, cosine=False),  # FW-hard: inner score per tensor
    "soft": dict(granularity="task", gradients=4, cosine=True),  # FW-soft: a gradient per target, cosine
}
LORA_SETS = {  # lora_scale.py arguments of each adapter set
    "all7": [],  # rank 16 on the seven linear modules of every layer (lora_scale's default, 24 MiB each)
    "qv": ["--targets", "q_proj", "v_proj"],  # peft's default modules for LLaMA (4.3 MiB each)
}
SETTINGS = {
    # LoRA at 10 too: three points say whether the pass is linear in N (base + cost per adapter)
    "full": dict(vision=VIT_B32, sizes=[20, 50, 100], parallel_n=20, lora_sizes=[10, 100, 1000], lora_args=[]),
    "quick": dict(vision=TINY_VISION, sizes=[2, 4], parallel_n=4, lora_sizes=[2, 4], lora_args=["--quick"]),
}
ZOO = 1000  # the pool the projection is for
GPUS = (1, 2, 4, 8, 16, 32)
GPU_REFERENCE = REPO_ROOT / "benchmarks" / "results" / "perf_h100_fp32" / "perf.json"


# ------------------------------------------------------------------------- one cell (child)
def _problem(spec: dict) -> dict:
    """A pass's inputs: a store over the N candidate files, the iterate (the pretrained tower, in
    memory) and random gradients; nothing here reads a candidate's tensor data."""
    import torch

    from fusion_bench_fw.core.lmo import Blocks
    from fusion_bench_fw.core.lora_store import open_safetensors_model
    from fusion_bench_fw.core.stores import SafetensorsVertexStore, read_safetensors_header

    root, names = Path(spec["root"]), candidate_names(spec["n"])
    paths = model_paths(root, names)
    header = read_safetensors_header(paths[names[0]])[1]
    keys = [k for k, v in header.items() if v["dtype"] in ("F64", "F32", "F16", "BF16")]
    device = torch.device(spec["device"])
    pretrained = open_safetensors_model("_pretrained_", str(root / "models" / "_pretrained_"), keys)
    theta = {k: pretrained.tensor("_pretrained_", k).float().to(device, copy=True) for k in keys}
    gen = torch.Generator().manual_seed(0)
    kind = LMO_KINDS[spec["lmo"]]
    grads = [
        {k: torch.randn(t.shape, generator=gen).to(device) for k, t in theta.items()} for _ in range(kind["gradients"])
    ]
    return dict(
        names=names,
        files=list(paths.values()),
        store=SafetensorsVertexStore(paths, keys),
        theta=theta,
        grads=grads,
        blocks=Blocks.build(keys, kind["granularity"]),
        cosine=kind["cosine"],
        candidate_bytes=sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k in keys),
    )


def settle(problem: dict, state: str) -> float:
    """Put the candidate files in the cell's page-cache state; the fraction resident after."""
    problem["store"].release_all()  # pages a process maps cannot be evicted
    if state == "cold":
        drop_from_page_cache(problem["files"])
    elif resident_fraction(problem["files"]) < 1:
        read_through(problem["files"])
    return resident_fraction(problem["files"])


def _timed_pass(problem: dict, score) -> tuple[float, list[int]]:
    """Seconds of one LMO pass and its per-block argmin for the first gradient (a fingerprint)."""
    t = time.perf_counter()
    table = score(problem["grads"], problem["theta"], problem["names"], problem["store"].tensor, problem["blocks"])
    seconds = time.perf_counter() - t
    return seconds, table.inner[0].argmin(dim=0).tolist()


def run_scan(spec: dict) -> dict:
    """One cell: a timed read of the N files, then ``passes`` LMO passes, each from ``state``."""
    import functools

    import torch

    from fusion_bench_fw.core.lmo import score_vertices

    torch.set_num_threads(spec["threads"])
    problem = _problem(spec)
    score = functools.partial(score_vertices, cosine=problem["cosine"])
    read_resident = settle(problem, spec["state"])
    read_s = read_through(problem["files"])
    passes, selection = [], None
    for _ in range(spec["passes"]):
        resident = settle(problem, spec["state"])
        seconds, selection = _timed_pass(problem, score)
        passes.append(dict(seconds=seconds, resident=resident))
    on_gpu = torch.device(spec["device"]).type == "cuda"
    return dict(
        spec,
        peak_device_mb=torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
        candidate_bytes=problem["candidate_bytes"],
        read_bytes=sum(os.path.getsize(f) for f in problem["files"]),
        read_s=read_s,
        read_resident=read_resident,
        passes=passes,
        selection=selection,
    )


def _parallel_rank(fabric, spec: dict) -> dict:
    """One rank of the Fabric run: its share of every pass (round-robin over candidates), the
    scores summed over ranks; rank 0 alone puts the files in the cell's state between passes."""
    import functools

    import torch

    from fusion_bench_fw.core.lmo import score_vertices_sharded
    from fusion_bench_fw.fusionbench.distributed import fabric_communicator

    torch.set_num_threads(spec["threads"])
    comm = fabric_communicator(fabric)
    problem = _problem(spec)
    score = functools.partial(score_vertices_sharded, cosine=problem["cosine"], comm=comm)
    passes, selection = [], None
    for _ in range(spec["passes"]):
        problem["store"].release_all()
        fabric.barrier()
        resident = settle(problem, spec["state"]) if fabric.global_rank == 0 else None
        fabric.barrier()
        seconds, selection = _timed_pass(problem, score)
        per_rank = fabric.all_gather(torch.tensor([seconds], dtype=torch.float64)).reshape(-1).tolist()
        passes.append(dict(seconds=max(per_rank), per_rank=per_rank, resident=resident))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = fabric.all_gather(torch.tensor([peak], dtype=torch.float64)).reshape(-1).tolist()
    return dict(
        spec, candidate_bytes=problem["candidate_bytes"], passes=passes, selection=selection, rank_peak_rss_mb=peaks
    )


def run_parallel(spec: dict) -> dict:
    import lightning as L

    processes = spec["processes"]
    fabric = L.Fabric(accelerator="cpu", devices=processes, strategy="ddp_spawn" if processes > 1 else "auto")
    return fabric.launch(_parallel_rank, spec)


def run_child(spec: dict) -> dict:
    return {"scan": run_scan, "parallel": run_parallel}[spec["kind"]](spec)


# ----------------------------------------------------------------------------------- planning
def vision_model_bytes(vision: dict) -> int:
    """float32 bytes of one CLIPVisionModel of this shape (counted on the meta device: no memory)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    return sum(p.numel() * 4 for p in model.parameters())


def plan_sizes(root: Path, sizes: list[int], vision: dict, reserve: int) -> dict:
    """The sizes this disk can hold (the pool is built once, at the largest kept; a pool already at
    ``root`` that serves them is reused, one that does not is replaced), and why any is dropped."""
    model = vision_model_bytes(vision)
    reused = built_pool(root, max(sizes), vision, with_data=False) is not None
    replaced = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    free = shutil.disk_usage(next(d for d in [root, *root.parents] if d.exists())).free + replaced
    cap = max(0, (free - reserve) // model - 2)  # the pretrained CLIPModel takes about one more
    reason = f"{free / 2**30:.1f} GiB free, {reserve / 2**30:.1f} GiB kept back: room for {cap} models"
    kept = sizes if reused else [n for n in sizes if n <= cap]
    return dict(
        sizes=kept,
        dropped=[dict(n=n, reason=reason) for n in sizes if n not in kept],
        model_bytes=model,
        free_bytes=free,
        reserve_bytes=reserve,
        cap=cap,
        reused=reused,
    )


def warm_fits(n: int, model_bytes: int, gradients: int, fraction: float) -> str | None:
    """Why N files cannot stay in the page cache beside the cell's process (its iterate and
    gradients in memory, plus 1 GiB), or None when they can (the cell measures whether they did)."""
    need = (n + 1 + gradients) * model_bytes + 2**30
    available = fraction * meminfo()
    if need <= available:
        return None
    return f"files + process {need / 2**30:.1f} GiB > {available / 2**30:.1f} GiB ({fraction:.0%} of MemAvailable)"


def run_lora(name: str, settings: dict, a, out: Path) -> dict:
    """``lora_scale.py`` on one adapter set (its own process, its own report beside ours); its
    factored cells summarised per adapter."""
    folder = out / f"lora_{name}"
    cmd = [sys.executable, str(HERE / "lora_scale.py"), *settings["lora_args"], *LORA_SETS[name]]
    cmd += ["--factored", *map(str, settings["lora_sizes"]), "--full", "--passes", str(a.passes)]
    cmd += ["--threads", str(a.threads), "--root", a.lora_root, "--out", str(folder)]
    subprocess.run(cmd, check=True, env=child_env())
    report = json.loads((folder / "lora_scale.json").read_text())
    runs, previous = [], None
    for r in sorted((r for r in report["runs"] if r["variant"] == "factored"), key=lambda r: r["n"]):
        factors = r["n"] * report["adapter_bytes"] / 2**20
        runs.append(
            dict(
                n=r["n"],
                lmo_s=r["lmo_s"],
                # what the adapters added since the previous N cost each: flat if the cost per candidate is
                marginal_s=(min(r["lmo_s"]) - min(previous["lmo_s"])) / (r["n"] - previous["n"]) if previous else None,
                peak_rss_mb=r["peak_rss_mb"],
                factors_mb=factors,
                rss_beside_factors_mb=r["peak_rss_mb"] - factors,
            )
        )
        previous = r
    return dict(
        name=name,
        targets=report["targets"],
        adapter_bytes=report["adapter_bytes"],
        n_params=report["n_params"],
        disk_bytes=report["disk_bytes"],
        runs=runs,
        skipped=report["skipped"],
        fit=report["fit"],
        seconds=report["seconds"],
        report=str(folder.relative_to(out) / "lora_scale.md"),
    )


# --------------------------------------------------------------------------------- summaries
def derive(cell: dict) -> dict:
    """A measured cell with what the pages quote: its pass (median over passes, s), per candidate,
    and for a scan cell its read's bandwidth and the pass's time over the read's."""
    lmo = med([p["seconds"] for p in cell["passes"]])
    out = dict(
        cell, pass_s=lmo, per_candidate_s=lmo / cell["n"], lmo_bytes_per_s=cell["n"] * cell["candidate_bytes"] / lmo
    )
    if "read_s" in cell:
        out.update(read_bytes_per_s=cell["read_bytes"] / cell["read_s"], lmo_over_read=lmo / cell["read_s"])
    return out


def summarise(report: dict) -> dict:
    """Per state: per-candidate cost and peak RSS at the largest N over the smallest (flat: ~1)."""
    out = {}
    for state in ("cold", "warm"):
        cells = sorted((c for c in report["scan"] if c["state"] == state), key=lambda c: c["n"])
        if len(cells) >= 2:
            out[f"per_candidate_ratio_{state}"] = cells[-1]["per_candidate_s"] / cells[0]["per_candidate_s"]
            out[f"peak_rss_ratio_{state}"] = cells[-1]["peak_rss_mb"] / cells[0]["peak_rss_mb"]
        if cells:
            out[f"lmo_over_read_{state}"] = med([c["lmo_over_read"] for c in cells])
    par = {(c["state"], c["processes"]): c for c in report["parallel"]}
    for state, p in {s: p for s, p in par if p > 1}.items():
        if (state, 1) in par:
            one, many = par[(state, 1)], par[(state, p)]
            out[f"speedup_{state}"] = one["pass_s"] / many["pass_s"]
            out[f"same_selection_{state}"] = one["selection"] == many["selection"]
    return out


def gpu_reference(path: Path) -> dict | None:
    """The LMO's bytes/s on a GPU from a committed perf.py run (host -> device copies bound it there)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    rates = [r["lmo_bytes"] / med(r["lmo_s"]) for r in data["runs"]]
    return dict(
        file=str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
        device=(data.get("provenance") or {}).get("machine", {}).get("device") or data.get("machine"),
        lmo_bytes_per_s=med(rates),
    )


def project(report: dict) -> dict | None:
    """An LMO pass over ``ZOO`` checkpoints like these on G GPUs, one process each, the candidates
    split round-robin (``score_vertices_sharded``): ceil(ZOO / G) candidates per rank at a measured
    per-candidate cost, and the whole pool's bytes at the measured cold read bandwidth when every
    rank reads from one shared disk like this one (that floor does not shrink with G)."""
    scans = report["scan"]
    if not scans:
        return None
    largest = {
        s: max((c for c in scans if c["state"] == s), key=lambda c: c["n"], default=None) for s in ("cold", "warm")
    }
    cold, warm = largest["cold"], largest["warm"]
    size = scans[0]["candidate_bytes"]
    costs = {}
    if warm:
        costs["cpu_warm"] = warm["per_candidate_s"]
    if cold:
        costs["cpu_cold"] = cold["per_candidate_s"]
    ref = report.get("gpu_reference")
    if ref:
        costs["gpu_reference"] = size / ref["lmo_bytes_per_s"]
    read_bw = cold["read_bytes_per_s"] if cold else None
    rows = []
    for g in GPUS:
        share = math.ceil(ZOO / g)
        rows.append(dict(gpus=g, per_rank=share, **{k: share * c for k, c in costs.items()}))
    return dict(
        pool=ZOO,
        candidate_bytes=size,
        pool_bytes=ZOO * size,
        per_candidate_s=costs,
        cold_read_bytes_per_s=read_bw,
        shared_disk_floor_s=ZOO * size / read_bw if read_bw else None,
        rows=rows,
        assumptions=[
            f"each GPU is driven by its own process that scores ceil({ZOO}/G) candidates, as score_vertices_sharded splits them",
            "the all-reduce of the score table (gradients x candidates x blocks, float64) is negligible beside the pass",
            "cpu_warm / cpu_cold: each rank reads its share at this machine's measured per-candidate cost, from its own "
            "page cache (warm: its share must fit in its host's memory) or its own disk (cold)",
            "gpu_reference: the LMO throughput of the committed GPU run named in gpu_reference, files in the page cache",
            "one shared disk serving every rank caps the pass at the pool's bytes over that disk's bandwidth, whatever G",
        ],
    )


# ------------------------------------------------------------------------------------ report
def render(report: dict) -> str:
    gib, mib = 2**30, 2**20
    pool, kind = report["pool"], LMO_KINDS[report["lmo"]]
    lines = [
        f"Machine: {report['machine']}. Candidates: CLIP ViT-B/32-shaped vision towers with random weights "
        f"({pool['model_bytes'] / mib:.1f} MiB of float32 safetensors each); LMO: FW-{report['lmo']}'s "
        f"({kind['granularity']}-wise, {kind['gradients']} gradient(s), {'cosine' if kind['cosine'] else 'inner'} "
        f"score); device {report['device']}; {report['threads']} torch thread(s); "
        f"{report['passes']} pass(es) per cell; a fresh process per cell.",
        f"Disk: {pool['built']} models at `{pool['root']}` ({pool['built'] * pool['model_bytes'] / gib:.1f} GiB, "
        + ("reused" if pool["reused"] else f"built in {pool['seconds']} s")
        + f"); {pool['free_bytes'] / gib:.1f} GiB free for it, {pool['reserve_bytes'] / gib:.1f} GiB kept back for "
        f"the LoRA pools: room for {pool['cap']} models"
        + "".join(f"; N={d['n']} not run" for d in pool["dropped"])
        + ".",
        "",
        "**LMO pass against one sequential read of the same files (cold: evicted; warm: in the page cache)**",
        "",
        "| N | state | GiB | resident before read / passes | read s | read GB/s | LMO pass s | LMO GB/s | "
        "s per candidate | LMO s / read s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["scan"]:
        resident = " / ".join(f"{x:.0%}" for x in [c["read_resident"], *(p["resident"] for p in c["passes"])])
        lines.append(
            f"| {c['n']} | {c['state']} | {c['read_bytes'] / gib:.1f} | {resident} | {c['read_s']:.2f} | "
            f"{c['read_bytes_per_s'] / 1e9:.2f} | "
            + " / ".join(f"{p['seconds']:.2f}" for p in c["passes"])
            + f" | {c['lmo_bytes_per_s'] / 1e9:.2f} | {c['per_candidate_s']:.4f} | {c['lmo_over_read']:.2f} | "
            f"{c['peak_rss_mb']:.0f} |"
        )
    lines += [f"- {x['kind']} N={x['n']} {x['state']}: not run: {x['reason']}" for x in report["skipped"]]
    s = report["summary"]
    lines += [""] + [
        f"- {state}: s per candidate at the largest N / at the smallest {s[f'per_candidate_ratio_{state}']:.2f}, "
        f"peak RSS {s[f'peak_rss_ratio_{state}']:.3f} (flat: 1)"
        for state in ("cold", "warm")
        if f"per_candidate_ratio_{state}" in s
    ]
    if report["parallel"]:
        lines += [
            "",
            "**The same pass over processes (Lightning Fabric, gloo, candidates split round-robin)**",
            "",
            "| N | state | processes | LMO pass s (slowest rank) | s per candidate | speed-up | peak RSS MiB per rank |",
            "|---|---|---|---|---|---|---|",
        ]
        one = {c["state"]: c["pass_s"] for c in report["parallel"] if c["processes"] == 1}
        for c in report["parallel"]:
            speed = f"{one[c['state']] / c['pass_s']:.2f}" if c["state"] in one else "-"
            lines.append(
                f"| {c['n']} | {c['state']} | {c['processes']} | "
                + " / ".join(f"{p['seconds']:.2f}" for p in c["passes"])
                + f" | {c['per_candidate_s']:.4f} | {speed} | "
                + " / ".join(f"{x:.0f}" for x in c["rank_peak_rss_mb"])
                + " |"
            )
        lines += [
            f"- {state}: the processes' selections "
            + ("equal the single process's" if s[f"same_selection_{state}"] else "DIFFER from the single process's")
            for state in ("cold", "warm")
            if f"same_selection_{state}" in s
        ]
    for lora in report["lora"]:
        lines += [
            "",
            f"**LoRA adapters as factors ({lora['name']}: rank 16 on {'/'.join(lora['targets'])}, "
            f"{lora['adapter_bytes'] / mib:.1f} MiB each; base {lora['n_params'] / 1e9:.2f}B parameters; "
            f"on disk {sum(lora['disk_bytes'].values()) / gib:.1f} GiB; [{lora['report']}]({lora['report']}))**",
            "",
            "| N | LMO pass s | s per adapter added since the previous N | peak RSS MiB | adapters' factors MiB | "
            "peak RSS beside the factors MiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in lora["runs"]:
            marginal = "-" if r["marginal_s"] is None else f"{r['marginal_s']:.4f}"
            lines.append(
                f"| {r['n']} | "
                + " / ".join(f"{t:.1f}" for t in r["lmo_s"])
                + f" | {marginal} | {r['peak_rss_mb']:.0f} | {r['factors_mb']:.0f} | {r['rss_beside_factors_mb']:.0f} |"
            )
        lines += [f"- N={x['n']}: not run: {x['reason']}" for x in lora["skipped"]]
        f = lora["fit"]
        if f:
            lines.append(
                f"- fitted a + b N: {f['base_s']:.1f} s + {f['per_candidate_s']:.4f} s per adapter and pass; peak RSS "
                f"{f['rss_mib']:.0f} MiB + {f['rss_per_candidate_mib']:.1f} MiB per adapter (its factors: {f['adapter_mib']:.1f} MiB)"
            )
    p = report["projection"]
    if p:
        labels = dict(
            cpu_warm="at this CPU's warm cost",
            cpu_cold="at this CPU's cold cost",
            gpu_reference="at the GPU reference's",
        )
        costs = p["per_candidate_s"]
        lines += [
            "",
            f"**Projection (not measured): one LMO pass over {p['pool']} such checkpoints "
            f"({p['pool_bytes'] / 1e9:.0f} GB) on G GPUs**",
            "",
            "Per-candidate cost: "
            + ", ".join(f"{labels[k]} {v:.4f} s" for k, v in costs.items())
            + (
                f" ({report['gpu_reference']['device']}, `{report['gpu_reference']['file']}`)"
                if report.get("gpu_reference")
                else ""
            )
            + ".",
            "",
            "| G | candidates per rank | " + " | ".join(f"pass s {labels[k]}" for k in costs) + " |",
            "|---|---|" + "---|" * len(costs),
        ]
        for r in p["rows"]:
            lines.append(f"| {r['gpus']} | {r['per_rank']} | " + " | ".join(f"{r[k]:.1f}" for k in costs) + " |")
        if p["shared_disk_floor_s"]:
            lines.append(
                f"\nFrom one shared disk at the cold read bandwidth measured here ({p['cold_read_bytes_per_s'] / 1e9:.2f} GB/s), "
                f"no pass takes less than {p['shared_disk_floor_s']:.0f} s, whatever G."
            )
        speedups = [f"{k.removeprefix('speedup_')} {v:.2f}" for k, v in s.items() if k.startswith("speedup_")]
        if speedups:
            lines.append(
                f"\nSpeed-up measured here with {max(c['processes'] for c in report['parallel'])} processes: {', '.join(speedups)}."
            )
        lines += ["", "Assumptions:", *(f"- {x}" for x in p["assumptions"])]
    lines += ["", f"Total benchmark time {report['seconds']:.0f} s. Regenerate: `{report['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny towers, N = 2, 4, a 2-layer LLaMA: a smoke run")
    p.add_argument("--sizes", type=int, nargs="+", help="numbers of candidates (default 20 50 100)")
    p.add_argument("--states", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    p.add_argument("--passes", type=int, default=2, help="timed LMO passes per cell")
    p.add_argument("--lmo", default="hard", choices=list(LMO_KINDS))
    p.add_argument("--device", default="cpu", help="where the scan cells score (the parallel cells: CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="Fabric processes of the parallel cells")
    p.add_argument("--parallel-n", type=int, help="candidates of the parallel cells (default 20)")
    p.add_argument("--lora-sets", nargs="*", default=list(LORA_SETS), choices=list(LORA_SETS))
    p.add_argument("--disk-reserve-gib", type=float, default=12.0, help="disk kept free of the pool (the LoRA pool)")
    p.add_argument("--mem-fraction", type=float, default=0.95, help="a warm cell and its files: this of MemAvailable")
    p.add_argument("--gpu-reference", default=str(GPU_REFERENCE), help="a perf.py results file measured on a GPU")
    p.add_argument(
        "--root",
        default=os.environ.get("FUSION_BENCH_FW_ZOO_ROOT", os.path.expanduser("~/.cache/fusion_bench_fw/perf_zoo")),
    )
    p.add_argument("--lora-root", default="/tmp/fw-lora-scale")
    p.add_argument("--out", default="outputs/perf_zoo")
    p.add_argument("--clean", action="store_true", help="delete the pool and the LoRA pools at the end")
    p.add_argument("--render", help="re-render OUT/perf_zoo.md from this JSON")
    add_child_arguments(p)
    a = p.parse_args(argv)
    if serve_child(a, run_child):
        return 0
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.render:
        write_report(out, "perf_zoo", json.loads(Path(a.render).read_text()), render)
        return 0

    t0 = time.perf_counter()
    settings = SETTINGS["quick" if a.quick else "full"]
    root = Path(a.root + ("_quick" if a.quick else "")).resolve()
    info = machine()
    print(f"[perf_zoo] {info}", flush=True)
    plan = plan_sizes(root, a.sizes or settings["sizes"], settings["vision"], int(a.disk_reserve_gib * 2**30))
    for d in plan["dropped"]:
        print(f"[perf_zoo] N={d['n']} not run: {d['reason']}", flush=True)
    if not plan["sizes"]:
        raise SystemExit(f"[perf_zoo] no N fits: {plan['dropped'][0]['reason']}")
    parallel_n = min(a.parallel_n or settings["parallel_n"], max(plan["sizes"]))
    built = build_pool(root, max(plan["sizes"]), settings["vision"], with_data=False)
    pool = dict(plan, root=str(root), built=built["key"]["n_max"], seconds=built["seconds"], n_params=built["n_params"])
    print(f"[perf_zoo] pool at {root}: {pool['built']} models of {built['n_params'] / 1e6:.1f}M parameters", flush=True)
    base = dict(root=str(root), threads=a.threads, passes=a.passes, lmo=a.lmo)
    gradients = LMO_KINDS[a.lmo]["gradients"]
    cells = [
        dict(base, kind="scan", variant=f"scan_{s}", n=n, state=s, device=a.device)
        for n in plan["sizes"]
        for s in a.states
    ]
    cells += [
        dict(base, kind="parallel", variant=f"fabric{k}_{s}", n=parallel_n, state=s, processes=k, device="cpu")
        for s in a.states
        for k in a.processes
    ]
    scan, parallel, skipped = [], [], []
    for spec in cells:
        label = f"{spec['variant']} N={spec['n']}"
        reason = spec["state"] == "warm" and warm_fits(spec["n"], plan["model_bytes"], gradients, a.mem_fraction)
        if reason:
            print(f"[perf_zoo] {label} not run: {reason}", flush=True)
            skipped.append(dict(n=spec["n"], state=spec["state"], kind=spec["kind"], reason=reason))
            continue
        c = derive(measure(spec, out / "children", script=__file__))
        (scan if spec["kind"] == "scan" else parallel).append(c)
        read = f"read {c['read_s']:.2f} s, " if "read_s" in c else ""
        passes = " / ".join(f"{x['seconds']:.2f}" for x in c["passes"])
        print(f"[perf_zoo] {label}: {read}LMO {passes} s, peak RSS {c['peak_rss_mb']:.0f} MiB", flush=True)
    lora = [run_lora(name, settings, a, out) for name in a.lora_sets]
    report = dict(
        machine=info,
        device=a.device,
        threads=a.threads,
        passes=a.passes,
        lmo=a.lmo,
        pool=pool,
        scan=scan,
        skipped=skipped,
        parallel=parallel,
        lora=lora,
        gpu_reference=gpu_reference(Path(a.gpu_reference)) if a.gpu_reference else None,
        command="python benchmarks/perf_zoo.py " + " ".join(argv or sys.argv[1:]),
    )
    report["summary"] = summarise(report)
    report["projection"] = project(report)
    report["seconds"] = time.perf_counter() - t0
    write_report(out, "perf_zoo", report, render)
    if a.clean:
        for folder in (root, Path(a.lora_root + ("_quick" if a.quick else ""))):
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
