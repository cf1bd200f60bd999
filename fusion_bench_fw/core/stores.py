"""Vertex stores: read-only access to the pool's checkpoints, one tensor at a time.

The Frank-Wolfe loop never needs a whole candidate model: the LMO pass reads tensor
``key`` of every candidate in turn and the update pass reads only the selected ones.
A store therefore exposes ``tensor(name, key)`` and nothing model-shaped, which is what
lets :class:`SafetensorsVertexStore` keep O(one tensor) of candidate data resident
however many checkpoints the pool holds.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .atomic import atomic_path

Shape = Tuple[int, ...]


class StoreError(ValueError):
    """A checkpoint cannot serve as a vertex (missing key, wrong shape, bad file)."""


class VertexStore:
    """Named checkpoints that share the tensor names ``keys`` and their shapes."""

    names: List[str]
    keys: List[str]

    def tensor(self, name: str, key: str) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def shape(self, key: str) -> Shape:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self, name: str) -> Dict[str, Tensor]:
        """Materialise one whole checkpoint (tests, small pools, exports)."""
        return {k: self.tensor(name, k) for k in self.keys}

    def __contains__(self, name: str) -> bool:
        return name in self.names


def _check_names(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise StoreError(f"duplicate checkpoint names in store: {list(names)}")


class InMemoryVertexStore(VertexStore):
    """Checkpoints given as ``{name: {key: tensor}}``; tensors are not copied or modified."""

    def __init__(self, models: Mapping[str, Mapping[str, Tensor]], keys: Optional[Sequence[str]] = None):
        if not models:
            raise StoreError("the store is empty: give at least one checkpoint")
        self.names = list(models)
        _check_names(self.names)
        first = models[self.names[0]]
        self.keys = list(keys) if keys is not None else list(first)
        self._models = models
        self._shapes = {}
        for key in self.keys:
            for name in self.names:
                if key not in models[name]:
                    raise StoreError(
                        f"checkpoint {name!r} has no tensor {key!r}; every checkpoint must have the "
                        "same parameter names as the pretrained model"
                    )
                shape = tuple(models[name][key].shape)
                expected = self._shapes.setdefault(key, shape)
                if shape != expected:
                    raise StoreError(
                        f"checkpoint {name!r}: tensor {key!r} has shape {shape}, expected {expected}; "
                        "all checkpoints must share one architecture"
                    )

    def tensor(self, name: str, key: str) -> Tensor:
        return self._models[name][key]

    def shape(self, key: str) -> Shape:
        return self._shapes[key]


class SafetensorsVertexStore(VertexStore):
    """Checkpoints in ``.safetensors`` files, memory-mapped and read tensor by tensor.

    ``key_in_file`` maps a parameter name of the merged module to the tensor name in
    the file (identity by default); construction validates names and shapes from the
    file headers only, so no tensor data is read until :meth:`tensor` asks for it.
    """

    def __init__(
        self,
        paths: Mapping[str, str],
        keys: Sequence[str],
        shapes: Optional[Mapping[str, Shape]] = None,
        key_in_file: Optional[Mapping[str, Mapping[str, str]]] = None,
    ):
        from safetensors import safe_open

        if not paths:
            raise StoreError("the store is empty: give at least one checkpoint")
        self.names = list(paths)
        _check_names(self.names)
        self.keys = list(keys)
        self.paths = dict(paths)
        self._key_in_file = {n: dict((key_in_file or {}).get(n, {})) for n in self.names}
        self._handles = {}
        self._shapes: Dict[str, Shape] = dict(shapes or {})
        for name in self.names:
            path = self.paths[name]
            try:
                handle = safe_open(path, framework="pt", device="cpu")
                available = set(handle.keys())
            except Exception as exc:  # safetensors raises several error types
                raise StoreError(
                    f"checkpoint {name!r}: cannot read safetensors file {path!r} ({exc}); "
                    "the file is missing, truncated or corrupt: re-download or re-save it"
                ) from exc
            self._handles[name] = handle
            for key in self.keys:
                file_key = self._key_in_file[name].get(key, key)
                if file_key not in available:
                    raise StoreError(
                        f"checkpoint {name!r} ({path}) has no tensor {file_key!r}; every checkpoint "
                        "must have the same parameter names as the pretrained model"
                    )
                shape = tuple(handle.get_slice(file_key).get_shape())
                expected = self._shapes.setdefault(key, shape)
                if shape != expected:
                    raise StoreError(
                        f"checkpoint {name!r}: tensor {key!r} has shape {shape}, expected {expected}; "
                        "all checkpoints must share one architecture"
                    )

    def tensor(self, name: str, key: str) -> Tensor:
        return self._handles[name].get_tensor(self._key_in_file[name].get(key, key))

    def shape(self, key: str) -> Shape:
        return self._shapes[key]


class CompositeVertexStore(VertexStore):
    """Several stores seen as one (e.g. streamed candidates plus an in-memory init)."""

    def __init__(self, stores: Iterable[VertexStore]):
        self._stores = list(stores)
        self.keys = list(self._stores[0].keys)
        self._owner: Dict[str, VertexStore] = {}
        for store in self._stores:
            if set(store.keys) != set(self.keys):
                raise StoreError("stores to combine must hold the same tensor names")
            for key in self.keys:
                if store.shape(key) != self._stores[0].shape(key):
                    raise StoreError(f"tensor {key!r} has different shapes in the combined stores")
            for name in store.names:
                if name in self._owner:
                    raise StoreError(f"checkpoint {name!r} appears in two stores")
                self._owner[name] = store
        self.names = list(self._owner)

    def tensor(self, name: str, key: str) -> Tensor:
        return self._owner[name].tensor(name, key)

    def shape(self, key: str) -> Shape:
        return self._stores[0].shape(key)


def save_safetensors_atomic(tensors: Mapping[str, Tensor], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` to ``path`` through a temporary file and a rename, so a crash never
    leaves a half-written checkpoint under the final name."""
    from safetensors.torch import save_file

    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def spill_to_safetensors(
    names: Sequence[str],
    load: Callable[[str], Mapping[str, Tensor]],
    keys: Sequence[str],
    directory: str,
) -> SafetensorsVertexStore:
    """Write each checkpoint to ``directory/<name>.safetensors``, one model in memory at a
    time, and return a streaming store over the files. Existing files are reused."""
    paths = {}
    for name in names:
        path = os.path.join(directory, f"{name.replace(os.sep, '_')}.safetensors")
        if not os.path.exists(path):
            state = load(name)
            missing = [k for k in keys if k not in state]
            if missing:
                raise StoreError(
                    f"checkpoint {name!r} has no tensor {missing[0]!r} ({len(missing)} missing); "
                    "every checkpoint must have the same parameter names as the pretrained model"
                )
            save_safetensors_atomic({k: state[k] for k in keys}, path)
            del state
        paths[name] = path
    return SafetensorsVertexStore(paths, keys)

