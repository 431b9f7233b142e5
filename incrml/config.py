"""params.yaml, loaded once into typed models: a typo in a key is an error that names it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from incrml.errors import IncrmlError
from incrml.files import atomic_write_text

PARAMS_FILE = "params.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DigitsSource(_Model):
    """scikit-learn's bundled hand-written digits: 1,797 rows, 64 pixel features, 10 classes."""

    kind: Literal["digits"] = "digits"


class FileSource(_Model):
    """A local CSV or Parquet file inside the workspace's data/source/ folder."""

    kind: Literal["file"]
    path: str


class FilesSource(_Model):
    """Batch files accepted by `incrml ingest-batch --file`: batch N is data/source/batches/batch-N.parquet."""

    kind: Literal["files"]


class SyntheticSource(_Model):
    """A seeded classification stream of any size, with optional drift from a given row on."""

    kind: Literal["synthetic"]
    rows: int = Field(gt=0)
    features: int = Field(gt=0)
    classes: int = Field(default=2, ge=2)
    drift_start_row: int | None = Field(default=None, ge=0)
    drift_shift: float = 1.5


Source = Annotated[Union[DigitsSource, FileSource, FilesSource, SyntheticSource], Field(discriminator="kind")]


class DataParams(_Model):
    source: Source = DigitsSource()
    target: str = "target"
    batch_size: int = Field(default=50, gt=0)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42
    # Batches kept out of the merged history, so out of training; the drift gate adds refused ones.
    exclude: list[Annotated[int, Field(ge=1)]] = []


class DriftParams(_Model):
    """The drift check of each new batch against the merged history (incrml.drift)."""

    gate: Literal["off", "warn", "refuse"] = "warn"
    psi_threshold: float = Field(default=0.2, gt=0)
    p_value: float = Field(default=0.01, gt=0, lt=1)
    # The share of drifted features from which the batch counts as drifted.
    max_share: float = Field(default=0.3, gt=0, le=1)
    # At most this many history rows are compared, so the check costs what the batch costs.
    history_rows: int = Field(default=20_000, gt=0)


class PreprocessParams(_Model):
    standardize: bool = True


class LogisticRegressionParams(_Model):
    kind: Literal["logistic_regression"] = "logistic_regression"
    C: float = Field(default=1.0, gt=0)
    max_iter: int = Field(default=1000, gt=0)


class RandomForestParams(_Model):
    kind: Literal["random_forest"]
    n_estimators: int = Field(default=100, gt=0)
    max_depth: int | None = Field(default=None, gt=0)


class SGDParams(_Model):
    """A linear model trained by stochastic gradient descent: it can learn batch by batch."""

    kind: Literal["sgd"]
    loss: Literal["log_loss", "hinge", "modified_huber"] = "log_loss"
    alpha: float = Field(default=1e-4, gt=0)


Estimator = Annotated[
    Union[LogisticRegressionParams, RandomForestParams, SGDParams], Field(discriminator="kind")
]


class TrainParams(_Model):
    seed: int = 42
    # full: fit on batches 1..N; incremental: the previous batch's model learns batch N (sgd only)
    strategy: Literal["full", "incremental"] = "full"
    estimator: Estimator = LogisticRegressionParams()

    @model_validator(mode="after")
    def _incremental_needs_partial_fit(self) -> "TrainParams":
        if self.strategy == "incremental" and not isinstance(self.estimator, SGDParams):
            raise ValueError("strategy 'incremental' needs estimator kind 'sgd', which learns batch by batch")
        return self


MetricName = Literal["accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro"]


class EvaluateParams(_Model):
    metrics: list[MetricName] = ["accuracy", "f1_macro"]
    # The champion gate: a new model becomes champion only if this metric is at least as good
    # as the champion's on the same holdout, less the tolerance.
    primary_metric: MetricName = "accuracy"
    tolerance: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _primary_is_scored(self) -> "EvaluateParams":
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric '{self.primary_metric}' must be one of metrics {self.metrics}")
        return self


class MlflowParams(_Model):
    experiment: str = "incrml"
    registered_model: str = "incrml-model"
    tracking_uri: str = "sqlite:///mlflow.db"
    # How long a remote tracking server may take to answer before incrml gives up on it.
    timeout_seconds: float = Field(default=30, gt=0)


class Params(_Model):
    batch_number: int = Field(ge=1)
    data: DataParams = DataParams()
    drift: DriftParams = DriftParams()
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    # Drop pydantic's union-member tags (source.digits.x -> source.x) so the path reads as YAML keys.
    parts = list(err["loc"])
    loc = ".".join(
        str(p) for i, p in enumerate(parts) if not (i > 0 and parts[i - 1] in _UNIONS and p in _UNION_TAGS)
    )
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    if err["type"] == "missing":
        return f"missing key '{loc}'"
    if err["type"] == "value_error":  # our own validators' messages, as written
        return f"'{loc}': {err['ctx']['error']}"
    return f"'{loc}': {err['msg'].lower()}"


_UNIONS = {"source", "estimator"}
_UNION_TAGS = {"digits", "file", "files", "synthetic", "logistic_regression", "random_forest", "sgd"}


def parse_params(text: str, where: str = PARAMS_FILE) -> Params:
    """Validate the text of a params.yaml; every problem is an IncrmlError naming the key."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        raw = YAML(typ="safe").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise IncrmlError(f"{where} is not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise IncrmlError(f"{where} must be a mapping of keys to values")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise IncrmlError(f"{where}: {_describe(exc)}") from None


def load_params(root: Path) -> Params:
    path = root / PARAMS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise IncrmlError(f"cannot read {path}: {exc.strerror}") from None
    return parse_params(text, str(path))


_BATCH_LINE = re.compile(r"^batch_number:[ \t]*[^#\r\n]*?([ \t]*(#[^\r\n]*)?)$", re.MULTILINE)


def write_batch_number(root: Path, batch: int) -> bool:
    """Set batch_number in params.yaml, changing nothing but that value. True if it changed.

    The new text is validated before it replaces the old one, and the write is atomic.
    """
    path = root / PARAMS_FILE
    text = path.read_text()
    if parse_params(text, str(path)).batch_number == batch:
        return False
    new_text, count = _BATCH_LINE.subn(lambda m: f"batch_number: {batch}{m.group(1)}", text, count=1)
    if count != 1:
        raise IncrmlError(f"{path}: no top-level 'batch_number:' line to set")
    parse_params(new_text, str(path))
    atomic_write_text(path, new_text)
    return True


_EXCLUDE_LINE = re.compile(r"^([ \t]*exclude:[ \t]*)\[[^\]#\r\n]*\]([ \t]*(#[^\r\n]*)?)$")


def add_excluded_batch(root: Path, batch: int) -> bool:
    """Add `batch` to data.exclude in params.yaml, changing nothing else. True if it changed.

    The one line `exclude: [...]` is rewritten in place (or added under `data:`), so comments,
    key order and style stay; an unusual layout falls back to a round trip through ruamel.yaml.
    The result is checked to differ from the old params in data.exclude alone, then written atomically.
    """
    path = root / PARAMS_FILE
    text = path.read_text()
    old = parse_params(text, str(path))
    if batch in old.data.exclude:
        return False
    batches = sorted({*old.data.exclude, batch})
    new_text = _set_exclude_line(text, batches) or _set_exclude_round_trip(text, batches)
    expected = old.model_copy(update={"data": old.data.model_copy(update={"exclude": batches})})
    if parse_params(new_text, str(path)) != expected:
        raise IncrmlError(f"{path}: cannot add batch {batch} to data.exclude without changing other keys")
    atomic_write_text(path, new_text)
    return True


def _set_exclude_line(text: str, batches: list[int]) -> str | None:
    """The text with data.exclude set by editing one line, or None if its layout is not the usual one."""
    from ruamel.yaml import YAML

    doc = YAML().load(text)
    data = doc.get("data") if isinstance(doc, dict) else None
    lines = text.splitlines(keepends=True)
    value = f"[{', '.join(map(str, batches))}]"
    if isinstance(data, dict) and "exclude" in data:
        number = data.lc.key("exclude")[0]
        line = lines[number].rstrip("\r\n")
        match = _EXCLUDE_LINE.match(line)
        if not match:
            return None
        lines[number] = f"{match.group(1)}{value}{match.group(2)}{lines[number][len(line):]}"
        return "".join(lines)
    if isinstance(data, dict) and data and data.fa.flow_style() is False:
        number, column = doc.lc.key("data")[0] + 1, data.lc.key(next(iter(data)))[1]
        newline = "\r\n" if lines[number - 1].endswith("\r\n") else "\n"
        lines.insert(number, f"{' ' * column}exclude: {value}{newline}")  # the first key under `data:`
        return "".join(lines)
    if "data" not in doc:
        return text + ("" if text.endswith("\n") else "\n") + f"data:\n  exclude: {value}\n"
    return None


def _set_exclude_round_trip(text: str, batches: list[int]) -> str:
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()
    yaml.width = 4096
    doc = yaml.load(text)
    if not isinstance(doc.get("data"), dict):
        doc["data"] = {}
    seq = CommentedSeq(batches)
    seq.fa.set_flow_style()
    doc["data"]["exclude"] = seq
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def tracking_uri(params: Params, root: Path) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path is resolved against the workspace root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    if not urlparse(uri).scheme and uri not in _NAMED_URIS and not uri.startswith("/"):
        return str((root / uri).resolve())
    return uri


_NAMED_URIS = {"databricks", "databricks-uc", "uc"}
