"""Reading and writing Severstal csv files, in both layouts seen in the wild.

- competition-era: ``ImageId_ClassId,EncodedPixels`` (4 rows per image, empty
  EncodedPixels for absent classes); also the competition submission layout.
- re-released: ``ImageId,ClassId,EncodedPixels`` (one row per non-empty mask);
  the submission variant orders the columns ``ImageId,EncodedPixels,ClassId``.

Everything is read into one *mask table*: a DataFrame with columns
``ImageId`` (str), ``ClassId`` (int 1..4), ``EncodedPixels`` (str, non-empty)
and ``Row`` (the 1-based data row in the source file, for error messages).
The image folder, not the csv, is the list of images: an image with no row is
a defect-free sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.classes import CLASS_IDS, NUM_CLASSES
from core.files import atomic_write_text

from .rle import STRIP_SHAPE, parse_runs, rle_decode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
COMPETITION = "competition"  # ImageId_ClassId,EncodedPixels
RERELEASED = "rereleased"  # ImageId,ClassId,EncodedPixels (any column order)


class AnnotationError(ValueError):
    """A problem in an annotation csv or image folder; names file and row."""


def detect_layout(columns) -> str:
    """Return COMPETITION or RERELEASED for a csv header, or raise."""
    cols = set(columns)
    if {"ImageId_ClassId", "EncodedPixels"} <= cols:
        return COMPETITION
    if {"ImageId", "ClassId", "EncodedPixels"} <= cols:
        return RERELEASED
    raise AnnotationError(
        f"unrecognised header {list(columns)}: expected 'ImageId_ClassId,EncodedPixels' "
        "or 'ImageId,ClassId,EncodedPixels'"
    )


def read_mask_table(path, shape=STRIP_SHAPE, validate: bool = True, verbose: bool = False) -> pd.DataFrame:
    """Read a Severstal csv of either layout into the mask table (non-empty
    masks only). ``validate`` parses every RLE string against ``shape`` so that a
    malformed one fails here, naming file and row. The layout seen is stored
    in ``table.attrs["layout"]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation csv not found: {path}")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    layout = detect_layout(raw.columns)
    rows = np.arange(1, len(raw) + 1)
    if layout == COMPETITION:
        # reindex: without any '_' (or without rows) the split has fewer than 2 columns
        split = raw["ImageId_ClassId"].str.rsplit("_", n=1, expand=True).reindex(columns=[0, 1])
        if (no_suffix := split[1].isna().to_numpy()).any():
            bad = int(np.flatnonzero(no_suffix)[0])
            raise AnnotationError(f"{path} row {bad + 1}: ImageId_ClassId {raw['ImageId_ClassId'][bad]!r} has no '_<class>' suffix")
        image_ids, class_ids = split[0].astype(str), split[1].astype(str)
    else:
        image_ids, class_ids = raw["ImageId"], raw["ClassId"]
    table = pd.DataFrame(
        {"ImageId": image_ids.str.strip(), "ClassId": class_ids.str.strip(),
         "EncodedPixels": raw["EncodedPixels"].str.strip(), "Row": rows}
    )
    table = table[table["EncodedPixels"] != ""].reset_index(drop=True)
    _check_class_ids(table, path)
    table["ClassId"] = table["ClassId"].astype(int)
    _check_duplicates(table, path)
    if validate:
        for image_id, rle, row in zip(table["ImageId"], table["EncodedPixels"], table["Row"]):
            parse_runs(rle, shape, where=f"{path} row {row}, {image_id}")
    table.attrs["layout"] = layout
    table.attrs["source"] = str(path)
    if verbose:
        print(f"{path}: {layout} layout, {len(table)} non-empty masks on {table['ImageId'].nunique()} images")
    return table


def _check_class_ids(table: pd.DataFrame, path) -> None:
    valid = table["ClassId"].isin([str(c) for c in CLASS_IDS])
    if not valid.all():
        i = int(np.flatnonzero(~valid.to_numpy())[0])
        raise AnnotationError(
            f"{path} row {table['Row'][i]}: class id {table['ClassId'][i]!r} for {table['ImageId'][i]} "
            f"is not one of {list(CLASS_IDS)}"
        )


def _check_duplicates(table: pd.DataFrame, path) -> None:
    dup = table.duplicated(["ImageId", "ClassId"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        image_id, class_id = table["ImageId"][i], table["ClassId"][i]
        first = table[(table["ImageId"] == image_id) & (table["ClassId"] == class_id)]["Row"].iloc[0]
        raise AnnotationError(
            f"{path} row {table['Row'][i]}: duplicate mask for ({image_id}, class {class_id}), "
            f"first given in row {first}"
        )


def list_images(folder) -> list[str]:
    """Sorted image file names in ``folder`` (the list of samples)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Annotations:
    """Images of a folder and their masks.

    ``image_ids``: every image in the folder (defect-free ones included);
    ``rles[image_id][class_id]``: the RLE string of each non-empty mask;
    ``image_paths``: the files of images stored outside ``image_dir`` (after
    ``merge``); ``path`` resolves either.
    """

    image_dir: Path
    image_ids: list[str]
    rles: dict[str, dict[int, str]] = field(default_factory=dict)
    shape: tuple[int, int] = STRIP_SHAPE
    image_paths: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def load(cls, csv_path, image_dir, shape=STRIP_SHAPE, verbose: bool = False) -> "Annotations":
        """Read ``csv_path`` (either layout) and list ``image_dir``. An image named
        in the csv but missing from the folder is an error naming file and row."""
        table = read_mask_table(csv_path, shape, verbose=verbose)
        image_ids = list_images(image_dir)
        present = set(image_ids)
        missing = ~table["ImageId"].isin(present)
        if missing.any():
            i = int(np.flatnonzero(missing.to_numpy())[0])
            raise AnnotationError(
                f"{csv_path} row {table['Row'][i]}: image {table['ImageId'][i]} not found in {image_dir} "
                f"({int(missing.sum())} csv rows name missing images)"
            )
        return cls(Path(image_dir), image_ids, table_to_rles(table), tuple(shape))

    def masks(self, image_id: str, shape=None) -> np.ndarray:
        """uint8 [4, H, W] masks of one image (channel c is class c+1)."""
        shape = tuple(shape or self.shape)
        out = np.zeros((NUM_CLASSES, *shape), np.uint8)
        for class_id, rle in self.rles.get(image_id, {}).items():
            out[class_id - 1] = rle_decode(rle, shape, where=image_id)
        return out

    def classes_present(self, image_id: str) -> tuple[int, ...]:
        return tuple(sorted(self.rles.get(image_id, {})))

    def path(self, image_id: str) -> Path:
        """The image file of ``image_id``."""
        return self.image_paths.get(image_id, self.image_dir / image_id)

    def subset(self, image_ids) -> "Annotations":
        ids = list(image_ids)
        return Annotations(self.image_dir, ids, {i: self.rles[i] for i in ids if i in self.rles}, self.shape,
                           {i: self.image_paths[i] for i in ids if i in self.image_paths})

    def merge(self, other: "Annotations") -> "Annotations":
        """These images and masks followed by ``other``'s, each image keeping
        its file (``path``). Image ids must differ and shapes agree, else
        AnnotationError naming them."""
        if shared := sorted(set(self.image_ids) & set(other.image_ids)):
            raise AnnotationError(f"{len(shared)} images of {other.image_dir} are already in {self.image_dir} "
                                  f"(image ids must differ): {', '.join(shared[:5])}")
        if tuple(other.shape) != tuple(self.shape):
            raise AnnotationError(f"images of {other.image_dir} are {other.shape} (HxW), "
                                  f"those of {self.image_dir} {self.shape}")
        paths = {**self.image_paths, **{i: other.path(i) for i in other.image_ids}}
        return Annotations(self.image_dir, self.image_ids + other.image_ids, {**self.rles, **other.rles},
                           self.shape, paths)

    @property
    def defect_free(self) -> list[str]:
        return [i for i in self.image_ids if not self.rles.get(i)]


def table_to_rles(table: pd.DataFrame) -> dict[str, dict[int, str]]:
    rles: dict[str, dict[int, str]] = {}
    for image_id, class_id, rle in zip(table["ImageId"], table["ClassId"], table["EncodedPixels"]):
        rles.setdefault(image_id, {})[int(class_id)] = rle
    return rles


def write_mask_csv(path, rles: dict[str, dict[int, str]], layout: str = RERELEASED,
                   image_ids=None, submission: bool = False) -> None:
    """Write masks atomically.

    ``layout`` RERELEASED writes only non-empty masks (``ImageId,ClassId,EncodedPixels``),
    unless ``submission`` is set, which writes every (image, class) pair as
    ``ImageId,EncodedPixels,ClassId``. COMPETITION writes 4 rows per image as
    ``ImageId_ClassId,EncodedPixels``. ``image_ids`` fixes the images listed
    (default: those in ``rles``).
    """
    image_ids = sorted(rles) if image_ids is None else list(image_ids)
    records = []
    for image_id in image_ids:
        masks = rles.get(image_id, {})
        for class_id in CLASS_IDS:
            rle = masks.get(class_id, "")
            if layout == COMPETITION:
                records.append({"ImageId_ClassId": f"{image_id}_{class_id}", "EncodedPixels": rle})
            elif submission:
                records.append({"ImageId": image_id, "EncodedPixels": rle, "ClassId": class_id})
            elif rle:
                records.append({"ImageId": image_id, "ClassId": class_id, "EncodedPixels": rle})
    if layout == COMPETITION:
        columns = ["ImageId_ClassId", "EncodedPixels"]
    elif submission:
        columns = ["ImageId", "EncodedPixels", "ClassId"]
    else:
        columns = ["ImageId", "ClassId", "EncodedPixels"]
    atomic_write_text(path, pd.DataFrame(records, columns=columns).to_csv(index=False))


def csv_image_ids(path) -> list[str]:
    """Sorted ids of every image a Severstal csv names, rows with an empty mask
    included (a submission lists its defect-free images that way)."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if detect_layout(raw.columns) == COMPETITION:
        ids = raw["ImageId_ClassId"].str.rsplit("_", n=1).str[0]
    else:
        ids = raw["ImageId"]
    return sorted(set(ids.astype(str).str.strip()))
