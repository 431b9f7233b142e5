"""Fit a StandardScaler on the merged training data and save the scaled data and the scaler."""
import os

import joblib
import pandas as pd
from sklearn.preprocessing import StandardScaler

train = pd.read_csv("data/merged/train.csv")
X = train.drop(columns=["target"])
y = train["target"]

scaler = StandardScaler()
X_scaled = pd.DataFrame(scaler.fit_transform(X), columns=X.columns)
X_scaled["target"] = y.values

os.makedirs("data/preprocessed", exist_ok=True)
os.makedirs("models", exist_ok=True)
X_scaled.to_csv("data/preprocessed/train.csv", index=False)
joblib.dump(scaler, "models/scaler.pkl")

print(f"preprocessed {len(X_scaled)} rows")
