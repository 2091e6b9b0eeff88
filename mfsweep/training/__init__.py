"""Training: the explicit loop (train.py; no Ray, no MLflow), atomic checkpoints, sample pictures."""
