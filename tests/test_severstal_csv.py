"""Severstal csv readers and writer: both train.csv layouts, the image folder as
the list of samples, and clear errors naming file and row."""

import os

import numpy as np
import pandas as pd
import pytest

from datasets.rle import rle_decode
from datasets.severstal import (
    COMPETITION,
    RERELEASED,
    AnnotationError,
    Annotations,
    detect_layout,
    read_mask_table,
    write_mask_csv,
)

SHAPE = (8, 6)
RLES = {"a.jpg": {1: "1 3", 3: "10 5 20 2"}, "b.jpg": {4: "48 1"}, "c_x.jpg": {2: "2 2"}}
IMAGES = ["a.jpg", "b.jpg", "c_x.jpg", "d.jpg", "e.jpg"]  # d and e are defect-free

COMPETITION_CSV = "ImageId_ClassId,EncodedPixels\n" + "".join(
    f"{image}_{c},{RLES.get(image, {}).get(c, '')}\n" for image in IMAGES for c in (1, 2, 3, 4)
)
RERELEASED_CSV = "ImageId,ClassId,EncodedPixels\n" + "".join(
    f"{image},{c},{rle}\n" for image, masks in RLES.items() for c, rle in masks.items()
)


@pytest.fixture
def image_dir(blank_images):
    folder = blank_images(IMAGES, SHAPE)
    (folder / "notes.txt").write_text("not an image")
    return folder


def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def canonical(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns="Row").sort_values(["ImageId", "ClassId"]).reset_index(drop=True)


def test_both_layouts_give_the_same_table(tmp_path, capsys):
    competition = read_mask_table(write(tmp_path, COMPETITION_CSV, "c.csv"), SHAPE, verbose=True)
    rereleased = read_mask_table(write(tmp_path, RERELEASED_CSV, "r.csv"), SHAPE, verbose=True)
    assert competition.attrs["layout"] == COMPETITION and rereleased.attrs["layout"] == RERELEASED
    pd.testing.assert_frame_equal(canonical(competition), canonical(rereleased))
    assert list(competition.columns) == ["ImageId", "ClassId", "EncodedPixels", "Row"]
    assert competition["ClassId"].dtype.kind == "i" and len(competition) == 4
    out = capsys.readouterr().out
    assert "competition layout, 4 non-empty masks on 3 images" in out
    assert "rereleased layout, 4 non-empty masks on 3 images" in out


def test_rows_are_one_based_data_rows(tmp_path):
    table = read_mask_table(write(tmp_path, COMPETITION_CSV), SHAPE)
    assert table.set_index(["ImageId", "ClassId"])["Row"].to_dict() == {
        ("a.jpg", 1): 1, ("a.jpg", 3): 3, ("b.jpg", 4): 8, ("c_x.jpg", 2): 10}


def test_detect_layout():
    assert detect_layout(["ImageId_ClassId", "EncodedPixels"]) == COMPETITION
    assert detect_layout(["ImageId", "EncodedPixels", "ClassId"]) == RERELEASED
    with pytest.raises(AnnotationError, match="unrecognised header"):
        detect_layout(["ImageId", "Mask"])


def test_unrecognised_header_is_rejected(tmp_path):
    with pytest.raises(AnnotationError, match=r"unrecognised header \['image', 'class', 'rle'\]"):
        read_mask_table(write(tmp_path, "image,class,rle\na.jpg,1,1 2\n"), SHAPE)


def test_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation csv not found"):
        read_mask_table(tmp_path / "nope.csv", SHAPE)


@pytest.mark.parametrize("text", [COMPETITION_CSV, RERELEASED_CSV])
def test_annotations_find_defect_free_images(tmp_path, image_dir, text):
    ann = Annotations.load(write(tmp_path, text), image_dir, SHAPE)
    assert ann.image_ids == IMAGES
    assert ann.defect_free == ["d.jpg", "e.jpg"]
    assert ann.rles == RLES
    assert ann.classes_present("a.jpg") == (1, 3) and ann.classes_present("d.jpg") == ()
    masks = ann.masks("a.jpg")
    assert masks.shape == (4, *SHAPE) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[2], rle_decode("10 5 20 2", SHAPE))
    assert masks[1].sum() == masks[3].sum() == 0
    assert ann.subset(["b.jpg", "d.jpg"]).rles == {"b.jpg": RLES["b.jpg"]}


def test_missing_image_names_file_and_row(tmp_path, image_dir):
    path = write(tmp_path, RERELEASED_CSV + "zz.jpg,2,1 1\n")
    with pytest.raises(AnnotationError, match=rf"{path} row 5: image zz\.jpg not found in {image_dir}"):
        Annotations.load(path, image_dir, SHAPE)


@pytest.mark.parametrize("bad", ["0", "5", "x"])
def test_bad_class_id_rereleased(tmp_path, bad):
    path = write(tmp_path, RERELEASED_CSV + f"d.jpg,{bad},1 1\n")
    message = rf"{path} row 5: class id '{bad}' for d\.jpg is not one of \[1, 2, 3, 4\]"
    with pytest.raises(AnnotationError, match=message):
        read_mask_table(path, SHAPE)


@pytest.mark.parametrize("bad", ["0", "5", "x"])
def test_bad_class_id_competition(tmp_path, bad):
    path = write(tmp_path, COMPETITION_CSV + f"d.jpg_{bad},1 1\n")
    with pytest.raises(AnnotationError, match=rf"{path} row 21: class id '{bad}' for d\.jpg is not one of"):
        read_mask_table(path, SHAPE)


def test_competition_id_without_class_suffix(tmp_path):
    path = write(tmp_path, "ImageId_ClassId,EncodedPixels\na.jpg,1 1\n")
    with pytest.raises(AnnotationError, match=rf"{path} row 1: ImageId_ClassId 'a.jpg' has no '_<class>' suffix"):
        read_mask_table(path, SHAPE)


def test_duplicate_rows_name_both_rows(tmp_path):
    path = write(tmp_path, RERELEASED_CSV + "a.jpg,3,1 1\n")
    message = rf"{path} row 5: duplicate mask for \(a\.jpg, class 3\), first given in row 2"
    with pytest.raises(AnnotationError, match=message):
        read_mask_table(path, SHAPE)


def test_header_only_csv_is_an_empty_table(tmp_path):
    for header in ("ImageId,ClassId,EncodedPixels\n", "ImageId_ClassId,EncodedPixels\n"):
        assert len(read_mask_table(write(tmp_path, header), SHAPE)) == 0


@pytest.mark.parametrize("layout, submission, header, n_rows", [
    (RERELEASED, False, "ImageId,ClassId,EncodedPixels", 4),
    (RERELEASED, True, "ImageId,EncodedPixels,ClassId", 4 * len(IMAGES)),
    (COMPETITION, False, "ImageId_ClassId,EncodedPixels", 4 * len(IMAGES)),
])
def test_write_mask_csv_round_trips(tmp_path, layout, submission, header, n_rows):
    path = tmp_path / "out" / "masks.csv"
    write_mask_csv(path, RLES, layout, image_ids=IMAGES, submission=submission)
    lines = path.read_text().splitlines()
    assert lines[0] == header and len(lines) == 1 + n_rows
    table = read_mask_table(path, SHAPE)
    assert table.attrs["layout"] == layout
    assert {i: dict(zip(g["ClassId"], g["EncodedPixels"])) for i, g in table.groupby("ImageId")} == RLES
    assert not list(path.parent.glob(".*.tmp"))


def test_written_csv_has_the_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "masks.csv"
        write_mask_csv(path, RLES)
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(umask)
