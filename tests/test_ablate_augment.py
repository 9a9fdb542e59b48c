"""scripts/ablate_augment.py: its any-defect rates against scikit-learn, the
report's statistics, the low-data setting's strips, the recipes, and a tiny
study end to end, resumed (slow)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import precision_score, recall_score

from core.config import load_config
from datasets.severstal import list_images, read_mask_table, table_to_rles
from inference.scoring import score_csv
from training.data import load_run_data

REPO = Path(__file__).resolve().parents[1]
ablate = runpy.run_path(str(REPO / "scripts/ablate_augment.py"))


def write_csv(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(path, index=False)
    return path


def test_any_defect_rates_are_image_level_recall_and_precision(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"{i:03d}.jpg" for i in range(40)]
    has, said = rng.random((40, 4)) < 0.3, rng.random((40, 4)) < 0.3
    truth = write_csv(tmp_path / "truth.csv", [(i, c + 1, "1 5") for k, i in enumerate(ids) for c in range(4)
                                               if has[k, c]])
    pred = write_csv(tmp_path / "pred.csv", [(i, c + 1, "7 3" if said[k, c] else "") for k, i in enumerate(ids)
                                             for c in range(4)])  # a submission: every pair, empty where absent
    rates = ablate["any_defect_rates"](pred, truth, ids)
    for c in range(4):
        got = rates[str(c + 1)]
        assert got["recall"] == pytest.approx(recall_score(has[:, c], said[:, c]))
        assert got["precision"] == pytest.approx(precision_score(has[:, c], said[:, c]))
        assert (got["truth"], got["predicted"]) == (has[:, c].sum(), said[:, c].sum())


def test_rates_are_none_where_a_class_is_absent_or_never_said(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", [("a.jpg", 3, "1 5")])
    pred = write_csv(tmp_path / "pred.csv", [("a.jpg", 1, "1 5")])
    rates = ablate["any_defect_rates"](pred, truth, ["a.jpg", "b.jpg"])
    assert rates["1"] == {"recall": None, "precision": 0.0, "truth": 0, "predicted": 1}
    assert rates["3"] == {"recall": 0.0, "precision": None, "truth": 1, "predicted": 0}


def cell(variant: str, seed: int, score: float, dice2: float, recall2) -> dict:
    any_defect = {str(c): {"recall": 1.0, "precision": 1.0, "truth": 2, "predicted": 2} for c in (1, 2, 3, 4)}
    any_defect["2"]["recall"] = recall2
    return {"setting": "full", "variant": variant, "seed": seed, "score": score,
            "per_class": {"1": 0.9, "2": dice2, "3": 0.8, "4": 0.95}, "empty_baseline": 0.81,
            "any_defect": any_defect, "n_heldout": 89, "machine": "test machine"}


def test_report_gives_mean_and_sample_spread_over_seeds():
    results = [cell("none", 0, 0.85, 0.5, 0.25), cell("none", 1, 0.87, 0.7, 0.75), cell("none", 2, 0.86, 0.6, None),
               cell("copy_paste", 0, 0.9, 0.8, 1.0)]
    report = ablate["report_markdown"](results, "python scripts/ablate_augment.py --out X")
    lines = {l.split("|")[2].strip(): [v.strip() for v in l.split("|")[3:-1]] for l in report.splitlines()
             if l.startswith("| full |")}
    n, score, *dice = lines["none"][:6]
    assert n == "3" and score == f"{np.mean([0.85, 0.87, 0.86]):.3f} ± {np.std([0.85, 0.87, 0.86], ddof=1):.3f}"
    assert dice[1] == f"{0.6:.3f} ± {np.std([0.5, 0.7, 0.6], ddof=1):.3f}"
    assert lines["none"][7] == f"{0.5:.3f} ± {np.std([0.25, 0.75], ddof=1):.3f}"  # a seed without the class is left out
    assert lines["copy_paste"][:2] == ["1", "0.900"]  # one seed: no spread
    assert "all-empty score 0.8100" in report and "89 strips" in report


def test_cells_run_seed_major_and_the_recipes_differ():
    args = SimpleNamespace(settings=["low", "full"], seeds=[0, 1], variants=["none", "gan"])
    assert ablate["cells"](args)[:4] == [("low", "none", 0), ("low", "gan", 0), ("low", "none", 1), ("low", "gan", 1)]
    args, overrides = ablate["parse_args"](["--out", "x", "--train.epochs=2"])
    assert args.recipe == "demo" and overrides == ["--train.epochs=2"]
    assert "--train.max_steps_per_epoch=25" in ablate["RECIPES"]["reduced"]
    assert not any(f.startswith("--train.") for f in ablate["RECIPES"]["demo"])  # the demo config as it is


@pytest.mark.parametrize("argv, message", [(["--variants", "none,mixup"], "unknown settings or variants ['mixup']"),
                                           (["--recipe", "quick"], "invalid choice: 'quick'")])
def test_arguments_it_refuses(capsys, argv, message):
    with pytest.raises(SystemExit):
        ablate["parse_args"](["--out", "x", *argv])
    assert message in capsys.readouterr().err


def split_of(root: Path) -> pd.DataFrame:
    """The data's 5-fold split (seed 42), which the study reads: written on first use."""
    load_run_data(load_config(REPO / "configs/demo_cpu.yaml", [f"--data.root={root}"]))
    return pd.read_csv(root / "folds_k5_s42.csv")


def test_low_setting_drops_class2_training_strips_only(tiny_data, tmp_path):
    folds = split_of(tiny_data)
    rles = table_to_rles(read_mask_table(tiny_data / "train.csv"))
    train_ids = set(folds.loc[folds["fold"] != 0, "ImageId"])
    class2 = sorted(i for i in train_ids if 2 in rles.get(i, {}))
    args = SimpleNamespace(data=tiny_data, out=tmp_path, low_class2=min(1, len(class2)))
    root, split = ablate["setting_data"]("low", args)
    kept = set(list_images(root / "train_images"))
    dropped = set((root / "dropped.txt").read_text().split())
    assert len(dropped) == len(class2) - args.low_class2 and dropped <= set(class2)
    assert kept == set(list_images(tiny_data / "train_images")) - dropped
    low_folds = pd.read_csv(split)
    assert set(low_folds.loc[low_folds["fold"] == 0, "ImageId"]) == set(folds.loc[folds["fold"] == 0, "ImageId"])
    assert set(read_mask_table(root / "train.csv")["ImageId"]) & dropped == set()
    assert ablate["setting_data"]("full", args) == (tiny_data, tiny_data / "folds_k5_s42.csv")


TINY = ["--recipe", "reduced", "--data.num_workers=0", "--data.batch_size=2", "--data.val_batch_size=2",
        "--data.crop_width=128", "--data.crop_height=128", "--model.smp.encoder=resnet18", "--train.epochs=1",
        "--train.max_steps_per_epoch=1", "--train.val_every=1", "--data.max_val_images=4", "--predict.num_workers=0",
        "--predict.tta=none"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_study_end_to_end_then_resumed(tiny_data, tmp_path, capsys):
    split_of(tiny_data)
    study = tmp_path / "study"
    argv = ["--out", str(study), "--data", str(tiny_data), "--settings", "full", "--seeds", "0,1",
            "--variants", "none,copy_paste", *TINY]
    results = ablate["main"](argv)
    assert [(r["variant"], r["seed"]) for r in results] == [("none", 0), ("copy_paste", 0), ("none", 1),
                                                            ("copy_paste", 1)]
    truth, images = tiny_data / "test_truth.csv", list_images(tiny_data / "test_images")
    for r in results:
        folder = study / "full" / r["variant"] / f"seed{r['seed']}"
        assert r["score"] == score_csv(folder / "pred" / "submission.csv", truth, images)["score"]
        config = yaml.safe_load((folder / "run" / "config.yaml").read_text())
        assert config["train"]["seed"] == r["seed"]
        assert (config["augment"]["copy_paste"]["p"] > 0) == (r["variant"] == "copy_paste")
    settings = json.loads((study / "settings.json").read_text())
    assert settings["recipe"] == "reduced" and settings["recipe_flags"] == ablate["RECIPES"]["reduced"]
    assert json.loads((study / "report.json").read_text())["cells"] == results
    assert "| full | copy_paste | 2 |" in (study / "report.md").read_text()
    capsys.readouterr()
    assert ablate["main"](argv) == results  # resumed: every cell read back, nothing trained
    assert capsys.readouterr().out.count("done before") == 4
    with pytest.raises(SystemExit, match="was made with"):
        ablate["main"]([*argv, "--train.epochs=2"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_study_with_the_gan(tiny_data, tmp_path):
    """The gan and both cells: the setting's GAN is trained once on its
    training strips, its strips are synthesised once and both cells train on
    them as extra data (never validation); both adds copy-paste."""
    split_of(tiny_data)
    study = tmp_path / "study"
    argv = ["--out", str(study), "--data", str(tiny_data), "--settings", "full", "--seeds", "0",
            "--variants", "gan,both", "--gan-steps", "2", "--gan-per-class", "1:2,2:2", *TINY]
    results = ablate["main"](argv)
    assert [(r["variant"], r["seed"]) for r in results] == [("gan", 0), ("both", 0)]
    synth = study / "full" / "synth"
    assert sorted(list_images(synth / "train_images")) == ["gan_c1_00000.jpg", "gan_c1_00001.jpg",
                                                           "gan_c2_00000.jpg", "gan_c2_00001.jpg"]
    gan_config = yaml.safe_load((study / "full" / "gan_model" / "config.yaml").read_text())
    assert gan_config["train"]["steps"] == 2 and gan_config["train"]["classes"] == [1, 2]
    assert gan_config["model"]["disc_input"] == "standardised"
    for r in results:
        config = yaml.safe_load((study / "full" / r["variant"] / "seed0" / "run" / "config.yaml").read_text())
        assert Path(config["data"]["extra_root"]) == synth
        assert (config["augment"]["copy_paste"]["p"] > 0) == (r["variant"] == "both")
        data = load_run_data(load_config(base=config))
        assert set(data.train_ids) >= set(list_images(synth / "train_images"))
        assert not set(data.val_ids) & set(list_images(synth / "train_images"))
