"""Fixtures: real DVC and a real sqlite MLflow store, in temporary workspaces, never the checkout.

A template workspace is made once per session (`incrml init`, MLflow's tables created, the
stream fetched) and copied for each test that needs one, as DVC's own suite does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from incrml.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _stable_env(monkeypatch):
    """Plain, fixed-width output; the venv's python first on PATH for DVC's stage commands."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_runs():
    yield
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run():
            mlflow.end_run("KILLED")


class Cli:
    """incrml through Typer's CliRunner, from a given folder."""

    def __init__(self, monkeypatch) -> None:
        self.runner = CliRunner()
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, cwd: Path | None = None):
        if cwd is not None:
            self.monkeypatch.chdir(cwd)
        return self.runner.invoke(app, list(args))


@pytest.fixture
def cli(monkeypatch) -> Cli:
    return Cli(monkeypatch)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def working_copy(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A test's own copy of a session template workspace, and the cwd set to it."""
    root = _copy(template, tmp_path / "ws")
    monkeypatch.chdir(root)
    return root


def invoke_in(root: Path, *commands: list[str]) -> None:
    """Run incrml commands in `root` (for session fixtures, which cannot use monkeypatch)."""
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for command in commands:
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def template_workspace(tmp_path_factory) -> Path:
    from incrml.config import load_params
    from incrml.pipeline import reproduce
    from incrml.tracking import _client

    root = tmp_path_factory.mktemp("template") / "ws"
    result = CliRunner().invoke(app, ["init", str(root)])
    assert result.exit_code == 0, result.output
    _client(load_params(root), root).search_experiments()  # creates MLflow's tables once
    reproduce(root, "get_data", single_item=True)
    return root


@pytest.fixture
def workspace(template_workspace, tmp_path, monkeypatch) -> Path:
    return working_copy(template_workspace, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def ingested_template(template_workspace, tmp_path_factory) -> Path:
    """Batches 1 and 2 ingested; copied per test, never changed itself."""
    root = _copy(template_workspace, tmp_path_factory.mktemp("ingested") / "ws")
    invoke_in(root, ["ingest-batch", "1"], ["ingest-batch", "2"])
    return root


@pytest.fixture
def ingested(ingested_template, tmp_path, monkeypatch) -> Path:
    return working_copy(ingested_template, tmp_path, monkeypatch)


def one_line_error(result) -> str:
    """The one `Error:` line a refused command prints, from CliRunner or a real process."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def mlflow_runs(root: Path):
    """(runs, model versions) in the workspace's MLflow store, read with MLflow's own client."""
    from mlflow import MlflowClient

    from incrml.config import load_params, tracking_uri

    params = load_params(root)
    client = MlflowClient(tracking_uri(params, root))
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    versions = client.search_model_versions(f"name = '{params.mlflow.registered_model}'")
    return runs, versions


def snapshot(root: Path) -> dict[str, str]:
    """The md5 of every file a command must not change when it refuses: params, lock, data, store."""
    tracked = [root / "params.yaml", root / "dvc.lock", root / "mlflow.db"]
    for folder in ("data", "models", "metrics", "mlartifacts"):
        tracked += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.exists() else "missing"
        for p in tracked
    }


ROWS = 80  # per dropped file; the first loses ceil(20%) = 16 to the holdout


@pytest.fixture(scope="session")
def drops(tmp_path_factory) -> list[Path]:
    """Three files someone dropped: consecutive slices of sklearn's digits, one of them Parquet."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("drops")
    frame = load_digits(as_frame=True).frame
    paths = [folder / "drop1.csv", folder / "drop2.parquet", folder / "drop3.csv"]
    for i, path in enumerate(paths):
        part = frame.iloc[i * ROWS : (i + 1) * ROWS]
        part.to_parquet(path) if path.suffix == ".parquet" else part.to_csv(path, index=False)
    return paths


@pytest.fixture(scope="session")
def files_template(drops, tmp_path_factory) -> Path:
    """A files workspace with drops 1 and 2 ingested as batches 1 and 2; copied per test."""
    root = tmp_path_factory.mktemp("files") / "ws"
    result = CliRunner().invoke(app, ["init", str(root), "--from-files"])
    assert result.exit_code == 0, result.output
    invoke_in(root, *(["ingest-batch", "--file", str(drop)] for drop in drops[:2]))
    return root


@pytest.fixture
def files_ws(files_template, tmp_path, monkeypatch) -> Path:
    return working_copy(files_template, tmp_path, monkeypatch)
