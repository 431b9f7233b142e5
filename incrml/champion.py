"""Moving the champion by hand: promote a batch's model, or roll the whole workspace back to a batch."""

from __future__ import annotations

from pathlib import Path

from incrml import journal
from incrml.config import load_params
from incrml.files import read_json
from incrml.ingest import Progress, reproduce_batch
from incrml.lock import workspace_lock
from incrml.workspace import Layout


def _ingested_version(root: Path, batch: int) -> str:
    """The model version of batch's newest finished run; an error if there is none."""
    from incrml.tracking import batch_runs, missing_batch

    runs = batch_runs(root, load_params(root))
    if batch not in runs or not runs[batch].model_version:
        raise missing_batch(runs, batch, "no registered model")
    return runs[batch].model_version


def promote(root: Path, batch: int, wait: float = 5.0) -> dict:
    """Make batch's model the champion, whatever the gate decided."""
    from incrml.tracking import set_champion

    with workspace_lock(root, f"promote {batch}", wait):
        params = load_params(root)
        version = _ingested_version(root, batch)
        before = set_champion(root, params, version, f"promote {batch}")
        journal.refresh(root, params)
    return {"batch": batch, "model_version": version, "previous_champion": before}


def rollback(root: Path, batch: int, progress: Progress | None = None, wait: float = 5.0) -> dict:
    """Return the workspace to a batch ingested before: params.yaml, data, model and metrics
    reproduced through DVC (restored from its cache), and the champion alias on that batch's model."""
    from incrml.tracking import champion_version, set_champion

    with workspace_lock(root, f"rollback {batch}", wait):
        _ingested_version(root, batch)  # refuse a batch never ingested before anything changes
        before = champion_version(root, load_params(root))  # the gate moves it if evaluate runs again
        stages = reproduce_batch(root, batch, progress=progress, wait=wait, command=f"rollback {batch}")
        params = load_params(root)
        version = read_json(Layout(root).run_record)["model_version"]
        set_champion(root, params, version, f"rollback {batch}")
        journal.refresh(root, params)
    retrained = [s.stage for s in stages if s.outcome == "ran" and s.stage in ("train", "evaluate")]
    return {
        "batch": batch,
        "model_version": version,
        "previous_champion": before,
        "stages": [vars(s) for s in stages],
        # DVC's run-cache no longer held the batch (after `dvc gc`, or a changed stage): rebuilt.
        "retrained": retrained,
    }
