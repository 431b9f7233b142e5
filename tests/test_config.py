"""incrml.config: params.yaml parsed into typed models, batch_number rewritten in place, the tracking URI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from incrml.config import (
    DigitsSource,
    FileSource,
    Params,
    SyntheticSource,
    load_params,
    parse_params,
    tracking_uri,
    write_batch_number,
)
from incrml.errors import IncrmlError
from incrml.workspace import TEMPLATE_DIR

TEMPLATE_PARAMS = TEMPLATE_DIR / "params.yaml"


def refusal(text: str) -> str:
    with pytest.raises(IncrmlError) as caught:
        parse_params(text)
    return str(caught.value)


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    """A folder holding a copy of the shipped params.yaml."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(TEMPLATE_PARAMS, root / "params.yaml")
    return root


def test_shipped_params_parse_to_batch_1_of_50_digits(params_dir: Path) -> None:
    params = load_params(params_dir)
    assert params.batch_number == 1
    assert params.data.batch_size == 50
    assert isinstance(params.data.source, DigitsSource)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("batch_number: 1\nbatchsize: 50\n", "batchsize"),
        ("batch_number: 1\ndata:\n  batchsize: 50\n", "data.batchsize"),
        ("batch_number: 1\ntrain:\n  estimator:\n    kind: logistic_regression\n    CC: 2\n", "train.estimator.CC"),
        ("batch_number: 1\ntrain:\n  estimator:\n    kind: random_forest\n    depth: 3\n", "train.estimator.depth"),
        ("batch_number: 1\ndata:\n  source: {kind: synthetic, rows: 5, features: 2, row: 3}\n", "data.source.row"),
        ("batch_number: 1\ndata:\n  source: {kind: files, path: x.csv}\n", "data.source.path"),
        # keys spelled like a source kind are still named
        ("batch_number: 1\nsynthetic: 1\n", "synthetic"),
        ("batch_number: 1\ndata:\n  file: x.csv\n", "data.file"),
    ],
    ids=[
        "batchsize", "data.batchsize", "train.estimator.CC", "train.estimator.depth", "data.source.row",
        "files.path", "synthetic", "data.file",
    ],
)
def test_unknown_key_is_named_by_its_dotted_path(text: str, key: str) -> None:
    assert refusal(text) == f"params.yaml: unknown key '{key}'"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("batch_number: 1\ndata:\n  batch_size: abc\n", "data.batch_size"),
        ("batch_number: 1\ndata:\n  batch_size: 0\n", "data.batch_size"),
        ("batch_number: 1.5\n", "batch_number"),
        ("batch_number: 0\n", "batch_number"),
        ("batch_number: 1\ndata:\n  holdout_fraction: 1.5\n", "data.holdout_fraction"),
        ("batch_number: 1\nevaluate:\n  metrics: [accuracy, auc]\n", "evaluate.metrics.1"),
        ("batch_number: 1\nevaluate:\n  metrics: [accuracy]\n  primary_metric: f1_macro\n", "evaluate"),
        ("batch_number: 1\nevaluate:\n  tolerance: -0.1\n", "evaluate.tolerance"),
    ],
    ids=["batch_size-abc", "batch_size-0", "batch_number-1.5", "batch_number-0", "holdout_fraction-1.5", "metric-auc",
         "primary-metric-not-scored", "tolerance-negative"],
)
def test_wrong_value_is_named_by_its_key(text: str, key: str) -> None:
    assert refusal(text).startswith(f"params.yaml: '{key}': ")


def test_boolean_batch_number_is_refused() -> None:
    assert "'batch_number'" in refusal("batch_number: true\n")


def test_missing_batch_number_is_named() -> None:
    assert refusal("data:\n  seed: 1\n") == "params.yaml: missing key 'batch_number'"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("batch_number: 1\ndata:\n\tseed: 1\n", 3),
        ("batch_number: 1\nbatch_number: 2\n", 2),
        ("batch_number: 1\ndata: [\n", 3),
    ],
    ids=["tab", "duplicate-key", "unclosed-list"],
)
def test_invalid_yaml_is_one_line_with_the_line_number(text: str, line: int) -> None:
    message = refusal(text)
    assert message == f"params.yaml is not valid YAML (line {line})"


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just words\n", "", "42\n"], ids=["list", "string", "empty", "number"])
def test_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert refusal(text) == "params.yaml must be a mapping of keys to values"


def test_load_params_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(IncrmlError, match="cannot read .*params.yaml"):
        load_params(tmp_path)


def test_synthetic_source_with_rows_and_features_validates() -> None:
    params = parse_params("batch_number: 2\ndata:\n  source:\n    kind: synthetic\n    rows: 600\n    features: 4\n")
    source = params.data.source
    assert isinstance(source, SyntheticSource)
    assert (source.rows, source.features, source.classes, source.drift_start_row) == (600, 4, 2, None)


def test_synthetic_source_without_rows_names_the_missing_key() -> None:
    text = "batch_number: 1\ndata:\n  source:\n    kind: synthetic\n    features: 3\n"
    assert refusal(text) == "params.yaml: missing key 'data.source.rows'"


def test_file_source_needs_a_path() -> None:
    assert refusal("batch_number: 1\ndata:\n  source:\n    kind: file\n") == (
        "params.yaml: missing key 'data.source.path'"
    )
    params = parse_params("batch_number: 1\ndata:\n  source:\n    kind: file\n    path: data/source/x.csv\n")
    assert params.data.source == FileSource(kind="file", path="data/source/x.csv")


def test_unknown_source_kind_is_refused_naming_data_source() -> None:
    message = refusal("batch_number: 1\ndata:\n  source:\n    kind: kaggle\n")
    assert message.startswith("params.yaml: 'data.source': ")
    assert "'kaggle'" in message


def test_write_batch_number_changes_only_the_batch_number_line(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    before = path.read_text()
    assert write_batch_number(params_dir, 7) is True
    after = path.read_text()
    assert after == before.replace("\nbatch_number: 1\n", "\nbatch_number: 7\n")
    assert after != before
    assert load_params(params_dir).batch_number == 7


def test_write_batch_number_returns_false_and_leaves_the_file_alone_when_unchanged(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    before, inode = path.read_bytes(), path.stat().st_ino
    assert write_batch_number(params_dir, 1) is False
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode


@pytest.mark.parametrize("batch", [0, -3])
def test_write_batch_number_refuses_an_invalid_result_and_keeps_the_file(params_dir: Path, batch: int) -> None:
    path = params_dir / "params.yaml"
    before = path.read_bytes()
    with pytest.raises(IncrmlError, match="'batch_number'"):
        write_batch_number(params_dir, batch)
    assert path.read_bytes() == before
    assert sorted(os.listdir(params_dir)) == ["params.yaml"]


def test_write_batch_number_refuses_when_another_key_is_broken(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    path.write_text(path.read_text().replace("  seed: 42\n", "  seed: 42\n  sede: 1\n", 1))
    before = path.read_bytes()
    with pytest.raises(IncrmlError, match="unknown key 'data.sede'"):
        write_batch_number(params_dir, 2)
    assert path.read_bytes() == before


def test_write_batch_number_replaces_the_file_by_rename_leaving_no_temp_file(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    inode = path.stat().st_ino
    assert write_batch_number(params_dir, 4)
    assert path.stat().st_ino != inode
    assert sorted(os.listdir(params_dir)) == ["params.yaml"]


@pytest.mark.parametrize(
    "text",
    [
        "batch_number: 1\nevaluate:\n  metrics:\n  - accuracy\n  - f1_macro\n",
        "batch_number: 1\ndata:\n    batch_size: 50\n    seed: 42\n",
        "batch_number: 1\nmlflow:\n  experiment: " + "word " * 20 + "end\n",
    ],
    ids=["flush-sequence", "four-space-indent", "long-line"],
)
def test_write_batch_number_keeps_a_hand_written_style(tmp_path: Path, text: str) -> None:
    (tmp_path / "params.yaml").write_text(text)
    write_batch_number(tmp_path, 2)
    assert (tmp_path / "params.yaml").read_text() == text.replace("batch_number: 1", "batch_number: 2", 1)


def with_uri(uri: str) -> Params:
    return Params(batch_number=1, mlflow={"tracking_uri": uri})


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workspace root, while the process runs from another folder with no MLFLOW_TRACKING_URI."""
    root, other = tmp_path / "ws", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def test_relative_sqlite_uri_resolves_against_the_workspace_root(elsewhere: Path) -> None:
    root = elsewhere.resolve()
    assert tracking_uri(with_uri("sqlite:///mlflow.db"), elsewhere) == f"sqlite:///{root}/mlflow.db"
    assert tracking_uri(with_uri("sqlite:///stores/runs.db"), elsewhere) == f"sqlite:///{root}/stores/runs.db"


def test_relative_plain_path_resolves_against_the_workspace_root(elsewhere: Path) -> None:
    assert tracking_uri(with_uri("mlruns"), elsewhere) == str(elsewhere.resolve() / "mlruns")


@pytest.mark.parametrize("uri", ["sqlite:////var/lib/mlflow.db", "http://127.0.0.1:5000", "file:///srv/mlruns"])
def test_absolute_or_remote_uri_is_kept(elsewhere: Path, uri: str) -> None:
    assert tracking_uri(with_uri(uri), elsewhere) == uri


def test_mlflow_tracking_uri_env_overrides_params(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(with_uri("sqlite:///mlflow.db"), elsewhere) == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////var/lib/other.db")
    assert tracking_uri(with_uri("sqlite:///mlflow.db"), elsewhere) == "sqlite:////var/lib/other.db"


def test_databricks_tracking_uri_is_kept(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    assert tracking_uri(with_uri("sqlite:///mlflow.db"), elsewhere) == "databricks"
