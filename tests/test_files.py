"""core.files.claim_folder: a study folder keeps the settings it was made with."""

from __future__ import annotations

import json

import pytest

from core.files import claim_folder


def test_a_folder_is_claimed_once_and_refused_to_other_settings(tmp_path):
    folder = tmp_path / "study" / "style"
    claim_folder(folder, {"train": 800, "overrides": ["--a=1"]}, "robustness.py")
    assert json.loads((folder / "settings.json").read_text()) == {"train": 800, "overrides": ["--a=1"]}
    claim_folder(folder, {"train": 800, "overrides": ["--a=1"]}, "robustness.py")  # the same: accepted
    with pytest.raises(SystemExit, match=r"robustness.py: .*style was made with .*'train': 800.*not .*'train': 300"):
        claim_folder(folder, {"train": 300, "overrides": ["--a=1"]}, "robustness.py")
    assert json.loads((folder / "settings.json").read_text())["train"] == 800  # untouched by the refusal
    assert [p.name for p in folder.iterdir()] == ["settings.json"]  # no temporary file left behind
