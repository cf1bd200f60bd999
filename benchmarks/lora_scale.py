"""LoRA pools at LLM scale: the factored store against today's full-weight path, measured in one run.

Builds (once, then reuses) a LLaMA-shaped causal LM with random weights (TinyLlama-1.1B shapes
by default: 22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab 32000; bf16,
sharded safetensors) and N random rank-16 peft LoRA adapters on all seven linear modules of
every layer. Then, in a fresh process per cell, for the factored store (``store=auto``) and
for the full-weight path (``store=safetensors``: FusionBench's ``load_peft_causal_lm`` with
``merge_and_unload``, spilled to safetensors) at the N it can reach:

* the store build (seconds, bytes the process wrote to disk: /proc/self/io write_bytes),
* seconds per LMO pass (task-wise inner scores of one random gradient, the solver's own
  ``score_vertices``), and the peak RSS of the process (ru_maxrss via wait4).

The iterate and the gradient are held in bf16 (2 x 2.2 GB) in every cell alike. Finally the
per-element costs measured on this model (base score per parameter, factor score per adapted
parameter x candidate x rank, full-weight score and spill per parameter x candidate) are
scaled to LLaMA-2-7B x 16 adapters: an extrapolation, printed as such.

    flock /tmp/fw-cpu.lock nice -n 5 python benchmarks/lora_scale.py --out benchmarks/results/lora_scale

Everything big lives under ``--root`` (default /tmp/fw-lora-scale); ``--clean`` removes it at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf import add_child_arguments, machine, measure, meminfo, serve_child, write_report  # noqa: E402

LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
)
LLAMA2_7B = dict(LLAMA_1B, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_key_value_heads=32)
QUICK = dict(LLAMA_1B, num_hidden_layers=2, vocab_size=4096)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32
SHARD_BYTES = 1 << 30
PROCESS_BYTES = 3 << 29  # a cell's process beyond its tensors (torch, FusionBench, buffers): 1.5 GiB
DISK_MARGIN = 2 << 30  # left free on the disk


def llama_tensors(shape: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of LlamaForCausalLM (untied head) for ``shape``."""
    h, m, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_key_value_heads"]
    head_dim = h // shape["num_attention_heads"]
    out = {"model.embed_tokens.weight": (shape["vocab_size"], h)}
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv * head_dim, h),
            p + "self_attn.v_proj.weight": (kv * head_dim, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (m, h),
            p + "mlp.up_proj.weight": (m, h),
            p + "mlp.down_proj.weight": (h, m),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    out |= {"model.norm.weight": (h,), "lm_head.weight": (shape["vocab_size"], h)}
    return out


def adapted(key: str, targets=TARGETS) -> bool:
    return any(f".{t}." in key for t in targets)


def adapter_bytes(shape: dict, targets=TARGETS) -> int:
    """Bytes of one adapter's bf16 factors: B (out x r) and A (r x in) per adapted tensor."""
    return sum(2 * RANK * sum(s) for k, s in llama_tensors(shape).items() if adapted(k, targets))


def adapter_dir(root: Path, targets) -> Path:
    """One folder per adapter set (rank and modules), beside the base they share."""
    return root / (f"r{RANK}_" + "_".join(t.removesuffix("_proj") for t in targets))


def adapter_names(n: int) -> list[str]:
    return [f"lora_{i:04d}" for i in range(n)]


# ----------------------------------------------------------------------------------- the pool
def build_base(root: Path, shape: dict) -> dict:
    """``root/base`` (config.json + sharded bf16 safetensors + index), built once per shape (a new
    shape starts ``root`` afresh: the adapters depend on it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    key = dict(version=2, shape=shape)
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        return json.loads(manifest.read_text())
    if root.exists():
        shutil.rmtree(root)
    base = root / "base"
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    LlamaConfig(**shape, tie_word_embeddings=False, torch_dtype="bfloat16").save_pretrained(base)
    tensors = llama_tensors(shape)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, index
        if shard:
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(base / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size, index = {}, 0, index + 1

    for k, s in tensors.items():
        t = torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * (1 / math.sqrt(s[-1]))
        shard[k] = t.to(torch.bfloat16)
        size += shard[k].numel() * 2
        if size >= SHARD_BYTES:
            flush()
    flush()
    # the shard names in the index must say "of N": rename once the count is known
    total = index
    renamed = {}
    for i in range(total):
        old, new = f"model-{i:05d}.safetensors", f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (base / old).rename(base / new)
        renamed[old] = new
    weight_map = {k: renamed[v] for k, v in weight_map.items()}
    n_params = sum(math.prod(s) for s in tensors.values())
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * n_params}, "weight_map": weight_map}, indent=1)
    )
    out = dict(key=key, n_params=n_params, seconds=round(time.perf_counter() - t0, 1))
    manifest.write_text(json.dumps(out, indent=1))
    return out


def build_adapters(root: Path, shape: dict, targets, n: int) -> dict:
    """The first ``n`` adapters of ``adapter_dir(root, targets)``, each written once (adapter i is
    the same whatever n asked for it), so a larger N only writes the adapters it adds."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder = adapter_dir(root, targets)
    key = dict(version=1, shape=shape, rank=RANK, alpha=ALPHA, targets=list(targets))
    manifest = folder / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()) == key):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(targets), task_type="CAUSAL_LM").save_pretrained(
            folder / "_config"
        )
        manifest.write_text(json.dumps(key, indent=1))
    tensors = llama_tensors(shape)
    t0, written = time.perf_counter(), 0
    for i, name in enumerate(adapter_names(n)):
        if (folder / name).is_dir():
            continue
        tmp = folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(folder / "_config" / "adapter_config.json", tmp / "adapter_config.json")
        gen = torch.Generator().manual_seed(1 + i)
        factors = {}
        for k, s in tensors.items():
            if adapted(k, targets):
                stem = "base_model.model." + k.removesuffix(".weight")
                factors[stem + ".lora_A.weight"] = (torch.randn(RANK, s[1], generator=gen) / math.sqrt(s[1])).to(
                    torch.bfloat16
                )
                factors[stem + ".lora_B.weight"] = (0.01 * torch.randn(s[0], RANK, generator=gen)).to(torch.bfloat16)
        save_file(factors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        tmp.rename(folder / name)  # complete or absent
        written += 1
    return dict(
        n_adapted=sum(math.prod(s) for k, s in tensors.items() if adapted(k, targets)),
        written=written,
        seconds=round(time.perf_counter() - t0, 1),
    )


def skip_reason(
    variant: str, n: int, shape: dict, targets, mem_bytes: int, disk_bytes: int, on_disk: int = 0
) -> str | None:
    """Why a cell would not fit this machine (None: it fits). The factored store holds every
    adapter's factors in memory beside the bf16 iterate and gradient; the full path writes one merged
    model per candidate; ``on_disk`` adapters are written already."""
    n_params = sum(math.prod(s) for s in llama_tensors(shape).values())
    factors = n * adapter_bytes(shape, targets) if variant == "factored" else 0
    peak = 4 * n_params + factors + PROCESS_BYTES
    if peak > mem_bytes:
        return (
            f"projected peak {peak / 2**30:.1f} GiB (iterate and gradient {4 * n_params / 2**30:.1f}, "
            f"factors {factors / 2**30:.1f}, process {PROCESS_BYTES / 2**30:.1f}) > {mem_bytes / 2**30:.1f} GiB allowed"
        )
    written = max(0, n - on_disk) * adapter_bytes(shape, targets) + (n * 2 * n_params if variant == "full" else 0)
    if written > disk_bytes:
        return f"needs {written / 2**30:.1f} GiB on disk (adapters and spills), {disk_bytes / 2**30:.1f} GiB free"
    return None


def fit_line(xs, ys) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ys over xs."""
    x_mean, y_mean = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)
    return y_mean - slope * x_mean, slope


def factored_fit(report: dict) -> dict | None:
    """The factored cells' LMO pass (fastest of each cell) and peak RSS as a + b N: b is what one
    more adapter costs per pass, and in memory beside its factors' size."""
    cells = sorted((r for r in report["runs"] if r["variant"] == "factored"), key=lambda r: r["n"])
    if len({r["n"] for r in cells}) < 2:
        return None
    ns = [r["n"] for r in cells]
    base_s, per_candidate_s = fit_line(ns, [min(r["lmo_s"]) for r in cells])
    rss_mib, rss_per_candidate_mib = fit_line(ns, [r["peak_rss_mb"] for r in cells])
    return dict(
        base_s=base_s,
        per_candidate_s=per_candidate_s,
        rss_mib=rss_mib,
        rss_per_candidate_mib=rss_per_candidate_mib,
        adapter_mib=report["adapter_bytes"] / 2**20,
    )


# ------------------------------------------------------------------------- one cell (child)
def _written_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes"))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def run_child(spec: dict) -> dict:
    import torch
    from omegaconf import OmegaConf

    from fusion_bench_fw.core.lmo import Blocks, score_vertices
    from fusion_bench_fw.core.lora_store import open_safetensors_model
    from fusion_bench_fw.fusionbench.pool import build_vertex_store

    torch.set_num_threads(spec["threads"])
    root, n = Path(spec["root"]), spec["n"]
    names = adapter_names(n)
    models = {"_pretrained_": str(root / "base")}
    for name in names:  # as config/modelpool/llama-2-7b_lora16_fw.yaml loads its adapters
        models[name] = {
            "_target_": "fusion_bench.modelpool.causal_lm.causal_lm.load_peft_causal_lm",
            "base_model_path": str(root / "base"),
            "peft_model_path": str(Path(spec["adapters"]) / name),
            "torch_dtype": "bfloat16",
            "is_trainable": False,
            "merge_and_unload": True,
        }
    from fusion_bench.modelpool import CausalLMPool

    pool = CausalLMPool(OmegaConf.create(models), tokenizer=None)
    base = open_safetensors_model("_pretrained_", str(root / "base"))
    shapes = {k: base.shape(k) for k in base.keys}
    cache = Path(spec["cache"])
    written0, t0 = _written_bytes(), time.perf_counter()
    store = build_vertex_store(
        pool, names, shapes, "auto" if spec["variant"] == "factored" else "safetensors", str(cache)
    )
    build_s, written = time.perf_counter() - t0, _written_bytes() - written0
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    rss_after_build = _rss_mb()

    gen = torch.Generator().manual_seed(1)
    theta = {k: base.tensor("_pretrained_", k).clone() for k in base.keys}  # bf16, 2 bytes/parameter
    grad = {k: torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in shapes.items()}
    rss_before_lmo = _rss_mb()
    blocks = Blocks.build(list(shapes), "task")
    passes, table = [], None
    for _ in range(spec["passes"]):
        t = time.perf_counter()
        table = score_vertices([grad], theta, names, store.tensor, blocks, read_parts=store.parts)
        passes.append(time.perf_counter() - t)
    per_tensor = per_tensor_costs(store, theta, grad, names) if spec.get("per_tensor") else None
    return dict(
        variant=spec["variant"],
        n=n,
        threads=spec["threads"],
        build_s=build_s,
        written_bytes=written,
        cache_bytes=cache_bytes,
        rss_after_build_mb=rss_after_build,
        rss_before_lmo_mb=rss_before_lmo,
        peak_rss_self_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        lmo_s=passes,
        reads=table.reads,
        selected=int(table.inner[0, :, 0].argmin()),
        per_tensor=per_tensor,
    )


def per_tensor_costs(store, theta, grad, names) -> dict:
    """Seconds of the LMO on single tensors of layer 0 (plus the embeddings): with every
    candidate and with one, so that the shared base cost and the per-candidate factor cost
    separate: t(N) = base + N * per_candidate (min of 3 runs each)."""
    from fusion_bench_fw.core.lmo import Blocks, score_vertices

    out = {}
    keys = [k for k in theta if k.startswith("model.layers.0.") and k.endswith("proj.weight")]
    keys += ["model.embed_tokens.weight", "lm_head.weight"]
    for key in keys:
        blocks = Blocks.build([key], "task")

        def timed(subset, blocks=blocks):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                score_vertices([grad], theta, subset, store.tensor, blocks, read_parts=store.parts)
                best = min(best, time.perf_counter() - t)
            return best

        t_all, t_one = timed(names), timed(names[:1])
        per_candidate = max(0.0, (t_all - t_one) / (len(names) - 1))
        out[key] = dict(numel=theta[key].numel(), base_s=max(0.0, t_one - per_candidate), per_candidate_s=per_candidate)
    return out


# ------------------------------------------------------------------------- extrapolation
def extrapolate(report: dict) -> dict:
    """LLaMA-2-7B x 16 from this model's measured per-element costs (see the module docstring)."""
    rows = {(r["variant"], r["n"]): r for r in report["runs"]}
    tensors, targets = llama_tensors(LLAMA2_7B), report.get("targets", TARGETS)
    p7 = sum(math.prod(s) for s in tensors.values())
    a7 = sum(math.prod(s) for k, s in tensors.items() if adapted(k, targets))
    n = 16
    per = next((r["per_tensor"] for r in report["runs"] if r.get("per_tensor")), None)
    out = dict(params=p7, adapted_params=a7, n=n, rank=RANK)
    if per:
        lin = [v for k, v in per.items() if adapted(k, targets)]
        other = [v for k, v in per.items() if not adapted(k, targets)]
        base_per_elem = sum(v["base_s"] for v in lin + other) / sum(v["numel"] for v in lin + other)
        factor_per_elem = sum(v["per_candidate_s"] for v in lin) / sum(v["numel"] for v in lin)
        out["factored_lmo_s"] = base_per_elem * p7 + factor_per_elem * a7 * n
        out["factored_base_per_param_ns"] = 1e9 * base_per_elem
        out["factored_per_adapted_param_candidate_ns"] = 1e9 * factor_per_elem
        out["factored_disk_bytes"] = 0
        out["adapter_bytes_7b"] = adapter_bytes(LLAMA2_7B, targets)
    full = sorted((r for (v, _), r in rows.items() if v == "full"), key=lambda r: r["n"])
    if len(full) >= 2:  # pass = a + b N over the measured cells (least squares), per parameter
        params, ns = report["n_params"], [r["n"] for r in full]
        intercept, slope = fit_line(ns, [min(r["lmo_s"]) for r in full])
        spill_per = statistics.median(r["build_s"] / (r["n"] * params) for r in full)
        out["full_lmo_s"] = (intercept + slope * n) * p7 / params
        out["full_spill_s"] = spill_per * p7 * n
        out["full_disk_bytes"] = 2 * p7 * n
        out["full_lmo_per_param_candidate_ns"] = 1e9 * slope / params
        out["full_lmo_fixed_per_param_ns"] = 1e9 * intercept / params
        out["full_spill_per_param_candidate_ns"] = 1e9 * spill_per
    return out


# ------------------------------------------------------------------------------------ report
def render(report: dict) -> str:
    gib = 2**30
    lines = [
        f"Machine: {report['machine']}. Model: LLaMA-shaped ({report['shape']['num_hidden_layers']} layers, "
        f"hidden {report['shape']['hidden_size']}, MLP {report['shape']['intermediate_size']}, vocab "
        f"{report['shape']['vocab_size']}), random weights, {report['n_params'] / 1e9:.2f}B parameters, bf16 sharded "
        f"safetensors ({2 * report['n_params'] / gib:.2f} GiB). Adapters: rank {RANK}, alpha {ALPHA}, on "
        f"{'/'.join(report.get('targets', TARGETS))} of every layer ({report['adapter_bytes'] / 2**20:.1f} MiB each). "
        f"{report['threads']} torch thread(s); a fresh process per cell; iterate and gradient held in bf16 in "
        "every cell.",
        "",
        "| store | N | build s | written to disk GiB | RSS before LMO MiB | peak RSS MiB | LMO pass s | "
        "base tensors read / pass | vertex tensors formed / pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['build_s']:.1f} | {r['written_bytes'] / gib:.2f} | "
            f"{r['rss_before_lmo_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
            + " / ".join(f"{t:.1f}" for t in r["lmo_s"])
            + f" | {r['reads']['base']} | {r['reads']['full']} |"
        )
    lines += [
        "",
        "factored = `method.store=auto` (LoRA adapters as factors over the base's safetensors); full = "
        "`method.store=safetensors` (today's path: FusionBench's `load_peft_causal_lm` with `merge_and_unload`, "
        "spilled once to safetensors, streamed). LMO pass s: each pass of the cell, in order (the "
        "first may read from disk, later ones from the page cache when the files fit in it). Written: /proc/self/io write_bytes of the cell's process.",
    ]
    lines += [f"- not run: {r['variant']} N={r['n']}: {r['reason']}" for r in report.get("skipped", [])]
    f = report.get("fit")
    if f:
        lines += [
            "",
            f"Factored cells fitted as a + b N: LMO pass {f['base_s']:.2f} s + {f['per_candidate_s']:.4f} s per adapter; "
            f"peak RSS {f['rss_mib']:.0f} MiB + {f['rss_per_candidate_mib']:.1f} MiB per adapter (its factors: "
            f"{f['adapter_mib']:.1f} MiB, held in memory by the store).",
        ]
    e = report.get("extrapolation")
    if e:
        lines += ["", f"**Extrapolation to LLaMA-2-7B x {e['n']} rank-{e['rank']} adapters (not measured)**", ""]
        lines += [
            f"From the per-element costs measured above on this machine, scaled by element counts "
            f"({e['params'] / 1e9:.2f}B parameters, {e['adapted_params'] / 1e9:.2f}B of them in adapted linear layers):",
            "",
        ]
        if "factored_lmo_s" in e:
            lines.append(
                f"- factored: LMO pass ~{e['factored_lmo_s']:.0f} s "
                f"({e['factored_base_per_param_ns']:.2f} ns per base parameter, read once, + "
                f"{e['factored_per_adapted_param_candidate_ns']:.2f} ns per adapted parameter and candidate), "
                f"0 bytes written, adapters {e['n']} x {e['adapter_bytes_7b'] / 2**20:.0f} MiB held in memory"
            )
        if "full_lmo_s" in e:
            lines.append(
                f"- full weights: spill ~{e['full_spill_s'] / 60:.0f} min and {e['full_disk_bytes'] / gib:.0f} GiB "
                f"written ({e['full_spill_per_param_candidate_ns']:.1f} ns per parameter and candidate), "
                f"LMO pass ~{e['full_lmo_s']:.0f} s ({e['full_lmo_fixed_per_param_ns']:.2f} ns per parameter + "
                f"{e['full_lmo_per_param_candidate_ns']:.2f} ns per parameter and candidate, fitted over the full "
                f"cells' passes, assuming the page cache could hold {e['full_disk_bytes'] / gib:.0f} GiB; from disk "
                "it is bounded by the disk's read bandwidth)"
            )
    lines += ["", f"Total benchmark time {report['seconds']:.0f} s. Regenerate: `{report['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--factored", type=int, nargs="+", default=[4, 8, 16], help="N for the factored store")
    p.add_argument("--full", type=int, nargs="*", default=[4, 8], help="N for the full-weight path")
    p.add_argument("--passes", type=int, default=2, help="LMO passes per cell")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 layers, small vocabulary: a smoke run")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="modules the adapters adapt")
    p.add_argument(
        "--mem-limit",
        type=float,
        default=0.8,
        help="skip a cell whose projected peak exceeds this fraction of the memory available at the start",
    )
    p.add_argument("--root", default="/tmp/fw-lora-scale")
    p.add_argument("--out", default="outputs/lora_scale")
    p.add_argument("--clean", action="store_true", help="delete --root (model, adapters, spills) at the end")
    p.add_argument("--render", help="re-render OUT/lora_scale.md from this JSON (the extrapolation recomputed)")
    add_child_arguments(p)
    a = p.parse_args(argv)
    if serve_child(a, run_child):
        return 0
    if a.render:
        report = json.loads(Path(a.render).read_text())
        report["extrapolation"] = extrapolate(report)
        write_report(Path(a.out), "lora_scale", report, render)
        return 0

    t0 = time.perf_counter()
    shape = QUICK if a.quick else LLAMA_1B
    root = Path(a.root + ("_quick" if a.quick else "")).resolve()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"[lora_scale] {info}", flush=True)
    folder = adapter_dir(root, a.targets)
    on_disk = len(list(folder.glob("lora_*")))
    free = shutil.disk_usage(next(d for d in [root, *root.parents] if d.exists())).free - DISK_MARGIN
    base_bytes = (
        0 if (root / "manifest.json").is_file() else 2 * sum(math.prod(s) for s in llama_tensors(shape).values())
    )
    cells, skipped = [], []
    for variant, n in [("factored", n) for n in a.factored] + [("full", n) for n in a.full]:
        reason = skip_reason(variant, n, shape, a.targets, int(a.mem_limit * meminfo()), free - base_bytes, on_disk)
        if reason:
            print(f"[lora_scale] not running {variant} N={n}: {reason}", flush=True)
            skipped.append(dict(variant=variant, n=n, reason=reason))
        else:
            cells.append((variant, n))
    pool = build_base(root, shape)
    adapters = build_adapters(root, shape, a.targets, max((n for _, n in cells), default=0))
    print(
        f"[lora_scale] pool at {root}: {pool['n_params'] / 1e9:.2f}B parameters (its build took {pool['seconds']} s), "
        f"{adapters['written']} adapters written in {adapters['seconds']} s",
        flush=True,
    )
    largest = max((n for v, n in cells if v == "factored"), default=None)
    rows = []
    for variant, n in cells:
        cache = root / "spill" / f"{variant}_{n}"
        spec = dict(
            variant=variant,
            n=n,
            root=str(root),
            adapters=str(folder),
            cache=str(cache),
            threads=a.threads,
            passes=a.passes,
            per_tensor=variant == "factored" and n == largest,
        )
        r = measure(spec, root / "children", script=__file__)
        shutil.rmtree(cache, ignore_errors=True)  # N full models: never keep them
        rows.append(r)
        print(
            f"[lora_scale] {variant} N={n}: build {r['build_s']:.1f} s, wrote {r['written_bytes'] / 2**30:.2f} GiB, "
            f"peak RSS {r['peak_rss_mb']:.0f} MiB, LMO " + " / ".join(f"{t:.1f}" for t in r["lmo_s"]) + " s",
            flush=True,
        )
    report = dict(
        machine=info,
        shape=shape,
        targets=a.targets,
        threads=a.threads,
        n_params=pool["n_params"],
        n_adapted=adapters["n_adapted"],
        adapter_bytes=adapter_bytes(shape, a.targets),
        disk_bytes=dict(
            base=2 * pool["n_params"], adapters=len(list(folder.glob("lora_*"))) * adapter_bytes(shape, a.targets)
        ),
        runs=rows,
        skipped=skipped,
        command="python benchmarks/lora_scale.py " + " ".join(argv or sys.argv[1:]),
    )
    report["fit"] = factored_fit(report)
    report["extrapolation"] = extrapolate(report)
    report["seconds"] = time.perf_counter() - t0
    write_report(out, "lora_scale", report, render)
    if a.clean:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
