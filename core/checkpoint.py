"""Checkpoints: atomic writes, plain-data contents, weights_only loading.

A checkpoint is a dict of tensors, numbers, strings and lists, so
``torch.load(path, weights_only=True)`` reads it (no pickled classes). The
resolved config travels inside it as a nested dict; ``models.load_model``
turns one back into a model.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path


def save_checkpoint(state: dict, path) -> None:
    """torch.save through a temporary file and a rename: a crash mid-write
    never leaves a truncated checkpoint behind."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and ints."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved, wherever ``torch.load`` mapped its
    tensors (a resume on CUDA maps them to the GPU; the setters need the CPU)."""
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
