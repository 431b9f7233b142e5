"""Batches from files: a files workspace fed CSV and Parquet files, with real DVC and MLflow;
and the validation and the merge rebuild on small frames, without them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROWS, one_line_error, snapshot
from ruamel.yaml import YAML

from incrml import batch_files, pipeline
from incrml.config import Params, load_params
from incrml.errors import IncrmlError
from incrml.files import file_md5, read_json
from incrml.pipeline import MD5_MEMO, snapshot_key, stale_stages
from incrml.stages import get_data, merge_data, prepare_batch
from incrml.workspace import Layout

def _partition_rows(root: Path) -> list[int]:
    merged = root / "data/merged"
    return [read_json(p.with_suffix(".json"))["rows"] for p in merge_data.partitions(merged)]


def test_files_become_batches_tracked_by_dvc_and_a_failed_ingest_is_retried(cli, files_ws, drops, monkeypatch):
    assert load_params(files_ws).data.source.kind == "files"
    assert _partition_rows(files_ws) == [ROWS - 16, ROWS]
    assert len(pd.read_parquet(files_ws / "data/raw/holdout.parquet")) == 16

    # The reproduction fails: the file stays (data that arrived), params.yaml goes back.
    real = pipeline.reproduce
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise IncrmlError("stage train failed: boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "reproduce", fails_once)
    line = one_line_error(cli("ingest-batch", "--file", str(drops[2])))
    assert "stage train failed: boom" in line and "kept as batch 3: `incrml ingest-batch 3` retries it" in line
    monkeypatch.setattr(pipeline, "reproduce", real)
    assert load_params(files_ws).batch_number == 2
    assert (files_ws / "data/source/batches/batch-00003.parquet").exists()
    assert stale_stages(files_ws) == {}

    result = cli("ingest-batch", "3")
    assert result.exit_code == 0, result.output
    assert _partition_rows(files_ws) == [ROWS - 16, ROWS, ROWS]
    assert json.loads((files_ws / "metrics/metrics.json").read_text())["training_rows"] == 3 * ROWS - 16
    assert stale_stages(files_ws) == {}
    for batch in (1, 2, 3):  # each accepted file is a DVC-tracked input, its content in the cache
        path = files_ws / f"data/source/batches/batch-{batch:05d}.parquet"
        md5 = YAML(typ="safe").load(path.with_name(path.name + ".dvc").read_text())["outs"][0]["md5"]
        assert md5 == file_md5(path)
        assert (files_ws / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()

    before = snapshot(files_ws)
    line = one_line_error(cli("ingest-batch", "--file", str(drops[1])))
    assert "has the same content as batch 2; --force adds it again as batch 4" in line
    assert snapshot(files_ws) == before

    result = cli("ingest-batch", "--file", str(drops[1]), "--force")
    assert result.exit_code == 0, result.output
    assert f"as batch 4 ({ROWS} rows): data/source/batches/batch-00004.parquet" in result.stdout
    assert _partition_rows(files_ws) == [ROWS - 16, ROWS, ROWS, ROWS]
    assert stale_stages(files_ws) == {}


def _bad_files(folder: Path, good: pd.DataFrame) -> dict[str, Path]:
    """One file per mistake, each made from a good batch."""
    bad = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        bad[name] = folder / f"{name}.csv"
        frame.to_csv(bad[name], index=False)

    csv("header only", good.iloc[:0])
    csv("missing column", good.drop(columns=["pixel_0_3"]))
    csv("extra column", good.assign(note="x"))
    letters = good.astype({"pixel_0_5": object})
    letters.loc[[1, 2, 3], "pixel_0_5"] = "abc"
    csv("not numbers", letters)
    infinite = good.astype({"pixel_0_6": float})
    infinite.loc[[2, 4], "pixel_0_6"] = [np.inf, -np.inf]
    csv("infinite", infinite)
    csv("no target column", good.drop(columns=["target"]))
    unlabelled = good.astype({"target": float})
    unlabelled.loc[[4, 5], "target"] = np.nan
    csv("no labels", unlabelled)
    csv("unseen label", good.assign(target=good["target"].where(good.index != 7, 17)))
    bad["empty file"] = folder / "empty.csv"
    bad["empty file"].touch()
    bad["garbage"] = folder / "garbage.parquet"
    bad["garbage"].write_bytes(b"\x00\x01 not parquet " * 40)
    bad["folder"] = folder
    bad["no such file"] = folder / "nothere.csv"
    bad["extension"] = folder / "batch.xlsx"
    bad["extension"].write_text("a,b\n1,2\n")
    return bad


BAD_FILES = [
    ("header only", "is not a valid batch: no rows"),
    ("missing column", "is not a valid batch: column 'pixel_0_3' missing"),
    ("extra column", "is not a valid batch: unexpected column 'note'"),
    ("not numbers", "column 'pixel_0_5': 3 rows are not numbers (e.g. 'abc')"),
    ("infinite", "column 'pixel_0_6': 2 rows are not numbers (e.g. inf)"),
    ("no target column", "target column 'target' missing"),
    ("no labels", "target 'target': 2 rows have no label"),
    ("unseen label", "target 'target': 1 row has an unseen label (e.g. 17)"),
    ("empty file", "is not a valid batch: the file is empty"),
    ("garbage", "is not a valid batch: not a readable Parquet file"),
    ("folder", "is a folder; give a .csv or .parquet file"),
    ("no such file", "no file at "),
    ("extension", "a batch file must be .csv or .parquet, not '.xlsx'"),
]


@pytest.mark.parametrize(("case", "message"), BAD_FILES, ids=[case for case, _ in BAD_FILES])
def test_a_bad_file_is_one_line_and_changes_nothing(cli, files_ws, drops, tmp_path, case, message):
    (tmp_path / "bad").mkdir()
    path = _bad_files(tmp_path / "bad", pd.read_csv(drops[2]))[case]
    before = snapshot(files_ws)
    assert message in one_line_error(cli("ingest-batch", "--file", str(path)))
    assert snapshot(files_ws) == before
    assert sorted(p.name for p in (files_ws / "data/source/batches").iterdir() if p.suffix == ".parquet") == [
        "batch-00001.parquet",
        "batch-00002.parquet",
    ]


def test_refusals_of_the_command_itself(cli, files_ws, drops):
    before = snapshot(files_ws)
    for args, message in [
        (["ingest-batch", "3"], "batch 3 requested; the stream holds 2 batch files; add one with"),
        (["ingest-batch", "3", "--file", str(drops[2])], "give a batch number or --file PATH, not both"),
        (["ingest-batch", "--force"], "--force goes with --file PATH"),
    ]:
        assert message in one_line_error(cli(*args))
    assert snapshot(files_ws) == before


def test_file_in_a_digits_workspace_is_refused(cli, workspace, drops):
    before = snapshot(workspace)
    line = one_line_error(cli("ingest-batch", "--file", str(drops[0])))
    assert "--file needs a files workspace, and this one's data.source is kind 'digits'" in line
    assert "incrml init DIR --from-files" in line
    assert snapshot(workspace) == before


# Validation and the merge rebuild on small frames: no DVC, no MLflow.

SCHEMA = {
    "target": "y",
    "features": ["a", "b"],
    "dtypes": {"a": "float64", "b": "int64", "y": "int64"},
    "classes": [0, 1],
}


def test_every_problem_is_named_at_once():
    frame = pd.DataFrame({"a": ["1.5", "x", None, "y"], "c": [1, 2, 3, 4], "y": [0, 5, None, 1]})
    assert batch_files.problems(frame, SCHEMA, "y") == [
        "column 'b' missing",
        "unexpected column 'c'",
        "column 'a': 2 rows are not numbers (e.g. 'x')",
        "target 'y': 1 row has no label",
        "target 'y': 1 row has an unseen label (e.g. 5)",
    ]
    assert batch_files.problems(pd.DataFrame({"a": [1.0], "b": [2], "y": [1]}), SCHEMA, "y") == []


def test_the_first_file_needs_rows_a_target_a_feature_and_two_labels():
    assert batch_files.problems(pd.DataFrame({"y": [0, 1]}), None, "y") == ["no feature columns"]
    assert batch_files.problems(pd.DataFrame({"a": [1.0, 2.0]}), None, "y") == ["target column 'y' missing"]
    assert batch_files.problems(pd.DataFrame({"a": [1.0, 2.0], "y": [3, 3]}), None, "y") == [
        "target 'y': one label only (3); the first batch needs two"
    ]
    assert batch_files.problems(pd.DataFrame({"a": [], "y": []}), None, "y") == ["no rows"]
    assert batch_files.problems(pd.DataFrame({"a": ["1", "2"], "y": ["cat", "dog"]}), None, "y") == []


def test_the_same_rows_from_csv_or_parquet_give_the_same_bytes(tmp_path):
    frame = pd.DataFrame({"b": np.array([1, 2], dtype=np.int32), "y": [1, 0], "a": [0.5, np.nan]})
    frame.to_parquet(tmp_path / "x.parquet")
    frame.to_csv(tmp_path / "x.csv", index=False)
    parts = [
        batch_files.normalise(batch_files.read_batch_file(tmp_path / name, name), SCHEMA, "y")
        for name in ("x.parquet", "x.csv")
    ]
    assert list(parts[0].columns) == ["a", "b", "y"]
    assert {c: str(t) for c, t in parts[0].dtypes.items()} == SCHEMA["dtypes"]
    assert batch_files._parquet_bytes(parts[0]) == batch_files._parquet_bytes(parts[1])
    # A value the stream's dtype cannot hold keeps its own: nothing is lost to a cast.
    assert batch_files.normalise(pd.DataFrame({"a": [1.0], "b": [2.5], "y": [1]}), SCHEMA, "y")["b"].tolist() == [2.5]


def test_merge_data_rebuilds_only_the_partition_whose_file_changed(tmp_path):
    layout = Layout(tmp_path)
    rng = np.random.default_rng(0)

    def drop(batch: int, seed_shift: float) -> None:
        frame = pd.DataFrame({"a": rng.normal(size=30) + seed_shift, "target": np.arange(30) % 2})
        get_data.write_parquet(frame, layout.batch_file(batch))

    for batch in (1, 2, 3):
        drop(batch, 0.0)
    for batch in (1, 2, 3):
        params = Params(batch_number=batch, data={"source": {"kind": "files"}})
        if batch == 1:
            get_data.get_data(layout, params)
        prepare_batch.prepare_batch(layout, params)
        merge_data.merge_data(layout, params)
    first = (layout.merged / "batch-00001.parquet").stat().st_mtime_ns
    drop(2, 5.0)  # someone replaced batch 2's file
    merge_data.merge_data(layout, params)
    stats = read_json(layout.merged / "batch-00002.json")
    assert stats["source_md5"] == file_md5(layout.batch_file(2))
    rebuilt = pd.read_parquet(layout.merged / "batch-00002.parquet")
    pd.testing.assert_frame_equal(rebuilt, pd.read_parquet(layout.batch_file(2)))
    assert (layout.merged / "batch-00001.parquet").stat().st_mtime_ns == first
    assert read_json(layout.merged / "batch-00001.json")["rows"] == 30 - 6


def test_the_snapshot_key_reads_a_batch_file_once_then_only_when_it_changes(tmp_path):
    """The key of an ingest's inputs costs a stat per batch file, not a read of the history."""
    (tmp_path / "params.yaml").write_text("batch_number: 1\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: 'true'\n    deps: [data/source/batches]\n    outs: [out]\n")
    batches = tmp_path / "data/source/batches"
    batches.mkdir(parents=True)
    for name in "ab":
        (batches / f"batch-{name}.parquet").write_bytes(name.encode() * 1000)
    key = snapshot_key(tmp_path)
    memo_path = tmp_path / MD5_MEMO
    memo = json.loads(memo_path.read_text())
    assert memo["data/source/batches/batch-a.parquet"][1] == hashlib.md5(b"a" * 1000).hexdigest()

    # Unchanged on disk (size, mtime, inode): the memo's md5 is taken, the bytes are not read.
    memo["data/source/batches/batch-a.parquet"][1] = hashlib.md5(b"other").hexdigest()
    memo_path.write_text(json.dumps(memo))
    assert snapshot_key(tmp_path) != key
    # Changed on disk, even to bytes of the same size: read again.
    changed = batches / "batch-a.parquet"
    changed.write_bytes(b"c" * 1000)
    os.utime(changed, ns=(1, 1))
    assert snapshot_key(tmp_path) != key
    changed.write_bytes(b"a" * 1000)
    os.utime(changed, ns=(2, 2))
    assert snapshot_key(tmp_path) == key
