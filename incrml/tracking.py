"""The one place that talks to MLflow: a run per executed batch, and the runs read back."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from incrml.config import Params, tracking_uri
from incrml.errors import IncrmlError, UnavailableError
from incrml.files import write_json
from incrml.workspace import Layout

BATCH_TAG = "incrml.batch"
DATA_TAG = "incrml.data_md5"
MODEL_VERSION_TAG = "incrml.model_version"
# Pinned here so log_model never spawns MLflow's slow requirement inference.
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops")


def _client(params: Params, root: Path):
    """A client bound to the workspace's store. No global tracking URI is set here: MLflow
    exports that to os.environ, and every stage process started later would inherit it."""
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")  # requirements are pinned below
    # MLflow retries an unreachable server for minutes by default; bound it by the params.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(params.mlflow.timeout_seconds)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri(params, root))


@contextmanager
def _store(params: Params, root: Path) -> Iterator:
    """A client for the workspace's store; MLflow's failures to open or reach it become one line
    that says what to do."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(params, root)
    try:
        yield _client(params, root)
    except MlflowException as exc:
        text = str(exc)
        if "out-of-date database schema" in text:
            raise IncrmlError(
                f"the MLflow store at {uri} was made by an older MLflow; back it up, then run "
                f"`mlflow db upgrade {uri}`"
            ) from None
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text:
            raise UnavailableError(f"MLflow tracking server at {uri} did not answer") from None
        raise IncrmlError(f"MLflow store at {uri}: {text.splitlines()[0]}") from None


def check_reachable(params: Params, root: Path) -> None:
    """For a remote store, a quick health check before any stage runs; local stores pass."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(params, root)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=params.mlflow.timeout_seconds):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(
            f"MLflow tracking server at {uri} is unreachable ({reason}); start it, or point "
            "MLFLOW_TRACKING_URI or mlflow.tracking_uri at a store that is up"
        ) from None


def end_abandoned_run(params: Params, root: Path, run_id: str) -> None:
    """End as KILLED a run whose evaluate process died (SIGKILL, power loss) while logging it."""
    with _store(params, root) as client:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")


def _experiment_id(client, params: Params, root: Path, create: bool) -> str | None:
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    uri = tracking_uri(params, root)
    local = uri.startswith("sqlite:") or "://" not in uri
    # A local store keeps its artifacts beside it in the workspace, never under the cwd.
    location = (root / "mlartifacts").as_uri() if local else None
    return client.create_experiment(params.mlflow.experiment, artifact_location=location)


def flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else key, item))
        return out
    return {prefix: str(value)}


def log_batch_run(
    root: Path,
    params: Params,
    *,
    metrics: dict[str, float],
    training_rows: int,
    model,
    sample,
    lineage: dict[str, str],
    write_outputs,
) -> dict:
    """Log one batch's run and register its model; `write_outputs(record)` runs inside the run.

    A failure ends the run FAILED, Ctrl-C or SIGTERM ends it KILLED, and while it runs a marker
    names it and its process, so one killed outright is ended by the next command (ingest.repair).
    """
    import mlflow

    marker = Layout(root).run_marker
    name = f"batch-{params.batch_number}"
    with _store(params, root) as client:
        experiment_id = _experiment_id(client, params, root, create=True)
        mlflow.set_tracking_uri(client.tracking_uri)  # this is the evaluate stage's own process
        with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
            write_json(marker, {"run_id": run.info.run_id, "pid": os.getpid()})
            try:
                version = _log_run(client, params, root, metrics, training_rows, model, sample, lineage)
                record = {
                    "batch": params.batch_number,
                    "run_id": run.info.run_id,
                    "experiment": params.mlflow.experiment,
                    "registered_model": params.mlflow.registered_model,
                    "model_version": version,
                    "data": lineage,
                }
                write_outputs(record)
            except KeyboardInterrupt:  # stopped, not broken
                mlflow.end_run("KILLED")
                raise
            finally:
                marker.unlink(missing_ok=True)
    return record


def _log_run(client, params: Params, root: Path, metrics, training_rows: int, model, sample, lineage) -> str:
    """Params, metrics, lineage tags, the dataset and the registered model; the model version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    batch = params.batch_number
    data_md5 = lineage["data/merged"]
    mlflow.set_tags({BATCH_TAG: str(batch), DATA_TAG: data_md5, **{f"dvc.{k}": v for k, v in lineage.items()}})
    mlflow.log_params(flatten("", params.model_dump(mode="json")))
    mlflow.log_metrics({**metrics, "training_rows": training_rows})
    dataset = MetaDataset(
        source=resolve_dataset_source(str(root / "data/merged")),
        name=f"merged-batches-1-{batch}",
        digest=data_md5.removesuffix(".dir")[:36],
        schema=Schema([ColSpec("double", c) for c in sample.columns]),
    )
    mlflow.log_input(dataset, context="training")
    info = mlflow.sklearn.log_model(
        sk_model=model,
        name="model",
        signature=infer_signature(sample, model.predict(sample)),
        pip_requirements=[f"{p}=={metadata.version(p)}" for p in MODEL_REQUIREMENTS],
        serialization_format="skops",
        skops_trusted_types=TRUSTED_TYPES,
        registered_model_name=params.mlflow.registered_model,
        await_registration_for=0,
    )
    version = str(info.registered_model_version)
    mlflow.set_tag(MODEL_VERSION_TAG, version)
    client.set_model_version_tag(params.mlflow.registered_model, version, BATCH_TAG, str(batch))
    client.set_model_version_tag(params.mlflow.registered_model, version, DATA_TAG, data_md5)
    return version


# The non-default types in incrml's models that skops may load.
TRUSTED_TYPES = ["numpy.lib._function_base_impl.nan_to_num", "numpy.nan_to_num"]


@dataclass
class BatchRun:
    """The newest finished run of one batch, as compare and the ingest table show it."""

    batch: int
    run_id: str
    start_time: int
    metrics: dict[str, float]
    params: dict[str, str]
    data_md5: str
    model_version: str | None
    runs: int = 1
    older_run_ids: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int | None:
        rows = self.metrics.get("training_rows")
        return int(rows) if rows is not None else None


def batch_runs(root: Path, params: Params) -> dict[int, BatchRun]:
    """Every batch with a finished run, newest run per batch, keyed by batch number."""
    with _store(params, root) as client:
        experiment_id = _experiment_id(client, params, root, create=False)
        if experiment_id is None:
            return {}
        runs = client.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50_000,
        )
    found: dict[int, BatchRun] = {}
    for run in runs:
        tag = run.data.tags.get(BATCH_TAG)
        if tag is None:
            continue
        batch = int(tag)
        if batch in found:
            found[batch].runs += 1
            found[batch].older_run_ids.append(run.info.run_id)
            continue
        found[batch] = BatchRun(
            batch=batch,
            run_id=run.info.run_id,
            start_time=run.info.start_time,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            data_md5=run.data.tags.get(DATA_TAG, ""),
            model_version=run.data.tags.get(MODEL_VERSION_TAG),
        )
    return dict(sorted(found.items()))

