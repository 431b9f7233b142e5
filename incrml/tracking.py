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
MODEL_MD5_TAG = "incrml.model_md5"
HOLDOUT_TAG = "incrml.holdout_md5"
GATE_TAG = "incrml.gate"
GATE_REASON_TAG = "incrml.gate_reason"
DRIFT_TAG = "incrml.drift"
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
    holdout_md5: str,
    rescore,
    drift: dict,
    write_outputs,
) -> dict:
    """Log one batch's run, register its model and pass it through the champion gate;
    `write_outputs(record)` runs inside the run and returns files to log as artifacts. `rescore(model)` scores a model on the holdout,
    for a champion that was measured on another one.

    A failure ends the run FAILED, Ctrl-C or SIGTERM ends it KILLED, and while it runs a marker
    names it and its process, so one killed outright is ended by the next command (ingest.repair).
    """
    import mlflow

    from incrml.gate import CHAMPION

    marker = Layout(root).run_marker
    name = f"batch-{params.batch_number}"
    with _store(params, root) as client:
        experiment_id = _experiment_id(client, params, root, create=True)
        mlflow.set_tracking_uri(client.tracking_uri)  # this is the evaluate stage's own process
        # Stops are held from before the run exists: none can leave it RUNNING half-written.
        with _stops_between_writes() as check, mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
            write_json(marker, {"run_id": run.info.run_id, "pid": os.getpid()})
            try:
                check()
                version = _log_run(client, params, root, metrics, training_rows, model, sample, lineage, check)
                mlflow.set_tag(HOLDOUT_TAG, holdout_md5)
                _log_drift(drift)
                check()
                decision = _gate(client, params, root, version, metrics, holdout_md5, rescore)
                check()
                record = {
                    "batch": params.batch_number,
                    "run_id": run.info.run_id,
                    "experiment": params.mlflow.experiment,
                    "registered_model": params.mlflow.registered_model,
                    "model_version": version,
                    "data": lineage,
                    "gate": decision.as_dict(),
                }
                for artifact in write_outputs(record):
                    check()
                    mlflow.log_artifact(str(artifact))
                check()
                # Still held: the champion moves only with a run that ends FINISHED, and a stop
                # that comes now finds the stage's work done.
                if decision.promoted:
                    client.set_registered_model_alias(params.mlflow.registered_model, CHAMPION, version)
                mlflow.end_run()
            except KeyboardInterrupt:  # stopped, not broken; the stage's handler now ignores stops
                mlflow.end_run("KILLED")
                raise
            finally:
                marker.unlink(missing_ok=True)
    return record


@contextmanager
def _stops_between_writes() -> Iterator:
    """Hold Ctrl-C and SIGTERM until the next `check()`, between MLflow's writes.

    Raised in the middle of one, KeyboardInterrupt skips SQLAlchemy's rollback (it is not an
    Exception) and leaves a transaction open on the sqlite store: ending the run KILLED then
    waits on that lock and fails. A stop held for one write stops the stage within a second.
    The handlers are put back once: a check() that raised has run the stage's own handler, which
    ignores the later stops (a Ctrl-C reaches the stage from the terminal, the stage command and
    incrml), so none can cut short ending the run KILLED. A stop after the last check() is moot.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    caught: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    saved = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in stops}

    def restore() -> None:
        while saved:
            signal.signal(*saved.popitem())

    def check() -> None:
        if caught:
            handler = saved[caught[0]]
            restore()
            if callable(handler):
                handler(caught[0], None)  # the stage's own: it raises, and ignores later stops
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        restore()


def _log_run(client, params: Params, root: Path, metrics, training_rows: int, model, sample, lineage, check) -> str:
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
    check()
    mlflow.log_params(flatten("", params.model_dump(mode="json")))
    check()
    mlflow.log_metrics({**metrics, "training_rows": training_rows})
    check()
    dataset = MetaDataset(
        source=resolve_dataset_source(str(root / "data/merged")),
        name=f"merged-batches-1-{batch}",
        digest=data_md5.removesuffix(".dir")[:36],
        schema=Schema([ColSpec("double", c) for c in sample.columns]),
    )
    mlflow.log_input(dataset, context="training")
    check()
    name, model_md5 = params.mlflow.registered_model, lineage["models/model.pkl"]
    # A model already registered (a batch kept out by the drift gate trains nothing new) keeps its version.
    same = client.search_model_versions(f"name = '{name}' and tags.`{MODEL_MD5_TAG}` = '{model_md5}'")
    if same:
        version = str(min(int(v.version) for v in same))
        mlflow.set_tag(MODEL_VERSION_TAG, version)
        return version
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
    check()
    version = str(info.registered_model_version)
    mlflow.set_tag(MODEL_VERSION_TAG, version)
    client.set_model_version_tag(params.mlflow.registered_model, version, BATCH_TAG, str(batch))
    client.set_model_version_tag(params.mlflow.registered_model, version, DATA_TAG, data_md5)
    client.set_model_version_tag(params.mlflow.registered_model, version, MODEL_MD5_TAG, model_md5)
    return version


def drift_summary(report: dict) -> str:
    """The drift check in a few words: its decision, and the share of features that drifted."""
    share = report.get("share_drifted")
    return report["decision"] + (f" {share:.0%}" if share is not None and report["decision"] != "none" else "")


def _log_drift(report: dict) -> None:
    """merge_data's drift check of this batch (metrics/drift.json) as metrics and a tag."""
    import mlflow

    values = {"drift_share": report.get("share_drifted"), "drift_label_tv_distance": report["label"].get("tv_distance"),
              "drift_label_p_value": report["label"].get("p_value")}
    mlflow.log_metrics({k: v for k, v in values.items() if v is not None})
    mlflow.set_tag(DRIFT_TAG, drift_summary(report))


def _gate(client, params: Params, root: Path, version: str, metrics: dict[str, float], holdout_md5: str, rescore):
    """Challenger `version` against the champion on this holdout. The decision and both numbers
    are logged to the active run; log_batch_run moves the alias if the challenger won."""
    import mlflow

    from incrml.gate import CHAMPION, decide

    name, metric = params.mlflow.registered_model, params.evaluate.primary_metric
    champion = _alias_version(client, name, CHAMPION)
    held_by = str(champion.version) if champion is not None else None  # an int from MLflow here
    same, value, unscorable = held_by == version, None, None
    if champion is not None and not same:
        champion_run = client.get_run(champion.run_id)
        value = champion_run.data.metrics.get(metric)
        if champion_run.data.tags.get(HOLDOUT_TAG) != holdout_md5 or value is None:
            # measured on another holdout: score it on this one
            try:
                value = rescore(load_registered_model(root, params, version=held_by).model)[metric]
            except (IncrmlError, KeyError, ValueError) as exc:  # other features or source: not comparable
                unscorable = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    decision = decide(metric, metrics[metric], value, held_by, params.evaluate.tolerance, same, unscorable)
    mlflow.set_tags({GATE_TAG: decision.summary, GATE_REASON_TAG: decision.reason})
    if decision.champion is not None:
        mlflow.log_metric(f"champion_{metric}", decision.champion)
    return decision


def _alias_version(client, name: str, alias: str):
    """The model version an alias points at, or None if there is none (any other failure of the
    store, a server's timeout say, is raised: it must not read as "no champion")."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


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
    gate: str | None = None
    gate_reason: str | None = None
    drift: str | None = None
    runs: int = 1
    older_run_ids: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int | None:
        rows = self.metrics.get("training_rows")
        return int(rows) if rows is not None else None


def missing_batch(runs: dict[int, BatchRun], batch: int, lacking: str) -> IncrmlError:
    """The error for a batch that `runs` (from batch_runs) lacks, naming the batches it has."""
    have = ", ".join(map(str, runs)) or "none"
    return IncrmlError(f"batch {batch} has {lacking} (batches ingested: {have})")


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
            gate=run.data.tags.get(GATE_TAG),
            gate_reason=run.data.tags.get(GATE_REASON_TAG),
            drift=run.data.tags.get(DRIFT_TAG),
        )
    return dict(sorted(found.items()))


def set_champion(root: Path, params: Params, version: str, why: str) -> str | None:
    """Point the `champion` alias at `version` (a promote or rollback by hand); the version it
    pointed at before. The version is tagged with why."""
    from incrml.gate import CHAMPION

    name = params.mlflow.registered_model
    with _store(params, root) as client:
        before = _alias_version(client, name, CHAMPION)
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "incrml.champion_by", why)
    return str(before.version) if before is not None else None


def run_lineage(root: Path, params: Params, run_id: str) -> dict:
    """What MLflow holds of one run's lineage: its status, DVC hashes, dataset and model version."""
    name = params.mlflow.registered_model
    with _store(params, root) as client:
        run = client.get_run(run_id)
        tags = run.data.tags
        version = tags.get(MODEL_VERSION_TAG)
        model = client.get_model_version(name, version) if version else None
    datasets = [
        {"name": d.dataset.name, "digest": d.dataset.digest}
        for d in (run.inputs.dataset_inputs if run.inputs else [])
    ]
    return {
        "run_id": run_id,
        "status": run.info.status,
        "data_md5": tags.get(DATA_TAG),
        "dvc": {k.removeprefix("dvc."): v for k, v in sorted(tags.items()) if k.startswith("dvc.")},
        "datasets": datasets,
        "model_version": version,
        "model_data_md5": model.tags.get(DATA_TAG) if model else None,
        "model_md5": model.tags.get(MODEL_MD5_TAG) if model else None,
        "aliases": sorted(model.aliases) if model else [],
    }


def champion_version(root: Path, params: Params) -> str | None:
    """The model version the `champion` alias points at, or None."""
    from incrml.gate import CHAMPION

    with _store(params, root) as client:
        version = _alias_version(client, params.mlflow.registered_model, CHAMPION)
    return str(version.version) if version is not None else None


@dataclass
class LoadedModel:
    """A registered model version loaded from the workspace's own store, and what it expects."""

    name: str
    version: str
    batch: int | None  # the batch it was trained for (its incrml.batch tag)
    inputs: list[tuple[str, str]]  # its signature's input columns and their MLflow types
    model: object  # the scikit-learn Pipeline that takes the raw feature columns


def _local_path(uri: str) -> Path | None:
    """The folder a file: URI or a plain path names; None for a remote location."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return Path(unquote(parsed.path)).resolve() if parsed.scheme in ("", "file") else None


def _within(location: str, home: str | None) -> bool:
    """Whether artifact `location` lies under the experiment's artifact location `home`."""
    if home is None:
        return False
    inner, outer = _local_path(location), _local_path(home)
    if inner is not None and outer is not None:
        return inner.is_relative_to(outer)
    return location.startswith(home + "/")


def load_registered_model(
    root: Path, params: Params, *, version: str | None = None, alias: str | None = None
) -> LoadedModel:
    """Version `version`, or the one `alias` points at, of the registered model, loaded from the
    workspace's store only.

    No models:/ URI: MLflow resolves those against its global registry URI whatever tracking URI
    is passed, so a client bound to the store finds the version and the location of its files;
    those must lie in the workspace's experiment and be skops-serialised with incrml's trusted
    types (a pickle is never loaded).
    """
    import tempfile

    name, uri = params.mlflow.registered_model, tracking_uri(params, root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise IncrmlError(f"no model registered yet ({uri} does not exist): ingest a batch first")
    with _store(params, root) as client:
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        held = ", ".join(f"v{n}" for n in numbers)
        if not numbers:
            raise IncrmlError(f"no version of model '{name}' is registered yet: ingest a batch first")
        if alias is not None:
            aliased = _alias_version(client, name, alias)
            if aliased is None:
                raise IncrmlError(
                    f"no {alias} yet for model '{name}': ingest a batch, or `incrml promote N`, "
                    f"or name a version with --model vN ({held})"
                )
            version = aliased.version
        if version is None or int(version) not in numbers:
            raise IncrmlError(f"model '{name}' has no version {version}; its versions: {held}")
        version = str(int(version))
        found = client.get_model_version(name, version)
        location = client.get_model_version_download_uri(name, version)
        experiment = client.get_experiment_by_name(params.mlflow.experiment)
        home = experiment.artifact_location.rstrip("/") if experiment else None

        if not _within(location, home):
            raise IncrmlError(
                f"model '{name}' v{version} is stored at {location}, outside this workspace's experiment "
                f"'{params.mlflow.experiment}' ({home}); refusing to load it"
            )
        import mlflow.artifacts
        import mlflow.sklearn
        from mlflow.models import Model

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for errors
        with tempfile.TemporaryDirectory(prefix="incrml-model-") as tmp:
            # A local store's files are read where they are; a remote one's are fetched into tmp.
            fetch_to = None if _local_path(location) is not None else tmp
            files = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=fetch_to, tracking_uri=uri)
            meta = Model.load(files)
            flavor = meta.flavors.get("sklearn", {})
            trusted = set(flavor.get("skops_trusted_types") or [])
            if flavor.get("serialization_format") != "skops" or not trusted <= set(TRUSTED_TYPES):
                raise IncrmlError(
                    f"model '{name}' v{version} is not a skops-serialised scikit-learn model with incrml's "
                    "trusted types; refusing to load it"
                )
            if meta.signature is None or not meta.signature.inputs.has_input_names():
                raise IncrmlError(f"model '{name}' v{version} has no signature naming its input columns")
            try:
                model = mlflow.sklearn.load_model(files)
            except (TypeError, ValueError, OSError) as exc:  # skops refuses untrusted types with a TypeError
                raise IncrmlError(f"model '{name}' v{version} could not be loaded: {str(exc).splitlines()[0]}") from None
    batch = found.tags.get(BATCH_TAG)
    inputs = [(spec.name, getattr(spec.type, "name", str(spec.type))) for spec in meta.signature.inputs.inputs]
    return LoadedModel(name, version, int(batch) if batch else None, inputs, model)
