"""Work-arounds for bugs and narrow types in FusionBench 0.2.33's own methods, so that the
leaderboard can run them.

Each fix is a subclass that changes only what it needs; the algorithm is FusionBench's.
"""

from __future__ import annotations

from bidict import bidict
from fusion_bench.method import RegMeanAlgorithmForGPT2
from fusion_bench.method.regmean_plusplus.clip_regmean_plusplus import RegMeanAlgorithmForCLIPPlusPlus
from fusion_bench.method.regmean_plusplus.regmean_plusplus import RegMeanAlgorithmPlusPlus
from torch import nn


class RegMeanPlusPlusForCLIP(RegMeanAlgorithmForCLIPPlusPlus):
    """FusionBench's RegMean++ for CLIP, constructible.

    0.2.33 declares ``RegMeanAlgorithmForCLIPPlusPlus._config_mapping`` as a plain dict holding
    only ``dataloader_kwargs``: constructing it raises ``AttributeError: 'dict' object has no
    attribute 'inverse'`` (its serialization mixin expects a bidict with every constructor
    argument). Here the mapping is the parent's bidict plus that entry.
    """

    _config_mapping = bidict({**RegMeanAlgorithmPlusPlus._config_mapping, "_dataloader_kwargs": "dataloader_kwargs"})


class RegMeanForSequenceClassification(RegMeanAlgorithmForGPT2):
    """FusionBench's GPT-2 RegMean for any backbone pool whose tasks keep their own heads
    (:class:`~fusion_bench_fw.SequenceClassificationBackbonePool`: BERT, RoBERTa, MiniLM).

    0.2.33 ties it to GPT-2: it merges only ``Conv1D`` layers and plugs the backbone into
    ``classifier.transformer``. Here the layers are ``nn.Linear`` (use ``weight_transpose=true``,
    as for CLIP) and the backbone goes into the classifier's own ``base_model_prefix`` attribute.
    """

    _include_module_type = [nn.Linear]

    def on_regmean_start(self):
        self.classifiers = {}
        for name in self.modelpool.model_names:
            classifier = self.modelpool.load_classifier(name).requires_grad_(False)
            setattr(classifier, classifier.base_model_prefix, None)
            self.classifiers[name] = classifier.to(self.fabric.device)

    def compute_logits(self, module, batch, task: str):
        classifier = self.classifiers[task]
        setattr(classifier, classifier.base_model_prefix, module)
        return classifier(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
