"""The Monte Carlo engine: sample packets, decode for real, estimate losses.

A trial draws every worker's coefficient row, puts the rows in arrival order and decodes
them progressively (`uepjax.decode.recovery_index`): one elimination gives, for each
sub-product, the number of arrivals after which it is recovered. Every statistic is a
function of those indices, so one trial serves all packet counts and all deadlines at
once.

- Loss against received packets: after `n` arrivals the unrecovered set `u_n` gives the
  normalised loss `u_n^T G u_n / 1^T G 1`.
- Loss against deadline, i.i.d. workers: the window draws in arrival order do not depend
  on the times, so `E[loss(t)] = sum_n Binom(n; W, F(t)) E[loss | n]` (eq. 16). Each
  trial contributes its exact conditional expectation over the arrival times, which
  removes the latency noise from the estimate.
- Loss against deadline, heterogeneous workers: the times are sampled, the arrival order
  is the order of the times and the loss at `t` counts the arrivals by `t`.

Trial `t` is keyed by `fold_in(key, t)` and trials run in chunks of `chunk_size`, so
memory is flat in the number of trials. Sums are taken in float64 over fixed blocks of
`BLOCK_TRIALS` trials and then in block order, so a result does not depend on the chunk
size.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uepjax import codes, decode, fields, latency, theory

__all__ = [
    "BLOCK_TRIALS",
    "Estimate",
    "Curves",
    "curves",
    "sample_recovery",
    "decoding_estimate",
    "decoding_probabilities",
    "loss_by_arrivals",
    "loss_by_deadline",
]

logger = logging.getLogger(__name__)

BLOCK_TRIALS = 1024
"""Trials per summation block; `chunk_size` must be a multiple of it."""

DEFAULT_CHUNK = 8 * BLOCK_TRIALS

Progress = Callable[[int], None]


class Estimate(NamedTuple):
    """A Monte Carlo estimate.

    Attributes:
        mean: the sample mean, float64, shaped like one trial's value.
        standard_error: the standard error of the mean, same shape.
        trials: the number of trials.
    """

    mean: np.ndarray
    standard_error: np.ndarray
    trials: int


class _Moments:
    """Running first and second moments over blocks of trials, in float64."""

    def __init__(self):
        self.total = None
        self.total_squares = None
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        """Adds `[n, ...]` per-trial values, `n` a multiple of BLOCK_TRIALS but last."""
        values = np.asarray(values, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros(values.shape[1:])
            self.total_squares = np.zeros(values.shape[1:])
        starts = range(0, values.shape[0], BLOCK_TRIALS)
        block_sums = np.stack([values[s : s + BLOCK_TRIALS].sum(0) for s in starts])
        block_squares = np.stack(
            [np.square(values[s : s + BLOCK_TRIALS]).sum(0) for s in starts]
        )
        self.total = np.cumsum(np.concatenate([self.total[None], block_sums]), 0)[-1]
        self.total_squares = np.cumsum(
            np.concatenate([self.total_squares[None], block_squares]), 0
        )[-1]
        self.count += values.shape[0]

    def estimate(self) -> Estimate:
        mean = self.total / self.count
        variance = np.maximum(self.total_squares / self.count - np.square(mean), 0.0)
        correction = self.count / max(self.count - 1, 1)
        standard_error = np.sqrt(variance * correction / self.count)
        return Estimate(mean, standard_error, self.count)


def _check_trials(trials, chunk_size) -> None:
    if not isinstance(trials, int | np.integer) or trials < 1:
        raise ValueError(f"trials must be a positive integer (got {trials!r})")
    if (
        not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
        or chunk_size % BLOCK_TRIALS
    ):
        raise ValueError(
            f"chunk_size must be a positive multiple of {BLOCK_TRIALS} "
            f"(got {chunk_size!r})"
        )


def _trial_keys(key: jax.Array, start, size: int) -> jax.Array:
    index = start + jnp.arange(size, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def _arrival_rows(key, model, field, workers, arrival_times):
    """`[W, K]` one trial's rows in arrival order and the `[W]` sorted arrival times."""
    key_rows, key_arrivals = jax.random.split(key)
    rows = codes.sample_rows(key_rows, model, field, workers)
    if arrival_times is None:
        if model.iid:
            return rows, None
        order = jax.random.permutation(key_arrivals, workers)
        return rows[order], None
    times = arrival_times.sample(key_arrivals, (workers,))
    order = jnp.argsort(times)
    return rows[order], times[order]


def _recovery(key, start, model, field, workers, size, arrival_times=None):
    keys = _trial_keys(key, start, size)
    rows, times = jax.vmap(
        lambda k: _arrival_rows(k, model, field, workers, arrival_times)
    )(keys)
    return decode.recovery_index(rows, field), times


@functools.partial(jax.jit, static_argnames=("field", "workers", "size"))
def _recovery_chunk(key, start, model, field, workers, size):
    return _recovery(key, start, model, field, workers, size)[0]


def sample_recovery(
    key: jax.Array, code: codes.Code, field, workers: int, trials: int
) -> jax.Array:
    """Decodes `trials` trials at once and returns their recovery indices.

    Args:
        key: a typed PRNG key; trial `t` uses `fold_in(key, t)`.
        code: the code.
        field: the field order `q`, `"real"` or a `fields.Field`.
        workers: `W`.
        trials: the number of trials (all in memory: use the estimators for many).

    Returns:
        `[trials, K] int32`: the number of arrivals after which each sub-product is
        recovered, `W + 1` if it never is.
    """
    field = fields.get_field(field)
    _check_trials(trials, BLOCK_TRIALS)
    model = codes.row_model(code, field, workers)
    return _recovery_chunk(key, jnp.uint32(0), model, field, workers, trials)


class Curves(NamedTuple):
    """Everything one set of trials estimates.

    Attributes:
        decoded: `[L, W + 1]` fraction of trials with class `l` fully recovered after
            `n` packets.
        by_arrivals: `[..., W + 1]` normalised loss after `n` packets, one row per Gram
            matrix (no leading axis for a single one); None without a Gram matrix.
        by_deadline: `[..., D]` expected normalised loss at each deadline; None without
            deadlines.
    """

    decoded: Estimate
    by_arrivals: Estimate | None
    by_deadline: Estimate | None


def _class_decoded(recovery, class_of_subproduct, num_classes, workers):
    """`[trials, L, W + 1]`: 1 where class `l` is fully recovered after `n` arrivals."""
    segments = jnp.asarray(class_of_subproduct)
    class_index = jax.vmap(
        lambda r: jax.ops.segment_max(r, segments, num_segments=num_classes)
    )(recovery)
    packets = jnp.arange(workers + 1)
    return (class_index[:, :, None] <= packets).astype(jnp.float32)


def _recovery_losses(recovery, gram):
    """Per-trial losses at each stage of recovery.

    Args:
        recovery: `[trials, K] int32` recovery indices.
        gram: `[K, K] float32` normalised Gram matrix (`1^T G 1 = 1`).

    Returns:
        `sorted_index [trials, K]`, the recovery indices in increasing order, and
        `stage_loss [trials, K + 1]`: the loss once the first `j` sub-products in that
        order are recovered.
    """
    k = recovery.shape[-1]
    order = jnp.argsort(recovery, axis=-1, stable=True)
    sorted_index = jnp.take_along_axis(recovery, order, axis=-1)
    position = jnp.argsort(order, axis=-1)
    stage = jnp.arange(k + 1)
    unrecovered = (position[:, None, :] >= stage[None, :, None]).astype(gram.dtype)
    coupled = jnp.matmul(unrecovered, gram, precision=jax.lax.Precision.HIGHEST)
    stage_loss = jnp.sum(coupled * unrecovered, axis=-1)
    # Dividing by stage 0 (nothing recovered) makes the loss exactly 1 there.
    return sorted_index, stage_loss / stage_loss[:, :1]


def _loss_after_arrivals(sorted_index, stage_loss, workers):
    """`[trials, W + 1]` loss after `n = 0..W` arrivals."""
    packets = jnp.arange(workers + 1)
    recovered = jax.vmap(lambda s: jnp.searchsorted(s, packets, side="right"))(
        sorted_index
    )
    return jnp.take_along_axis(stage_loss, recovered, axis=-1)


def _expected_over_times(sorted_index, stage_loss, survival, workers):
    """`[trials, D]` each trial's loss averaged over i.i.d. arrival times.

    `survival [D, W + 2]` holds `P(N(t) >= m)` for `m = 0..W + 1`; the loss equals stage
    `j` while `N(t)` lies in `[r_(j), r_(j+1))`.
    """
    bounds = jnp.concatenate(
        [
            jnp.zeros_like(sorted_index[:, :1]),
            sorted_index,
            jnp.full_like(sorted_index[:, :1], workers + 1),
        ],
        axis=-1,
    )
    at_bounds = survival[:, bounds]
    stage_probability = at_bounds[..., :-1] - at_bounds[..., 1:]
    return jnp.sum(stage_probability * stage_loss[None], axis=-1).T


def _loss_at_sampled_times(sorted_index, stage_loss, arrival, deadlines):
    """`[trials, D]` loss at each deadline given the sorted arrival times `[trials,
    W]`."""
    padded = jnp.concatenate([arrival, jnp.full_like(arrival[:, :1], jnp.inf)], -1)
    recovery_time = jnp.take_along_axis(padded, sorted_index - 1, axis=-1)
    recovered = jnp.sum(recovery_time[:, None, :] <= deadlines[None, :, None], -1)
    return jnp.take_along_axis(stage_loss, recovered, axis=-1)


@functools.partial(
    jax.jit,
    static_argnames=("field", "workers", "size", "classes", "sample_times"),
)
def _chunk(
    key,
    start,
    model,
    field,
    workers,
    size,
    classes,
    grams,
    survival,
    response_time,
    deadlines,
    sample_times,
):
    """One chunk of trials: a dict of `[size, ...]` per-trial values."""
    arrival_model = response_time if sample_times else None
    recovery, arrival = _recovery(
        key, start, model, field, workers, size, arrival_model
    )
    values = {
        "decoded": _class_decoded(
            recovery, np.asarray(classes), max(classes) + 1, workers
        )
    }
    if grams is None:
        return values
    sorted_index, stage_loss = jax.vmap(_recovery_losses, (None, 0))(recovery, grams)
    sorted_index = sorted_index[0]
    by_arrivals = jax.vmap(_loss_after_arrivals, (None, 0, None))(
        sorted_index, stage_loss, workers
    )
    values["by_arrivals"] = jnp.moveaxis(by_arrivals, 0, 1)
    if survival is not None:
        by_deadline = jax.vmap(_expected_over_times, (None, 0, None, None))(
            sorted_index, stage_loss, survival, workers
        )
        values["by_deadline"] = jnp.moveaxis(by_deadline, 0, 1)
    elif deadlines is not None:
        by_deadline = jax.vmap(_loss_at_sampled_times, (None, 0, None, None))(
            sorted_index, stage_loss, arrival, deadlines
        )
        values["by_deadline"] = jnp.moveaxis(by_deadline, 0, 1)
    return values


def _check_gram(gram, subproducts: int) -> np.ndarray:
    """Validates one `[K, K]` Gram matrix (or `[K]` energies) and normalises it."""
    values = np.asarray(gram, dtype=np.float64)
    if values.ndim == 1:
        values = np.diag(values)
    if values.shape != (subproducts, subproducts):
        raise ValueError(
            f"gram must be [{subproducts}, {subproducts}] "
            f"(or [{subproducts}] energies) for {subproducts} sub-products "
            f"(got shape {np.shape(gram)})"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("gram must be finite (got NaN or infinite entries)")
    scale = np.abs(values).max()
    if not np.allclose(values, values.T, rtol=1e-5, atol=1e-7 * scale):
        raise ValueError("gram must be symmetric: G_kj = <C_k, C_j>_F")
    total = values.sum()
    if np.any(np.diag(values) < 0) or total <= 0:
        raise ValueError(
            f"gram must have a non-negative diagonal and a positive total 1^T G 1 "
            f"(got total {total:.6g})"
        )
    return values / total


def _check_grams(gram, subproducts: int) -> tuple[jax.Array, bool]:
    """Stacks one or several Gram matrices as `[G, K, K]`; says whether it was one."""
    values = np.asarray(gram, dtype=np.float64)
    single = values.ndim <= 2
    stack = [values] if single else list(values)
    checked = np.stack([_check_gram(g, subproducts) for g in stack])
    return jnp.asarray(checked, dtype=jnp.float32), single


def _check_deadlines(deadlines) -> jax.Array:
    values = np.atleast_1d(np.asarray(deadlines, dtype=np.float64))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"deadlines must be a non-empty 1-D array (got shape {np.shape(deadlines)})"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = values[~np.isfinite(values) | (values < 0)][0]
        raise ValueError(f"deadlines must be finite and non-negative (got {bad})")
    return jnp.asarray(values, dtype=jnp.float32)


def _survival(workers: int, response_time, deadlines) -> jax.Array:
    """`[D, W + 2]`: `P(N(t) >= m)` for `m = 0..W + 1` under i.i.d. workers (eq. 13)."""
    counts = theory.arrival_probabilities(workers, response_time.cdf(deadlines))
    survival = jnp.cumsum(counts[:, ::-1], axis=-1)[:, ::-1]
    return jnp.concatenate([survival, jnp.zeros_like(survival[:, :1])], axis=-1)


def curves(
    key: jax.Array,
    code: codes.Code,
    field,
    workers: int,
    trials: int,
    *,
    gram=None,
    response_time=None,
    deadlines=None,
    conditional: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> Curves:
    """Runs `trials` decoding trials and estimates every curve from the same trials.

    Args:
        key: a typed PRNG key; trial `t` uses `fold_in(key, t)`.
        code: the code.
        field: the field order `q`, `"real"` or a `fields.Field`.
        workers: `W`.
        trials: the number of trials.
        gram: `[K, K]` Gram matrix `G_kj = <C_k, C_j>_F` of the sub-products, `[K]`
            energies (a diagonal Gram matrix), or `[G, K, K]` several of them, all
            evaluated on the same trials.
        response_time: the latency model (`uepjax.latency`), its load included; needed
            with `deadlines`.
        deadlines: `[D]` non-negative deadlines `T_max`.
        conditional: average each trial exactly over the arrival times (eq. 16) instead
            of sampling them. The default does so for i.i.d. workers; heterogeneous
            workers must sample.
        chunk_size: trials decoded at once (memory), a multiple of `BLOCK_TRIALS`.
        progress: called with the number of trials finished after each chunk.

    Returns:
        `Curves` of estimates with standard errors.
    """
    field = fields.get_field(field)
    model = codes.row_model(code, field, workers)
    classes = tuple(int(c) for c in code.class_of_subproduct)
    _check_trials(trials, chunk_size)
    grams, single = (None, True)
    if gram is not None:
        grams, single = _check_grams(gram, code.subproducts)
    times = survival = None
    sample_times = False
    if deadlines is not None:
        if gram is None or response_time is None:
            raise ValueError("deadlines need both gram and response_time")
        times = _check_deadlines(deadlines)
        homogeneous = latency.is_homogeneous(response_time)
        if conditional is None:
            conditional = homogeneous
        if conditional and not homogeneous:
            raise ValueError(
                "conditional=True needs i.i.d. workers; heterogeneous response times "
                "must be sampled (pass conditional=False)"
            )
        sample_times = not conditional
        if conditional:
            survival = _survival(workers, response_time, times)
    logger.debug(
        "curves: %s over GF(%s), W=%d, %d trials",
        code.scheme.value,
        field.order,
        workers,
        trials,
    )

    moments: dict[str, _Moments] = {}
    size = min(chunk_size, -(-trials // BLOCK_TRIALS) * BLOCK_TRIALS)
    for start in range(0, trials, size):
        values = _chunk(
            key,
            jnp.uint32(start),
            model,
            field,
            workers,
            size,
            classes,
            grams,
            survival,
            response_time if sample_times else None,
            times if sample_times else None,
            sample_times,
        )
        for name, value in values.items():
            moments.setdefault(name, _Moments()).add(
                np.asarray(value)[: trials - start]
            )
        if progress is not None:
            progress(min(size, trials - start))

    estimates = {name: m.estimate() for name, m in moments.items()}
    if single:
        estimates = {
            name: (
                e
                if name == "decoded"
                else Estimate(e.mean[0], e.standard_error[0], e.trials)
            )
            for name, e in estimates.items()
        }
    return Curves(
        estimates["decoded"],
        estimates.get("by_arrivals"),
        estimates.get("by_deadline"),
    )


def decoding_estimate(
    key: jax.Array,
    scheme,
    class_sizes,
    gamma,
    max_packets: int,
    trials: int,
    field=65521,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> Estimate:
    """Monte Carlo decoding probabilities with their standard errors.

    Returns:
        An `Estimate` whose `mean` is `[L, max_packets + 1]`: the fraction of trials in
        which every sub-product of class `l` is recovered from the first `n` packets.
    """
    code = codes.make_code(scheme, class_sizes, gamma)
    return curves(
        key,
        code,
        field,
        max_packets,
        trials,
        chunk_size=chunk_size,
        progress=progress,
    ).decoded


def decoding_probabilities(
    key: jax.Array,
    scheme,
    class_sizes,
    gamma,
    max_packets: int,
    trials: int,
    field=65521,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Estimates by real decoding the probability that class `l` decodes after `n`
    packets.

    The Monte Carlo counterpart of `uepjax.theory.decoding_probabilities`: each packet
    draws its window from `gamma` and its coefficients uniformly from GF(`field`), and
    the packets are decoded by Gaussian elimination. Over a large field the estimate
    converges to the theory; GF(2) and GF(2^8) recover less.

    Args:
        key: a typed PRNG key.
        scheme: `"now"` or `"ew"` (any `codes.Scheme` name works).
        class_sizes: `k_1..k_L`.
        gamma: `[L]` window-selection probabilities.
        max_packets: the largest number of packets received.
        trials: the number of trials.
        field: the field order `q`, or `"real"`.
        chunk_size: trials decoded at once (memory), a multiple of `BLOCK_TRIALS`.

    Returns:
        `[L, max_packets + 1] float64` decoding probabilities.

    Example:
        >>> p = decoding_probabilities(
        ...     jax.random.key(0), "ew", (3, 3, 3), (0.4, 0.35, 0.25), 30, 4096
        ... )
        >>> p.shape
        (3, 31)
    """
    return decoding_estimate(
        key,
        scheme,
        class_sizes,
        gamma,
        max_packets,
        trials,
        field,
        chunk_size=chunk_size,
    ).mean


def loss_by_arrivals(
    key: jax.Array,
    code: codes.Code,
    field,
    workers: int,
    gram,
    trials: int,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> Estimate:
    """The normalised loss after each number of received packets (Fig. 10).

    Returns:
        An `Estimate` of shape `[W + 1]` (`[G, W + 1]` for `[G, K, K]` Gram matrices):
        `E[u_n^T G u_n] / 1^T G 1` for `n = 0..W`. See `curves` for the arguments.
    """
    return curves(
        key,
        code,
        field,
        workers,
        trials,
        gram=gram,
        chunk_size=chunk_size,
        progress=progress,
    ).by_arrivals


def loss_by_deadline(
    key: jax.Array,
    code: codes.Code,
    field,
    workers: int,
    gram,
    response_time,
    deadlines,
    trials: int,
    *,
    conditional: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> Estimate:
    """The expected normalised loss at each deadline (Fig. 9).

    Returns:
        An `Estimate` of shape `[D]` (`[G, D]` for `[G, K, K]` Gram matrices). See
        `curves` for the arguments.
    """
    return curves(
        key,
        code,
        field,
        workers,
        trials,
        gram=gram,
        response_time=response_time,
        deadlines=deadlines,
        conditional=conditional,
        chunk_size=chunk_size,
        progress=progress,
    ).by_deadline
