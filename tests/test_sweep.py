"""Sweeps: the sweep files, their parameter space as W&B and Optuna read it,
and the local Optuna runner (table, picture, pruning, failures, resume) on a
fake program and on the real train.py."""

import json
import runpy
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args, load_sweep_config
from wandb.sdk.sweeps.scheduler.optuna import search_space_from_sweep_config

from workflows.hparam_sweep import (
    SweepError,
    check_parameters,
    describe,
    describe_space,
    load_sweep,
    suggest,
    sweep_output_dir,
    to_distribution,
    trial_args,
    trial_command,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "configs/sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
SWEEP_SCRIPT = runpy.run_path(str(REPO / "scripts/sweep.py"))
run_sweep = SWEEP_SCRIPT["main"]

# A stand-in for train.py: writes one metrics.jsonl line per epoch whose
# val/score is --loss.focal, sleeping a little between epochs; exits 1 with a
# message on stderr when --loss.lovasz is positive.
FAKE_TRAIN = """
import json, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
if float(args.get("loss.lovasz", 0)) > 0:
    sys.exit("boom: lovasz asked for")
out = Path(args["output_dir"])
for epoch in range(1, int(args.get("train.epochs", 2)) + 1):
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "val": {"score": float(args.get("loss.focal", 0.5))}}) + "\\n")
    time.sleep(0.03)
"""

FAKE_PARAMETERS = {
    "optim.lr": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 1.0e-2},
    "loss.dice": {"values": [0.0, 0.5]},
}


def write_sweep(folder: Path, program, parameters=None, method="random", command=COMMAND) -> Path:
    spec = {"name": "test", "program": str(program), "method": method,
            "metric": {"name": "val/score", "goal": "maximize"},
            "parameters": parameters or FAKE_PARAMETERS, "command": command}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE_TRAIN)
    return write_sweep(tmp_path, program)


def run_fake(sweep: Path, trials: int, *overrides, method_args=()) -> pd.DataFrame:
    study_dir = sweep.parent / "study"
    return run_sweep([str(sweep), "--trials", str(trials), "--study-dir", str(study_dir), "--poll-seconds", "0.05",
                      "--prune-startup-trials", "2", "--prune-warmup-epochs", "1", *method_args, *overrides])


def stored_trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{sweep.parent / 'study' / 'study.db'}"
    return optuna.load_study(study_name="test", storage=storage).trials


# ---------------------------------------------------------------- sweep files


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_runnable_by_both_runners(path):
    spec = load_sweep(path)
    check_parameters(spec)  # every parameter a config key taking its values
    assert (spec.program, spec.metric, spec.goal) == ("train.py", "val/tuned/score", "maximize")
    assert spec.command[:3] == COMMAND[:3] and spec.command[-1] == "${args}"
    config = spec.command[spec.command.index("--config") + 1]
    assert (REPO / config).is_file()


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_space_equals_wandbs_own_conversion(path):
    wandb_space = search_space_from_sweep_config(load_sweep_config(str(path))["parameters"])
    assert {name: describe(d) for name, d in wandb_space.items()} == describe_space(load_sweep(path))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_space_follows_wandb_semantics(path):
    raw = yaml.safe_load(path.read_text())["parameters"]
    space = describe_space(load_sweep(path))
    assert list(space) == list(raw)
    for name, param in raw.items():
        if "values" in param:
            assert space[name] == {"type": "categorical", "choices": param["values"]}
        else:
            log = param["distribution"] == "log_uniform_values"
            assert param["distribution"] in ("uniform", "log_uniform_values")
            assert space[name] == {"type": "float", "low": param["min"], "high": param["max"], "log": log,
                                   "step": None}


@pytest.mark.parametrize("param, expected", [
    ({"values": ["a", "b"]}, {"type": "categorical", "choices": ["a", "b"]}),
    ({"distribution": "categorical", "values": [1, 2]}, {"type": "categorical", "choices": [1, 2]}),
    ({"value": 3}, {"type": "categorical", "choices": [3]}),
    ({"distribution": "constant", "value": "x"}, {"type": "categorical", "choices": ["x"]}),
    ({"distribution": "uniform", "min": 0, "max": 2}, {"type": "float", "low": 0, "high": 2, "log": False,
                                                       "step": None}),
    ({"distribution": "int_uniform", "min": 1, "max": 4}, {"type": "int", "low": 1, "high": 4, "log": False,
                                                           "step": 1}),
    ({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
     {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None}),
    ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
     {"type": "float", "low": 0.0, "high": 1.0, "log": False, "step": 0.25}),
    ({"distribution": "q_uniform", "min": 128, "max": 512, "q": 128},
     {"type": "int", "low": 128, "high": 512, "log": False, "step": 128}),
    ({"min": 2, "max": 8}, {"type": "int", "low": 2, "high": 8, "log": False, "step": 1}),
    ({"min": 0.1, "max": 0.9}, {"type": "float", "low": 0.1, "high": 0.9, "log": False, "step": None}),
])
def test_each_distribution_as_wandb_means_it(param, expected):
    ours = describe(to_distribution("p", param))
    assert ours == expected
    assert ours == describe(search_space_from_sweep_config({"p": param})["p"])


@pytest.mark.parametrize("param, message", [
    ({"distribution": "normal", "mu": 0, "sigma": 1}, "'optim.lr': distribution 'normal' is not supported"),
    ({"distribution": "log_uniform", "min": -9, "max": -2}, "log_uniform_values"),
    ({"distribution": "uniform", "min": 0.1}, "needs 'max'"),
    ({"distribution": "uniform", "min": 1.0, "max": 0.1}, "'optim.lr'"),
    ({"values": []}, "non-empty list"),
    ({"parameters": {"lr": {"value": 1}}}, "nested"),
])
def test_unsupported_parameter_fails_naming_it(param, message):
    with pytest.raises(SweepError, match=message):
        to_distribution("optim.lr", param)


def test_unknown_or_mistyped_key_fails_before_any_trial(tmp_path):
    sweep = write_sweep(tmp_path, REPO / "train.py", {"optim.lrr": {"values": [0.1]}})
    with pytest.raises(SystemExit, match="unknown key 'optim.lrr'"):
        run_sweep([str(sweep), "--trials", "1", "--study-dir", str(tmp_path / "study")])
    assert not (tmp_path / "study").exists()
    mistyped = load_sweep(write_sweep(tmp_path, "train.py", {"data.crop_width": {"min": 128.0, "max": 512.0}}))
    with pytest.raises(SweepError, match="data.crop_width.*must be int"):
        check_parameters(mistyped)


def test_architecture_refusing_the_configs_arguments_fails_before_any_trial(tmp_path):
    """demo_cpu.yaml's FPN widths are not a Unet's arguments: the model each
    value builds is checked too, not only the config keys."""
    command = [*COMMAND[:3], "--config", str(REPO / "configs/demo_cpu.yaml"), "${args}"]
    spec = load_sweep(write_sweep(tmp_path, "train.py", {"model.smp.arch": {"values": ["FPN", "Unet"]}}, command=command))
    check_parameters(spec, ["--model.smp.arch_kwargs={}"])  # every architecture at smp's widths
    with pytest.raises(SweepError, match="'model.smp.arch' = 'Unet'.*arch_kwargs.decoder_pyramid_channels: Unet takes no"):
        check_parameters(spec)


def test_override_of_a_swept_key_is_refused(fake_sweep):
    with pytest.raises(SweepError, match="loss.dice"):
        check_parameters(load_sweep(fake_sweep), ["--loss.dice=0.3"])


@pytest.mark.parametrize("change, message", [
    ({"method": "grid"}, "grid needs every parameter given as values or value; not \\['optim.lr'\\]"),
    ({"method": "hyperband"}, "method must be one of"),
    ({"command": ["${env}", "${interpreter}", "${program}", "${args_json}"]}, "must contain \\$\\{args\\}"),
    ({"command": ["${interpreter}", "${program}", "${args_no_hyphens}", "${args}"]}, "args_no_hyphens"),
    ({"metric": {"goal": "maximize"}}, "metric.name"),
])
def test_bad_sweep_file_fails_clearly(tmp_path, change, message):
    spec = yaml.safe_load(write_sweep(tmp_path, "train.py").read_text()) | change
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load_sweep(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- trial plumbing


def test_trial_args_are_what_the_wandb_agent_passes():
    values = {"optim.lr": 1e-05, "loss.dice": 0.25, "model.smp.encoder": "resnet18", "data.crop_width": 512}
    agent = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    assert trial_args(values) == agent == ["--optim.lr=1e-05", "--loss.dice=0.25", "--model.smp.encoder=resnet18",
                                           "--data.crop_width=512"]


def test_trial_command_expands_macros_and_keeps_literals(tmp_path):
    command = ["${env}", "${interpreter}", "${program}", "--config", "c.yaml", "${args}"]
    spec = load_sweep(write_sweep(tmp_path, "train.py", command=command))
    assert trial_command(spec, ["--a.b=1"]) == [sys.executable, "train.py", "--config", "c.yaml", "--a.b=1"]


def test_suggest_draws_inside_the_space(fake_sweep):
    spec = load_sweep(fake_sweep)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        values = suggest(study.ask(), spec)
        assert 1e-4 <= values["optim.lr"] <= 1e-2 and values["loss.dice"] in (0.0, 0.5)


def test_sweep_output_dir_is_per_run_under_an_agent_only(monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    assert sweep_output_dir("runs/x") == "runs/x"
    monkeypatch.setenv("WANDB_RUN_ID", "r1")
    assert sweep_output_dir("runs/x") == "runs/x"  # a resumed plain run, not a sweep
    monkeypatch.setenv("WANDB_SWEEP_ID", "s9")
    assert Path(sweep_output_dir("runs/x")) == Path("runs/x/sweep-s9/r1")


# ---------------------------------------------------------------- the local runner


def test_log_axis_labels_four_ticks_across_the_range():
    """Under two decades matplotlib labels minor ticks, which overlapped
    (3e-4 .. 3e-3); the axis labels four log-spaced values instead."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    SWEEP_SCRIPT["format_axis"](ax, "optim.lr", FloatDistribution(3e-4, 3e-3, log=True))
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0003", "0.00065", "0.0014", "0.003"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    plt.close(fig)


def test_local_sweep_writes_table_and_picture(fake_sweep):
    table = run_fake(fake_sweep, 2, "--loss.focal=0.7", "--wandb.mode=disabled")
    study = fake_sweep.parent / "study"
    assert list(table["state"]) == ["complete", "complete"] and list(table["value"]) == [0.7, 0.7]
    assert list(table["epochs"]) == [2, 2]
    on_disk = pd.read_csv(study / "trials.csv")
    assert list(on_disk.columns) == ["trial", "state", "value", "epochs", "seconds", "optim.lr", "loss.dice",
                                     "output_dir", "error"]
    assert on_disk["optim.lr"].between(1e-4, 1e-2).all() and set(on_disk["loss.dice"]) <= {0.0, 0.5}
    assert (study / "params.png").read_bytes()[:4] == b"\x89PNG"
    for n in (0, 1):
        assert (study / f"trial_{n:03d}" / "metrics.jsonl").is_file()


def test_rerun_continues_the_study_up_to_the_total(fake_sweep):
    first = run_fake(fake_sweep, 2, "--loss.focal=0.7")
    second = run_fake(fake_sweep, 3, "--loss.focal=0.7")
    assert list(second["trial"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(second.iloc[:2], first)
    assert len(run_fake(fake_sweep, 3)) == 3  # already complete: no new trial


def test_trial_worse_than_the_median_is_pruned(fake_sweep):
    run_fake(fake_sweep, 2, "--loss.focal=0.9", "--train.epochs=3")
    table = run_fake(fake_sweep, 3, "--loss.focal=0.1", "--train.epochs=300")  # 300 epochs take 9 s unpruned
    bad = table.iloc[2]
    assert bad["state"] == "pruned" and bad["value"] == 0.1
    assert bad["epochs"] < 300  # stopped, not run to the end


def test_failing_trial_is_recorded_and_the_sweep_goes_on(fake_sweep):
    table = run_fake(fake_sweep, 2, "--loss.lovasz=1.0")
    assert list(table["state"]) == ["fail", "fail"]
    assert all("exit status 1" in e and "boom: lovasz asked for" in e for e in table["error"])
    table = run_fake(fake_sweep, 3)  # failures count toward --trials
    assert list(table["state"]) == ["fail", "fail", "complete"]


def test_trial_left_running_by_a_killed_runner_is_failed_and_not_counted(fake_sweep):
    storage = f"sqlite:///{fake_sweep.parent / 'study' / 'study.db'}"
    (fake_sweep.parent / "study").mkdir()
    optuna.create_study(study_name="test", storage=storage, direction="maximize").ask()  # never told
    table = run_fake(fake_sweep, 1)
    assert list(table["state"]) == ["fail", "complete"] and table["error"][0] == "interrupted"
    assert [t.state for t in stored_trials(fake_sweep)] == [TrialState.FAIL, TrialState.COMPLETE]


def test_grid_runs_each_combination_once(tmp_path):
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE_TRAIN)
    sweep = write_sweep(tmp_path, program, {"loss.dice": {"values": [0.0, 0.5]}, "loss.bce": {"value": 1.0}},
                        method="grid")
    table = run_fake(sweep, 5)
    assert sorted(table["loss.dice"]) == [0.0, 0.5] and set(table["state"]) == {"complete"}


def test_study_of_another_space_is_not_continued(fake_sweep):
    run_fake(fake_sweep, 1)
    write_sweep(fake_sweep.parent, fake_sweep.parent / "fake_train.py", {"loss.dice": {"values": [0.1]}})
    with pytest.raises(SystemExit, match="another parameter space"):
        run_fake(fake_sweep, 2)


@pytest.mark.slow  # two train.py runs: 40-90 s on two shared cores
def test_local_sweep_of_the_real_train_py(tmp_path):
    from datasets.synthetic import make_dataset

    data = tmp_path / "data"
    make_dataset(data, n_train=16, n_test=4, seed=0, workers=1, progress=False)
    command = ["${env}", "${interpreter}", "${program}", "--config", str(REPO / "configs/demo_cpu.yaml"), "${args}"]
    sweep = write_sweep(tmp_path, REPO / "train.py", method="bayes", command=command)
    table = run_fake(sweep, 2, f"--data.root={data}", "--data.num_workers=0", "--data.batch_size=4",
                     "--data.val_batch_size=2", "--data.max_val_images=2", "--data.crop_width=128",
                     "--data.crop_height=128", "--model.smp.encoder=resnet18", "--train.epochs=1",
                     "--train.max_steps_per_epoch=1", "--wandb.mode=disabled")
    assert list(table["state"]) == ["complete", "complete"], table["error"].tolist()
    assert table["value"].between(0, 1).all()
    for _, trial in table.iterrows():
        out = Path(trial["output_dir"])
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["output_dir"] == str(out) and (out / "best.pt").is_file()
        assert config["optim"]["lr"] == pytest.approx(trial["optim.lr"])
        assert config["loss"]["dice"] == trial["loss.dice"]
        assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (tmp_path / "study" / "params.png").is_file()


def test_logger_applies_a_sweeps_dotted_keys_only_under_a_sweep():
    """What an agent launched without ${args} leaves in the run's W&B config;
    the return value tells train.py whether to check the model again."""
    from types import SimpleNamespace

    from core.config import Config
    from training.logger import RunLogger

    class RunConfig(dict):  # wandb.Config: a mapping with update(..., allow_val_change)
        def update(self, values, allow_val_change=False):
            super().update(values)

    logger, cfg = RunLogger(Config(), is_main=False), Config()
    assert logger.sweep_overrides(cfg) is False  # no W&B run
    logger.run = SimpleNamespace(sweep_id=None, config=RunConfig({"model.smp.arch_kwargs.upsampling": 2}))
    assert logger.sweep_overrides(cfg) is False and cfg.model.smp.arch_kwargs == {}  # a run outside a sweep
    logger.run.sweep_id = "s1"
    assert logger.sweep_overrides(cfg) is True and cfg.model.smp.arch_kwargs == {"upsampling": 2}
