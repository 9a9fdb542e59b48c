"""Small run-time helpers shared by training and inference."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, show: bool, **kwargs):
    """A tqdm bar on rank 0 when stderr is a terminal; quiet otherwise."""
    return tqdm(iterable, disable=not (show and sys.stderr.isatty()), dynamic_ncols=True, leave=False, **kwargs)
