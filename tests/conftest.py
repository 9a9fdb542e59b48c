"""Shared fixtures: a tiny synthetic dataset in the Severstal layout, made once
per test session; tests marked ``cuda`` skip without CUDA."""

import os

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (pyproject.toml) are skipped, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """24 training and 6 test strips (1600x256), seed 0."""
    from datasets.synthetic import make_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, n_train=24, n_test=6, seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread on a shared 2-core machine;
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def blank_images(tmp_path):
    """``make(names, shape)`` writes black images of ``shape`` (H, W) into
    ``tmp_path/images`` and returns that folder."""

    def make(names, shape):
        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        for name in names:
            cv2.imwrite(str(folder / name), np.zeros((*shape, 3), np.uint8))
        return folder

    return make
