"""Drift of a new batch against the merged history: per-feature statistics, their share, label shift.

Pure functions over frames; merge_data runs them and writes the report to metrics/drift.json.

Per feature, the batch is compared with a sample of the history:

- PSI, the population stability index, sum((p - q) * ln(p / q)) over bins (scipy's rel_entr
  both ways). A numeric feature's bins are cut at the history's deciles, and each cut value is a
  bin of its own, so a discrete feature (a pixel, a count) bins by value; a categorical
  (non-numeric) feature's bins are its categories. An empty bin counts as EPSILON.
- A test: the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) for a numeric feature,
  chi-square on the 2 x categories table of counts (scipy.stats.chi2_contingency) for a
  categorical one.

The rule: a feature drifts when its PSI >= drift.psi_threshold AND its test's p-value <
drift.p_value. PSI is the size of the change, the test says it is not sampling noise: PSI alone
flags noise in small batches (with 10 bins and 200 rows a side, PSI between two samples of one
distribution is ~0.1 on average and can pass 0.2), and a test alone flags negligible changes in
big ones. A feature with one value across history and batch (constant) never drifts; one with no
values on a side is not tested. The batch drifts when the share of drifted features is at least
drift.max_share. The label's shift (chi-square on label counts, batch vs history, and the
total-variation distance of the label distributions) is reported, not gated: a change in how
often classes occur is something retraining is for.

metrics/drift.json:

    {"batch": N,
     "history_batches": [1, 5, ...],   # the batches the compared history rows come from
     "history_rows": int,              # rows of history compared (at most drift.history_rows)
     "gate": "off" | "warn" | "refuse",
     "drifted": bool,                  # share_drifted >= drift.max_share
     "share_drifted": float,           # drifted features / features
     "features_drifted": [name, ...],
     "label": {"chi2": float, "p_value": float, "tv_distance": float},   # nulls without history
     "decision": "none" | "off" | "ok" | "warn" | "refused" | "excluded",
     "features": {name: {"kind": "numeric", "psi": float, "ks": float, "p_value": float, "drifted": bool}
                        | {"kind": "categorical", "psi": .., "chi2": .., "p_value": .., "drifted": ..}}}

decision: "excluded" if N is in data.exclude (whatever the statistics say; with gate off
none are computed), else "off" (gate off: no statistics), "none" (no history: batch 1, or every
earlier batch excluded), "ok" (not drifted), "warn" (drifted, taken in), "refused" (drifted,
gate refuse: the stage fails with DriftRefused's exit status and the batch stays out).
Numbers are rounded to 6 significant digits; a statistic that was not computed is null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

BINS = 10
EPSILON = 1e-4
SHOWN_FEATURES = 5

_NO_LABEL = {"chi2": None, "p_value": None, "tv_distance": None}


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")


def psi(history_counts: np.ndarray, batch_counts: np.ndarray) -> float:
    """The population stability index of two histograms over the same bins."""
    import numpy as np
    from scipy.special import rel_entr

    q = np.maximum(history_counts / max(history_counts.sum(), 1), EPSILON)
    p = np.maximum(batch_counts / max(batch_counts.sum(), 1), EPSILON)
    q, p = q / q.sum(), p / p.sum()
    # rel_entr(p, q) + rel_entr(q, p) = p ln(p/q) + q ln(q/p) = (p - q) ln(p/q)
    return float(np.sum(rel_entr(p, q) + rel_entr(q, p)))


def numeric_bins(history: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of `values` in bins cut at the history's deciles, each cut value a bin of its own."""
    import numpy as np

    edges = np.unique(np.quantile(history, np.linspace(0, 1, BINS + 1)[1:-1]))
    index = np.searchsorted(edges, values, side="left") + np.searchsorted(edges, values, side="right")
    return np.bincount(index, minlength=2 * len(edges) + 1)


def numeric_drift(batch: np.ndarray, history: np.ndarray, psi_threshold: float, p_value: float) -> dict:
    """PSI and the KS test of one numeric feature; NaNs are left out."""
    import numpy as np
    from scipy.stats import ks_2samp

    batch, history = batch[~np.isnan(batch)], history[~np.isnan(history)]
    if not len(batch) or not len(history):
        return {"kind": "numeric", "psi": None, "ks": None, "p_value": None, "drifted": False}
    if np.unique(np.concatenate([batch, history])).size == 1:
        return {"kind": "numeric", "psi": 0.0, "ks": 0.0, "p_value": 1.0, "drifted": False}
    value = psi(numeric_bins(history, history), numeric_bins(history, batch))
    test = ks_2samp(batch, history)
    drifted = value >= psi_threshold and test.pvalue < p_value
    return {"kind": "numeric", "psi": _round(value), "ks": _round(test.statistic),
            "p_value": _round(test.pvalue), "drifted": bool(drifted)}


def _counts(batch: pd.Series, history: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each value seen on either side, batch and history, in one order; NaN left out."""
    import pandas as pd

    both = pd.concat([batch.value_counts(), history.value_counts()], axis=1).fillna(0)
    return both.iloc[:, 0].to_numpy(dtype=float), both.iloc[:, 1].to_numpy(dtype=float)


def _chi_square(batch_counts: np.ndarray, history_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square of the 2 x values table of counts (are the two samples one distribution?)."""
    import numpy as np
    from scipy.stats import chi2_contingency

    table = np.vstack([batch_counts, history_counts])
    if table.shape[1] < 2 or not batch_counts.sum() or not history_counts.sum():
        return 0.0, 1.0
    test = chi2_contingency(table)
    return float(test.statistic), float(test.pvalue)


def categorical_drift(batch: pd.Series, history: pd.Series, psi_threshold: float, p_value: float) -> dict:
    """PSI over the categories and the chi-square test of one categorical feature."""
    batch_counts, history_counts = _counts(batch, history)
    if not batch_counts.sum() or not history_counts.sum():
        return {"kind": "categorical", "psi": None, "chi2": None, "p_value": None, "drifted": False}
    if len(batch_counts) == 1:
        return {"kind": "categorical", "psi": 0.0, "chi2": 0.0, "p_value": 1.0, "drifted": False}
    value = psi(history_counts, batch_counts)
    chi2, p = _chi_square(batch_counts, history_counts)
    return {"kind": "categorical", "psi": _round(value), "chi2": _round(chi2), "p_value": _round(p),
            "drifted": bool(value >= psi_threshold and p < p_value)}


def label_shift(batch: pd.Series, history: pd.Series) -> dict:
    """Chi-square of the label counts, batch vs history, and the total-variation distance."""
    import numpy as np

    batch_counts, history_counts = _counts(batch, history)
    if not batch_counts.sum() or not history_counts.sum():
        return dict(_NO_LABEL)
    chi2, p = _chi_square(batch_counts, history_counts)
    tv = 0.5 * np.abs(batch_counts / batch_counts.sum() - history_counts / history_counts.sum()).sum()
    return {"chi2": _round(chi2), "p_value": _round(p), "tv_distance": _round(tv)}


def is_numeric(column: pd.Series) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(column) and not is_bool_dtype(column)


def compare(
    batch: pd.DataFrame,
    history: pd.DataFrame,
    features: list[str],
    target: str,
    psi_threshold: float,
    p_value: float,
    max_share: float,
) -> dict:
    """The statistics of a batch against a history: per feature, their share, the label's shift."""
    import numpy as np

    stats = {}
    for name in features:
        if is_numeric(history[name]) and is_numeric(batch[name]):
            stats[name] = numeric_drift(
                batch[name].to_numpy(dtype=np.float64, na_value=np.nan),
                history[name].to_numpy(dtype=np.float64, na_value=np.nan),
                psi_threshold, p_value,
            )
        else:
            stats[name] = categorical_drift(batch[name], history[name], psi_threshold, p_value)
    drifted = [name for name, s in stats.items() if s["drifted"]]
    share = len(drifted) / len(features) if features else 0.0
    return {
        "drifted": bool(drifted) and share >= max_share,
        "share_drifted": _round(share),
        "features_drifted": drifted,
        "label": label_shift(batch[target], history[target]),
        "features": stats,
    }


def report(
    batch: int,
    gate: str,
    excluded: bool,
    history_batches: list[int],
    history_rows: int,
    statistics: dict | None,
) -> dict:
    """metrics/drift.json (see the module's docstring); `statistics` from compare(), or None
    when none were computed (gate off, or no history)."""
    if statistics is None:
        statistics = {"drifted": False, "share_drifted": 0.0, "features_drifted": [],
                      "label": dict(_NO_LABEL), "features": {}}
    if excluded:
        decision = "excluded"
    elif gate == "off":
        decision = "off"
    elif not history_batches:
        decision = "none"
    elif not statistics["drifted"]:
        decision = "ok"
    else:
        decision = "refused" if gate == "refuse" else "warn"
    return {
        "batch": batch,
        "history_batches": history_batches,
        "history_rows": history_rows,
        "gate": gate,
        "drifted": statistics["drifted"],
        "share_drifted": statistics["share_drifted"],
        "features_drifted": statistics["features_drifted"],
        "label": statistics["label"],
        "decision": decision,
        "features": statistics["features"],
    }


def summary(report: dict) -> str:
    """One line: how many features drifted (the first few named) and the label's shift."""
    names = report["features_drifted"]
    shown = ", ".join(names[:SHOWN_FEATURES]) + (", …" if len(names) > SHOWN_FEATURES else "")
    text = f"{len(names)} of {len(report['features'])} features drifted" + (f" ({shown})" if names else "")
    label = report["label"]
    if label["tv_distance"] is not None:
        text += f", label shift {label['tv_distance']:.3f} (total variation; chi-square p={label['p_value']:.3g})"
    return text


def refusal(report: dict) -> str:
    """The refusing stage's one-line error, for incrml and for a plain `dvc repro` alike."""
    batch = report["batch"]
    return (
        f"batch {batch} drifted from the merged history: {summary(report)}; refused by drift.gate: refuse. "
        f"Add {batch} to data.exclude in params.yaml to keep it out of the history, "
        "or set drift.gate: warn to take it in"
    )
