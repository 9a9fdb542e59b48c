"""Run a W&B sweep file locally with Optuna, without a W&B server.

    python scripts/sweep.py configs/sweeps/unet.yaml --trials 20 [--study-dir DIR] [--key=value ...]

The sweep's method picks the sampler (bayes: TPE, random: random, grid:
every combination once). Each trial runs the sweep's command (``${args}``
is the trial's ``--key=value`` values, then ``--output_dir=DIR/trial_NNN``,
``--wandb.mode=offline`` and the trial's W&B group and name, then the
``--key=value`` arguments given here, which override those: a data root, an
epoch cap, ``--wandb.mode=disabled``) as a subprocess of this Python, in the
current folder. Parameters and arguments are checked against
core/config.py before any trial starts. Its metrics.jsonl is read while it runs;
every new epoch's metric (the sweep's ``metric.name``, e.g. ``val/score``)
is reported to Optuna, and a trial worse than the median of finished trials
at the same epoch is stopped and marked pruned. A trial that exits non-zero
is marked failed with the tail of its stderr, and the sweep goes on. The
trial's value is its last epoch's metric (what W&B's run summary holds).

The study lives in DIR/study.db (default DIR: runs/sweeps/<sweep name>): a
rerun continues it up to --trials in all. Trials left running by a killed
runner are marked failed; they, and trials stopped by Ctrl-C, do not count
toward --trials. At the end the trials are printed and written to
DIR/trials.csv, and the metric is plotted against each parameter in
DIR/params.png. One runner per study folder at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.ticker import NullFormatter
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from core.cli import parse_with_overrides
from core.files import atomic_write_text
from workflows.hparam_sweep import (
    SweepError,
    SweepSpec,
    check_parameters,
    describe_space,
    load_sweep,
    suggest,
    trial_args,
    trial_command,
)

STDERR_TAIL_LINES = 20


class TrialFailed(Exception):
    """A trial's program exited non-zero or reported no metric."""


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("sweep", type=Path, help="a sweep file in W&B's format (configs/sweeps/*.yaml)")
    p.add_argument("--trials", type=int, required=True, help="trials in the study in all, counting earlier runs")
    p.add_argument("--study-dir", type=Path, help="folder of study.db and the trials (default runs/sweeps/<name>)")
    p.add_argument("--prune-startup-trials", type=int, default=3, help="finished trials before any pruning")
    p.add_argument("--prune-warmup-epochs", type=int, default=2, help="no pruning before this epoch")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often a trial's metrics.jsonl is read")
    return parse_with_overrides(p, argv)


def main(argv=None) -> pd.DataFrame:
    args, overrides = parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        check_parameters(spec, overrides)
    except SweepError as err:
        raise SystemExit(f"sweep error: {err}") from None
    if not Path(spec.program).is_file():
        raise SystemExit(f"sweep error: program {spec.program} not found (run from the repository root)")
    study_dir = args.study_dir or Path("runs/sweeps") / spec.name
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup_trials,
                                         n_warmup_steps=args.prune_warmup_epochs)
    study = open_study(spec, study_dir, pruner)
    remaining = args.trials - len(counted_trials(study))
    if remaining > 0:
        objective = make_objective(spec, study_dir, overrides, args.poll_seconds)
        study.optimize(objective, n_trials=remaining, catch=(TrialFailed,))
    table = trials_table(study, spec)
    atomic_write_text(study_dir / "trials.csv", table.to_csv(index=False))
    plot_params(study, spec, study_dir / "params.png")
    print(printable(table).to_string(index=False))
    print(f"{len(table)} trials: {study_dir / 'trials.csv'}, {study_dir / 'params.png'}")
    return table


# ---------------------------------------------------------------- the study


def open_study(spec: SweepSpec, study_dir: Path, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study in ``study_dir/study.db``, created or loaded, with trials an
    earlier runner left running marked failed; refuses a study of another
    parameter space."""
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=spec.name, load_if_exists=True, pruner=pruner,
                                direction=spec.goal, sampler=optuna.samplers.RandomSampler())
    space = json.loads(json.dumps(describe_space(spec)))
    if study.user_attrs.get("space", space) != space:
        raise SystemExit(f"sweep error: {study_dir} holds a study of another parameter space; "
                         "choose another --study-dir")
    study.set_user_attr("space", space)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)  # a plain sampler here: grid's would stop the study
    study.sampler = make_sampler(spec)
    return study


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.method == "grid":
        return optuna.samplers.GridSampler({name: list(d.choices) for name, d in spec.params.items()})
    return optuna.samplers.TPESampler() if spec.method == "bayes" else optuna.samplers.RandomSampler()


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ran to an outcome; failed ones without a recorded error
    were interrupted (runner killed or stopped) and do not count."""
    return [t for t in study.trials if t.state != TrialState.FAIL or "error" in t.user_attrs]


# ---------------------------------------------------------------- one trial


def make_objective(spec: SweepSpec, study_dir: Path, overrides: list[str], poll_seconds: float):
    def objective(trial: optuna.Trial) -> float:
        name = f"trial_{trial.number:03d}"
        out = study_dir / name
        args = [*trial_args(suggest(trial, spec)), f"--output_dir={out}", "--wandb.mode=offline",
                f"--wandb.group={spec.name}", f"--wandb.name={name}", *overrides]
        trial.set_user_attr("output_dir", str(out))
        return run_trial(trial, trial_command(spec, args), out, spec.metric, poll_seconds)

    return objective


def run_trial(trial: optuna.Trial, command: list[str], out: Path, metric: str, poll_seconds: float) -> float:
    """Run ``command`` (stdout and stderr to files in ``out``), reporting each
    new epoch's ``metric`` to ``trial``; the last epoch's value. Raises
    optuna.TrialPruned (the process stopped) or TrialFailed."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(out / "stdout.log", "w") as stdout, open(out / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        try:
            scores = watch(proc, trial, out / "metrics.jsonl", metric, poll_seconds)
        finally:
            stop(proc)
            trial.set_user_attr("seconds", round(time.time() - started, 1))
            trial.set_user_attr("epochs", len(read_scores(out / "metrics.jsonl", metric)))
    if proc.returncode != 0:
        raise_failed(trial, f"exit status {proc.returncode}:\n{tail(out / 'stderr.log')}")
    if not scores:
        raise_failed(trial, f"no {metric} in {out / 'metrics.jsonl'}")
    return scores[-1][1]


def watch(proc: subprocess.Popen, trial: optuna.Trial, metrics: Path, metric: str,
          poll_seconds: float) -> list[tuple[int, float]]:
    """Poll until ``proc`` exits; [(epoch, metric)] it wrote. Raises
    optuna.TrialPruned as soon as the pruner rejects a running trial."""
    scores: list[tuple[int, float]] = []
    while True:
        finished = proc.poll() is not None
        new = read_scores(metrics, metric)[len(scores):]
        for epoch, score in new:
            trial.report(score, epoch)
        scores += new
        if finished:
            return scores
        if new and trial.should_prune():
            raise optuna.TrialPruned(f"{metric} {new[-1][1]:.4f} at epoch {new[-1][0]}")
        time.sleep(poll_seconds)


def read_scores(metrics: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of every complete line of a metrics.jsonl; ``metric``
    is a '/'-separated path into each record."""
    if not metrics.exists():
        return []
    lines = metrics.read_text().split("\n")[:-1]  # the last item is a line still being written, or ""
    records = [json.loads(line) for line in lines if line.strip()]
    scores = []
    for record in records:
        value = record
        for key in metric.split("/"):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            scores.append((record["epoch"], float(value)))
    return scores


def stop(proc: subprocess.Popen, grace_seconds: float = 30.0) -> None:
    """Terminate ``proc`` if it still runs; kill it if it outlives the grace period."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def raise_failed(trial: optuna.Trial, error: str) -> None:
    trial.set_user_attr("error", error)
    raise TrialFailed(error)


# ---------------------------------------------------------------- the report


def trials_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs, seconds, each
    parameter, output_dir, error (interrupted trials say so)."""
    rows = []
    for t in study.trials:
        interrupted = "interrupted" if t.state == TrialState.FAIL else ""
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds"),
                     **{name: t.params.get(name) for name in spec.params},
                     "output_dir": t.user_attrs.get("output_dir"), "error": t.user_attrs.get("error", interrupted)})
    return pd.DataFrame(rows, columns=["trial", "state", "value", "epochs", "seconds", *spec.params,
                                       "output_dir", "error"])


def printable(table: pd.DataFrame) -> pd.DataFrame:
    """The table for a terminal: each error cut to its last line."""
    short = table["error"].fillna("").map(lambda e: e.strip().splitlines()[-1][:80] if e.strip() else "")
    return table.drop(columns=["output_dir"]).assign(error=short)


def plot_params(study: optuna.Study, spec: SweepSpec, path: Path) -> None:
    """One subplot per parameter: the metric of completed trials (filled) and
    pruned ones (their last epoch, hollow) against the parameter's value;
    categorical parameters as evenly spaced categories, numeric ones with
    the searched range dotted."""
    fig, axes = plt.subplots(1, len(spec.params), figsize=(4 * len(spec.params), 3.5), squeeze=False)
    for ax, (name, dist) in zip(axes[0], spec.params.items()):
        for state, style in ((TrialState.COMPLETE, {"c": "C0"}), (TrialState.PRUNED, {"facecolors": "none",
                                                                                       "edgecolors": "C3"})):
            trials = [t for t in study.trials if t.state == state and t.value is not None]
            xs = [position(dist, t.params[name]) for t in trials]
            ax.scatter(xs, [t.value for t in trials], label=state.name.lower(), **style)
        format_axis(ax, name, dist)
        ax.set_ylabel(spec.metric)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def position(dist, value):
    return list(dist.choices).index(value) if isinstance(dist, CategoricalDistribution) else value


def format_axis(ax, name: str, dist) -> None:
    ax.set_title(name)
    if isinstance(dist, CategoricalDistribution):
        ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
        ax.set_xlim(-0.5, len(dist.choices) - 0.5)
    else:
        for bound in (dist.low, dist.high):  # the searched range, which also sets the limits of an empty axis
            ax.axvline(bound, color="0.8", linestyle=":")
        if dist.log:
            ax.set_xscale("log")
            ticks = np.geomspace(dist.low, dist.high, 4)  # a range under two decades gets labelled minor
            ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])  # ticks that overlap: label these instead
            ax.xaxis.set_minor_formatter(NullFormatter())


if __name__ == "__main__":
    main(sys.argv[1:])
