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

Trial `t` is keyed by `fold_in(key, t)`. Trials are grouped in fixed blocks of
`BLOCK_TRIALS`; each block is reduced on its device to its sum and its sum of squared
deviations (a fixed order of float32 additions), and the blocks are folded in float64
in block order. Chunks of blocks bound the memory, are split over the local devices of
a `jax.sharding.Mesh`, and under `jax.distributed` every process takes a share of each
wave of chunks. A result therefore depends on the key and the number of trials only,
not on the chunk size, the number of devices or the number of processes. A
`StoppingRule` runs the trials in rounds of whole blocks until the standard error of
a target curve is small enough.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from uepjax import codes, decode, distributed, fields, latency, theory

__all__ = [
    "BLOCK_TRIALS",
    "MAX_TRIALS",
    "QUANTITIES",
    "Estimate",
    "StopReason",
    "StoppingRule",
    "Curves",
    "compiled_programs",
    "confidence_interval",
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

MAX_BLOCKS = 2**22 - 1
"""Block indices stay below this, so that trial indices fit in uint32; the index
itself marks padding blocks."""

MAX_TRIALS = MAX_BLOCKS * BLOCK_TRIALS
"""The most trials of one call (uint32 trial indices)."""

DEFAULT_CHUNK = 8 * BLOCK_TRIALS

BLOCK_DECODING_TRIALS = 10**6
"""Calls of at least this many trials decode NOW rows (and the unit rows of the
uncoded and repetition schemes) block by block (`codes.RowModel.blocks`), over
every field but GF(2) (`decode._blocks_pay`); smaller calls share the
one-pass program of EW. The block decoder is a program of its own, about 3 s to
compile on a 2-core CPU, where 10^6 trials of the paper's NOW point over
GF(2^31 - 1) took 2.3 s instead of 3.4 s (warm `curves` calls, this threshold set
to 1 and to 10^12). With fewer trials, a run of NOW and EW points would spend more
on the second compile than it saves."""

CPU_VALUE_BLOCKS = 4
"""Blocks whose loss values a CPU computes at once (:func:`_value_group`). With a
whole chunk of 8 blocks at once, its `[8192, F]` values, their deviations and
partial sums took 22.9 MiB, and processes that ran the paper's point over GF(2)
held up to six stray copies of that memory in glibc's heap (peak RSS 10-25% above
a 2-chunk run of the same process). Four blocks at a time took 11.8 MiB at the
same speed; one block at a time took 5.5 MiB, but 1.5 times as long."""

_UNROLLED_SUM = 32

_HIGHEST = lax.Precision.HIGHEST

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


class StopReason(enum.Enum):
    """Why a run of trials ended."""

    TRIALS = "trials"
    """The trial budget was used up (always so without a tolerance)."""
    TOLERANCE = "tolerance"
    """Every entry of the target quantity reached its standard-error tolerance."""
    TIME = "time"
    """The time budget ran out."""


QUANTITIES = ("decoded", "by_arrivals", "by_deadline")
"""The names of the estimated curves, as in `Curves`."""


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """Run trials in rounds until the target quantity is precise enough.

    The first round runs `min_trials` trials and every later round `batch_trials`
    more, so the rounds are whole blocks of `BLOCK_TRIALS`. After each round the rule
    looks at the estimate of `target`: it stops when every entry `i` satisfies
    `standard_error_i <= standard_error` or `standard_error_i <= relative_error *
    |mean_i|` (a missing tolerance is never satisfied), when the trial budget of
    `curves` is used up, or when `max_seconds` have passed. The decision depends only
    on the blocks done, except the time budget, which depends on the speed of the
    machine.

    Attributes:
        target: `"decoded"`, `"by_arrivals"` or `"by_deadline"`.
        standard_error: an absolute tolerance on every entry's standard error.
        relative_error: a tolerance relative to every entry's `|mean|`, like an
            error-rate simulator that stops after a number of errors.
        min_trials: trials of the first round, a multiple of `BLOCK_TRIALS`.
        batch_trials: trials of every later round, a multiple of `BLOCK_TRIALS`.
        max_seconds: a time budget, or None.

    Example:
        >>> rule = StoppingRule("by_deadline", standard_error=1e-3)
        >>> rule.min_trials
        8192
    """

    target: str = "by_deadline"
    standard_error: float | None = None
    relative_error: float | None = None
    min_trials: int = 8 * BLOCK_TRIALS
    batch_trials: int = 8 * BLOCK_TRIALS
    max_seconds: float | None = None

    def __post_init__(self):
        if self.target not in QUANTITIES:
            raise ValueError(
                f"target must be one of {', '.join(QUANTITIES)} (got {self.target!r})"
            )
        for name in ("standard_error", "relative_error", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and np.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"{name} must be a positive number or None (got {value!r})"
                )
        for name in ("min_trials", "batch_trials"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | np.integer)
                or value < 1
                or value % BLOCK_TRIALS
            ):
                raise ValueError(
                    f"{name} must be a positive multiple of {BLOCK_TRIALS} "
                    f"(got {value!r})"
                )

    @property
    def has_tolerance(self) -> bool:
        """Whether the rule can stop before the trial budget."""
        return self.standard_error is not None or self.relative_error is not None

    def converged(self, estimate: Estimate) -> bool:
        """Whether every entry of `estimate` meets a tolerance."""
        error = np.asarray(estimate.standard_error)
        met = np.zeros(error.shape, bool)
        if self.standard_error is not None:
            met |= error <= self.standard_error
        if self.relative_error is not None:
            met |= error <= self.relative_error * np.abs(estimate.mean)
        return bool(np.all(met))

    def round_ends(self, trials: int) -> list[int]:
        """The trial counts after each round, for a budget of `trials`."""
        if not self.has_tolerance and self.max_seconds is None:
            return [trials]
        ends = []
        done = min(self.min_trials, trials)
        while True:
            ends.append(done)
            if done >= trials:
                return ends
            done = min(done + self.batch_trials, trials)


def confidence_interval(
    estimate: Estimate, confidence: float = 0.95, *, proportion: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A two-sided confidence interval for every entry of `estimate`.

    Args:
        estimate: the estimate.
        confidence: the coverage, in (0, 1).
        proportion: the entries are fractions of trials (`Curves.decoded`): use the
            Wilson score interval, which stays honest when every trial agreed.

    Returns:
        `(low, high)`, float64 arrays shaped like `estimate.mean`, inside [0, 1].

    Note:
        Losses use the normal interval `mean +- z standard_error`. Where every
        trial gave the same loss its standard error is 0 and the interval is that
        single value; the number of trials says how much that is worth.

    Example:
        >>> e = Estimate(np.array([1.0]), np.array([0.0]), 100)
        >>> low, high = confidence_interval(e, proportion=True)
        >>> bool(low[0] < 1.0 == high[0])
        True
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1) (got {confidence!r})")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    mean = np.asarray(estimate.mean, np.float64)
    if proportion:
        n = float(estimate.trials)
        p = np.clip(mean, 0.0, 1.0)
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        # The interval ends at 0 (at 1) exactly when no (every) trial succeeded.
        low = np.where(p == 0.0, 0.0, centre - half)
        high = np.where(p == 1.0, 1.0, centre + half)
    else:
        half = z * np.asarray(estimate.standard_error, np.float64)
        low, high = mean - half, mean + half
    return np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)


class _Layout(NamedTuple):
    """Where each curve lies in the flat `[F]` vector of per-trial values."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        parts = np.split(flat, np.cumsum(self.sizes)[:-1], axis=-1)
        return {
            name: part.reshape(flat.shape[:-1] + shape)
            for name, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }


class _Fold:
    """Folds per-block statistics in block order, in float64.

    Each block brings its number of trials `n_b`, the sum `S_b` of its values and
    the sum `M_b` of squared deviations from its own mean. The total is the running
    sum of the `S_b`; the squared deviations combine by the parallel-variance rule
    `M += M_b + delta^2 n n_b / (n + n_b)`, `delta` the gap between the block mean
    and the running mean. Each block's statistics depend on its trials only, so the
    result does not depend on how blocks were grouped into chunks, devices or
    processes.
    """

    def __init__(self, features: int):
        self.count = 0
        self.total = np.zeros(features)
        self.squares = np.zeros(features)

    def add(self, totals: np.ndarray, deviations: np.ndarray, counts) -> None:
        """Adds `[blocks, F]` statistics of blocks with `counts` trials, in order."""
        totals = np.asarray(totals, np.float64)
        deviations = np.asarray(deviations, np.float64)
        for total, deviation, n in zip(totals, deviations, counts, strict=True):
            if n == 0:
                continue
            if self.count:
                delta = total / n - self.total / self.count
                self.squares += deviation + delta * delta * (
                    self.count * n / (self.count + n)
                )
            else:
                self.squares += deviation
            self.total += total
            self.count += int(n)

    def estimate(self) -> Estimate:
        mean = self.total / self.count
        variance = self.squares / max(self.count - 1, 1)
        return Estimate(mean, np.sqrt(variance / self.count), self.count)


def _check_trials(trials, chunk_size) -> None:
    if not isinstance(trials, int | np.integer) or trials < 1:
        raise ValueError(f"trials must be a positive integer (got {trials!r})")
    if trials > MAX_TRIALS:
        raise ValueError(
            f"trials must be at most {MAX_TRIALS} (uint32 trial indices; got "
            f"{trials}); run several keys instead"
        )
    if (
        not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
        or chunk_size % BLOCK_TRIALS
    ):
        raise ValueError(
            f"chunk_size must be a positive multiple of {BLOCK_TRIALS} "
            f"(got {chunk_size!r})"
        )


def _row_model(code, field, workers, trials) -> codes.RowModel:
    """The code's row model, with its blocks for calls of many trials only."""
    model = codes.row_model(code, field, workers)
    if trials < BLOCK_DECODING_TRIALS:
        return dataclasses.replace(model, blocks=None)
    return model


def _trial_keys(key: jax.Array, index: jax.Array) -> jax.Array:
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


def _recovery(key, index, model, field, workers, arrival_times=None):
    keys = _trial_keys(key, index)
    rows, times = jax.vmap(
        lambda k: _arrival_rows(k, model, field, workers, arrival_times)
    )(keys)
    return decode._recovery_index_jit(rows, field, model.blocks), times


@functools.partial(jax.jit, static_argnames=("field", "workers", "size"))
def _recovery_chunk(key, start, model, field, workers, size):
    index = start + jnp.arange(size, dtype=jnp.uint32)
    return _recovery(key, index, model, field, workers)[0]


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
    model = _row_model(code, field, workers, trials)
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
        stop_reason: why the trials ended (`StopReason`).
    """

    decoded: Estimate
    by_arrivals: Estimate | None
    by_deadline: Estimate | None
    stop_reason: StopReason = StopReason.TRIALS


def _sum_in_order(term: Callable[[Any], jax.Array], count: int) -> jax.Array:
    """`term(0) + term(1) + ... + term(count - 1)`, added from left to right.

    The order of the float additions is fixed, whatever the batch dimensions are, so
    a trial's value does not depend on how many trials share a device (a matrix
    product or a reduction may change its order with the batch size). Short sums are
    unrolled so that they fuse; long ones loop.
    """
    if count <= _UNROLLED_SUM:
        total = term(0)
        for i in range(1, count):
            total = total + term(i)
        return total
    return _sum_in_loop(term, count)


def _sum_in_loop(term: Callable[[Any], jax.Array], count: int) -> jax.Array:
    """The sum of :func:`_sum_in_order`, always in a loop (`term` gets a traced
    index). Its result is one array, which XLA cannot fuse into its consumers and
    recompute there."""
    return lax.fori_loop(1, count, lambda i, total: total + term(i), term(0))


def _tree_sum(x: jax.Array, axis: int) -> jax.Array:
    """Sums `axis` by repeated halving, a fixed order of float additions."""
    x = jnp.moveaxis(x, axis, 0)
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        paired = x[:half] + x[half : 2 * half]
        x = jnp.concatenate([paired, x[2 * half :]]) if x.shape[0] % 2 else paired
    return x[0]


def _class_decoded(recovery, class_of_subproduct, num_classes, workers):
    """`[trials, L, W + 1]`: 1 where class `l` is fully recovered after `n` arrivals."""
    segments = jnp.asarray(class_of_subproduct)
    class_index = jax.vmap(
        lambda r: jax.ops.segment_max(r, segments, num_segments=num_classes)
    )(recovery)
    packets = jnp.arange(workers + 1)
    return (class_index[:, :, None] <= packets).astype(jnp.float32)


def _recovery_order(recovery):
    """`(sorted_index, position)`: recovery indices in increasing order, and where
    each sub-product stands in that order (ties by index, as a stable sort).

    The position is a count of pairwise comparisons and the sorted indices a sort of
    a single operand: for the few sub-products of a trial both are several times
    cheaper than an argsort on the CPU.
    """
    k = recovery.shape[-1]
    index = jnp.arange(k)
    earlier = (recovery[..., None, :] < recovery[..., :, None]) | (
        (recovery[..., None, :] == recovery[..., :, None])
        & (index[None, :] < index[:, None])
    )
    position = jnp.sum(earlier, axis=-1, dtype=jnp.int32)
    return jnp.sort(recovery, axis=-1), position


def _stage_losses(position, gram):
    """`[trials, K + 1]`: the loss once the first `j` sub-products in recovery order
    are recovered, for a `[K, K] float32` normalised Gram matrix (`1^T G 1 = 1`).
    """
    k = position.shape[-1]
    stage = jnp.arange(k + 1)
    unrecovered = (position[:, None, :] >= stage[None, :, None]).astype(gram.dtype)
    # u^T G u as ordered sums: (G u)_j = sum_k u_k G_kj, then sum_j u_j (G u)_j.
    coupled = _sum_in_order(lambda i: unrecovered[..., i, None] * gram[i], k)

    def term(j):
        at = lax.dynamic_index_in_dim(coupled, j, axis=-1, keepdims=False)
        return at * lax.dynamic_index_in_dim(unrecovered, j, axis=-1, keepdims=False)

    # The second sum in a loop, so that the stage losses are computed once: as an
    # unrolled expression XLA fused it into the gather of `_loss_after_arrivals` and
    # computed `K + 1` stage losses again for each of the `W + 1` arrival counts.
    stage_loss = _sum_in_loop(term, k)
    # Dividing by stage 0 (nothing recovered) makes the loss exactly 1 there.
    return stage_loss / stage_loss[:, :1]


def _loss_after_arrivals(sorted_index, stage_loss, workers):
    """`[trials, W + 1]` loss after `n = 0..W` arrivals."""
    packets = jnp.arange(workers + 1)
    # Sub-products recovered after n arrivals: a count of K comparisons, which
    # fuses (a vmapped binary search does not).
    recovered = jnp.sum(
        sorted_index[:, None, :] <= packets[None, :, None], axis=-1, dtype=jnp.int32
    )
    return jnp.take_along_axis(stage_loss, recovered, axis=-1)


def _binned_steps(sorted_index, stage_loss, workers):
    """`[trials, W + 2]` the loss steps of each trial, binned by arrival count.

    The loss is stage `j`'s loss `L_j` while the number of arrivals lies in
    `[r_j, r_(j+1))` (`r_0 = 0`); bin `m` holds the sum of the steps
    `L_j - L_(j-1)` with `r_j = m`.
    """
    stages = stage_loss.shape[-1]
    bounds = jnp.concatenate([jnp.zeros_like(sorted_index[:, :1]), sorted_index], -1)
    previous = jnp.concatenate(
        [jnp.zeros_like(stage_loss[:, :1]), stage_loss[:, :-1]], axis=-1
    )
    step = stage_loss - previous
    counts = jnp.arange(workers + 2)

    def binned(j):
        at = lax.dynamic_index_in_dim(bounds, j, axis=1)
        return jnp.where(at == counts, lax.dynamic_index_in_dim(step, j, axis=1), 0.0)

    # In a loop: unrolled, XLA fuses the binning into the product with the
    # survival function and bins again for every deadline (a quarter slower for
    # the paper's 81 deadlines).
    return _sum_in_loop(binned, stages)


def _ordered_product(weights, survival):
    """`weights [..., M] @ survival [M, D]` as sums in a fixed order."""
    return _sum_in_order(
        lambda m: weights[..., m, None] * survival[m], survival.shape[0]
    )


def _blocked_product(weights, survival):
    """`weights [trials, G, M] @ survival [M, D]`, one matrix product a block.

    The trials are whole blocks of `BLOCK_TRIALS`, and a batched product runs the
    same `[BLOCK_TRIALS G, M] x [M, D]` product on every block, however many blocks
    a chunk or a device holds.
    """
    trials, grams, bins = weights.shape
    blocks = weights.reshape((trials // BLOCK_TRIALS, BLOCK_TRIALS * grams, bins))
    batched = jnp.broadcast_to(survival, (blocks.shape[0],) + survival.shape)
    product = jnp.einsum("bkm,bmd->bkd", blocks, batched, precision=_HIGHEST)
    return product.reshape((trials, grams, survival.shape[1]))


def _expected_over_times(weights, survival):
    """`[trials, G, D]` each trial's loss averaged over i.i.d. arrival times.

    `survival [W + 2, D]` holds `S(m) = P(N(t) >= m)` for `m = 0..W + 1`, and
    `weights [trials, G, W + 2]` the binned steps of :func:`_binned_steps`. The
    loss is `sum_j S(r_j) (L_j - L_(j-1))`, the dot product of the weights with `S`,
    where gathering `S` at every `r_j` would build a `[D, trials, K + 2]` array.

    On the CPU the dot products are matrix products per block: as ordered sums of
    elementwise products, XLA:CPU vectorised them so poorly that the whole paper's
    point took 1.27 times as long over GF(2^8) (1.12 over GF(2^31 - 1)). Elsewhere
    they stay ordered sums, which fuse, and whose order no library's choice of
    algorithm can change.
    """
    return lax.platform_dependent(
        weights, survival, cpu=_blocked_product, default=_ordered_product
    )


def _loss_at_sampled_times(sorted_index, stage_loss, arrival, deadlines):
    """`[trials, D]` loss at each deadline given the sorted arrival times `[trials,
    W]`."""
    padded = jnp.concatenate([arrival, jnp.full_like(arrival[:, :1], jnp.inf)], -1)
    recovery_time = jnp.take_along_axis(padded, sorted_index - 1, axis=-1)
    recovered = jnp.sum(recovery_time[:, None, :] <= deadlines[None, :, None], -1)
    return jnp.take_along_axis(stage_loss, recovered, axis=-1)


def _trial_values(recovery, arrival, grams, survival, deadlines, workers, classes):
    """A dict of `[n, ...]` per-trial values from the recovery indices `[n, K]` and,
    where sampled, the sorted arrival times `[n, W]` of `n` trials."""
    values = {
        "decoded": _class_decoded(
            recovery, np.asarray(classes), max(classes) + 1, workers
        )
    }
    if grams is None:
        return values
    sorted_index, position = _recovery_order(recovery)
    stage_loss = jax.vmap(_stage_losses, (None, 0))(position, grams)
    by_arrivals = jax.vmap(_loss_after_arrivals, (None, 0, None))(
        sorted_index, stage_loss, workers
    )
    values["by_arrivals"] = jnp.moveaxis(by_arrivals, 0, 1)
    if survival is not None:
        weights = jax.vmap(_binned_steps, (None, 0, None), 1)(
            sorted_index, stage_loss, workers
        )
        values["by_deadline"] = _expected_over_times(weights, survival)
    elif deadlines is not None:
        by_deadline = jax.vmap(_loss_at_sampled_times, (None, 0, None, None))(
            sorted_index, stage_loss, arrival, deadlines
        )
        values["by_deadline"] = jnp.moveaxis(by_deadline, 0, 1)
    return values


def _block_statistics(values: dict, valid: jax.Array):
    """`[blocks, F]` sums and squared deviations of each block of trials.

    Args:
        values: `[blocks * BLOCK_TRIALS, ...]` per-trial values, in `QUANTITIES`
            order.
        valid: `[blocks, BLOCK_TRIALS] bool`, False for trials past the budget.
    """
    blocks = valid.shape[0]
    flat = jnp.concatenate(
        [values[name].reshape(blocks, BLOCK_TRIALS, -1) for name in values], axis=-1
    )
    mask = valid[..., None]
    kept = jnp.where(mask, flat, 0.0)
    totals = _tree_sum(kept, axis=1)
    count = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(jnp.float32)
    deviation = jnp.where(mask, flat - (totals / count[:, None])[:, None, :], 0.0)
    return totals, _tree_sum(deviation * deviation, axis=1)


@functools.partial(
    jax.jit,
    static_argnames=("field", "workers", "classes", "sample_times", "mesh"),
)
def _chunk(
    key,
    blocks,
    trials,
    model,
    grams,
    survival,
    response_time,
    deadlines,
    *,
    field,
    workers,
    classes,
    sample_times,
    mesh,
):
    """Statistics of the blocks `blocks [n] uint32`, split over the devices of `mesh`.

    Returns:
        `[n, F] float32` block sums and block sums of squared deviations; trials at
        or past `trials` are left out.
    """

    def local(key, blocks, trials, model, grams, survival, response_time, deadlines):
        offsets = jnp.arange(BLOCK_TRIALS, dtype=jnp.uint32)
        index = blocks[:, None] * np.uint32(BLOCK_TRIALS) + offsets
        arrival_model = response_time if sample_times else None
        recovery, arrival = _recovery(
            key, index.reshape(-1), model, field, workers, arrival_model
        )

        def group(blocks_of_group):
            # recovery, arrival [blocks of the group, BLOCK_TRIALS, ...] -> [trials
            # of the group, ...]; index stays [blocks of the group, BLOCK_TRIALS].
            recovery, arrival, index = blocks_of_group
            recovery, arrival = (
                None if x is None else x.reshape((-1,) + x.shape[2:])
                for x in (recovery, arrival)
            )
            values = _trial_values(
                recovery, arrival, grams, survival, deadlines, workers, classes
            )
            return _block_statistics(values, index < trials)

        size = _value_group(index.shape[0], mesh.devices.flat[0].platform)
        grouped = (index.shape[0] // size, size, BLOCK_TRIALS)
        by_group = tuple(
            None if x is None else x.reshape(grouped + x.shape[1:])
            for x in (recovery, arrival)
        ) + (index.reshape(grouped),)
        totals, squares = lax.map(group, by_group)
        features = totals.shape[-1]
        return totals.reshape(-1, features), squares.reshape(-1, features)

    replicated = PartitionSpec()
    split = PartitionSpec(distributed.AXIS)
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, split) + (replicated,) * 6,
        out_specs=(split, split),
        # The decoder's while loop starts from values shared by all devices.
        check_vma=False,
    )
    return sharded(
        key, blocks, trials, model, grams, survival, response_time, deadlines
    )


def _value_group(blocks: int, platform: str) -> int:
    """Blocks whose loss values are computed at once, after their chunk is decoded.

    An accelerator takes all of a chunk's blocks at once. On a CPU, groups of up to
    :data:`CPU_VALUE_BLOCKS` (a divisor of ``blocks``) keep the program's memory
    low for the allocator to reuse.
    """
    if platform != "cpu":
        return blocks
    return max(
        d for d in range(1, min(blocks, CPU_VALUE_BLOCKS) + 1) if blocks % d == 0
    )


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
    """`[W + 2, D]`: `P(N(t) >= m)` for `m = 0..W + 1` under i.i.d. workers (eq. 13)."""
    counts = theory.arrival_probabilities(workers, response_time.cdf(deadlines))
    survival = jnp.cumsum(counts[:, ::-1], axis=-1)[:, ::-1]
    return jnp.concatenate([survival, jnp.zeros_like(survival[:, :1])], axis=-1).T


def _layout(classes, workers, grams, single, deadlines) -> _Layout:
    names = ["decoded"]
    shapes = [(max(classes) + 1, workers + 1)]
    if grams is not None:
        names.append("by_arrivals")
        shapes.append((grams.shape[0], workers + 1))
        if deadlines is not None:
            names.append("by_deadline")
            shapes.append((grams.shape[0], deadlines.shape[0]))
    return _Layout(tuple(names), tuple(shapes))


class _Waves:
    """Runs blocks `[first, last)` in waves of one chunk per process and folds them.

    A wave gives process `p` the blocks `[start + p c, start + (p + 1) c)` of its
    `c = chunk_blocks`; blocks past `last` are padding whose trials are all left out.
    Every process exchanges its statistics after each wave and folds all of them in
    block order, so all processes hold the same estimate.
    """

    def __init__(self, run: Callable, chunk_blocks: int, trials: int):
        self.run = run
        self.chunk_blocks = chunk_blocks
        self.trials = trials
        self.processes = distributed.process_count()
        self.me = distributed.process_index()

    def _counts(self, first_block: int, blocks: int) -> np.ndarray:
        starts = (first_block + np.arange(blocks)) * BLOCK_TRIALS
        return np.clip(self.trials - starts, 0, BLOCK_TRIALS)

    def fold(self, fold: _Fold, first: int, last: int, progress) -> None:
        width = self.chunk_blocks * self.processes
        starts = list(range(first, last, width))
        pending = None
        for start in [*starts, None]:
            launched = None
            if start is not None:
                mine = start + self.me * self.chunk_blocks
                blocks = mine + np.arange(self.chunk_blocks, dtype=np.uint32)
                # Padding blocks past `last` keep every chunk the same shape.
                blocks = np.where(blocks < last, blocks, np.uint32(MAX_BLOCKS))
                launched = (start, self.run(blocks))
            if pending is not None:
                self._finish(fold, *pending, last, progress)
            pending = launched

    def _finish(self, fold, start, outputs, last, progress) -> None:
        totals, deviations = (np.asarray(o) for o in outputs)
        if self.processes > 1:
            gathered = distributed.allgather(np.stack([totals, deviations]))
            totals = np.concatenate(list(gathered[:, 0]))
            deviations = np.concatenate(list(gathered[:, 1]))
        blocks = min(last - start, totals.shape[0])
        counts = self._counts(start, blocks)
        fold.add(totals[:blocks], deviations[:blocks], counts)
        if progress is not None:
            progress(int(counts.sum()))


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
    stopping: StoppingRule | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Curves:
    """Runs decoding trials and estimates every curve from the same trials.

    Trials run in blocks of `BLOCK_TRIALS`; a chunk of blocks is split over the local
    `devices` and, under `jax.distributed`, every process takes its share of each
    wave of chunks. All processes must make the same call; all get the same result.

    Args:
        key: a typed PRNG key; trial `t` uses `fold_in(key, t)`.
        code: the code.
        field: the field order `q`, `"real"` or a `fields.Field`.
        workers: `W`.
        trials: the number of trials; with `stopping`, the most trials to run.
        gram: `[K, K]` Gram matrix `G_kj = <C_k, C_j>_F` of the sub-products, `[K]`
            energies (a diagonal Gram matrix), or `[G, K, K]` several of them, all
            evaluated on the same trials.
        response_time: the latency model (`uepjax.latency`), its load included; needed
            with `deadlines`.
        deadlines: `[D]` non-negative deadlines `T_max`.
        conditional: average each trial exactly over the arrival times (eq. 16) instead
            of sampling them. The default does so for i.i.d. workers; heterogeneous
            workers must sample.
        chunk_size: trials decoded at once by this process (memory), a multiple of
            `BLOCK_TRIALS`; rounded up to whole blocks on every device.
        progress: called with the number of trials finished after each wave.
        stopping: run in rounds until the target's standard error is small enough.
        devices: the local devices to split each chunk over (all by default).

    Returns:
        `Curves` of estimates with standard errors. The numbers depend on the key and
        the trials run only: not on `chunk_size`, on the devices or on the number of
        processes.

    Example:
        >>> code = codes.ew((3, 3, 3), (0.4, 0.35, 0.25))
        >>> result = curves(jax.random.key(0), code, 256, 30, 2048, gram=[1.0] * 9)
        >>> result.by_arrivals.mean.shape, result.by_arrivals.trials
        ((31,), 2048)
    """
    field = fields.get_field(field)
    _check_trials(trials, chunk_size)
    model = _row_model(code, field, workers, trials)
    classes = tuple(int(c) for c in code.class_of_subproduct)
    if stopping is not None and not isinstance(stopping, StoppingRule):
        raise ValueError(
            f"stopping must be a StoppingRule or None (got {type(stopping).__name__})"
        )
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
    layout = _layout(classes, workers, grams, single, times)
    if stopping is not None and stopping.target not in layout.names:
        raise ValueError(
            f"stopping.target {stopping.target!r} is not estimated by this call; "
            f"it estimates {', '.join(layout.names)}"
        )
    mesh = distributed.local_mesh(devices)
    logger.debug(
        "curves: %s over GF(%s), W=%d, up to %d trials on %d device(s) x %d "
        "process(es)",
        code.scheme.value,
        field.order,
        workers,
        trials,
        mesh.size,
        distributed.process_count(),
    )

    processes = distributed.process_count()
    budget_blocks = -(-trials // BLOCK_TRIALS)
    per_process = -(-budget_blocks // processes)
    chunk_blocks = min(chunk_size // BLOCK_TRIALS, per_process)
    chunk_blocks = -(-chunk_blocks // mesh.size) * mesh.size
    trials_leaf = jnp.uint32(trials)
    sampled = response_time if sample_times else None
    sampled_times = times if sample_times else None

    def run(blocks: np.ndarray):
        return _chunk(
            key,
            distributed.shard_blocks(blocks, mesh),
            trials_leaf,
            model,
            grams,
            survival,
            sampled,
            sampled_times,
            field=field,
            workers=workers,
            classes=classes,
            sample_times=sample_times,
            mesh=mesh,
        )

    waves = _Waves(run, chunk_blocks, trials)
    fold = _Fold(sum(layout.sizes))
    rule = stopping or StoppingRule()
    started = time.monotonic()
    reason = StopReason.TRIALS
    done_blocks = 0
    for end in rule.round_ends(trials):
        end_blocks = -(-end // BLOCK_TRIALS)
        waves.fold(fold, done_blocks, end_blocks, progress)
        done_blocks = end_blocks
        if rule.has_tolerance and rule.converged(
            _estimates(fold, layout, single)[rule.target]
        ):
            reason = StopReason.TOLERANCE
            break
        if end >= trials:
            break
        if rule.max_seconds is not None:
            late = time.monotonic() - started >= rule.max_seconds
            # Process 0's clock decides, so that every process stops together.
            if distributed.broadcast_from_main(np.int32(late)):
                reason = StopReason.TIME
                break
    estimates = _estimates(fold, layout, single)
    return Curves(
        estimates["decoded"],
        estimates.get("by_arrivals"),
        estimates.get("by_deadline"),
        reason,
    )


def compiled_programs() -> int | None:
    """How many chunk programs this process has traced (one per shape and device set).

    A diagnostic of "compile once per shape": points that differ only in values add
    none. None where this version of JAX does not expose the count.
    """
    size = getattr(_chunk, "_cache_size", None)
    return int(size()) if callable(size) else None


def _estimates(fold: _Fold, layout: _Layout, single: bool) -> dict[str, Estimate]:
    """The folded statistics as one `Estimate` per curve."""
    estimate = fold.estimate()
    means = layout.split(estimate.mean)
    errors = layout.split(estimate.standard_error)
    found = {}
    for name in layout.names:
        mean, error = means[name], errors[name]
        if single and name != "decoded":
            mean, error = mean[0], error[0]
        found[name] = Estimate(mean, error, estimate.trials)
    return found


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
