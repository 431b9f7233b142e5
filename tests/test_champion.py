"""The champion gate, promote, rollback, lineage and the learning-curve plot, with real DVC and
MLflow; and the gate's decision on plain numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mlflow_runs, one_line_error, snapshot

from incrml.config import load_params
from incrml.files import read_json
from incrml.gate import decide
from incrml.pipeline import lock_hashes, stale_stages
from incrml.stages import merge_data


def champion(root: Path) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from incrml.config import tracking_uri

    params = load_params(root)
    try:
        version = MlflowClient(tracking_uri(params, root)).get_model_version_by_alias(
            params.mlflow.registered_model, "champion"
        )
    except MlflowException:
        return None
    return str(version.version)


def run_of(root: Path, batch: int):
    runs = [r for r in mlflow_runs(root)[0] if r.data.tags.get("incrml.batch") == str(batch)]
    return max(runs, key=lambda r: r.info.start_time)


@pytest.mark.parametrize(
    ("challenger", "champion_value", "version", "tolerance", "same", "promoted", "reason"),
    [
        (0.80, None, None, 0.0, False, True, "no champion yet"),
        (0.91, 0.90, "3", 0.0, False, True, "accuracy 0.9100 >= champion v3's 0.9000"),
        (0.90, 0.90, "3", 0.0, False, True, ">="),
        (0.89, 0.90, "3", 0.0, False, False, "accuracy 0.8900 < champion v3's 0.9000"),
        (0.89, 0.90, "3", 0.02, False, True, "- tolerance 0.02"),
        (0.95, 0.90, "3", 0.0, True, False, "the same model as champion v3"),
    ],
)
def test_gate_promotes_only_a_model_at_least_as_good(challenger, champion_value, version, tolerance, same, promoted, reason):
    decision = decide("accuracy", challenger, champion_value, version, tolerance, same_model=same)
    assert decision.promoted is promoted
    assert reason in decision.reason
    assert decision.summary == ("promoted" if promoted else f"kept v{version}")


def test_a_champion_that_cannot_be_scored_is_replaced_whatever_the_numbers():
    decision = decide("accuracy", 0.10, None, "3", 0.0, unscorable="X has 5 features, but it expects 64")
    assert decision.promoted and decision.summary == "promoted"
    assert decision.reason == "champion v3 cannot be scored on this holdout (X has 5 features, but it expects 64)"


def test_the_first_batches_are_gated_and_logged(ingested):
    batch1, batch2 = run_of(ingested, 1), run_of(ingested, 2)
    assert batch1.data.tags["incrml.gate"] == "promoted"
    assert batch1.data.tags["incrml.gate_reason"] == "no champion yet"
    # batch 2 was measured against batch 1's model on the same holdout
    assert batch2.data.metrics["champion_accuracy"] == batch1.data.metrics["accuracy"]
    assert batch2.data.tags["incrml.gate"] == "promoted"
    assert champion(ingested) == batch2.data.tags["incrml.model_version"]
    record = read_json(ingested / "metrics/run.json")
    assert record["gate"]["promoted"] and record["gate"]["challenger"] == batch2.data.metrics["accuracy"]
    history = read_json(ingested / "metrics/history.json")
    assert [(row["batch"], row["gate"], row["champion"]) for row in history] == [(1, "promoted", False), (2, "promoted", True)]


def test_a_batch_with_shuffled_labels_does_not_move_the_champion(files_ws, cli, tmp_path):
    from sklearn.datasets import load_digits

    before = champion(files_ws)
    assert before is not None
    bad = load_digits(as_frame=True).frame.iloc[200:500].copy()
    bad["target"] = np.random.default_rng(0).permutation(bad["target"].to_numpy())
    path = tmp_path / "shuffled.csv"
    bad.to_csv(path, index=False)

    result = cli("ingest-batch", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert champion(files_ws) == before
    run = run_of(files_ws, 3)
    assert run.data.tags["incrml.gate"] == f"kept v{before}"
    assert run.data.metrics["accuracy"] < run.data.metrics["champion_accuracy"]
    assert run.data.tags["incrml.model_version"] != before  # registered, just not champion
    assert f"kept v{before}" in result.stdout and "< champion" in result.stdout
    assert stale_stages(files_ws) == {}


def test_promote_by_hand_moves_the_champion_and_the_journal(ingested, cli):
    version1 = run_of(ingested, 1).data.tags["incrml.model_version"]
    result = cli("promote", "1")
    assert result.exit_code == 0, result.output
    assert champion(ingested) == version1
    assert f"Champion: v{version1}, the model of batch 1" in result.stdout
    history = read_json(ingested / "metrics/history.json")
    assert [row["champion"] for row in history] == [True, False]
    assert json.loads(cli("status", "--json").stdout)["champion"] == {"model_version": version1, "batch": 1}
    assert stale_stages(ingested) == {}


@pytest.mark.parametrize("command", [["promote", "7"], ["rollback", "7"], ["lineage", "7"], ["promote", "0"]])
def test_a_batch_never_ingested_is_refused_and_nothing_changes(ingested, cli, command):
    before = snapshot(ingested)
    error = one_line_error(cli(*command))
    assert "batch" in error
    assert snapshot(ingested) == before
    assert champion(ingested) == run_of(ingested, 2).data.tags["incrml.model_version"]


def test_rollback_restores_from_cache_then_the_next_ingest_behaves(ingested, cli):
    assert cli("ingest-batch", "3").exit_code == 0
    batch2 = run_of(ingested, 2)
    runs_before = len(mlflow_runs(ingested)[0])

    result = cli("rollback", "2", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    outcomes = {s["stage"]: s["outcome"] for s in done["stages"]}
    assert outcomes["train"] == outcomes["evaluate"] == "restored" and done["retrained"] == []
    assert load_params(ingested).batch_number == 2
    assert champion(ingested) == done["model_version"] == batch2.data.tags["incrml.model_version"]
    assert lock_hashes(ingested, "train")["data/merged"] == batch2.data.tags["incrml.data_md5"]
    assert len(mlflow_runs(ingested)[0]) == runs_before  # nothing re-trained, nothing logged
    assert stale_stages(ingested) == {}

    result = cli("ingest-batch", "4")
    assert result.exit_code == 0, result.output
    assert stale_stages(ingested) == {}
    assert merge_data.partitions(ingested / "data/merged")[-1].name == "batch-00004.parquet"
    run4 = run_of(ingested, 4)
    assert run4.data.metrics["training_rows"] == 4 * 50
    # gated against the champion the rollback restored: batch 2's model
    assert run4.data.metrics["champion_accuracy"] == batch2.data.metrics["accuracy"]


def test_lineage_links_batch_data_run_and_model_and_checks_them(ingested, cli):
    result = cli("lineage", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    run2 = run_of(ingested, 2)
    assert data["current"] and data["ok"] and len(data["checks"]) == 6
    assert data["run_id"] == run2.info.run_id
    assert data["dvc"]["data/merged"] == lock_hashes(ingested, "train")["data/merged"] == data["data_md5"]
    assert data["model_version"] == run2.data.tags["incrml.model_version"] and data["aliases"] == ["champion"]
    assert data["datasets"] == [{"name": "merged-batches-1-2", "digest": data["data_md5"].removesuffix(".dir")[:36]}]
    shown = cli("lineage", "1").stdout
    assert "the model version records the run's data hash" in shown and shown.count("✓") == 5 and "✗" not in shown

    # a model version whose model file hash is not the one its run trained: the link is named
    from mlflow import MlflowClient

    from incrml.config import tracking_uri

    params = load_params(ingested)
    MlflowClient(tracking_uri(params, ingested)).set_model_version_tag(
        params.mlflow.registered_model, data["model_version"], "incrml.model_md5", "0" * 32
    )
    tampered = cli("lineage", "2")
    assert one_line_error(tampered) == (
        "Error: lineage of batch 2 does not hold: not so that the model version records the run's model file hash"
    )

    # batch 1's training data gone from DVC's cache: the lineage no longer holds, and says why
    md5 = json.loads(cli("lineage", "1", "--json").stdout)["data_md5"]
    (ingested / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    broken = cli("lineage", "1")
    assert broken.exit_code == 1
    assert one_line_error(broken) == "Error: lineage of batch 1 does not hold: not so that DVC's cache holds the training data"


def _curve_pixels(path: Path) -> dict[str, int]:
    """How many pixels of the PNG are the first metric's line colour, and the champion's star."""
    import matplotlib.image

    image = (matplotlib.image.imread(path)[:, :, :3] * 255).round()
    near = lambda rgb: int((np.abs(image - rgb).sum(axis=2) < 30).sum())  # noqa: E731
    return {"line": near((31, 119, 180)), "star": near((255, 215, 0))}


def test_the_learning_curve_is_a_png_in_dvc_plots_and_mlflow_and_on_demand(ingested, cli, tmp_path):
    curve = ingested / "metrics/learning_curve.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = _curve_pixels(curve)
    assert pixels["line"] > 200 and pixels["star"] > 20, pixels

    from mlflow import MlflowClient

    from incrml.config import tracking_uri

    client = MlflowClient(tracking_uri(load_params(ingested), ingested))
    assert "learning_curve.png" in [a.path for a in client.list_artifacts(run_of(ingested, 2).info.run_id)]

    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=ingested,
                           capture_output=True, text=True, check=True)
    assert "metrics/learning_curve.png" in json.loads(shown.stdout)["data"]

    out = tmp_path / "curve.png"
    result = cli("compare", "1", "2", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert _curve_pixels(out)["line"] > 200
    assert one_line_error(cli("compare", "1", "2", "--plot", str(tmp_path / "curve.txt"))).endswith("not 'curve.txt'")


def test_a_champion_measured_on_another_holdout_is_scored_again(ingested, cli):
    from mlflow import MlflowClient

    from incrml.config import tracking_uri

    batch2 = run_of(ingested, 2)
    client = MlflowClient(tracking_uri(load_params(ingested), ingested))
    client.set_tag(batch2.info.run_id, "incrml.holdout_md5", "another holdout")
    client.log_metric(batch2.info.run_id, "accuracy", 0.0)  # a number from that other holdout

    assert cli("ingest-batch", "3").exit_code == 0
    # batch 2's model, loaded from the store and scored on this holdout, not the 0.0 on record
    assert run_of(ingested, 3).data.metrics["champion_accuracy"] == batch2.data.metrics["accuracy"]


def test_a_champion_that_cannot_be_scored_on_the_new_holdout_is_replaced_and_says_why(ingested, cli):
    params = ingested / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("    kind: digits\n", "    kind: synthetic\n    rows: 400\n    features: 5\n"))
    assert champion(ingested) == "2"

    result = cli("ingest-batch", "1")  # batch 2's model wants 64 pixels; this holdout has 5 features
    assert result.exit_code == 0, result.output
    run = run_of(ingested, 1)
    assert run.data.tags["incrml.gate"] == "promoted"
    assert "champion v2 cannot be scored on this holdout" in run.data.tags["incrml.gate_reason"]
    assert champion(ingested) == run.data.tags["incrml.model_version"]


def test_the_painter_draws_what_it_is_sent_and_ends_when_sent_nothing(tmp_path):
    from incrml import journal

    history = [{"batch": b, "training_rows": 50 * b, "accuracy": 0.8 + b / 100, "model_version": str(b),
                "champion": b == 2} for b in (1, 2, 3)]
    with journal.painter() as draw:
        draw(history, ["accuracy"], tmp_path / "curve.png")
    pixels = _curve_pixels(tmp_path / "curve.png")
    assert pixels["line"] > 200 and pixels["star"] > 20, pixels
    with journal.painter():
        pass  # evaluate failed before drawing: leaving the block ends the painter and reaps it
