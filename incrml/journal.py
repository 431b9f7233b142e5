"""The learning-curve journal: metrics/history.json and metrics/learning_curve.png.

Both are rebuilt from MLflow (the newest finished run of every batch) whenever a run is
logged or the champion moves, so `dvc plots show`, the ingest table and `incrml status` read
them without starting MLflow. They are not DVC outputs: they describe every batch, not one.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
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


Draw = Callable[[list[dict], list[str], Path], None]


def draw_here(history: list[dict], metrics: list[str], path: Path) -> None:
    atomic_write(path, lambda tmp: plot(history, metrics, tmp))


def write(layout: Layout, history: list[dict], metrics: list[str], draw: Draw = draw_here) -> None:
    write_json(layout.history, history)
    draw(history, metrics, layout.learning_curve)


@contextmanager
def painter() -> Iterator[Draw]:
    """A forked process that loads matplotlib while the caller goes on (evaluate: logging to
    MLflow), then draws the curve it is sent. It ignores Ctrl-C: its caller ends it, and draws
    here instead if it fails."""
    if not hasattr(os, "fork"):
        yield draw_here
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the painter
        code = 1
        try:
            os.close(write_end)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            warm_up()
            with os.fdopen(read_end) as pipe:
                job = pipe.read()
            if job:
                job = json.loads(job)
                draw_here(job["history"], job["metrics"], Path(job["path"]))
            code = 0
        finally:
            os._exit(code)
    os.close(read_end)
    pending = [write_end]

    def draw(history: list[dict], metrics: list[str], path: Path) -> None:
        with suppress(BrokenPipeError), os.fdopen(pending.pop(), "w") as pipe:  # a painter that failed early
            pipe.write(json.dumps({"history": history, "metrics": metrics, "path": str(path)}))
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            draw_here(history, metrics, path)

    try:
        yield draw
    finally:
        if pending:  # never asked to draw: end it
            os.close(pending.pop())
            os.waitpid(pid, 0)


def from_mlflow(root: Path, params: Params) -> list[dict]:
    """The journal's rows as MLflow holds them now: every batch's newest run, and the champion."""
    from incrml.tracking import batch_runs, champion_version

    return rows(batch_runs(root, params), champion_version(root, params), list(params.evaluate.metrics))


def refresh(root: Path, params: Params) -> list[dict]:
    """Rebuild the journal from MLflow (after the champion moved by hand)."""
    history = from_mlflow(root, params)
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
    """Draw a throwaway curve: matplotlib's one-time set-up (its font cache, the Agg canvas)."""
    import io

    plot([{"batch": 1, "training_rows": 1, "accuracy": 1.0, "champion": True, "model_version": "1"}],
         ["accuracy"], io.BytesIO())
