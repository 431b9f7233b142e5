"""End to end: real DVC, a real sqlite MLflow store, in temporary workspaces."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from conftest import REPO, mlflow_runs

from incrml.config import load_params
from incrml.pipeline import lock_hashes, stale_stages
from incrml.tracking import BATCH_TAG, DATA_TAG


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_batches_1_2_3_compare_status_and_back_to_2_from_cache(cli, workspace):
    for batch in (1, 2, 3):
        result = cli("ingest-batch", str(batch))
        assert result.exit_code == 0, result.output
        assert stale_stages(workspace) == {}
        assert f"{batch} ◀" in result.stdout
        assert load_params(workspace).batch_number == batch

    runs, versions = mlflow_runs(workspace)
    assert sorted(int(r.data.tags[BATCH_TAG]) for r in runs) == [1, 2, 3]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    newest = max(runs, key=lambda r: int(r.data.tags[BATCH_TAG]))
    # batch -> data hash -> run -> model version, all agreeing with dvc.lock
    assert newest.data.tags[DATA_TAG] == lock_hashes(workspace, "train")["data/merged"]
    assert newest.data.metrics["training_rows"] == 150
    assert newest.inputs.dataset_inputs[0].dataset.digest in newest.data.tags[DATA_TAG]
    assert {"batch_number", "data.batch_size", "train.estimator.C"} <= set(newest.data.params)

    compared = _json(cli("compare", "2", "3", "--json"))
    assert (compared["a"]["rows"], compared["b"]["rows"]) == (100, 150)
    assert (compared["a"]["model_version"], compared["b"]["model_version"]) == ("2", "3")
    accuracy = compared["metrics"]["accuracy"]
    assert accuracy["delta"] == round(accuracy["b"] - accuracy["a"], 6)
    assert compared["params_differ"] == {}
    assert "batch 2 vs batch 3" in cli("compare", "2", "3").stdout.lower()

    status = _json(cli("status", "--json"))
    assert status["batch_number"] == 3
    assert status["batches_ingested"] == [1, 2, 3]
    assert status["up_to_date"] is True
    assert status["metrics"]["training_rows"] == 150

    batch2_metrics = [r for r in runs if r.data.tags[BATCH_TAG] == "2"][0].data.metrics
    result = cli("ingest-batch", "2")
    assert result.exit_code == 0, result.output
    # batch 2 as it was kept after its ingest: its dvc.lock, and every output checked out of DVC's cache
    for stage in ("prepare_batch", "merge_data", "preprocess", "train", "evaluate"):
        assert f"{stage:<14} ↺ restored from DVC cache" in result.stdout
    assert "get_data       · up to date" in result.stdout
    assert stale_stages(workspace) == {}
    runs_after, versions_after = mlflow_runs(workspace)
    assert len(runs_after) == 3 and len(versions_after) == 3
    metrics = json.loads((workspace / "metrics/metrics.json").read_text())
    assert metrics["accuracy"] == batch2_metrics["accuracy"]
    assert json.loads((workspace / "metrics/run.json").read_text())["model_version"] == "2"


def test_plain_dvc_repro_in_repo_layout_gives_what_ingest_batch_gives(cli, workspace, tmp_path):
    """The checkout's own workspace driven by `dvc repro` from a shell == an init'd one driven by incrml."""
    result = cli("ingest-batch", "2")
    assert result.exit_code == 0, result.output

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    clone = tmp_path / "clone"
    for name in files.splitlines():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, clone / name)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    params = clone / "params.yaml"
    params.write_text(re.sub(r"(?m)^batch_number: \d+", "batch_number: 2", params.read_text()))
    repro = subprocess.run(["dvc", "repro"], cwd=clone, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert stale_stages(clone) == {}

    for stage, path in [
        ("get_data", "data/raw/stream.parquet"),
        ("prepare_batch", "data/processed/batch.parquet"),
        ("merge_data", "data/merged"),
        ("preprocess", "models/preprocessor.json"),
        ("train", "models/model.pkl"),
    ]:
        assert lock_hashes(clone, stage)[path] == lock_hashes(workspace, stage)[path], stage
    cli_metrics = json.loads((workspace / "metrics/metrics.json").read_text())
    assert json.loads((clone / "metrics/metrics.json").read_text()) == cli_metrics
    # Both runs name evaluate as their source, whether the stage ran in incrml's worker or not.
    for root in (workspace, clone):
        newest = max(mlflow_runs(root)[0], key=lambda run: run.info.start_time)
        assert newest.data.tags["mlflow.source.name"].endswith("incrml/stages/evaluate.py"), root
    assert _json(cli("status", "--json", cwd=clone))["up_to_date"] is True


def test_stage_by_stage_walkthrough(cli, workspace):
    """The seed's first-batch walk-through, one stage command at a time, keeps dvc.lock truthful."""
    for command in ("prepare-batch", "merge-data", "preprocess", "train", "evaluate"):
        result = cli(command, "--batch", "1")
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert "✓ ran" in result.stdout
    assert stale_stages(workspace) == {}
    runs, versions = mlflow_runs(workspace)
    assert [r.data.tags[BATCH_TAG] for r in runs] == ["1"] and len(versions) == 1

    # Out of order, as `dvc repro -s train` would: train is up to date, status names what is not.
    result = cli("train", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert {"prepare_batch", "merge_data", "evaluate"} <= set(stale_stages(workspace))


def test_a_kept_batch_gone_from_dvcs_cache_is_reproduced_instead(cli, ingested):
    """`dvc gc` took batch 1's model: restoring batch 1 falls back to `dvc repro`, which retrains."""
    from incrml.pipeline import lock_hashes

    batch2_model = lock_hashes(ingested, "train")["models/model.pkl"]
    assert cli("ingest-batch", "1").exit_code == 0  # kept: restored by checkout
    batch1_model = lock_hashes(ingested, "train")["models/model.pkl"]
    assert cli("ingest-batch", "2").exit_code == 0
    assert lock_hashes(ingested, "train")["models/model.pkl"] == batch2_model
    (ingested / ".dvc/cache/files/md5" / batch1_model[:2] / batch1_model[2:]).unlink()

    result = cli("ingest-batch", "1")
    assert result.exit_code == 0, result.output
    assert "train          ✓ ran" in result.stdout
    assert lock_hashes(ingested, "train")["models/model.pkl"] == batch1_model  # the same model, rebuilt
    assert stale_stages(ingested) == {}
