"""The measurements of the benchmark, one function per section of the report.

Each function takes a :class:`Profile` (the sizes of one run) and returns plain
dicts and lists, ready for ``results.json``. Inputs are drawn once per case and the
library and every baseline decode the same matrices; their answers are compared and
the agreement is part of the result.

Operation counts (``useful operations``) are field multiply-subtracts:

* Gauss-Jordan of an ``R x C`` matrix (``uepjax.fields.rank`` over GF(2), the plain
  baseline): ``C`` steps, each updating all ``R C`` entries: ``R C^2``.
* Forward elimination of an ``R x C`` matrix (``uepjax.fields.rank`` over the other
  finite fields, ``R >= C``): step ``c`` updates the ``R (C - c)`` entries of the
  columns not yet eliminated: ``R C (C + 1) / 2``.
* Progressive decoding of ``W`` arrivals with ``K`` unknowns: per row read a product
  of the row with the ``K x K`` null-space basis and an update of the basis,
  ``2 K^2``, times the rows the batch actually read (a trial skips rows inside its
  recovered set and stops when none is left; see :func:`rows_per_trial`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import resource
from collections.abc import Callable

import baselines
import jax
import jax.numpy as jnp
import limits
import numpy as np
from timing import LoopTiming, Timing, interleaved, measure, per_item

from uepjax import codes, decode, fields, simulate

__all__ = [
    "GAMMA",
    "Profile",
    "class_sizes",
    "decode_case",
    "decoding",
    "elementwise_limits",
    "field_label",
    "now_blocks",
    "rank_comparison",
    "scaling",
    "trial_breakdown",
]

GAMMA = (0.40, 0.35, 0.25)
"""Window probabilities of the paper's EW code (Sec. VI), used at every size."""

LARGE_PRIME = 2**31 - 1

HAVE_GALOIS = importlib.util.find_spec("galois") is not None
"""The galois baselines run only where galois is installed (a GPU machine may lack
it); their rows then say n/a."""


def _forever() -> float:
    return math.inf


@dataclasses.dataclass(frozen=True)
class Profile:
    """The sizes and budgets of one benchmark run.

    Attributes:
        name: ``"cpu"``, ``"quick"`` or ``"gpu"``.
        fields: field orders (``"real"`` for real coefficients).
        sizes: ``(K, W)`` pairs of the throughput table.
        operations: multiply-subtracts per timed decoding call; the number of trials
            of a case is this over ``W K^2``, a power of two within the bounds.
        min_trials: fewest trials of a timed decoding call.
        max_trials: most trials of a timed decoding call.
        repeats: timed repeats of every JAX measurement (median reported).
        rank_trials: matrices of the batched-rank comparison (``15 x 9``).
        loop_items: most matrices of a per-matrix loop (galois, NumPy).
        loop_seconds: time budget of each per-matrix loop.
        prefix_max_workers: the galois all-prefixes loop runs for ``W`` up to this.
        limit_elements: words per operand of the elementwise limit.
        limit_seconds: about how long one timed call of the limit lasts.
        limit_variants: the ``(chains, steps, width)`` kernel shapes tried for the
            limit (``limits.VARIANTS``).
        compiled_memory: report the memory of compiled programs (compiles each
            measured program a second time).
        scaling_trials: trials of the scaling-with-trials rows (``K=9, W=30``).
        scaling_fields: the fields of the scaling-with-trials rows.
        scaling_subproducts: ``K`` of the scaling-with-``K`` rows.
        scaling_subproducts_workers: ``W`` of the scaling-with-``K`` rows.
        scaling_workers: ``W`` of the scaling-with-``W`` rows (``K = 9``).
        point_fields: the fields of the end-to-end paper point.
        point_trials: increasing trial counts run by one process per field; the
            last one is the end-to-end point, all of them show peak memory.
        point_now_fields: fields whose point runs once more with the NOW code,
            decoded class by class as in calls of 10^6 trials.
        point_multi_device_fields: fields whose point runs once more with one XLA
            device per CPU core (on a CPU backend), over which the engine splits
            each chunk.
        chunk_size: trials per chunk of ``uepjax.simulate.curves``.
        main_job_trials: trials per curve of the main job (None: the config's).
        main_job_fields: fields of the main job (None: the config's).
        main_job: whether to run the main job at all.
        time_budget: seconds for the whole run, or None; once spent, the remaining
            decoding and scaling cases, points and the main job are skipped (and
            listed in the report).
        main_job_seconds: time the main job needs, kept free of the budget.
    """

    name: str
    fields: tuple = (2, 256, LARGE_PRIME, "real")
    sizes: tuple = ((9, 15), (9, 30), (16, 64), (32, 128), (64, 256))
    operations: float = 4e7
    min_trials: int = 128
    max_trials: int = 16384
    repeats: int = 5
    rank_trials: int = 16384
    loop_items: int = 200
    loop_seconds: float = 1.0
    prefix_max_workers: int = 30
    limit_elements: int = 2**20
    limit_seconds: float = 0.3
    limit_variants: tuple = limits.VARIANTS
    compiled_memory: bool = True
    scaling_trials: tuple = (1024, 4096, 16384, 65536)
    scaling_fields: tuple = (256, LARGE_PRIME)
    scaling_subproducts: tuple = (9, 16, 32, 64)
    scaling_subproducts_workers: int = 64
    scaling_workers: tuple = (15, 30, 64, 128, 256)
    point_fields: tuple = (LARGE_PRIME, 256, 2)
    point_trials: tuple = (10_000, 100_000, 1_000_000)
    point_now_fields: tuple = (LARGE_PRIME, 256)
    point_multi_device_fields: tuple = (LARGE_PRIME, 256, 2)
    chunk_size: int = simulate.DEFAULT_CHUNK
    main_job_trials: int | None = None
    main_job_fields: tuple | None = None
    main_job: bool = True
    time_budget: float | None = None
    main_job_seconds: float = 60.0

    def decode_trials(self, subproducts: int, workers: int) -> int:
        """Trials of one timed decoding call at ``(K, W)``."""
        wanted = self.operations / (workers * subproducts**2)
        power = 2 ** max(0, math.floor(math.log2(max(wanted, 1))))
        return int(min(max(power, self.min_trials), self.max_trials))


def field_label(q) -> str:
    """``GF(2)``, ``GF(2^8)``, ``GF(2^31-1)``, ``GF(65521)`` or ``real``."""
    field = fields.get_field(q)
    if field.kind is fields.FieldKind.REAL:
        return "real"
    if field.kind is fields.FieldKind.EXTENSION:
        return f"GF(2^{field.degree})"
    if field.order == LARGE_PRIME:
        return "GF(2^31-1)"
    return f"GF({field.order})"


def class_sizes(subproducts: int) -> tuple[int, int, int]:
    """``K`` split into three classes as evenly as possible, largest first."""
    base, extra = divmod(subproducts, 3)
    return tuple(base + (i < extra) for i in range(3))


@functools.partial(jax.jit, static_argnames=("field", "workers", "trials"))
def _draw_rows(key, model, field, workers, trials):
    keys = jax.vmap(jax.random.fold_in, (None, 0))(
        key, jnp.arange(trials, dtype=jnp.uint32)
    )
    return jax.vmap(lambda k: codes.sample_rows(k, model, field, workers))(keys)


def draw_rows(
    field: fields.Field, subproducts: int, workers: int, trials: int, scheme="ew"
):
    """``[trials, W, K]`` rows of the EW (or NOW) code with :data:`GAMMA`, in
    arrival order."""
    code = codes.make_code(scheme, class_sizes(subproducts), GAMMA)
    model = codes.row_model(code, field, workers)
    return _draw_rows(
        jax.random.key(subproducts * 1000 + workers), model, field, workers, trials
    )


def _timing(t: Timing, items: int) -> dict:
    """A timing with its throughput in items per second."""
    record = t.to_dict()
    record["per_second"] = items / t.wall
    record["per_cpu_second"] = items / t.cpu if t.cpu > 0 else None
    return record


def _loop_record(loop: LoopTiming) -> dict:
    return dict(
        seconds_per_item=loop.seconds,
        cpu_per_item=loop.cpu,
        items=loop.items,
        per_second=1.0 / loop.seconds,
    )


def _per_matrix(profile: Profile, items: int, baseline, host, expected):
    """``(record, agreement)`` of ``baseline`` called on one matrix of ``host`` at a
    time, for ``items`` matrices."""
    loop = per_item(lambda i: baseline(host[i : i + 1]), items, profile.loop_seconds)
    return _loop_record(loop), _loop_agreement(loop, expected)


def _loop_agreement(loop: LoopTiming, expected: np.ndarray) -> float:
    """Fraction of the loop's answers (one per item) equal to ``expected``."""
    answers = np.concatenate([np.asarray(o) for o in loop.outputs])
    return float(
        np.mean(
            np.all(
                answers.reshape(len(answers), -1)
                == expected[: len(answers)].reshape(len(answers), -1),
                axis=-1,
            )
        )
    )


def numpy_batch(rows: int, cols: int, trials: int) -> int:
    """Matrices given to one call of the NumPy baselines: about 2e7 operations."""
    return int(min(trials, 4096, max(16, 2e7 // (rows * cols * cols))))


def compiled_bytes(profile: Profile, jitted, *args, **static) -> int | None:
    """Argument, output and temporary bytes of a compiled program, if known."""
    if not profile.compiled_memory:
        return None
    try:
        stats = jitted.lower(*args, **static).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
    )


# ---------------------------------------------------------------------------------
# The machine's limit.


def elementwise_limits(profile: Profile) -> tuple[dict, dict]:
    """Field multiply-subtracts per second of the fastest fused chain, per field.

    Returns:
        ``(records, kernels)``: a JSON record and the calibrated
        :class:`limits.Kernel` of every field, by label. Later sections time the
        kernel again in alternation with what they measure, so that a fraction of
        the limit compares rates under the same load.
    """
    records, kernels = {}, {}
    for q in profile.fields:
        field = fields.get_field(q)
        kernel, rate, variants = limits.calibrate(
            field,
            profile.limit_elements,
            profile.limit_seconds,
            profile.repeats,
            profile.limit_variants,
        )
        label = field_label(q)
        kernels[label] = kernel
        records[label] = dict(
            rate=rate,
            shape=kernel.name,
            chains=kernel.chains,
            unroll=kernel.unroll,
            width=kernel.width,
            loops=kernel.loops,
            elements=kernel.elements,
            elements_per_word=limits.elements_per_word(field),
            variants={
                name: dict(t.to_dict(), rate=r) for name, (t, r) in variants.items()
            },
        )
    return records, kernels


def _limit_rate(kernels: dict, label: str, timings: dict) -> float:
    """The limit's rate from its timing alongside a measurement."""
    return kernels[label].work / timings["limit"].wall


# ---------------------------------------------------------------------------------
# Batched rank against per-matrix loops.


def _rank_field(q) -> dict:
    return dict(field=field_label(q), galois=HAVE_GALOIS and q != "real")


def rank_elimination(field: fields.Field) -> str:
    """The elimination ``uepjax.fields.rank`` runs over ``field``."""
    if field.kind is fields.FieldKind.BINARY:
        return "Gauss-Jordan"
    if field.kind is fields.FieldKind.REAL:
        return "singular values"
    return "forward elimination"


def rank_operations(field: fields.Field, rows: int, cols: int) -> int:
    """Useful multiply-subtracts of one rank (see the module docstring)."""
    rows, cols = max(rows, cols), min(rows, cols)
    if rank_elimination(field) == "forward elimination":
        return rows * cols * (cols + 1) // 2
    return rows * cols * cols


def rank_updates(rows: int, cols: int) -> int:
    """Entries that the forward elimination of ``fields.rank`` updates in a matrix.

    Mirrors ``fields._rank_forward``: every step updates all rows, and only the
    columns eliminated in earlier phases are dropped.
    """
    rows, cols = max(rows, cols), min(rows, cols)
    bounds = fields._rank_phase_bounds(cols)
    steps = zip(bounds[:-1], bounds[1:], strict=True)
    return rows * sum((stop - start) * (cols - start) for start, stop in steps)


def rank_comparison(profile: Profile, kernels: dict, rows: int = 15, cols: int = 9):
    """``uepjax.fields.rank`` on a batch against galois and NumPy, per field."""
    results = []
    for q in profile.fields:
        field = fields.get_field(q)
        record = _rank_field(q)
        matrices = field.random(jax.random.key(7), (profile.rank_trials, rows, cols))
        host = np.asarray(matrices)
        timings = interleaved(
            {
                "rank": lambda m=matrices, f=field: fields.rank(m, f),
                "limit": kernels[record["field"]].call,
            },
            profile.repeats,
        )
        timing = timings["rank"]
        ranks = np.asarray(fields.rank(matrices, field))
        record.update(
            rows=rows,
            cols=cols,
            trials=profile.rank_trials,
            uepjax=_timing(timing, profile.rank_trials),
            uepjax_seconds_per_item=timing.wall / profile.rank_trials,
            memory_bytes=compiled_bytes(
                profile, fields._rank_jit, matrices, field=field
            ),
        )
        items = min(profile.loop_items, profile.rank_trials)
        record["numpy_loop"], agree = _per_matrix(
            profile, items, lambda m, f=field: baselines.numpy_rank(m, f), host, ranks
        )
        agreement = [agree]
        part = host[: numpy_batch(rows, cols, profile.rank_trials)]
        batched = measure(lambda h=part, f=field: baselines.numpy_rank(h, f), 1)
        record["numpy_batched"] = dict(
            _timing(batched, part.shape[0]), items=part.shape[0]
        )
        record["numpy_batched_seconds_per_item"] = batched.wall / part.shape[0]
        agreement.append(
            float(np.mean(baselines.numpy_rank(part, field) == ranks[: len(part)]))
        )
        if record["galois"]:
            record["galois_loop"], agree = _per_matrix(
                profile,
                items,
                lambda m, o=q: baselines.galois_rank_loop(m, o),
                host,
                ranks,
            )
            agreement.append(agree)
            record["speedup_galois"] = (
                record["galois_loop"]["seconds_per_item"]
                / record["uepjax_seconds_per_item"]
            )
        record["speedup_numpy_loop"] = (
            record["numpy_loop"]["seconds_per_item"] / record["uepjax_seconds_per_item"]
        )
        record["speedup_numpy_batched"] = (
            record["numpy_batched_seconds_per_item"] / record["uepjax_seconds_per_item"]
        )
        record["agree"] = min(agreement)
        record["elimination"] = rank_elimination(field)
        if record["elimination"] == "forward elimination":
            record["updates_per_matrix"] = rank_updates(rows, cols)
        operations = rank_operations(field, rows, cols) * profile.rank_trials
        record["useful_per_second"] = operations / timing.wall
        record["limit_rate"] = _limit_rate(kernels, record["field"], timings)
        record["fraction_of_limit"] = record["useful_per_second"] / record["limit_rate"]
        record["fraction_of_limit_cpu"] = (
            operations
            / timing.cpu
            / (kernels[record["field"]].work / timings["limit"].cpu)
        )
        results.append(record)
    return results


# ---------------------------------------------------------------------------------
# Decoding throughput against the baselines.


def rows_per_trial(rows: np.ndarray, index: np.ndarray) -> float:
    """Rows the progressive decoder inserted, per trial of this batch.

    It mirrors the pass of `uepjax.decode`: a trial reads, one a step, the rows
    whose support is not inside the set it has recovered; a stage runs until its
    unfinished trials fit the next stage (the last one until none is left), and
    each step costs one insert for each trial of the stage.
    """
    batch, arrivals, _ = rows.shape
    recovered_before = index[:, None, :] <= np.arange(arrivals)[None, :, None]
    read = np.any((rows != 0) & ~recovered_before, axis=-1).sum(axis=1)
    sizes = decode._stage_sizes(batch) + [0]
    start, steps = 0, 0
    for size, following in zip(sizes[:-1], sizes[1:], strict=True):
        end = start
        while np.sum(read > end) > following:
            end += 1
        steps += (end - start) * size
        start = end
    return steps / batch


def decode_case(
    profile: Profile,
    q,
    subproducts: int,
    workers: int,
    kernels: dict,
    *,
    baselines_too: bool = True,
    trials: int | None = None,
) -> dict:
    """Progressive decoding of one ``(field, K, W)`` case, with the baselines."""
    field = fields.get_field(q)
    trials = trials or profile.decode_trials(subproducts, workers)
    rows = draw_rows(field, subproducts, workers, trials)
    jax.block_until_ready(rows)
    label = field_label(q)
    record = dict(field=label, subproducts=subproducts, workers=workers, trials=trials)

    rivals: dict[str, Callable] = {
        "progressive": lambda: decode.recovery_index(rows, field),
        "limit": kernels[label].call,
    }
    if baselines_too:
        rivals["plain"] = lambda: baselines.plain_recoverable(rows, field)
    timings = interleaved(rivals, profile.repeats)
    index = np.asarray(decode.recovery_index(rows, field))
    recovered = index <= workers
    read = rows_per_trial(np.asarray(rows), index)
    record.update(
        rows_per_trial=read,
        recovered_fraction=float(recovered.mean()),
        progressive=_timing(timings["progressive"], trials),
        memory_bytes=compiled_bytes(
            profile, decode._recovery_index_jit, rows, field=field
        ),
    )
    operations = 2 * subproducts**2 * read * trials
    record["useful_per_second"] = operations / timings["progressive"].wall
    record["limit_rate"] = _limit_rate(kernels, label, timings)
    record["fraction_of_limit"] = record["useful_per_second"] / record["limit_rate"]
    limit_cpu_rate = kernels[label].work / timings["limit"].cpu
    record["fraction_of_limit_cpu"] = (
        operations / timings["progressive"].cpu / limit_cpu_rate
    )
    if not baselines_too:
        return record

    plain = np.asarray(baselines.plain_recoverable(rows, field))
    record["plain"] = _timing(timings["plain"], trials)
    record["agree_plain"] = float(np.mean(np.all(plain == recovered, axis=-1)))
    record["speedup_plain"] = timings["plain"].wall / timings["progressive"].wall
    plain_operations = workers * subproducts**2 * trials
    record["plain_fraction_of_limit"] = (
        plain_operations / timings["plain"].wall / record["limit_rate"]
    )

    host = np.asarray(rows)
    batch = host[: numpy_batch(workers, subproducts, trials)]
    numpy_batched = measure(lambda: baselines.numpy_recoverable(batch, field), 1)
    record["numpy_batched"] = _timing(numpy_batched, batch.shape[0])
    numpy_answer = baselines.numpy_recoverable(batch, field)
    record["agree_numpy"] = float(
        np.mean(np.all(numpy_answer == recovered[: batch.shape[0]], axis=-1))
    )
    items = min(profile.loop_items, trials)
    record["numpy_loop"], record["agree_numpy_loop"] = _per_matrix(
        profile,
        items,
        lambda m: baselines.numpy_recoverable(m, field),
        host,
        recovered,
    )
    if HAVE_GALOIS and q != "real":
        record["galois_loop"], record["agree_galois"] = _per_matrix(
            profile,
            items,
            lambda m: baselines.galois_recoverable_loop(m, q),
            host,
            recovered,
        )
        if workers <= profile.prefix_max_workers:
            record["galois_prefix_loop"], record["agree_galois_prefix"] = _per_matrix(
                profile,
                items,
                lambda m: baselines.galois_recovery_index_loop(m, q),
                host,
                index,
            )
    return record


def _silent(message: str) -> None:
    del message


def decoding(
    profile: Profile,
    kernels: dict,
    time_left: Callable[[], float] = _forever,
    say: Callable[[str], None] = _silent,
) -> tuple[list[dict], list[str]]:
    """The throughput table: every field at every size, with the baselines.

    Returns:
        ``(rows, skipped)``: the cases measured and, once ``time_left()`` is not
        positive, the cases left out.
    """
    rows, skipped = [], []
    for q in profile.fields:
        for k, w in profile.sizes:
            if time_left() <= 0:
                skipped.append(f"decoding {field_label(q)} {k} x {w}")
                continue
            say(f"  {field_label(q)}, K = {k}, W = {w}")
            rows.append(decode_case(profile, q, k, w, kernels))
    return rows, skipped


# The block decoder itself: `decode._recovery_index_jit` skips it over GF(2).
_by_blocks = jax.jit(decode._recovery_by_blocks, static_argnames=("field", "blocks"))


def _now_case(profile: Profile, q, subproducts: int, workers: int) -> dict:
    """NOW rows decoded block by block against one pass, for one field."""
    field = fields.get_field(q)
    blocks = class_sizes(subproducts)
    # Batches of the simulator's chunk: which decoder is faster depends on it.
    trials = profile.chunk_size
    rows = draw_rows(field, subproducts, workers, trials, scheme="now")
    jax.block_until_ready(rows)
    rivals = {
        "one_pass": lambda: decode._recovery_index_jit(rows, field),
        "blocks": lambda: _by_blocks(rows, field, blocks),
    }
    timings = interleaved(rivals, profile.repeats)
    return dict(
        field=field_label(q),
        subproducts=subproducts,
        workers=workers,
        trials=trials,
        one_pass=_timing(timings["one_pass"], trials),
        blocks=_timing(timings["blocks"], trials),
        speedup=timings["one_pass"].wall / timings["blocks"].wall,
        simulator_blocks=decode._blocks_pay(field),
        agree=bool(
            np.array_equal(np.asarray(rivals["one_pass"]()), rivals["blocks"]())
        ),
    )


def now_blocks(
    profile: Profile,
    time_left: Callable[[], float] = _forever,
    say: Callable[[str], None] = _silent,
) -> tuple[list[dict], list[str]]:
    """NOW rows at 9 x 30, decoded block by block against one pass over all
    sub-products, for every field of the profile, with the simulator's choice.

    Returns:
        ``(rows, skipped)``, as :func:`decoding`.
    """
    found, skipped = [], []
    for q in profile.fields:
        if time_left() <= 0:
            skipped.append(f"NOW blocks {field_label(q)}")
            continue
        say(f"  NOW, {field_label(q)}, K = 9, W = 30")
        found.append(_now_case(profile, q, 9, 30))
    return found, skipped


def scaling(
    profile: Profile,
    kernels: dict,
    done: list[dict],
    time_left: Callable[[], float] = _forever,
    say: Callable[[str], None] = _silent,
) -> tuple[dict, list[str]]:
    """Progressive decoding throughput against trials, ``K`` and ``W``.

    Cases already in ``done`` (the throughput table) are reused, not measured again.

    Returns:
        ``(tables, skipped)``, as :func:`decoding`.
    """
    known = {(r["field"], r["subproducts"], r["workers"], r["trials"]): r for r in done}
    skipped = []

    def case(q, k, w, trials=None):
        trials = trials or profile.decode_trials(k, w)
        found = known.get((field_label(q), k, w, trials))
        if found is None and time_left() <= 0:
            skipped.append(f"scaling {field_label(q)} {k} x {w}, {trials} trials")
        elif found is None:
            say(f"  {field_label(q)}, K = {k}, W = {w}, {trials} trials")
            found = decode_case(
                profile, q, k, w, kernels, baselines_too=False, trials=trials
            )
            known[field_label(q), k, w, trials] = found
        return found

    cases = dict(
        trials=[
            (q, 9, 30, trials)
            for q in profile.scaling_fields
            for trials in profile.scaling_trials
        ],
        subproducts=[
            (q, k, profile.scaling_subproducts_workers)
            for q in profile.fields
            for k in profile.scaling_subproducts
        ],
        workers=[(q, 9, w) for q in profile.fields for w in profile.scaling_workers],
    )
    tables = {
        name: [r for r in (case(*c) for c in entries) if r is not None]
        for name, entries in cases.items()
    }
    return tables, skipped


def trial_breakdown(profile: Profile, decode_rows: list[dict]) -> list[dict]:
    """Per-trial cost at the paper's size: drawing rows plus decoding, and decoding.

    ``uepjax.simulate.sample_recovery`` draws and decodes (the engine's own code);
    decoding alone comes from the throughput table (rows of the same shape, drawn
    beforehand). Both in wall and in CPU seconds per trial: on a shared machine
    the CPU time is the steadier measure of work.
    """
    found = []
    code = codes.ew((3, 3, 3), GAMMA)
    for q in profile.point_fields:
        field = fields.get_field(q)
        trials = profile.decode_trials(9, 30)
        timing = measure(
            lambda f=field, t=trials: simulate.sample_recovery(
                jax.random.key(3), code, f, 30, t
            ),
            profile.repeats,
        )
        record = dict(
            field=field_label(q),
            trials=trials,
            draw_and_decode_seconds_per_trial=timing.wall / trials,
            draw_and_decode_cpu_per_trial=timing.cpu / trials,
            decode_seconds_per_trial=None,
            decode_cpu_per_trial=None,
        )
        for r in decode_rows:
            if r["field"] == record["field"] and (r["subproducts"], r["workers"]) == (
                9,
                30,
            ):
                record["decode_seconds_per_trial"] = (
                    r["progressive"]["wall"] / r["trials"]
                )
                record["decode_cpu_per_trial"] = r["progressive"]["cpu"] / r["trials"]
        found.append(record)
    return found


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB.

    The high-water mark since the last :func:`reset_peak_rss` where Linux allows
    resetting it, else since the process started.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float | None:
    """Resident set size of this process now, in MiB, where known."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restarts the high-water mark of :func:`peak_rss_mib` (Linux); says if it did."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True
