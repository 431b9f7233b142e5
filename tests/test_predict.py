"""predict: batch scoring with a registered model version, against a real DVC workspace and a
real sqlite MLflow store; the model's own predictions are the reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error, snapshot

from incrml.config import load_params, tracking_uri
from incrml.predict import CHAMPION, predict_file

MODEL = "incrml-model"


def holdout(root: Path) -> pd.DataFrame:
    """Rows the models never saw: the feature columns and the target."""
    return pd.read_parquet(root / "data/raw/holdout.parquet")


def features(root: Path) -> list[str]:
    return json.loads((root / "models/preprocessor.json").read_text())["features"]


def own_predictions(root: Path, version: str, frame: pd.DataFrame, monkeypatch) -> np.ndarray:
    """What MLflow's own loader gives for models:/MODEL/version, over the workspace's store."""
    import mlflow
    import mlflow.sklearn

    uri = tracking_uri(load_params(root), root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.get_registry_uri() == uri  # no global URI set in this process shadows it
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    return model.predict(frame[features(root)])


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(load_params(root), root))


def champion(root: Path) -> str | None:
    """The version the champion alias points at: the gate sets it on ingest; before it, None.
    (Read from the registered model: search_model_versions leaves a version's aliases empty.)"""
    version = client(root).get_registered_model(MODEL).aliases.get(CHAMPION)
    return None if version is None else str(version)


def test_predictions_are_each_versions_own(cli, ingested, tmp_path, monkeypatch):
    rows = holdout(ingested)
    rows.to_parquet(tmp_path / "rows.parquet")
    scored = {}
    for model in ("v1", "2"):
        result = cli("predict", "--file", str(tmp_path / "rows.parquet"), "--model", model, "--json")
        assert result.exit_code == 0, result.output
        scored[model] = json.loads(result.stdout)
    assert [scored[m]["version"] for m in scored] == ["1", "2"]
    assert scored["v1"]["batch"] == 1 and scored["v1"]["rows"] == len(rows) == 360
    assert scored["v1"]["ignored_columns"] == ["target"]
    assert sum(scored["2"]["counts"].values()) == len(rows)
    assert np.array_equal(scored["v1"]["predictions"], own_predictions(ingested, "1", rows, monkeypatch))
    assert np.array_equal(scored["2"]["predictions"], own_predictions(ingested, "2", rows, monkeypatch))
    assert scored["v1"]["predictions"] != scored["2"]["predictions"]  # two models, told apart


def test_the_summary_names_the_model_and_counts_per_class(cli, ingested, tmp_path):
    holdout(ingested).to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", "--file", str(tmp_path / "rows.csv"), "--model", "v2")
    assert result.exit_code == 0, result.output
    assert f"Scored 360 rows of {tmp_path / 'rows.csv'} with incrml-model v2 (batch 2)" in result.stdout
    assert "│          0 │" in result.stdout  # one row per class
    assert "ignored: target" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_out_round_trips_the_rows_plus_the_prediction(cli, ingested, tmp_path, monkeypatch, suffix):
    rows = holdout(ingested).head(40).assign(note=[f"row {i}" for i in range(40)])
    source = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        rows.to_csv(source, index=False)
    else:
        rows.to_parquet(source, index=False)
    out = tmp_path / "out" / f"scored{suffix}"
    out.parent.mkdir()
    result = cli("predict", "--file", str(source), "--model", "v2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["out"] == str(out) and "predictions" not in data
    assert data["ignored_columns"] == ["target", "note"]
    back = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(back.columns) == [*rows.columns, "prediction"]
    pd.testing.assert_frame_equal(back[rows.columns], rows)
    assert np.array_equal(back["prediction"], own_predictions(ingested, "2", rows, monkeypatch))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_the_library_returns_plain_data(ingested, tmp_path, monkeypatch):
    rows = holdout(ingested).head(10)
    rows.to_parquet(tmp_path / "rows.parquet")
    data = predict_file(ingested, load_params(ingested), tmp_path / "rows.parquet", model="1")
    assert json.loads(json.dumps(data)) == data
    assert data["predictions"] == own_predictions(ingested, "1", rows, monkeypatch).tolist()


def test_missing_values_are_imputed_as_in_training(cli, ingested, tmp_path, monkeypatch):
    """The model's preprocessing centres a feature, then turns NaN into 0: its training mean."""
    rows = holdout(ingested).head(30).reset_index(drop=True)
    spec = json.loads((ingested / "models/preprocessor.json").read_text())  # batch 2's, model v2's
    column = "pixel_3_4"
    gaps = rows.copy()
    gaps.loc[::3, column] = np.nan
    filled = rows.copy()
    filled.loc[::3, column] = spec["mean"][spec["features"].index(column)]
    gaps.to_csv(tmp_path / "gaps.csv", index=False)
    result = cli("predict", "--file", str(tmp_path / "gaps.csv"), "--model", "v2", "--json")
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.stdout)["predictions"]
    assert np.array_equal(predicted, own_predictions(ingested, "2", gaps, monkeypatch))
    assert np.array_equal(predicted, own_predictions(ingested, "2", filled, monkeypatch))


def test_champion_is_the_aliased_version(cli, ingested, tmp_path, monkeypatch):
    rows = holdout(ingested)
    rows.to_parquet(tmp_path / "rows.parquet")

    def scored() -> dict:
        result = cli("predict", "--file", str(tmp_path / "rows.parquet"), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    by_gate = champion(ingested)  # the champion gate sets the alias on ingest; without it, None
    if by_gate is not None:
        data = scored()
        assert (data["version"], data["alias"]) == (by_gate, CHAMPION)
    client(ingested).set_registered_model_alias(MODEL, CHAMPION, "1")  # as `incrml promote` would
    data = scored()
    assert (data["version"], data["alias"]) == ("1", CHAMPION)
    assert np.array_equal(data["predictions"], own_predictions(ingested, "1", rows, monkeypatch))


def test_predict_sets_no_global_mlflow_state(cli, ingested, tmp_path):
    """Run from a subfolder: MLflow's global default would make a store in the cwd."""
    holdout(ingested).to_parquet(tmp_path / "rows.parquet")
    before = sorted(p.name for p in (ingested / "data").iterdir())
    result = cli("predict", "--file", str(tmp_path / "rows.parquet"), "--model", "v1", cwd=ingested / "data")
    assert result.exit_code == 0, result.output
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert sorted(p.name for p in (ingested / "data").iterdir()) == before


def _inputs(root: Path, folder: Path) -> None:
    """Every bad input a user can give, as files beside (never in) the workspace: ../in/NAME."""
    rows = holdout(root).head(20)
    folder.mkdir()
    rows.to_csv(folder / "good.csv", index=False)
    rows.to_csv(folder / "rows.txt", index=False)
    (folder / "empty.csv").write_bytes(b"")
    rows.head(0).to_csv(folder / "header-only.csv", index=False)
    (folder / "broken.parquet").write_bytes(b"not parquet at all")
    rows.drop(columns=["pixel_0_0", "pixel_3_3", "pixel_7_7"]).to_csv(folder / "missing.csv", index=False)
    typed = rows.astype({"pixel_1_1": object})
    typed.loc[typed.index[[2, 5]], "pixel_1_1"] = ["abc", "?"]
    typed.to_csv(folder / "typed.csv", index=False)
    rows.assign(pixel_2_2=float("inf")).to_parquet(folder / "infinite.parquet", index=False)
    rows.assign(prediction=0).to_csv(folder / "scored.csv", index=False)


BAD = [
    (["--file", "nope.csv"], "no file at ../in/nope.csv"),
    (["--file", "rows.txt"], "rows.txt: the file to score must be .csv or .parquet, not '.txt'"),
    (["--file", "empty.csv"], "empty.csv cannot be scored: the file is empty"),
    (["--file", "header-only.csv"], "header-only.csv cannot be scored: it has no rows"),
    (["--file", "broken.parquet"], "broken.parquet cannot be scored: not a readable Parquet file"),
    (
        ["--file", "missing.csv", "--model", "v2"],
        "missing.csv does not match model 'incrml-model' v2: 3 of 64 columns missing: 'pixel_0_0', 'pixel_3_3', 'pixel_7_7'",
    ),
    (
        ["--file", "typed.csv", "--model", "v2"],
        "typed.csv does not match model 'incrml-model' v2: column 'pixel_1_1' should be double: "
        "2 rows are not numbers (e.g. 'abc')",
    ),
    (
        ["--file", "infinite.parquet", "--model", "v2"],
        "infinite.parquet does not match model 'incrml-model' v2: column 'pixel_2_2' should be double: "
        "20 rows are not numbers (e.g. inf)",
    ),
    (["--file", "good.csv", "--model", "v9"], "model 'incrml-model' has no version 9; its versions: v1, v2"),
    (["--file", "good.csv", "--model", "best"], "--model must be 'champion' or a version such as v3 (or 3), got 'best'"),
    (["--file", "good.csv", "--model", "v0"], "got 'v0'"),
    (["--file", "good.csv"], "no champion yet for model 'incrml-model': ingest a batch, or `incrml promote N`"),
    (["--file", "good.csv", "--model", "1", "--out", "scored.json"], "write .csv or .parquet, not '.json'"),
    (["--file", "good.csv", "--model", "1", "--out", "no/such/dir/scored.csv"], "no folder"),
    (["--file", "good.csv", "--model", "1", "--out", "good.csv"], "is the file being scored"),
    (["--file", "scored.csv", "--model", "1", "--out", "again.csv"], "already has a column 'prediction'"),
    (["--model", "1"], "Missing option '--file'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_changes_nothing(cli, ingested, tmp_path, args, message):
    _inputs(ingested, tmp_path / "in")
    if champion(ingested) is not None:  # the gate sets one on ingest
        client(ingested).delete_registered_model_alias(MODEL, CHAMPION)
    before, files = snapshot(ingested), sorted((tmp_path / "in").iterdir())
    args = [f"../in/{a}" if flag in ("--file", "--out") else a for flag, a in zip(["", *args], args)]
    assert message in one_line_error(cli("predict", *args))
    assert snapshot(ingested) == before
    assert sorted((tmp_path / "in").iterdir()) == files  # no --out written, not even in part


def test_only_the_workspaces_own_skops_models_are_loaded(cli, ingested, tmp_path):
    """A version registered from files outside the experiment, or logged as a pickle, is refused."""
    import shutil

    store = client(ingested)
    v1 = Path(store.get_model_version_download_uri(MODEL, "1").removeprefix("file://"))
    outside = shutil.copytree(v1, tmp_path / "elsewhere")
    store.create_model_version(MODEL, outside.as_uri())  # v3
    # Inside the experiment's artifact location: the store records it as an absolute path, so a
    # copied workspace's experiment still points into the session template. Removed at the end.
    home = Path(store.get_experiment_by_name("incrml").artifact_location.removeprefix("file://"))
    pickled = shutil.copytree(v1, home / f"tampered-{tmp_path.name}")
    try:
        meta = pickled / "MLmodel"
        meta.write_text(meta.read_text().replace("serialization_format: skops", "serialization_format: cloudpickle"))
        store.create_model_version(MODEL, pickled.as_uri())  # v4
        holdout(ingested).head(5).to_csv(tmp_path / "rows.csv", index=False)
        error = one_line_error(cli("predict", "--file", str(tmp_path / "rows.csv"), "--model", "v3"))
        assert "outside this workspace's experiment" in error
        error = one_line_error(cli("predict", "--file", str(tmp_path / "rows.csv"), "--model", "v4"))
        assert "is not a skops-serialised scikit-learn model" in error
    finally:
        shutil.rmtree(pickled)
