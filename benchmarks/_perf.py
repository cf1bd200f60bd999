"""What the performance benchmarks share: the ViT-B/32-shaped pool on disk, measurements in a
fresh child process (its ru_maxrss is the configuration's peak), CLI runs with their wall time and
memory, the page cache (a timed sequential read, eviction, residency), the machine line, and the
report files. Imported by perf.py, perf_zoo.py, perf_adamerging.py, perf_intree.py and lora_scale.py
(never a script imported by another)."""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

VIT_B32 = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32
)


# --quick: same widths, 2 layers (15M parameters), so the smoke run stays short
QUICK_VISION = dict(VIT_B32, num_hidden_layers=2)

# smoke runs that only need the pass to run: a tower built and scored in seconds (tensors of 64 to 8192 entries)
TINY_VISION = dict(
    VIT_B32,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


TASKS = ("tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes")  # the fw_tiny_clip config's names


POOL_VERSION = 1


def candidate_names(n: int) -> list[str]:
    """The first four are the fw_tiny_clip task names (so its configs drive the CLI runs)."""
    return [TASKS[i] if i < len(TASKS) else f"extra_{i:02d}" for i in range(n)]


def model_paths(root: Path, names) -> dict[str, str]:
    """The safetensors file of each pool model of :func:`build_pool`, by name."""
    return {n: str(root / "models" / n / "model.safetensors") for n in names}


def built_pool(root: Path, n_max: int, vision: dict, with_data: bool) -> dict | None:
    """The manifest of the pool at ``root`` when it serves these settings, else None: at least
    ``n_max`` models (a larger pool's first models are the smaller one's), data if asked for."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return None
    built = json.loads(manifest.read_text())
    key = built.get("key") or {}
    same = key.get("version") == POOL_VERSION and key.get("vision") == vision
    return built if same and key.get("n_max", 0) >= n_max and key.get("with_data", False) >= with_data else None


def build_pool(root: Path, n_max: int, vision: dict, with_data: bool) -> dict:
    """``root/models/_pretrained_`` (a CLIPModel: ViT vision tower + the tiny text tower of
    tiny_clip, so zero-shot heads exist), ``root/models/<name>`` (CLIPVisionModel, pretrained +
    small random task vectors) and, with ``with_data``, the tiny task data sets."""
    import torch

    key = dict(version=POOL_VERSION, n_max=n_max, vision=vision, with_data=with_data)
    if built := built_pool(root, n_max, vision, with_data):
        return built
    from transformers import CLIPModel, CLIPVisionModel

    from fusion_bench_fw.offline import tiny_clip

    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    (root / "models").mkdir(parents=True)
    processor = tiny_clip.make_processor()
    size = vision["image_size"]
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    small = tiny_clip.make_clip_model(processor, seed=0)
    config = small.config
    config.vision_config.update(vision)
    config.projection_dim = 512
    torch.manual_seed(0)
    clip = CLIPModel(config)
    clip.save_pretrained(root / "models" / "_pretrained_")
    processor.save_pretrained(root / "models" / "_pretrained_")
    del clip
    # the library's own CLIPModel -> CLIPVisionModel loading keeps the names in the files
    # exactly those of the module the merge runs (whatever the transformers version)
    vision_model = CLIPVisionModel.from_pretrained(str(root / "models" / "_pretrained_"))
    pretrained = {k: v.clone() for k, v in vision_model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name in candidate_names(n_max):  # one model in memory at a time
        with torch.no_grad():
            for k, p in vision_model.state_dict().items():
                if p.is_floating_point():
                    p.copy_(
                        pretrained[k] + 0.02 * pretrained[k].std().clamp(min=1e-3) * torch.randn(p.shape, generator=gen)
                    )
        vision_model.save_pretrained(root / "models" / name)
    if with_data:
        _write_task_data(root)
    n_params = sum(p.numel() for p in vision_model.parameters())
    out = dict(key=key, n_params=n_params, seconds=round(time.perf_counter() - t0, 1))
    (root / "manifest.json").write_text(json.dumps(out, indent=1))
    return out


def _write_task_data(root: Path, n: int = 32) -> None:
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    from fusion_bench_fw.offline import tiny_clip

    for task in TASKS:
        spec = tiny_clip.TASKS[task]
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(spec.classnames))})
        for split in ("train", "test"):
            arrays, labels = tiny_clip._draw_set(task, n, tiny_clip._rng(0, "perf", task, split), 0.5)
            Dataset.from_dict(
                {"image": [Image.fromarray(a) for a in arrays], "label": labels}, features=features
            ).save_to_disk(str(root / "data" / task / split))


def read_through(paths, buffer_bytes: int = 16 << 20) -> float:
    """Seconds to ``read()`` the files once, in order, into one reused buffer: what a pass over
    their bytes costs with no work on them."""
    view = memoryview(bytearray(buffer_bytes))
    t = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - t


def page_cache_bandwidth(path: str, repeats: int = 3) -> float:
    """Bytes/s of ``read()`` from a file already in the page cache into a reused 16 MB buffer."""
    read_through([path])  # warms the cache
    return os.path.getsize(path) / statistics.median(read_through([path]) for _ in range(repeats))


def drop_from_page_cache(paths) -> None:
    """Evict the files from this kernel's page cache (``posix_fadvise(DONTNEED)``; fsync first,
    since dirty pages stay). Pages a process still maps stay too; /proc/sys/vm/drop_caches needs
    root and drops everything, this needs neither. Check with :func:`resident_fraction`."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_fraction(paths) -> float:
    """Fraction of the files' pages in the page cache: ``mincore`` on a fresh read-only mapping,
    which faults nothing in, so "cold" and "warm" are measured, not assumed."""
    import numpy as np

    libc, resident, total = _libc(), 0, 0
    for path in paths:
        size = os.path.getsize(path)
        if not size:
            continue
        pages = -(-size // mmap.PAGESIZE)
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            try:
                vec = (ctypes.c_ubyte * pages)()
                if libc.mincore(addr, size, vec):
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
        resident += int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
        total += pages
    return resident / total if total else 1.0


def meminfo(field: str = "MemAvailable") -> int:
    """Bytes of a /proc/meminfo field (MemAvailable: what the page cache and new processes can have)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden ``--child SPEC --child-out FILE`` options that :func:`measure` calls a script with."""
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)


def serve_child(args, run) -> bool:
    """In a child started by :func:`measure`: write ``run(spec)`` as JSON and return True."""
    if not args.child:
        return False
    Path(args.child_out).write_text(json.dumps(run(json.loads(args.child))))
    return True


def child_env() -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, for a script run as a child."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))


def measure(spec: dict, workdir: Path, script: str) -> dict:
    """Run ``spec`` in a fresh child (``script --child SPEC --child-out FILE``); its ru_maxrss
    (via wait4) is that configuration's peak."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{spec['variant']}_{spec['n']}_{spec.get('repeat', 0)}"
    out, log = workdir / f"child_{tag}.json", workdir / f"child_{tag}.log"
    env = dict(child_env(), OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, script, "--child", json.dumps(spec), "--child-out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['variant']} N={spec['n']} failed; see {log}:\n{log.read_text()[-2000:]}")
    result = json.loads(out.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def run_cli(args: list[str], root: Path, run_dir: Path, threads: int, pool_args=("modelpool=fw_tiny_clip",)) -> dict:
    """``fusion_bench *pool_args *args taskpool=dummy`` in a fresh process: wall seconds and its
    ru_maxrss (``pool_args`` may start with ``-cd DIR`` to add a config folder)."""
    from fusion_bench_fw.offline.cli import run_fusion_bench

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run = run_fusion_bench(
        [*pool_args, *args, "taskpool=dummy"],
        run_dir,
        env={"FUSION_BENCH_FW_TINY_ROOT": str(root)},
        threads=threads,
        timeout=24 * 3600,
    )
    (run_dir / "cli_output.txt").write_text(run.output)
    if run.returncode != 0:
        raise RuntimeError(f"fusion_bench {' '.join(args)} failed:\n{run.output[-2000:]}")
    return dict(seconds=run.seconds, peak_rss_mb=run.peak_rss_mb, run_dir=str(run_dir))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    try:
        text += f", load average {os.getloadavg()[0]:.1f} at start"
    except OSError:
        pass
    return text


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def write_report(out: Path, stem: str, report: dict, render) -> None:
    """``<stem>.json`` (everything measured, and where it came from: ``provenance``) and ``<stem>.md``
    (the rendered tables and the provenance line), printed too."""
    from _common import describe_provenance, provenance

    report.setdefault("provenance", provenance())
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = render(report) + "\n\n" + describe_provenance(report["provenance"])
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)
