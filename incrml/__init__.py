"""incrml: incremental retraining over DVC + MLflow."""
