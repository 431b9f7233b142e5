"""The command line: help, start-up cost, and every user mistake as one line with nothing changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, one_line_error, snapshot

from incrml.cli import app


def _commands() -> list[str]:
    import typer

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_every_command_has_help_and_is_in_the_readme(cli):
    readme = (REPO / "README.md").read_text()
    for name in _commands():
        result = cli(name, "--help")
        assert result.exit_code == 0, name
        assert len(result.stdout.strip().splitlines()) > 3, name
        assert f"incrml {name}" in readme, f"README does not show `incrml {name}`"


def _imported(*args: str, cwd: Path) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "incrml", *args], cwd=cwd, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}


def test_help_imports_nothing_heavy(tmp_path):
    heavy = {"mlflow", "sklearn", "dvc", "pandas", "pyarrow", "numpy"}
    assert _imported("--help", cwd=tmp_path) & heavy == set()


def test_status_does_not_import_mlflow_or_sklearn(ingested):
    assert _imported("status", cwd=ingested) & {"mlflow", "sklearn"} == set()


BAD_COMMANDS = [
    (["ingest-batch", "0"], "batch must be a whole number from 1 up, got '0'"),
    (["ingest-batch", "-1"], "got '-1'"),
    (["ingest-batch", "1.5"], "got '1.5'"),
    (["ingest-batch", "abc"], "got 'abc'"),
    (["ingest-batch", "40"], "batch 40 requested; the stream holds 28 batches of 50"),
    (["ingest-batch"], "Missing argument"),
    (["ingest-batch", "2", "--nope"], "unexpected extra argument"),
    (["status", "--nope"], "No such option"),
    (["compare", "2", "9"], "batch 9 has no finished MLflow run (batches ingested: 1, 2)"),
    (["compare", "two", "1"], "got 'two'"),
    (["train", "--batch", "x"], "got 'x'"),
    (["prepare-batch", "--batch", "29"], "batch 29 requested"),
    (["nosuchcommand"], "No such command"),
]


@pytest.mark.parametrize(("args", "message"), BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_bad_input_is_one_line_and_changes_nothing(cli, ingested, args, message):
    before = snapshot(ingested)
    assert message in one_line_error(cli(*args))
    assert snapshot(ingested) == before


BAD_PARAMS = [
    ("batch_number: 2\ndata: [unclosed\n", "is not valid YAML (line"),
    ("batch_number: 2\ndata:\n  batchsize: 50\n", "unknown key 'data.batchsize'"),
    ("batch_number: 2\ndata:\n  batch_size: lots\n", "'data.batch_size'"),
    ("batch_number: 2\ntrain:\n  estimator:\n    kind: xgboost\n", "'train.estimator'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_PARAMS, ids=[m for _, m in BAD_PARAMS])
def test_broken_params_yaml_is_one_line_and_changes_nothing(cli, ingested, text, message):
    (ingested / "params.yaml").write_text(text)
    before = snapshot(ingested)
    for command in (["ingest-batch", "3"], ["status"], ["compare", "1", "2"]):
        assert message in one_line_error(cli(*command))
    assert snapshot(ingested) == before


def test_commands_outside_a_workspace(cli, tmp_path):
    for command in (["ingest-batch", "1"], ["status"], ["compare", "1", "2"], ["train"]):
        assert "not inside an incrml workspace" in one_line_error(cli(*command, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_a_folder_that_is_not_empty(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    assert "is not empty" in one_line_error(cli("init", str(tmp_path)))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
