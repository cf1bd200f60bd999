"""Vertex stores: read-only access to the pool's checkpoints, one tensor at a time.

The Frank-Wolfe loop never needs a whole candidate model: the LMO pass reads tensor
``key`` of every candidate in turn and the update pass reads only the selected ones.
A store therefore exposes ``tensor(name, key)`` and nothing model-shaped, which is what
lets :class:`SafetensorsVertexStore` keep O(one tensor) of candidate data resident
however many checkpoints the pool holds.
"""

from __future__ import annotations

import collections
import json
import math
import mmap
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .atomic import atomic_path

Shape = tuple[int, ...]


class StoreError(ValueError):
    """A checkpoint cannot serve as a vertex (missing key, wrong shape, bad file)."""


class VertexStore:
    """Named checkpoints that share the tensor names ``keys`` and their shapes."""

    names: list[str]
    keys: list[str]

    def tensor(self, name: str, key: str) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def shape(self, key: str) -> Shape:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self, name: str) -> dict[str, Tensor]:
        """Materialise one whole checkpoint (tests, small pools, exports)."""
        return {k: self.tensor(name, k) for k in self.keys}

    def parts(self, name: str, key: str):
        """Tensor ``key`` of ``name`` in factored form (a :class:`~.lora_store.LowRank`), or None
        when the store only has it whole. The LMO scores factored vertices without forming them."""
        return None

    def source(self, name: str) -> str | None:
        """The one file ``name`` is read from, for caches kept beside it (None: not one file)."""
        return None

    def distance_sq(self, name: str, key: str, reference: Tensor | None = None) -> float:
        """||tensor - reference||^2 in float64 (0 without a reference), after checking that the
        tensor is finite: the pool's NaN/Inf check and distances in one read."""
        t = self.tensor(name, key)
        check_finite_tensor(name, key, t)
        return 0.0 if reference is None else float(torch.sum((t.double() - reference.double()) ** 2))

    def __contains__(self, name: str) -> bool:
        return name in self.names


def check_finite_tensor(name: str, key: str, t: Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise StoreError(
            f"checkpoint {name!r}: tensor {key!r} contains NaN or Inf values; "
            "remove this model from the pool or repair its weights"
        )


def _check_names(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise StoreError(f"duplicate checkpoint names in store: {list(names)}")


class InMemoryVertexStore(VertexStore):
    """Checkpoints given as ``{name: {key: tensor}}``; tensors are not copied or modified."""

    def __init__(self, models: Mapping[str, Mapping[str, Tensor]], keys: Sequence[str] | None = None):
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


def read_safetensors_header(path: str) -> tuple[int, dict[str, dict]]:
    """``(data_start, {name: {"dtype", "shape", "data_offsets"}})`` from the file header alone,
    checking that every tensor's bytes lie inside the file (a truncated file fails here)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("shorter than the 8-byte header length")
        n = int.from_bytes(prefix, "little")
        if n > size - 8:
            raise ValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data_start = 8 + n
    for key, info in header.items():
        begin, stop = info["data_offsets"]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {key!r} has unsupported dtype {info['dtype']!r}")
        expected = math.prod(info["shape"]) * _SAFETENSORS_DTYPES[info["dtype"]].itemsize
        if stop - begin != expected or data_start + stop > size:
            raise ValueError(f"tensor {key!r} lies outside the file or has the wrong byte count")
    return data_start, header


class UnreadableCheckpointError(StoreError):
    """A checkpoint file that cannot be read (missing, truncated, corrupt): ``name``, ``path`` and the
    error as attributes, so that a caller that knows where the file came from can say how to fix it."""

    def __init__(self, name: str, path: str, cause: BaseException):
        self.name, self.path, self.cause = name, path, cause
        fix = "re-download or re-save it" if os.path.exists(path) else "the file does not exist"
        super().__init__(
            f"checkpoint {name!r}: cannot read safetensors file {path!r} ({type(cause).__name__}: {cause}); {fix}"
        )


Header = tuple[int, dict[str, dict]]  # read_safetensors_header's (data start, tensor entries)


def checkpoint_header(name: str, path: str) -> Header:
    """:func:`read_safetensors_header`, failing with an :class:`UnreadableCheckpointError`."""
    try:
        return read_safetensors_header(path)
    except Exception as exc:  # OSError, bad JSON, bad offsets
        raise UnreadableCheckpointError(name, path, exc) from exc


class SafetensorsVertexStore(VertexStore):
    """Checkpoints in ``.safetensors`` files, memory-mapped and read tensor by tensor.

    ``tensor()`` returns a zero-copy view of the mapped file (no allocation, no copy: the
    LMO reads candidate bytes straight from the page cache). Mapped pages count towards
    the process's resident memory, so the store drops the mapping of all but the last
    ``resident_tensors`` tensors it returned (``madvise(MADV_DONTNEED)``): older views stay
    valid, their pages are simply faulted in again on access, and resident candidate data
    stays O(one tensor) however many checkpoints are streamed. Returned tensors are
    read-only by contract (the mapping is private: writes never reach the file and are
    dropped with the pages).

    ``key_in_file`` maps a parameter name of the merged module to the tensor name in
    the file (identity by default); construction validates names and shapes from the
    file headers only (``headers``: those already read, by checkpoint name), so no tensor
    data is read until :meth:`tensor` asks for it.
    """

    def __init__(
        self,
        paths: Mapping[str, str],
        keys: Sequence[str],
        shapes: Mapping[str, Shape] | None = None,
        key_in_file: Mapping[str, Mapping[str, str]] | None = None,
        resident_tensors: int = 2,
        headers: Mapping[str, Header] | None = None,
    ):
        if not paths:
            raise StoreError("the store is empty: give at least one checkpoint")
        self.names = list(paths)
        _check_names(self.names)
        self.keys = list(keys)
        self.paths = dict(paths)
        self._key_in_file = {n: dict((key_in_file or {}).get(n, {})) for n in self.names}
        self._maps: dict[str, mmap.mmap] = {}
        self._entries: dict[str, dict[str, tuple]] = {}
        self._resident: collections.deque[tuple[str, int, int]] = collections.deque()
        self._resident_max = max(1, int(resident_tensors))
        self._shapes: dict[str, Shape] = dict(shapes or {})
        for name in self.names:
            path = self.paths[name]
            data_start, header = (headers or {}).get(name) or checkpoint_header(name, path)
            entries = {}
            for key in self.keys:
                file_key = self._key_in_file[name].get(key, key)
                if file_key not in header:
                    raise StoreError(
                        f"checkpoint {name!r} ({path}) has no tensor {file_key!r}; every checkpoint "
                        "must have the same parameter names as the pretrained model"
                    )
                info = header[file_key]
                shape = tuple(info["shape"])
                expected = self._shapes.setdefault(key, shape)
                if shape != expected:
                    raise StoreError(
                        f"checkpoint {name!r}: tensor {key!r} has shape {shape}, expected {expected}; "
                        "all checkpoints must share one architecture"
                    )
                begin, stop = info["data_offsets"]
                entries[key] = (_SAFETENSORS_DTYPES[info["dtype"]], shape, data_start + begin, data_start + stop)
            self._entries[name] = entries
            with open(path, "rb") as f:
                self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def tensor(self, name: str, key: str) -> Tensor:
        dtype, shape, begin, stop = self._entries[name][key]
        count = (stop - begin) // dtype.itemsize
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = self._maps[name]
        if begin % dtype.itemsize:  # misaligned in the file: copy instead of viewing
            return torch.frombuffer(bytearray(buffer[begin:stop]), dtype=dtype).reshape(shape)
        view = torch.frombuffer(buffer, dtype=dtype, count=count, offset=begin).reshape(shape)
        self._track(name, begin, stop)
        return view

    def _track(self, name: str, begin: int, stop: int) -> None:
        """Remember the window just handed out; unmap the oldest beyond ``resident_tensors``."""
        self._resident.append((name, begin, stop))
        while len(self._resident) > self._resident_max:
            self.release(*self._resident.popleft())

    def release(self, name: str, begin: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of ``[begin, stop)`` of ``name`` (all of it by default)."""
        buffer = self._maps[name]
        stop = len(buffer) if stop is None else stop
        if not hasattr(buffer, "madvise") or stop <= begin:
            return
        start = begin - begin % mmap.PAGESIZE
        buffer.madvise(mmap.MADV_DONTNEED, start, min(len(buffer), stop) - start)

    def source(self, name: str) -> str | None:
        return self.paths[name]

    def release_all(self) -> None:
        for name in self.names:
            self.release(name)
        self._resident.clear()

    def shape(self, key: str) -> Shape:
        return self._shapes[key]


class CompositeVertexStore(VertexStore):
    """Several stores seen as one (e.g. streamed candidates plus an in-memory init)."""

    def __init__(self, stores: Iterable[VertexStore]):
        self._stores = list(stores)
        self.keys = list(self._stores[0].keys)
        self._owner: dict[str, VertexStore] = {}
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

    def parts(self, name: str, key: str):
        return self._owner[name].parts(name, key)

    def source(self, name: str) -> str | None:
        return self._owner[name].source(name)

    def distance_sq(self, name: str, key: str, reference: Tensor | None = None) -> float:
        return self._owner[name].distance_sq(name, key, reference)

    def shape(self, key: str) -> Shape:
        return self._stores[0].shape(key)


def save_safetensors_atomic(tensors: Mapping[str, Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
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
