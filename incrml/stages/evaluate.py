"""evaluate: the model scored on the fixed holdout; metrics for DVC, and the batch's MLflow run.

The run records what the model was trained on as dvc.lock holds it (DVC writes each stage's
lock entry as soon as the stage finishes), so batch -> data hash -> run -> model version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.files import file_md5, read_json, write_json
from incrml.pipeline import lock_hashes
from incrml.stages import stage_main
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

    from incrml.config import Params


BLOCK_ROWS = 1 << 16


def predict_rows(model, frame: pd.DataFrame, columns: list[str] | None = None):
    """model.predict over `frame` (its `columns`), a block of rows at a time: the pipeline's
    copies of the input (selected, scaled, cleaned) are the size of a block, not of the frame.
    Row for row the same predictions."""
    import numpy as np

    blocks = [frame.iloc[start : start + BLOCK_ROWS] for start in range(0, len(frame), BLOCK_ROWS)] or [frame]
    return np.concatenate([model.predict(block if columns is None else block[columns]) for block in blocks])


def score(model, holdout: pd.DataFrame, features: list[str], target: str, names: list[str]) -> dict[str, float]:
    from sklearn import metrics as m

    truth, predicted = holdout[target].to_numpy(), predict_rows(model, holdout, features)
    scorers = {
        "accuracy": lambda: m.accuracy_score(truth, predicted),
        "balanced_accuracy": lambda: m.balanced_accuracy_score(truth, predicted),
        "f1_macro": lambda: m.f1_score(truth, predicted, average="macro", zero_division=0),
        "precision_macro": lambda: m.precision_score(truth, predicted, average="macro", zero_division=0),
        "recall_macro": lambda: m.recall_score(truth, predicted, average="macro", zero_division=0),
    }
    return {name: round(float(scorers[name]()), 6) for name in names}


def training_lineage(layout: Layout) -> dict[str, str]:
    """The hashes train saw, from dvc.lock, after checking the model file is the one it records."""
    hashes = lock_hashes(layout.root, "train")
    model_path = str(layout.model.relative_to(layout.root))
    if hashes.get(model_path) != file_md5(layout.model):
        raise IncrmlError("dvc.lock does not describe models/model.pkl; reproduce train first")
    return hashes


def evaluate(layout: Layout, params: Params) -> None:
    import joblib
    import pandas as pd

    from incrml import journal
    from incrml.tracking import BatchRun, batch_runs, drift_summary, log_batch_run

    spec = read_json(layout.preprocessor)
    model = joblib.load(layout.model)
    holdout = pd.read_parquet(layout.holdout)
    target, names = params.data.target, list(params.evaluate.metrics)
    scores = score(model, holdout, spec["features"], target, names)
    lineage = training_lineage(layout)
    drift = read_json(layout.drift)

    def write_outputs(record: dict) -> list:
        write_json(layout.metrics, {**scores, "training_rows": spec["rows"]})
        write_json(layout.run_record, record)
        gate = record["gate"]
        champion = record["model_version"] if gate["promoted"] else gate["champion_version"]
        current = BatchRun(
            batch=params.batch_number, run_id=record["run_id"], start_time=0,
            metrics={**scores, "training_rows": spec["rows"]}, params={}, data_md5=lineage["data/merged"],
            model_version=record["model_version"], gate=gate["summary"], gate_reason=gate["reason"],
            drift=drift_summary(drift),
        )
        runs = {**batch_runs(layout.root, params), params.batch_number: current}
        journal.write(layout, journal.rows(runs, champion, names), names, draw)
        return [layout.learning_curve, layout.drift]

    with journal.painter() as draw:  # matplotlib loads beside the MLflow logging, not before it
        log_batch_run(
            layout.root,
            params,
            metrics=scores,
            training_rows=spec["rows"],
            model=model,
            sample=holdout[spec["features"]].head(5),
            lineage=lineage,
            holdout_md5=file_md5(layout.holdout),
            rescore=lambda other: score(other, holdout, spec["features"], target, names),
            drift=drift,
            write_outputs=write_outputs,
        )


if __name__ == "__main__":
    stage_main(evaluate)
