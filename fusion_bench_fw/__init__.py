"""FW-Merging (Frank-Wolfe model merging) as a FusionBench plugin.

`fusion_bench_fw.core` is pure PyTorch; the FusionBench adapters are imported lazily
so that `import fusion_bench_fw` stays cheap and the core is usable without FusionBench.
"""

__version__ = "0.1.0"

# The name FusionBench's model pools give the pretrained model (``models._pretrained_``).
PRETRAINED = "_pretrained_"

_LAZY = {
    "FWHard": "fusion_bench_fw.fusionbench.algorithms",
    "FWSoft": "fusion_bench_fw.fusionbench.algorithms",
    "CLIPVisionModelPoolWithTasks": "fusion_bench_fw.fusionbench.modelpool",
    "SequenceClassificationBackbonePool": "fusion_bench_fw.fusionbench.modelpool",
    "OpenCLIPVisionModelPool": "fusion_bench_fw.fusionbench.openclip_pool",  # needs open_clip
}

__all__ = [name for name in _LAZY if name != "OpenCLIPVisionModelPool"]  # that one needs open_clip


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusion_bench_fw' has no attribute {name!r}")
