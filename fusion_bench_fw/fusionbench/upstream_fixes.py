"""Work-arounds for bugs in FusionBench 0.2.33's own methods, so that the leaderboard can run them.

Each fix is a subclass that changes only what the bug needs; the algorithm is FusionBench's.
"""

from __future__ import annotations

from bidict import bidict
from fusion_bench.method.regmean_plusplus.clip_regmean_plusplus import RegMeanAlgorithmForCLIPPlusPlus
from fusion_bench.method.regmean_plusplus.regmean_plusplus import RegMeanAlgorithmPlusPlus


class RegMeanPlusPlusForCLIP(RegMeanAlgorithmForCLIPPlusPlus):
    """FusionBench's RegMean++ for CLIP, constructible.

    0.2.33 declares ``RegMeanAlgorithmForCLIPPlusPlus._config_mapping`` as a plain dict holding
    only ``dataloader_kwargs``: constructing it raises ``AttributeError: 'dict' object has no
    attribute 'inverse'`` (its serialization mixin expects a bidict with every constructor
    argument). Here the mapping is the parent's bidict plus that entry.
    """

    _config_mapping = bidict({**RegMeanAlgorithmPlusPlus._config_mapping, "_dataloader_kwargs": "dataloader_kwargs"})
