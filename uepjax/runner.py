"""Runs a grid sweep point by point: resumable, on every device and process.

`run_grid(sweep, out)` runs the points of a `grid.GridSweep` in order. Each finished
point is written to `points/<hash>.json` (a temporary file, flushed, then renamed), and
`manifest.json` lists every point of the grid with its file and whether it is done.
Started again with the same config, the run reads the point files, skips the points
that are done and computes the rest, so a run killed at any moment (even by SIGKILL)
ends with the same results as one that was never interrupted; a point is never
computed twice and never half written. The tables are assembled from the point files
at the end:

- `results.parquet` and `results.csv`: one tidy row per estimate (point, quantity
  and index), with the point's full configuration, its key, the mean, standard error,
  confidence interval, number of trials, the large-field theory where it exists, the
  package versions and the point's run time.
- `summary.parquet` and `summary.csv`: one row per point.
- `run.json`: the config, versions, devices, processes and time of this run.

The points run one after another; the engine compiles once per shape (static sizes)
and reuses that program for every point that differs only in values. Under
`jax.distributed` every process runs every point, each taking its share of the trial
blocks; process 0 decides which points are done and writes every file.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from uepjax import codes, config, distributed, grid, simulate, sweep, theory

__all__ = [
    "POINTS",
    "MANIFEST",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "Events",
    "GridRun",
    "compute_point",
    "read_point",
    "completed_points",
    "assemble",
    "run_grid",
    "write_parquet",
]

logger = logging.getLogger(__name__)

POINTS = "points"
"""The folder of the point files inside a results folder."""

MANIFEST = "manifest.json"

FIXED_ROWS = ("mds", "uncoded", "repetition")
"""Schemes whose coefficient rows belong to given workers (not drawn i.i.d.)."""

PARAMETERS = grid.PARAMETERS

RESULT_COLUMNS = (
    "point",
    "point_hash",
    *PARAMETERS,
    "quantity",
    "class_index",
    "packets",
    "t",
    "mean",
    "standard_error",
    "ci_low",
    "ci_high",
    "confidence",
    "trials",
    "stop_reason",
    "theory",
    "theory_bound",
    "key",
    "seconds",
    "devices",
    "processes",
    "uepjax_version",
    "jax_version",
)
"""The columns of `results.csv` / `results.parquet`, in order."""

SUMMARY_COLUMNS = (
    "point",
    "point_hash",
    "label",
    *PARAMETERS,
    "target",
    "largest_standard_error",
    "trials",
    "stop_reason",
    "key",
    "seconds",
    "devices",
    "processes",
    "platform",
    "uepjax_version",
    "jax_version",
    "jaxlib_version",
    "numpy_version",
    "python_version",
)
"""The columns of `summary.csv` / `summary.parquet`, one row per point."""

_INTEGER = {
    "point",
    "seed",
    "repetitions",
    "workers",
    "deadline_count",
    "class_index",
    "packets",
    "trials",
    "devices",
    "processes",
}
_FLOAT = {
    "rate",
    "shift",
    "scale",
    "shape",
    "load",
    "slow_fraction",
    "slowdown",
    "speed_spread",
    "deadline_start",
    "deadline_stop",
    "t",
    "mean",
    "standard_error",
    "ci_low",
    "ci_high",
    "confidence",
    "theory",
    "theory_bound",
    "seconds",
    "largest_standard_error",
}
_BOOLEAN = {"load_per_subproduct"}


class Events:
    """What a sweep tells its caller; the default ignores everything.

    The command line overrides these to draw a progress bar. Only process 0 is told.
    """

    def sweep_started(self, total: int, reused: int, budget: int) -> None:
        """`total` points, `reused` of them already done, `budget` trials at most."""

    def point_started(self, point: grid.Point) -> None:
        """A point starts computing."""

    def trials(self, count: int) -> None:
        """`count` more trials of the current point are done."""

    def point_finished(self, point: grid.Point, record: dict, computed: bool) -> None:
        """A point is done (`computed` False when its file was reused)."""

    def message(self, text: str) -> None:
        """A line for the user."""


class GridRun(NamedTuple):
    """What `run_grid` did.

    Attributes:
        files: the written tables by name.
        computed: indices of the points computed by this run.
        reused: indices of the points read back from their files.
        seconds: the run time.
    """

    files: dict[str, Path]
    computed: tuple[int, ...]
    reused: tuple[int, ...]
    seconds: float


def _remove_partials(folder: Path) -> None:
    """Deletes the temporary files that a killed run left behind."""
    for directory in (folder, folder / POINTS):
        if directory.is_dir():
            for stale in directory.glob(".*partial*"):
                stale.unlink(missing_ok=True)


@functools.lru_cache(maxsize=32)
def _paper_matrices(kind: str, seed: int, matrices) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix of the paper's synthetic matrices and their expected
    energies, in class order (drawn as in the `paper-synthetic` experiment)."""
    key_rxc, key_cxr, _ = jax.random.split(jax.random.key(seed), 3)
    setting = sweep.PaperMatrices(kind, key_rxc if kind == "rxc" else key_cxr, matrices)
    return setting.gram, setting.energies


def _loss_matrices(point: grid.PointConfig, matrices):
    """`(gram [K, K] or None, energies [K] for the theory or None)`."""
    k = point.subproducts
    if point.loss in ("rxc", "cxr"):
        return _paper_matrices(point.loss, point.seed, matrices)
    if point.loss == "energies":
        energies = np.asarray(point.energies, np.float64)
        return np.diag(energies), energies
    if point.loss == "uniform":
        return np.eye(k), np.ones(k)
    return None, None


def _theory(point: grid.PointConfig, record, energies, response, deadlines):
    """Large-field theory of every recorded quantity, `{name: (values, bound)}`.

    A quantity without a closed form (or too large to enumerate) gets `None` and a
    note saying why.
    """
    scheme = codes.Scheme.parse(point.scheme)
    w, k = point.workers, point.subproducts
    sizes, gamma = point.class_sizes, np.asarray(point.gamma)
    if scheme is codes.Scheme.EQUAL:
        scheme, sizes, gamma = codes.Scheme.NOW, (k,), np.ones(1)
    window = scheme in (codes.Scheme.NOW, codes.Scheme.EW)
    found: dict[str, tuple] = {}
    notes: list[str] = []

    def attempt(name, compute):
        try:
            return compute()
        except ValueError as error:
            notes.append(f"{name}: {error}")
            return None

    def conditional():
        if window:
            return theory.conditional_loss(
                scheme.value, sizes, gamma, energies, w, normalized=True
            )
        if scheme is codes.Scheme.MDS:
            return theory.mds_conditional_loss(k, w)
        if scheme is codes.Scheme.UNCODED:
            return theory.uncoded_conditional_loss(energies, normalized=True)
        return theory.repetition_conditional_loss(
            energies, point.repetitions, normalized=True
        )

    def bound():
        if not (window and point.loss == "cxr"):
            return None
        return theory.cxr_loss_bound(
            scheme.value, sizes, gamma, energies, w, normalized=True
        )

    if "decoding_probability" in record:
        if window:
            values = attempt(
                "decoding_probability",
                lambda: theory.decoding_probabilities(scheme.value, sizes, gamma, w),
            )
        elif scheme is codes.Scheme.MDS:
            values = (np.arange(w + 1) >= k)[None].astype(np.float64)
        else:
            values = None
            notes.append(
                f"decoding_probability: no closed form for the {point.scheme} scheme"
            )
        found["decoding_probability"] = (values, None)
    loss_records = [r for r in record if r != "decoding_probability"]
    # Uncoded and repetition rows belong to given workers: with heterogeneous
    # workers the arrival order is not uniform and their closed forms do not apply.
    if loss_records and not (window or scheme is codes.Scheme.MDS or point.homogeneous):
        for name in loss_records:
            found[name] = (None, None)
            notes.append(
                f"{name}: the closed form of the {point.scheme} scheme needs i.i.d. "
                "workers"
            )
    elif loss_records:
        by_packets = attempt("loss", conditional)
        packets_bound = attempt("bound", bound) if by_packets is not None else None
        if "loss_by_arrivals" in record:
            found["loss_by_arrivals"] = (by_packets, packets_bound)
        if "loss_by_deadline" in record:
            values = at_bound = None
            if by_packets is not None:
                values = theory.average_over_arrivals(by_packets, response, deadlines)
            if packets_bound is not None:
                at_bound = theory.average_over_arrivals(
                    packets_bound, response, deadlines
                )
            found["loss_by_deadline"] = (values, at_bound)
    return found, notes


def compute_point(
    point: grid.Point,
    sweep_config: grid.GridSweep,
    *,
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | None = None,
    progress=None,
) -> dict[str, Any]:
    """Runs one point's trials and returns its record (what its file holds).

    Every process of a `jax.distributed` job must call it with the same point.
    """
    started = time.perf_counter()
    p = point.config
    record = sweep_config.output.record
    gram, energies = _loss_matrices(p, sweep_config.matrices)
    response = p.response_time()
    deadlines = p.deadlines()
    wants_loss = any(r != "decoding_probability" for r in record)
    wants_deadline = "loss_by_deadline" in record
    if not p.homogeneous and p.scheme in FIXED_ROWS:
        # Rows that belong to given workers arrive in the order of sampled times,
        # which the engine draws only for a deadline curve: ask for one.
        wants_deadline = True
        if gram is None:
            gram = np.eye(p.subproducts)
        wants_loss = True
    key_trials = jax.random.split(jax.random.key(p.seed), 3)[2]
    rule = sweep_config.rule()
    result = simulate.curves(
        key_trials,
        p.code(),
        p.field,
        p.workers,
        sweep_config.stopping.trials,
        gram=gram if wants_loss else None,
        response_time=response if wants_deadline else None,
        deadlines=deadlines if wants_deadline else None,
        conditional=p.conditional if wants_deadline else None,
        chunk_size=chunk_size or sweep_config.run.chunk_size,
        progress=progress,
        stopping=rule,
        devices=devices,
    )
    theory_values, notes = ({}, [])
    if sweep_config.output.theory:
        theory_values, notes = _theory(p, record, energies, response, deadlines)
    confidence = sweep_config.output.confidence
    quantities = {}
    for name in record:
        estimate = getattr(result, grid.RECORDABLE[name])
        low, high = simulate.confidence_interval(
            estimate, confidence, proportion=name == "decoding_probability"
        )
        exact, bound = theory_values.get(name, (None, None))
        quantities[name] = dict(
            mean=_listed(estimate.mean),
            standard_error=_listed(estimate.standard_error),
            ci_low=_listed(low),
            ci_high=_listed(high),
            theory=None if exact is None else _listed(exact),
            theory_bound=None if bound is None else _listed(bound),
        )
    target = grid.RECORDABLE[sweep_config.target()]
    target_error = getattr(result, target)
    mesh_devices = devices or jax.local_devices()
    versions = sweep.package_versions()
    return dict(
        format=grid.FORMAT,
        hash=grid.point_hash(p, sweep_config),
        index=point.index,
        values=point.plain_values,
        config=config.to_table(p),
        key=f"jax.random.split(jax.random.key({p.seed}), 3)[2]",
        trials=result.decoded.trials,
        stop_reason=result.stop_reason.value,
        target=sweep_config.target(),
        largest_standard_error=(
            float(np.max(target_error.standard_error))
            if target_error is not None
            else None
        ),
        confidence=confidence,
        deadlines=_listed(deadlines) if wants_deadline else None,
        quantities=quantities,
        theory_notes=notes,
        seconds=round(time.perf_counter() - started, 3),
        devices=len(mesh_devices) * distributed.process_count(),
        processes=distributed.process_count(),
        platform=mesh_devices[0].platform,
        versions=versions,
    )


def _listed(values) -> list:
    return np.asarray(values, np.float64).tolist()


def _point_path(out: Path, digest: str) -> Path:
    return out / POINTS / f"{digest}.json"


def read_point(path: Path, digest: str | None = None) -> dict | None:
    """A point file's record, or None if it is missing, unreadable or of another
    point."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != grid.FORMAT:
        return None
    if digest is not None and record.get("hash") != digest:
        return None
    return record


def completed_points(sweep_config: grid.GridSweep, out: Path) -> list[bool]:
    """Whether each point of the grid has a valid file in `out`."""
    out = Path(out)
    return [
        read_point(_point_path(out, h), h) is not None for h in _hashes(sweep_config)
    ]


def _hashes(sweep_config: grid.GridSweep) -> list[str]:
    return [grid.point_hash(p.config, sweep_config) for p in sweep_config.points]


def _write_manifest(out: Path, sweep_config: grid.GridSweep, done: list[bool]) -> None:
    hashes = _hashes(sweep_config)
    entries = [
        dict(
            point=p.index,
            hash=h,
            file=f"{POINTS}/{h}.json",
            done=bool(d),
            values=p.plain_values,
        )
        for p, h, d in zip(sweep_config.points, hashes, done, strict=True)
    ]
    manifest = dict(
        format=grid.FORMAT,
        name=sweep_config.name,
        points=len(entries),
        done=int(sum(done)),
        entries=entries,
    )
    sweep.write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _parameter_cells(table: dict[str, Any]) -> dict[str, Any]:
    cells = {}
    for name in PARAMETERS:
        value = table.get(name)
        if isinstance(value, list):
            value = json.dumps(value)
        elif name == "field":
            value = str(value)
        cells[name] = value
    return cells


def _result_rows(point: grid.Point, record: dict) -> list[dict[str, Any]]:
    common = dict(
        point=point.index,
        point_hash=record["hash"],
        **_parameter_cells(record["config"]),
        confidence=record["confidence"],
        trials=record["trials"],
        stop_reason=record["stop_reason"],
        key=record["key"],
        seconds=record["seconds"],
        devices=record["devices"],
        processes=record["processes"],
        uepjax_version=record["versions"].get("uepjax"),
        jax_version=record["versions"].get("jax"),
    )
    rows = []
    for name, values in record["quantities"].items():
        mean = np.asarray(values["mean"])
        arrays = {
            column: (None if values[column] is None else np.asarray(values[column]))
            for column in ("standard_error", "ci_low", "ci_high", "theory")
        }
        bound = values.get("theory_bound")
        bound = None if bound is None else np.asarray(bound)
        for position in np.ndindex(mean.shape):
            row = dict(common, quantity=name, class_index=None, packets=None, t=None)
            if name == "decoding_probability":
                row["class_index"] = position[0] + 1
                row["packets"] = position[1]
            elif name == "loss_by_arrivals":
                row["packets"] = position[0]
            else:
                row["t"] = record["deadlines"][position[0]]
            row["mean"] = float(mean[position])
            for column, array in arrays.items():
                row[column] = None if array is None else float(array[position])
            row["theory_bound"] = None if bound is None else float(bound[position])
            rows.append(row)
    return rows


def _summary_row(point: grid.Point, record: dict) -> dict[str, Any]:
    versions = record["versions"]
    return dict(
        point=point.index,
        point_hash=record["hash"],
        label=point.label,
        **_parameter_cells(record["config"]),
        target=record["target"],
        largest_standard_error=record["largest_standard_error"],
        trials=record["trials"],
        stop_reason=record["stop_reason"],
        key=record["key"],
        seconds=record["seconds"],
        devices=record["devices"],
        processes=record["processes"],
        platform=record["platform"],
        uepjax_version=versions.get("uepjax"),
        jax_version=versions.get("jax"),
        jaxlib_version=versions.get("jaxlib"),
        numpy_version=versions.get("numpy"),
        python_version=versions.get("python"),
    )


def _arrow_type(column: str):
    import pyarrow as pa

    if column in _INTEGER:
        return pa.int64()
    if column in _FLOAT:
        return pa.float64()
    if column in _BOOLEAN:
        return pa.bool_()
    return pa.string()


def write_parquet(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    """Writes tidy rows to a Parquet file atomically, with fixed column types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, _arrow_type(c)) for c in columns])
    table = pa.Table.from_pydict(
        {c: [row.get(c) for row in rows] for c in columns}, schema=schema
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    sweep.write_atomic(path, sink.getvalue().to_pybytes())


def assemble(sweep_config: grid.GridSweep, out: Path) -> dict[str, Path]:
    """Builds the tables of a results folder from its point files.

    Raises:
        ValueError: if a point of the grid has no valid file yet.
    """
    out = Path(out)
    results, summary = [], []
    for point, digest in zip(sweep_config.points, _hashes(sweep_config), strict=True):
        record = read_point(_point_path(out, digest), digest)
        if record is None:
            raise ValueError(
                f"point {point.index} ({point.label}) has no result file in {out}; "
                "run the sweep to finish it"
            )
        results.extend(_result_rows(point, record))
        summary.append(_summary_row(point, record))
    files = {}
    for name, rows, columns in (
        ("results", results, RESULT_COLUMNS),
        ("summary", summary, SUMMARY_COLUMNS),
    ):
        write_parquet(out / f"{name}.parquet", rows, columns)
        sweep.write_csv(out / f"{name}.csv", rows, columns)
        files[f"{name}_parquet"] = out / f"{name}.parquet"
        files[f"{name}_csv"] = out / f"{name}.csv"
    return files


def _trial_budget(sweep_config: grid.GridSweep, pending: int) -> int:
    return pending * sweep_config.stopping.trials


def run_grid(
    sweep_config: grid.GridSweep,
    out: str | Path,
    events: Events | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | None = None,
) -> GridRun:
    """Runs every point of a grid that is not done yet, then writes the tables.

    Args:
        sweep_config: the validated grid (`grid.load_grid`).
        out: the results folder (created if needed); the same folder resumes.
        events: told about progress (process 0 only).
        devices: the local devices to use (all by default).
        chunk_size: trials per chunk, overriding the config (same numbers).

    Returns:
        A `GridRun`. Every process returns the same points; only process 0 writes.
    """
    started = time.perf_counter()
    programs_before = simulate.compiled_programs()
    main = distributed.is_main_process()
    events = events if (events is not None and main) else Events()
    out = Path(out)
    if main:
        (out / POINTS).mkdir(parents=True, exist_ok=True)
        _remove_partials(out)
        done = completed_points(sweep_config, out)
    else:
        done = [False] * len(sweep_config.points)
    # Process 0 sees the files; the others follow its view of what is done.
    done = [
        bool(d) for d in distributed.broadcast_from_main(np.asarray(done, np.int32))
    ]
    if main:
        _write_manifest(out, sweep_config, done)
    pending = [p for p, d in zip(sweep_config.points, done, strict=True) if not d]
    reused = tuple(p.index for p, d in zip(sweep_config.points, done, strict=True) if d)
    events.sweep_started(
        len(sweep_config.points), len(reused), _trial_budget(sweep_config, len(pending))
    )
    if reused:
        events.message(f"reusing {len(reused)} finished point(s) from {out}")
    computed = []
    for point in pending:
        events.point_started(point)
        record = compute_point(
            point,
            sweep_config,
            devices=devices,
            chunk_size=chunk_size,
            progress=events.trials,
        )
        if main:
            text = json.dumps(record, indent=1, allow_nan=False) + "\n"
            sweep.write_atomic(_point_path(out, record["hash"]), text)
            done[point.index] = True
            _write_manifest(out, sweep_config, done)
        computed.append(point.index)
        events.point_finished(point, record, True)
    files = {}
    if main:
        files = assemble(sweep_config, out)
        files["manifest"] = out / MANIFEST
        if sweep_config.output.figures:
            from uepjax import plot

            for name, path in plot.grid_figures(out).items():
                files[f"{name}_png"] = path
        programs = simulate.compiled_programs()
        if programs is not None and programs_before is not None:
            programs -= programs_before
        files["run"] = _write_run_record(
            out, sweep_config, started, computed, reused, devices, programs
        )
    distributed.barrier("uepjax-sweep-done")
    return GridRun(files, tuple(computed), reused, time.perf_counter() - started)


def _write_run_record(
    out, sweep_config, started, computed, reused, devices, programs
) -> Path:
    local = list(devices or jax.local_devices())
    record = dict(
        config=sweep_config.table(),
        points=len(sweep_config.points),
        computed=list(computed),
        reused=list(reused),
        compiled_programs=programs,
        versions=sweep.package_versions(),
        devices=[str(d) for d in local],
        processes=distributed.process_count(),
        seconds=round(time.perf_counter() - started, 3),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    path = out / "run.json"
    sweep.write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
