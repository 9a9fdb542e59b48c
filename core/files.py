"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``
    (so a reader never sees a half-written file), on failure remove it.
    Unlike tempfile.mkstemp (always 0600) the file gets the umask's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "x") as f:
        f.write(text)


def claim_folder(folder, settings: dict, owner: str, name: str = "settings.json") -> None:
    """Record ``settings`` (plain JSON data) in ``folder / name``, or check they
    are those recorded: a study's folder holds the files of one set of
    settings, never a mix of two. ``owner`` (a script's name) leads the error."""
    folder = Path(folder)
    path = folder / name
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != settings:
            raise SystemExit(f"{owner}: {folder} was made with {stored}, not {settings}: "
                             "choose another --out or delete it")
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
