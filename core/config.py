"""Typed experiment configuration.

The defaults live here, with comments; a YAML file holds only what differs
from them; ``--section.key=value`` arguments (exactly what a W&B sweep agent's
``${args}`` passes) override the file. Unknown keys and values of the wrong
type or outside their choices fail before any work, naming the key and the
valid ones. The resolved config is plain data (``to_dict``) so it can be
written next to a run and stored inside checkpoints read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .files import atomic_write_text


class ConfigError(ValueError):
    """An unknown key or a bad value in a config file or override."""


class ConfigWarning(UserWarning):
    """A config written for an older schema: it still loads, translated."""


@dataclass
class DataConfig:
    root: str = "data/synthetic"  # a folder in the Severstal layout (train.csv, train_images/)
    train_csv: str = "train.csv"  # either layout; images with no row are defect-free
    train_images: str = "train_images"
    image_height: int = 256
    image_width: int = 1600
    folds: int = 5  # K of the K-fold split; validation is fold `fold`
    fold: int = 0
    split_seed: int = 42
    split_file: str = ""  # "" = <root>/folds_k<folds>_s<split_seed>.csv (or in output_dir if root is read-only)
    crop_height: int = 256
    crop_width: int = 256  # training crop; 0 = whole strips
    crop_widths: list[int] = field(default_factory=list)  # several widths: one drawn per batch (9th place)
    crop_defect_prob: float = 0.8  # chance a crop is centred on a defect when the image has one
    class_balance: float = 0.0  # 0 = images drawn uniformly; 1 = each class (and defect-free) drawn equally often
    min_instance_area: int = 16  # connected components smaller than this are not instances (Mask R-CNN)
    batch_size: int = 8
    val_batch_size: int = 4  # whole 1600x256 strips
    num_workers: int = 2
    max_train_images: int = 0  # 0 = all; a cap for smoke runs
    max_val_images: int = 0
    # extra training images with pseudo-labels (scripts/pseudo_label.py); never used for validation.
    # Paths as given, not under root; only the images the csv names are added.
    pseudo_csv: str = ""
    pseudo_images: str = ""  # the folder of the images pseudo_csv names (e.g. test_images)
    # extra training strips in the Severstal layout (train.csv, train_images/), e.g. GAN samples written by
    # scripts/synthesize.py; added to training only, as pseudo-labels are ("" = none)
    extra_root: str = ""


@dataclass
class CopyPasteConfig:
    """Defect instances pasted from other training strips of the fold (datasets/copy_paste.py)."""

    p: float = 0.0  # chance that a crop receives pastes; 0 = off
    classes: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # the classes whose instances are pasted
    max_pastes: int = 1  # 1..max_pastes instances per crop that receives any
    blend: Literal["alpha", "poisson"] = "alpha"  # feathered alpha inside the mask, or cv2.seamlessClone
    feather: int = 3  # alpha ramps to 1 over this many pixels inside the instance's edge; 0 = hard edge
    min_area: int = 16  # smaller connected components are not pasted


@dataclass
class AugmentConfig:
    """Probabilities (0 disables) and limits; `strength` scales every limit."""

    strength: float = 1.0
    hflip: float = 0.5
    vflip: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    gamma: float = 0.3
    gamma_limit: float = 0.2  # gamma drawn in [1 - limit, 1 + limit]
    noise: float = 0.2
    noise_std: float = 0.03  # in units of the 0..1 intensity range
    blur: float = 0.1
    blur_limit: int = 5  # largest odd kernel size
    affine: float = 0.3
    shift_limit: float = 0.05  # fraction of the crop size
    scale_limit: float = 0.1
    rotate_limit: float = 5.0  # degrees
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)  # applied first, before the above


@dataclass(slots=True)  # a misspelt attribute is an error, not a new field
class SmpConfig:
    """``model.name: smp``: any segmentation_models_pytorch architecture and encoder."""

    arch: str = "Unet"  # Unet, FPN, UnetPlusPlus, Linknet, PSPNet, DeepLabV3Plus, ...
    encoder: str = "resnet34"  # any smp or timm ("tu-...") encoder
    encoder_weights: Optional[str] = None  # the encoder's pretrained weights by smp's name ("imagenet": needs
                                           # internet); None never downloads
    classification_head: bool = False  # image-level class logits from the encoder (gates masks)
    cls_pooling: Literal["avg", "max"] = "avg"  # the head's pooling (smp's default). max reads a crop and a
                                                # whole strip alike, but scored lower out of fold
                                                # (docs/EXPERIMENTS.md)
    # further keyword arguments of the smp architecture, e.g. {decoder_attention_type: scse} for a Unet or
    # {decoder_segmentation_channels: 64} for an FPN. --model.smp.arch_kwargs.<name>=... sets one and keeps
    # the others; --model.smp.arch_kwargs={...} replaces them all
    arch_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)  # a misspelt attribute is an error, not a new field
class MaskRCNNConfig:
    """``model.name: maskrcnn``: torchvision's Mask R-CNN with a ResNet-FPN backbone."""

    backbone: str = "resnet50"  # resnet50 | resnet50_v2 | resnet18
    backbone_weights: Optional[str] = None  # "imagenet": torchvision's ImageNet classifier weights for the
                                            # backbone only, never a COCO detector (needs internet); None never
                                            # downloads
    trainable_backbone_layers: int = 5
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.125, 0.5, 1.0, 2.0, 8.0])
    detections_per_image: int = 100
    score_threshold: float = 0.05  # detections below it are dropped before they are painted into probabilities
    # proposal and RoI budgets (torchvision's defaults); on CPU the mask head's cost is set by
    # box_batch_size_per_image (a quarter of it, at most, are positives that reach the mask head)
    rpn_pre_nms_top_n_train: int = 2000  # per FPN level
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box and mask losses
    mask_head_channels: int = 256  # width of the 4-conv mask head (torchvision: 256)
    fpn_channels: int = 256  # FPN width, which the RPN, box and mask heads inherit (torchvision: 256)


@dataclass(slots=True)  # a misspelt attribute is an error, not a new field
class ClassicalConfig:
    """``model.name: classical``: the OpenCV pipeline of models/classical.py, its parameters searched by
    workflows/classical_search.py (Optuna) on the training fold."""

    trials: int = 25  # Optuna trials per class (the defaults are the first)
    fit_images: int = 100  # strips per class's search: half with the class, half without; 0 = every training strip


@dataclass(slots=True)  # a misspelt attribute is an error, not a new field
class AutoencoderConfig:
    """``model.name: autoencoder``: the convolutional autoencoder of models/autoencoder.py, trained on the
    training fold's defect-free strips only; its anomaly map is the per-pixel reconstruction error."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # per stride-2 stage of the encoder
    latent_channels: int = 16  # the bottleneck, at 1 / 2**len(channels) of the input's size
    l1: float = 1.0  # loss weights: mean absolute error,
    l2: float = 0.0  # mean squared error,
    ssim: float = 1.0  # and 1 - SSIM (11 px Gaussian window)
    error_sigma: float = 4.0  # px, Gaussian smoothing of the absolute error (the anomaly map)
    error_scale: float = 0.05  # the map is 1 - exp(-error / error_scale): in [0, 1], error in intensity units
    # the strip's anomaly score (models/anomaly_score.py): the mean of the score_k highest map values on the
    # steel, score_margin px inside its edge as a 9x9 mean finds it (about 4 px into the off-strip frame);
    # chosen on the validation fold (docs/EXPERIMENTS.md 17)
    image_score: Literal["max", "max_on_strip", "top_mean", "excess"] = "top_mean"
    score_margin: int = 32
    score_k: int = 500


@dataclass(slots=True)  # a misspelt attribute is an error, not a new field
class ModelConfig:
    """Four classes always (the Severstal ones, core/classes.py); the section
    of the chosen ``name`` is read, the other ignored."""

    name: Literal["smp", "maskrcnn", "classical", "autoencoder"] = "smp"  # a key of models.MODELS
    init_checkpoint: str = ""  # start from this checkpoint's weights (e.g. a fine-tuning stage)
    # distillation (loss.distill > 0): checkpoints whose averaged per-pixel probabilities, computed on the fly on
    # the same augmented crops, the model also learns from (training/distill.py)
    teacher_checkpoint: list[str] = field(default_factory=list)
    smp: SmpConfig = field(default_factory=SmpConfig)
    maskrcnn: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


# MaskRCNNConfig's proposal, RoI and width budgets: validated >= 1; scripts/bench_maskrcnn.py resets them
MASKRCNN_BUDGETS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                    "rpn_post_nms_top_n_test", "box_batch_size_per_image", "mask_head_channels", "fpn_channels")


@dataclass
class LossConfig:
    """A weighted sum; a weight of 0 leaves that term out."""

    bce: float = 1.0
    dice: float = 0.0
    focal: float = 0.0
    lovasz: float = 0.0
    pos_weight: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # BCE, per class
    focal_gamma: float = 2.0
    cls: float = 0.0  # BCE on image-level labels, for models with a classification head
    distill: float = 0.0  # BCE of the mask logits against model.teacher_checkpoint's probabilities (smp only)


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "radam"] = "adamw"
    lr: float = 3e-4  # decoder / head learning rate
    encoder_lr: Optional[float] = None  # None = lr
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    scheduler: Literal["cosine", "onecycle", "plateau", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up before cosine
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of the peak
    plateau_patience: int = 2
    plateau_factor: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 20
    # auto: bf16 where the device computes it natively, fp16 + GradScaler on CUDA without, float32 on other
    # CPUs (core/precision.py). The resolved value is what config.yaml, checkpoints and W&B record
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    accum_steps: int = 1
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    ema: float = 0.0  # EMA decay of weights (e.g. 0.999); 0 = off; validation uses the EMA weights
    seed: int = 42
    deterministic: bool = True  # deterministic kernels where available
    sync_bn: bool = False  # SyncBatchNorm under DDP
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_steps_per_epoch: int = 0  # 0 = a full pass; a cap for smoke runs
    val_every: int = 1  # validate every N epochs (and always after the last)
    val_threshold: float = 0.5  # pixel threshold for the validation score (and the tuner's "before")
    # what picks best.pt: "tuned" = the validation score with post-processing tuned on that validation (what
    # predict.py then applies by default); "threshold" = the score at val_threshold, which early in training
    # mostly counts false positives
    select: Literal["tuned", "threshold"] = "tuned"
    # how validation infers: "predict" = as predict.py does (predict.tile/stride/blend, TTA, predict.amp), so the
    # post-processing tuned on it fits what predict.py then sees; "whole" = one pass over each whole strip in
    # train.amp (about half the cost with a classification head; its tuned thresholds fit predict.py less well)
    val_inference: Literal["predict", "whole"] = "predict"
    n_overlays: int = 4  # validation overlays logged per epoch


@dataclass
class WandbConfig:
    mode: Literal["disabled", "offline", "online"] = "offline"  # never prompts for a login
    project: str = "severstal"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PredictConfig:
    tile: int = 256  # square tiles
    stride: int = 224  # 7 tiles across 1600 with no padding
    blend: Literal["gaussian", "pyramid", "mean"] = "gaussian"
    sigma_scale: float = 0.125  # gaussian sigma as a fraction of the tile size (as MONAI)
    tta: Literal["none", "hflip", "hvflip"] = "none"
    full_frame: bool = False  # whole strips instead of tiles
    batch_size: int = 16  # tiles per forward
    num_workers: int = 2
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # as train.amp, resolved where the prediction runs
    channels_last: bool = False


@dataclass
class RayConfig:
    """``predict.py --engine ray``: the same prediction as a Ray Data pipeline (workflows/ray_predict.py)."""

    address: str = ""  # "" = start a local Ray on this machine; "auto" = join the cluster of `ray start`
    # predicting actors, each holding the models; 0 = as many as the cluster holds: one per GPU (GPU
    # actors), or one per ray.num_cpus_per_worker of its CPUs (CPU actors)
    workers: int = 0
    num_gpus_per_worker: float = 0.0  # GPUs each actor holds (1 on a GPU cluster); 0 = CPU actors
    num_cpus_per_worker: float = 1.0  # CPUs Ray reserves for each actor
    threads_per_worker: int = 0  # torch threads of an actor; 0 = Ray's choice (its CPUs)
    batch_size: int = 4  # images per actor call (split into Predictor calls as plain predict.py does)
    # where images are read and decoded: "tasks" = Ray tasks of ray.read_cpus each, a stage of their own
    # that overlaps the actors' work; "workers" = inside each actor, before it predicts (no stage, no copy
    # of the pixels through the object store); "auto" = workers for CPU actors, tasks for GPU actors
    read: Literal["auto", "tasks", "workers"] = "auto"
    read_cpus: float = 0.25  # CPUs Ray reserves per read-and-decode task (I/O and a JPEG decode)
    max_restarts: int = 3  # an actor that dies is restarted up to this many times
    max_task_retries: int = 3  # and each of its unfinished batches retried up to this many times
    num_cpus: int = 0  # a local Ray's CPUs; 0 = all of this machine's
    object_store_mb: int = 512  # a local Ray's object store (decoded strips in flight): kept modest


@dataclass
class PostprocessConfig:
    """Per class 1..4."""

    threshold: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5, 0.5])
    min_component_area: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    min_total_area: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    gate: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # class-probability gate; 0 = off
    multiply_class_probs: bool = False  # mask probability x class probability before the threshold (4th place)
    file: str = ""  # a json from scripts/tune_postprocess.py; overrides the lists above
    # where the values above come from, printed by predict.py: "" = these defaults; training writes
    # "tuned on the validation fold ..." into each checkpoint's config, with the tuned values
    source: str = ""


@dataclass
class Config:
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)


STORED = "stored config"  # the source name of a checkpoint's config: older schemas load quietly

# ---------------------------------------------------------------- older schemas

# The flat model section of checkpoints and configs written before smp and Mask R-CNN keys were
# separated: each key and where it lives now (encoder_weights goes by model.name).
_FLAT_SMP_KEYS = ("arch", "encoder", "classification_head", "cls_pooling", "arch_kwargs")
_FLAT_MASKRCNN_KEYS = ("backbone", "trainable_backbone_layers", "anchor_sizes", "aspect_ratios",
                       "detections_per_image", "score_threshold", *MASKRCNN_BUDGETS)
_GONE_MODEL_KEYS = {"num_classes": "always 4, the Severstal classes", "mask_threshold": "it was read by nothing"}


def _moved_model_key(key: str, maskrcnn: bool) -> str | None:
    """Where the flat ``model.<key>`` lives now (``smp.arch``), or None if it did not move."""
    if key in _FLAT_SMP_KEYS or (key == "encoder_weights" and not maskrcnn):
        return f"smp.{key}"
    if key in _FLAT_MASKRCNN_KEYS:
        return f"maskrcnn.{key}"
    if key == "encoder_weights":
        return "maskrcnn.backbone_weights"
    return None


def upgrade_model_section(data: dict, current_name: str, source: str) -> dict:
    """The model section ``data`` in today's schema: flat keys moved under
    ``smp.`` or ``maskrcnn.``, ``name: unet`` read as ``smp``, gone keys
    dropped (``num_classes`` must be 4). Warns (ConfigWarning) naming each
    change unless ``source`` is a stored config (an old checkpoint loads
    quietly)."""
    data, notes = dict(data), []
    if data.get("name") == "unet":
        data["name"] = "smp"
        notes.append("model.name 'unet' is now 'smp' (it builds any smp architecture)")
    maskrcnn = data.get("name", current_name) == "maskrcnn"
    for key in [k for k in data if k in _GONE_MODEL_KEYS]:
        value = data.pop(key)
        if key == "num_classes" and value != 4:
            raise ConfigError(f"{source}: 'model.num_classes' = {value!r}: the Severstal data has 4 classes")
        notes.append(f"model.{key} is gone ({_GONE_MODEL_KEYS[key]})")
    for key in list(data):
        moved = _moved_model_key(key, maskrcnn)
        if moved:
            section, new = moved.split(".")
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section] = {new: data.pop(key), **data[section]}
            notes.append(f"model.{key} is now model.{moved}")
    if notes and source != STORED:
        warnings.warn(f"{source}: " + "; ".join(notes), ConfigWarning, stacklevel=2)
    return data


# ---------------------------------------------------------------- loading


def load_config(path=None, overrides=(), base: dict | None = None) -> Config:
    """Defaults, then ``base`` (e.g. a checkpoint's stored config), then the YAML
    file at ``path``, then ``--section.key=value`` overrides; validated."""
    cfg = fill_config(Config(), path, overrides, base)
    validate(cfg)
    return cfg


def fill_config(cfg, path=None, overrides=(), base: dict | None = None):
    """``cfg`` (a config dataclass holding its defaults) updated from ``base``,
    then the YAML file at ``path``, then the overrides; not validated."""
    if base:
        apply_dict(cfg, base, source=STORED)
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        apply_dict(cfg, data, source=str(path))
    apply_overrides(cfg, overrides)
    return cfg


def apply_dict(cfg, data: dict, source: str, prefix: str = "") -> None:
    """Set fields of the dataclass ``cfg`` from a nested mapping, type-checked."""
    if isinstance(cfg, ModelConfig):
        data = upgrade_model_section(data, cfg.name, source)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{dotted}'; valid keys: {_valid_keys(cfg, prefix)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; give a mapping, got {value!r}")
            apply_dict(current, value, source, prefix=f"{dotted}.")
        else:
            hint = typing.get_type_hints(type(cfg))[key]
            setattr(cfg, key, coerce(value, hint, dotted, source))


def apply_overrides(cfg: Config, overrides) -> None:
    """Apply ``--a.b=value`` strings (values parsed as YAML scalars/lists)."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        dotted, raw = text.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        set_dotted(cfg, dotted, value, source="command line")


def set_dotted(cfg: Config, dotted: str, value, source: str) -> None:
    """Set one key; past a mapping field the rest of the path names one of
    its entries (``model.smp.arch_kwargs.upsampling``), which is set and the
    others kept, while the field itself (``model.smp.arch_kwargs``) is replaced."""
    parts, node = dotted.split("."), cfg
    moved = None
    if parts[0] == "model" and len(parts) > 1 and isinstance(cfg.model, ModelConfig):
        moved = _moved_model_key(parts[1], cfg.model.name == "maskrcnn")
    if moved:  # a flat key of the older schema, e.g. a sweep's --model.arch_kwargs.upsampling=2
        warnings.warn(f"{source}: model.{parts[1]} is now model.{moved}", ConfigWarning, stacklevel=2)
        parts = ["model", *moved.split("."), *parts[2:]]
    for i, part in enumerate(parts[:-1]):
        node = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
        if isinstance(node, dict):
            value, parts = {**node, ".".join(parts[i + 1:]): value}, parts[:i + 1]
            break
    *sections, key = parts
    nested: dict = {key: value}
    for section in reversed(sections):
        nested = {section: nested}
    apply_dict(cfg, nested, source)


_BOOL_WORDS = {False: ("off", "false", "no"), True: ("on", "true", "yes")}


def coerce(value, hint, key: str, source: str):
    """Check ``value`` against the type ``hint``; ints are accepted as floats,
    a scalar is accepted for a list (wrapped)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, source)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            value = next((a for a in args if str(a).lower() in _BOOL_WORDS[value]), value)
        if value not in args:
            raise ConfigError(f"{source}: '{key}' = {value!r} is not one of {list(args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: '{key}' must be a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(items)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (0 <= cfg.data.fold < cfg.data.folds, "data.fold", f"must be in 0..{cfg.data.folds - 1}"),
        (cfg.data.folds >= 2, "data.folds", "must be >= 2"),
        (0.0 <= cfg.data.crop_defect_prob <= 1.0, "data.crop_defect_prob", "must be in [0, 1]"),
        (0.0 <= cfg.data.class_balance <= 1.0, "data.class_balance", "must be in [0, 1]"),
        (cfg.train.epochs >= 1, "train.epochs", "must be >= 1"),
        (cfg.train.accum_steps >= 1, "train.accum_steps", "must be >= 1"),
        (cfg.train.val_every >= 1, "train.val_every", "must be >= 1"),
        (cfg.optim.lr > 0, "optim.lr", "must be > 0"),
        (cfg.model.autoencoder.score_k >= 1, "model.autoencoder.score_k", "must be >= 1"),
        (cfg.model.autoencoder.score_margin >= 0, "model.autoencoder.score_margin", "must be >= 0"),
        (0 < cfg.predict.stride <= cfg.predict.tile, "predict.stride", "must be in 1..predict.tile"),
        (cfg.predict.tile > 0 and cfg.predict.tile % 32 == 0, "predict.tile",
         "must be a positive multiple of 32 (the encoders downsample by 32)"),
        (0.0 <= cfg.train.ema < 1.0, "train.ema", "must be in [0, 1)"),
        (cfg.ray.workers >= 0, "ray.workers", "must be >= 0 (0 = one per GPU, or one)"),
        (cfg.ray.batch_size >= 1, "ray.batch_size", "must be >= 1"),
        (cfg.ray.num_cpus_per_worker > 0, "ray.num_cpus_per_worker", "must be > 0"),
        (cfg.ray.num_gpus_per_worker >= 0, "ray.num_gpus_per_worker", "must be >= 0"),
        (cfg.model.classical.trials >= 1, "model.classical.trials", "must be >= 1"),
        (len(cfg.model.autoencoder.channels) >= 1, "model.autoencoder.channels", "needs at least one stage"),
        (cfg.model.autoencoder.error_scale > 0, "model.autoencoder.error_scale", "must be > 0"),
        (0.0 <= cfg.augment.copy_paste.p <= 1.0, "augment.copy_paste.p", "must be in [0, 1]"),
        (cfg.augment.copy_paste.max_pastes >= 1, "augment.copy_paste.max_pastes", "must be >= 1"),
        (bool(cfg.augment.copy_paste.classes) and set(cfg.augment.copy_paste.classes) <= {1, 2, 3, 4},
         "augment.copy_paste.classes", "must be a non-empty list of class ids 1..4"),
    ]
    checks.append((bool(cfg.model.teacher_checkpoint) == (cfg.loss.distill > 0), "loss.distill",
                   "> 0 and model.teacher_checkpoint go together (the weight of the teacher's term, and the teacher)"))
    checks.append((cfg.loss.distill == 0 or cfg.model.name == "smp", "loss.distill", "needs model.name: smp"))
    for name in MASKRCNN_BUDGETS:
        checks.append((getattr(cfg.model.maskrcnn, name) >= 1, f"model.maskrcnn.{name}", "must be >= 1"))
    for name in ("threshold", "min_component_area", "min_total_area", "gate"):
        checks.append((len(getattr(cfg.postprocess, name)) == 4, f"postprocess.{name}", "needs 4 values, one per class"))
    checks.append((len(cfg.loss.pos_weight) == 4, "loss.pos_weight", "needs 4 values, one per class"))
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"'{key}' {why}")


def _valid_keys(cfg, prefix: str) -> str:
    return ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(cfg))


def to_dict(cfg) -> dict:
    """The config as plain nested dicts/lists/scalars."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
