"""merge_data: batches 1..N as one partition each in data/merged/, each stored once by DVC.

data/merged/ is a `persist` output: a new batch adds one partition instead of rewriting the
history, so this stage costs what the new batch costs. It stays a pure function of its deps:
partitions made under another stream, batch size or cleaning code are discarded, partitions
beyond N removed, and missing ones rebuilt from the stream, byte for byte what prepare_batch
would have written. In a files stream each partition records its file's md5, and one whose
file has changed since is rebuilt from that file alone.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.files import atomic_write, read_json, write_json
from incrml.stages import prepare_batch as prepare_stage
from incrml.stages import stage_main
from incrml.stages.get_data import file_md5, write_parquet
from incrml.workspace import Layout

if TYPE_CHECKING:
    from incrml.config import Params

MANIFEST = "_manifest.json"
_PARTITION = re.compile(r"batch-(\d+)\.(parquet|json)$")


def partition(merged: Path, batch: int, suffix: str) -> Path:
    return merged / f"batch-{batch:05d}.{suffix}"


def partitions(merged: Path) -> list[Path]:
    """The training partitions named by the manifest, in batch order."""
    manifest = read_json(merged / MANIFEST)
    return [partition(merged, b, "parquet") for b in range(1, manifest["batches"] + 1)]


def read_training(merged: Path, features: list[str], target: str):
    """(X, y) of every partition: X one float64 matrix filled partition by partition, so the
    peak is the matrix itself plus one partition, not a frame of everything and its copies."""
    import numpy as np
    import pyarrow.parquet as pq

    parts = partitions(merged)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    x = np.empty((rows, len(features)), dtype=np.float64)
    labels = []
    start = 0
    for part in parts:
        table = pq.read_table(part, columns=[*features, target])
        stop = start + table.num_rows
        for column, name in enumerate(features):
            x[start:stop, column] = table.column(name).to_numpy(zero_copy_only=False)
        labels.append(table.column(target).to_numpy(zero_copy_only=False))
        start = stop
    return x, np.concatenate(labels)


def _key(schema: dict, params: Params) -> dict:
    code = hashlib.md5(Path(prepare_stage.__file__).read_bytes()).hexdigest()
    if params.data.source.kind == "files":  # batch sizes are the files'; each partition keys itself
        return {"stream": schema["digest"], "prepare_code": code}
    return {"stream": schema["digest"], "batch_size": params.data.batch_size, "prepare_code": code}


def _current(layout: Layout, params: Params, batch: int) -> bool:
    """The partition is there and, in a files stream, was made from its file as it is now."""
    parquet, stats = partition(layout.merged, batch, "parquet"), partition(layout.merged, batch, "json")
    if not (parquet.exists() and stats.exists()):
        return False
    if not params.data.source.kind == "files":
        return True  # the manifest's key covers the whole stream
    return read_json(stats).get("source_md5") == file_md5(layout.batch_file(batch))


def merge_data(layout: Layout, params: Params) -> None:
    schema = read_json(layout.schema)
    batch, merged = params.batch_number, layout.merged
    prepare_stage.check_available(layout, params, schema, batch)
    stats = read_json(layout.batch_stats)
    if stats["batch"] != batch:
        raise IncrmlError(f"data/processed holds batch {stats['batch']}, not {batch}; run prepare_batch")
    key = _key(schema, params)
    manifest = merged / MANIFEST
    merged.mkdir(parents=True, exist_ok=True)
    if not manifest.exists() or read_json(manifest).get("key") != key:
        shutil.rmtree(merged)
        merged.mkdir(parents=True)
    else:
        manifest.unlink()  # until the partitions below are complete, the folder claims nothing
    for path in merged.iterdir():
        match = _PARTITION.match(path.name)
        if not match or int(match.group(1)) >= batch:
            path.unlink()
    for earlier in range(1, batch):
        if not _current(layout, params, earlier):
            frame, earlier_stats = prepare_stage.prepare_numbered(layout, params, schema, earlier)
            write_parquet(frame, partition(merged, earlier, "parquet"))
            write_json(partition(merged, earlier, "json"), earlier_stats)
    atomic_write(partition(merged, batch, "parquet"), lambda tmp: shutil.copyfile(layout.batch, tmp))
    atomic_write(partition(merged, batch, "json"), lambda tmp: shutil.copyfile(layout.batch_stats, tmp))
    write_json(manifest, {"key": key, "batches": batch})


if __name__ == "__main__":
    stage_main(merge_data)
