"""Concatenate batches 1..N into the training set."""
import os

import pandas as pd
import yaml

with open("params.yaml") as f:
    params = yaml.safe_load(f)

batch_number = params["batch_number"]

batches = [pd.read_csv(f"data/processed/batch_{i}.csv") for i in range(1, batch_number + 1)]
train = pd.concat(batches, ignore_index=True)

os.makedirs("data/merged", exist_ok=True)
train.to_csv("data/merged/train.csv", index=False)

print(f"merged batches 1..{batch_number}: {len(train)} rows")
