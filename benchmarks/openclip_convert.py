"""What reading an OpenCLIP (Task Arithmetic paper) checkpoint costs FW: unpickle once, spill once.

A ViT-B/32 ``ImageEncoder`` as the paper saves it (open_clip's ViT-B-32 architecture, random weights:
nothing is downloaded; its text transformer removed; ``torch.save`` of the module under the paper's
``src.modeling`` class path) is written ``--models`` times, then read through the plugin's own pass
(:func:`fusion_bench_fw.fusionbench.pool.read_candidates` on a ``fusion_bench_fw.OpenCLIPVisionModelPool``):
each pickle is unpickled once and its state dict written once to the spill cache as safetensors.
A second pass with the same ``cache_dir`` finds the spills (keyed on each file's path, size and
modification time) and reads only their headers. Reported: file sizes, the seconds of each pass,
the peak RSS of this process.

    python benchmarks/openclip_convert.py --out benchmarks/results/openclip_convert

Needs open_clip (``scripts/install.sh --openclip``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import provenance  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=2, help="fine-tuned checkpoints beside zeroshot.pt")
    p.add_argument("--model-name", default="ViT-B-32")
    p.add_argument("--out", type=Path, default=None, help="folder for convert.json (default: print only)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from fusion_bench_fw import OpenCLIPVisionModelPool
    from fusion_bench_fw.fusionbench.pool import read_candidates
    from fusion_bench_fw.offline.tiny_openclip import make_encoder, paper_class_paths

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="openclip_convert."))
    try:
        encoder = make_encoder(args.model_name, seed=0)
        del encoder.model.transformer  # as the paper's encoders
        names = [f"task{i}" for i in range(args.models)]
        paths = {"_pretrained_": work / "zeroshot.pt", **{n: work / n / "finetuned.pt" for n in names}}
        with paper_class_paths():
            for path in paths.values():
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(encoder, path)
        shapes = {k: tuple(v.shape) for k, v in encoder.named_parameters()}
        n_params = sum(v.numel() for v in encoder.parameters())
        del encoder
        pool = OpenCLIPVisionModelPool(OmegaConf.create({n: str(p) for n, p in paths.items()}))
        passes = []
        for _ in range(2):
            t = time.perf_counter()
            found = read_candidates(pool, names, shapes, "auto", str(work / "cache"))
            passes.append(time.perf_counter() - t)
        spill_mib = sum(os.path.getsize(c.path) for c in found.values()) / len(found) / 2**20
        result = {
            "model_name": args.model_name,
            "models": args.models,
            "parameters": n_params,
            "pickle_mib": round(os.path.getsize(paths[names[0]]) / 2**20, 1),
            "spill_mib": round(spill_mib, 1),
            "first_pass_seconds": round(passes[0], 2),
            "first_pass_seconds_per_model": round(passes[0] / args.models, 2),
            "second_pass_seconds": round(passes[1], 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "provenance": provenance(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "convert.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
