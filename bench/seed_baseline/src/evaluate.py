"""Score the model on the holdout, save the metrics and log the run and the model to MLflow."""
import json
import os

import joblib
import mlflow
import mlflow.sklearn
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score, f1_score

with open("params.yaml") as f:
    params = yaml.safe_load(f)

holdout = pd.read_csv("data/raw/holdout.csv")
X_test = holdout.drop(columns=["target"])
y_test = holdout["target"]

scaler = joblib.load("models/scaler.pkl")
model = joblib.load("models/model.pkl")

X_test = pd.DataFrame(scaler.transform(X_test), columns=X_test.columns)
y_pred = model.predict(X_test)

metrics = {
    "accuracy": accuracy_score(y_test, y_pred),
    "f1_macro": f1_score(y_test, y_pred, average="macro"),
}

os.makedirs("metrics", exist_ok=True)
with open("metrics/metrics.json", "w") as f:
    json.dump(metrics, f, indent=2)

train_rows = len(pd.read_csv("data/merged/train.csv"))

mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
mlflow.set_experiment(params["mlflow"]["experiment_name"])

with mlflow.start_run(run_name=f"batch_{params['batch_number']}"):
    mlflow.log_params(
        {
            "batch_number": params["batch_number"],
            "batch_size": params["data"]["batch_size"],
            "train_rows": train_rows,
            "max_iter": params["train"]["max_iter"],
            "random_state": params["train"]["random_state"],
        }
    )
    mlflow.log_metrics(metrics)
    mlflow.sklearn.log_model(
        model,
        name="model",
        registered_model_name=params["mlflow"]["registered_model_name"],
    )

print(f"batch {params['batch_number']}: {metrics}")
