"""preprocess: mean imputation and standardisation, fitted on the training batches only.

The fit combines each partition's statistics (count, mean, squared deviations), so it costs
what the number of batches costs, not the number of rows; the holdout is never seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.files import read_json, write_json
from incrml.stages import stage_main
from incrml.stages.merge_data import partitions
from incrml.workspace import Layout

if TYPE_CHECKING:
    from incrml.config import Params


def combine(stats: list[dict]) -> dict:
    """Chan et al.'s pairwise update: the mean and variance of all rows, from per-batch parts."""
    import numpy as np

    count = np.zeros(len(stats[0]["count"]))
    mean = np.zeros_like(count)
    m2 = np.zeros_like(count)
    for part in stats:
        n_b, mean_b, m2_b = (np.asarray(part[k], dtype=np.float64) for k in ("count", "mean", "m2"))
        total = count + n_b
        delta = mean_b - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, mean + delta * n_b / total, 0.0)
            m2 = np.where(total > 0, m2 + m2_b + delta**2 * count * n_b / total, 0.0)
        count = total
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(count > 0, m2 / np.maximum(count, 1), 0.0)
    return {"rows": sum(p["rows"] for p in stats), "mean": mean.tolist(), "var": var.tolist()}


def fit_preprocessor(stats: list[dict], features: list[str], standardize: bool) -> dict:
    combined = combine(stats)
    return {"features": features, "standardize": standardize, **combined}


def build_preprocessor(spec: dict):
    """The fitted scikit-learn steps the spec describes: centre (and scale), then NaN -> mean."""
    import numpy as np
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    scaler = StandardScaler(with_std=spec["standardize"])
    var = np.asarray(spec["var"])
    scaler.mean_ = np.asarray(spec["mean"])
    scaler.var_ = var if spec["standardize"] else None
    # As StandardScaler.fit does: a constant feature keeps scale 1 instead of dividing by zero.
    scale = np.sqrt(var)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    scaler.scale_ = scale if spec["standardize"] else None
    scaler.n_samples_seen_ = spec["rows"]
    scaler.n_features_in_ = len(spec["features"])
    scaler.feature_names_in_ = np.asarray(spec["features"], dtype=object)
    # After centring, the feature mean is 0: filling NaN with 0 is mean imputation.
    return make_pipeline(scaler, FunctionTransformer(np.nan_to_num))


def transform_in_place(preprocessor, x) -> None:
    """What build_preprocessor's pipeline does to a float matrix, without copying it
    (StandardScaler.transform copies even when asked not to): centre, scale, NaN -> 0."""
    import numpy as np

    scaler = preprocessor.steps[0][1]
    for start in range(0, len(x), 1 << 16):  # in row blocks: nan_to_num's masks stay small
        block = x[start : start + (1 << 16)]
        block -= scaler.mean_
        if scaler.with_std:
            block /= scaler.scale_
        np.nan_to_num(block, copy=False)


def preprocess(layout: Layout, params: Params) -> None:
    schema = read_json(layout.schema)
    parts = partitions(layout.merged)
    if not parts:
        raise IncrmlError("data/merged holds no batches; run merge_data")
    stats = [read_json(p.with_suffix(".json")) for p in parts]
    spec = fit_preprocessor(stats, schema["features"], params.preprocess.standardize)
    write_json(layout.preprocessor, spec)


if __name__ == "__main__":
    stage_main(preprocess)
