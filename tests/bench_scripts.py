"""The scripts of benchmarks/ as modules, for tests (their folder on sys.path while they import)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def on_tmpfs(path) -> bool:
    """Whether ``path`` lies on tmpfs, whose pages are the file itself: posix_fadvise cannot evict them."""
    path, best, fstype = os.path.realpath(path), "", ""
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, kind, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, kind
    return fstype == "tmpfs"
