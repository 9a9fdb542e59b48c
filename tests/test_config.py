"""The typed config: defaults, YAML, dotted overrides, and the promised errors."""

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from core.cli import parse_with_overrides
from core.config import ConfigError, ConfigWarning, load_config, save_config, to_dict
from models import build_model

CONFIGS = sorted(p for p in Path("configs").rglob("*.yaml") if not p.name.startswith("gan_"))  # GAN ones: test_gan


def test_overrides_apply_after_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  lr: 0.01\n")
    cfg = load_config(path, ["--train.epochs=5", "--data.root=/data/severstal", "--output_dir=runs/x"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.root, cfg.output_dir) == (5, 0.01, "/data/severstal", "runs/x")


def test_sweep_agent_style_values():
    """What a W&B agent passes: scientific floats without a dot, lists, null."""
    cfg = load_config(None, ["--optim.lr=1e-3", "--loss.pos_weight=[2,2,1,1.5]", "--model.smp.encoder_weights=null",
                             "--train.channels_last=true"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.loss.pos_weight == [2.0, 2.0, 1.0, 1.5]
    assert cfg.model.smp.encoder_weights is None and cfg.train.channels_last is True


@pytest.mark.parametrize("override, words", [
    ("--data.rot=x", ["unknown key 'data.rot'", "data.root"]),
    ("--nosuch.key=1", ["unknown key 'nosuch'", "data", "train"]),
    ("--train.epochs=abc", ["'train.epochs' must be int", "abc"]),
    ("--train.epochs=2.5", ["'train.epochs' must be int"]),
    ("--train.amp=fp8", ["'train.amp'", "'off', 'bf16', 'fp16'"]),
    ("--train.amp=on", ["'train.amp' = True is not one of"]),
    ("--train=3", ["'train' is a section"]),
    ("--data.fold=9", ["'data.fold' must be in 0..4"]),
    ("--predict.tile=240", ["'predict.tile' must be a positive multiple of 32"]),
    ("--postprocess.threshold=[0.5]", ["postprocess.threshold", "4 values"]),
    ("--model.name=resnet", ["'model.name'", "smp"]),
    ("--model.smp.cls_pooling=mean", ["'model.smp.cls_pooling'", "'avg', 'max'"]),
    ("--model.maskrcnn.fpn_channels=0", ["'model.maskrcnn.fpn_channels' must be >= 1"]),
    ("--model.maskrcnn.box_batch_size_per_image=-4", ["'model.maskrcnn.box_batch_size_per_image' must be >= 1"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_arch_kwargs_entry_or_whole_mapping(tmp_path):
    """A mapping field: --model.smp.arch_kwargs.<name>= (what a sweep parameter of
    that name passes) sets one entry and keeps the file's others;
    --model.smp.arch_kwargs= replaces the mapping."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  smp:\n    arch_kwargs:\n      decoder_pyramid_channels: 128\n      upsampling: 4\n")
    cfg = load_config(path, ["--model.smp.arch_kwargs.upsampling=2"])
    assert cfg.model.smp.arch_kwargs == {"decoder_pyramid_channels": 128, "upsampling": 2}
    assert load_config(path, ["--model.smp.arch_kwargs={}"]).model.smp.arch_kwargs == {}
    assert load_config(path, ["--model.smp.arch_kwargs={encoder_depth: 4}"]).model.smp.arch_kwargs == {"encoder_depth": 4}
    assert load_config(None).model.smp.arch_kwargs == {}
    with pytest.raises(ConfigError, match="'model.smp.arch_kwargs' must be a mapping"):
        load_config(None, ["--model.smp.arch_kwargs=64"])


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
    cfg = load_config(path, ["--model.smp.encoder_weights=null", "--model.maskrcnn.backbone_weights=null"])
    model = build_model(cfg)
    assert model.target_kind in ("semantic", "instance", "defect_free")
    if cfg.model.name == "classical":  # its parameters are buffers, searched rather than trained
        assert len(model.state_dict()) > 10
    elif cfg.model.name == "autoencoder":  # small by design: it must not copy defects through
        assert sum(p.numel() for p in model.parameters()) > 10_000
    else:
        assert sum(p.numel() for p in model.parameters()) > 1_000_000


FLAT_SMP = """model:
  name: unet
  arch: FPN
  encoder: resnet18
  encoder_weights: null
  num_classes: 4
  mask_threshold: 0.5
  classification_head: true
  arch_kwargs: {decoder_segmentation_channels: 64}
"""


def test_a_config_of_the_flat_model_schema_loads_with_a_warning_naming_each_move(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(FLAT_SMP)
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(path)
    message = str(caught[0].message)
    for words in ("model.name 'unet' is now 'smp'", "model.arch is now model.smp.arch",
                  "model.num_classes is gone", "model.mask_threshold is gone", str(path)):
        assert words in message
    assert cfg.model.name == "smp" and cfg.model.smp.arch == "FPN" and cfg.model.smp.encoder == "resnet18"
    assert cfg.model.smp.classification_head and cfg.model.smp.arch_kwargs == {"decoder_segmentation_channels": 64}


def test_an_old_checkpoints_flat_config_loads_quietly_and_maskrcnn_keys_go_to_their_section(recwarn):
    stored = {"model": {"name": "maskrcnn", "backbone": "resnet18", "encoder_weights": "imagenet",
                        "fpn_channels": 128, "num_classes": 4, "mask_threshold": 0.5}}
    cfg = load_config(base=stored)
    assert not [w for w in recwarn if issubclass(w.category, ConfigWarning)]
    assert (cfg.model.maskrcnn.backbone, cfg.model.maskrcnn.fpn_channels) == ("resnet18", 128)
    assert cfg.model.maskrcnn.backbone_weights == "imagenet" and cfg.model.smp.encoder_weights is None


def test_flat_keys_on_the_command_line_are_translated_too():
    with pytest.warns(ConfigWarning, match="model.arch_kwargs is now model.smp.arch_kwargs"):
        cfg = load_config(None, ["--model.smp.arch_kwargs={a: 1}", "--model.arch_kwargs.b=2"])
    assert cfg.model.smp.arch_kwargs == {"a": 1, "b": 2}  # one entry set, the others kept


def test_num_classes_other_than_four_is_refused():
    with pytest.raises(ConfigError, match="'model.num_classes' = 3: the Severstal data has 4 classes"):
        load_config(base={"model": {"num_classes": 3}})
    with pytest.raises(ConfigError, match="unknown key 'model.smp.num_classes'"):
        load_config(None, ["--model.smp.num_classes=4"])


@pytest.mark.parametrize("argv, sections, bad", [
    (["--epochs", "3"], (), "['--epochs', '3']"),
    (["train.epochs=3"], (), "['train.epochs=3']"),
    (["--model.smp.arch=FPN"], ("predict", "postprocess"), "--predict.key=value or --postprocess.key=value"),
])
def test_every_command_line_refuses_what_is_not_an_override(argv, sections, bad, capsys):
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--out")
    with pytest.raises(SystemExit):
        parse_with_overrides(parser, ["--out", "o", *argv], sections)
    err = capsys.readouterr().err
    assert "tool: error: unrecognised arguments" in err and bad in err


def test_overrides_after_the_scripts_own_flags_are_returned_in_order():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args, overrides = parse_with_overrides(parser, ["--train.epochs=3", "--out", "o", "--predict.tile=128"])
    assert args.out == "o" and overrides == ["--train.epochs=3", "--predict.tile=128"]
    _, scoped = parse_with_overrides(parser, ["--predict.tile=128"], sections=("predict",))
    assert scoped == ["--predict.tile=128"]
