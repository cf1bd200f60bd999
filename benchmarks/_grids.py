"""The tuning budget as data: for each tunable leaderboard row, the settings ``benchmarks/tune.py``
tries on the validation split. Every method gets the same number of settings (:data:`BUDGET`),
listed with the row's own setting first (FusionBench's default, or the plugin's), so that
``--budget k`` gives every method its first ``k``. Read by tune.py and the tests."""

from __future__ import annotations

from itertools import product

BUDGET = 6


def _grid(**axes) -> list[dict[str, object]]:
    """Every combination of ``axes`` (``{"method.x": [v0, v1, ...]}``), the first values first."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in product(*axes.values())]


GRIDS: dict[str, list[dict[str, object]]] = {
    "task_arithmetic": _grid(**{"method.scaling_factor": [0.3, 0.1, 0.2, 0.4, 0.5, 0.7]}),
    "ties_merging": _grid(**{"method.scaling_factor": [0.3, 0.5, 0.7], "method.threshold": [20, 40]}),
    "tsv_m": _grid(**{"method.alpha": [1.0, 0.5, 0.75, 1.25, 1.5, 2.0]}),
    "iso_c": _grid(**{"method.scaling_factor": [1.0, 0.6, 0.8, 1.2, 1.5, 2.0]}),
    "iso_cts": _grid(**{"method.scaling_factor": [1.0, 0.6, 0.8, 1.2, 1.5, 2.0]}),
    "wudi": _grid(**{"method.iter_num": [400, 25, 50, 100, 200, 800]}),
    "adamerging_layer_wise": _grid(**{"method.lr": [1e-3, 1e-4, 3e-4, 3e-3, 1e-2, 3e-2]}),
    "fw_hard": _grid(**{"method.max_iters": [10, 5, 15], "method.step_rule": ["line_search", "fw_default"]}),
    "fw_soft": _grid(**{"method.inner_lr": [3e-3, 1e-3, 3e-4], "method.max_iters": [5, 3]}),
    # FW from TSV-M's merge: the start's alpha (TSV-M's default first, then its tuned value on
    # mini_TA8) and FW's own knob
    "fw_hard_from_tsv_m": _grid(
        **{"method.init_options": ["{alpha:1.0}", "{alpha:1.5}"], "method.max_iters": [10, 5, 15]}
    ),
    "fw_soft_from_tsv_m": _grid(
        **{"method.init_options": ["{alpha:1.0}", "{alpha:1.5}"], "method.inner_lr": [3e-3, 1e-3, 3e-4]}
    ),
}
GRIDS["fw_hard_guard"], GRIDS["fw_soft_guard"] = GRIDS["fw_hard"], GRIDS["fw_soft"]  # the same knobs, guarded
# the same knobs, screened (method.screen=true)
GRIDS["fw_hard_screen"], GRIDS["fw_soft_screen"] = GRIDS["fw_hard"], GRIDS["fw_soft"]
GRIDS["fw_soft_from_tsv_m_screen"] = GRIDS["fw_soft_from_tsv_m"]
# Task Arithmetic with its scaling factor chosen on the labelled samples FW optimises on (each
# target's n_per_task seeded train samples), not on validation: the data-matched baseline
DATA_MATCHED = {"task_arithmetic_fw_samples": "task_arithmetic"}

assert all(len(g) == BUDGET for g in GRIDS.values()), {m: len(g) for m, g in GRIDS.items()}


def setting_args(setting: dict[str, object]) -> list[str]:
    """A setting as ``fusion_bench`` overrides."""
    return [f"{k}={v}" for k, v in setting.items()]


def with_setting(args: list[str], setting: dict[str, object]) -> list[str]:
    """``args`` with the setting's keys replaced (a row's own value of a tuned key goes)."""
    keys = set(setting)
    return [a for a in args if a.split("=", 1)[0].lstrip("+~") not in keys] + setting_args(setting)
