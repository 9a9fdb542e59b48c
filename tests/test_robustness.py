"""scripts/robustness.py: the per-style table (empty, tuned and its gain,
direct), its arguments, and a tiny study of two styles end to end, resumed."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from datasets.severstal import list_images
from inference.scoring import score_csv

REPO = Path(__file__).resolve().parents[1]
robustness = runpy.run_path(str(REPO / "scripts/robustness.py"))


def scores(score: float, per_class: list[float]) -> dict:
    return {"score": score, "per_class": dict(zip("1234", per_class))}


RESULT = {"style": "faint_soft", "n_test_images": 100,
          "empty": scores(0.86, [0.96, 0.99, 0.60, 0.89]),
          "tuned": scores(0.90, [0.97, 0.98, 0.75, 0.90]),
          "direct": scores(0.88, [0.95, 0.99, 0.70, 0.88])}


def row(table: str, label: str) -> list[float]:
    line = next(l for l in table.splitlines() if l.startswith(label + " "))
    return [float(v) for v in line[len(label):].split()]


def test_style_table_gives_empty_tuned_gain_and_direct_overall_and_per_class():
    table = robustness["style_table"](RESULT)
    assert table.splitlines()[0].split() == ["score", "class", "1", "class", "2", "class", "3", "class", "4"]
    assert row(table, "all empty") == [0.86, 0.96, 0.99, 0.60, 0.89]
    assert row(table, "tuned (README path)") == [0.90, 0.97, 0.98, 0.75, 0.90]
    assert row(table, "tuned: gain over empty") == [0.04, 0.01, -0.01, 0.15, 0.01]
    assert row(table, "direct (no postprocess flag)") == [0.88, 0.95, 0.99, 0.70, 0.88]
    assert row(table, "direct: gain over empty") == [0.02, -0.01, 0.0, 0.10, -0.01]


def test_summary_names_the_classes_the_tuned_path_loses():
    lines = robustness["summary_markdown"]([RESULT, {**RESULT, "style": "classic", "tuned": RESULT["empty"]}])
    assert lines.splitlines()[2] == "| faint_soft | 0.8600 | 0.9000 | +0.0400 | 0.8800 | +0.0200 | class 2 |"
    assert lines.splitlines()[3].endswith("| +0.0000 | 0.8800 | +0.0200 | - |")


@pytest.mark.parametrize("argv, message", [
    (["--styles", "classic,shiny"], "unknown styles"),
    (["--data.root=/tmp/x"], "sets data.root and output_dir"),
    (["--epochs", "3"], "overrides look like"),
])
def test_arguments_it_refuses(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        robustness["parse_args"](["--out", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


def test_defaults_are_every_named_style_at_demo_size(tmp_path):
    args, overrides = robustness["parse_args"](["--out", str(tmp_path), "--train.epochs=2"])
    assert args.styles == ["classic", "bright_matte", "dark_rolled", "cross_grain", "faint_soft"]
    assert (args.train, args.test, args.seed, args.config.name) == (800, 100, 0, "demo_cpu.yaml")
    assert overrides == ["--train.epochs=2"]


TINY = ["--train", "24", "--test", "6", "--seed", "0", "--data.num_workers=0", "--data.batch_size=2",
        "--data.val_batch_size=2", "--data.crop_width=128", "--data.crop_height=128", "--model.smp.encoder=resnet18",
        "--train.epochs=1", "--train.max_steps_per_epoch=1", "--wandb.mode=disabled", "--predict.num_workers=0",
        "--predict.tta=none"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_styles_end_to_end_then_resumed(tmp_path, capsys):
    study = tmp_path / "study"
    argv = ["--out", str(study), "--styles", "classic,bright_matte", *TINY]
    results = robustness["main"](argv)
    printed = capsys.readouterr().out
    assert [r["style"] for r in results] == ["classic", "bright_matte"]
    assert printed.count("post-processing: --postprocess.file=") == 2  # the README path, once per style
    for r in results:
        folder = study / r["style"]
        data = folder / "data"
        truth, images = data / "test_truth.csv", list_images(data / "test_images")
        tuned, direct = (score_csv(folder / p / "submission.csv", truth, images) for p in ("tuned", "direct"))
        assert r["tuned"]["score"] == tuned["score"] and r["direct"]["score"] == direct["score"]
        assert r["empty"]["score"] == tuned["empty_baseline"] and r["n_test_images"] == 6
        assert json.loads((data / "synthetic.json").read_text())["style"] == r["style"]
        assert (folder / "cv" / "postprocess.json").is_file() and (folder / "cv" / "fold0" / "best.pt").is_file()
    assert results[0]["style_params"] != results[1]["style_params"]
    report = json.loads((study / "report.json").read_text())
    assert report["styles"] == results
    assert "| bright_matte |" in (study / "report.md").read_text()

    assert robustness["main"](argv) == results  # resumed: every style done before
    assert capsys.readouterr().out.count("done before") == 2
    with pytest.raises(SystemExit, match="was made with"):
        robustness["main"](["--out", str(study), "--styles", "classic", *TINY, "--train.epochs=2"])

    # the transfer matrix of the same study: the diagonal is the study's own
    # README-path result, the rest are new predictions of the other style
    transfer = runpy.run_path(str(REPO / "scripts/transfer_matrix.py"))
    matrix = transfer["main"](["--study", str(study), "--out", str(tmp_path / "transfer")])
    assert matrix["styles"] == ["classic", "bright_matte"]
    for i, r in enumerate(results):
        assert matrix["gains"][i, i] == pytest.approx(r["tuned"]["score"] - r["empty"]["score"])
    off = tmp_path / "transfer" / "predictions" / "classic__on__bright_matte" / "submission.csv"
    data = study / "bright_matte" / "data"
    scored = score_csv(off, data / "test_truth.csv", list_images(data / "test_images"))
    assert matrix["gains"][0, 1] == pytest.approx(scored["score"] - scored["empty_baseline"])
    assert (tmp_path / "transfer" / "matrix.png").stat().st_size > 1000
    capsys.readouterr()
    again = transfer["main"](["--study", str(study), "--out", str(tmp_path / "transfer")])
    assert (again["gains"] == matrix["gains"]).all()
    assert "post-processing" not in capsys.readouterr().out  # every cell read back, nothing predicted


def test_transfer_matrix_table_and_refusals(tmp_path):
    import numpy as np

    transfer = runpy.run_path(str(REPO / "scripts/transfer_matrix.py"))
    table = transfer["markdown"](["a", "b"], np.array([[0.1, -0.02], [0.03, 0.05]]),
                                 np.array([[0.95, 0.83], [0.88, 0.9]]))
    assert table.splitlines()[4] == "| a | +0.100 (0.950) | -0.020 (0.830) | -0.020 |"
    assert table.splitlines()[5] == "| b | +0.030 (0.880) | +0.050 (0.900) | +0.030 |"
    with pytest.raises(SystemExit, match="no finished style"):
        transfer["main"](["--study", str(tmp_path), "--out", str(tmp_path / "t"), "--styles", "a,b"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text("{}")
    with pytest.raises(SystemExit, match="two or more"):
        transfer["main"](["--study", str(tmp_path), "--out", str(tmp_path / "t")])
