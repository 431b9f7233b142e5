"""predict: score a CSV or Parquet file with a registered model version, checked against its signature."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table

from incrml.batch_files import SUFFIXES
from incrml.errors import IncrmlError
from incrml.gate import CHAMPION

if TYPE_CHECKING:
    import pandas as pd

    from incrml.config import Params
    from incrml.tracking import LoadedModel

PREDICTION = "prediction"
_NUMBERS = {"double", "float", "long", "integer"}


def parse_model(ref: str) -> tuple[str | None, str | None]:
    """`champion` -> (None, alias); `v3` or `3` -> ("3", None)."""
    if ref == CHAMPION:
        return None, CHAMPION
    match = re.fullmatch(r"[vV]?(\d+)", ref.strip())
    if match is None or int(match.group(1)) < 1:
        raise IncrmlError(f"--model must be '{CHAMPION}' or a version such as v3 (or 3), got '{ref}'")
    return str(int(match.group(1))), None


def read_input(path: Path, shown: str) -> pd.DataFrame:
    """The rows of the CSV or Parquet file to score; a file that cannot be read is refused by name."""
    from incrml.batch_files import read_table_file

    frame = read_table_file(path, shown, "the file to score", "cannot be scored")
    if frame.empty:
        raise IncrmlError(f"{shown} cannot be scored: it has no rows")
    return frame


def check_out(out: Path, shown: str, source: Path) -> None:
    """Refuse an --out that cannot be written before any work is done."""
    if out.suffix.lower() not in SUFFIXES:
        raise IncrmlError(f"--out {shown}: write .csv or .parquet, not '{out.suffix or out.name}'")
    if out.is_dir():
        raise IncrmlError(f"--out {shown} is a folder; name a file in it")
    if not out.parent.is_dir():
        raise IncrmlError(f"--out {shown}: no folder {out.parent}")
    if out.exists() and source.exists() and out.samefile(source):
        raise IncrmlError(f"--out {shown} is the file being scored; name another file")


def _wrong_type(values: pd.Series, kind: str) -> str | None:
    """Why `values` cannot be a column of MLflow type `kind`, or None if it can."""
    from pandas.api import types

    from incrml.batch_files import count_rows, not_numbers, show_value

    if kind in _NUMBERS:
        if types.is_bool_dtype(values):
            return f"should be {kind}, not true/false (e.g. {show_value(values.iloc[0])})"
        count, example = not_numbers(values)
        if count:
            return f"should be {kind}: {count_rows(count, 'is not a number', 'are not numbers')} (e.g. {show_value(example)})"
    elif kind == "boolean" and not types.is_bool_dtype(values):
        return f"should be true/false (e.g. {show_value(values.dropna().iloc[0]) if values.notna().any() else 'empty'})"
    elif kind == "datetime" and not types.is_datetime64_any_dtype(values):
        return f"should be a datetime (e.g. {show_value(values.dropna().iloc[0]) if values.notna().any() else 'empty'})"
    return None


def model_input(frame: pd.DataFrame, loaded: LoadedModel, shown: str) -> pd.DataFrame:
    """The columns the model's signature names, in its order and types; every mismatch is
    listed in one error. Other columns (the target among them) are left out. Missing values
    stay NaN: the model's preprocessing imputes them as in training."""
    import pandas as pd

    names = [name for name, _ in loaded.inputs]
    missing = [name for name in names if name not in frame.columns]
    found = []
    if missing:
        listed = ", ".join(f"'{n}'" for n in missing)
        found.append(f"{len(missing)} of {len(names)} columns missing: {listed}")
    for name, kind in loaded.inputs:
        if name in frame.columns and (why := _wrong_type(frame[name], kind)):
            found.append(f"column '{name}' {why}")
    if found:
        raise IncrmlError(f"{shown} does not match model '{loaded.name}' v{loaded.version}: {'; '.join(found)}")
    columns = {}
    for name, kind in loaded.inputs:
        values = frame[name]
        if kind in _NUMBERS:  # numbers written as text too, as ingest accepts them
            values = pd.to_numeric(values)
        if kind in ("double", "float"):
            values = values.astype("float64" if kind == "double" else "float32")
        columns[name] = values
    return pd.DataFrame(columns, index=frame.index)


def predict_file(root: Path, params: Params, file: Path, *, model: str = CHAMPION, out: Path | None = None) -> dict:
    """Score every row of `file` with the model version `model` names; write the rows with a
    `prediction` column to `out` (atomically) if given. Returns what was done, as plain data;
    the predictions themselves too when there is no `out`."""
    from incrml.files import atomic_write
    from incrml.stages.evaluate import predict_rows
    from incrml.tracking import load_registered_model

    version, alias = parse_model(model)
    source = file.expanduser().absolute()
    target = out.expanduser().absolute() if out is not None else None
    if target is not None:
        check_out(target, str(out), source)
    frame = read_input(source, str(file))
    if target is not None and PREDICTION in frame.columns:
        raise IncrmlError(f"{file} already has a column '{PREDICTION}'; rename it, or score without --out")
    loaded = load_registered_model(root, params, version=version, alias=alias)
    predictions = predict_rows(loaded.model, model_input(frame, loaded, str(file)))
    if target is not None:
        scored = frame.assign(**{PREDICTION: predictions})
        if target.suffix.lower() == ".csv":
            atomic_write(target, lambda tmp: scored.to_csv(tmp, index=False))
        else:
            atomic_write(target, lambda tmp: scored.to_parquet(tmp, index=False))
    import pandas as pd

    counts = pd.Series(predictions).value_counts().sort_index()
    features = {name for name, _ in loaded.inputs}
    data = {
        "file": str(file),
        "model": loaded.name,
        "version": loaded.version,
        "alias": alias,
        "batch": loaded.batch,
        "rows": len(frame),
        "counts": {str(label): int(n) for label, n in counts.items()},
        "ignored_columns": [str(c) for c in frame.columns if c not in features],
        "out": str(out) if out is not None else None,
    }
    if target is None:
        data["predictions"] = predictions.tolist()
    return data


def render_predictions(data: dict) -> Group:
    """The summary: which model scored how many rows, and how many rows went to each class."""
    about = [data["alias"] or "", f"batch {data['batch']}" if data["batch"] else ""]
    about = f" ({', '.join(a for a in about if a)})" if any(about) else ""
    table = Table()
    table.add_column(PREDICTION, justify="right")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for label, count in data["counts"].items():
        table.add_row(label, str(count), f"{count / data['rows']:.1%}")
    lines = [f"Scored {data['rows']} rows of {data['file']} with {data['model']} v{data['version']}{about}", table]
    if data["ignored_columns"]:
        lines.append(f"Not model inputs, ignored: {', '.join(data['ignored_columns'])}.")
    if data["out"]:
        lines.append(f"Wrote the rows with a '{PREDICTION}' column to {data['out']}.")
    return Group(*lines)
