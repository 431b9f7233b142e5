"""merge_data: batches 1..N as one partition each in data/merged/, each stored once by DVC.

data/merged/ is a `persist` output: a new batch adds one partition instead of rewriting the
history, so this stage costs what the new batch costs. It stays a pure function of its deps:
partitions made under another stream, batch size or cleaning code are discarded, partitions
beyond N removed, and missing ones rebuilt from the stream, byte for byte what prepare_batch
would have written. In a files stream each partition records its file's md5, and one whose
file has changed since is rebuilt from that file alone.

Batches in data.exclude are left out (the manifest names those below its newest batch), and
the new batch is checked for drift against the history first (incrml.drift, written to
metrics/drift.json): with drift.gate refuse a drifted batch fails the stage with DriftRefused's
exit status, leaving data/merged as the history alone, exactly what excluding the batch gives.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from incrml import drift
from incrml.errors import DriftRefused, IncrmlError
from incrml.files import atomic_write, file_md5, read_json, write_json
from incrml.stages import prepare_batch as prepare_stage
from incrml.stages import stage_main
from incrml.stages.get_data import write_parquet
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
    excluded = set(manifest.get("excluded", []))
    return [partition(merged, b, "parquet") for b in range(1, manifest["batches"] + 1) if b not in excluded]


def manifest_of(key: dict, included: list[int]) -> dict:
    """What data/merged holds: batches 1..`batches` less `excluded`. A function of the included
    batches alone, so a history that leaves out its newest batch is byte for byte the one before."""
    last = max(included, default=0)
    left_out = sorted(set(range(1, last + 1)) - set(included))
    return {"key": key, "batches": last, **({"excluded": left_out} if left_out else {})}


def read_training(merged: Path, features: list[str], target: str):
    """(X, y) of every partition: X one matrix filled partition by partition, so the peak is the
    matrix itself plus one partition, not a frame of everything and its copies. X is float32
    when every feature is (a float32 stream is not widened: that would double it), else float64."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = partitions(merged)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    schema = pq.read_schema(parts[0]) if parts else None
    narrow = schema is not None and all(schema.field(name).type == pa.float32() for name in features)
    x = np.empty((rows, len(features)), dtype=np.float32 if narrow else np.float64)
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
    excluded = set(params.data.exclude)
    history = [b for b in range(1, batch) if b not in excluded]
    if batch in excluded and not history:
        raise IncrmlError(f"data.exclude leaves out every batch up to {batch}: nothing to train on")
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
        if not match or int(match.group(1)) >= batch or int(match.group(1)) in excluded:
            path.unlink()
    for earlier in history:
        if not _current(layout, params, earlier):
            frame, earlier_stats = prepare_stage.prepare_numbered(layout, params, schema, earlier)
            write_parquet(frame, partition(merged, earlier, "parquet"))
            write_json(partition(merged, earlier, "json"), earlier_stats)
    # The history alone first: what a refused batch leaves, and what the check reads.
    write_json(manifest, manifest_of(key, history))
    report = check_drift(layout, params, schema, history)
    write_json(layout.drift, report)
    if report["decision"] == "refused":
        raise DriftRefused(drift.refusal(report))
    if batch not in excluded:
        atomic_write(partition(merged, batch, "parquet"), lambda tmp: shutil.copyfile(layout.batch, tmp))
        atomic_write(partition(merged, batch, "json"), lambda tmp: shutil.copyfile(layout.batch_stats, tmp))
        write_json(manifest, manifest_of(key, [*history, batch]))


def spread(items: list[int]) -> Iterator[int]:
    """`items` in an order every prefix of which is spread evenly over the list: its first, its
    middle, its quarters, ... (the van der Corput sequence), so a sample of a few covers it all."""
    seen: set[int] = set()
    step = 0
    while len(seen) < len(items):
        fraction, weight, bits = 0.0, 0.5, step
        while bits:
            fraction += weight * (bits & 1)
            bits, weight = bits >> 1, weight / 2
        step += 1
        index = int(fraction * len(items))
        if index not in seen:
            seen.add(index)
            yield items[index]


def history_partitions(merged: Path, history: list[int], limit: int) -> list[tuple[int, int]]:
    """(batch, rows to read) of the partitions of `history` the drift check compares with: whole
    partitions in spread() order until `limit` rows, the last one cut short. Deterministic, and
    about limit / batch size of them however long the history is."""
    chosen, rows = [], 0
    for number in spread(history):
        take = min(read_json(partition(merged, number, "json"))["rows"], limit - rows)
        chosen.append((number, take))
        rows += take
        if rows >= limit:
            break
    return chosen


def history_sample(merged: Path, chosen: list[tuple[int, int]], columns: list[str]):
    """The rows history_partitions() chose, as one frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(partition(merged, n, "parquet"), columns=columns).slice(0, take) for n, take in chosen]
    return pa.concat_tables(tables).to_pandas()


def check_drift(layout: Layout, params: Params, schema: dict, history: list[int]) -> dict:
    """metrics/drift.json: the batch in data/processed against a bounded sample of the history."""
    settings, batch = params.drift, params.batch_number
    excluded = batch in params.data.exclude
    if settings.gate == "off" or not history:
        return drift.report(batch, settings.gate, excluded, [], 0, None)
    chosen = history_partitions(layout.merged, history, settings.history_rows)
    # The statistics are kept, not the decision: a batch the gate refused is checked again
    # once excluded, and gets the same statistics without computing them.
    inputs = [batch, settings.model_dump(mode="json"), schema["digest"], file_md5(layout.batch),
              [(n, take, file_md5(partition(layout.merged, n, "parquet"))) for n, take in chosen],
              hashlib.md5(Path(drift.__file__).read_bytes()).hexdigest()]
    memo = layout.drift_memo / f"{hashlib.md5(json.dumps(inputs).encode()).hexdigest()}.json"
    if memo.exists():
        kept = read_json(memo)
    else:
        import pyarrow.parquet as pq

        features, target = schema["features"], schema["target"]
        columns = [*features, target]
        sample = history_sample(layout.merged, chosen, columns)
        frame = pq.read_table(layout.batch, columns=columns).to_pandas()
        statistics = drift.compare(
            frame, sample, features, target, settings.psi_threshold, settings.p_value, settings.max_share
        )
        kept = {"history_rows": len(sample), "statistics": statistics}
        write_json(memo, kept)
    history_batches = sorted(n for n, _ in chosen)
    return drift.report(batch, settings.gate, excluded, history_batches, kept["history_rows"], kept["statistics"])


if __name__ == "__main__":
    stage_main(merge_data)
