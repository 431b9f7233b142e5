"""Score the model on the holdout, log the run and model to MLflow, gate the champion, plot the curve."""
import json
import os

import joblib
import matplotlib.pyplot as plt
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
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        registered_model_name=params["mlflow"]["registered_model_name"],
    )

    # The champion gate: the alias moves to the new version only if its accuracy is at least the champion's.
    client = mlflow.MlflowClient()
    name = params["mlflow"]["registered_model_name"]
    try:
        champion = client.get_model_version_by_alias(name, "champion")
        champion_accuracy = client.get_run(champion.run_id).data.metrics["accuracy"]
    except mlflow.exceptions.MlflowException:
        champion_accuracy = None
    if champion_accuracy is None or metrics["accuracy"] >= champion_accuracy:
        client.set_registered_model_alias(name, "champion", info.registered_model_version)

    # The learning curve: accuracy of every batch's run so far.
    runs = mlflow.search_runs(order_by=["start_time"])
    plt.figure(figsize=(8, 4))
    plt.plot(range(1, len(runs) + 1), runs["metrics.accuracy"], marker="o")
    plt.xlabel("batch")
    plt.ylabel("holdout accuracy")
    plt.savefig("metrics/learning_curve.png")
    mlflow.log_artifact("metrics/learning_curve.png")

print(f"batch {params['batch_number']}: {metrics}")
