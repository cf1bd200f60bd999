"""What a run shows while and after it runs: Fabric logger metrics and the history picture.

Per iteration the total loss, the per-task losses, the Frank-Wolfe gap, the step size and the
gradient norm go to Fabric's loggers (TensorBoard in FusionBench's default configs), as
FusionBench's own methods log with ``fabric.log_dict``. At the end the picture of the history
(:mod:`fusion_bench_fw.plot_history`) is written next to ``fw_history.json``. Neither may fail
a merge: a picture that cannot be drawn is a warning.
"""

from __future__ import annotations

import logging

from fusion_bench_fw.core.history import IterationRecord, RunHistory

log = logging.getLogger(__name__)

PREFIX = "fw"  # TensorBoard groups the tags by this prefix


def iteration_metrics(record: IterationRecord) -> dict[str, float]:
    """The scalars of one iteration, by logger tag (``fw/loss``, ``fw/task_loss/<task>``, ...)."""
    metrics = {f"{PREFIX}/loss": record.loss, f"{PREFIX}/gap": record.gap, f"{PREFIX}/grad_norm": record.grad_norm}
    if record.step_size is not None:  # FW-hard; FW-soft optimises its step weights instead
        metrics[f"{PREFIX}/step_size"] = record.step_size
    metrics.update({f"{PREFIX}/task_loss/{task}": loss for task, loss in record.task_losses.items()})
    return {k: float(v) for k, v in metrics.items()}


def log_iteration(fabric, record: IterationRecord) -> None:
    """Send one iteration's scalars to ``fabric``'s loggers, at step ``record.t``."""
    fabric.log_dict(iteration_metrics(record), step=record.t)


def finish(fabric, history: RunHistory, history_path: str) -> str | None:
    """Draw the history's picture next to ``history_path`` and flush the loggers; returns the
    picture's path (None when it could not be drawn)."""
    from fusion_bench_fw.plot_history import draw, picture_path

    try:
        for logger in getattr(fabric, "loggers", None) or []:
            logger.save()  # TensorBoard writes its event file on flush
        path = draw(history, picture_path(history_path))
    except Exception as exc:  # the merge is done; neither is worth failing it
        log.warning(
            "could not flush the loggers or draw the FW history picture (%s: %s); redraw the picture with "
            "`python -m fusion_bench_fw.plot_history %s`",
            type(exc).__name__,
            exc,
            history_path,
        )
        return None
    log.info("FW history picture written to %s", path)
    return path
