"""Fetch and render: functions that gather plain data, and functions that draw it as rich tables."""

from __future__ import annotations

from pathlib import Path

from rich import box
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
        row = {k: entry.get(k) for k in ("batch", "training_rows", "run_id", "model_version", "gate", "gate_reason", "champion", "drift")}
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
    table = Table(title="Batches in MLflow", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column("batch", justify="right")
    table.add_column("rows", justify="right")
    for name in data["metrics"]:
        table.add_column(name, justify="right")
        table.add_column("Δ", justify="right")
    table.add_column("model", justify="right")
    table.add_column("drift")
    table.add_column("gate")
    for row in data["batches"]:
        marker = " ◀" if row["batch"] == data["current_batch"] else ""
        cells: list = [f"{row['batch']}{marker}", _fmt(row["training_rows"])]
        for name in data["metrics"]:
            cells += [_fmt(row[name]), _delta(row[f"{name}_delta"])]
        version = f"v{row['model_version']}" if row["model_version"] else "-"
        cells.append(Text(f"{version} ★", style="bold") if row.get("champion") else version)
        cells.append(_drift(row.get("drift")))
        cells.append(_gate(row.get("gate")))
        table.add_row(*cells)
        if row["batch"] == data["current_batch"] and row.get("gate_reason"):
            table.caption = f"batch {row['batch']}: {row['gate']}, {row['gate_reason']}"
    table.caption_justify = "left"
    return table


def _drift(summary: str | None) -> Text:
    if not summary or summary == "none":  # none: no history to compare with (batch 1)
        return Text("-", style="dim")
    styles = {"ok": "green", "warn": "yellow", "refused": "red", "excluded": "red"}
    return Text(summary, style=styles.get(summary.split()[0], "dim"))


def _gate(summary: str | None) -> Text:
    if not summary:
        return Text("-", style="dim")
    return Text(summary, style="green" if summary == "promoted" else "yellow")


def compare_data(root: Path, params: Params, first: int, second: int) -> dict:
    from incrml.tracking import batch_runs, champion_version, missing_batch

    runs, champion = batch_runs(root, params), champion_version(root, params)
    for batch in (first, second):
        if batch not in runs:
            raise missing_batch(runs, batch, "no finished MLflow run")
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
        "champion": run.model_version is not None and run.model_version == champion,
        "gate": run.gate,
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
    for label, key in (("data md5", "data_md5"), ("MLflow run", "run_id"), ("model version", "model_version"),
                       ("champion", "champion"), ("gate", "gate")):
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
    champion = next((row for row in history if row.get("champion")), None)
    return {
        "workspace": str(root),
        "batch_number": params.batch_number,
        "batches_ingested": [row["batch"] for row in history],
        "champion": {"model_version": champion["model_version"], "batch": champion["batch"]} if champion else None,
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
    champion = data["champion"]
    table.add_row("champion", f"v{champion['model_version']} (batch {champion['batch']})" if champion else "none yet")
    table.add_row("tracking URI", data["tracking_uri"])
    return table


def lineage_data(root: Path, params: Params, batch: int) -> dict:
    """batch -> DVC hashes -> MLflow run -> dataset digest -> model version -> aliases, and checks
    that each link agrees with the next and with what DVC holds."""
    from incrml.pipeline import cached, lock_hashes
    from incrml.tracking import batch_runs, missing_batch, run_lineage

    runs = batch_runs(root, params)
    if batch not in runs:
        raise missing_batch(runs, batch, "no finished MLflow run")
    found = run_lineage(root, params, runs[batch].run_id)
    data_md5, model_md5 = found["data_md5"], found["dvc"].get("models/model.pkl")
    in_cache = cached(root, [md5 for md5 in (data_md5, model_md5) if md5])
    checks = [
        ("the model version records the run's data hash", found["model_data_md5"] == data_md5),
        ("the model version records the run's model file hash", bool(model_md5) and found["model_md5"] == model_md5),
        ("the run's dataset digest is that data hash",
         any(data_md5 and data_md5.removesuffix(".dir").startswith(d["digest"]) for d in found["datasets"])),
        ("DVC's cache holds the training data", data_md5 in in_cache),
        ("DVC's cache holds the model file", model_md5 in in_cache),
    ]
    current = batch == params.batch_number
    if current:
        now = lock_hashes(root, "train")
        checks.append(("dvc.lock holds this data and model now",
                       now.get("data/merged") == data_md5 and now.get("models/model.pkl") == model_md5))
    return {
        "batch": batch,
        "current": current,
        **found,
        "checks": [{"check": text, "ok": ok} for text, ok in checks],
        "ok": all(ok for _, ok in checks),
    }


def render_lineage(data: dict) -> Table:
    title = f"Lineage of batch {data['batch']}" + (" (the current batch)" if data["current"] else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("batch", str(data["batch"]))
    for path, md5 in data["dvc"].items():
        table.add_row(f"dvc {path}", md5)
    table.add_row("MLflow run", f"{data['run_id']} ({data['status']})")
    for dataset in data["datasets"]:
        table.add_row("dataset", f"{dataset['name']} digest {dataset['digest']}")
    aliases = f" ({', '.join(data['aliases'])})" if data["aliases"] else ""
    table.add_row("model version", f"v{data['model_version']}{aliases}" if data["model_version"] else "-")
    table.add_section()
    for check in data["checks"]:
        mark = Text("✓", style="green") if check["ok"] else Text("✗", style="red")
        table.add_row(mark, check["check"])
    return table


def write_plot(root: Path, params: Params, path: Path, highlight: tuple[int, ...] = ()) -> Path:
    """The learning curve from MLflow as a PNG at `path` (atomically), given batches ringed."""
    from incrml import journal
    from incrml.files import atomic_write

    if path.suffix.lower() != ".png":
        raise IncrmlError(f"--plot writes a PNG; give a FILE ending in .png, not '{path.name}'")
    history = journal.from_mlflow(root, params)
    target = path.resolve()
    atomic_write(target, lambda tmp: journal.plot(history, list(params.evaluate.metrics), tmp, highlight))
    return target
