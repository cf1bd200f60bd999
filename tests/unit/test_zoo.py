"""The mini benchmark's model zoo without a build: its checkpoint list, the nested pools the
benchmark draws, the validation oracle, and the fine-tune's snapshot hook (the zoo built and
benchmarked through the CLI: tests/integration/test_zoo_benchmark.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import yaml

from fusion_bench_fw.offline import minibench
from fusion_bench_fw.offline.minibench import zoo


def test_the_full_zoo_holds_every_task_variant_and_the_noise_trained_models():
    models = minibench.zoo_models()
    names = [m.name for m in models]
    assert len(names) == len(set(names)) == 121 >= 100
    variants = Counter(m.variant for m in models)
    assert variants == {"base": 20, "seed": 20, "half": 20, "lr_hi": 20, "lr_lo": 20, "far": 5, "noisy": 16}
    assert {m.spec.base_task for m in models if m.variant == "far"} == set(minibench.ALL_TASKS[::4])
    # every checkpoint of a task trains on its task's data, with its head; variants are named after it
    for m in models:
        if m.run:
            assert m.name == f"{m.spec.name}__{m.variant}" and m.spec.group == "task"
    params = minibench.BuildParams()
    half = next(m for m in models if m.name == "fashion__half")
    seed = next(m for m in models if m.name == "fashion__seed")
    assert half.run == seed.run and half.steps(params) == params.finetune_steps // 2 == seed.steps(params) // 2
    assert seed.seed != half.spec.seed  # another seed; the learning-rate variants keep the task model's
    lr_hi = next(m for m in models if m.name == "fashion__lr_hi")
    assert lr_hi.seed == lr_hi.spec.seed and lr_hi.schedule(params).finetune_lr == 3 * params.finetune_lr


def test_a_smaller_scope_or_fewer_variants_make_a_smaller_zoo_with_another_key():
    small = minibench.ZooParams(minibench.BuildParams(scope="ta8"), ("seed", "half"))
    models = minibench.zoo_models(small)
    assert [m.name for m in models[:3]] == ["fashion", "fashion__seed", "fashion__half"]
    assert len(models) == 8 * 3  # no noise-trained models outside scope all
    assert small.key() != minibench.ZooParams(small.build).key() != minibench.ZooParams().key()
    with pytest.raises(ValueError, match="unknown zoo variants"):
        minibench.ZooParams(variants=("seed", "epochs"))


def test_zoo_configs_and_build_commands():
    name, models, train, test = ("mini_zoo", *minibench.pool_contents()["mini_zoo"][1:])
    assert models == test == [m.name for m in minibench.zoo_models()] and train == list(minibench.ALL_TASKS)
    assert minibench.build_command(["fashion__lr_lo"]).endswith("build --scope all --zoo")
    assert minibench.build_command(models).endswith("build --scope all --zoo")
    assert minibench.build_command(["fashion"]).endswith("build --scope ta8")
    config = yaml.safe_load(minibench.render_configs()[f"modelpool/{name}.yaml"])
    assert config["models"]["fashion__half"].endswith("/models/fashion__half")
    assert config["test_datasets"]["fashion__half"]["dataset_path"].endswith("/data/fashion/test")  # its task's
    assert config["clip_tasks"]["fashion__half"] == config["clip_tasks"]["fashion"]


def _manifest(tasks=("a", "b", "c"), per_task=4, noisy=3, seed=0) -> dict:
    models = {}
    for t in tasks:
        for k in range(per_task):
            models[f"{t}__{k}"] = {"group": "task" if k == 0 else "zoo", "task": t, "variant": str(k)}
    models.update({f"noisy{k}": {"group": "noisy", "task": f"noisy{k}", "variant": "noisy"} for k in range(noisy)})
    return {"models": models, "tasks": list(tasks), "order": zoo.nested_order(models, tasks, seed)}


def test_nested_pools_hold_every_task_and_grow_by_prefix():
    m = _manifest()
    order = m["order"]
    assert sorted(order) == sorted(m["models"])  # every checkpoint once
    first = order[: len(m["tasks"])]
    assert [m["models"][n]["task"] for n in first] == m["tasks"]  # one per task, never a noise-trained one
    pools = [minibench.nested_pool(m, n) for n in (3, 7, len(order))]
    for small, large in zip(pools, pools[1:]):
        assert large[: len(small)] == small
    assert _manifest()["order"] == order and _manifest(seed=1)["order"] != order  # fixed by the seed
    with pytest.raises(ValueError, match="pool size 2"):
        minibench.nested_pool(m, 2)  # fewer than the tasks: some task would have no checkpoint
    with pytest.raises(ValueError):
        minibench.nested_pool(m, len(order) + 1)


def test_the_oracle_picks_by_validation_never_test():
    m = _manifest(("a", "b"), per_task=3)
    vals = {"a__0": 0.5, "a__1": 0.7, "a__2": 0.7, "b__0": 0.9, "b__1": 0.2, "b__2": 0.1}
    for name, info in m["models"].items():
        info["own_val_accuracy"] = vals.get(name, 1.0)  # the noise-trained ones score best on their own
        info["own_test_accuracy"] = 1.0 - info["own_val_accuracy"]
    assert minibench.oracle(m, ["a", "b"]) == {"a": "a__1", "b": "b__0"}  # a tie: the first
    with pytest.raises(ValueError, match="no checkpoint of c"):
        minibench.oracle(m, ["c"])


def test_the_snapshot_hook_sees_every_step_and_changes_nothing():
    """A fine-tune watched by ``on_step`` ends exactly as one that is not (the zoo's snapshots are free)."""
    import torch

    from fusion_bench_fw.offline.minibench.builder import Kit
    from fusion_bench_fw.offline.minibench.training import make_model
    from fusion_bench_fw.offline.tiny_clip import make_processor

    params = replace(
        minibench.BuildParams(**minibench.QUICK), vision_hidden=16, vision_layers=1, finetune_steps=4, batch_size=8
    )
    torch.manual_seed(0)
    processor = make_processor()
    kit = Kit(make_model(processor, params).eval(), processor)
    spec = minibench.model_specs()[0]
    x = torch.rand(32, 3, 32, 32)
    y = torch.randint(len(spec.task.classnames), (32,))
    seen = []
    watched = kit.finetune(spec, x, y, 7, params, on_step=lambda step, vm: seen.append(step))
    plain = kit.finetune(spec, x, y, 7, params)
    assert seen == [1, 2, 3, 4]
    for a, b in zip(watched.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
