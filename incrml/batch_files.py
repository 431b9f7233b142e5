"""Batches from files: a CSV or Parquet file someone dropped becomes the next batch of a files
workspace, once it is checked against the stream's schema, stored as Parquet and tracked by DVC.

Batch N is data/source/batches/batch-N.parquet (five digits), written only by accept_file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.config import FilesSource, Params, load_params
from incrml.errors import IncrmlError
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

    from incrml.ingest import Progress

_BATCH_FILE = re.compile(r"batch-(\d{5})\.parquet")
SUFFIXES = {".csv": "CSV", ".parquet": "Parquet"}


@dataclass(frozen=True)
class Accepted:
    batch: int
    rows: int
    path: Path  # the batch file in the workspace


def accepted(layout: Layout) -> int:
    """How many batch files the stream holds: batch-00001.parquet up to the last, with no gap."""
    if not layout.batch_files.is_dir():
        return 0
    numbers = sorted(int(m.group(1)) for p in layout.batch_files.iterdir() if (m := _BATCH_FILE.fullmatch(p.name)))
    for expected, number in enumerate(numbers, start=1):
        if number != expected:
            raise IncrmlError(
                f"data/source/batches has later batch files but no batch-{expected:05d}.parquet; "
                "restore it (`dvc checkout`)"
            )
    return len(numbers)


def check_accepted(layout: Layout, batch: int) -> None:
    count = accepted(layout)
    if batch > count:
        held = f"the stream holds {count} batch files" if count else "no batch file has been accepted yet"
        raise IncrmlError(f"batch {batch} requested; {held}; add one with `incrml ingest-batch --file PATH`")


def require_files_stream(params: Params) -> None:
    if not isinstance(params.data.source, FilesSource):
        raise IncrmlError(
            f"--file needs a files workspace, and this one's data.source is kind '{params.data.source.kind}'; "
            "make one with `incrml init DIR --from-files`"
        )


def read_batch_file(path: Path, shown: str) -> pd.DataFrame:
    return read_table_file(path, shown, "a batch file", "is not a valid batch")


def read_table_file(path: Path, shown: str, what: str, refused: str) -> pd.DataFrame:
    """The rows of a CSV or Parquet file; a file that cannot be read is refused by name:
    `what` names the file's role, `refused` says what it is then (`x.csv is not a valid batch: …`)."""
    if not path.exists():
        raise IncrmlError(f"no file at {shown}")
    if path.is_dir():
        raise IncrmlError(f"{shown} is a folder; give a .csv or .parquet file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IncrmlError(f"{shown}: {what} must be .csv or .parquet, not '{path.suffix or path.name}'")
    if path.stat().st_size == 0:
        raise IncrmlError(f"{shown} {refused}: the file is empty")
    import pandas as pd

    try:
        frame = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except PermissionError as exc:
        raise IncrmlError(f"cannot read {shown}: {exc.strerror}") from None
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors are ValueErrors
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(str(path), shown)[:200]
        raise IncrmlError(f"{shown} {refused}: not a readable {kind} file ({detail})") from None
    return frame.reset_index(drop=True)


def problems(frame: pd.DataFrame, reference: dict | None, target: str) -> list[str]:
    """Everything that keeps `frame` from being the stream's next batch; empty for a valid one.

    `reference` is the stream's schema (target, features, classes), None for the first file:
    that one needs rows, the target column, at least one feature and two labels.
    """
    found = [] if len(frame) else ["no rows"]
    if reference is not None:
        target = reference["target"]
        expected = [*reference["features"], target]
        missing = [c for c in reference["features"] if c not in frame.columns]
        unexpected = [c for c in frame.columns if c not in expected]
        if missing:
            found.append(f"{_columns(missing)} missing")
        if unexpected:
            found.append(f"unexpected {_columns(unexpected)}")
        features = [c for c in reference["features"] if c in frame.columns]
    else:
        features = [c for c in frame.columns if c != target]
        if not features:
            found.append("no feature columns")
    if target not in frame.columns:
        found.append(f"target column '{target}' missing")
    for column in features:
        count, example = not_numbers(frame[column])
        if count:
            said = count_rows(count, "is not a number", "are not numbers")
            found.append(f"column '{column}': {said} (e.g. {show_value(example)})")
    if target in frame.columns:
        labels = frame[target]
        if labels.isna().any():
            found.append(f"target '{target}': {count_rows(int(labels.isna().sum()), 'has no label', 'have no label')}")
        labelled = labels.dropna()
        if reference is not None:
            unseen = labelled[~labelled.isin(reference["classes"])]
            if len(unseen):
                said = count_rows(len(unseen), "has an unseen label", "have unseen labels")
                found.append(f"target '{target}': {said} (e.g. {show_value(unseen.iloc[0])})")
        elif len(labelled) and labelled.nunique() < 2:
            found.append(f"target '{target}': one label only ({show_value(labelled.iloc[0])}); the first batch needs two")
    return found


def normalise(frame: pd.DataFrame, reference: dict | None, target: str) -> pd.DataFrame:
    """The batch as the stream stores it: features as numbers, and after the first file the
    stream's columns in its order, each in the stream's dtype where that changes no value (so
    the same rows from a CSV or a Parquet file give the same bytes)."""
    import pandas as pd

    if reference is None:
        return pd.DataFrame({c: frame[c] if c == target else pd.to_numeric(frame[c]) for c in frame.columns})
    target = reference["target"]
    columns = {}
    for name, dtype in reference["dtypes"].items():
        values = frame[name] if name == target else pd.to_numeric(frame[name])
        columns[name] = _as_dtype(values, dtype)
    return pd.DataFrame(columns)


def reference_schema(layout: Layout, params: Params) -> dict | None:
    """What the next file must match: get_data's schema.json, or file 1 until get_data has run on
    it; None before the first file."""
    from incrml.files import read_json
    from incrml.stages.get_data import source_fingerprint

    if accepted(layout) == 0:
        return None
    if layout.schema.exists():
        schema = read_json(layout.schema)
        if schema.get("made_from") == source_fingerprint(params.data):
            return schema
    import pandas as pd

    first, target = pd.read_parquet(layout.batch_file(1)), params.data.target
    if target not in first.columns:
        raise IncrmlError(f"data.target '{target}' is not a column of batch 1 ({layout.batch_file(1).name})")
    return {
        "target": target,
        "features": [c for c in first.columns if c != target],
        "dtypes": {c: str(t) for c, t in first.dtypes.items()},
        "classes": sorted(first[target].dropna().unique().tolist()),
    }


def accept_file(root: Path, path: Path, force: bool = False) -> Accepted:
    """Check the file at `path` (relative to the cwd) and store it as the stream's next batch.

    A refused file changes nothing. An accepted one is written beside its final name, renamed
    into place and tracked by DVC (`dvc add`); if tracking fails it is taken back out.
    """
    from incrml import pipeline
    from incrml.files import atomic_write, file_md5

    layout = Layout(root)
    params = load_params(root)
    require_files_stream(params)
    shown = str(path)
    frame = read_batch_file((Path.cwd() / path).resolve(), shown)
    reference = reference_schema(layout, params)
    found = problems(frame, reference, params.data.target)
    if found:
        raise IncrmlError(f"{shown} is not a valid batch: {'; '.join(found)}")
    content = _parquet_bytes(normalise(frame, reference, params.data.target))
    count = accepted(layout)
    digest = hashlib.md5(content).hexdigest()
    if not force:
        for earlier in range(1, count + 1):
            if file_md5(layout.batch_file(earlier)) == digest:
                raise IncrmlError(
                    f"{shown} has the same content as batch {earlier}; --force adds it again as batch {count + 1}"
                )
    for earlier in range(1, count + 1):  # one a killed accept renamed into place but never tracked
        if not _dvc_file(layout.batch_file(earlier)).exists():
            pipeline.track(root, layout.batch_file(earlier))
    batch_file = layout.batch_file(count + 1)
    atomic_write(batch_file, lambda tmp: tmp.write_bytes(content))
    try:
        pipeline.track(root, batch_file)
    except BaseException:
        batch_file.unlink(missing_ok=True)
        _dvc_file(batch_file).unlink(missing_ok=True)
        raise
    return Accepted(count + 1, len(frame), batch_file)


def ingest_file(
    root: Path, path: Path, force: bool = False, progress: Progress | None = None, wait: float = 5.0
) -> Accepted:
    """Accept the file as batch N and reproduce the pipeline for N, as `ingest-batch N` does.

    If the reproduction fails, the batch file stays (it is data that arrived) and params.yaml
    goes back; `incrml ingest-batch N` retries it.
    """
    from incrml.ingest import reproduce_batch
    from incrml.lock import workspace_lock

    command = f"ingest-batch --file {path}"
    with workspace_lock(root, command, wait):  # one hold from accept to the end of reproduce
        accepted_batch = accept_file(root, path, force)
        n = accepted_batch.batch
        try:
            reproduce_batch(root, n, progress=progress, wait=wait, command=command)
        except IncrmlError as exc:
            exc.args = (f"{exc}; {path} is kept as batch {n}: `incrml ingest-batch {n}` retries it",)
            raise
    return accepted_batch


def _dvc_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.dvc")


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def _as_dtype(values: pd.Series, dtype: str) -> pd.Series:
    try:
        cast = values.astype(dtype)
    except (TypeError, ValueError):
        return values
    present = values.notna()
    same = cast.notna().equals(present) and bool((cast[present] == values[present]).all())
    return cast if same else values


def not_numbers(values: pd.Series) -> tuple[int, object]:
    """How many values are not finite numbers (text, or ±inf, which no scaler or model takes),
    and the first of them; empty cells are not counted (they are imputed)."""
    import numpy as np
    import pandas as pd

    numbers = values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()) | np.isinf(numbers.astype("float64"))
    return int(bad.sum()), values[bad].iloc[0] if bad.any() else None


def _columns(names: list) -> str:
    listed = ", ".join(f"'{n}'" for n in names)
    return f"column {listed}" if len(names) == 1 else f"columns {listed}"


def count_rows(count: int, one: str, many: str) -> str:
    return f"1 row {one}" if count == 1 else f"{count} rows {many}"


def show_value(value: object) -> str:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():  # a label column with a gap reads as floats
        value = int(value)
    return repr(value) if isinstance(value, str) else str(value)
