"""merge_data: batches 1..N as one partition each in data/merged/, each stored once by DVC.

data/merged/ is a `persist` output: a new batch adds one partition instead of rewriting the
history, so this stage costs what the new batch costs. It stays a pure function of its deps:
partitions made under another stream, batch size or cleaning code are discarded, partitions
beyond N removed, and missing ones rebuilt from the stream, byte for byte what prepare_batch
would have written.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.config import Params
from incrml.errors import IncrmlError
from incrml.files import atomic_write, read_json, write_json
from incrml.stages import prepare_batch as prepare_stage
from incrml.stages import stage_main
from incrml.stages.get_data import write_parquet
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "_manifest.json"
_PARTITION = re.compile(r"batch-(\d+)\.(parquet|json)$")


def partition(merged: Path, batch: int, suffix: str) -> Path:
    return merged / f"batch-{batch:05d}.{suffix}"


def partitions(merged: Path) -> list[Path]:
    """The training partitions named by the manifest, in batch order."""
    manifest = read_json(merged / MANIFEST)
    return [partition(merged, b, "parquet") for b in range(1, manifest["batches"] + 1)]


def read_merged(merged: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.concat([pd.read_parquet(p) for p in partitions(merged)], ignore_index=True)


def _key(schema: dict, params: Params) -> dict:
    code = hashlib.md5(Path(prepare_stage.__file__).read_bytes()).hexdigest()
    return {"stream": schema["digest"], "batch_size": params.data.batch_size, "prepare_code": code}


def merge_data(layout: Layout, params: Params) -> None:
    schema = read_json(layout.schema)
    batch, size, merged = params.batch_number, params.data.batch_size, layout.merged
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
        if not (partition(merged, earlier, "parquet").exists() and partition(merged, earlier, "json").exists()):
            frame, earlier_stats = prepare_stage.prepare(
                layout.stream, earlier, size, schema["target"], schema["features"]
            )
            write_parquet(frame, partition(merged, earlier, "parquet"))
            write_json(partition(merged, earlier, "json"), {"batch": earlier, **earlier_stats})
    atomic_write(partition(merged, batch, "parquet"), lambda tmp: shutil.copyfile(layout.batch, tmp))
    atomic_write(partition(merged, batch, "json"), lambda tmp: shutil.copyfile(layout.batch_stats, tmp))
    write_json(manifest, {"key": key, "batches": batch})


if __name__ == "__main__":
    stage_main(merge_data)
