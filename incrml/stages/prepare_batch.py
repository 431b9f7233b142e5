"""prepare_batch: rows (N-1)*size+1 .. N*size of the stream, cleaned, into data/processed/.

In a files stream batch N is the accepted file N instead (batch 1: file 1 less the holdout).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.files import file_md5, read_json, write_json
from incrml.stages import stage_main
from incrml.stages.get_data import write_parquet
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

    from incrml.config import Params


def batch_count(stream_rows: int, batch_size: int) -> int:
    """Whole batches in the stream; a short tail is not a batch."""
    return stream_rows // batch_size


def check_batch(batch: int, stream_rows: int, batch_size: int) -> None:
    available = batch_count(stream_rows, batch_size)
    if batch > available:
        raise IncrmlError(
            f"batch {batch} requested; the stream holds {available} batches of {batch_size}"
        )


def read_batch(stream: Path, batch: int, batch_size: int) -> pd.DataFrame:
    """Read only the row groups that hold the batch's rows."""
    import pyarrow.parquet as pq

    start, stop = (batch - 1) * batch_size, batch * batch_size
    parquet = pq.ParquetFile(stream)
    groups, first_row, offset = [], None, 0
    for i in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(i).num_rows
        if offset < stop and offset + rows > start:
            groups.append(i)
            first_row = offset if first_row is None else first_row
        offset += rows
    table = parquet.read_row_groups(groups).slice(start - (first_row or 0), stop - start)
    return table.to_pandas()


def clean(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows without a label teach nothing; drop them."""
    return frame[frame[target].notna()].reset_index(drop=True)


def feature_stats(frame: pd.DataFrame, features: list[str]) -> dict:
    """Per-feature count, mean and sum of squared deviations: enough to combine batches exactly."""
    import numpy as np

    values = frame[features].to_numpy(dtype=np.float64)
    count = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
        m2 = np.nansum((values - mean) ** 2, axis=0)
    return {"rows": len(frame), "count": count.tolist(), "mean": mean.tolist(), "m2": m2.tolist()}


def prepare(stream: Path, batch: int, batch_size: int, target: str, features: list[str]):
    """The cleaned rows of one batch and their feature statistics."""
    return prepare_rows(read_batch(stream, batch, batch_size), target, features)


def prepare_rows(rows: pd.DataFrame, target: str, features: list[str]):
    frame = clean(rows, target)
    return frame, feature_stats(frame, features)


def check_available(layout: Layout, params: Params, schema: dict, batch: int) -> None:
    if params.data.source.kind == "files":
        from incrml.batch_files import check_accepted

        check_accepted(layout, batch)
    else:
        check_batch(batch, schema["rows"], params.data.batch_size)


def prepare_numbered(layout: Layout, params: Params, schema: dict, batch: int) -> tuple[pd.DataFrame, dict]:
    """Batch `batch`, cleaned, and its statistics, as data/processed/ and data/merged/ hold them.

    A files stream's statistics also record the md5 of the batch's file, so that merge_data
    can tell an earlier partition whose file has changed since.
    """
    target, features = schema["target"], schema["features"]
    if params.data.source.kind == "files":
        import pandas as pd

        source = layout.batch_file(batch)
        frame, stats = prepare_rows(pd.read_parquet(layout.stream if batch == 1 else source), target, features)
        return frame, {"batch": batch, "source_md5": file_md5(source), **stats}
    frame, stats = prepare(layout.stream, batch, params.data.batch_size, target, features)
    return frame, {"batch": batch, **stats}


def prepare_batch(layout: Layout, params: Params) -> None:
    schema = read_json(layout.schema)
    check_available(layout, params, schema, params.batch_number)
    frame, stats = prepare_numbered(layout, params, schema, params.batch_number)
    write_parquet(frame, layout.batch)
    write_json(layout.batch_stats, stats)


if __name__ == "__main__":
    stage_main(prepare_batch)
