"""A picture of a Frank-Wolfe run, drawn from its history file (``fw_history.json``).

Three panels: the objective (total and per task) and the Frank-Wolfe gap (with FW-hard's step
size) per iteration, and a selection map of the checkpoints the LMO chose: rows are the pool's
vertices for a task-wise run, the merged tensors for a layer-wise one (colour = the checkpoint
chosen for that tensor; FW-soft's k picks are k narrow columns per iteration). Every run writes
one next to its history; this command redraws it from any history file::

    python -m fusion_bench_fw.plot_history path/to/fw_history.json [-o picture.png]

It lives outside ``core`` (matplotlib is no part of the pure-PyTorch solver) and outside the
FusionBench adapter (it reads only a history file, so it needs no FusionBench and redraws old runs
offline). It draws with matplotlib's object API on the Agg canvas: no pyplot, no display, and the
caller's global backend is left alone.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from fusion_bench_fw.core.history import RunHistory

MAX_ROW_LABELS = 60  # a layer-wise map of more tensors labels every n-th row


def picture_path(history_path: str) -> str:
    """Where the picture of ``history_path`` goes: the same name with ``.png``."""
    return os.path.splitext(history_path)[0] + ".png"


def _layer_wise(history: RunHistory) -> bool:
    chosen = [r.chosen for r in history.iterations if r.chosen]
    if chosen:
        return len(chosen[0][0]) > 1
    return history.config.get("granularity") == "layer"


def selection_map(history: RunHistory) -> dict:
    """The selection map as data: ``matrix`` (rows x columns; a vertex index, NaN where nothing
    was chosen, or a count for ``kind == "counts"``), ``rows`` (labels), ``columns`` (the
    iteration of each column) and ``kind``:

    * ``"vertices"``: task-wise; rows are the vertices, a cell holds its own index when the vertex
      was chosen at that iteration;
    * ``"layers"``: layer-wise; rows are the tensors (``history.keys``), a cell holds the index of
      the vertex chosen for it (FW-soft: one column per pick, best first);
    * ``"counts"``: layer-wise history without per-tensor choices (written before they were
      recorded); rows are the vertices, a cell holds how many tensors chose it.
    """
    vertices, iterations = history.vertices, history.iterations
    if _layer_wise(history) and any(r.chosen for r in iterations):
        slots = max(len(r.chosen) for r in iterations if r.chosen)
        columns = [r.t for r in iterations for _ in range(slots)]
        matrix = np.full((len(history.keys), len(columns)), np.nan)
        for i, record in enumerate(iterations):
            for j, row in enumerate(record.chosen or []):
                matrix[:, i * slots + j] = row
        return {"matrix": matrix, "rows": list(history.keys), "columns": columns, "kind": "layers", "slots": slots}
    matrix = np.full((len(vertices), len(iterations)), np.nan)
    layer_counts = _layer_wise(history)
    for i, record in enumerate(iterations):
        picked = record.selected or []
        if isinstance(picked, dict):  # layer-wise counts
            for name, count in picked.items():
                matrix[vertices.index(name), i] = count
        else:
            for name in picked:
                matrix[vertices.index(name), i] = vertices.index(name)
    kind = "counts" if layer_counts else "vertices"
    return {"matrix": matrix, "rows": list(vertices), "columns": [r.t for r in iterations], "kind": kind, "slots": 1}


def vertex_colors(n: int) -> list:
    """One distinct colour per vertex (tab10, tab20, then an even sweep of turbo)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def _plot_losses(ax, history: RunHistory) -> None:
    ts = [r.t for r in history.iterations]
    for task in history.tasks:
        ax.plot(ts, [r.task_losses.get(task, math.nan) for r in history.iterations], lw=1, alpha=0.8, label=task)
    ax.plot(ts, [r.loss for r in history.iterations], "k-o", lw=2, ms=3, label="total")
    if history.final_loss is not None:
        end = ts[-1] + 1 if ts else 0
        ax.plot([end], [history.final_loss], "k*", ms=10, label=f"final {history.final_loss:.4g}")
    values = [r.loss for r in history.iterations] + [v for r in history.iterations for v in r.task_losses.values()]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set(xlabel="iteration", ylabel="loss", title="objective")
    ax.legend(fontsize=6, ncol=1 + len(history.tasks) // 8)
    ax.grid(alpha=0.3)


def _plot_gap(ax, history: RunHistory) -> None:
    ts = [r.t for r in history.iterations]
    gaps = [r.gap for r in history.iterations]
    ax.plot(ts, gaps, "C3-o", ms=3, label="FW gap")
    if gaps and min(gaps) > 0:
        ax.set_yscale("log")
    ax.set(xlabel="iteration", ylabel="gap", title="Frank-Wolfe gap")
    ax.grid(alpha=0.3)
    steps = [(r.t, r.step_size) for r in history.iterations if r.step_size is not None]
    handles = ax.get_legend_handles_labels()
    if steps:
        twin = ax.twinx()
        twin.plot(*zip(*steps), "C0--s", ms=3, label="step size")
        twin.set_ylabel("step size")
        extra = twin.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles, fontsize=6)


def _plot_selection(fig, ax, history: RunHistory) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    data = selection_map(history)
    matrix, rows, columns, kind = data["matrix"], data["rows"], data["columns"], data["kind"]
    if matrix.size == 0 or np.all(np.isnan(matrix)):
        ax.text(0.5, 0.5, "no selection recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    masked = np.ma.masked_invalid(matrix)
    if kind == "counts":
        image = ax.imshow(masked, aspect="auto", interpolation="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, label="tensors choosing the vertex")
    else:
        colors = vertex_colors(len(history.vertices))
        cmap = ListedColormap(colors).with_extremes(bad="white")
        ax.imshow(masked, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5)
        used = sorted({int(v) for v in matrix[~np.isnan(matrix)]})
        ax.legend(
            handles=[Patch(color=colors[i], label=history.vertices[i]) for i in used],
            title="chosen checkpoint",
            fontsize=6,
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            ncol=1 + len(used) // 30,
        )
    slots = data["slots"]
    starts = list(range(0, len(columns), slots))
    ax.set_xticks([s + (slots - 1) / 2 for s in starts], [str(columns[s]) for s in starts], fontsize=7)
    for s in starts[1:]:
        if slots > 1:
            ax.axvline(s - 0.5, color="k", lw=0.5)
    every = max(1, math.ceil(len(rows) / MAX_ROW_LABELS))
    ax.set_yticks(range(0, len(rows), every), rows[::every], fontsize=6 if len(rows) > 20 else 8)
    what = {
        "vertices": "checkpoints chosen per iteration",
        "layers": "checkpoint chosen per tensor"
        + (f" (the {slots} picks of each iteration, best first)" if slots > 1 else ""),
        "counts": "tensors choosing each checkpoint (this history has no per-tensor choices)",
    }[kind]
    ax.set(xlabel="iteration", title=f"selection map: {what}")


def draw(history: RunHistory, path: str) -> str:
    """Draw the picture of ``history`` into ``path`` (PNG); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = len(selection_map(history)["rows"])
    map_height = min(max(2.5, 0.12 * n_rows), 16.0)
    fig = Figure(figsize=(13, 4 + map_height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[4, map_height])
    _plot_losses(fig.add_subplot(grid[0, 0]), history)
    _plot_gap(fig.add_subplot(grid[0, 1]), history)
    _plot_selection(fig, fig.add_subplot(grid[1, :]), history)
    granularity = history.config.get("granularity", "?")
    fig.suptitle(
        f"FW-{history.variant} ({granularity}-wise): {len(history.iterations)} iteration(s), "
        f"stop: {history.stop_reason or '?'}"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion_bench_fw.plot_history",
        description="Draw the loss, gap and selection map of a Frank-Wolfe run from its history file.",
    )
    parser.add_argument("history", help="a fw_history.json written by FWHard/FWSoft (or frank_wolfe's history)")
    parser.add_argument("-o", "--output", help="the PNG to write (default: the history's name with .png)")
    args = parser.parse_args(argv)
    try:
        history = RunHistory.load(args.history)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"cannot read history {args.history!r}: {exc}")
    print(draw(history, args.output or picture_path(args.history)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
