"""get_data: the source into data/raw/: the stream fed batch by batch, and a holdout split off once.

The holdout is never trained on and is the same for every batch, so batches' metrics compare.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.files import atomic_write, file_md5, write_json
from incrml.stages import stage_main
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

    from incrml.config import DataParams, FileSource, Params, SyntheticSource

# Row groups let prepare_batch read one batch without decoding the whole stream.
ROW_GROUP_ROWS = 5_000


def load_source(data: DataParams, root: Path) -> pd.DataFrame:
    source = data.source
    if source.kind == "digits":
        from sklearn.datasets import load_digits

        frame = load_digits(as_frame=True).frame
        return frame.rename(columns={"target": data.target})
    if source.kind == "synthetic":
        return synthetic_stream(source, data.target, data.seed)
    if source.kind == "files":
        return read_first_batch_file(root)
    return read_file_source(source, root, data.target)


def read_first_batch_file(root: Path) -> pd.DataFrame:
    """A files stream's holdout and schema come from its first accepted file, and only from it."""
    path = Layout(root).batch_file(1)
    if not path.is_file():
        raise IncrmlError("no batch file accepted yet; add the first with `incrml ingest-batch --file PATH`")
    import pandas as pd

    return pd.read_parquet(path)


def read_file_source(source: FileSource, root: Path, target: str) -> pd.DataFrame:
    path = (root / source.path).resolve()
    # get_data depends on data/source/, so DVC sees a change to the file only there.
    if not path.is_relative_to((root / "data/source").resolve()):
        raise IncrmlError(f"data.source.path must be a file under data/source/, got {source.path}")
    if not path.is_file():
        raise IncrmlError(f"data.source.path: no file at {source.path}")
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
    else:
        raise IncrmlError(f"data.source.path must be a .csv or .parquet file, got {source.path}")
    if target not in frame.columns:
        raise IncrmlError(f"{source.path} has no target column '{target}'")
    if frame.empty:
        raise IncrmlError(f"{source.path} has no rows")
    return frame


def synthetic_stream(source: SyntheticSource, target: str, seed: int) -> pd.DataFrame:
    """A seeded linear multi-class stream; from drift_start_row on, half the features shift."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(source.features, source.classes))
    x = rng.normal(size=(source.rows, source.features)).astype(np.float32)
    if source.drift_start_row is not None:
        x[source.drift_start_row :, : max(1, source.features // 2)] += np.float32(source.drift_shift)
    noise = rng.gumbel(size=(source.rows, source.classes)).astype(np.float32)
    labels = np.argmax(x @ weights.astype(np.float32) + noise, axis=1)
    frame = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(source.features)])
    frame[target] = labels.astype(np.int64)
    return frame


def split_holdout(
    frame: pd.DataFrame, fraction: float, seed: int, shuffle_stream: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stream, holdout). An ordered source (a file, a drifting stream) keeps its order."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(frame))
    n_holdout = math.ceil(len(frame) * fraction)
    holdout_idx = np.sort(order[:n_holdout])
    stream_idx = order[n_holdout:] if shuffle_stream else np.sort(order[n_holdout:])
    stream = frame.iloc[stream_idx].reset_index(drop=True)
    holdout = frame.iloc[holdout_idx].reset_index(drop=True)
    return stream, holdout


def source_fingerprint(data: DataParams) -> dict:
    """The params the stream is a function of; a schema made from other ones is stale."""
    return data.model_dump(mode="json", include={"source", "target", "holdout_fraction", "seed"})


def count_stream_rows(data: DataParams, root: Path) -> int:
    """How many rows the stream will hold, without writing anything."""
    if data.source.kind == "synthetic":
        total = data.source.rows
    else:
        total = len(load_source(data, root))
    return total - math.ceil(total * data.holdout_fraction)


def describe(stream: pd.DataFrame, data: DataParams, digest: str) -> dict:
    """The stream's schema: what every batch, and later every dropped-in file, must match."""
    target = data.target
    return {
        "made_from": source_fingerprint(data),
        "rows": len(stream),
        "target": target,
        "features": [c for c in stream.columns if c != target],
        "dtypes": {c: str(t) for c, t in stream.dtypes.items()},
        "classes": sorted(stream[target].dropna().unique().tolist()),
        "digest": digest,
    }


def write_parquet(frame: pd.DataFrame, path: Path, row_group_size: int | None = None) -> None:
    """Parquet written the same way every time, so the same rows give the same bytes and hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size))


def get_data(layout: Layout, params: Params) -> dict:
    data = params.data
    frame = load_source(data, layout.root)
    shuffle = data.source.kind == "digits"
    stream, holdout = split_holdout(frame, data.holdout_fraction, data.seed, shuffle)
    write_parquet(holdout, layout.holdout)
    write_parquet(stream, layout.stream, row_group_size=ROW_GROUP_ROWS)
    schema = describe(stream, data, file_md5(layout.stream))
    if data.source.kind == "files":  # later files' labels are checked against these
        schema["classes"] = sorted(frame[data.target].dropna().unique().tolist())
    write_json(layout.schema, schema)
    return schema


if __name__ == "__main__":
    stage_main(get_data)
