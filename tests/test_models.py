"""The registry and the smp segmentation wrapper: contract, heads, no downloads, overfitting."""

import huggingface_hub
import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from torchvision.transforms.functional import normalize

from core.config import Config, ConfigError, MaskRCNNConfig, SmpConfig
from models import MODELS, build_model
from models.smp_models import SegmentationModel, build_smp

ENCODER = "resnet18"


pytestmark = pytest.mark.usefixtures("one_thread")


def unet_config(**model) -> Config:
    cfg = Config()
    cfg.model.smp.encoder = ENCODER
    for key, value in model.items():
        setattr(cfg.model.smp, key, value)
    return cfg


def batch(b=2, size=64):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=gen)
    masks = torch.zeros(b, 4, size, size)
    masks[0, 0, 8:24, 8:40] = 1
    masks[1, 2, 32:56, 16:24] = 1
    labels = masks.amax(dim=(2, 3))
    images = images * 0.2 + masks.sum(1, keepdim=True) * 0.6  # defects are brighter: learnable
    return images, {"masks": masks, "labels": labels, "image_id": ["a", "b"][:b]}


def test_registry_names_and_unknown_model_error():
    assert set(MODELS) == {"smp", "maskrcnn", "classical", "autoencoder"}
    cfg = Config()
    cfg.model.name = "classifier"
    with pytest.raises(ConfigError, match="'classifier'.*smp, maskrcnn, classical, autoencoder"):
        build_model(cfg)


def test_default_weights_are_none_and_nothing_is_downloaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for module, name in [(torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                         (huggingface_hub, "hf_hub_download"), (smp_encoders, "hf_hub_download")]:
        monkeypatch.setattr(module, name, refuse)
    assert SmpConfig().encoder_weights is None and MaskRCNNConfig().backbone_weights is None
    model = build_model(Config())  # the real default: Unet on resnet34
    assert isinstance(model, SegmentationModel) and model.target_kind == "semantic"


def test_train_mode_returns_float32_loss_dict_that_reaches_every_weight():
    cfg = unet_config()
    cfg.loss.dice = 0.25
    model = build_smp(cfg).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_bce", "loss_dice"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in ("encoder", "decoder", "segmentation_head"):
        named = list(getattr(model.net, part).named_parameters())
        missing = [name for name, p in named if p.grad is None]
        assert named and not missing, f"{part}: no gradient reaches {missing}"
        assert all(torch.isfinite(p.grad).all() for _, p in named), f"{part}: non-finite gradients"
        assert torch.stack([p.grad.norm() for _, p in named]).norm() > 0, f"{part}: all gradients are zero"


def test_train_mode_without_targets_is_an_error():
    with pytest.raises(ValueError, match="needs targets"):
        build_smp(unet_config()).train()(batch()[0])


@pytest.mark.parametrize("arch", ["Unet", "FPN", "UnetPlusPlus"])
def test_architectures_give_probabilities_in_eval(arch):
    model = build_smp(unet_config(arch=arch)).eval()
    with torch.no_grad():
        probs = model(torch.rand(2, 3, 64, 96))
    assert probs.shape == (2, 4, 64, 96) and probs.dtype == torch.float32
    assert 0 <= probs.min() and probs.max() <= 1


def test_timm_encoder_builds():
    model = build_smp(unet_config(encoder="tu-resnet10t")).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_eval_output_is_float32_under_bf16_autocast():
    model = build_smp(unet_config()).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(1, 3, 32, 32)).dtype == torch.float32


def test_normalisation_is_imagenet_inside_and_not_in_the_state_dict():
    model = build_smp(unet_config())
    images = torch.rand(2, 3, 8, 8)
    expected = normalize(images, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert torch.allclose(model._normalise(images), expected, atol=1e-6)
    assert not {"mean", "std"} & set(model.state_dict())


def test_classification_head_adds_loss_cls_and_class_probs():
    cfg = unet_config(classification_head=True)
    cfg.loss.cls = 0.5
    model = build_smp(cfg).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_bce", "loss_cls"} and torch.isfinite(losses["loss_cls"])
    model.eval()
    with torch.no_grad():
        class_probs = model.class_probs(images)
        assert model(images).shape == (2, 4, 64, 64)
    assert class_probs.shape == (2, 4) and class_probs.dtype == torch.float32
    assert 0 <= class_probs.min() and class_probs.max() <= 1


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_classification_head_pools_as_configured(pooling):
    """model.smp.cls_pooling: max scores a feature map by its strongest cell, avg
    (the default) by its mean."""
    cfg = unet_config(classification_head=True)
    cfg.loss.cls, cfg.model.smp.cls_pooling = 0.5, pooling
    model = build_smp(cfg).eval()
    features = torch.zeros(1, 512, 2, 50)
    features[0, :, 1, 7] = torch.linspace(-1, 2, 512)  # one hot cell in a wide, quiet map
    pooled = features.amax((2, 3)) if pooling == "max" else features.mean((2, 3))
    head = model.net.classification_head
    expected = head[3](head[2](head[1](pooled)))  # pool -> flatten -> dropout -> linear
    with torch.no_grad():
        assert torch.allclose(model.classify_features(features), expected, atol=1e-6)


def test_train_losses_are_float32_under_bf16_autocast():
    cfg = unet_config(classification_head=True)
    cfg.loss.cls, cfg.loss.lovasz = 0.5, 0.5
    model = build_smp(cfg).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(*batch(size=32))
    assert set(losses) == {"loss_bce", "loss_lovasz", "loss_cls"}
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_arch_kwargs_reach_the_network():
    narrow = build_smp(unet_config(arch="FPN", arch_kwargs={"decoder_segmentation_channels": 32}))
    widths = {m.out_channels for m in narrow.net.decoder.modules() if isinstance(m, torch.nn.Conv2d)}
    assert 32 in widths and 128 not in widths  # smp's default segmentation width is 128


@pytest.mark.parametrize("model, words", [
    ({"arch": "FPN", "arch_kwargs": {"decoder_segmentaton_channels": 64}},
     ["model.smp.arch_kwargs.decoder_segmentaton_channels", "FPN takes no such", "decoder_segmentation_channels"]),
    ({"arch_kwargs": {"classes": 3}}, ["model.smp.arch_kwargs.classes", "always 4"]),
    ({"arch_kwargs": {"decoder_channels": 64}}, ["model.smp.arch_kwargs={'decoder_channels': 64} for Unet"]),
    ({"arch": "Unet++"}, ["model.smp.arch='Unet++'", "UnetPlusPlus"]),
    ({"encoder": "resnet19"}, ["model.smp.encoder='resnet19'", "resnet18"]),
    ({"encoder": "tu-resnet19"}, ["model.smp.encoder='tu-resnet19'", "timm has no model"]),
])
def test_bad_smp_arguments_name_the_key(model, words):
    with pytest.raises(ConfigError) as err:
        build_smp(unet_config(**model))
    for word in words:
        assert word in str(err.value)


def test_classification_head_needs_a_loss_weight_and_class_probs_needs_a_head():
    with pytest.raises(ConfigError, match="loss.cls"):
        build_smp(unet_config(classification_head=True))
    with pytest.raises(RuntimeError, match="classification_head"):
        build_smp(unet_config()).class_probs(torch.rand(1, 3, 64, 64))


def test_encoder_parameters_are_a_proper_subset():
    model = build_smp(unet_config())
    encoder = {id(p) for p in model.encoder_parameters()}
    every = {id(p) for p in model.parameters()}
    assert encoder and encoder < every


@pytest.mark.slow
def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_smp(unet_config()).train()
    images, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 5, history


def test_probs_and_class_probs_equal_the_two_separate_calls():
    """Validation's one-pass outputs (training.trainer.eval_outputs) are those of
    forward and class_probs; a model without the method still gets both."""
    from core.config import Config
    from models import build_model
    from training.trainer import eval_outputs

    cfg = Config()
    cfg.model.smp.encoder, cfg.model.smp.classification_head, cfg.loss.cls = "resnet18", True, 0.2
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        probs, class_probs = eval_outputs(model, images)
        assert torch.allclose(probs, model(images), atol=1e-6)
        assert torch.allclose(class_probs, model.class_probs(images), atol=1e-6)
        assert class_probs.shape == (2, 4) and probs.shape == (2, 4, 64, 96)

        class TwoCalls(torch.nn.Module):  # only the documented minimum of the contract
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)

            def class_probs(self, x):
                return self.inner.class_probs(x)

        again = eval_outputs(TwoCalls(model), images)
        assert torch.equal(again[0], probs) and torch.allclose(again[1], class_probs, atol=1e-6)
    cfg.model.smp.classification_head, cfg.loss.cls = False, 0.0
    plain = build_model(cfg).eval()
    with torch.inference_mode():
        assert eval_outputs(plain, images)[1] is None
