"""The pipeline on real pixels: the 30 public Severstal strips of
../shared/real/sample_strips with their 40 masks, laid out as the Kaggle folder,
go through one training step of the real train.py, predict.py and the scorer.
Skipped, saying where it looked, when the real data is not next to the
repository (or under $SEVERSTAL_REAL_DIR)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import predict
import train
from core.checkpoint import load_checkpoint
from datasets.io import read_image
from datasets.real_shapes import real_data_dir
from datasets.rle import rle_decode
from datasets.severstal import Annotations, list_images, read_mask_table, table_to_rles
from inference.metrics import dice_from_counts, kaggle_score, pair_counts
from inference.scoring import score_csv

REPO = Path(__file__).resolve().parents[1]
REAL = real_data_dir()
STRIPS, LABELS = REAL / "sample_strips", REAL / "sample_strips_train.csv"
N_STRIPS, N_MASKS = 30, 40

pytestmark = [
    pytest.mark.skipif(not (STRIPS.is_dir() and LABELS.is_file()),
                       reason=f"real strips not found: {STRIPS} and {LABELS} (set SEVERSTAL_REAL_DIR)"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory):
    """The strips (symlinked) and their labels as train.csv, in the Kaggle layout."""
    root = tmp_path_factory.mktemp("real")
    (root / "train_images").mkdir()
    for name in list_images(STRIPS):
        (root / "train_images" / name).symlink_to(STRIPS / name)
    shutil.copy(LABELS, root / "train.csv")
    return root


def test_the_real_strips_and_their_labels(kaggle_root):
    annotations = Annotations.load(kaggle_root / "train.csv", kaggle_root / "train_images")
    assert len(annotations.image_ids) == N_STRIPS
    classes = [c for i in annotations.image_ids for c in annotations.classes_present(i)]
    assert len(classes) == N_MASKS and {c: classes.count(c) for c in set(classes)} == {2: 1, 3: 20, 4: 19}
    image = read_image(annotations.path(annotations.image_ids[0]))
    assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
    masks = annotations.masks(annotations.image_ids[0])
    assert masks.shape == (4, 256, 1600) and masks.any()


def test_one_training_step_then_predict_and_score_the_real_strips(kaggle_root, tmp_path):
    run = tmp_path / "run"
    record = train.main([
        "--config", str(REPO / "configs/demo_cpu.yaml"), f"--data.root={kaggle_root}", f"--output_dir={run}",
        f"--data.split_file={tmp_path / 'split.csv'}",
        "--data.num_workers=0", "--data.batch_size=2", "--data.val_batch_size=2", "--data.max_val_images=2",
        "--data.crop_width=128", "--data.crop_height=128", "--model.smp.encoder=resnet18",
        "--train.epochs=1", "--train.max_steps_per_epoch=1", "--wandb.mode=disabled", "--predict.num_workers=0"])
    assert record["step"] == 1 and all(np.isfinite(v) for v in record["train"].values())
    assert load_checkpoint(run / "best.pt")["step"] == 1

    out = tmp_path / "pred"
    summary = predict.main(["--checkpoint", str(run / "best.pt"), "--images", str(STRIPS), "--out", str(out),
                            "--full-frame", "--predict.tta=none"])
    assert summary.n_written == N_STRIPS and not summary.skipped

    result = score_csv(out / "submission.csv", LABELS, list_images(STRIPS))
    assert result["n_images"] == N_STRIPS
    assert result["empty_baseline"] == pytest.approx(1 - N_MASKS / (4 * N_STRIPS))
    # the scorer's run arithmetic against decoded masks and inference.metrics
    pred, truth = (table_to_rles(read_mask_table(p)) for p in (out / "submission.csv", LABELS))
    counts = np.concatenate([pair_counts(decoded(pred, i), decoded(truth, i)) for i in list_images(STRIPS)])
    expected = kaggle_score(dice_from_counts(counts))
    assert result["score"] == pytest.approx(expected["score"], abs=1e-12)
    assert result["per_class"] == pytest.approx(expected["per_class"], abs=1e-12)


def decoded(rles: dict, image_id: str) -> np.ndarray:
    """uint8 [4, 256, 1600] masks of ``image_id`` from ``{image: {class: rle}}``."""
    return np.stack([rle_decode(rles.get(image_id, {}).get(c, "")) for c in (1, 2, 3, 4)])
