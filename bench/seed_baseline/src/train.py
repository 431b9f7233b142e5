"""Train a LogisticRegression on the preprocessed training data."""
import os

import joblib
import pandas as pd
import yaml
from sklearn.linear_model import LogisticRegression

with open("params.yaml") as f:
    params = yaml.safe_load(f)["train"]

train = pd.read_csv("data/preprocessed/train.csv")
X = train.drop(columns=["target"])
y = train["target"]

model = LogisticRegression(max_iter=params["max_iter"], random_state=params["random_state"])
model.fit(X, y)

os.makedirs("models", exist_ok=True)
joblib.dump(model, "models/model.pkl")

print(f"trained on {len(X)} rows")
