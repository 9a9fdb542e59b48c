"""Semantic and instance datasets on a tiny Severstal-layout folder."""

import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from core.config import AugmentConfig
from datasets.augment import build_train_transform
from datasets.instance import SeverstalInstances, collate_instances, instances_from_masks
from datasets.rle import rle_encode
from datasets.semantic import SeverstalSegmentation
from datasets.severstal import AnnotationError, Annotations, write_mask_csv

H, W = 64, 256
DARK, BRIGHT = 50, 200  # background and defect grey levels: defect pixels are those > 0.5


def stripe_masks():
    """Class 3 on columns 100..109, full height."""
    masks = np.zeros((4, H, W), np.uint8)
    masks[2, :, 100:110] = 1
    return masks


def mixed_masks():
    """Class 1: a 20x30 blob and a 3x3 speck; class 4: a 20x50 blob."""
    masks = np.zeros((4, H, W), np.uint8)
    masks[0, 5:25, 10:40] = 1
    masks[0, 30:33, 100:103] = 1
    masks[3, 40:60, 150:200] = 1
    return masks


def write_dataset(folder, samples: dict) -> Annotations:
    """Grey PNGs (DARK, BRIGHT where a mask is set), train.csv, loaded Annotations."""
    image_dir = folder / "train_images"
    image_dir.mkdir(parents=True)
    rles = {}
    for name, masks in samples.items():
        cv2.imwrite(str(image_dir / name), np.where(masks.any(0), BRIGHT, DARK).astype(np.uint8))
        rles[name] = {c + 1: rle_encode(m) for c, m in enumerate(masks) if m.any()}
    write_mask_csv(folder / "train.csv", rles)
    return Annotations.load(folder / "train.csv", image_dir, shape=(H, W))


@pytest.fixture
def annotations(tmp_path):
    return write_dataset(tmp_path, {
        "stripe.png": stripe_masks(), "empty.png": np.zeros((4, H, W), np.uint8), "mixed.png": mixed_masks(),
    })


def defect_pixels(image):
    return image[0] > 0.5


def test_semantic_item_contract(annotations):
    dataset = SeverstalSegmentation(annotations, annotations.image_ids, crop=(64, 64))
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        masks = target["masks"]
        assert masks.dtype == torch.float32 and masks.shape == (4, 64, 64)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert target["labels"].dtype == torch.float32 and target["labels"].shape == (4,)
        assert torch.equal(target["labels"], masks.amax(dim=(1, 2)))
        assert target["image_id"] == annotations.image_ids[index]
        assert torch.equal(defect_pixels(image), masks.amax(0) > 0)


def test_whole_strips_without_crop(annotations):
    dataset = SeverstalSegmentation(annotations, ["mixed.png"], crop=None)
    image, target = dataset[0]
    assert image.shape == (3, H, W)
    np.testing.assert_array_equal(target["masks"].numpy(), mixed_masks())
    grey = torch.from_numpy(np.where(mixed_masks().any(0), BRIGHT, DARK)).float()
    assert torch.allclose(image * 255, grey.expand(3, H, W), atol=1e-4)
    assert target["labels"].tolist() == [1.0, 0.0, 0.0, 1.0]


# A 64x64 crop of the 64x256 stripe image: 193 left edges, 73 of them (37..109) overlap columns 100..109.
UNIFORM_HIT_RATE = 73 / 193


@pytest.mark.parametrize("defect_prob", [1.0, 0.5, 0.0])
def test_crops_contain_a_defect_at_the_configured_rate(annotations, defect_prob):
    dataset = SeverstalSegmentation(annotations, ["stripe.png"] * 400, crop=(64, 64), crop_defect_prob=defect_prob)
    torch.manual_seed(0)
    hits = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert torch.equal(defect_pixels(image), target["masks"][2] > 0)
        hits.append(bool(target["labels"][2]))
    expected = defect_prob + (1 - defect_prob) * UNIFORM_HIT_RATE
    if defect_prob == 1.0:
        assert all(hits)
    assert np.mean(hits) == pytest.approx(expected, abs=0.07)  # about 3 standard errors


def test_defect_free_image_with_defect_bias(annotations):
    dataset = SeverstalSegmentation(annotations, ["empty.png"] * 20, crop=(32, 48), crop_defect_prob=1.0)
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, 32, 48) and target["masks"].sum() == 0


def test_crops_larger_than_the_image_are_zero_padded(annotations):
    dataset = SeverstalSegmentation(annotations, ["stripe.png"] * 10, crop=(80, 300), crop_defect_prob=1.0)
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, 80, 300) and target["masks"].shape == (4, 80, 300)
        assert target["labels"][2] == 1
        assert image[:, H:].eq(0).all() and target["masks"][:, H:].eq(0).all()
        assert image[:, :, W:].eq(0).all() and target["masks"][:, :, W:].eq(0).all()


def test_image_of_the_wrong_size_names_file_and_sizes(annotations):
    cv2.imwrite(str(annotations.image_dir / "empty.png"), np.zeros((32, W), np.uint8))
    dataset = SeverstalSegmentation(annotations, ["empty.png"], crop=None)
    with pytest.raises(AnnotationError, match=rf"empty\.png is 32x{W} .* expect {H}x{W}"):
        dataset[0]


def geometric_only():
    return build_train_transform(AugmentConfig(hflip=1.0, vflip=1.0, affine=1.0, brightness_contrast=0.0,
                                               gamma=0.0, noise=0.0, blur=0.0))


def test_transform_moves_masks_with_the_image(annotations):
    dataset = SeverstalSegmentation(annotations, ["mixed.png"] * 10, crop=(64, 128), transform=geometric_only())
    torch.manual_seed(0)
    for index in range(len(dataset)):
        image, target = dataset[index]
        bright, union = defect_pixels(image), target["masks"].amax(0) > 0
        assert (bright & union).sum() / (bright | union).sum() > 0.9


def test_items_are_reproducible_from_torch_seed(annotations):
    transform = build_train_transform(AugmentConfig(**{p: 1.0 for p in ("hflip", "affine", "noise")}))
    dataset = SeverstalSegmentation(annotations, ["mixed.png"], crop=(64, 64), transform=transform)
    draws = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        draws.append(dataset[0])
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1]["masks"], draws[1][1]["masks"])
    assert not torch.equal(draws[0][0], draws[2][0])


def test_set_seed_gives_the_dataset_its_own_generator(annotations):
    transform = build_train_transform(AugmentConfig(**{p: 1.0 for p in ("hflip", "affine", "noise")}))
    dataset = SeverstalSegmentation(annotations, ["mixed.png"] * 4, crop=(64, 64), transform=transform)
    runs = []
    for global_seed in (5, 6):
        torch.manual_seed(global_seed)  # ignored once the dataset has its own generator
        dataset.set_seed(11)
        runs.append(torch.stack([dataset[i][0] for i in range(4)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])


def test_dataset_pickles(annotations):
    dataset = SeverstalInstances(annotations, annotations.image_ids, transform=build_train_transform(AugmentConfig()))
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.image_ids == dataset.image_ids and clone.min_area == dataset.min_area


def test_dataloader_with_two_workers(annotations):
    dataset = SeverstalSegmentation(annotations, ["stripe.png"] * 8, crop=(64, 64), crop_defect_prob=1.0)
    assert SeverstalSegmentation.collate_fn is default_collate
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=dataset.collate_fn)
    batches = list(loader)
    assert len(batches) == 4
    images, target = batches[0]
    assert images.shape == (2, 3, 64, 64) and target["masks"].shape == (2, 4, 64, 64)
    assert target["labels"].shape == (2, 4) and target["image_id"] == ["stripe.png"] * 2
    # Batches 0 and 1 come from different workers: a generator copied into both would repeat
    # the stripe's position in the crops.
    assert not torch.equal(batches[0][0], batches[1][0])


# ---------------------------------------------------------------- instances


def check_instances(target, semantic, min_area):
    n = len(target["labels"])
    height, width = semantic.shape[1:]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and target["masks"].dtype == torch.uint8
    assert target["masks"].shape == (n, height, width)
    assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
    assert target["iscrowd"].eq(0).all() and target["iscrowd"].shape == (n,)
    for box, label, mask, area in zip(target["boxes"], target["labels"], target["masks"], target["area"]):
        assert 1 <= label <= 4
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box[2] > box[0] and box[3] > box[1]
        assert area == mask.sum() >= min_area
        assert (semantic[label - 1][mask.bool()] == 1).all()


def test_instances_from_masks_components():
    masks = mixed_masks()
    masks[1, 50, 60] = masks[1, 51, 61] = 1  # diagonal neighbours: one component under 8-connectivity
    target = instances_from_masks(masks, min_area=1)
    check_instances(target, torch.from_numpy(masks), 1)
    assert sorted(target["labels"].tolist()) == [1, 1, 2, 4]
    assert sorted(target["area"].tolist()) == [2.0, 9.0, 600.0, 1000.0]
    large = instances_from_masks(masks, min_area=16)
    assert large["labels"].tolist() == [1, 4] and large["area"].tolist() == [600.0, 1000.0]
    assert large["boxes"].tolist() == [[10, 5, 40, 25], [150, 40, 200, 60]]


def test_instances_of_an_empty_image():
    target = instances_from_masks(np.zeros((4, 32, 48), np.uint8), min_area=16)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 48)
    assert target["labels"].shape == target["area"].shape == target["iscrowd"].shape == (0,)
    check_instances(target, torch.zeros(4, 32, 48), 16)


def test_instance_dataset_whole_strip(annotations):
    dataset = SeverstalInstances(annotations, annotations.image_ids, crop=None, min_area=16)
    by_id = {target["image_id"]: (image, target) for image, target in (dataset[i] for i in range(len(dataset)))}
    image, mixed = by_id["mixed.png"]
    assert image.shape == (3, H, W)
    np.testing.assert_array_equal(mixed["semantic"].numpy(), mixed_masks())  # the speck stays in semantic
    assert mixed["labels"].tolist() == [1, 4]
    assert by_id["empty.png"][1]["boxes"].shape == (0, 4)
    assert by_id["stripe.png"][1]["labels"].tolist() == [3]


def test_instance_dataset_with_crops_and_transform_and_collate(annotations):
    dataset = SeverstalInstances(annotations, annotations.image_ids * 4, crop=(64, 96),
                                 transform=build_train_transform(AugmentConfig()), min_area=16)
    torch.manual_seed(0)
    batch = [dataset[i] for i in range(len(dataset))]
    for image, target in batch:
        assert image.shape == (3, 64, 96) and target["semantic"].shape == (4, 64, 96)
        check_instances(target, target["semantic"], 16)
    images, targets = dataset.collate_fn(batch)
    assert dataset.collate_fn is collate_instances
    assert images.shape == (12, 3, 64, 96) and len(targets) == 12 and targets[0] is batch[0][1]


def test_mixed_width_batches_stack_and_vary(tmp_path):
    """Each batch takes one crop width (so it stacks); widths vary across batches."""
    from torch.utils.data import SequentialSampler

    from training.data import MixedWidthBatchSampler

    ann = _mixed_width_annotations(tmp_path)
    dataset = SeverstalSegmentation(ann, ann.image_ids, crop=(64, 64))
    sampler = MixedWidthBatchSampler(SequentialSampler(dataset), 2, [32, 64, 96], seed=0)
    widths = [images.shape[-1] for images, targets in DataLoader(dataset, batch_sampler=sampler)]
    assert len(widths) == len(dataset) // 2 and set(widths) <= {32, 64, 96} and len(set(widths)) > 1
    again = [batch for batch in MixedWidthBatchSampler(SequentialSampler(dataset), 2, [32, 64, 96], seed=0)]
    assert again == list(sampler)


def _mixed_width_annotations(tmp_path):
    rles = {}
    for i in range(12):
        name = f"{i:09x}.jpg"
        cv2.imwrite(str(tmp_path / name), np.full((64, 128, 3), 100, np.uint8))
        mask = np.zeros((64, 128), np.uint8)
        mask[10:20, 10 * (i % 8):10 * (i % 8) + 8] = 1
        rles[name] = {3: rle_encode(mask)}
    return Annotations(tmp_path, sorted(rles), rles, (64, 128))
