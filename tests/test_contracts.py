"""The model contract of docs/CONTRACTS.md, checked for every model in
``models.MODELS``: float32 scalar losses under bf16 autocast in training,
float32 probabilities [B, 4, H, W] in [0, 1] for a tile and a whole strip in
eval, and a ``has_classification_head`` that tells the truth. A newly
registered model fails here until it has a small config below."""

import pytest
import torch

from core.classes import NUM_CLASSES
from core.config import Config
from inference.predictor import has_class_head
from models import MODELS, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TILE = (256, 256)
STRIP = (256, 1600)


def small_smp(cfg: Config) -> None:
    cfg.model.smp.encoder = "resnet18"


def small_maskrcnn(cfg: Config) -> None:
    """A ResNet-18-FPN with budgets far under the demo's: seconds, not minutes, on a CPU."""
    m = cfg.model.maskrcnn
    m.backbone = "resnet18"
    m.fpn_channels = m.mask_head_channels = 32
    m.rpn_pre_nms_top_n_train = m.rpn_pre_nms_top_n_test = 64
    m.rpn_post_nms_top_n_train = m.rpn_post_nms_top_n_test = 32
    m.box_batch_size_per_image = 16
    m.detections_per_image = 10


def small_autoencoder(cfg: Config) -> None:
    cfg.model.autoencoder.channels = [8, 16]


def as_built(cfg: Config) -> None:
    """The classical pipeline has no size: its defaults."""


SMALL = {"smp": small_smp, "maskrcnn": small_maskrcnn, "autoencoder": small_autoencoder,
         "classical": as_built}  # every key of models.MODELS


def small_model(name: str, **smp) -> torch.nn.Module:
    """The registered model ``name``, small, no pretrained weights; ``smp`` sets model.smp.* keys."""
    assert name in SMALL, f"models.MODELS[{name!r}] has no small config in tests/test_contracts.py"
    cfg = Config()
    cfg.model.name = name
    SMALL[name](cfg)
    for key, value in smp.items():
        setattr(cfg.model.smp, key, value)
    if cfg.model.smp.classification_head:
        cfg.loss.cls = 0.5
    torch.manual_seed(0)
    return build_model(cfg)


def targets_for(kind: str, masks: torch.Tensor):
    """Training targets of ``kind`` (a model's ``target_kind``) for masks
    float32 [B, 4, H, W] in {0, 1}, one rectangle of class 1 per image."""
    if kind in ("semantic", "defect_free"):
        return {"masks": masks, "labels": masks.amax((2, 3)), "image_id": [str(i) for i in range(len(masks))]}
    assert kind == "instance", f"unknown target_kind {kind!r}"
    box = torch.tensor([[8.0, 8.0, 40.0, 24.0]])  # xyxy, x2 and y2 exclusive: the rectangle below
    return [{"boxes": box, "labels": torch.tensor([1]), "masks": m[:1].to(torch.uint8)} for m in masks]


def check_probabilities(probs: torch.Tensor, batch: int, height: int, width: int) -> None:
    assert probs.shape == (batch, NUM_CLASSES, height, width) and probs.dtype == torch.float32
    assert torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_losses_are_float32_scalars_under_bf16_autocast(name):
    model = small_model(name).train()
    masks = torch.zeros(2, NUM_CLASSES, 64, 64)
    masks[:, 0, 8:24, 8:40] = 1
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + masks[:, :1] * 0.5
    if getattr(model, "fitted_by_search", False):  # not trained by the loop: it says so rather than pretend
        with pytest.raises(RuntimeError, match="search"):
            model(images, targets_for(model.target_kind, masks))
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets_for(model.target_kind, masks))
    assert isinstance(losses, dict) and losses and all(k.startswith("loss_") for k in losses)
    wrong = {k: (v.dtype, tuple(v.shape)) for k, v in losses.items() if v.dtype != torch.float32 or v.dim() != 0}
    assert not wrong, f"{name}: losses not float32 scalars: {wrong}"
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("height, width", [TILE, STRIP], ids=["tile", "strip"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_gives_float32_probabilities_of_the_input_size(name, height, width):
    model = small_model(name).eval()
    with torch.inference_mode():
        probs = model(torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)))
    check_probabilities(probs, 1, height, width)


HEAD_CASES = [  # (model name, model.smp keys, whether it has a classification head)
    ("smp", {}, False),
    ("smp", {"classification_head": True}, True),
    ("maskrcnn", {}, False),
    ("autoencoder", {}, False),
    ("classical", {}, False),
]


@pytest.mark.parametrize("name, smp, has_head", HEAD_CASES, ids=["smp", "smp-head", "maskrcnn", "autoencoder", "classical"])
def test_has_classification_head_is_true_exactly_when_class_probs_works(name, smp, has_head):
    model = small_model(name, **smp).eval()
    images = torch.rand(2, 3, 64, 64)
    try:
        with torch.inference_mode():
            class_probs = model.class_probs(images)
    except (AttributeError, RuntimeError):
        class_probs = None
    assert (class_probs is not None) == has_head
    assert getattr(model, "has_classification_head", False) == has_head
    assert has_class_head(model) == has_head  # what the predictor reads
    if has_head:
        assert class_probs.shape == (2, NUM_CLASSES) and class_probs.dtype == torch.float32
        assert class_probs.min() >= 0 and class_probs.max() <= 1


def test_every_registered_model_is_checked_here():
    assert set(SMALL) == set(MODELS)
    assert {name for name, _, _ in HEAD_CASES} == set(MODELS)
