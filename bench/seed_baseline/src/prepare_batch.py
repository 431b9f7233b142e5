"""Take batch N of the stream (rows (N-1)*size .. N*size-1) as if it had just arrived."""
import os

import pandas as pd
import yaml

with open("params.yaml") as f:
    params = yaml.safe_load(f)

batch_number = params["batch_number"]
batch_size = params["data"]["batch_size"]

stream = pd.read_csv("data/raw/stream.csv")
start = (batch_number - 1) * batch_size
end = batch_number * batch_size
batch = stream.iloc[start:end]

if batch.empty:
    raise SystemExit(f"batch {batch_number} is empty: the stream has only {len(stream)} rows")

batch = batch.dropna(subset=["target"])

os.makedirs("data/processed", exist_ok=True)
batch.to_csv(f"data/processed/batch_{batch_number}.csv", index=False)

print(f"batch {batch_number}: rows {start}..{start + len(batch) - 1}")
