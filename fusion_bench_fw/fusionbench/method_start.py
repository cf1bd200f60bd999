"""FW from any merge: ``method.init=<a FusionBench merging method>`` runs that method on the pool
inside the FW run and starts from its merge.

``init=tsv_m`` (or ``ties_merging``, ``wudi``, ``iso_c``, ``iso_cts``, ``simple_average``, or any
config name under FusionBench's ``method/`` such as ``task_singular_vector/TaskSingularVectorMerging``)
composes that method's config exactly as ``fusion_bench method=<name>`` would, applies
``method.init_options`` over it, instantiates it with FusionBench's ``instantiate`` and runs it on
the same model pool. Its merged model is written once, atomically, to the run's cache folder
(keyed by the method, its resolved options and the pool's models, so a resumed run reuses it) and
the run then starts from that file exactly as ``init=file`` does: FW refines the merge with its
labelled samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# short names for FusionBench's config paths (any other config name under method/ works as is)
METHOD_ALIASES = {
    "tsv_m": "task_singular_vector/TaskSingularVectorMerging",
    "iso_c": "isotropic_merging/iso_c",
    "iso_cts": "isotropic_merging/iso_cts",
    "wudi": "wudi/wudi",
}
# methods that adapt on the task pool's unlabelled test images: a start from them uses test data
USES_TEST_DATA = ("adamerging", "surgery")


def method_config_name(init: str) -> str:
    return METHOD_ALIASES.get(init, init)


def _config_dirs() -> list[Path]:
    """FusionBench's config folder and this plugin's: where ``method=<name>`` is looked up."""
    from hydra_plugins.fusion_bench_fw.searchpath import fusion_bench_config_dir, plugin_config_dir

    return [Path(d) for d in (fusion_bench_config_dir(), plugin_config_dir()) if d]


def is_method(init: str) -> bool:
    """Whether ``init`` names a method config FusionBench's CLI would find (``method/<name>.yaml``)."""
    name = method_config_name(init)
    return any((d / "method" / f"{name}.yaml").is_file() for d in _config_dirs())


def compose_method(init: str, options: Mapping | None = None):
    """The method's config as ``fusion_bench method=<name>`` composes it, ``options`` merged over it."""
    from omegaconf import OmegaConf

    from hydra_plugins.fusion_bench_fw.searchpath import compose_fusion_bench

    method = compose_fusion_bench([f"method={method_config_name(init)}"]).method
    if options:
        method = OmegaConf.merge(method, OmegaConf.create(dict(options)))
    return method


def merge_start(modelpool, init: str, options: Mapping | None, cache_dir: str) -> str:
    """Run ``init``'s FusionBench method on ``modelpool`` once; the path of its merged weights."""
    from fusion_bench.utils import instantiate
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from fusion_bench_fw.core.atomic import atomic_path

    config = compose_method(init, options)
    resolved = OmegaConf.to_container(config, resolve=True)
    key = hashlib.sha256(
        json.dumps({"method": resolved, "models": list(modelpool.model_names)}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    path = os.path.join(cache_dir, "starts", f"{init.replace('/', '_')}-{key}.safetensors")
    if os.path.isfile(path):
        log.info("start: %s's merge from %s (computed earlier with the same options)", init, path)
        return path
    if any(word in method_config_name(init).lower() for word in USES_TEST_DATA):
        log.warning("init=%s adapts on the task pool's unlabelled test images: the start uses test data", init)
    log.info("start: running FusionBench's method=%s on the pool (%s)", method_config_name(init), resolved)
    merged = instantiate(config).run(modelpool)
    if not hasattr(merged, "state_dict"):
        raise ValueError(f"init={init}: the method returned {type(merged).__name__}, not a merged model")
    state = {k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, tmp)
    return path
