"""The stage functions on small frames in tmp_path: no DVC, no MLflow."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from incrml.config import DataParams, Params, SyntheticSource, TrainParams
from incrml.errors import IncrmlError
from incrml.files import read_json
from incrml.stages import evaluate, get_data, merge_data, prepare_batch, preprocess
from incrml.stages.evaluate import score
from incrml.stages.train import fit
from incrml.workspace import Layout

FEATURES = ["a", "b", "c"]


def synthetic(rows: int = 500, features: int = 4, **extra) -> SyntheticSource:
    return SyntheticSource(kind="synthetic", rows=rows, features=features, **extra)


def synthetic_params(batch_number: int, batch_size: int = 50, rows: int = 500) -> Params:
    return Params(
        batch_number=batch_number,
        data={"source": {"kind": "synthetic", "rows": rows, "features": 4}, "batch_size": batch_size},
    )


def numbered(rows: int) -> pd.DataFrame:
    """A frame whose `row` column is its original position."""
    return pd.DataFrame({"row": np.arange(rows), "target": np.arange(rows) % 3})


def ingest(layout: Layout, params: Params) -> None:
    """What `dvc repro` runs up to merge_data, get_data only when the stream is not there yet."""
    if not layout.stream.exists():
        get_data.get_data(layout, params)
    prepare_batch.prepare_batch(layout, params)
    merge_data.merge_data(layout, params)


def read_merged(merged: Path) -> pd.DataFrame:
    """Every training partition, in batch order, as one frame."""
    return pd.concat([pd.read_parquet(p) for p in merge_data.partitions(merged)], ignore_index=True)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_split_holdout_is_deterministic_for_a_seed() -> None:
    frame = numbered(200)
    first = get_data.split_holdout(frame, 0.25, seed=7, shuffle_stream=True)
    again = get_data.split_holdout(frame, 0.25, seed=7, shuffle_stream=True)
    other = get_data.split_holdout(frame, 0.25, seed=8, shuffle_stream=True)
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    assert not first[1]["row"].equals(other[1]["row"])


@pytest.mark.parametrize(("rows", "fraction"), [(200, 0.25), (101, 0.2), (7, 0.5), (1797, 0.2)])
def test_split_holdout_is_disjoint_with_ceil_of_the_fraction_held_out(rows: int, fraction: float) -> None:
    stream, holdout = get_data.split_holdout(numbered(rows), fraction, seed=42, shuffle_stream=True)
    assert len(holdout) == math.ceil(rows * fraction)
    assert len(stream) == rows - len(holdout)
    assert set(stream["row"]).isdisjoint(holdout["row"])
    assert set(stream["row"]) | set(holdout["row"]) == set(range(rows))


def test_split_holdout_keeps_an_ordered_source_in_order() -> None:
    stream, holdout = get_data.split_holdout(numbered(300), 0.2, seed=42, shuffle_stream=False)
    assert stream["row"].is_monotonic_increasing
    assert holdout["row"].is_monotonic_increasing
    assert list(stream.index) == list(range(len(stream)))


def test_split_holdout_shuffles_the_stream_when_asked() -> None:
    stream, _ = get_data.split_holdout(numbered(300), 0.2, seed=42, shuffle_stream=True)
    assert not stream["row"].is_monotonic_increasing


def test_digits_give_1437_stream_rows_in_28_batches_of_50(tmp_path: Path) -> None:
    data = DataParams()
    frame = get_data.load_source(data, tmp_path)
    stream, holdout = get_data.split_holdout(frame, data.holdout_fraction, data.seed, shuffle_stream=True)
    assert (len(frame), len(holdout), len(stream)) == (1797, 360, 1437)
    assert get_data.count_stream_rows(data, tmp_path) == 1437
    assert prepare_batch.batch_count(len(stream), data.batch_size) == 28


def test_check_batch_names_what_the_stream_holds() -> None:
    prepare_batch.check_batch(28, 1437, 50)
    with pytest.raises(IncrmlError) as caught:
        prepare_batch.check_batch(40, 1437, 50)
    assert str(caught.value) == "batch 40 requested; the stream holds 28 batches of 50"
    with pytest.raises(IncrmlError):
        prepare_batch.check_batch(29, 1437, 50)


def test_synthetic_stream_is_seeded() -> None:
    source = synthetic(rows=300, features=5, classes=3)
    first = get_data.synthetic_stream(source, "target", seed=1)
    pd.testing.assert_frame_equal(first, get_data.synthetic_stream(source, "target", seed=1))
    assert not first.equals(get_data.synthetic_stream(source, "target", seed=2))


def test_synthetic_stream_has_the_requested_shape_and_classes() -> None:
    frame = get_data.synthetic_stream(synthetic(rows=300, features=5, classes=3), "label", seed=1)
    assert list(frame.columns) == ["x00", "x01", "x02", "x03", "x04", "label"]
    assert frame.shape == (300, 6)
    assert set(frame["label"]) <= {0, 1, 2}
    assert frame["label"].dtype == np.int64


def test_synthetic_drift_shifts_the_first_half_of_features_from_drift_start_row_on() -> None:
    start, shift = 2000, 1.5
    plain = get_data.synthetic_stream(synthetic(rows=4000, features=6), "target", seed=3)
    drifted = get_data.synthetic_stream(
        synthetic(rows=4000, features=6, drift_start_row=start, drift_shift=shift), "target", seed=3
    )
    shifted, steady = ["x00", "x01", "x02"], ["x03", "x04", "x05"]
    before, after = drifted.iloc[:start], drifted.iloc[start:]
    np.testing.assert_allclose(after[shifted].mean() - before[shifted].mean(), shift, atol=0.15)
    np.testing.assert_allclose(after[steady].mean() - before[steady].mean(), 0.0, atol=0.15)
    pd.testing.assert_frame_equal(before[shifted + steady], plain.iloc[:start][shifted + steady])
    np.testing.assert_allclose(after[shifted] - plain.iloc[start:][shifted], shift, rtol=1e-6)


def test_write_parquet_gives_the_same_bytes_for_the_same_frame(tmp_path: Path) -> None:
    frame = get_data.synthetic_stream(synthetic(rows=300), "target", seed=0)
    get_data.write_parquet(frame, tmp_path / "one.parquet")
    get_data.write_parquet(frame.copy(), tmp_path / "two.parquet", row_group_size=None)
    one = get_data.file_md5(tmp_path / "one.parquet")
    assert one == get_data.file_md5(tmp_path / "two.parquet")
    assert one == hashlib.md5((tmp_path / "one.parquet").read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == ["one.parquet", "two.parquet"]


def test_read_batch_returns_exactly_that_batchs_rows_across_row_group_boundaries(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    stream = tmp_path / "stream.parquet"
    get_data.write_parquet(numbered(23), stream, row_group_size=7)
    assert pq.ParquetFile(stream).num_row_groups == 4
    for batch in range(1, 5):
        rows = prepare_batch.read_batch(stream, batch, 5)
        assert list(rows["row"]) == list(range((batch - 1) * 5, batch * 5))


def test_read_batch_across_the_shipped_row_group_boundary(tmp_path: Path) -> None:
    stream = tmp_path / "stream.parquet"
    rows = get_data.ROW_GROUP_ROWS + 300
    get_data.write_parquet(numbered(rows), stream, row_group_size=get_data.ROW_GROUP_ROWS)
    batch = get_data.ROW_GROUP_ROWS // 128 + 1
    assert list(prepare_batch.read_batch(stream, batch, 128)["row"]) == list(range((batch - 1) * 128, batch * 128))


def test_clean_drops_rows_without_a_target() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0, 5.0], "target": [0, np.nan, 1, None, 1]})
    cleaned = prepare_batch.clean(frame, "target")
    assert list(cleaned["a"].fillna(-1)) == [1.0, -1.0, 5.0]
    assert list(cleaned["target"]) == [0, 1, 1]
    assert list(cleaned.index) == [0, 1, 2]


@pytest.fixture
def batches() -> list[pd.DataFrame]:
    """Three batches of unequal size and scale, with NaNs, one of them missing a whole feature."""
    rng = np.random.default_rng(5)
    parts = []
    for rows, offset in [(40, 0.0), (25, 3.0), (60, -1.0)]:
        values = rng.normal(size=(rows, 3)) * [1.0, 5.0, 0.1] + [offset, 10.0, -2.0]
        parts.append(pd.DataFrame(values, columns=FEATURES))
    parts[0].iloc[[1, 4, 9], 0] = np.nan
    parts[1].iloc[:, 1] = np.nan
    parts[2].iloc[[0, 30], 2] = np.nan
    return parts


def test_combine_equals_numpy_over_the_concatenation(batches: list[pd.DataFrame]) -> None:
    combined = preprocess.combine([prepare_batch.feature_stats(b, FEATURES) for b in batches])
    everything = pd.concat(batches).to_numpy()
    assert combined["rows"] == 125
    np.testing.assert_allclose(combined["mean"], np.nanmean(everything, axis=0), rtol=1e-12)
    np.testing.assert_allclose(combined["var"], np.nanvar(everything, axis=0), rtol=1e-10)


def test_standardizing_preprocessor_equals_standard_scaler_on_all_rows(batches: list[pd.DataFrame]) -> None:
    from sklearn.preprocessing import StandardScaler

    stats = [prepare_batch.feature_stats(b, FEATURES) for b in batches]
    spec = preprocess.fit_preprocessor(stats, FEATURES, standardize=True)
    everything = pd.concat(batches, ignore_index=True)
    expected = np.nan_to_num(StandardScaler().fit(everything).transform(everything))
    transformed = preprocess.build_preprocessor(spec).transform(everything)
    assert not np.isnan(transformed).any()
    np.testing.assert_allclose(transformed, expected, atol=1e-12)


def test_preprocessor_without_standardize_only_centres(batches: list[pd.DataFrame]) -> None:
    stats = [prepare_batch.feature_stats(b, FEATURES) for b in batches]
    spec = preprocess.fit_preprocessor(stats, FEATURES, standardize=False)
    everything = pd.concat(batches, ignore_index=True)
    values = everything.to_numpy()
    transformed = preprocess.build_preprocessor(spec).transform(everything)
    np.testing.assert_allclose(transformed, np.nan_to_num(values - np.nanmean(values, axis=0)), atol=1e-12)


def test_merge_data_for_batch_3_holds_partitions_1_to_3_and_a_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    ingest(layout, synthetic_params(3))
    assert sorted(os.listdir(layout.merged)) == [
        "_manifest.json",
        "batch-00001.json",
        "batch-00001.parquet",
        "batch-00002.json",
        "batch-00002.parquet",
        "batch-00003.json",
        "batch-00003.parquet",
    ]
    assert read_json(layout.merged / "_manifest.json")["batches"] == 3
    merged = read_merged(layout.merged)
    pd.testing.assert_frame_equal(merged, pd.read_parquet(layout.stream).iloc[:150].reset_index(drop=True))
    assert [read_json(layout.merged / f"batch-0000{n}.json")["batch"] for n in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize("source", ["synthetic", "digits"])
def test_read_training_keeps_a_float32_stream_float32_and_widens_the_rest(tmp_path: Path, source: str) -> None:
    layout = Layout(tmp_path)
    ingest(layout, synthetic_params(3) if source == "synthetic" else Params(batch_number=3))
    merged = read_merged(layout.merged)
    features = [c for c in merged.columns if c != "target"]
    x, y = merge_data.read_training(layout.merged, features, "target")
    assert x.dtype == (np.float32 if source == "synthetic" else np.float64)
    np.testing.assert_array_equal(x, merged[features].to_numpy(dtype=x.dtype))
    np.testing.assert_array_equal(y, merged["target"].to_numpy())


def test_merge_data_rebuilds_a_deleted_partition_byte_for_byte(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    params = synthetic_params(3)
    ingest(layout, params)
    original = folder_bytes(layout.merged)
    (layout.merged / "batch-00002.parquet").unlink()
    (layout.merged / "batch-00002.json").unlink()
    merge_data.merge_data(layout, params)
    assert folder_bytes(layout.merged) == original


def test_merge_data_one_batch_at_a_time_matches_batch_3_directly(tmp_path: Path) -> None:
    stepped, direct = Layout(tmp_path / "stepped"), Layout(tmp_path / "direct")
    for batch in (1, 2, 3):
        ingest(stepped, synthetic_params(batch))
    ingest(direct, synthetic_params(3))
    assert folder_bytes(stepped.merged) == folder_bytes(direct.merged)


def test_merge_data_back_to_batch_2_matches_a_fresh_run_byte_for_byte(tmp_path: Path) -> None:
    walked, fresh = Layout(tmp_path / "walked"), Layout(tmp_path / "fresh")
    ingest(walked, synthetic_params(3))
    ingest(walked, synthetic_params(2))
    assert not (walked.merged / "batch-00003.parquet").exists()
    assert not (walked.merged / "batch-00003.json").exists()
    ingest(fresh, synthetic_params(2))
    assert folder_bytes(walked.merged) == folder_bytes(fresh.merged)
    assert read_json(walked.merged / "_manifest.json")["batches"] == 2


def test_merge_data_discards_partitions_of_another_batch_size(tmp_path: Path) -> None:
    resized, fresh = Layout(tmp_path / "resized"), Layout(tmp_path / "fresh")
    ingest(resized, synthetic_params(3, batch_size=50))
    ingest(resized, synthetic_params(2, batch_size=25))
    ingest(fresh, synthetic_params(2, batch_size=25))
    assert folder_bytes(resized.merged) == folder_bytes(fresh.merged)
    assert len(read_merged(resized.merged)) == 50


def test_merge_data_refuses_a_processed_batch_of_another_number(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    ingest(layout, synthetic_params(2))
    with pytest.raises(IncrmlError, match="data/processed holds batch 2, not 3"):
        merge_data.merge_data(layout, synthetic_params(3))


def test_fit_and_score_beat_chance_and_report_exactly_the_requested_metrics() -> None:
    frame = get_data.synthetic_stream(synthetic(rows=900, features=5, classes=3), "target", seed=4)
    features = [c for c in frame.columns if c != "target"]
    training, holdout = frame.iloc[:600], frame.iloc[600:]
    spec = preprocess.fit_preprocessor([prepare_batch.feature_stats(training, features)], features, True)
    model = fit(training, spec, "target", TrainParams())
    scores = score(model, holdout, features, "target", ["balanced_accuracy", "accuracy"])
    assert list(scores) == ["balanced_accuracy", "accuracy"]
    assert scores["accuracy"] > 0.5
    assert scores["balanced_accuracy"] > 0.5
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_predicting_in_blocks_of_rows_gives_what_one_call_gives(monkeypatch) -> None:
    frame = get_data.synthetic_stream(synthetic(rows=300, features=5, classes=3), "target", seed=5)
    features = [c for c in frame.columns if c != "target"]
    spec = preprocess.fit_preprocessor([prepare_batch.feature_stats(frame, features)], features, True)
    model = fit(frame, spec, "target", TrainParams())
    monkeypatch.setattr(evaluate, "BLOCK_ROWS", 7)  # 43 blocks, the last of 6 rows
    np.testing.assert_array_equal(evaluate.predict_rows(model, frame, features), model.predict(frame[features]))


def _incremental(layout: Layout, batch: int, store: Path):
    from incrml.stages.train import fit_incremental

    params = synthetic_params(batch)
    ingest(layout, params)
    spec = preprocess.fit_preprocessor(
        [read_json(p.with_suffix(".json")) for p in merge_data.partitions(layout.merged)],
        read_json(layout.schema)["features"],
        standardize=True,
    )
    train = TrainParams(strategy="incremental", estimator={"kind": "sgd"})
    classes = read_json(layout.schema)["classes"]
    return fit_incremental(merge_data.partitions(layout.merged), spec, "target", train, classes, store)


def test_incremental_chain_resumed_from_checkpoints_equals_one_from_scratch(tmp_path: Path) -> None:
    """Batch by batch with checkpoints, or batch 3 at once: the same model, one step per batch."""
    stepwise, scratch = Layout(tmp_path / "stepwise"), Layout(tmp_path / "scratch")
    store = tmp_path / "store-stepwise"
    for batch in (1, 2):
        _incremental(stepwise, batch, store)
    earlier_steps = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    resumed = _incremental(stepwise, 3, store)
    assert len(earlier_steps) == 2 and len(list(store.iterdir())) == 3
    assert {p: (store / p).stat().st_mtime_ns for p in earlier_steps} == earlier_steps, "batch 3 redid earlier steps"
    at_once = _incremental(scratch, 3, tmp_path / "store-scratch")
    holdout = pd.read_parquet(stepwise.holdout)
    features = read_json(stepwise.schema)["features"]
    np.testing.assert_array_equal(resumed[-1].coef_, at_once[-1].coef_)
    np.testing.assert_array_equal(resumed.predict(holdout[features]), at_once.predict(holdout[features]))


def test_incremental_strategy_needs_an_estimator_that_learns_batch_by_batch() -> None:
    from incrml.config import parse_params

    with pytest.raises(IncrmlError, match="strategy 'incremental' needs estimator kind 'sgd'"):
        parse_params("batch_number: 1\ntrain:\n  strategy: incremental\n")
    assert parse_params("batch_number: 1\ntrain:\n  strategy: incremental\n  estimator:\n    kind: sgd\n").train.strategy == "incremental"
