"""Sweep configurations and the experiments they run.

`run_config(path, out)` reads a TOML config from `sweeps/` and runs its experiment:
`grid` runs a declarative grid of points (`uepjax.grid`, `uepjax.runner`), and
`paper-synthetic` reproduces Sec. VI of the paper: synthetic matrices under
Assumption 1, `W` exponential workers, NOW and EW codes against MDS, for both
partitions. It writes one tidy CSV per figure (`fig8.csv` .. `fig11.csv`), the crossover
times against MDS (`crossovers.csv`), a PNG of each figure and `run.json`
(configuration, key, package versions, run time). Files are written to a temporary name
and renamed, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from uepjax import (
    codes,
    config,
    distributed,
    fields,
    latency,
    partition,
    simulate,
    theory,
)

__all__ = [
    "CodeConfig",
    "WorkersConfig",
    "RxcConfig",
    "CxrConfig",
    "MatricesConfig",
    "DeadlineGrid",
    "MonteCarloConfig",
    "SyntheticExperiment",
    "PaperMatrices",
    "load_config",
    "run_config",
    "run_synthetic",
    "total_trials",
    "write_csv",
    "write_atomic",
    "package_versions",
    "crossover_time",
]

logger = logging.getLogger(__name__)

LATENCIES = ("exponential", "shifted-exponential", "pareto", "weibull")


@dataclasses.dataclass(frozen=True)
class CodeConfig:
    """The UEP code: class sizes `k_1..k_L` and window probabilities `gamma`."""

    class_sizes: tuple[int, ...] = (3, 3, 3)
    gamma: tuple[float, ...] = (0.40, 0.35, 0.25)

    def __post_init__(self):
        codes.now(self.class_sizes, self.gamma)


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """`count` workers with i.i.d. response times of the named `latency` model."""

    count: int = 30
    latency: str = "exponential"
    rate: float = 1.0
    shift: float = 0.0
    scale: float = 1.0
    shape: float = 2.0
    load: float = 1.0

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count must be a positive integer (got {self.count})")
        if self.latency not in LATENCIES:
            raise ValueError(
                f"latency must be one of {', '.join(LATENCIES)} (got {self.latency!r})"
            )
        self.model()

    def model(self):
        """The `uepjax.latency` model these settings describe."""
        if self.latency == "exponential":
            model = latency.Exponential(self.rate)
        elif self.latency == "shifted-exponential":
            model = latency.ShiftedExponential(self.rate, self.shift)
        elif self.latency == "pareto":
            model = latency.Pareto(self.scale, self.shape)
        else:
            model = latency.Weibull(self.scale, self.shape)
        return latency.with_load(model, self.load)


@dataclasses.dataclass(frozen=True)
class RxcConfig:
    """Row-times-column sizes: `A [N U, H]`, `B [H, P Q]`."""

    row_blocks: int = 3
    col_blocks: int = 3
    block_rows: int = 300
    block_cols: int = 300
    inner: int = 900


@dataclasses.dataclass(frozen=True)
class CxrConfig:
    """Column-times-row sizes: `A [U, M H]`, `B [M H, Q]`."""

    blocks: int = 9
    rows: int = 900
    cols: int = 900
    block_inner: int = 100


@dataclasses.dataclass(frozen=True)
class MatricesConfig:
    """Synthetic matrices of Sec. VI: entry variances of the high/medium/low levels."""

    variances: tuple[float, ...] = partition.LEVEL_VARIANCES
    rxc: RxcConfig = RxcConfig()
    cxr: CxrConfig = CxrConfig()

    def __post_init__(self):
        if len(self.variances) != 3 or min(self.variances) <= 0:
            raise ValueError(
                "variances must be three positive numbers, for the high, medium and "
                f"low levels (got {list(self.variances)})"
            )


@dataclasses.dataclass(frozen=True)
class DeadlineGrid:
    """`count` evenly spaced deadlines from `start` to `stop`."""

    start: float = 0.0
    stop: float = 2.0
    count: int = 81

    def __post_init__(self):
        if self.start < 0 or self.stop <= self.start or self.count < 2:
            raise ValueError(
                "deadlines need 0 <= start < stop and count >= 2 "
                f"(got start={self.start}, stop={self.stop}, count={self.count})"
            )

    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.count)


@dataclasses.dataclass(frozen=True)
class MonteCarloConfig:
    """Trials per curve, the fields to decode over and the chunk size."""

    trials: int = 20_000
    fields: tuple[int, ...] = (2_147_483_647, 256, 2)
    chunk_size: int = simulate.DEFAULT_CHUNK

    def __post_init__(self):
        if self.trials < 1:
            raise ValueError(f"trials must be a positive integer (got {self.trials})")
        for q in self.fields:
            fields.get_field(q)
        if self.chunk_size < 1 or self.chunk_size % simulate.BLOCK_TRIALS:
            raise ValueError(
                f"chunk_size must be a positive multiple of {simulate.BLOCK_TRIALS} "
                f"(got {self.chunk_size})"
            )


@dataclasses.dataclass(frozen=True)
class SyntheticExperiment:
    """The synthetic-data experiment of Sec. VI (Figs. 8-11)."""

    experiment: str = "paper-synthetic"
    seed: int = 0
    code: CodeConfig = CodeConfig()
    workers: WorkersConfig = WorkersConfig()
    matrices: MatricesConfig = MatricesConfig()
    deadlines: DeadlineGrid = DeadlineGrid()
    monte_carlo: MonteCarloConfig = MonteCarloConfig()

    def __post_init__(self):
        if self.experiment != "paper-synthetic":
            raise ValueError(
                f"experiment must be 'paper-synthetic' (got {self.experiment!r})"
            )
        if sum(self.code.class_sizes) != 9:
            raise ValueError(
                "code.class_sizes must add up to the 9 sub-products of the paper's "
                f"partitions (got {list(self.code.class_sizes)})"
            )
        if self.matrices.rxc.row_blocks * self.matrices.rxc.col_blocks != 9 or (
            self.matrices.cxr.blocks != 9
        ):
            raise ValueError(
                "matrices.rxc must have 3 x 3 blocks and matrices.cxr 9 blocks, as the "
                "paper's class tables need"
            )


EXPERIMENTS = ("paper-synthetic", "grid")


def load_config(path: str | Path):
    """Reads and validates a sweep config before anything runs.

    Returns:
        A `SyntheticExperiment` or a `grid.GridSweep` (every point built and checked).

    Raises:
        config.ConfigError: naming the file, the key and what is allowed.
    """
    table = config.load_toml(path)
    name = table.get("experiment")
    if name not in EXPERIMENTS:
        allowed = ", ".join(repr(e) for e in EXPERIMENTS)
        raise config.ConfigError(
            f"{path}: experiment must be one of {allowed} (got {name!r})"
        )
    if name == "grid":
        from uepjax import grid

        return grid.load_grid(table, str(path))
    return config.from_table(SyntheticExperiment, table, str(path))


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Writes tidy rows to `path` atomically (a temporary file, then a rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    write_atomic(path, buffer.getvalue())


def _cell(value):
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Writes `path` so that it is either as before or complete, never partial.

    The data goes to a temporary file beside it, is flushed to disk and renamed over
    `path`, so a reader never sees a partial file, even if the writer is killed.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(temporary, mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def crossover_time(t: np.ndarray, loss: np.ndarray, reference: np.ndarray) -> float:
    """The first time after which `loss` stays above `reference`, by interpolation.

    Returns NaN if `loss` is never below `reference`, or `t[-1]` if it never rises
    above.
    """
    gap = np.asarray(loss) - np.asarray(reference)
    below = gap < 0
    if not below.any():
        return float("nan")
    last_below = np.nonzero(below)[0][-1]
    if last_below == len(t) - 1:
        return float(t[-1])
    i = last_below
    fraction = -gap[i] / (gap[i + 1] - gap[i])
    return float(t[i] + fraction * (t[i + 1] - t[i]))


def _field_label(q: int) -> str:
    return f"GF({q})"


class PaperMatrices:
    """The matrices of one partition, in class order, and their energies."""

    def __init__(self, kind: str, key, matrices: MatricesConfig):
        variances = np.asarray(matrices.variances)
        if kind == "rxc":
            sizes = matrices.rxc
            levels = partition.importance_levels(sizes.row_blocks, 3)
            a_var = variances[levels]
            b_var = variances[partition.importance_levels(sizes.col_blocks, 3)]
            shape = dict(
                block_rows=sizes.block_rows,
                block_inner=sizes.inner,
                block_cols=sizes.block_cols,
            )
        else:
            sizes = matrices.cxr
            a_var = b_var = variances[partition.importance_levels(sizes.blocks, 3)]
            shape = dict(
                block_rows=sizes.rows,
                block_inner=sizes.block_inner,
                block_cols=sizes.cols,
            )
        pair = partition.synthetic_matrices(
            key, kind, a_variances=a_var, b_variances=b_var, **shape
        )
        if kind == "rxc":
            parts = partition.partition_rxc(
                pair.a, pair.b, sizes.row_blocks, sizes.col_blocks
            )
        else:
            parts = partition.partition_cxr(pair.a, pair.b, sizes.blocks)
        order = np.asarray(partition.paper_class_table(kind).order)
        gram = np.asarray(partition.gram_matrix(parts), np.float64)
        expected = np.asarray(
            partition.expected_energies(
                kind, a_variances=a_var, b_variances=b_var, **shape
            ),
            np.float64,
        )
        self.kind = kind
        self.gram = gram[np.ix_(order, order)]
        self.energies = expected[order]


def run_synthetic(
    experiment: SyntheticExperiment,
    out: str | Path,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[str], None] | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Path]:
    """Runs the synthetic experiment of Sec. VI and writes its figures into `out`.

    Args:
        experiment: the validated configuration.
        out: the output folder (created if needed).
        progress: called with the number of Monte Carlo trials finished.
        announce: called with a short description of each stage.
        devices: the local devices to split the trials over (all by default).

    Returns:
        The written files by name.
    """
    from uepjax import plot

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = announce or (lambda message: logger.info(message))
    sizes = experiment.code.class_sizes
    gamma = np.asarray(experiment.code.gamma)
    workers = experiment.workers.count
    response_time = experiment.workers.model()
    deadlines = experiment.deadlines.values()
    mc = experiment.monte_carlo
    key = jax.random.key(experiment.seed)
    key_rxc, key_cxr, key_trials = jax.random.split(key, 3)

    say("drawing the synthetic matrices and their Gram matrices")
    settings = [
        PaperMatrices("rxc", key_rxc, experiment.matrices),
        PaperMatrices("cxr", key_cxr, experiment.matrices),
    ]
    grams = np.stack([s.gram for s in settings])

    fig8, fig9, fig10, fig11 = [], [], [], []
    theory_curves = {}
    say("evaluating the large-field theory")
    cdf = np.asarray(response_time.cdf(jnp.asarray(deadlines, jnp.float32)))
    arrivals = np.asarray(theory.arrival_probabilities(workers, cdf), np.float64)
    for scheme in ("now", "ew"):
        probabilities = np.asarray(
            theory.decoding_probabilities(scheme, sizes, gamma, workers)
        )
        for level, row in enumerate(probabilities):
            for n, p in enumerate(row):
                fig8.append(
                    dict(
                        scheme=scheme,
                        class_index=level + 1,
                        packets=n,
                        source="theory",
                        field="large-field limit",
                        probability=p,
                    )
                )
    for setting in settings:
        for scheme in ("now", "ew", "mds"):
            by_packets = _theory_by_packets(scheme, sizes, gamma, workers, setting)
            by_time = arrivals @ by_packets
            theory_curves[setting.kind, scheme] = by_time
            for n, value in enumerate(by_packets):
                fig10.append(
                    dict(
                        partition=setting.kind,
                        scheme=scheme,
                        source="theory",
                        field="large-field limit",
                        packets=n,
                        loss=value,
                    )
                )
            for t, value in zip(deadlines, by_time, strict=True):
                fig9.append(
                    dict(
                        partition=setting.kind,
                        scheme=scheme,
                        source="theory",
                        field="large-field limit",
                        t=t,
                        loss=value,
                    )
                )
            if setting.kind == "cxr" and scheme != "mds":
                bound = arrivals @ _theory_by_packets(
                    scheme, sizes, gamma, workers, setting, bound=True
                )
                for t, value, exact in zip(deadlines, bound, by_time, strict=True):
                    fig11.append(dict(scheme=scheme, source="bound", t=t, loss=value))
                    fig11.append(dict(scheme=scheme, source="theory", t=t, loss=exact))

    mc_curves = {}
    for q in mc.fields:
        field = fields.get_field(q)
        for scheme in ("now", "ew", "mds"):
            if scheme == "mds" and q <= workers:
                say(
                    f"skipping MDS over {_field_label(q)}: it needs more than "
                    f"{workers} field elements"
                )
                continue
            code = codes.make_code(scheme, sizes, gamma)
            say(f"Monte Carlo: {scheme.upper()} over {_field_label(q)}")
            result = simulate.curves(
                key_trials,
                code,
                field,
                workers,
                mc.trials,
                gram=grams,
                response_time=response_time,
                deadlines=deadlines,
                chunk_size=mc.chunk_size,
                progress=progress,
                devices=devices,
            )
            label = _field_label(q)
            if scheme != "mds":
                decoded = result.decoded
                for level in range(len(sizes)):
                    for n in range(workers + 1):
                        fig8.append(
                            dict(
                                scheme=scheme,
                                class_index=level + 1,
                                packets=n,
                                source="monte_carlo",
                                field=label,
                                probability=decoded.mean[level, n],
                                standard_error=decoded.standard_error[level, n],
                                trials=decoded.trials,
                            )
                        )
            for g, setting in enumerate(settings):
                by_arrivals = result.by_arrivals
                by_deadline = result.by_deadline
                mc_curves[setting.kind, scheme, q] = by_deadline.mean[g]
                for n in range(workers + 1):
                    fig10.append(
                        dict(
                            partition=setting.kind,
                            scheme=scheme,
                            source="monte_carlo",
                            field=label,
                            packets=n,
                            loss=by_arrivals.mean[g, n],
                            standard_error=by_arrivals.standard_error[g, n],
                            trials=by_arrivals.trials,
                        )
                    )
                for d, t in enumerate(deadlines):
                    row = dict(
                        partition=setting.kind,
                        scheme=scheme,
                        source="monte_carlo",
                        field=label,
                        t=t,
                        loss=by_deadline.mean[g, d],
                        standard_error=by_deadline.standard_error[g, d],
                        trials=by_deadline.trials,
                    )
                    fig9.append(row)
                    if setting.kind == "cxr" and scheme != "mds":
                        fig11.append({k: row[k] for k in row if k != "partition"})

    say("finding the crossover times against MDS")
    crossovers = _crossovers(
        experiment, settings, theory_curves, mc_curves, response_time, arrivals
    )

    files = {}
    tables = {
        "fig8": (
            fig8,
            [
                "scheme",
                "class_index",
                "packets",
                "source",
                "field",
                "probability",
                "standard_error",
                "trials",
            ],
        ),
        "fig9": (
            fig9,
            [
                "partition",
                "scheme",
                "source",
                "field",
                "t",
                "loss",
                "standard_error",
                "trials",
            ],
        ),
        "fig10": (
            fig10,
            [
                "partition",
                "scheme",
                "source",
                "field",
                "packets",
                "loss",
                "standard_error",
                "trials",
            ],
        ),
        "fig11": (
            fig11,
            ["scheme", "source", "field", "t", "loss", "standard_error", "trials"],
        ),
        "crossovers": (
            crossovers,
            ["partition", "scheme", "source", "field", "crossover_t"],
        ),
    }
    if not distributed.is_main_process():
        # Every process ran the same trials; process 0 writes the files.
        return files
    for name, (rows, columns) in tables.items():
        path = out / f"{name}.csv"
        write_csv(path, rows, columns)
        files[name] = path
    say("drawing the figures")
    for name, path in plot.synthetic_figures(out).items():
        files[f"{name}_png"] = path
    files["run"] = _write_run_record(out, experiment, started)
    return files


def _theory_by_packets(scheme, sizes, gamma, workers, setting, bound=False):
    """`[W + 1]` normalised expected loss given `n` packets, large-field theory.

    Theorem 1 for rxc and the exact expectation under Assumption 1 for cxr; with `bound`
    the cxr bound of Theorem 2 (eq. 19).
    """
    if scheme == "mds":
        loss = theory.mds_conditional_loss(sum(sizes), workers)
    elif bound:
        loss = theory.cxr_loss_bound(
            scheme, sizes, gamma, setting.energies, workers, normalized=True
        )
    else:
        loss = theory.conditional_loss(
            scheme, sizes, gamma, setting.energies, workers, normalized=True
        )
    return np.asarray(loss, np.float64)


def _crossovers(experiment, settings, theory_curves, mc_curves, response_time, _):
    """Crossover times of NOW and EW against MDS, from theory and from Monte Carlo."""
    fine = np.linspace(experiment.deadlines.start, experiment.deadlines.stop, 4001)
    workers = experiment.workers.count
    sizes = experiment.code.class_sizes
    gamma = np.asarray(experiment.code.gamma)
    cdf = np.asarray(response_time.cdf(jnp.asarray(fine, jnp.float32)))
    arrivals = np.asarray(theory.arrival_probabilities(workers, cdf), np.float64)
    rows = []
    deadlines = experiment.deadlines.values()
    for setting in settings:
        mds = arrivals @ _theory_by_packets("mds", sizes, gamma, workers, setting)
        for scheme in ("now", "ew"):
            curve = arrivals @ _theory_by_packets(
                scheme, sizes, gamma, workers, setting
            )
            rows.append(
                dict(
                    partition=setting.kind,
                    scheme=scheme,
                    source="theory",
                    field="large-field limit",
                    crossover_t=crossover_time(fine, curve, mds),
                )
            )
            for q in experiment.monte_carlo.fields:
                if (setting.kind, "mds", q) not in mc_curves:
                    continue
                rows.append(
                    dict(
                        partition=setting.kind,
                        scheme=scheme,
                        source="monte_carlo",
                        field=_field_label(q),
                        crossover_t=crossover_time(
                            deadlines,
                            mc_curves[setting.kind, scheme, q],
                            mc_curves[setting.kind, "mds", q],
                        ),
                    )
                )
    return rows


def package_versions() -> dict[str, str]:
    """The versions of uepjax, Python and the packages that shape its numbers."""
    import importlib.metadata as metadata

    names = ("uepjax", "jax", "jaxlib", "numpy", "optax", "flax", "pyarrow")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


def _write_run_record(out: Path, experiment, started: float) -> Path:
    record = dict(
        config=config.to_table(experiment),
        key=f"jax.random.key({experiment.seed})",
        versions=package_versions(),
        devices=[str(d) for d in jax.devices()],
        processes=distributed.process_count(),
        seconds=round(time.perf_counter() - started, 3),
    )
    path = out / "run.json"
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def total_trials(experiment) -> int:
    """The number of Monte Carlo trials `run_config` will run (for a progress bar)."""
    workers = experiment.workers.count
    runs = sum(
        1
        for q in experiment.monte_carlo.fields
        for scheme in ("now", "ew", "mds")
        if not (scheme == "mds" and q <= workers)
    )
    return runs * experiment.monte_carlo.trials


def run_config(
    path: str | Path,
    out: str | Path,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Loads the config at `path` and runs its experiment into `out`.

    A grid resumes in `out`; `progress` and `announce` serve the synthetic
    experiment (a grid reports through `runner.Events`, see `runner.run_grid`).
    """
    experiment = load_config(path)
    if isinstance(experiment, SyntheticExperiment):
        return run_synthetic(experiment, out, progress, announce)
    from uepjax import runner

    return runner.run_grid(experiment, out).files
