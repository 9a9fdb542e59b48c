"""Tiled inference against whole-image passes and against MONAI."""

import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from torch import nn

from inference.tiling import blend_weights, pad_to, predict_full_frame, predict_tiled, tile_starts, with_tta

SIZES = [(256, 1600), (257, 1601), (100, 300)]  # (H, W)


pytestmark = pytest.mark.usefixtures("one_thread")


def pointwise_model(channels: int = 4, seed: int = 0):
    """A per-pixel model (a random channel mix, then a sigmoid): its output
    at a pixel ignores every other pixel, so any tiling must reproduce the
    whole-image output exactly. Broadcasting, not a 1x1 conv, which is
    pathologically slow on CPU for batches of 3-channel tiles."""
    weight = torch.randn(channels, 3, 1, 1, generator=torch.Generator().manual_seed(seed))
    return lambda x: torch.sigmoid(3 * (x[:, None] * weight).sum(2))


def conv_model(seed: int = 0):
    """A small random conv net (receptive field 7): tiles differ from the
    whole image near tile borders."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    ).eval()
    return lambda x: torch.sigmoid(net(x))


def test_tile_starts_strip_arithmetic():
    assert tile_starts(1600, 256, 224) == [0, 224, 448, 672, 896, 1120, 1344]
    assert len(tile_starts(1600, 256, 192)) == 8
    assert tile_starts(256, 256, 224) == [0]


@pytest.mark.parametrize("length,tile,stride", [(1600, 256, 224), (1601, 256, 192), (300, 256, 128), (257, 256, 256)])
def test_tile_starts_cover_everything_last_flush(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


def test_tile_starts_rejects_short_length():
    with pytest.raises(ValueError, match="pad"):
        tile_starts(100, 256, 224)


def test_gaussian_weights_match_monai():
    for tile, sigma_scale in [(256, 0.125), (128, 0.25)]:
        ours = blend_weights(tile, "gaussian", sigma_scale)
        theirs = compute_importance_map((tile, tile), mode="gaussian", sigma_scale=sigma_scale)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ["gaussian", "pyramid", "mean"])
def test_blend_weights_positive_and_peaked(mode):
    w = blend_weights(64, mode)
    assert w.dtype == torch.float32 and w.shape == (64, 64)
    assert (w > 0).all()
    assert w[32, 32] == w.max() and w[0, 0] == w.min()
    torch.testing.assert_close(w, w.flip(0).flip(1).T)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("stride", [256, 224, 192, 128])
def test_stitching_is_exact_for_pointwise_model(hw, stride):
    model = pointwise_model()
    images = torch.rand(1, 3, *hw)
    expected = model(images)
    for blend in ("gaussian", "pyramid", "mean"):
        out = predict_tiled(model, images, stride=stride, blend=blend, batch_size=5)
        assert out.shape == expected.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(1, 1), (1, 40), (5, 3), (31, 700)])
def test_tiny_images_are_padded_and_cropped(hw):
    model = pointwise_model()
    images = torch.rand(1, 3, *hw)
    torch.testing.assert_close(predict_tiled(model, images, tile=64, stride=48), model(images), rtol=0, atol=1e-5)


def test_pad_to_reflects_and_reports_offset():
    images = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded, (top, left) = pad_to(images, 10, 4)
    assert padded.shape[-2:] == (10, 4) and (top, left) == (3, 0)
    torch.testing.assert_close(padded[..., top : top + 3, :], images)
    torch.testing.assert_close(padded[..., top - 1, :], images[..., 1, :])  # a reflection, not a copy of the edge


@pytest.mark.parametrize("hw", [(256, 1600), (100, 300)])
def test_matches_monai_sliding_window(hw):
    model = conv_model()
    images = torch.rand(2, 3, *hw)
    ours = predict_tiled(model, images, tile=256, stride=224, blend="gaussian", sigma_scale=0.125)
    with torch.inference_mode():
        theirs = sliding_window_inference(
            images, (256, 256), 4, model, overlap=1 - 224 / 256, mode="gaussian", sigma_scale=0.125,
            padding_mode="reflect",
        )
        whole = model(images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert (ours - whole).abs().max() > 1e-3  # the net does see tile borders: the check is not vacuous


def test_tiles_of_all_images_share_forwards():
    calls = []
    model = pointwise_model()

    def counting(x):
        calls.append(x.shape[0])
        return model(x)

    predict_tiled(counting, torch.rand(3, 3, 256, 1600), batch_size=16)
    assert calls == [16, 5]  # 3 strips x 7 tiles


def test_output_channels_follow_the_model():
    out = predict_tiled(pointwise_model(channels=2), torch.rand(1, 3, 64, 100), tile=64, stride=32)
    assert out.shape == (1, 2, 64, 100)


def test_full_frame_pads_to_multiple_of_32_and_crops():
    model = pointwise_model()
    seen = []
    images = torch.rand(2, 3, 100, 300)
    out = predict_full_frame(lambda x: seen.append(x.shape) or model(x), images)
    assert seen == [(2, 3, 128, 320)]
    torch.testing.assert_close(out, model(images), rtol=0, atol=1e-6)


def test_tta_equals_plain_for_flip_equivariant_model():
    model = pointwise_model()
    images = torch.rand(2, 3, 64, 96)
    for mode in ("hflip", "hvflip"):
        torch.testing.assert_close(with_tta(model, mode)(images), model(images), rtol=0, atol=1e-6)
    assert with_tta(model, "none") is model


def test_tta_differs_for_non_equivariant_model_and_is_mean_of_flips():
    model = conv_model()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        plain, tta = model(images), with_tta(model, "hvflip")(images)
        expected = (plain + model(images.flip(-1)).flip(-1) + model(images.flip(-2)).flip(-2)) / 3
    assert (tta - plain).abs().max() > 1e-3
    torch.testing.assert_close(tta, expected)


def test_rejects_unknown_modes():
    with pytest.raises(ValueError, match="blend"):
        blend_weights(8, "cosine")
    with pytest.raises(ValueError, match="TTA"):
        with_tta(pointwise_model(), "rot90")
