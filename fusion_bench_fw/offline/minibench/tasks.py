"""The mini benchmark's tasks and models: class names, the 20 tasks (:data:`ALL_TASKS`), how each
task's images and labels derive from a source, and every model of the full build (:func:`model_specs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PARITY = ("even number", "odd number")
SIZE = ("small number", "large number")  # digit < 5 / >= 5
COARSE = ("clothes", "shoes", "bag")
_COARSE_OF = np.array([0, 0, 0, 0, 0, 1, 0, 1, 2, 1])  # fashion label -> clothes/shoes/bag

# The 20 tasks in the order of FusionBench's TA8 / TALL14 / TALL20 pools: TA8 is the first 8,
# TALL14 the first 14, TALL20 all of them; the scaling experiments' targets are the first 4.
ALL_TASKS = (
    "fashion",
    "mnist_inv",
    "fashion_rot90",
    "mnist_parity",
    "mnist",
    "digits",
    "fashion_coarse",
    "fashion_inv_flip",
    # TALL14
    "digits_inv",
    "fashion_rot180",
    "mnist_rot90",
    "fashion_inv",
    "digits_parity",
    "mnist_inv_flip",
    # TALL20
    "fashion_coarse_rot90",
    "digits_rot180",
    "mnist_size",
    "fashion_coarse_inv",
    "digits_size",
    "mnist_parity_inv",
)
TASKS = ALL_TASKS[:8]
TALL14 = ALL_TASKS[:14]
TARGETS = TASKS[:4]


def _perm_pixels(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    perm = np.random.default_rng(seed).permutation(28 * 28)
    return lambda x: x.reshape(len(x), -1)[:, perm].reshape(x.shape)


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": lambda x: x,
    "inv": lambda x: 255 - x,
    "rot90": lambda x: np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))),
    "rot180": lambda x: np.ascontiguousarray(x[:, ::-1, ::-1]),
    "inv_flip": lambda x: np.ascontiguousarray(255 - x[:, :, ::-1]),
}


@dataclass(frozen=True)
class TaskSpec:
    """How a task's images and labels derive from a source."""

    source: str  # fashion | mnist | digits
    transform: str  # a key of TRANSFORMS, or "perm<seed>"
    labels: str  # fine | parity | size | coarse | perm<seed> | random<seed>
    classnames: tuple[str, ...]


BASE_TASKS: dict[str, TaskSpec] = {
    "fashion": TaskSpec("fashion", "id", "fine", FASHION),
    "mnist_inv": TaskSpec("mnist", "inv", "fine", DIGITS),
    "fashion_rot90": TaskSpec("fashion", "rot90", "fine", FASHION),
    "mnist_parity": TaskSpec("mnist", "rot180", "parity", PARITY),
    "mnist": TaskSpec("mnist", "id", "fine", DIGITS),
    "digits": TaskSpec("digits", "id", "fine", DIGITS),
    "fashion_coarse": TaskSpec("fashion", "id", "coarse", COARSE),
    "fashion_inv_flip": TaskSpec("fashion", "inv_flip", "fine", FASHION),
    "digits_inv": TaskSpec("digits", "inv", "fine", DIGITS),
    "fashion_rot180": TaskSpec("fashion", "rot180", "fine", FASHION),
    "mnist_rot90": TaskSpec("mnist", "rot90", "fine", DIGITS),
    "fashion_inv": TaskSpec("fashion", "inv", "fine", FASHION),
    "digits_parity": TaskSpec("digits", "rot90", "parity", PARITY),
    "mnist_inv_flip": TaskSpec("mnist", "inv_flip", "fine", DIGITS),
    "fashion_coarse_rot90": TaskSpec("fashion", "rot90", "coarse", COARSE),
    "digits_rot180": TaskSpec("digits", "rot180", "fine", DIGITS),
    "mnist_size": TaskSpec("mnist", "id", "size", SIZE),
    "fashion_coarse_inv": TaskSpec("fashion", "inv", "coarse", COARSE),
    "digits_size": TaskSpec("digits", "inv_flip", "size", SIZE),
    "mnist_parity_inv": TaskSpec("mnist", "inv", "parity", PARITY),
}
assert tuple(BASE_TASKS) == ALL_TASKS


@dataclass(frozen=True)
class ModelSpec:
    """One fine-tuned model: its task (data + head), data slice and seed."""

    name: str
    group: str  # task | relevant | irrelevant | noisy
    task: TaskSpec
    slice_index: int
    seed: int
    base_task: str  # the task whose data/test set it evaluates on (itself for real tasks)


def model_specs(n_noisy: int = 16) -> list[ModelSpec]:
    """Every model of the full build, in a fixed order (names are stable)."""
    specs: list[ModelSpec] = []
    slices = {"fashion": 0, "mnist": 0, "digits": 0}

    def take(source: str) -> int:
        slices[source] += 1
        return slices[source] - 1

    for i, name in enumerate(ALL_TASKS):
        t = BASE_TASKS[name]
        specs.append(ModelSpec(name, "task", t, take(t.source), 1000 + i, name))
    # relevant: a second checkpoint of every task, a third of the 4 targets (other slice and seed)
    for suffix, names in (("_b", TASKS), ("_c", TARGETS)):
        for name in names:
            t = BASE_TASKS[name]
            specs.append(ModelSpec(name + suffix, "relevant", t, take(t.source), 2000 + len(specs), name))
    # irrelevant: 8 pixel-permuted tasks, 8 label-permuted tasks (learnable, unrelated)
    for k in range(8):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, f"perm{100 + k}", "fine", names)
        specs.append(ModelSpec(f"irr_pixels{k + 1}", "irrelevant", t, take(src), 3000 + k, f"irr_pixels{k + 1}"))
    for k in range(8):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, "id", f"perm{200 + k}", names)
        specs.append(ModelSpec(f"irr_labels{k + 1}", "irrelevant", t, take(src), 3100 + k, f"irr_labels{k + 1}"))
    # noisy: random labels
    for k in range(n_noisy):
        src, names = (("fashion", FASHION), ("mnist", DIGITS))[k % 2]
        t = TaskSpec(src, "id", f"random{300 + k}", names)
        specs.append(ModelSpec(f"noisy{k + 1}", "noisy", t, take(src), 3200 + k, f"noisy{k + 1}"))
    return specs


def task_labels(spec: TaskSpec, y: np.ndarray) -> np.ndarray:
    """The task's labels of images whose source labels are ``y``."""
    if spec.labels == "fine":
        return y
    if spec.labels == "parity":
        return y % 2
    if spec.labels == "size":
        return (y >= 5).astype(np.int64)
    if spec.labels == "coarse":
        return _COARSE_OF[y]
    if spec.labels.startswith("perm"):
        rng = np.random.default_rng(int(spec.labels[4:]))
        perm = rng.permutation(len(spec.classnames))
        while np.any(perm == np.arange(len(perm))):  # a derangement: no class keeps its label
            perm = rng.permutation(len(perm))
        return perm[y]
    if spec.labels.startswith("random"):
        return np.random.default_rng(int(spec.labels[6:])).integers(0, len(spec.classnames), size=len(y))
    raise ValueError(spec.labels)


def task_images(spec: TaskSpec, x: np.ndarray) -> np.ndarray:
    """The task's images: the source images ``x`` in the task's style."""
    if spec.transform.startswith("perm"):
        return _perm_pixels(int(spec.transform[4:]))(x)
    return TRANSFORMS[spec.transform](x)
