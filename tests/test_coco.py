"""COCO conversion: csv -> COCO -> csv round trip, pycocotools' COCO/COCOeval
as readers, and the segmentation kinds labelling tools export."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.coco import CATEGORIES, coco_to_rles, connected_components, segmentation_mask, severstal_to_coco
from datasets.rle import rle_decode, rle_encode
from datasets.severstal import Annotations, read_mask_table, write_mask_csv

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("to_coco_script", ROOT / "scripts" / "to_coco.py")
to_coco_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(to_coco_script)

SHAPE = (32, 48)
IMAGES = ["a.jpg", "b.jpg", "c.jpg"]  # c.jpg is defect-free


def blobs(*boxes) -> np.ndarray:
    """uint8 [32, 48] with the (y0, y1, x0, x1) boxes set."""
    mask = np.zeros(SHAPE, np.uint8)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


MASKS = {
    "a.jpg": {1: blobs((2, 6, 3, 9), (20, 30, 30, 47)), 3: blobs((10, 12, 0, 48))},
    "b.jpg": {4: blobs((0, 4, 0, 4), (4, 8, 4, 8), (30, 31, 46, 47))},  # two boxes touch at a corner
}
RLES = {image: {c: rle_encode(m) for c, m in masks.items()} for image, masks in MASKS.items()}


@pytest.fixture
def dataset(tmp_path, blank_images):
    images = blank_images(IMAGES, SHAPE)
    csv = tmp_path / "train.csv"
    write_mask_csv(csv, RLES)
    return csv, images


def test_connected_components_are_8_connected():
    components = connected_components(MASKS["b.jpg"][4])
    assert [int(c.sum()) for c in components] == [32, 1]
    assert all(c.dtype == np.uint8 and c.shape == SHAPE for c in components)
    np.testing.assert_array_equal(sum(components), MASKS["b.jpg"][4])
    assert [int(c.sum()) for c in connected_components(MASKS["b.jpg"][4], min_area=2)] == [32]
    assert connected_components(np.zeros(SHAPE, bool)) == []


def test_severstal_to_coco_structure(dataset):
    coco = severstal_to_coco(Annotations.load(*dataset, SHAPE))
    json.dumps(coco)
    assert coco["categories"] == CATEGORIES and [c["name"] for c in CATEGORIES] == [f"defect_{c}" for c in (1, 2, 3, 4)]
    assert coco["images"] == [{"id": i + 1, "file_name": n, "width": 48, "height": 32} for i, n in enumerate(IMAGES)]
    anns = coco["annotations"]
    assert [(a["image_id"], a["category_id"], a["area"]) for a in anns] == [
        (1, 1, 24.0), (1, 1, 170.0), (1, 3, 96.0), (2, 4, 32.0), (2, 4, 1.0)]
    assert [a["id"] for a in anns] == [1, 2, 3, 4, 5] and all(a["iscrowd"] == 0 for a in anns)
    assert anns[0]["bbox"] == [3.0, 2.0, 6.0, 4.0]
    assert len(severstal_to_coco(Annotations.load(*dataset, SHAPE), min_area=2)["annotations"]) == 4


def test_round_trip_through_the_script(dataset, tmp_path, capsys):
    csv, images = dataset
    coco_path, back = tmp_path / "coco.json", tmp_path / "back.csv"
    size = ["--height", "32", "--width", "48"]
    to_coco_script.main(["to-coco", "--csv", str(csv), "--images", str(images), "--out", str(coco_path), *size])
    to_coco_script.main(["to-csv", "--coco", str(coco_path), "--out", str(back)])
    assert "3 images, 5 instances" in capsys.readouterr().out
    assert Annotations.load(back, images, SHAPE).rles == RLES
    to_coco_script.main(["to-csv", "--coco", str(coco_path), "--out", str(back), "--layout", "competition"])
    table = read_mask_table(back, SHAPE)
    assert table.attrs["layout"] == "competition" and len(back.read_text().splitlines()) == 1 + 4 * len(IMAGES)
    assert not list(tmp_path.glob(".*.tmp"))


def test_pycocotools_reads_it(dataset, tmp_path, capsys):
    coco = severstal_to_coco(Annotations.load(*dataset, SHAPE))
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    gt = COCO(str(path))
    for ann in coco["annotations"]:
        file_name = gt.imgs[ann["image_id"]]["file_name"]
        ours = MASKS[file_name][ann["category_id"]]
        instance = gt.annToMask(gt.anns[ann["id"]])
        assert instance.shape == SHAPE and (instance <= ours).all()
        assert instance.sum() == ann["area"]
        labelled = [c for c in connected_components(ours) if (c & instance).any()]
        assert len(labelled) == 1
        np.testing.assert_array_equal(instance, labelled[0])

    detections = gt.loadRes([{**a, "score": 1.0} for a in coco["annotations"]])
    evaluation = COCOeval(gt, detections, iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # segm AP@[.5:.95]


def test_polygons_uncompressed_and_compressed_rle_merge_per_class():
    rectangle = np.zeros(SHAPE, np.uint8)
    rectangle[1:4, 2:6] = 1  # polygon corners on pixel edges: x 2..6, y 1..4
    blob = blobs((20, 25, 40, 45))
    compressed = coco_mask.encode(np.asfortranarray(blob))
    line = blobs((10, 11, 0, 48))
    coco = {
        "images": [{"id": 7, "file_name": "upload/a.jpg", "width": 48, "height": 32},
                   {"id": 8, "file_name": "b.jpg", "width": 48, "height": 32}],
        "categories": [{"id": 1, "name": "defect_3"}, {"id": 2, "name": "defect_1"}],  # renumbered by a tool
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            {"id": 2, "image_id": 7, "category_id": 1,
             "segmentation": {"size": [32, 48], "counts": compressed["counts"].decode()}},  # str counts
            {"id": 3, "image_id": 7, "category_id": 2,
             "segmentation": {"size": [32, 48], "counts": compressed["counts"]}},  # bytes counts
            {"id": 4, "image_id": 7, "category_id": 2, "iscrowd": 1,
             "segmentation": {"size": [32, 48], "counts": coco_counts(line)}},  # uncompressed
        ],
    }
    rles = coco_to_rles(coco)
    assert rles.keys() == {"a.jpg", "b.jpg"} and rles["b.jpg"] == {}
    np.testing.assert_array_equal(rle_decode(rles["a.jpg"][3], SHAPE), rectangle | blob)
    np.testing.assert_array_equal(rle_decode(rles["a.jpg"][1], SHAPE), blob | line)


def coco_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts (CVAT's iscrowd export): alternating run lengths
    from a zero run, column-major."""
    flat = np.concatenate(([0], mask.T.ravel(), [0]))
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)), [mask.size]))
    return np.diff(bounds).tolist()


def test_segmentation_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"segmentation size \[4, 4\] != image size \[32, 48\]"):
        segmentation_mask({"size": [4, 4], "counts": [16]}, 32, 48)
    wrong_size = {"id": 9, "image_id": 1, "category_id": 2, "segmentation": {"size": [4, 4], "counts": [16]}}
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 32}], "categories": CATEGORIES,
            "annotations": [wrong_size]}
    with pytest.raises(ValueError, match="annotation 9 of image a.jpg"):
        coco_to_rles(coco)


def test_unknown_category_is_an_error():
    with pytest.raises(ValueError, match="maps to no Severstal class"):
        coco_to_rles({"images": [], "annotations": [], "categories": [{"id": 9, "name": "scratch"}]})
