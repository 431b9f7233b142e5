"""The learning-curve journal: metrics/history.json and metrics/learning_curve.png.

Both are rebuilt from MLflow (the newest finished run of every batch) whenever a run is
logged or the champion moves, so `dvc plots show`, the ingest table and `incrml status` read
them without starting MLflow. They are not DVC outputs: they describe every batch, not one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.files import atomic_write, write_json
from incrml.workspace import Layout

if TYPE_CHECKING:
    from incrml.config import Params
    from incrml.tracking import BatchRun


def rows(runs: dict[int, BatchRun], champion: str | None, metrics: list[str]) -> list[dict]:
    """One row per batch, in batch order: rows, metrics, run, model version, gate, champion."""
    return [
        {
            "batch": batch,
            "training_rows": run.rows,
            **{m: run.metrics.get(m) for m in metrics},
            "run_id": run.run_id,
            "model_version": run.model_version,
            "gate": run.gate,
            "gate_reason": run.gate_reason,
            "drift": run.drift,
            "champion": champion is not None and run.model_version == champion,
        }
        for batch, run in sorted(runs.items())
    ]


def write(layout: Layout, history: list[dict], metrics: list[str]) -> None:
    write_json(layout.history, history)
    atomic_write(layout.learning_curve, lambda tmp: plot(history, metrics, tmp))


def refresh(root: Path, params: Params) -> list[dict]:
    """Rebuild the journal from MLflow (after the champion moved by hand)."""
    from incrml.tracking import batch_runs, champion_version

    history = rows(batch_runs(root, params), champion_version(root, params), list(params.evaluate.metrics))
    write(Layout(root), history, list(params.evaluate.metrics))
    return history


def plot(history: list[dict], metrics: list[str], path: Path, highlight: Iterable[int] = ()) -> None:
    """The learning curve as a PNG: holdout metrics against batch number and against training
    rows, the champion's point starred, `highlight`ed batches ringed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    marked = set(highlight)
    figure = Figure(figsize=(10, 4), dpi=80, layout="constrained")
    by_batch, by_rows = figure.subplots(1, 2, sharey=True)
    for axes, x_key, label in ((by_batch, "batch", "batch"), (by_rows, "training_rows", "training rows")):
        points = [row for row in history if row.get(x_key) is not None]
        for name in metrics:
            xs = [row[x_key] for row in points if row.get(name) is not None]
            ys = [row[name] for row in points if row.get(name) is not None]
            axes.plot(xs, ys, marker="o", markersize=3, label=name)
        for row in points:
            value = row.get(metrics[0])
            if value is None:
                continue
            if row.get("champion"):
                axes.plot(row[x_key], value, marker="*", markersize=16, color="gold", markeredgecolor="black",
                          linestyle="none", label=f"champion v{row['model_version']}" if axes is by_batch else None)
            if row["batch"] in marked:
                axes.plot(row[x_key], value, marker="o", markersize=12, fillstyle="none", color="red", linestyle="none")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(label)
        axes.grid(alpha=0.3)
    by_batch.set_ylabel("holdout score")
    by_batch.legend(loc="lower right", fontsize="small")
    figure.suptitle("Learning curve")
    figure.savefig(path, format="png")


def warm_up() -> None:
    """Draw a throwaway curve, so matplotlib's one-time set-up (its font cache, the Agg canvas)
    is done in the stage worker's zygote rather than in evaluate (see incrml.worker)."""
    import io

    plot([{"batch": 1, "training_rows": 1, "accuracy": 1.0, "champion": True, "model_version": "1"}],
         ["accuracy"], io.BytesIO())
