"""Copy-paste augmentation: image and masks stay aligned, instances come from
the training fold only, and a seed fixes what is pasted."""

import albumentations as A
import cv2
import numpy as np
import pytest

from core.config import ConfigError, load_config
from datasets.copy_paste import CopyPaste, InstancePool, feather_alpha
from datasets.rle import rle_encode
from datasets.severstal import Annotations
from training.data import build_train_dataset, copy_paste_pool, load_run_data

H, W = 64, 96
NO_AUGMENT = [f"--augment.{k}=0" for k in ("hflip", "vflip", "brightness_contrast", "gamma", "noise", "blur", "affine")]


def blob() -> np.ndarray:
    """uint8 [H, W]: an irregular class-2 instance (a disc and a bar) of 60..400 pixels."""
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (30, 30), 7, 1, -1)
    mask[28:32, 30:50] = 1
    return mask


@pytest.fixture
def pool(tmp_path) -> InstancePool:
    """One source strip: grey 50, the blob at 220 (class 2); a class-3 speck too small to count."""
    image = np.random.default_rng(1).integers(40, 60, (H, W), dtype=np.uint8)  # textured grey ~50
    image[blob().astype(bool)] = 220
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "src.png"), image)
    speck = np.zeros((H, W), np.uint8)
    speck[2:4, 2:4] = 1
    annotations = Annotations(folder, ["src.png"], {"src.png": {2: rle_encode(blob()), 3: rle_encode(speck)}},
                              (H, W))
    return InstancePool(annotations, ["src.png"], classes=(2, 3), min_area=16)


def paste(pool, seed, blend="alpha", feather=3, target=None, masks=None, max_pastes=1):
    transform = A.Compose([CopyPaste(pool, max_pastes=max_pastes, blend=blend, feather=feather, p=1.0)])
    transform.set_random_seed(seed)
    image = np.full((H, W, 3), 120, np.uint8) if target is None else target
    masks = np.zeros((4, H, W), np.uint8) if masks is None else masks
    out = transform(image=image.copy(), masks=masks.copy())
    return image, masks, out["image"], np.asarray(out["masks"])


def test_pool_indexes_components_above_min_area(pool):
    assert len(pool) == 1 and pool.classes == [2]
    instance = pool.by_class[2][0]
    assert instance.mask().sum() == blob().sum()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_alpha_paste_masks_exactly_the_changed_pixels(pool, seed):
    image, _, out, masks = paste(pool, seed)
    changed = (out != image).any(axis=-1)
    assert changed.sum() == blob().sum()  # the whole instance fits in the crop
    np.testing.assert_array_equal(changed, masks[1].astype(bool))
    assert not masks[[0, 2, 3]].any()
    # the interior is the source's pixels; the feathered edge lies between source and target
    interior = cv2.erode(masks[1], np.ones((7, 7), np.uint8)).astype(bool)
    assert interior.any() and (out[interior] == 220).all()
    assert ((out[changed] > 120) & (out[changed] <= 220)).all()


def test_paste_clears_other_classes_under_it(pool):
    masks = np.zeros((4, H, W), np.uint8)
    masks[2] = 1  # class 3 everywhere
    _, _, out, pasted = paste(pool, 0, masks=masks)
    assert (pasted[1] + pasted[2] == 1).all()  # each pixel is one class: pasted class 2 replaced class 3
    assert pasted[1].sum() == blob().sum()


def test_poisson_paste_changes_pixels_only_inside_the_mask(pool):
    # Poisson blending carries the source's gradients: a textured target and source show them
    target = np.random.default_rng(0).integers(100, 140, (H, W, 3), dtype=np.uint8)
    for seed in range(3):
        image, _, out, masks = paste(pool, seed, blend="poisson", target=target)
        changed = (out != image).any(axis=-1)
        assert changed.any()
        assert not (changed & ~masks[1].astype(bool)).any()


def test_same_seed_same_paste_other_seed_other_place(pool):
    _, _, first, first_masks = paste(pool, 7, max_pastes=3)
    _, _, again, again_masks = paste(pool, 7, max_pastes=3)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_masks, again_masks)
    others = [paste(pool, s, max_pastes=3)[3] for s in range(8, 12)]
    assert any(not np.array_equal(first_masks, o) for o in others)


def test_feather_alpha_is_positive_inside_and_zero_outside():
    mask = blob().astype(bool)
    alpha = feather_alpha(mask, 3)
    assert (alpha[mask] > 0).all() and (alpha[~mask] == 0).all() and alpha.max() == 1.0


def test_never_pastes_from_validation(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(overrides=[f"--data.root={tiny_data}", f"--output_dir={tmp_path}", "--data.folds=3",
                                 f"--data.split_file={tmp_path / 'folds.csv'}", "--augment.copy_paste.p=1",
                                 "--augment.copy_paste.max_pastes=3", "--data.num_workers=0", *NO_AUGMENT])
    data = load_run_data(cfg)
    pool = copy_paste_pool(cfg, data)
    everything = InstancePool(data.annotations, data.annotations.image_ids)
    assert everything.source_ids() & set(data.val_ids), "the validation strips must hold instances for this test"
    assert pool.source_ids() and pool.source_ids() <= set(data.train_ids)
    assert not pool.source_ids() & set(data.val_ids)
    # what the training dataset actually reads to paste
    read = []
    dataset = build_train_dataset(cfg, data, "semantic")
    paster = dataset.transform.transforms[0]
    assert isinstance(paster, CopyPaste)
    original = paster.pool.pixels
    monkeypatch.setattr(paster.pool, "pixels",
                        lambda instance, *a: read.append(instance.image_id) or original(instance, *a))
    dataset.set_seed(0)
    n_read = 0
    for index in range(len(dataset)):
        dataset.sample(index)
        assert dataset.image_ids[index] not in read, "pasted a strip's own defect into it"
        n_read += len(read)
        assert not set(read) & set(data.val_ids)
        read.clear()
    assert n_read >= len(dataset)


def test_never_pastes_a_strips_own_defects(pool):
    """Named by ``image_id``, the strip being augmented gives nothing: with
    one strip in the pool, nothing is pasted into it, however often asked."""
    (only,) = pool.source_ids()
    transform = A.Compose([CopyPaste(pool, max_pastes=3, p=1.0)])
    image, masks = np.full((64, 128, 3), 100, np.uint8), np.zeros((4, 64, 128), np.uint8)
    for seed in range(5):
        transform.set_random_seed(seed)
        out = transform(image=image, masks=masks, image_id=only)
        assert (out["image"] == image).all() and not out["masks"].any()
        transform.set_random_seed(seed)
        assert transform(image=image, masks=masks, image_id="other.jpg")["masks"].any()


def test_copy_paste_config_is_checked():
    with pytest.raises(ConfigError, match="augment.copy_paste.p"):
        load_config(overrides=["--augment.copy_paste.p=1.5"])
    with pytest.raises(ConfigError, match="augment.copy_paste.classes"):
        load_config(overrides=["--augment.copy_paste.classes=[5]"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(overrides=["--augment.copy_paste.blend=mix"])
