"""Evaluation: metric versus NFE for one model on shared seeded noise (evaluate.py), and the metric
registry (metrics/). Pure torch (+ torch-fidelity for FID/KID, imported only when used)."""
