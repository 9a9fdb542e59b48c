"""Hyper-parameter sweeps: one sweep file in W&B's format, two runners.

A sweep file (``configs/sweeps/*.yaml``) is what ``wandb sweep`` reads:
``program``, ``method`` (bayes | random | grid), ``metric: {name, goal}``,
``parameters`` keyed by dotted config keys (``optim.lr``) and a ``command``
ending in ``${args}``, which W&B's agent expands to ``--key=value``
arguments (exactly what train.py reads). ``scripts/sweep.py`` runs the same
file locally with Optuna; this module holds what both runners share: the
parameter space, the trial arguments, the trial command and the per-trial
output folder under a W&B agent.

Supported parameter forms, with W&B's meaning (and Optuna's equivalent, the
one W&B's own Optuna scheduler uses):

- ``values: [...]`` or ``distribution: categorical``: one of the values;
- ``value: x`` or ``distribution: constant``: always x;
- ``distribution: uniform`` (min, max): a float in [min, max];
- ``distribution: int_uniform`` (min, max): an int in [min, max];
- ``distribution: log_uniform_values`` (min, max): a float, uniform in log;
- ``distribution: q_uniform`` (min, max, q = 1): uniform on the grid
  min, min + q, ...; ints when min, max and q are all ints;
- no ``distribution`` with min and max: int_uniform when both are ints,
  else uniform (W&B's inference).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from core.config import ConfigError, load_config
from models import check_model_config

METHODS = ("bayes", "random", "grid")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("categorical", "constant", "uniform", "int_uniform", "log_uniform_values", "q_uniform")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default
MACROS = ("${env}", "${interpreter}", "${program}", "${args}")


class SweepError(ValueError):
    """A sweep file or sweep argument that cannot be run, with the reason."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file. ``params`` maps dotted config keys to Optuna
    distributions, in file order; ``metric`` is a '/'-separated path into a
    metrics.jsonl record (``val/score`` is ``record["val"]["score"]``)."""

    name: str
    method: str
    metric: str
    goal: str
    program: str
    command: list[str]
    params: dict[str, BaseDistribution]


def load_sweep(path) -> SweepSpec:
    """Read and check a sweep file; raises SweepError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: not a sweep file (a YAML mapping with program, method, metric, parameters)")
    metric = raw.get("metric") if isinstance(raw.get("metric"), dict) else {}
    params = raw.get("parameters") if isinstance(raw.get("parameters"), dict) else {}
    spec = SweepSpec(
        name=str(raw.get("name") or path.stem), method=raw.get("method"), metric=metric.get("name"),
        goal=metric.get("goal", "minimize"), program=raw.get("program"),
        command=[str(c) for c in raw.get("command") or DEFAULT_COMMAND],
        params={name: to_distribution(name, p) for name, p in params.items()},
    )
    _check_spec(spec, path)
    return spec


def _check_spec(spec: SweepSpec, path: Path) -> None:
    checks = [
        (spec.method in METHODS, f"method must be one of {list(METHODS)}, got {spec.method!r}"),
        (bool(spec.metric), "metric.name is missing (e.g. val/score)"),
        (spec.goal in GOALS, f"metric.goal must be one of {list(GOALS)}, got {spec.goal!r}"),
        (bool(spec.program), "program is missing (e.g. train.py)"),
        (bool(spec.params), "parameters is missing or empty (a mapping of dotted config keys)"),
        ("${args}" in spec.command, "command must contain ${args} (the --key=value arguments)"),
    ]
    checks += [(c in MACROS or not c.startswith("${"), f"command macro {c} is not supported; use {list(MACROS)}")
               for c in spec.command]
    if spec.method == "grid":
        continuous = [n for n, d in spec.params.items() if not isinstance(d, CategoricalDistribution)]
        checks.append((not continuous, f"method grid needs every parameter given as values or value; not {continuous}"))
    for ok, why in checks:
        if not ok:
            raise SweepError(f"{path}: {why}")


def to_distribution(name: str, param) -> BaseDistribution:
    """The Optuna distribution of one W&B parameter spec (see the module doc)."""
    if not isinstance(param, dict) or "parameters" in param:
        raise SweepError(f"parameter {name!r}: give a mapping with values/value/distribution; nested "
                         "parameters are not supported (use dotted names such as optim.lr)")
    kind = _distribution_name(name, param)
    try:
        if kind == "categorical":
            return _categorical(name, param["values"])
        if kind == "constant":
            return CategoricalDistribution([param["value"]])
        low, high = param["min"], param["max"]
        if kind == "q_uniform":
            q = param.get("q", 1)
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, q))
            return IntDistribution(low, high, step=q) if ints else FloatDistribution(low, high, step=q)
        if kind == "int_uniform":
            return IntDistribution(low, high)
        return FloatDistribution(low, high, log=kind == "log_uniform_values")
    except KeyError as err:
        raise SweepError(f"parameter {name!r}: distribution {kind} needs '{err.args[0]}'") from None
    except (TypeError, ValueError) as err:
        raise SweepError(f"parameter {name!r}: {err}") from None


def _distribution_name(name: str, param: dict) -> str:
    """The distribution W&B uses for ``param``: explicit, or inferred."""
    if "value" in param:
        return "constant"
    kind = param.get("distribution")
    if kind is None and "values" in param:
        kind = "categorical"
    elif kind is None and {"min", "max"} <= param.keys():
        ints = all(isinstance(param[k], int) and not isinstance(param[k], bool) for k in ("min", "max"))
        kind = "int_uniform" if ints else "uniform"
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"parameter {name!r}: distribution {kind!r} is not supported; give values, value, "
                         f"or distribution: one of {list(DISTRIBUTIONS)}")
    return kind


def _categorical(name: str, values) -> CategoricalDistribution:
    if not isinstance(values, list) or not values:
        raise SweepError(f"parameter {name!r}: values must be a non-empty list, got {values!r}")
    return CategoricalDistribution(values)


def describe(dist: BaseDistribution) -> dict:
    """A runner-neutral description of one distribution: ``{"type":
    "categorical", "choices": [...]}`` or ``{"type": "float" | "int", "low",
    "high", "log": bool, "step": number or None}``."""
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log, "step": dist.step}


def describe_space(spec: SweepSpec) -> dict[str, dict]:
    """``describe`` of every parameter, keyed by its dotted name."""
    return {name: describe(dist) for name, dist in spec.params.items()}


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict:
    """Draw one value per parameter from ``trial``; {dotted key: value}."""
    values = {}
    for name, dist in spec.params.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def trial_args(values: dict) -> list[str]:
    """The ``--key=value`` arguments W&B's agent passes for ``values`` (its
    ``${args}``: the value formatted with ``str``)."""
    return [f"--{name}={value}" for name, value in values.items()]


def trial_command(spec: SweepSpec, args: list[str]) -> list[str]:
    """The sweep's command for one local trial: ``${interpreter}`` is this
    Python, ``${program}`` the sweep's program, ``${args}`` the given
    arguments, ``${env}`` nothing (the environment is inherited)."""
    macros = {"${env}": [], "${interpreter}": [sys.executable], "${program}": [spec.program], "${args}": args}
    return [part for item in spec.command for part in macros.get(item, [item])]


def command_config(spec: SweepSpec) -> tuple[str | None, list[str]]:
    """The ``--config`` file and the literal ``--key=value`` overrides the
    sweep's command gives every trial."""
    literals = [c for c in spec.command if c not in MACROS]
    config = None
    for flag, value in zip(literals, literals[1:] + [None]):
        if flag == "--config":
            config = value
        elif flag.startswith("--config="):
            config = flag.split("=", 1)[1]
    return config, [c for c in literals if c.startswith("--") and "=" in c and not c.startswith("--config=")]


def check_parameters(spec: SweepSpec, overrides: list[str] = ()) -> None:
    """Check, before any trial runs, that every parameter is a config key
    accepting its extreme and categorical values on top of the command's
    config and ``overrides`` (the model built with each, on the meta device),
    and that no override fixes a swept key.
    Raises SweepError naming the key."""
    fixed = [o for o in overrides if o[2:].split("=", 1)[0] in spec.params]
    if fixed:
        raise SweepError(f"overrides {fixed} fix swept parameters; drop them or the parameter")
    config, literals = command_config(spec)
    for name, dist in spec.params.items():
        for value in _samples(dist):
            try:
                check_model_config(load_config(config, [*literals, *overrides, *trial_args({name: value})]))
            except ConfigError as err:
                raise SweepError(f"parameter {name!r} = {value!r}: {err}") from None


def _samples(dist: BaseDistribution) -> list:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def sweep_output_dir(cfg_output_dir: str) -> str:
    """Under a W&B sweep agent (which sets WANDB_SWEEP_ID for itself and
    WANDB_RUN_ID for each run it starts), ``<output_dir>/sweep-<sweep id>/<run
    id>``, so every trial writes its own run; elsewhere ``cfg_output_dir``."""
    sweep_id, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if not (sweep_id and run_id):
        return cfg_output_dir
    return str(Path(cfg_output_dir) / f"sweep-{sweep_id}" / run_id)
