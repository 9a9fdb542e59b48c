"""Cross-validation: every fold trains, out-of-fold predictions cover every
training image once, post-processing is tuned on them."""

import json
from pathlib import Path

import pandas as pd
import pytest

import train
from workflows.cross_validation import format_report, run_cv

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_fold_cv_covers_every_image_once(tiny_data, tmp_path):
    overrides = [f"--data.root={tiny_data}", "--data.folds=2", f"--data.split_file={tmp_path / 'split.csv'}",
                 "--data.num_workers=0", "--data.batch_size=4", "--data.val_batch_size=4", "--model.encoder=resnet18",
                 "--data.crop_width=128", "--data.crop_height=128", "--train.epochs=1",
                 "--train.max_steps_per_epoch=1", "--wandb.mode=disabled", "--predict.stride=256"]
    report = run_cv(train.main, REPO / "configs/demo_cpu.yaml", overrides, tmp_path / "cv")

    split = pd.read_csv(tmp_path / "split.csv")
    assert not split["ImageId"].duplicated().any()  # no image in two folds
    images = sorted(p.name for p in (tiny_data / "train_images").iterdir())
    oof = sorted(p.stem for p in (tmp_path / "cv" / "oof").glob("*.npz"))
    assert oof == sorted(Path(i).stem for i in images) and report["n_images"] == len(images)
    assert report["with_postprocess"]["score"] >= report["without_postprocess"]["score"]
    assert json.loads((tmp_path / "cv" / "postprocess.json").read_text()).keys() >= {"threshold", "min_total_area"}
    assert all((tmp_path / "cv" / f"fold{k}" / "best.pt").exists() for k in (0, 1))
    assert "with tuned postprocess" in format_report(report)

    again = run_cv(train.main, REPO / "configs/demo_cpu.yaml", overrides, tmp_path / "cv")  # resumes: nothing to redo
    assert again["with_postprocess"] == report["with_postprocess"]


def test_cv_refuses_capped_data():
    with pytest.raises(ValueError, match="every image"):
        run_cv(train.main, REPO / "configs/demo_cpu.yaml", ["--data.max_val_images=2"], "unused")
