"""train: the estimator behind the fitted preprocessing, into models/model.pkl.

strategy full fits on every merged batch: its cost grows with the history, by nature.
strategy incremental continues the previous batch's model on the new batch only (partial_fit).
Its model is still a function of the batches alone: the chain 1..N, each step scaled as
preprocess would have scaled it then. Each step's model is kept as a checkpoint outside DVC's
outputs, keyed by everything it depends on, so batch N costs one step, and a fresh clone or a
changed param recomputes the chain: the same coefficients and predictions (the pickle's bytes
may differ, as pickle records which objects happened to be shared).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.files import atomic_write, read_json
from incrml.stages import stage_main
from incrml.stages.merge_data import partitions, read_training
from incrml.stages.preprocess import build_preprocessor, fit_preprocessor, transform_in_place
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd

    from incrml.config import Params, TrainParams


def make_estimator(train: TrainParams):
    spec = train.estimator
    if spec.kind == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=spec.C, max_iter=spec.max_iter, random_state=train.seed)
    if spec.kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=spec.n_estimators, max_depth=spec.max_depth, random_state=train.seed, n_jobs=1
        )
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss=spec.loss, alpha=spec.alpha, random_state=train.seed)


def fit(frame: pd.DataFrame, preprocessor: dict, target: str, train: TrainParams):
    """A fitted Pipeline (preprocessing, estimator) that takes raw feature frames."""
    import numpy as np

    x = frame[preprocessor["features"]].to_numpy(dtype=np.float64, copy=True)
    return fit_matrix(x, frame[target].to_numpy(), preprocessor, train)


def fit_matrix(x, y, preprocessor: dict, train: TrainParams):
    """fit() on a float matrix of the features, which is scaled in place."""
    from sklearn.pipeline import Pipeline

    pre = build_preprocessor(preprocessor)
    transform_in_place(pre, x)
    estimator = make_estimator(train)
    estimator.fit(x, y)
    return Pipeline([*pre.steps, ("estimator", estimator)])


def chain_keys(stats: list[dict], preprocessor: dict, train: TrainParams, classes: list) -> list[str]:
    """The key of each step of the incremental chain: what its model is a function of."""
    base = json.dumps(
        [train.model_dump(mode="json"), preprocessor["features"], preprocessor["standardize"], classes],
        sort_keys=True,
    )
    keys, key = [], hashlib.md5(base.encode()).hexdigest()
    for part in stats:
        key = hashlib.md5((key + json.dumps(part, sort_keys=True)).encode()).hexdigest()
        keys.append(key)
    return keys


def fit_incremental(parts: list[Path], preprocessor: dict, target: str, train: TrainParams, classes: list, store: Path):
    """The previous step's model (from its checkpoint, or recomputed) learns the newest batch."""
    import joblib
    import pandas as pd
    from sklearn.pipeline import Pipeline

    stats = [read_json(p.with_suffix(".json")) for p in parts]
    keys = chain_keys(stats, preprocessor, train, classes)
    checkpoint = lambda step: store / f"{keys[step]}.pkl"  # noqa: E731
    start = next((step + 1 for step in range(len(parts) - 2, -1, -1) if checkpoint(step).exists()), 0)
    model = joblib.load(checkpoint(start - 1)) if start else make_estimator(train)
    features = preprocessor["features"]
    for step in range(start, len(parts)):
        scale = build_preprocessor(fit_preprocessor(stats[: step + 1], features, preprocessor["standardize"]))
        frame = pd.read_parquet(parts[step])
        model.partial_fit(scale.transform(frame[features]), frame[target].to_numpy(), classes=classes)
        atomic_write(checkpoint(step), lambda tmp: joblib.dump(model, tmp))
    return Pipeline([*build_preprocessor(preprocessor).steps, ("estimator", model)])


def train(layout: Layout, params: Params) -> None:
    import joblib

    spec = read_json(layout.preprocessor)
    target = params.data.target
    if params.train.strategy == "incremental":
        classes = read_json(layout.schema)["classes"]
        model = fit_incremental(partitions(layout.merged), spec, target, params.train, classes, layout.checkpoints)
    else:
        model = fit_matrix(*read_training(layout.merged, spec["features"], target), spec, params.train)
    atomic_write(layout.model, lambda tmp: joblib.dump(model, tmp))


if __name__ == "__main__":
    stage_main(train)
