"""Concatenate batches 1..N into the training set, and check batch N for drift against 1..N-1."""
import json
import os

import numpy as np
import pandas as pd
import yaml
from scipy import stats
from scipy.special import rel_entr

with open("params.yaml") as f:
    params = yaml.safe_load(f)

batch_number = params["batch_number"]

batches = [pd.read_csv(f"data/processed/batch_{i}.csv") for i in range(1, batch_number + 1)]
train = pd.concat(batches, ignore_index=True)

os.makedirs("data/merged", exist_ok=True)
train.to_csv("data/merged/train.csv", index=False)

# Drift of the new batch against the history: PSI over the history's deciles, and a KS test.
report = {"batch": batch_number, "features": {}}
if batch_number > 1:
    new, history = batches[-1], pd.concat(batches[:-1], ignore_index=True)
    for column in new.columns.drop("target"):
        edges = np.unique(np.quantile(history[column], np.linspace(0, 1, 11)))
        if len(edges) < 2:  # a constant feature
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        p = np.histogram(history[column], bins=edges)[0] / len(history) + 1e-4
        q = np.histogram(new[column], bins=edges)[0] / len(new) + 1e-4
        psi = float(np.sum(rel_entr(q, p) + rel_entr(p, q)))
        ks = stats.ks_2samp(new[column], history[column])
        drifted = bool(psi >= 0.2 and ks.pvalue < 0.01)
        report["features"][column] = {"psi": psi, "ks": float(ks.statistic), "p_value": float(ks.pvalue), "drifted": drifted}
    report["share_drifted"] = sum(f["drifted"] for f in report["features"].values()) / len(report["features"])
os.makedirs("metrics", exist_ok=True)
with open("metrics/drift.json", "w") as f:
    json.dump(report, f, indent=2)

print(f"merged batches 1..{batch_number}: {len(train)} rows")
