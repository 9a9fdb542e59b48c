"""Workflows built from training and inference: K-fold cross-validation with
out-of-fold tuning, hyperparameter sweeps (W&B sweep files run by Optuna), and
bulk prediction as a Ray Data pipeline (``predict.py --engine ray``)."""
