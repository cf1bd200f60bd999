"""FusionBench's OpenCLIP vision pool whose checkpoints load with torch 2.6 and later (importing
this module needs open_clip; :mod:`.openclip` does not)."""

from __future__ import annotations

from fusion_bench_fw.compat import typing_override

typing_override()  # FusionBench's OpenCLIP pool module needs typing.override (Python 3.12+)

from fusion_bench.modelpool import OpenCLIPVisionModelPool as _FusionBenchOpenCLIPVisionModelPool  # noqa: E402

from .openclip import load_pool_encoder  # noqa: E402


class OpenCLIPVisionModelPool(_FusionBenchOpenCLIPVisionModelPool):
    """FusionBench's ``OpenCLIPVisionModelPool`` (same arguments), its checkpoints readable.

    FusionBench 0.2.33 reads a path or ``pickle_path`` entry with ``torch.load(weights_only=True)`` and
    falls back to ``pickle.load`` only on a ``RuntimeError``; torch 2.6 and later refuse a pickled
    module with an ``UnpicklingError``, so none of the Task Arithmetic paper's checkpoints loads.
    Here those entries are read by :func:`.openclip.load_encoder` (the same objects; one clear error
    for a missing or broken file, or a checkpoint of another open_clip model); the rest is FusionBench's.
    """

    def load_model(self, model_name_or_config, *args, **kwargs):
        if isinstance(model_name_or_config, str) and model_name_or_config in self._models:
            encoder = load_pool_encoder(self, model_name_or_config)
            if encoder is not None:
                return encoder
        return super().load_model(model_name_or_config, *args, **kwargs)
