"""Small run-time helpers shared by training and inference."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(amp: str, device: torch.device, key: str = "train.amp"):
    """A factory of autocast contexts for ``amp`` = off | bf16 | fp16: one
    switch that becomes a no-op when off. fp16 needs CUDA (its GradScaler
    does); bf16 runs on the CPU too. ``key`` names the setting in errors."""
    dtype = AMP_DTYPES[amp]
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"{key}=fp16 needs CUDA (it uses a GradScaler); use {key}=bf16 on the CPU")
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def progress(iterable, show: bool, **kwargs):
    """A tqdm bar on rank 0 when stderr is a terminal; quiet otherwise."""
    return tqdm(iterable, disable=not (show and sys.stderr.isatty()), dynamic_ncols=True, leave=False, **kwargs)
