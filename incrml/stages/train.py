"""train: the estimator fitted on every merged batch, behind the fitted preprocessing, into models/."""

from __future__ import annotations

from typing import TYPE_CHECKING

from incrml.config import LogisticRegressionParams, Params, TrainParams
from incrml.files import atomic_write, read_json
from incrml.stages import stage_main
from incrml.stages.merge_data import read_merged
from incrml.stages.preprocess import build_preprocessor
from incrml.workspace import Layout

if TYPE_CHECKING:
    import pandas as pd


def make_estimator(train: TrainParams):
    spec = train.estimator
    if isinstance(spec, LogisticRegressionParams):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=spec.C, max_iter=spec.max_iter, random_state=train.seed)
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=spec.n_estimators, max_depth=spec.max_depth, random_state=train.seed, n_jobs=1
    )


def fit(frame: pd.DataFrame, preprocessor: dict, target: str, train: TrainParams):
    """A fitted Pipeline (preprocessing, estimator) that takes raw feature frames."""
    from sklearn.pipeline import Pipeline

    pre = build_preprocessor(preprocessor)
    estimator = make_estimator(train)
    estimator.fit(pre.transform(frame[preprocessor["features"]]), frame[target].to_numpy())
    return Pipeline([*pre.steps, ("estimator", estimator)])


def train(layout: Layout, params: Params) -> None:
    import joblib

    spec = read_json(layout.preprocessor)
    model = fit(read_merged(layout.merged), spec, params.data.target, params.train)
    atomic_write(layout.model, lambda tmp: joblib.dump(model, tmp))


if __name__ == "__main__":
    stage_main(train)
