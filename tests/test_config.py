"""The typed config: defaults, YAML, dotted overrides, and the promised errors."""

from pathlib import Path

import pytest
import torch
import yaml

from core.config import ConfigError, load_config, save_config, to_dict

CONFIGS = sorted(Path("configs").rglob("*.yaml"))


def test_overrides_apply_after_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  lr: 0.01\n")
    cfg = load_config(path, ["--train.epochs=5", "--data.root=/data/severstal", "--output_dir=runs/x"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.root, cfg.output_dir) == (5, 0.01, "/data/severstal", "runs/x")


def test_sweep_agent_style_values():
    """What a W&B agent passes: scientific floats without a dot, lists, null."""
    cfg = load_config(None, ["--optim.lr=1e-3", "--loss.pos_weight=[2,2,1,1.5]", "--model.encoder_weights=null",
                             "--train.channels_last=true"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.loss.pos_weight == [2.0, 2.0, 1.0, 1.5]
    assert cfg.model.encoder_weights is None and cfg.train.channels_last is True


@pytest.mark.parametrize("override, words", [
    ("--data.rot=x", ["unknown key 'data.rot'", "data.root"]),
    ("--nosuch.key=1", ["unknown key 'nosuch'", "data", "train"]),
    ("--train.epochs=abc", ["'train.epochs' must be int", "abc"]),
    ("--train.epochs=2.5", ["'train.epochs' must be int"]),
    ("--train.amp=fp8", ["'train.amp'", "'off', 'bf16', 'fp16'"]),
    ("--train.amp=on", ["'train.amp' = True is not one of"]),
    ("--train=3", ["'train' is a section"]),
    ("--data.fold=9", ["'data.fold' must be in 0..4"]),
    ("--postprocess.threshold=[0.5]", ["postprocess.threshold", "4 values"]),
    ("--model.name=resnet", ["'model.name'", "unet"]),
    ("--model.cls_pooling=mean", ["'model.cls_pooling'", "'avg', 'max'"]),
    ("--model.fpn_channels=0", ["'model.fpn_channels' must be >= 1"]),
    ("--model.box_batch_size_per_image=-4", ["'model.box_batch_size_per_image' must be >= 1"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_arch_kwargs_entry_or_whole_mapping(tmp_path):
    """A mapping field: --model.arch_kwargs.<name>= (what a sweep parameter of
    that name passes) sets one entry and keeps the file's others;
    --model.arch_kwargs= replaces the mapping."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch_kwargs:\n    decoder_pyramid_channels: 128\n    upsampling: 4\n")
    cfg = load_config(path, ["--model.arch_kwargs.upsampling=2"])
    assert cfg.model.arch_kwargs == {"decoder_pyramid_channels": 128, "upsampling": 2}
    assert load_config(path, ["--model.arch_kwargs={}"]).model.arch_kwargs == {}
    assert load_config(path, ["--model.arch_kwargs={encoder_depth: 4}"]).model.arch_kwargs == {"encoder_depth": 4}
    assert load_config(None).model.arch_kwargs == {}
    with pytest.raises(ConfigError, match="'model.arch_kwargs' must be a mapping"):
        load_config(None, ["--model.arch_kwargs=64"])


def test_bad_file_key_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.epoch'.*train.epochs"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_round_trip_through_plain_data(tmp_path):
    cfg = load_config(None, ["--train.epochs=7", "--loss.dice=0.25"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    torch.save({"config": to_dict(cfg)}, tmp_path / "c.pt")  # plain data: weights_only can read it
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == to_dict(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_every_shipped_config_loads(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)
    if "sweeps" not in path.parts:
        load_config(path)


def test_yaml_off_means_the_word_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path, []).train.amp == "off"
    assert load_config(None, ["--train.amp=off"]).train.amp == "off"


@pytest.mark.parametrize("path", [p for p in CONFIGS if "sweeps" not in p.parts], ids=str)
def test_every_shipped_config_builds_its_model(path):
    """Recipes included; encoder weights forced off (no download)."""
    from models import build_model

    cfg = load_config(path, ["--model.encoder_weights=null"])
    model = build_model(cfg)
    assert model.target_kind in ("semantic", "instance")
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
