"""What the offline benchmark builders (:mod:`.minibench`, :mod:`.textbench`) share: cache keys,
torch's thread count, the manifest, the ``build|configs`` CLI and the task-vector diagnostics."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
from dataclasses import replace

# the repository-root config/ folder (this file is fusion_bench_fw/offline/builds.py)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "config")


# --------------------------------------------------------------------------------------------
# Cache keys: each model folder holds build_key.txt, a digest of everything the model depends on
# --------------------------------------------------------------------------------------------


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_matches(model_dir: str, key: str) -> bool:
    try:
        with open(os.path.join(model_dir, "build_key.txt")) as f:
            return f.read().strip() == key and os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    except OSError:
        return False


def write_key(model_dir: str, key: str):
    with open(os.path.join(model_dir, "build_key.txt"), "w") as f:
        f.write(key + "\n")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's thread count set to ``n`` for a build, restored after (the builds are in-process)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------
# The manifest, and the task-vector diagnostics it records
# --------------------------------------------------------------------------------------------


def write_manifest(root: str, manifest: dict, name: str = "manifest.json") -> None:
    """``root/<name>``, written whole or not at all (a killed build leaves the old one)."""
    tmp = os.path.join(root, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(root, name))


def read_manifest(root: str, name: str = "manifest.json") -> dict | None:
    """``root/<name>``, or None when it is missing or unreadable."""
    try:
        with open(os.path.join(root, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def flat(model):
    """Every floating-point tensor of ``model``'s state dict, flattened into one float64 vector."""
    import torch

    return torch.cat([p.detach().flatten().double() for p in model.state_dict().values() if p.is_floating_point()])


def task_vector_diagnostics(task_vectors: dict, theta0) -> dict:
    """The regime in two figures: each ||tau|| / ||theta_0||, and the task vectors' pairwise cosines."""
    import torch

    names = list(task_vectors)
    if not names:
        return {"norm_ratio": {}, "names": [], "cosine": []}
    tv = torch.stack([task_vectors[n] for n in names])
    unit = tv / tv.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return {
        "norm_ratio": {n: round(float(v.norm() / theta0.norm()), 5) for n, v in zip(names, tv)},
        "names": names,
        "cosine": [[round(float(c), 4) for c in row] for row in (unit @ unit.t())],
    }


# --------------------------------------------------------------------------------------------
# CLI and generated plugin configs
# --------------------------------------------------------------------------------------------


def write_configs(config_dir: str, rendered: dict[str, str]) -> list[str]:
    """Write ``rendered`` (``{relative path: yaml text}``, a builder's ``render_configs()``) under ``config_dir``."""
    written = []
    for rel, text in rendered.items():
        path = os.path.join(config_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


def builder_cli(argv, name: str, env_var: str, defaults, quick: dict, render, more_options=None):
    """``python -m fusion_bench_fw.offline.<name> build|configs``, as the offline benchmarks share it:
    None once ``configs`` has written ``render()``, else ``(args, the build's params)``.
    ``more_options(parser)`` adds a builder's own options to ``build``."""
    parser = argparse.ArgumentParser(prog=f"python -m fusion_bench_fw.offline.{name}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help=f"build (or reuse) the {name} benchmark")
    b.add_argument(
        "--root", default=None, help=f"output folder (default ${env_var} or ~/.cache/fusion_bench_fw/{name})"
    )
    b.add_argument("--quick", action="store_true", help="small sizes and few steps (tests, CI)")
    b.add_argument("--force", action="store_true", help="rebuild every model")
    b.add_argument("--no-progress", action="store_true")
    fields = list(type(defaults).__dataclass_fields__)
    for field in fields:
        b.add_argument("--" + field.replace("_", "-"), type=type(getattr(defaults, field)), default=None)
    if more_options is not None:
        more_options(b)
    c = sub.add_parser("configs", help=f"(re)write the {name} plugin configs")
    c.add_argument("--out", default=CONFIG_DIR)
    args = parser.parse_args(argv)
    if args.command == "configs":
        for path in write_configs(args.out, render()):
            print(path)
        return None
    overrides = dict(quick) if args.quick else {}
    overrides.update({f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    return args, replace(defaults, **overrides)
