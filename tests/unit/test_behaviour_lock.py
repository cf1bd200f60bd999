"""Behaviour lock: FW-hard and FW-soft reproduce, bit for bit, what the code did before the
issue-14 redesign (recorded in ``behaviour_lock.json`` next to this file).

Locked, for each case: the merged tensors (toy: every value; tiny CLIP: sha256 of each
tensor's bytes, plus sum and norm to show how far a mismatch is) and the run history
without timings and memory (losses, task losses, gradient norms, gaps, step sizes,
selections, LMO scores, the inner searches of FW-soft, coefficients, vertices, stop reason).

* toy pool (``toy.py``, the pure-PyTorch core): hard and soft, task- and layer-wise, with
  the option paths the CLIP cases leave out (TIES, line search, per-task selection...);
* tiny CLIP pool (``fusion_bench_fw.offline.tiny_clip``), in process but as the CLI runs
  it: the method and model-pool configs composed by Hydra from the real yaml files,
  instantiated with FusionBench's ``instantiate``, run on the real FusionBench model pool;
* the composed method configs of the four presets, and the options ``FWHard()`` /
  ``FWSoft()`` resolve to in Python (the two homes of the defaults before the redesign).

Comparison is exact (rtol 0) everywhere. The one allowed change: the solver options a
variant never reads (e.g. ``step_scale`` for FW-soft) may disappear from the recorded config;
every option still recorded must keep its value.

The golden file was recorded by this test's first version on the code before the redesign:
first on the branch point, then again on main at the merge (a005926), whose runs matched the
first recording exactly but for the history's new ``chosen`` field.

Re-record (only on purpose, on the code whose behaviour is the reference)::

    FW_RECORD_BEHAVIOUR_LOCK=1 python -m pytest tests/unit/test_behaviour_lock.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from composed import method_config, run_method
from toy import TEXTBOOK_HARD, TEXTBOOK_SOFT, QuadraticObjective, random_pool

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")  # one thread: sums in one order

GOLDEN = Path(__file__).with_name("behaviour_lock.json")
RECORD = os.environ.get("FW_RECORD_BEHAVIOUR_LOCK") == "1"
UNTIMED = ("time_grad_s", "time_lmo_s", "time_update_s", "peak_host_rss_mb", "peak_device_mb")
TOY_SHAPES = {"layer0.weight": (6, 5), "layer0.bias": (6,), "layer1.weight": (3, 6), "layer1.bias": (3,)}

# ------------------------------------------------------------------ cases
TOY_CASES = {
    "hard_layer_ta_init": dict(variant="hard", granularity="layer", include_init_vertex=True, init="ta"),
    "hard_task_line_search": dict(
        variant="hard", granularity="task", step_rule="line_search", include_init_vertex=False, gap_tol=1e-3
    ),
    "hard_layer_ties_global_cosine": dict(
        variant="hard",
        granularity="layer",
        merge_fn="ties",
        ties_trim_scope="global",
        ties_disjoint="mean",
        ties_density=0.5,
        lmo_score="cosine",
        step_rule="constant",
        step_scale=0.3,
        include_init_vertex=False,
    ),
    "soft_task_default": dict(variant="soft", granularity="task", include_init_vertex=False, inner_steps=6),
    "soft_layer_per_task_none": dict(
        variant="soft",
        granularity="layer",
        soft_select="per_task",
        soft_constraint="none",
        inner_init=0.3,
        inner_steps=6,
        inner_lr=0.05,
        include_init_vertex=False,
        lmo_score="cosine",
    ),
    "soft_task_simplex_sgd_pretrained_vertex": dict(
        variant="soft",
        granularity="task",
        soft_constraint="simplex_selected",
        inner_optimizer="sgd",
        coef_granularity="task",
        k=2,
        inner_steps=6,
        include_pretrained_vertex=True,
        include_init_vertex=True,
        init="ta",
    ),
    "soft_layer_box_ta_init": dict(
        variant="soft",
        granularity="layer",
        soft_constraint="box",
        k=3,
        inner_steps=5,
        init="ta",
        include_init_vertex=True,  # the default of the core's soft config before the redesign
    ),
}
CLIP_FAST = ["method.max_iters=3", "method.n_per_task=16", "method.batch_size=16", "method.progress=false"]
CLIP_CASES = {
    "fw_hard": ["method=fw_hard"],
    "fw_hard_task": ["method=fw_hard", "method.granularity=task"],
    "fw_soft": ["method=fw_soft", "method.inner_steps=4"],
    "fw_soft_layer": ["method=fw_soft", "method.granularity=layer", "method.inner_steps=4"],
    "fw_hard_fbref": ["method=fw_hard_fbref"],
    "fw_soft_fbref": ["method=fw_soft_fbref", "method.inner_steps=4"],
}
PRESETS = ["fw_hard", "fw_soft", "fw_hard_fbref", "fw_soft_fbref"]


# ------------------------------------------------------------------ the code under test
def run_toy(options: dict):
    """One toy run through the core solver; returns (merged tensors, history)."""
    from fusion_bench_fw.core import FrankWolfeConfig, InMemoryVertexStore, frank_wolfe, plan_vertices

    options = dict(options)
    if options["variant"] == "soft":  # recorded before the defaults changed: pinned
        options = {**TEXTBOOK_SOFT, **options}
    else:
        options = {**TEXTBOOK_HARD, **options}
    init_kind = options.pop("init", "pretrained")
    variant = options.pop("variant")
    models = random_pool(4, TOY_SHAPES, seed=3)
    names = [n for n in models if n != "_pretrained_"]
    target = {
        k: 0.45 * models["m0"][k] + 0.35 * models["m2"][k] + 0.2 * models["_pretrained_"][k] + 0.1 for k in TOY_SHAPES
    }
    objective = QuadraticObjective(target, tasks=("a", "b", "c"))
    init = {"_pretrained_": 1.0}
    if init_kind == "ta":
        init = {"_pretrained_": 1.0 - 0.2 * len(names), **{n: 0.2 for n in names}}
    config = FrankWolfeConfig.build(variant, max_iters=5, **options)
    plan = plan_vertices(names, init, config, len(objective.task_names), "_pretrained_")
    torch.manual_seed(0)
    result = frank_wolfe(objective, InMemoryVertexStore(models), plan, config, progress=False, seed=0)
    return result.params, result.history.to_dict()


def run_clip(overrides, out: Path):
    params, history, _ = run_method([*overrides, *CLIP_FAST], out)
    return params, history


def python_defaults(cls) -> dict:
    """Every option a ``cls()`` built in Python resolves to (adapter and solver, flat)."""
    from dataclasses import asdict

    algorithm = cls()
    return {**asdict(algorithm.options), **asdict(algorithm.solver_config)}


# ------------------------------------------------------------------ digests and comparison
def tensor_digest(t: torch.Tensor, full: bool) -> dict:
    t = t.detach().cpu().contiguous()
    entry = {
        "dtype": str(t.dtype),
        "shape": list(t.shape),
        "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
        "sum": float(t.double().sum()),
        "norm": float(t.double().norm()),
    }
    if full:
        entry["values"] = t.reshape(-1).tolist()
    return entry


def history_digest(history: dict) -> dict:
    history = json.loads(json.dumps(history))  # plain JSON types, as fw_history.json holds them
    for record in history["iterations"]:
        for key in UNTIMED:
            record.pop(key, None)
    return history


def digest(params, history, full: bool) -> dict:
    return {
        "params": {k: tensor_digest(v, full) for k, v in params.items()},
        "history": history_digest(history),
    }


def assert_same(expected, actual, path="") -> None:
    """Exact equality, with the path of the first difference; the one leniency: a recorded
    solver ``config`` may have lost options (those its variant never reads)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lenient = path.endswith("history.config")
        missing = [k for k in expected if k not in actual]
        if missing and not lenient:
            raise AssertionError(f"{path}: keys {missing} are gone")
        extra = [k for k in actual if k not in expected]
        if extra:
            raise AssertionError(f"{path}: new keys {extra}")
        for k in actual:
            assert_same(expected[k], actual[k], f"{path}.{k}")
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            raise AssertionError(f"{path}: length {len(actual)}, recorded {len(expected)}")
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_same(a, b, f"{path}[{i}]")
    elif expected != actual or type(expected) is not type(actual):
        raise AssertionError(f"{path}: {actual!r}, recorded {expected!r}")


def check_params(expected: dict, actual: dict, where: str) -> None:
    assert list(actual) == list(expected), f"{where}: merged tensor names differ"
    for key, want in expected.items():
        got = actual[key]
        if got["sha256"] != want["sha256"]:
            raise AssertionError(
                f"{where}: merged tensor {key!r} differs from the recorded one "
                f"(sum {got['sum']!r} vs {want['sum']!r}, norm {got['norm']!r} vs {want['norm']!r})"
            )
        assert_same(want, got, f"{where}.params.{key}")


# ------------------------------------------------------------------ golden file
def dump_golden(data: dict) -> str:
    """One line per case (compact JSON; Python's float repr round-trips exactly)."""
    sections = []
    for section, cases in data.items():
        lines = [f"  {json.dumps(name)}: {json.dumps(value, separators=(',', ':'))}" for name, value in cases.items()]
        sections.append(f"{json.dumps(section)}: {{\n" + ",\n".join(lines) + "\n }")
    return "{\n " + ",\n ".join(sections) + "\n}\n"


@pytest.fixture(scope="module")
def golden():
    if RECORD:
        data = {}
        yield data
        GOLDEN.write_text(dump_golden(data))
        return
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN.name} is missing; record it with FW_RECORD_BEHAVIOUR_LOCK=1 (see the module docstring)")
    yield json.loads(GOLDEN.read_text())


def check_or_record(golden, section: str, name: str, value) -> None:
    if RECORD:
        golden.setdefault(section, {})[name] = value
        return
    assert name in golden.get(section, {}), f"no recorded {section}/{name}"
    recorded = golden[section][name]
    if isinstance(value, dict) and "params" in value:
        check_params(recorded["params"], value["params"], f"{section}/{name}")
        assert_same(recorded["history"], value["history"], f"{section}/{name}.history")
    else:
        assert_same(recorded, value, f"{section}/{name}")


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", list(TOY_CASES))
def test_toy_runs_are_unchanged(golden, case):
    params, history = run_toy(TOY_CASES[case])
    check_or_record(golden, "toy", case, digest(params, history, full=True))


@pytest.mark.parametrize("preset", PRESETS)
def test_composed_method_configs_are_unchanged(golden, preset):
    from omegaconf import OmegaConf

    method = OmegaConf.to_container(method_config([f"method={preset}"]).method, resolve=True)
    check_or_record(golden, "yaml", preset, dict(sorted(method.items())))


@pytest.mark.parametrize("variant", ["FWHard", "FWSoft"])
def test_python_defaults_are_unchanged(golden, variant):
    import fusion_bench_fw

    defaults = python_defaults(getattr(fusion_bench_fw, variant))
    if RECORD:
        check_or_record(golden, "python_defaults", variant, defaults)
        return
    recorded = golden["python_defaults"][variant]
    # as for histories: solver options the variant never reads may be gone; the rest must match
    assert set(defaults) <= set(recorded), sorted(set(defaults) - set(recorded))
    assert_same({k: recorded[k] for k in defaults}, defaults, f"python_defaults/{variant}")


def test_the_tiny_clip_pool_is_the_recorded_one(golden, tiny_clip_manifest):
    """The CLIP cases below mean something only on the same pool (same torch, same build)."""
    files = {k: v for k, v in tiny_clip_manifest["files"].items() if v is not None}
    check_or_record(golden, "tiny_clip_pool", "files", files)


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_tiny_clip_runs_are_unchanged(golden, case, tiny_clip_root, monkeypatch, tmp_path):
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tiny_clip_root))
    params, history = run_clip(CLIP_CASES[case], tmp_path / "out")
    check_or_record(golden, "tiny_clip", case, digest(params, history, full=False))
