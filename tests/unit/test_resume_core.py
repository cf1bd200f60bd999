"""Core resume: a run interrupted mid-iteration and resumed from its checkpoint ends
bit-identical to an uninterrupted run (the CLI kill test lives with the reliability tests)."""

import pytest
import torch
from toy import SHAPES, TEXTBOOK_SOFT_RULES, QuadraticObjective, random_pool, solve

from fusion_bench_fw.core import FrankWolfeConfig, HardConfig
from fusion_bench_fw.core.stores import InMemoryVertexStore


class Killed(Exception):
    pass


class DiesAfter(QuadraticObjective):
    """Raises on the n-th gradient call: an interruption in the middle of an iteration."""

    def __init__(self, target, die_at):
        super().__init__(target)
        self.die_at = die_at

    def loss_and_grad(self, params, per_task=False):
        if self.calls + 1 == self.die_at:
            raise Killed
        return super().loss_and_grad(params, per_task)


@pytest.mark.parametrize("variant,granularity", [("hard", "layer"), ("soft", "task")])
def test_interrupted_run_resumes_to_the_same_merge(tmp_path, variant, granularity):
    models = random_pool(5, SHAPES, seed=11)
    store = InMemoryVertexStore(models)
    names = [f"m{i}" for i in range(5)]
    target = {k: 0.3 * models["m0"][k] + 0.7 * models["m4"][k] for k in SHAPES}
    soft = {**TEXTBOOK_SOFT_RULES, "inner_steps": 4, "k": 2} if variant == "soft" else {}
    config = FrankWolfeConfig.build(variant, granularity=granularity, max_iters=6, **soft)
    init = {"_pretrained_": -0.5, **{n: 0.3 for n in names}}
    full = solve(QuadraticObjective(target), store, names, init, config, progress=False)

    ckpt = str(tmp_path / "fw_state.safetensors")
    calls_per_iter = 1 + (config.inner_steps if variant == "soft" else 0)
    with pytest.raises(Killed):
        solve(
            DiesAfter(target, die_at=3 * calls_per_iter + 2),
            store,
            names,
            init,
            config,
            progress=False,
            checkpoint_path=ckpt,
        )
    resumed_objective = QuadraticObjective(target)
    resumed = solve(resumed_objective, store, names, init, config, progress=False, checkpoint_path=ckpt, resume=True)
    assert len(resumed.history.iterations) == 6
    assert resumed_objective.calls < 6 * calls_per_iter  # it really started from the checkpoint
    for key in SHAPES:
        assert torch.equal(full.params[key], resumed.params[key])
    assert torch.equal(full.coefficients, resumed.coefficients)
    assert [r.selected for r in full.history.iterations] == [r.selected for r in resumed.history.iterations]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    models = random_pool(3, SHAPES, seed=1)
    store = InMemoryVertexStore(models)
    names = ["m0", "m1", "m2"]
    target = models["m0"]
    ckpt = str(tmp_path / "state.safetensors")
    solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(max_iters=2),
        progress=False,
        checkpoint_path=ckpt,
    )
    with pytest.raises(ValueError, match="granularity"):
        solve(
            QuadraticObjective(target),
            store,
            names,
            {"_pretrained_": 1.0},
            HardConfig(max_iters=4, granularity="task"),
            progress=False,
            checkpoint_path=ckpt,
            resume=True,
        )


def test_resume_refuses_other_run_options_and_names_them(tmp_path):
    """What the caller ran around the solver (FWHard/FWSoft: targets, samples, seed, start...) must
    match too: a resume under another n_per_task is refused with the option and both values; only
    the world size may change."""
    models = random_pool(3, SHAPES, seed=1)
    store, names, target = InMemoryVertexStore(models), ["m0", "m1", "m2"], models["m0"]
    ckpt = str(tmp_path / "state.safetensors")
    record = {"n_per_task": 100, "targets": ["a"], "world_size": 1}
    common = dict(progress=False, checkpoint_path=ckpt)
    solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(max_iters=2),
        run_record=record,
        **common,
    )
    with pytest.raises(ValueError, match=r"other run options \(n_per_task: 100 then, 32 now\)"):
        solve(
            QuadraticObjective(target),
            store,
            names,
            {"_pretrained_": 1.0},
            HardConfig(max_iters=4),
            run_record={**record, "n_per_task": 32},
            resume=True,
            **common,
        )
    resumed = solve(
        QuadraticObjective(target),
        store,
        names,
        {"_pretrained_": 1.0},
        HardConfig(max_iters=4),
        run_record={**record, "world_size": 2},
        resume=True,
        **common,
    )
    assert len(resumed.history.iterations) == 4 and resumed.history.extra["world_size"] == 2
