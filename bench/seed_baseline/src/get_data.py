"""Load the digits dataset, split off a holdout once and save the rest as the incoming stream."""
import os

import pandas as pd
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

with open("params.yaml") as f:
    params = yaml.safe_load(f)["data"]

df = load_digits(as_frame=True).frame

# train_test_split shuffles, so the stream rows come out in random order
stream, holdout = train_test_split(
    df,
    test_size=params["test_size"],
    random_state=params["random_state"],
    stratify=df["target"],
)

os.makedirs("data/raw", exist_ok=True)
stream.reset_index(drop=True).to_csv("data/raw/stream.csv", index=False)
holdout.reset_index(drop=True).to_csv("data/raw/holdout.csv", index=False)

print(f"stream: {len(stream)} rows, holdout: {len(holdout)} rows")
