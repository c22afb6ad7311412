"""Declarative sweeps: fixed parameters, axes, exclusions, quantities, stopping rule.

A grid config (`experiment = "grid"`) describes many points at once:

    experiment = "grid"
    name = "field-gap"

    [fixed]              # every parameter of a point, `PointConfig`
    scheme = "ew"
    workers = 30

    [axes]               # combined as a Cartesian product, last axis fastest
    field = [2, 16, 256, 2147483647]
    scheme = ["now", "ew"]

    [[zip]]              # lists varied together: one more factor of the product
    latency = ["exponential", "pareto"]
    shape = [1.0, 2.5]

    [[exclude]]          # points whose values all match are dropped
    scheme = "mds"
    field = 2

    [output]             # `OutputConfig`: what each point records
    record = ["loss_by_deadline"]

    [stopping]           # `StoppingConfig`: trial budget and tolerance
    trials = 100000
    standard_error = 1e-3

`load_grid` checks every key and value and builds every point before anything runs;
errors name the file, the key and what is allowed. A point is identified by the hash
of everything that determines its numbers (`point_hash`), so results can be reused
when a sweep is extended or resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from uepjax import codes, config, fields, latency, simulate

__all__ = [
    "FORMAT",
    "PARAMETERS",
    "RECORDABLE",
    "SCHEMES",
    "LATENCIES",
    "LOSSES",
    "ARRIVAL_TIMES",
    "PointConfig",
    "OutputConfig",
    "StoppingConfig",
    "RunConfig",
    "GridSweep",
    "Point",
    "load_grid",
    "point_hash",
]

FORMAT = 1
"""Version of the point files; part of every point's hash."""

RECORDABLE = {
    "decoding_probability": "decoded",
    "loss_by_arrivals": "by_arrivals",
    "loss_by_deadline": "by_deadline",
}
"""The quantities a point can record, and the `simulate.Curves` field of each."""

SCHEMES = tuple(s.value for s in codes.Scheme)
LATENCIES = ("exponential", "shifted-exponential", "pareto", "weibull")
LOSSES = ("rxc", "cxr", "energies", "uniform", "none")
ARRIVAL_TIMES = ("auto", "conditional", "sampled")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {listed} (got {value!r})")


def _positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number (got {value!r})")


@dataclasses.dataclass(frozen=True)
class PointConfig:
    """Every parameter of one point; each can be fixed or an axis.

    Attributes:
        seed: the point's key is `jax.random.key(seed)`. Points with the same seed
            share their random numbers (and their synthetic matrices), which makes
            differences between them more precise.
        scheme: one of `SCHEMES`.
        class_sizes: `k_1..k_L`; baselines use their sum `K`.
        gamma: window probabilities of NOW and EW.
        repetitions: `r` of the repetition scheme.
        field: a field order `q` or `"real"`.
        workers: `W`.
        latency: one of `LATENCIES`; `rate`, `shift`, `scale` and `shape` are its
            parameters (`uepjax.latency`).
        load: the load `Omega` of Remark 1 (the CDF is `F(Omega t)`).
        load_per_subproduct: multiply `load` by `K / W`, the paper's scaling when the
            number of workers changes (Remark 1).
        slow_fraction: the fraction of workers that are slow (heterogeneous workers).
        slowdown: how many times longer the slow workers take.
        speed_spread: worker speeds spread evenly over `1 +- speed_spread`.
        loss: the Gram matrix of the loss: the paper's synthetic matrices `"rxc"` or
            `"cxr"` (`[matrices]`, K = 9), the `energies` of a diagonal Gram matrix,
            `"uniform"` (all sub-products alike) or `"none"` (decoding only).
        energies: `[K]` sub-product energies for `loss = "energies"`.
        deadline_start: the first deadline.
        deadline_stop: the last deadline.
        deadline_count: the number of evenly spaced deadlines.
        arrival_times: `"conditional"` averages each trial exactly over i.i.d. arrival
            times (eq. 16), `"sampled"` draws them; `"auto"` is conditional for
            i.i.d. workers and sampled otherwise.
    """

    seed: int = 0
    scheme: str = "ew"
    class_sizes: tuple[int, ...] = (3, 3, 3)
    gamma: tuple[float, ...] = (0.40, 0.35, 0.25)
    repetitions: int = 2
    field: int | str = 2_147_483_647
    workers: int = 30
    latency: str = "exponential"
    rate: float = 1.0
    shift: float = 0.0
    scale: float = 1.0
    shape: float = 2.0
    load: float = 1.0
    load_per_subproduct: bool = False
    slow_fraction: float = 0.0
    slowdown: float = 1.0
    speed_spread: float = 0.0
    loss: str = "rxc"
    energies: tuple[float, ...] | None = None
    deadline_start: float = 0.0
    deadline_stop: float = 2.0
    deadline_count: int = 41
    arrival_times: str = "auto"

    def __post_init__(self):
        _one_of("scheme", self.scheme, SCHEMES)
        _one_of("latency", self.latency, LATENCIES)
        _one_of("loss", self.loss, LOSSES)
        _one_of("arrival_times", self.arrival_times, ARRIVAL_TIMES)
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer (got {self.seed})")
        code = self.code()
        fields.get_field(self.field)
        code.check_workers(self.workers)
        k = code.subproducts
        if self.scheme == "mds" and self.field != "real" and self.field <= self.workers:
            raise ValueError(
                f"an MDS code with {self.workers} workers needs a field of more than "
                f"{self.workers} elements (got field={self.field}); use a larger field"
            )
        for name in ("rate", "scale", "shape", "load", "slowdown"):
            _positive(name, getattr(self, name))
        if not (np.isfinite(self.shift) and self.shift >= 0):
            raise ValueError(f"shift must be a non-negative number (got {self.shift})")
        if not 0.0 <= self.slow_fraction <= 1.0:
            raise ValueError(
                f"slow_fraction must lie in [0, 1] (got {self.slow_fraction})"
            )
        if not 0.0 <= self.speed_spread < 1.0:
            raise ValueError(
                f"speed_spread must lie in [0, 1) (got {self.speed_spread})"
            )
        if self.loss in ("rxc", "cxr") and k != 9:
            raise ValueError(
                f"loss={self.loss!r} uses the paper's 9 sub-products; class_sizes "
                f"must add up to 9 (got {list(self.class_sizes)}); use "
                "loss='energies' or 'uniform' for other sizes"
            )
        if self.loss == "energies":
            if self.energies is None or len(self.energies) != k:
                got = None if self.energies is None else len(self.energies)
                raise ValueError(
                    f"loss='energies' needs energies, one per sub-product ({k}) "
                    f"(got {got})"
                )
            if min(self.energies) < 0 or sum(self.energies) <= 0:
                raise ValueError(
                    "energies must be non-negative with a positive sum "
                    f"(got {list(self.energies)})"
                )
        elif self.energies is not None:
            raise ValueError(
                f"energies are used with loss='energies' only (got loss={self.loss!r})"
            )
        if not (
            0 <= self.deadline_start < self.deadline_stop
            and np.isfinite(self.deadline_stop)
            and self.deadline_count >= 2
        ):
            raise ValueError(
                "deadlines need 0 <= deadline_start < deadline_stop and "
                f"deadline_count >= 2 (got {self.deadline_start}, "
                f"{self.deadline_stop}, {self.deadline_count})"
            )
        if self.arrival_times == "conditional" and not self.homogeneous:
            raise ValueError(
                "arrival_times='conditional' needs i.i.d. workers; heterogeneous "
                "workers (slow_fraction, speed_spread) must be 'sampled' or 'auto'"
            )
        self.response_time()

    def code(self) -> codes.Code:
        """The `codes.Code` of the point."""
        gamma = self.gamma if self.scheme in ("now", "ew") else None
        return codes.make_code(self.scheme, self.class_sizes, gamma, self.repetitions)

    @property
    def subproducts(self) -> int:
        """`K`."""
        return sum(self.class_sizes)

    @property
    def homogeneous(self) -> bool:
        """Whether all workers have the same response-time distribution."""
        slow = round(self.slow_fraction * self.workers)
        return self.speed_spread == 0.0 and (slow == 0 or self.slowdown == 1.0)

    def speeds(self) -> np.ndarray:
        """`[W]` speed of every worker (the factor on its load)."""
        speeds = np.linspace(
            1.0 - self.speed_spread, 1.0 + self.speed_spread, self.workers
        )
        slow = round(self.slow_fraction * self.workers)
        if slow:
            speeds[self.workers - slow :] /= self.slowdown
        return speeds

    def response_time(self) -> latency.LatencyModel:
        """The latency model, its load (Remark 1) and worker speeds included."""
        if self.latency == "exponential":
            model = latency.Exponential(self.rate)
        elif self.latency == "shifted-exponential":
            model = latency.ShiftedExponential(self.rate, self.shift)
        elif self.latency == "pareto":
            model = latency.Pareto(self.scale, self.shape)
        else:
            model = latency.Weibull(self.scale, self.shape)
        load = self.load
        if self.load_per_subproduct:
            load = load * self.subproducts / self.workers
        if self.homogeneous:
            return latency.with_load(model, load)
        return latency.with_load(model, load * self.speeds())

    def deadlines(self) -> np.ndarray:
        """`[D]` float64 deadlines."""
        return np.linspace(self.deadline_start, self.deadline_stop, self.deadline_count)

    @property
    def conditional(self) -> bool:
        """Whether the deadline curve averages exactly over arrival times."""
        if self.arrival_times == "auto":
            return self.homogeneous
        return self.arrival_times == "conditional"


_POINT_FIELDS = {f.name: f for f in dataclasses.fields(PointConfig)}
_POINT_TYPES = typing.get_type_hints(PointConfig)

PARAMETERS = tuple(_POINT_FIELDS)
"""The names of the point parameters, in `PointConfig` order."""


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What every point records.

    Attributes:
        record: quantities from `RECORDABLE`.
        theory: add the large-field theory (and Theorem 2's bound for c x r) next to
            each estimate, where a closed form exists.
        confidence: the coverage of the confidence intervals.
        figures: draw the standard figures at the end of the run.
    """

    record: tuple[str, ...] = ("loss_by_deadline",)
    theory: bool = True
    confidence: float = 0.95
    figures: bool = True

    def __post_init__(self):
        for name in self.record:
            _one_of("record", name, tuple(RECORDABLE))
        if len(set(self.record)) != len(self.record):
            raise ValueError(f"record must not repeat a quantity (got {self.record})")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1) (got {self.confidence})")


@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    """The trial budget of every point and its stopping rule (`simulate.StoppingRule`).

    Without `standard_error`, `relative_error` and `max_seconds` every point runs
    exactly `trials` trials.

    Attributes:
        trials: the most trials of a point.
        target: the quantity whose standard error decides (default: the first
            recorded one).
        standard_error: stop once every entry's standard error is at most this.
        relative_error: or at most this times the entry's `|mean|`.
        min_trials: trials of the first round, a multiple of 1024.
        batch_trials: trials of every later round, a multiple of 1024.
        max_seconds: a time budget per point (makes the trials depend on speed).
    """

    trials: int = 20_000
    target: str | None = None
    standard_error: float | None = None
    relative_error: float | None = None
    min_trials: int = 8 * simulate.BLOCK_TRIALS
    batch_trials: int = 8 * simulate.BLOCK_TRIALS
    max_seconds: float | None = None

    def __post_init__(self):
        if self.trials < 1 or self.trials > simulate.MAX_TRIALS:
            raise ValueError(
                f"trials must be an integer in [1, {simulate.MAX_TRIALS}] "
                f"(got {self.trials})"
            )
        if self.target is not None:
            _one_of("target", self.target, tuple(RECORDABLE))
        self.rule("loss_by_deadline")

    def rule(self, default_target: str) -> simulate.StoppingRule:
        """The engine's rule, `default_target` standing in for a missing target."""
        return simulate.StoppingRule(
            target=RECORDABLE[self.target or default_target],
            standard_error=self.standard_error,
            relative_error=self.relative_error,
            min_trials=self.min_trials,
            batch_trials=self.batch_trials,
            max_seconds=self.max_seconds,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How trials run; none of it changes the numbers.

    Attributes:
        chunk_size: trials decoded at once by each process, a multiple of 1024.
    """

    chunk_size: int = simulate.DEFAULT_CHUNK

    def __post_init__(self):
        if self.chunk_size < 1 or self.chunk_size % simulate.BLOCK_TRIALS:
            raise ValueError(
                f"chunk_size must be a positive multiple of {simulate.BLOCK_TRIALS} "
                f"(got {self.chunk_size})"
            )


def _matrices_type():
    from uepjax import sweep

    return sweep.MatricesConfig


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a grid: its position, the values its axes gave it and its
    configuration."""

    index: int
    values: dict[str, Any]
    config: PointConfig

    @property
    def label(self) -> str:
        """`name=value` of every axis, for progress output and legends."""
        if not self.values:
            return "point"
        return ", ".join(f"{k}={_plain(v)}" for k, v in self.values.items())

    @property
    def plain_values(self) -> dict[str, Any]:
        """The axis values with lists for tuples, ready for JSON."""
        return {k: _plain(v) for k, v in self.values.items()}


@dataclasses.dataclass(frozen=True)
class GridSweep:
    """A validated grid config.

    Attributes:
        experiment: `"grid"`.
        name: the sweep's name (the file name by default).
        description: free text.
        fixed: the parameters of every point that no axis sets.
        axes: `{name: [values]}` combined as a Cartesian product.
        zip: groups of equally long lists varied together.
        exclude: tables of values; a point matching all values of one is dropped.
        matrices: the synthetic matrices of `loss = "rxc"` / `"cxr"`.
        output: what every point records.
        stopping: the trial budget and stopping rule of every point.
        run: how trials run.
        points: every point, in order.
    """

    experiment: str
    name: str
    description: str
    fixed: dict[str, Any]
    axes: dict[str, tuple]
    zip: tuple[dict[str, tuple], ...]
    exclude: tuple[dict[str, Any], ...]
    matrices: Any
    output: OutputConfig
    stopping: StoppingConfig
    run: RunConfig
    points: tuple[Point, ...]

    def table(self) -> dict[str, Any]:
        """The config as TOML-ready tables (for `run.json`)."""
        return config.to_table(
            dict(
                experiment=self.experiment,
                name=self.name,
                description=self.description,
                fixed=dict(self.fixed),
                axes={k: list(v) for k, v in self.axes.items()},
                zip=[{k: list(v) for k, v in group.items()} for group in self.zip],
                exclude=list(self.exclude),
                matrices=config.to_table(self.matrices),
                output=config.to_table(self.output),
                stopping=config.to_table(self.stopping),
                run=config.to_table(self.run),
            )
        )

    @property
    def varied(self) -> tuple[str, ...]:
        """The names of the parameters that axes or zip groups set."""
        names = list(self.axes)
        for group in self.zip:
            names.extend(group)
        return tuple(names)

    def target(self) -> str:
        """The quantity that the stopping rule looks at."""
        return self.stopping.target or self.output.record[0]

    def rule(self) -> simulate.StoppingRule:
        """The engine's stopping rule for every point."""
        return self.stopping.rule(self.output.record[0])


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    return value


_TOP_KEYS = (
    "experiment",
    "name",
    "description",
    "fixed",
    "axes",
    "zip",
    "exclude",
    "matrices",
    "output",
    "stopping",
    "run",
)


def _parameter(name: str, where: str) -> None:
    if name not in _POINT_FIELDS:
        raise config.ConfigError(
            f"{where}.{name} is not a point parameter; allowed: "
            f"{', '.join(_POINT_FIELDS)}"
        )


def _axis_values(name: str, values, where: str, unique: bool = True) -> tuple:
    _parameter(name, where)
    key = f"{where}.{name}"
    if not isinstance(values, list):
        raise config.ConfigError(
            f"{key} must be a list of values for {name} "
            f"({config.type_name(_POINT_TYPES[name])} each) (got {values!r})"
        )
    if not values:
        raise config.ConfigError(f"{key} must not be empty: give at least one value")
    kind = _POINT_TYPES[name]
    converted = tuple(
        config.convert(kind, v, f"{key}[{i}]") for i, v in enumerate(values)
    )
    if unique and len(set(map(repr, converted))) != len(converted):
        raise config.ConfigError(f"{key} must not repeat a value (got {values!r})")
    return converted


def _table(table: dict, key: str, where: str):
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise config.ConfigError(f"{where}{key} must be a table (got {value!r})")
    return value


def _tables(table: dict, key: str) -> list[dict]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise config.ConfigError(
            f"{key} must be an array of tables, written [[{key}]] (got {value!r})"
        )
    return value


def _combinations(
    axes: dict[str, tuple], groups: tuple[dict[str, tuple], ...]
) -> Iterator[dict[str, Any]]:
    factors = [[{name: v} for v in values] for name, values in axes.items()]
    for group in groups:
        names = list(group)
        factors.append(
            [
                dict(zip(names, row, strict=True))
                for row in zip(*group.values(), strict=True)
            ]
        )
    for combination in itertools.product(*factors):
        merged = {}
        for part in combination:
            merged.update(part)
        yield merged


def _zip_groups(table: dict, varied: set[str]) -> list[dict[str, tuple]]:
    """The `[[zip]]` groups, checked; `varied` collects the parameters they set."""
    groups = []
    for i, group in enumerate(_tables(table, "zip")):
        where = f"zip[{i}]"
        if not group:
            raise config.ConfigError(f"{where} must not be empty")
        converted = {
            n: _axis_values(n, v, where, unique=False) for n, v in group.items()
        }
        lengths = {n: len(v) for n, v in converted.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{n}: {k}" for n, k in lengths.items())
            raise config.ConfigError(
                f"{where}: the lists of a zip group must have equal lengths "
                f"(got {listed})"
            )
        rows = [repr(row) for row in zip(*converted.values(), strict=True)]
        if len(set(rows)) != len(rows):
            raise config.ConfigError(
                f"{where}: two rows of the zip group are the same; each row must "
                "differ in at least one value"
            )
        twice = varied & set(converted)
        if twice:
            raise config.ConfigError(
                f"{where}.{sorted(twice)[0]} is already varied by another axis; "
                "a parameter may be varied once"
            )
        varied |= set(converted)
        groups.append(converted)
    return groups


def _exclusions(table: dict) -> list[dict[str, Any]]:
    """The `[[exclude]]` tables, their values converted to the parameters' types."""
    excludes = []
    for i, rule in enumerate(_tables(table, "exclude")):
        where = f"exclude[{i}]"
        if not rule:
            raise config.ConfigError(f"{where} must not be empty")
        converted = {}
        for name, value in rule.items():
            _parameter(name, where)
            converted[name] = config.convert(
                _POINT_TYPES[name], value, f"{where}.{name}"
            )
        excludes.append(converted)
    return excludes


def _points(fixed, axes, groups, excludes, output) -> list[Point]:
    """Every combination that no exclusion drops, each built and checked."""
    points = []
    for values in _combinations(axes, tuple(groups)):
        merged = {**fixed, **values}
        if any(_matches(merged, rule) for rule in excludes):
            continue
        label = ", ".join(f"{k}={_plain(v)}" for k, v in values.items()) or "fixed"
        where = f"point {len(points)} ({label})"
        try:
            point = PointConfig(**merged)
        except ValueError as error:
            raise config.ConfigError(
                f"{where}: {error}; fix the value or drop the point with an "
                "[[exclude]] table"
            ) from None
        _check_records(point, output, where)
        points.append(Point(len(points), values, point))
    if not points:
        raise config.ConfigError(
            "the grid has no points: every combination is excluded"
        )
    return points


def _build(table: dict[str, Any], source: str) -> GridSweep:
    unknown = sorted(set(table) - set(_TOP_KEYS))
    if unknown:
        raise config.ConfigError(
            f"{unknown[0]} is not a known key; allowed here: {', '.join(_TOP_KEYS)}"
        )
    name = table.get("name", Path(source).stem)
    description = table.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise config.ConfigError(f"{key} must be a string (got {value!r})")

    fixed_table = _table(table, "fixed", "")
    for parameter in fixed_table:
        _parameter(parameter, "fixed")
    fixed = {
        n: config.convert(_POINT_TYPES[n], v, f"fixed.{n}")
        for n, v in fixed_table.items()
    }
    axes = {n: _axis_values(n, v, "axes") for n, v in _table(table, "axes", "").items()}
    groups = _zip_groups(table, set(axes))
    excludes = _exclusions(table)

    def part(cls, key):
        return config.convert(cls, _table(table, key, ""), key)

    output = part(OutputConfig, "output")
    stopping = part(StoppingConfig, "stopping")
    if stopping.target is not None and stopping.target not in output.record:
        raise config.ConfigError(
            f"stopping.target must be one of the recorded quantities "
            f"{', '.join(output.record)} (got {stopping.target!r})"
        )
    return GridSweep(
        experiment=table.get("experiment"),
        name=name,
        description=description,
        fixed=fixed,
        axes=axes,
        zip=tuple(groups),
        exclude=tuple(excludes),
        matrices=part(_matrices_type(), "matrices"),
        output=output,
        stopping=stopping,
        run=part(RunConfig, "run"),
        points=tuple(_points(fixed, axes, groups, excludes, output)),
    )


def _matches(values: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Whether a point's values (defaults filled in) equal every value of `rule`."""
    return all(
        values.get(name, _POINT_FIELDS[name].default) == value
        for name, value in rule.items()
    )


def _check_records(point: PointConfig, output: OutputConfig, where: str) -> None:
    if point.loss == "none":
        needs_loss = [r for r in output.record if r != "decoding_probability"]
        if needs_loss:
            raise config.ConfigError(
                f"{where}: recording {needs_loss[0]} needs a loss; set loss to "
                f"'rxc', 'cxr', 'energies' or 'uniform' (got loss='none')"
            )


def load_grid(table: dict[str, Any], source: str = "config") -> GridSweep:
    """Validates a parsed grid config and builds its points.

    Args:
        table: the parsed TOML (`config.load_toml`).
        source: the file name, for messages.

    Raises:
        config.ConfigError: naming `source`, the key and what is allowed.
    """
    try:
        return _build(table, source)
    except config.ConfigError as error:
        raise config.ConfigError(f"{source}: {error}") from None


def point_hash(point: PointConfig, sweep: GridSweep) -> str:
    """A hex digest of everything that determines a point's numbers.

    The point's parameters, the matrices where its loss uses them, the recorded
    quantities, the theory flag, the confidence and the stopping rule. How the
    trials run (chunk size, devices, processes) is left out: it does not change the
    numbers.
    """
    identity = dict(
        format=FORMAT,
        point=config.to_table(point),
        record=list(sweep.output.record),
        theory=sweep.output.theory,
        confidence=sweep.output.confidence,
        stopping=config.to_table(sweep.stopping),
        target=sweep.target(),
    )
    if point.loss in ("rxc", "cxr"):
        identity["matrices"] = config.to_table(sweep.matrices)
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
