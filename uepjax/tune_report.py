"""The `uepjax tune` job: tuned window probabilities against the paper's, for Sec. VI.

`run_tuning` reads a config from `sweeps/` (e.g. `sweeps/tune-paper.toml`) and, for
every partition, scheme, field and deadline, tunes ``gamma`` with
`uepjax.tune.optimize_gamma` starting from the paper's ``(0.40, 0.35, 0.25)``. It
checks the tuned loss against a brute-force lattice over the simplex and confirms both
losses by an independent Monte Carlo run with real decoding
(`uepjax.simulate.loss_by_deadline`), never by the model used for tuning. It writes:

- ``tune.csv``: one row per case (the table printed by `format_table`); its
  ``deadline`` column is the deadline, or the horizon of an area objective;
- ``tune_curves.csv``: the model's loss-versus-time curves before and after tuning;
- ``tune.png`` (``tune-gf<q>.png`` for finite fields): those curves with the Monte
  Carlo confirmations;
- ``run.json``: the configuration, the key, versions and the run time.

Every file is written to a temporary name and renamed, so an interrupted run leaves no
half-written file.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uepjax import codes, config, fields, partition, simulate, sweep, theory, tune

__all__ = [
    "ConfirmConfig",
    "TuneExperiment",
    "TuningConfig",
    "add_arguments",
    "format_table",
    "load_config",
    "run",
    "run_tuning",
]

logger = logging.getLogger(__name__)

PAPER_GAMMA = (0.40, 0.35, 0.25)
"""The window probabilities of Table III."""

CASE_COLUMNS = (
    "partition",
    "scheme",
    "field",
    "objective",
    "target",
    "deadline",
    "paper_gamma",
    "tuned_gamma",
    "paper_loss",
    "tuned_loss",
    "tuned_loss_bound",
    "gain",
    "grid_gamma",
    "grid_loss",
    "tuned_over_grid",
    "mc_field",
    "mc_trials",
    "mc_paper_loss",
    "mc_paper_se",
    "mc_tuned_loss",
    "mc_tuned_se",
    "mc_gain",
    "method",
    "steps",
    "seconds",
)

CURVE_COLUMNS = ("partition", "scheme", "field", "gamma_of", "gamma", "t", "loss")


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """How `uepjax.tune.optimize_gamma` runs, and the brute-force check.

    Attributes:
        steps: optimizer updates.
        learning_rate: initial learning rate of the default Adam schedule.
        method: ``"auto"``, ``"exact"`` or ``"monte_carlo"``.
        trials: Monte Carlo trials per step (``method="monte_carlo"`` only).
        table_trials: decoding trials per count vector of a finite-field table.
        grid_step: spacing of the brute-force lattice over the simplex; 0 skips it.
    """

    steps: int = 500
    learning_rate: float = 0.05
    method: str = "auto"
    trials: int = 512
    table_trials: int = 512
    grid_step: float = 0.01

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be a positive integer (got {self.steps})")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive (got {self.learning_rate})"
            )
        if self.method not in tune.METHODS:
            raise ValueError(
                f"method must be one of {', '.join(tune.METHODS)} (got {self.method!r})"
            )
        if self.trials < 2 or self.table_trials < 2:
            raise ValueError(
                "trials and table_trials must be at least 2 (got "
                f"{self.trials} and {self.table_trials})"
            )
        if self.grid_step:
            tune.simplex_grid(3, self.grid_step)


@dataclasses.dataclass(frozen=True)
class ConfirmConfig:
    """The independent Monte Carlo confirmation with real decoding.

    Attributes:
        field: the field that confirms the large-field model (a large prime);
            finite-field cases are confirmed over their own field.
        trials: decoding trials per ``gamma``.
        chunk_size: trials decoded at once (a multiple of
            `uepjax.simulate.BLOCK_TRIALS`).
    """

    field: int = 2_147_483_647
    trials: int = 50_000
    chunk_size: int = simulate.DEFAULT_CHUNK

    def __post_init__(self):
        fields.get_field(self.field)
        if self.trials < 2:
            raise ValueError(f"trials must be at least 2 (got {self.trials})")
        if self.chunk_size < 1 or self.chunk_size % simulate.BLOCK_TRIALS:
            raise ValueError(
                f"chunk_size must be a positive multiple of {simulate.BLOCK_TRIALS} "
                f"(got {self.chunk_size})"
            )


@dataclasses.dataclass(frozen=True)
class TuneExperiment:
    """Tuned against hand-picked window probabilities in the setting of Sec. VI.

    Attributes:
        experiment: must be ``"tune-paper"``.
        seed: the integer seed of every key of the run.
        schemes: ``"now"`` and/or ``"ew"``.
        partitions: ``"rxc"`` and/or ``"cxr"`` (the paper's class tables).
        fields: ``"large"`` for the large-field model and/or field orders ``q``.
        deadlines: the deadlines to tune for (one objective each).
        area_horizons: horizons ``T`` of area objectives ``int_0^T E[loss(t)] dt``.
        paper_gamma: the hand-picked ``gamma`` to compare with (the starting point).
        workers: the workers and their latency (as in `uepjax.sweep`).
        variances: entry variances of the high, medium and low importance levels
            (Assumption 1); their expected energies define the loss.
        tuning: the optimizer settings.
        confirm: the Monte Carlo confirmation.
        curves: the time axis of the loss curves in the figure.
    """

    experiment: str = "tune-paper"
    seed: int = 0
    schemes: tuple[str, ...] = ("now", "ew")
    partitions: tuple[str, ...] = ("rxc", "cxr")
    fields: tuple[str | int, ...] = ("large",)
    deadlines: tuple[float, ...] = (0.25, 0.5, 1.0)
    area_horizons: tuple[float, ...] = ()
    paper_gamma: tuple[float, ...] = PAPER_GAMMA
    workers: sweep.WorkersConfig = sweep.WorkersConfig()
    variances: tuple[float, ...] = partition.LEVEL_VARIANCES
    tuning: TuningConfig = TuningConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    curves: sweep.DeadlineGrid = sweep.DeadlineGrid(0.0, 2.0, 81)

    def __post_init__(self):
        if self.experiment != "tune-paper":
            raise ValueError(
                f"experiment must be 'tune-paper' (got {self.experiment!r})"
            )
        for scheme in self.schemes:
            if scheme not in ("now", "ew"):
                raise ValueError(f"schemes must be 'now' or 'ew' (got {scheme!r})")
        for kind in self.partitions:
            if kind not in ("rxc", "cxr"):
                raise ValueError(f"partitions must be 'rxc' or 'cxr' (got {kind!r})")
        for q in self.fields:
            if q != "large":
                fields.get_field(q)
        for t in self.deadlines:
            if not t >= 0:
                raise ValueError(f"deadlines must be non-negative (got {t})")
        for t in self.area_horizons:
            if not t > 0:
                raise ValueError(f"area_horizons must be positive (got {t})")
        codes.now((3, 3, 3), self.paper_gamma)
        if len(self.variances) != 3 or min(self.variances) <= 0:
            raise ValueError(
                "variances must be three positive numbers, for the high, medium and "
                f"low levels (got {list(self.variances)})"
            )


def load_config(path: str | Path) -> TuneExperiment:
    """Reads and validates a tuning config before anything runs.

    Raises:
        config.ConfigError: naming the file, the key and what is allowed.
    """
    table = config.load_toml(path)
    if table.get("experiment") != "tune-paper":
        raise config.ConfigError(
            f"{path}: experiment must be 'tune-paper' (got {table.get('experiment')!r})"
        )
    return config.from_table(TuneExperiment, table, str(path))


def _energies(kind: str, variances: Sequence[float]) -> np.ndarray:
    """``[9]`` expected sub-product energies of Sec. VI in class order (eq. 12).

    The blocks of level ``s`` have entry variance ``variances[s]``. The block sizes
    scale every energy alike, so the normalised loss does not depend on them.
    """
    blocks = 3 if kind == "rxc" else 9
    levels = partition.importance_levels(blocks, 3)
    per_block = np.asarray(variances, np.float64)[levels]
    energies = partition.expected_energies(
        kind, a_variances=per_block, b_variances=per_block
    )
    order = np.asarray(partition.paper_class_table(kind).order)
    return np.asarray(energies, np.float64)[order]


def _gamma_text(gamma: Sequence[float]) -> str:
    return " ".join(f"{g:.4f}" for g in gamma)


def _field_label(q: str | int) -> str:
    return "large-field model" if q == "large" else f"GF({q})"


def _model_curve(
    problem: tune.Problem,
    gamma: np.ndarray,
    table: tune.CountLossTable | None,
    latency: Any,
    times: np.ndarray,
) -> np.ndarray:
    """The model's expected loss at ``times``: theory, or the finite-field table."""
    conditional = tune.loss_given_arrivals(problem, gamma, table)
    return np.asarray(
        theory.average_over_arrivals(conditional, latency, jnp.asarray(times)),
        np.float64,
    )


def _normalized(gamma: np.ndarray) -> np.ndarray:
    gamma = np.clip(np.asarray(gamma, np.float64), 0.0, None)
    return gamma / gamma.sum()


def _objectives(experiment: TuneExperiment) -> list[tune.Objective]:
    return [tune.make_objective("deadline", t) for t in experiment.deadlines] + [
        tune.make_objective("area", h) for h in experiment.area_horizons
    ]


def _target(objective: tune.Objective) -> str:
    if objective.kind == "area":
        return f"area [0, {objective.horizon:g}]"
    return f"t = {objective.deadlines[0]:g}"


class _Confirmation:
    """Monte Carlo with real decoding at the times of every objective (eq. 16).

    One run of `uepjax.simulate.loss_by_deadline` per ``gamma`` serves all objectives:
    the loss at a deadline is read off directly, an area is the objective's weighted
    sum, whose standard error is bounded by the weighted sum of standard errors (the
    times share their trials).
    """

    def __init__(self, experiment: TuneExperiment, objectives: list[tune.Objective]):
        self.experiment = experiment
        self.objectives = objectives
        self.times = np.concatenate([np.asarray(o.deadlines) for o in objectives])
        bounds = np.cumsum([0] + [len(o.deadlines) for o in objectives])
        self.parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def run(
        self,
        key: jax.Array,
        scheme: str,
        gamma: np.ndarray,
        field: int,
        energies: np.ndarray,
        progress: Callable[[int], None] | None,
    ) -> simulate.Estimate:
        code = codes.make_code(scheme, (3, 3, 3), gamma)
        return simulate.loss_by_deadline(
            key,
            code,
            field,
            self.experiment.workers.count,
            energies,
            self.experiment.workers.model(),
            self.times,
            self.experiment.confirm.trials,
            chunk_size=self.experiment.confirm.chunk_size,
            progress=progress,
        )

    def value(self, estimate: simulate.Estimate, index: int) -> tuple[float, float]:
        """Mean and standard error (a bound for an area) of objective ``index``."""
        part = self.parts[index]
        weights = np.asarray(self.objectives[index].weights)
        mean = float(weights @ estimate.mean[part])
        error = float(weights @ estimate.standard_error[part])
        return mean, error


def _curve_rows(kind, scheme, label, name, gamma, times, values) -> list[dict]:
    return [
        dict(
            partition=kind,
            scheme=scheme,
            field=label,
            gamma_of=name,
            gamma=_gamma_text(gamma),
            t=t,
            loss=value,
        )
        for t, value in zip(times, values, strict=True)
    ]


def _run_setting(
    experiment: TuneExperiment,
    kind: str,
    scheme: str,
    q: str | int,
    keys: tuple[jax.Array, jax.Array, jax.Array],
    say: Callable[[str], None],
    progress: Callable[[int], None] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All objectives of one partition, scheme and field: case rows and curves."""
    key_table, key_tuning, key_confirm = keys
    settings = experiment.tuning
    latency = experiment.workers.model()
    times = experiment.curves.values()
    paper = np.asarray(experiment.paper_gamma, np.float64)
    energies = _energies(kind, experiment.variances)
    label = _field_label(q)
    field = None if q == "large" else fields.get_field(q)
    objectives = _objectives(experiment)
    confirmation = _Confirmation(experiment, objectives)
    problem = tune.make_problem(
        scheme,
        (3, 3, 3),
        energies,
        workers=experiment.workers.count,
        deadline=experiment.curves.stop,
        latency=latency,
    )
    table = None
    if field is not None:
        say(f"{kind} {scheme.upper()}: loss-given-counts table over {label}")
        table = tune.count_loss_table(key_table, problem, field, settings.table_trials)
    mc_field = experiment.confirm.field if field is None else int(q)
    say(f"{kind} {scheme.upper()} {label}: confirming the paper's gamma")
    mc_paper = confirmation.run(
        jax.random.fold_in(key_confirm, 0), scheme, paper, mc_field, energies, progress
    )
    paper_curve = _model_curve(problem, paper, table, latency, times)
    curves = _curve_rows(kind, scheme, label, "paper", paper, times, paper_curve)

    rows = []
    for index, objective in enumerate(objectives):
        target = _target(objective)
        say(f"{kind} {scheme.upper()} {label}: tuning for {target}")
        begun = time.perf_counter()
        result = tune.optimize_gamma(
            scheme,
            (3, 3, 3),
            energies,
            workers=experiment.workers.count,
            deadline=objective.horizon or objective.deadlines[0],
            latency=latency,
            objective=objective.kind,
            field=field,
            method=settings.method,
            steps=settings.steps,
            learning_rate=settings.learning_rate,
            initial_gamma=paper,
            key=key_tuning,
            trials=settings.trials,
            table=table,
            table_trials=settings.table_trials,
        )
        seconds = time.perf_counter() - begun
        tuned = _normalized(result.gamma)
        paper_loss = float(tune.expected_loss(result.problem, paper, table))
        grid_gamma, grid_loss = "", float("nan")
        if settings.grid_step and result.method == "exact":
            grid = tune.grid_search(result.problem, settings.grid_step, table)
            grid_gamma, grid_loss = _gamma_text(grid.gamma), grid.loss
        mc_tuned = confirmation.run(
            jax.random.fold_in(key_confirm, 1 + index),
            scheme,
            tuned,
            mc_field,
            energies,
            progress,
        )
        mc_paper_loss, mc_paper_se = confirmation.value(mc_paper, index)
        mc_tuned_loss, mc_tuned_se = confirmation.value(mc_tuned, index)
        rows.append(
            dict(
                partition=kind,
                scheme=scheme,
                field=label,
                objective=objective.kind,
                target=target,
                deadline=objective.horizon or objective.deadlines[0],
                paper_gamma=_gamma_text(paper),
                tuned_gamma=_gamma_text(tuned),
                paper_loss=paper_loss,
                tuned_loss=result.loss,
                tuned_loss_bound=result.loss_standard_error,
                gain=paper_loss / result.loss,
                grid_gamma=grid_gamma,
                grid_loss=grid_loss,
                tuned_over_grid=result.loss / grid_loss,
                mc_field=f"GF({mc_field})",
                mc_trials=mc_tuned.trials,
                mc_paper_loss=mc_paper_loss,
                mc_paper_se=mc_paper_se,
                mc_tuned_loss=mc_tuned_loss,
                mc_tuned_se=mc_tuned_se,
                mc_gain=mc_paper_loss / mc_tuned_loss,
                method=result.method,
                steps=settings.steps,
                seconds=round(seconds, 2),
            )
        )
        tuned_curve = _model_curve(problem, tuned, table, latency, times)
        name = f"tuned for {target}"
        curves += _curve_rows(kind, scheme, label, name, tuned, times, tuned_curve)
    return rows, curves


def run_tuning(
    experiment: TuneExperiment,
    out: str | Path,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Runs the tuning experiment and writes its files into ``out``.

    Args:
        experiment: the validated configuration.
        out: the output folder (created if needed).
        announce: called with a short description of each stage.
        progress: called with the number of Monte Carlo trials finished.

    Returns:
        The case rows (columns `CASE_COLUMNS`) and the written files by name.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = announce or (lambda message: logger.info(message))
    key = jax.random.key(experiment.seed)
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    settings = itertools.product(
        experiment.partitions, experiment.schemes, experiment.fields
    )
    for case, (kind, scheme, q) in enumerate(settings):
        keys = tuple(jax.random.split(jax.random.fold_in(key, case), 3))
        case_rows, case_curves = _run_setting(
            experiment, kind, scheme, q, keys, say, progress
        )
        rows += case_rows
        curves += case_curves

    files = {"cases": out / "tune.csv", "curves": out / "tune_curves.csv"}
    sweep.write_csv(files["cases"], rows, CASE_COLUMNS)
    sweep.write_csv(files["curves"], curves, CURVE_COLUMNS)
    say("drawing the loss curves")
    for label, path in _figures(rows, curves, experiment, out).items():
        files[f"figure {label}"] = path
    files["run"] = _write_run_record(out, experiment, started)
    return rows, files


def _figure_name(label: str) -> str:
    if label == "large-field model":
        return "tune.png"
    return f"tune-gf{label[3:-1]}.png"


def _figures(
    rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    experiment: TuneExperiment,
    out: Path,
) -> dict[str, Path]:
    """One PNG per field: loss curves before and after tuning, MC confirmations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    colors = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
    for q in experiment.fields:
        label = _field_label(q)
        panels = [(k, s) for k in experiment.partitions for s in experiment.schemes]
        columns = len(experiment.schemes)
        fig, axes = plt.subplots(
            len(experiment.partitions),
            columns,
            figsize=(5.2 * columns, 3.9 * len(experiment.partitions)),
            squeeze=False,
        )
        for index, (kind, scheme) in enumerate(panels):
            ax = axes[index // columns][index % columns]
            chosen = [
                c
                for c in curves
                if (c["partition"], c["scheme"], c["field"]) == (kind, scheme, label)
            ]
            names = list(dict.fromkeys(c["gamma_of"] for c in chosen))
            for n_index, name in enumerate(names):
                series = [c for c in chosen if c["gamma_of"] == name]
                gamma = series[0]["gamma"]
                paper = name == "paper"
                ax.plot(
                    [c["t"] for c in series],
                    [max(c["loss"], 1e-12) for c in series],
                    "--" if paper else "-",
                    color="black" if paper else colors[(n_index - 1) % len(colors)],
                    lw=1.3,
                    label=f"{name}: ({gamma.replace(' ', ', ')})",
                )
            cases = [
                r
                for r in rows
                if (r["partition"], r["scheme"], r["field"]) == (kind, scheme, label)
            ]
            for c_index, r in enumerate(cases):
                if r["objective"] != "deadline":
                    continue
                color = colors[c_index % len(colors)]
                ax.errorbar(
                    [r["deadline"]],
                    [r["mc_tuned_loss"]],
                    yerr=[2 * r["mc_tuned_se"]],
                    fmt="o",
                    color=color,
                    mfc="white",
                    ms=5,
                )
                ax.errorbar(
                    [r["deadline"]],
                    [r["mc_paper_loss"]],
                    yerr=[2 * r["mc_paper_se"]],
                    fmt="s",
                    color="black",
                    mfc="white",
                    ms=4,
                )
            ax.set_yscale("log")
            ax.set_xlabel("deadline t")
            ax.set_ylabel("expected normalised loss")
            ax.set_title(f"{kind}, {scheme.upper()}-UEP, {label}", fontsize=10)
            ax.grid(True, which="both", lw=0.3, alpha=0.5)
            ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(
            "Loss curves before (dashed) and after tuning gamma; markers: Monte Carlo "
            "with real decoding (2 s.e.)",
            fontsize=10,
        )
        fig.tight_layout()
        path = out / _figure_name(label)
        temporary = path.with_name(f".{path.stem}.partial.png")
        fig.savefig(temporary, dpi=130, bbox_inches="tight")
        plt.close(fig)
        os.replace(temporary, path)
        made[label] = path
    return made


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for name in ("uepjax", "jax", "jaxlib", "numpy", "optax"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


def _write_run_record(out: Path, experiment: TuneExperiment, started: float) -> Path:
    record = dict(
        config=config.to_table(experiment),
        key=f"jax.random.key({experiment.seed})",
        versions=_versions(),
        devices=[str(d) for d in jax.devices()],
        seconds=round(time.perf_counter() - started, 3),
    )
    path = out / "run.json"
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def _short(value: Any) -> str:
    value = float(value)
    return "nan" if value != value else f"{value:.4g}"


def _with_error(mean: Any, error: Any) -> str:
    return f"{_short(mean)} ({float(error):.1g})"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the cases: paper's against tuned ``gamma``.

    Args:
        rows: case rows as returned by `run_tuning` (or read back from ``tune.csv``,
            whose values are strings).

    Returns:
        The table, one line per case: model losses, the gain, the ratio to the best
        point of the brute-force lattice, and the Monte Carlo confirmation with real
        decoding (mean and standard error).
    """
    header = (
        f"{'part':<4} {'scheme':<6} {'field':<17} {'target':<13} {'paper gamma':<20} "
        f"{'tuned gamma':<20} {'paper loss':>10} {'tuned loss':>10} {'gain':>6} "
        f"{'/grid':>6}  {'MC paper (se)':>18} {'MC tuned (se)':>18} {'MC gain':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        paper = _with_error(r["mc_paper_loss"], r["mc_paper_se"])
        tuned = _with_error(r["mc_tuned_loss"], r["mc_tuned_se"])
        lines.append(
            f"{r['partition']:<4} {r['scheme']:<6} {r['field']:<17} "
            f"{r['target']:<13} {r['paper_gamma']:<20} "
            f"{r['tuned_gamma']:<20} {_short(r['paper_loss']):>10} "
            f"{_short(r['tuned_loss']):>10} {float(r['gain']):>5.1f}x "
            f"{float(r['tuned_over_grid']):>6.4f}  {paper:>18} {tuned:>18} "
            f"{float(r['mc_gain']):>6.1f}x"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``uepjax tune`` to ``parser``."""
    parser.add_argument(
        "config", help="a TOML tuning config, e.g. sweeps/tune-paper.toml"
    )
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace, say: Callable[..., None]) -> int:
    """Runs ``uepjax tune``: the job of the config, then prints the table.

    ``say(message, error=False)`` prints a line (the CLI's ``uepjax.cli.say``).

    Returns:
        0 on success, 2 for a config that does not load.
    """
    try:
        experiment = load_config(args.config)
    except config.ConfigError as error:
        say(f"uepjax tune: {error}", error=True)
        return 2
    quiet = getattr(args, "quiet", False)
    started = time.perf_counter()

    def announce(message: str) -> None:
        if not quiet:
            say(f"  {message}", error=True)

    rows, files = run_tuning(experiment, args.out, announce)
    say(format_table(rows))
    if not quiet:
        say(
            f"wrote {len(files)} files to {args.out} in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return 0
