"""Mask R-CNN wrapper: native resolution, anchors, training on empty images,
and detections turned into per-class probability maps."""

import pytest
import torch
from torchvision.models import ResNet18_Weights

from core.config import Config, ConfigError
from models import build_model
from models.maskrcnn import MaskRCNNModel, _backbone_weights, build_maskrcnn, instances_to_probs

TORCHVISION_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def maskrcnn_config(backbone="resnet18") -> Config:
    cfg = Config()
    cfg.model.name = "maskrcnn"
    cfg.model.maskrcnn.backbone = backbone
    return cfg


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> MaskRCNNModel:
    """The resnet18 model with CPU-test budgets: the same architecture, but far
    fewer proposals, sampled RoIs and detections (the box head's 12544x1024
    linear layer on 2000 RoIs dominates a CPU step otherwise)."""
    torch.manual_seed(0)
    cfg = maskrcnn_config()
    cfg.model.maskrcnn.detections_per_image = 10
    m = cfg.model.maskrcnn
    m.rpn_pre_nms_top_n_train = m.rpn_post_nms_top_n_train = 64
    m.rpn_pre_nms_top_n_test = m.rpn_post_nms_top_n_test = 32
    m.box_batch_size_per_image = 32
    return build_maskrcnn(cfg)


def instance_target(rects, height=256, width=256) -> dict:
    """A dataset-style target from (label, y0, y1, x0, x1) rectangles, with the
    extra keys the dataset adds (image_id str, semantic) that torchvision must not see."""
    masks = torch.zeros(len(rects), height, width, dtype=torch.uint8)
    for i, (_, y0, y1, x0, x1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
    boxes = torch.tensor([[x0, y0, x1, y1] for _, y0, y1, x0, x1 in rects], dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": boxes,
        "labels": torch.tensor([r[0] for r in rects], dtype=torch.int64),
        "masks": masks,
        "area": masks.flatten(1).sum(1).float(),
        "iscrowd": torch.zeros(len(rects), dtype=torch.int64),
        "image_id": "0002cc93b.jpg",
        "semantic": torch.zeros(4, height, width),
    }


def train_step(model, images, targets) -> dict:
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    model.zero_grad()
    return losses


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("height, width", [(256, 256), (256, 512), (256, 1600), (256, 128), (128, 96)])
def test_transform_keeps_native_resolution(model, height, width, training):
    """No rescaling in training or eval, crops narrower than tall included
    (torchvision's resize made a 256x128 crop 512x256); only padding to 32."""
    model.net.transform.train(training)
    target = instance_target([(3, 10, 60, 5, 90)], height, width)
    image_list, targets = model.net.transform([torch.rand(3, height, width)], [target])
    assert image_list.image_sizes == [(height, width)]
    assert tuple(image_list.tensors.shape[-2:]) == (-(-height // 32) * 32, -(-width // 32) * 32)
    assert targets[0]["boxes"].tolist() == [[5.0, 10.0, 90.0, 60.0]]


@pytest.mark.parametrize("backbone, conv_depth", [("resnet18", 1), ("resnet50", 1), ("resnet50_v2", 2)])
def test_anchors_match_rpn_head_and_nothing_is_downloaded(monkeypatch, backbone, conv_depth):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    cfg = maskrcnn_config(backbone)
    net = build_maskrcnn(cfg).net
    anchors_per_location = len(cfg.model.maskrcnn.aspect_ratios)
    assert net.rpn.anchor_generator.num_anchors_per_location() == [anchors_per_location] * 5
    assert net.rpn.anchor_generator.sizes == tuple((s,) for s in cfg.model.maskrcnn.anchor_sizes)
    assert net.rpn.head.cls_logits.out_channels == anchors_per_location
    assert net.rpn.head.bbox_pred.out_channels == 4 * anchors_per_location
    assert len(net.rpn.head.conv) == conv_depth
    assert net.roi_heads.box_predictor.cls_score.out_features == 5


def test_config_reaches_the_detector():
    cfg = maskrcnn_config()
    cfg.model.maskrcnn.detections_per_image, cfg.model.maskrcnn.score_threshold = 37, 0.2
    net = build_maskrcnn(cfg).net
    assert (net.roi_heads.detections_per_img, net.roi_heads.score_thresh) == (37, 0.2)


def test_proposal_and_roi_budgets_reach_the_detector():
    cfg = maskrcnn_config()
    m = cfg.model.maskrcnn
    m.rpn_pre_nms_top_n_train, m.rpn_post_nms_top_n_train, m.rpn_pre_nms_top_n_test, m.rpn_post_nms_top_n_test = 300, 200, 150, 100
    m.box_batch_size_per_image = 64
    net = build_maskrcnn(cfg).net
    assert net.rpn._pre_nms_top_n == {"training": 300, "testing": 150}
    assert net.rpn._post_nms_top_n == {"training": 200, "testing": 100}
    assert net.roi_heads.fg_bg_sampler.batch_size_per_image == 64


@pytest.mark.parametrize("backbone, batch_norm", [("resnet18", False), ("resnet50_v2", True)])
def test_narrow_mask_head_keeps_the_architecture_and_trains(backbone, batch_norm):
    cfg = maskrcnn_config(backbone)
    cfg.model.maskrcnn.mask_head_channels = 64
    m = cfg.model.maskrcnn
    m.rpn_pre_nms_top_n_train = m.rpn_post_nms_top_n_train = 64
    m.box_batch_size_per_image = 32
    torch.manual_seed(0)
    model = build_maskrcnn(cfg)
    convs = [layer for layer in model.net.roi_heads.mask_head.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 4 and convs[0].in_channels == 256
    assert any(isinstance(layer, torch.nn.BatchNorm2d) for layer in model.net.roi_heads.mask_head.modules()) == batch_norm
    assert model.net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    if backbone == "resnet18":  # a training step through the new head (resnet50 on CPU is slow)
        losses = train_step(model, torch.rand(1, 3, 256, 256), [instance_target([(2, 10, 200, 30, 40)])])
        assert set(losses) == TORCHVISION_LOSSES and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_narrow_fpn_reaches_every_head(backbone):
    cfg = maskrcnn_config(backbone)
    cfg.model.maskrcnn.fpn_channels = 64
    net = build_maskrcnn(cfg).net
    assert net.backbone.out_channels == 64
    assert {b[0].out_channels for b in net.backbone.fpn.layer_blocks} == {64}
    assert net.rpn.head.conv[0][0].in_channels == 64
    assert net.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert next(iter(net.roi_heads.mask_head.modules()))[0][0].in_channels == 64
    body = dict(net.backbone.body.named_children())
    assert ("layer4" in body) and body["layer4"][0].conv1.in_channels == (256 if backbone == "resnet18" else 1024)


def test_narrow_fpn_is_refused_for_resnet50_v2():
    cfg = maskrcnn_config("resnet50_v2")
    cfg.model.maskrcnn.fpn_channels = 128
    with pytest.raises(ConfigError, match="model.maskrcnn.fpn_channels must be 256 for resnet50_v2"):
        build_maskrcnn(cfg)


def test_registry_builds_it_with_its_target_kind_and_encoder():
    model = build_model(maskrcnn_config())
    assert isinstance(model, MaskRCNNModel) and model.target_kind == "instance"
    encoder = {id(p) for p in model.encoder_parameters()}
    assert encoder == {id(p) for p in model.net.backbone.body.parameters()}
    assert encoder < {id(p) for p in model.parameters()}


def test_backbone_weights_only_when_asked():
    cfg = maskrcnn_config()
    assert _backbone_weights(cfg.model.maskrcnn) is None
    cfg.model.maskrcnn.backbone_weights = "imagenet"
    assert _backbone_weights(cfg.model.maskrcnn) is ResNet18_Weights.IMAGENET1K_V1
    cfg.model.maskrcnn.backbone_weights = "ssl"
    with pytest.raises(ConfigError, match="backbone_weights"):
        _backbone_weights(cfg.model.maskrcnn)


def test_bad_backbone_and_anchor_sizes_are_errors():
    with pytest.raises(ConfigError, match="resnet50_v2"):
        build_maskrcnn(maskrcnn_config("vgg16"))
    cfg = maskrcnn_config()
    cfg.model.maskrcnn.anchor_sizes = [16, 32]
    with pytest.raises(ConfigError, match="anchor_sizes"):
        build_maskrcnn(cfg)


def test_training_step_gives_the_five_finite_losses(model):
    images = torch.rand(2, 3, 256, 256)
    targets = [instance_target([(1, 10, 60, 20, 200), (3, 100, 240, 30, 50)]), instance_target([])]
    losses = train_step(model, images, targets)
    assert set(losses) == TORCHVISION_LOSSES
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_batch_without_any_defect_trains(model):
    losses = train_step(model, torch.rand(1, 3, 128, 128), [instance_target([], 128, 128)])
    assert set(losses) == TORCHVISION_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_gives_probability_maps(model):
    model.eval()
    with torch.no_grad():
        probs = model(torch.rand(2, 3, 128, 192))
    assert probs.shape == (2, 4, 128, 192) and probs.dtype == torch.float32
    assert 0 <= probs.min() and probs.max() <= 1


def test_instances_to_probs_takes_max_of_score_times_mask_per_class():
    masks = torch.zeros(3, 1, 4, 5)
    masks[0, 0, :, :3] = 0.5  # class 2, score 0.8 -> 0.4
    masks[1, 0, :, 2:] = 1.0  # class 2, score 0.6 -> 0.6; overlaps column 2
    masks[2, 0, 1, 1] = 0.9  # class 4, score 1.0 -> 0.9
    detections = {"scores": torch.tensor([0.8, 0.6, 1.0]), "labels": torch.tensor([2, 2, 4]), "masks": masks}
    probs = instances_to_probs(detections, 4, 5)
    expected = torch.zeros(4, 4, 5)
    expected[1, :, :2] = 0.4
    expected[1, :, 2:] = 0.6  # max(0.4, 0.6) on the overlap
    expected[3, 1, 1] = 0.9
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, expected)


def test_instances_to_probs_without_detections_is_zero():
    detections = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, 8, 16)}
    probs = instances_to_probs(detections, 8, 16)
    assert probs.shape == (4, 8, 16) and not probs.any()
