"""Shared fixtures: a tiny synthetic dataset in the Severstal layout, made once
per test session."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """24 training and 6 test strips (1600x256), seed 0."""
    from datasets.synthetic import make_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, n_train=24, n_test=6, seed=0, workers=1, progress=False)
    return root
