"""The process group's life: init_distributed calls nest, and only the
outermost cleanup() destroys a group init_distributed made (cross-validation
keeps one group across every fold's train.main)."""

import pytest
import torch

from core import distributed


@pytest.fixture
def fake_group(monkeypatch):
    """torch.distributed stood in by a flag: made, destroyed, counted."""
    state = {"up": False, "made": 0, "destroyed": 0}

    def init_process_group(backend):
        state.update(up=True, made=state["made"] + 1)

    def destroy_process_group():
        state.update(up=False, destroyed=state["destroyed"] + 1)

    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", destroy_process_group)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(distributed.dist, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "_users", 0)
    monkeypatch.setattr(distributed, "_created", False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    return state


def test_nested_inits_share_one_group_that_the_outermost_cleanup_ends(fake_group):
    outer = distributed.init_distributed("cpu")  # a workflow: cross-validation
    for _ in range(3):  # each fold's train.main
        assert distributed.init_distributed("cpu").world_size == 2
        distributed.cleanup()
        assert fake_group["up"], "a fold's cleanup ended the workflow's group"
    distributed.cleanup()
    assert outer.enabled and fake_group == {"up": False, "made": 1, "destroyed": 1}


def test_a_group_made_by_the_caller_is_left_to_it(fake_group):
    fake_group["up"] = True  # e.g. a launcher that made its own group
    distributed.init_distributed("cpu")
    distributed.cleanup()
    assert fake_group["up"] and fake_group["destroyed"] == 0


def test_the_device_error_names_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device=cuda but CUDA is not available"):
        distributed.resolve_device("cuda", key="--device")
