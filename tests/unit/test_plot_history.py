"""The history picture: its selection map holds exactly the recorded choices, and the redraw
command turns a committed history file into a valid PNG (the picture every CLI run writes is
checked in tests/integration/test_cli_fw.py)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion_bench_fw.core.history import IterationRecord, RunHistory
from fusion_bench_fw.plot_history import draw, main, picture_path, selection_map

# A layer-wise FW-soft run (k=2, 3 tensors, 4 iterations) of the toy problem of tests/toy.py.
HISTORY = Path(__file__).with_name("data") / "fw_history_toy_soft_layer.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()  # a truncated or garbled PNG fails here
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def record(t: int, selected, chosen=None, step=None) -> IterationRecord:
    return IterationRecord(
        t=t,
        loss=1.0 / (t + 1),
        task_losses={"a": 0.6 / (t + 1), "b": 0.4 / (t + 1)},
        grad_norm=1.0,
        gap=0.5 / (t + 1),
        step_size=step,
        selected=selected,
        chosen=chosen,
    )


def history(variant: str, granularity: str, records, keys=("w0", "w1", "w2")) -> RunHistory:
    return RunHistory(
        variant=variant,
        config={"granularity": granularity},
        tasks=["a", "b"],
        basis=["_pretrained_", "m0", "m1", "m2"],
        vertices=["m0", "m1", "m2"],
        keys=list(keys),
        iterations=list(records),
        final_loss=0.1,
        stop_reason="max_iters",
    )


def test_layer_wise_map_is_the_recorded_choice_per_tensor():
    runs = history(
        "hard", "layer", [record(0, {"m0": 2, "m2": 1}, [[0, 2, 0]], 1.0), record(1, {"m1": 3}, [[1, 1, 1]], 0.5)]
    )
    data = selection_map(runs)
    assert data["kind"] == "layers" and data["rows"] == ["w0", "w1", "w2"] and data["columns"] == [0, 1]
    np.testing.assert_array_equal(data["matrix"], [[0, 1], [2, 1], [0, 1]])


def test_layer_wise_soft_map_has_one_column_per_pick():
    loaded = RunHistory.load(str(HISTORY))
    data = selection_map(loaded)
    k = loaded.config["k"]
    assert data["kind"] == "layers" and data["slots"] == k == 2
    assert data["matrix"].shape == (len(loaded.keys), k * len(loaded.iterations))
    for i, it in enumerate(loaded.iterations):
        for j in range(k):
            np.testing.assert_array_equal(data["matrix"][:, i * k + j], it.chosen[j])


def test_task_wise_map_marks_the_selected_vertices():
    runs = history("soft", "task", [record(0, ["m2", "m0"], [[2], [0]]), record(1, ["m1", "m0"], [[1], [0]])])
    data = selection_map(runs)
    assert data["kind"] == "vertices" and data["rows"] == ["m0", "m1", "m2"]
    expected = np.array([[0, 0], [np.nan, 1], [2, np.nan]])
    np.testing.assert_array_equal(data["matrix"], expected)


def test_layer_wise_history_without_per_tensor_choices_falls_back_to_counts():
    runs = history("hard", "layer", [record(0, {"m0": 2, "m2": 1}), record(1, {"m1": 3})])
    data = selection_map(runs)
    assert data["kind"] == "counts"
    np.testing.assert_array_equal(data["matrix"], [[2, np.nan], [np.nan, 3], [1, np.nan]])


@pytest.mark.parametrize(
    "runs",
    [
        history("hard", "layer", [record(0, {"m0": 3}, [[0, 0, 0]], 1.0)], keys=[f"layer{i}.weight" for i in range(3)]),
        history("hard", "layer", [record(t, {"m1": 150}, [[t % 3] * 150], 0.5) for t in range(3)], keys=range(150)),
        history("soft", "task", []),  # stopped before any selection
    ],
)
def test_draw_writes_a_valid_png(runs, tmp_path):
    runs.keys = [str(k) for k in runs.keys]
    assert_png(Path(draw(runs, str(tmp_path / "picture.png"))))


def test_redraw_command_from_a_committed_history(tmp_path):
    out = tmp_path / "redrawn.png"
    assert main([str(HISTORY), "-o", str(out)]) == 0
    assert_png(out)
    # without -o the picture goes next to the history, as a run writes it
    copy = tmp_path / "fw_history.json"
    copy.write_text(HISTORY.read_text())
    assert picture_path(str(copy)) == str(tmp_path / "fw_history.png")
    main([str(copy)])
    assert_png(tmp_path / "fw_history.png")


def test_module_entry_point(tmp_path, monkeypatch, capsys):
    out = tmp_path / "entry.png"
    monkeypatch.setattr(sys, "argv", ["plot_history", str(HISTORY), "-o", str(out)])
    monkeypatch.delitem(sys.modules, "fusion_bench_fw.plot_history")  # run it afresh, as `python -m` does
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("fusion_bench_fw.plot_history", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_png(out)


def test_redraw_of_a_bad_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "fw_history.json"
    bad.write_text(json.dumps({"variant": "hard"}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad)])
    assert exit_info.value.code == 2
    assert "cannot read history" in capsys.readouterr().err
