"""Vertex stores: the streamed safetensors store merges exactly like the in-memory one,
and bad checkpoints are refused with an error naming the model and the tensor."""

import os

import pytest
import torch
from toy import SHAPES, TEXTBOOK_SOFT_RULES, QuadraticObjective, random_pool, solve, write_pool

from fusion_bench_fw.core import FrankWolfeConfig
from fusion_bench_fw.core.stores import (
    CompositeVertexStore,
    InMemoryVertexStore,
    SafetensorsVertexStore,
    StoreError,
    spill_to_safetensors,
)


@pytest.mark.parametrize("variant,granularity", [("hard", "layer"), ("hard", "task"), ("soft", "task")])
def test_safetensors_store_gives_the_same_merge_as_in_memory(tmp_path, variant, granularity):
    models = random_pool(5, SHAPES, seed=3)
    names = [f"m{i}" for i in range(5)]
    target = {k: 0.5 * models["m1"][k] + 0.5 * models["m3"][k] for k in SHAPES}
    soft = {**TEXTBOOK_SOFT_RULES, "inner_steps": 5, "k": 2} if variant == "soft" else {}
    config = FrankWolfeConfig.build(variant, granularity=granularity, max_iters=4, **soft)
    init = {"_pretrained_": 0.1, **{n: 0.18 for n in names}}
    memory = solve(QuadraticObjective(target), InMemoryVertexStore(models), names, init, config, progress=False)
    disk_store = SafetensorsVertexStore(write_pool(models, tmp_path), list(SHAPES))
    disk = solve(QuadraticObjective(target), disk_store, names, init, config, progress=False)
    for key in SHAPES:
        assert torch.equal(memory.params[key], disk.params[key])
    assert [r.selected for r in memory.history.iterations] == [r.selected for r in disk.history.iterations]


def test_safetensors_store_reads_one_tensor_without_loading_the_rest(tmp_path):
    models = random_pool(2, SHAPES, seed=1)
    store = SafetensorsVertexStore(write_pool(models, tmp_path), list(SHAPES))
    assert torch.equal(store.tensor("m1", "layer0.bias"), models["m1"]["layer0.bias"])
    assert store.shape("layer1.weight") == SHAPES["layer1.weight"]


def test_truncated_file_is_refused_with_the_model_name(tmp_path):
    models = random_pool(2, SHAPES, seed=1)
    paths = write_pool(models, tmp_path)
    data = open(paths["m0"], "rb").read()
    with open(paths["m0"], "wb") as f:
        f.write(data[: len(data) // 3])
    with pytest.raises(StoreError, match=r"'m0'.*(truncated|corrupt)"):
        SafetensorsVertexStore(paths, list(SHAPES))


def test_missing_tensor_and_wrong_shape_are_refused(tmp_path):
    models = random_pool(2, SHAPES, seed=1)
    broken = dict(models)
    broken["m1"] = {k: v for k, v in models["m1"].items() if k != "layer0.bias"}
    with pytest.raises(StoreError, match=r"'m1'.*'layer0.bias'"):
        InMemoryVertexStore(broken)
    with pytest.raises(StoreError, match=r"'m1'.*'layer0.bias'"):
        SafetensorsVertexStore(write_pool(broken, tmp_path), list(SHAPES))
    reshaped = dict(models)
    reshaped["m0"] = {**models["m0"], "layer1.weight": torch.zeros(6, 3)}
    with pytest.raises(StoreError, match=r"'m0'.*'layer1.weight'.*shape"):
        InMemoryVertexStore(reshaped)


def test_spill_writes_each_model_once_and_reuses_the_cache(tmp_path):
    models = random_pool(3, SHAPES, seed=2)
    loads = []

    def load(name):
        loads.append(name)
        return models[name]

    names = list(models)
    store = spill_to_safetensors(names, load, list(SHAPES), str(tmp_path))
    assert loads == names
    again = spill_to_safetensors(names, load, list(SHAPES), str(tmp_path))
    assert loads == names  # nothing reloaded
    for name in names:
        for key in SHAPES:
            assert torch.equal(again.tensor(name, key), models[name][key])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    assert isinstance(store, SafetensorsVertexStore)


def test_composite_store_rejects_duplicate_names():
    models = random_pool(1, SHAPES, seed=0)
    a = InMemoryVertexStore({"x": models["m0"]})
    with pytest.raises(StoreError, match="'x'"):
        CompositeVertexStore([a, InMemoryVertexStore({"x": models["_pretrained_"]})])
