"""The hold-out guard (core.guard): its elimination against brute force, and on toys where FW's own
objective is misled toward a noise model, the guard keeps that model out where the unguarded run
lets it in; a guarded run resumes to the same merge."""

import itertools

import pytest
import torch
from toy import QuadraticObjective, solve

from fusion_bench_fw.core import FrankWolfeConfig
from fusion_bench_fw.core.guard import eliminate
from fusion_bench_fw.core.solver import materialise
from fusion_bench_fw.core.stores import InMemoryVertexStore


@pytest.mark.parametrize("seed", range(6))
def test_elimination_on_an_additive_loss_finds_the_brute_force_optimum(seed):
    """Each removal shifts the loss by its own amount: the best subset drops exactly the members whose
    removal does not raise it, and greedy elimination must reach that optimum."""
    g = torch.Generator().manual_seed(seed)
    shift = (torch.randn(7, generator=g, dtype=torch.float64)).tolist()
    shift[seed % 7] = 0.0  # a tie: removal changes nothing, and goes

    def loss(removed):
        return 1.0 + sum(shift[m] for m in removed)

    dropped, final = eliminate(loss, range(7), loss(frozenset()))
    best = min(loss(frozenset(c)) for r in range(8) for c in itertools.combinations(range(7), r))
    assert final == pytest.approx(best, abs=1e-12)
    assert {m for m, _, _ in dropped} == {m for m in range(7) if shift[m] <= 0}


@pytest.mark.parametrize("seed", range(6))
def test_elimination_never_raises_the_loss_on_any_loss(seed):
    """On an arbitrary (non-additive) set function every removal keeps the loss at or below the one before."""
    g = torch.Generator().manual_seed(100 + seed)
    table = {
        frozenset(c): float(torch.rand(1, generator=g)) for r in range(6) for c in itertools.combinations(range(5), r)
    }
    dropped, final = eliminate(table.__getitem__, range(5), table[frozenset()])
    removed, before = frozenset(), table[frozenset()]
    for m, after, at in dropped:
        assert at == before and after <= before and m not in removed
        removed, before = removed | {m}, after
        assert table[removed] == after
    assert final == before <= table[frozenset()]


def misled_toy(seed=3, dim=(40, 30)):
    """Two task models and a noise-trained one (the same pre-trained model, a random update of a task
    vector's size). FW's samples pull toward the noise model's direction too (an overfit: the train
    target has 0.8 of it), the held-out samples do not."""
    g = torch.Generator().manual_seed(seed)
    pre = {"w": torch.randn(dim, generator=g), "b": torch.randn(dim[0], generator=g)}
    models = {"_pretrained_": pre}
    for name in ("task0", "task1", "noise"):
        models[name] = {k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()}
    tau = {n: {k: models[n][k] - pre[k] for k in pre} for n in ("task0", "task1", "noise")}
    holdout_target = {k: pre[k] + 0.5 * tau["task0"][k] + 0.5 * tau["task1"][k] for k in pre}
    train_target = {k: holdout_target[k] + 0.8 * tau["noise"][k] for k in pre}
    return models, train_target, holdout_target


CASES = {
    "hard-line-search": ("hard", dict(granularity="task")),
    "soft-default": ("soft", dict()),
}


def noise_coefficient(result) -> float:
    basis = result.history.basis
    return max(abs(c) for c in result.coefficients[basis.index("noise")].tolist())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("start", ["pretrained", "task_arithmetic"])
def test_the_guard_keeps_a_misleading_noise_model_out(case, start):
    variant, options = CASES[case]
    models, train_target, holdout_target = misled_toy()
    names = ["task0", "task1", "noise"]
    init = {"_pretrained_": 1.0} if start == "pretrained" else {"_pretrained_": 0.1, **{n: 0.3 for n in names}}
    config = FrankWolfeConfig.build(variant, max_iters=6, **options)
    store = InMemoryVertexStore(models)
    holdout = QuadraticObjective(holdout_target)
    plain = solve(QuadraticObjective(train_target), store, names, init, config, progress=False)
    guarded = solve(
        QuadraticObjective(train_target), store, names, init, config, progress=False, holdout_objective=holdout
    )
    # the toy misleads the unguarded run: the noise model is in its merge
    assert noise_coefficient(plain) > 0.05
    # guarded: never in the merge, and held-out loss better than the unguarded run's
    assert noise_coefficient(guarded) == 0.0
    assert holdout.loss(guarded.params) < holdout.loss(plain.params)
    # the start and every step only ever lowered the held-out loss, and the history says what was refused
    history = guarded.history
    assert history.config["holdout_guard"] is True
    start_report = history.extra["guard_start"]
    if start == "task_arithmetic":
        assert [r["model"] for r in start_report["refused"]] == ["noise"]
        assert start_report["kept"] == ["task0", "task1"]
    losses = [r.guard["holdout_here"] for r in history.iterations]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    refused = [x for r in history.iterations for x in r.guard["refused"]]
    assert all(x["holdout_without"] <= x["holdout_with"] for x in refused)
    assert all(
        r.guard["step"] in ("kept", "none") or r.guard["step"].startswith("rejected") for r in history.iterations
    )
    # the merge is the coefficients' combination (the guard's subtractions kept theta and alpha together)
    reference = materialise(store, guarded.coefficients, list(store.keys), "cpu", torch.float64)
    for k, v in reference.items():
        torch.testing.assert_close(guarded.params[k].double(), v, rtol=1e-5, atol=1e-5)


def test_a_guard_run_resumes_to_the_same_merge(tmp_path):
    """The refusals are in the checkpointed history: a resumed run refuses what the first half refused."""
    models, train_target, holdout_target = misled_toy(seed=4)
    names = ["task0", "task1", "noise"]
    config = FrankWolfeConfig.build("hard", granularity="task", max_iters=6)
    store = InMemoryVertexStore(models)
    init = {"_pretrained_": 1.0}

    def run(**kwargs):
        return solve(
            QuadraticObjective(train_target),
            store,
            names,
            init,
            config,
            progress=False,
            holdout_objective=QuadraticObjective(holdout_target),
            **kwargs,
        )

    full = run()
    ckpt = str(tmp_path / "state.safetensors")

    class Stop(Exception):
        pass

    def stop_after_3(record, history):
        if record.t == 2:
            raise Stop

    with pytest.raises(Stop):
        run(checkpoint_path=ckpt, on_iteration=stop_after_3)
    resumed = run(checkpoint_path=ckpt, resume=True)
    assert [r.selected for r in resumed.history.iterations] == [r.selected for r in full.history.iterations]
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k])


def test_a_rejected_layer_wise_step_ends_the_run_where_it_stood():
    """Layer-wise FW-hard moves every tensor toward its own vertex: a rejected step has no single vertex
    to refuse, the iterate would not move again, so the run ends there (held-out early stopping)."""
    models, train_target, holdout_target = misled_toy()
    names = ["task0", "task1", "noise"]
    config = FrankWolfeConfig.build("hard", granularity="layer", max_iters=6)
    guarded = solve(
        QuadraticObjective(train_target),
        InMemoryVertexStore(models),
        names,
        {"_pretrained_": 1.0},
        config,
        progress=False,
        holdout_objective=QuadraticObjective(holdout_target),
    )
    history = guarded.history
    assert history.stop_reason.startswith("guard: rejected") and len(history.iterations) == 1
    assert history.iterations[0].step_size == 0.0 and history.iterations[0].guard["refused"] == []
    for k, v in models["_pretrained_"].items():  # the step was undone
        assert torch.equal(guarded.params[k], v)


class _TableHoldout:
    """A held-out objective whose per-task losses are a table indexed by the model's one tensor."""

    def __init__(self, table):
        self.table = table

    def task_losses(self, params):
        return dict(self.table[int(params["id"])])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("share", [0.5, 0.2, 1.0])
def test_the_screen_keeps_exactly_the_models_with_a_fair_share_of_the_best_drop(seed, share):
    """Against the rule written out in float64, target by target: kept iff on some task the model's
    drop below the pretrained loss is positive and at least ``share`` of the best model's drop there."""
    from fusion_bench_fw.core.guard import screen_candidates

    g = torch.Generator().manual_seed(seed)
    tasks = ["a", "b", "c"]
    base = {t: 1.0 + float(torch.rand(1, generator=g)) for t in tasks}
    table = {0: base}
    for m in range(1, 9):
        table[m] = {t: float(base[t] + torch.randn(1, generator=g).clamp(-1, 1)) for t in tasks}
    table[8] = dict(base)  # no change anywhere: refused
    names = [f"m{m}" for m in range(1, 9)]
    report = screen_candidates(
        _TableHoldout(table), {"id": torch.tensor(0)}, lambda n: {"id": torch.tensor(int(n[1:]))}, names, share
    )
    drops = {n: {t: base[t] - table[int(n[1:])][t] for t in tasks} for n in names}
    best = {t: max(d[t] for d in drops.values()) for t in tasks}
    expected = [n for n in names if any(drops[n][t] > 0 and drops[n][t] >= share * best[t] for t in tasks)]
    assert report["kept"] == expected
    assert [r["model"] for r in report["refused"]] == [n for n in names if n not in expected]
    assert report["pretrained"] == base and report["losses"]["m3"] == table[3]


def test_the_screen_refuses_a_model_that_only_flattens_a_confidently_wrong_prediction():
    """The case the share is for: the pretrained model is confidently wrong (high loss), a noise-trained
    model predicts near-uniformly (lower loss, no skill), the target's own model is right."""
    from fusion_bench_fw.core.guard import screen_candidates

    table = {0: {"t": 2.7}, 1: {"t": 0.4}, 2: {"t": 2.2}}  # pretrained, own model, noise-trained
    report = screen_candidates(
        _TableHoldout(table), {"id": torch.tensor(0)}, lambda n: {"id": torch.tensor(int(n[1:]))}, ["m1", "m2"]
    )
    assert report["kept"] == ["m1"] and report["refused"][0]["model"] == "m2"
