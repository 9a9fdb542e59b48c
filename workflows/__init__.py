"""Workflows built from training and inference: K-fold cross-validation with
out-of-fold tuning, and hyperparameter sweeps (W&B sweep files run by Optuna)."""
