"""Fetch and render: functions that gather plain data, and functions that draw it as rich tables."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from incrml.config import Params, load_params, tracking_uri
from incrml.errors import IncrmlError
from incrml.files import read_json
from incrml.workspace import Layout


def history_data(root: Path, params: Params) -> dict:
    """Every batch with a finished MLflow run: rows, metrics, and change from the batch before.

    Read from metrics/history.json, which evaluate rewrites from MLflow after each run it logs,
    so the table after an ingest costs no MLflow start-up.
    """
    layout = Layout(root)
    journal = read_json(layout.history) if layout.history.exists() else []
    names = list(params.evaluate.metrics)
    rows, previous = [], None
    for entry in journal:
        row = {k: entry.get(k) for k in ("batch", "training_rows", "run_id", "model_version")}
        for name in names:
            value = entry.get(name)
            before = previous.get(name) if previous else None
            row[name] = value
            row[f"{name}_delta"] = None if value is None or before is None else round(value - before, 6)
        rows.append(row)
        previous = entry
    return {"metrics": names, "current_batch": params.batch_number, "batches": rows}


def _delta(value: float | None) -> Text:
    if value is None:
        return Text("")
    style = "green" if value > 0 else "red" if value < 0 else "dim"
    return Text(f"{value:+.4f}", style=style)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_history(data: dict) -> Table:
    table = Table(title="Batches in MLflow", title_justify="left")
    table.add_column("batch", justify="right")
    table.add_column("rows", justify="right")
    for name in data["metrics"]:
        table.add_column(name, justify="right")
        table.add_column("Δ", justify="right")
    table.add_column("model", justify="right")
    for row in data["batches"]:
        marker = " ◀" if row["batch"] == data["current_batch"] else ""
        cells: list = [f"{row['batch']}{marker}", _fmt(row["training_rows"])]
        for name in data["metrics"]:
            cells += [_fmt(row[name]), _delta(row[f"{name}_delta"])]
        cells.append(f"v{row['model_version']}" if row["model_version"] else "-")
        table.add_row(*cells)
    return table


def compare_data(root: Path, params: Params, first: int, second: int) -> dict:
    from incrml.tracking import batch_runs

    runs = batch_runs(root, params)
    for batch in (first, second):
        if batch not in runs:
            have = ", ".join(map(str, runs)) or "none"
            raise IncrmlError(f"batch {batch} has no finished MLflow run (batches ingested: {have})")
    a, b = runs[first], runs[second]
    metric_names = sorted((set(a.metrics) | set(b.metrics)) - {"training_rows"})
    metrics = {}
    for name in metric_names:
        va, vb = a.metrics.get(name), b.metrics.get(name)
        metrics[name] = {"a": va, "b": vb, "delta": None if va is None or vb is None else round(vb - va, 6)}
    differ = {
        key: [a.params.get(key), b.params.get(key)]
        for key in sorted(set(a.params) | set(b.params))
        if key != "batch_number" and a.params.get(key) != b.params.get(key)
    }
    notes = [
        f"batch {run.batch} has {run.runs} finished runs; using the newest ({run.run_id})"
        for run in (a, b)
        if run.runs > 1
    ]
    side = lambda run: {  # noqa: E731
        "batch": run.batch,
        "rows": run.rows,
        "data_md5": run.data_md5,
        "run_id": run.run_id,
        "model_version": run.model_version,
        "runs": run.runs,
    }
    return {"a": side(a), "b": side(b), "metrics": metrics, "params_differ": differ, "notes": notes}


def render_compare(data: dict) -> Table:
    a, b = data["a"], data["b"]
    table = Table(title=f"Batch {a['batch']} vs batch {b['batch']}", title_justify="left")
    table.add_column("")
    table.add_column(f"batch {a['batch']}", justify="right", overflow="fold")
    table.add_column(f"batch {b['batch']}", justify="right", overflow="fold")
    table.add_column("Δ", justify="right")
    for name, m in data["metrics"].items():
        table.add_row(name, _fmt(m["a"]), _fmt(m["b"]), _delta(m["delta"]))
    rows_delta = None if a["rows"] is None or b["rows"] is None else b["rows"] - a["rows"]
    table.add_row("training rows", _fmt(a["rows"]), _fmt(b["rows"]), f"{rows_delta:+d}" if rows_delta is not None else "")
    table.add_section()
    for label, key in (("data md5", "data_md5"), ("MLflow run", "run_id"), ("model version", "model_version")):
        table.add_row(label, _fmt(a[key]), _fmt(b[key]), "")
    if data["params_differ"]:
        table.add_section()
        for key, (va, vb) in data["params_differ"].items():
            table.add_row(f"param {key}", _fmt(va), _fmt(vb), "")
    return table


def status_data(root: Path) -> dict:
    """Where the workspace stands, without importing MLflow (status must answer fast)."""
    from incrml.pipeline import stale_stages

    params = load_params(root)
    layout = Layout(root)
    history = read_json(layout.history) if layout.history.exists() else []
    stale = stale_stages(root)
    return {
        "workspace": str(root),
        "batch_number": params.batch_number,
        "batches_ingested": [row["batch"] for row in history],
        "up_to_date": not stale,
        "stale_stages": stale,
        "metrics": read_json(layout.metrics) if layout.metrics.exists() else {},
        "tracking_uri": tracking_uri(params, root),
    }


def render_status(data: dict) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("workspace", data["workspace"])
    table.add_row("current batch", str(data["batch_number"]))
    ingested = data["batches_ingested"]
    table.add_row("batches ingested", ", ".join(map(str, ingested)) if ingested else "none yet")
    if data["up_to_date"]:
        table.add_row("pipeline", Text("up to date", style="green"))
    else:
        stale = "; ".join(f"{stage} ({', '.join(why) or 'changed'})" for stage, why in data["stale_stages"].items())
        table.add_row("pipeline", Text(f"stale: {stale}", style="yellow"))
    metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in data["metrics"].items())
    table.add_row("latest metrics", metrics or "none yet")
    table.add_row("tracking URI", data["tracking_uri"])
    return table
