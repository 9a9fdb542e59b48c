"""Image reading: every way a file can be bad gives ImageReadError naming it."""

import cv2
import numpy as np
import pytest
import torch

from datasets.io import ImageReadError, read_image, to_tensor


@pytest.fixture
def colour():
    return np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def test_png_round_trip_is_rgb(tmp_path, colour):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), colour)  # cv2 writes BGR
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (32, 48, 3)
    np.testing.assert_array_equal(image, colour[..., ::-1])


def test_grey_png_is_replicated_to_three_channels(tmp_path, colour):
    cv2.imwrite(str(tmp_path / "g.png"), colour[..., 0])
    image = read_image(tmp_path / "g.png")
    assert image.shape == (32, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], colour[..., 0])


def test_rgba_png_drops_alpha(tmp_path, colour):
    alpha = np.full((32, 48, 1), 7, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), np.concatenate([colour, alpha], axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), colour[..., ::-1])


def test_jpeg_reads_with_and_without_trailing_bytes(tmp_path):
    gradient = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 32, axis=0)
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.repeat(gradient, 3, axis=2))
    assert np.abs(read_image(path).astype(int) - gradient).max() <= 8  # lossy
    path.write_bytes(path.read_bytes() + b"\x00\x00trailing")
    assert read_image(path).shape == (32, 48, 3)


def bad_files(tmp_path, colour):
    cv2.imwrite(str(tmp_path / "good.jpg"), colour)
    cv2.imwrite(str(tmp_path / "good.png"), colour)
    jpeg, png = (tmp_path / "good.jpg").read_bytes(), (tmp_path / "good.png").read_bytes()
    files = {
        "empty.jpg": (b"", "empty"),
        "random.jpg": (np.random.default_rng(1).bytes(2000), "cannot decode"),
        "header_only.jpg": (jpeg[:2] + np.random.default_rng(2).bytes(500), "truncated"),
        "truncated_30.jpg": (jpeg[: len(jpeg) * 3 // 10], "truncated"),
        "truncated_90.jpg": (jpeg[: len(jpeg) * 9 // 10], "truncated"),
        "truncated.png": (png[: len(png) // 2], "cannot decode"),
        "text.png": (b"not an image\n", "cannot decode"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: why for name, (_, why) in files.items()}


def test_bad_files_raise_naming_the_file(tmp_path, colour):
    for name, why in bad_files(tmp_path, colour).items():
        with pytest.raises(ImageReadError, match=why) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_missing_file_and_folder_raise_oserror_naming_the_path(tmp_path):
    for path in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(OSError, match=str(path)) as info:
            read_image(path)
        assert isinstance(info.value, ImageReadError)


def test_to_tensor_contract(colour):
    tensor = to_tensor(colour)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 32, 48) and tensor.is_contiguous()
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert torch.allclose(tensor * 255, torch.from_numpy(colour).permute(2, 0, 1).float(), atol=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8)])
def test_to_tensor_rejects_other_layouts(bad):
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(bad)
