"""Per-iteration metrics reach Fabric's loggers (TensorBoard here, read back from its event file),
and the end of a run writes the picture without ever failing the merge."""

from __future__ import annotations

import glob
import logging

import pytest

from fusion_bench_fw.core.history import IterationRecord, RunHistory
from fusion_bench_fw.fusionbench import observe


def record(t: int, step_size: float | None) -> IterationRecord:
    return IterationRecord(
        t=t,
        loss=2.0 - t,
        task_losses={"tiny_colors": 1.5 - t, "tiny_sizes": 0.5},
        grad_norm=3.0,
        gap=0.25 / (t + 1),
        step_size=step_size,
        selected=["m0"],
        chosen=[[0]],
    )


def run_history(records) -> RunHistory:
    return RunHistory(
        variant="hard",
        config={"granularity": "task"},
        tasks=["tiny_colors", "tiny_sizes"],
        basis=["_pretrained_", "m0"],
        vertices=["m0"],
        keys=["w"],
        iterations=list(records),
        final_loss=0.5,
        stop_reason="max_iters",
    )


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True)
    assert files, f"no TensorBoard event file under {log_dir}"
    events = EventAccumulator(files[0])
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_iteration_metrics():
    assert observe.iteration_metrics(record(1, 0.5)) == {
        "fw/loss": 1.0,
        "fw/gap": 0.125,
        "fw/grad_norm": 3.0,
        "fw/step_size": 0.5,
        "fw/task_loss/tiny_colors": 0.5,
        "fw/task_loss/tiny_sizes": 0.5,
    }
    assert "fw/step_size" not in observe.iteration_metrics(record(0, None))  # FW-soft has no step size


def test_metrics_reach_tensorboard_through_fabric(tmp_path):
    import lightning as L
    from lightning.fabric.loggers import TensorBoardLogger

    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger(root_dir=tmp_path, name="", version=""))
    records = [record(0, 1.0), record(1, 0.5)]
    for r in records:
        observe.log_iteration(fabric, r)
    history_path = tmp_path / "fw_history.json"
    assert observe.finish(fabric, run_history(records), str(history_path)) == str(tmp_path / "fw_history.png")
    assert (tmp_path / "fw_history.png").read_bytes()[:4] == b"\x89PNG"

    logged = scalars(tmp_path)
    assert logged["fw/loss"] == [(0, 2.0), (1, 1.0)]
    assert logged["fw/gap"] == [(0, 0.25), (1, 0.125)]
    assert logged["fw/step_size"] == [(0, 1.0), (1, 0.5)]
    assert logged["fw/task_loss/tiny_colors"] == [(0, 1.5), (1, 0.5)]
    assert [step for step, _ in logged["fw/task_loss/tiny_sizes"]] == [0, 1]


def test_a_picture_that_cannot_be_drawn_is_only_a_warning(tmp_path, monkeypatch, caplog):
    import lightning as L

    import fusion_bench_fw.plot_history as plot_history

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plot_history, "draw", broken)
    with caplog.at_level(logging.WARNING):
        assert observe.finish(L.Fabric(accelerator="cpu", devices=1), run_history([]), str(tmp_path / "h.json")) is None
    assert any("python -m fusion_bench_fw.plot_history" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fabric", [None, object()])
def test_finish_without_loggers(tmp_path, fabric):
    assert observe.finish(fabric, run_history([record(0, 1.0)]), str(tmp_path / "h.json")) == str(tmp_path / "h.png")
