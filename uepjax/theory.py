"""Large-field theory of UEP coded matrix multiplication (Sec. V, eqs. 12-22).

Over a large field (or with real Gaussian coefficients) whether a class is decodable
depends only on the numbers of received packets from each window,
``counts = (n_1, ..., n_L)``. A worker picks window ``l`` with probability
``gamma_l`` independently of everything else, so given ``n`` received packets the
counts are ``Multinomial(n, gamma)`` (eq. 15), whatever the response times are.

Every expectation below is therefore an exact finite sum over the compositions of
``n`` into ``L`` parts, a polynomial in ``gamma``:

    E[f(counts) | n] = sum_{|c| = n} Multinomial(c; n, gamma) f(c).

The compositions are enumerated once per ``(max_packets, L)`` with numpy and the sums
are computed in JAX, so the results are differentiable in ``gamma`` with exact
gradients, also on the edge of the simplex (a zero window probability), and changing
``gamma`` does not recompile.

The joint distribution of the recovered classes is kept (not only the marginals):
under EW the classes are strongly dependent, and a quadratic loss ``u^T G u`` with a
non-diagonal Gram matrix ``G`` needs the pairwise probabilities.

Note:
    The work and memory grow with the number of count vectors,
    ``C(max_packets + L, L)`` (5456 for the paper's 30 workers and 3 classes);
    beyond `MAX_COMPOSITIONS` a ValueError points to the Monte Carlo estimator.
    Gradients are those of the polynomial in ``gamma`` (the unconstrained
    derivative); project them onto the simplex, or parametrize ``gamma``, to stay
    normalized. A traced ``gamma`` is not validated; its entries <= 0 are evaluated
    as 0.

Example:
    >>> import jax.numpy as jnp
    >>> from uepjax import theory
    >>> gamma = jnp.array([0.40, 0.35, 0.25])
    >>> p = theory.decoding_probabilities("ew", (3, 3, 3), gamma, max_packets=30)
    >>> p.shape
    (3, 31)
    >>> bool(p[0, 9] > p[2, 9])  # class 1 is better protected (Fig. 8)
    True
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uepjax import latency as latency_lib

__all__ = [
    "GAMMA_TOLERANCE",
    "MAX_COMPOSITIONS",
    "arrival_probabilities",
    "arrivals_by_deadline",
    "average_over_arrivals",
    "block_energies",
    "conditional_loss",
    "cxr_loss_bound",
    "decodable_classes",
    "decoding_probabilities",
    "expected_loss",
    "expected_pairwise_unrecovered",
    "expected_unrecovered",
    "mds_conditional_loss",
    "mds_expected_loss",
    "recovered_probability",
    "repetition_conditional_loss",
    "repetition_expected_loss",
    "uncoded_conditional_loss",
    "uncoded_expected_loss",
]

_LOG = logging.getLogger(__name__)

GAMMA_TOLERANCE = 1e-6
"""How far ``sum(gamma)`` may be from 1 before it is rejected."""

MAX_COMPOSITIONS = 4_000_000
"""Largest number of count vectors (all totals 0..max_packets) enumerated exactly."""

_MAX_PATTERN_CLASSES = 16
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------
# Validation of user input (static things always, values only when concrete).
# ---------------------------------------------------------------------------------


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _describe(value: np.ndarray) -> str:
    if value.ndim == 0:
        return repr(value.item())
    return np.array2string(value, precision=6, threshold=12)


def _check_scheme(scheme: Any) -> str:
    name = scheme if isinstance(scheme, str) else getattr(scheme, "name", None)
    if isinstance(name, str) and name.lower() in ("now", "ew"):
        return name.lower()
    raise ValueError(
        f'scheme must be "now" or "ew" (got {scheme!r}); MDS, uncoded and repetition '
        "have their own functions (mds_conditional_loss, repetition_conditional_loss)"
    )


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _check_class_sizes(class_sizes: Any) -> tuple[int, ...]:
    if isinstance(class_sizes, numbers.Integral) or not isinstance(
        class_sizes, Sequence | np.ndarray
    ):
        raise ValueError(
            "class_sizes must be a sequence of positive integers, one per class "
            f"(got {class_sizes!r})"
        )
    sizes = tuple(class_sizes)
    if not sizes or any(
        isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
        for k in sizes
    ):
        raise ValueError(
            "class_sizes must be a non-empty sequence of positive integers "
            f"(got {class_sizes!r})"
        )
    return tuple(int(k) for k in sizes)


def _check_gamma(gamma: Any, num_classes: int) -> jax.Array:
    array = jnp.asarray(gamma, dtype=jnp.float32)
    if array.shape != (num_classes,):
        raise ValueError(
            f"gamma must have shape ({num_classes},), one probability per window "
            f"(got shape {array.shape})"
        )
    if not _is_concrete(gamma):
        return array
    host = np.asarray(gamma, dtype=np.float64)
    if not np.all(np.isfinite(host)) or np.any(host < 0):
        raise ValueError(
            f"gamma must be finite and non-negative (got {_describe(host)}); pass "
            "normalized window probabilities"
        )
    total = float(host.sum())
    if abs(total - 1.0) > GAMMA_TOLERANCE:
        raise ValueError(
            f"gamma must sum to 1 (got {total:.9g}); pass normalized window "
            "probabilities"
        )
    return array


def _check_nonnegative_array(
    value: Any, name: str, shape: tuple[int, ...], meaning: str
) -> jax.Array:
    array = jnp.asarray(value, dtype=jnp.float32)
    if array.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape}, {meaning} (got {array.shape})"
        )
    if _is_concrete(value):
        host = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(host)) or np.any(host < 0):
            raise ValueError(
                f"{name} must be finite and non-negative (got {_describe(host)})"
            )
    return array


def _check_gram(gram: Any, num_subproducts: int) -> jax.Array:
    array = jnp.asarray(gram, dtype=jnp.float32)
    shape = (num_subproducts, num_subproducts)
    if array.shape != shape:
        raise ValueError(
            f"gram must have shape {shape}, the Gram matrix of the sub-products "
            f"(got {array.shape})"
        )
    if _is_concrete(gram) and not np.all(np.isfinite(np.asarray(gram))):
        raise ValueError("gram must be finite (got non-finite entries)")
    return array


def _check_deadlines(deadlines: Any) -> jax.Array:
    array = jnp.asarray(deadlines, dtype=jnp.float32)
    if _is_concrete(deadlines):
        host = np.asarray(deadlines, dtype=np.float64)
        if np.any(np.isnan(host)) or np.any(host < 0):
            raise ValueError(
                f"deadlines must be non-negative times (got {_describe(host)})"
            )
    return array


def _check_latency(latency: Any, workers: int) -> latency_lib.LatencyModel:
    if not isinstance(latency, latency_lib.LatencyModel):
        raise ValueError(
            f"latency must be a uepjax.latency model (got {type(latency).__name__})"
        )
    if latency.num_workers not in (None, workers):
        raise ValueError(
            f"latency has per-worker parameters for {latency.num_workers} workers, "
            f"but workers is {workers}"
        )
    return latency


def _check_class_table(
    class_of_subproduct: Any, class_sizes: tuple[int, ...]
) -> np.ndarray:
    num_classes = len(class_sizes)
    if class_of_subproduct is None:
        return np.repeat(np.arange(num_classes), class_sizes)
    if not _is_concrete(class_of_subproduct):
        raise ValueError(
            "class_of_subproduct must be a concrete [K] integer array (got a traced "
            "value)"
        )
    table = np.asarray(class_of_subproduct)
    if table.ndim != 1 or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(
            "class_of_subproduct must be a [K] integer array (got "
            f"dtype {table.dtype}, shape {table.shape})"
        )
    valid = (
        table.size == sum(class_sizes)
        and table.min() >= 0
        and table.max() < num_classes
        and tuple(np.bincount(table, minlength=num_classes)) == class_sizes
    )
    if not valid:
        raise ValueError(
            f"class_of_subproduct must hold class_sizes[l] = {class_sizes} entries "
            f"equal to each class l (got {_describe(table)})"
        )
    return table


def _check_one_loss_matrix(subproduct_energies: Any, gram: Any) -> None:
    if (subproduct_energies is None) == (gram is None):
        raise ValueError(
            "pass exactly one of subproduct_energies ([K] expected ||C_k||_F^2) and "
            "gram ([K, K] Gram matrix of the sub-products)"
        )


def _normalize(loss: jax.Array, total: jax.Array, total_name: str) -> jax.Array:
    if _is_concrete(total) and not float(total) > 0:
        raise ValueError(
            f"normalized=True needs {total_name} > 0 (got {float(total)!r})"
        )
    return loss / total


# ---------------------------------------------------------------------------------
# The decoding rule in terms of window counts.
# ---------------------------------------------------------------------------------


def _decodable(counts: Any, class_sizes: tuple[int, ...], scheme: str, xp: Any) -> Any:
    """The rule of `decodable_classes`, written for numpy or jax.numpy (``xp``)."""
    num_classes = len(class_sizes)
    if scheme == "now":
        return counts >= xp.asarray(class_sizes, dtype=counts.dtype)
    cumulative = np.cumsum(class_sizes)
    rank = xp.zeros_like(counts[..., 0])
    full = []
    for window in range(num_classes):
        rank = xp.minimum(rank + counts[..., window], int(cumulative[window]))
        full.append(rank == int(cumulative[window]))
    decodable = [full[-1]]
    for window in range(num_classes - 2, -1, -1):
        decodable.append(xp.logical_or(decodable[-1], full[window]))
    return xp.stack(decodable[::-1], axis=-1)


def decodable_classes(
    scheme: Any, class_sizes: Sequence[int], counts: Any
) -> jax.Array:
    """Which classes a large-field decoder recovers from the window counts.

    NOW (eq. 14): window ``l`` holds class ``l`` only, so the received coefficient
    matrix is block diagonal and class ``l`` is decodable iff ``n_l >= k_l``.

    EW: window ``l`` holds classes ``1..l``. With ``K_i = k_1 + ... + k_i`` and the
    rank recursion ``R_0 = 0``, ``R_i = min(R_{i-1} + n_i, K_i)``, class ``l`` is
    decodable iff ``R_i = K_i`` for some window ``i >= l``.

    Why the EW rule is right. Let ``S_i`` be the span of the unit vectors of classes
    ``1..i`` (dimension ``K_i``); a packet of window ``i`` is a generic vector of
    ``S_i``, and ``V_i`` is the span of the packets of windows ``1..i``.

    1. ``R_i = dim V_i``. ``V_{i-1}`` lies in ``S_i`` and the ``n_i`` new packets are
       generic in ``S_i``, so they add ``min(n_i, K_i - dim V_{i-1})`` dimensions.
    2. If ``R_i = K_i`` for some ``i >= l`` then ``V_i = S_i`` contains every unit
       vector of classes ``1..i``, in particular those of class ``l``.
    3. Conversely let ``j < l`` be the last window before ``l`` with ``R_j = K_j``
       (``j = 0`` if none) and suppose no window ``i >= l`` is full. Since ``S_j``
       is in the row space, ``e_k`` is recoverable iff its image is in the row space
       of the packets of windows ``> j`` projected onto the coordinates of classes
       ``> j``. There no prefix is full: ``R_i - K_j < K_i - K_j`` for all ``i > j``,
       so the projected packets are independent. Append the row ``e_k`` (``k`` in a
       class ``c > j``) and apply Hall's theorem to the support pattern: a set of rows
       whose largest window is ``i`` reaches the columns of classes ``j+1..i`` (plus
       ``k``), and counts at most ``R_i - K_j + 1`` rows, which fits in
       ``K_i - K_j`` columns when ``c <= i`` (strict deficiency) and in
       ``K_i - K_j + 1`` columns when ``c > i``. So a perfect matching exists, the
       matrix with ``e_k`` appended has full row rank for generic coefficients
       (the determinant of the matched minor is a nonzero polynomial), and ``e_k``
       is not in the row space.

    With independent uniform coefficients from ``GF(q)`` the same statements hold
    with probability tending to 1 as ``q`` grows (Schwartz-Zippel); with real
    Gaussian coefficients they hold with probability 1.

    Args:
        scheme: "now" or "ew" (or an enum whose name is NOW / EW).
        class_sizes: ``(k_1, ..., k_L)`` positive integers.
        counts: ``[..., L]`` integer numbers of received packets per window.

    Returns:
        ``[..., L]`` bool, entry ``l`` true iff class ``l`` is decodable.

    Raises:
        ValueError: on an unknown scheme, bad class sizes or a wrong last dimension.
    """
    scheme = _check_scheme(scheme)
    sizes = _check_class_sizes(class_sizes)
    counts = jnp.asarray(counts)
    if counts.ndim < 1 or counts.shape[-1] != len(sizes):
        raise ValueError(
            f"counts must have shape [..., {len(sizes)}], one count per window "
            f"(got shape {counts.shape})"
        )
    if not jnp.issubdtype(counts.dtype, jnp.integer):
        raise ValueError(f"counts must be integers (got dtype {counts.dtype})")
    return _decodable(counts, sizes, scheme, jnp)


# ---------------------------------------------------------------------------------
# Enumeration of the count vectors and the multinomial probabilities.
# ---------------------------------------------------------------------------------


@functools.cache
def _compositions_of(total: int, parts: int) -> np.ndarray:
    """All ``[rows, parts]`` int32 vectors of non-negative integers summing to total."""
    if parts == 1:
        return np.array([[total]], dtype=np.int32)
    blocks = []
    for first in range(total, -1, -1):
        rest = _compositions_of(total - first, parts - 1)
        head = np.full((rest.shape[0], 1), first, dtype=np.int32)
        blocks.append(np.concatenate([head, rest], axis=1))
    return np.concatenate(blocks, axis=0)


class _CompositionTable(NamedTuple):
    counts: np.ndarray  # [rows, L] int32, sorted by total
    totals: np.ndarray  # [rows] int32
    log_coefficient: np.ndarray  # [rows] float32, log of n! / prod(c_l!)
    minus_index: np.ndarray  # [rows, L] int32: row of counts - e_l, or rows if c_l = 0


def _num_compositions(max_packets: int, parts: int) -> int:
    return math.comb(max_packets + parts, parts)


@functools.lru_cache(maxsize=32)
def _composition_table(max_packets: int, parts: int) -> _CompositionTable:
    rows = _num_compositions(max_packets, parts)
    if rows > MAX_COMPOSITIONS:
        raise ValueError(
            f"exact enumeration needs {rows} count vectors for max_packets = "
            f"{max_packets} and {parts} windows (limit {MAX_COMPOSITIONS}); use fewer "
            "packets or classes, or the Monte Carlo estimator of uepjax.simulate"
        )
    counts = np.concatenate(
        [_compositions_of(n, parts) for n in range(max_packets + 1)], axis=0
    )
    totals = counts.sum(axis=1).astype(np.int32)
    log_factorial = np.array([math.lgamma(i + 1.0) for i in range(max_packets + 1)])
    log_coefficient = log_factorial[totals] - log_factorial[counts].sum(axis=1)

    radix = (max_packets + 1) ** np.arange(parts, dtype=np.int64)
    codes = counts.astype(np.int64) @ radix
    order = np.argsort(codes)
    minus_index = np.full(counts.shape, rows, dtype=np.int32)
    for part in range(parts):
        has = counts[:, part] > 0
        position = np.searchsorted(codes[order], codes[has] - radix[part])
        minus_index[has, part] = order[position]
    _LOG.debug("enumerated %d count vectors for %d windows", rows, parts)
    return _CompositionTable(
        counts=counts,
        totals=totals,
        log_coefficient=log_coefficient.astype(np.float32),
        minus_index=minus_index,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _composition_pmf(gamma: jax.Array, max_packets: int) -> jax.Array:
    """``[rows]`` Multinomial(c; |c|, gamma) of every count vector c of the table.

    Evaluated in log space with the coefficients computed in float64 on the host; a
    count on a window of probability 0 gives probability 0 (and ``0^0 = 1``).
    """
    table = _composition_table(max_packets, gamma.shape[-1])
    positive = gamma > 0
    log_gamma = jnp.log(jnp.where(positive, gamma, 1.0))
    # A matrix product, not a broadcast multiply-sum: jaxlib 0.10's CPU XNNPACK
    # fusion returns wrong values for that pattern on batched gamma.
    counts = jnp.asarray(table.counts.T, log_gamma.dtype)
    exponent = table.log_coefficient + jnp.matmul(
        log_gamma, counts, precision=lax.Precision.HIGHEST
    )
    impossible = jnp.any((table.counts > 0) & ~positive[..., None, :], axis=-1)
    return jnp.where(impossible, 0.0, jnp.exp(exponent))


@_composition_pmf.defjvp
def _composition_pmf_jvp(
    max_packets: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    # d/dgamma_l Multinomial(c; n, gamma) = n Multinomial(c - e_l; n - 1, gamma):
    # exact for every gamma, including gamma_l = 0, with no division by gamma_l.
    (gamma,), (gamma_dot,) = primals, tangents
    table = _composition_table(max_packets, gamma.shape[-1])
    pmf = _composition_pmf(gamma, max_packets)
    padded = jnp.concatenate([pmf, jnp.zeros_like(pmf[..., :1])], axis=-1)
    lowered = padded[..., table.minus_index]
    tangent = table.totals * jnp.einsum(
        "...rl,...l->...r", lowered, gamma_dot, precision=lax.Precision.HIGHEST
    )
    return pmf, tangent


class _PatternTable(NamedTuple):
    bits: np.ndarray  # [patterns, L] bool: classes recovered in each pattern
    codes: np.ndarray  # [patterns] int: sum_l bits[l] 2^l
    segments: np.ndarray  # [rows] int32: total * patterns + pattern of each row


@functools.lru_cache(maxsize=64)
def _pattern_table(
    scheme: str, class_sizes: tuple[int, ...], max_packets: int
) -> _PatternTable:
    table = _composition_table(max_packets, len(class_sizes))
    recovered = _decodable(table.counts, class_sizes, scheme, np)
    codes = recovered.astype(np.int64) @ (2 ** np.arange(len(class_sizes)))
    unique, inverse = np.unique(codes, return_inverse=True)
    bits = (unique[:, None] >> np.arange(len(class_sizes))) & 1
    segments = table.totals.astype(np.int64) * unique.size + inverse.reshape(-1)
    return _PatternTable(
        bits=bits.astype(bool), codes=unique, segments=segments.astype(np.int32)
    )


@functools.partial(jax.jit, static_argnames=("scheme", "class_sizes", "max_packets"))
def _pattern_probabilities(
    gamma: jax.Array, scheme: str, class_sizes: tuple[int, ...], max_packets: int
) -> jax.Array:
    """``[max_packets + 1, patterns]`` P(exactly this recovered set | n packets)."""
    patterns = _pattern_table(scheme, class_sizes, max_packets)
    pmf = _composition_pmf(gamma, max_packets)
    joint = jax.ops.segment_sum(
        pmf,
        patterns.segments,
        num_segments=(max_packets + 1) * patterns.codes.size,
        indices_are_sorted=True,
    )
    return joint.reshape(max_packets + 1, patterns.codes.size)


def _joint(
    scheme: Any, class_sizes: Any, gamma: Any, max_packets: Any
) -> tuple[jax.Array, _PatternTable]:
    scheme = _check_scheme(scheme)
    sizes = _check_class_sizes(class_sizes)
    gamma = _check_gamma(gamma, len(sizes))
    max_packets = _check_count(max_packets, "max_packets", 0)
    joint = _pattern_probabilities(gamma, scheme, sizes, max_packets)
    return joint, _pattern_table(scheme, sizes, max_packets)


# ---------------------------------------------------------------------------------
# Public probabilities.
# ---------------------------------------------------------------------------------


def recovered_probability(
    scheme: Any, class_sizes: Sequence[int], gamma: Any, max_packets: int
) -> jax.Array:
    """Joint distribution of the set of recovered classes after n packets.

    Args:
        scheme: "now" or "ew".
        class_sizes: ``(k_1, ..., k_L)`` positive integers, most important first.
        gamma: ``[L]`` float32 window selection probabilities summing to 1.
        max_packets: largest number of received packets ``n``.

    Returns:
        ``[2**L, max_packets + 1]`` float32; entry ``[s, n]`` is the probability that
        after ``n`` packets exactly the classes ``l`` with bit ``l`` of ``s`` set are
        recovered. Each column sums to 1.

    Raises:
        ValueError: on invalid arguments, or ``L > 16``.
    """
    sizes = _check_class_sizes(class_sizes)
    if len(sizes) > _MAX_PATTERN_CLASSES:
        raise ValueError(
            f"recovered_probability supports at most {_MAX_PATTERN_CLASSES} classes "
            f"(got {len(sizes)})"
        )
    joint, patterns = _joint(scheme, sizes, gamma, max_packets)
    dense = jnp.zeros((2 ** len(sizes), joint.shape[0]), jnp.float32)
    return dense.at[patterns.codes].set(joint.T)


def decoding_probabilities(
    scheme: Any, class_sizes: Sequence[int], gamma: Any, max_packets: int
) -> jax.Array:
    """Probability ``P_{d,l}(n)`` that class ``l`` is decodable after n packets.

    Eq. (14) for NOW, with equality since the field is large; the EW analogue uses the
    rank rule of `decodable_classes`. Exact sums of the multinomial pmf (eq. 15).

    Args:
        scheme: "now" or "ew".
        class_sizes: ``(k_1, ..., k_L)`` positive integers, most important first.
        gamma: ``[L]`` float32 window selection probabilities summing to 1 (a leaf:
            new values do not recompile; differentiable).
        max_packets: largest number of received packets ``n``.

    Returns:
        ``[L, max_packets + 1]`` float32, non-decreasing in ``n``.

    Raises:
        ValueError: on an unknown scheme, bad class sizes, or a concrete ``gamma``
            that is not a probability vector of length ``L``.

    Example:
        >>> p = decoding_probabilities("now", (3, 3, 3), [0.4, 0.35, 0.25], 30)
        >>> float(p[0, 2])  # fewer than k_1 = 3 packets
        0.0
    """
    joint, patterns = _joint(scheme, class_sizes, gamma, max_packets)
    return jnp.einsum(
        "np,pl->ln", joint, patterns.bits.astype(np.float32), precision=_HIGHEST
    )


def expected_unrecovered(
    scheme: Any, class_sizes: Sequence[int], gamma: Any, max_packets: int
) -> jax.Array:
    """Probability that class ``l`` is NOT recovered after n packets, ``1 - P_{d,l}``.

    Summed directly over the undecodable count vectors, so small values keep their
    relative precision. Enough for any loss linear in the unrecovered indicators.

    Args:
        scheme, class_sizes, gamma, max_packets: as in `decoding_probabilities`.

    Returns:
        ``[L, max_packets + 1]`` float32.
    """
    joint, patterns = _joint(scheme, class_sizes, gamma, max_packets)
    missing = (~patterns.bits).astype(np.float32)
    return jnp.einsum("np,pl->ln", joint, missing, precision=_HIGHEST)


def expected_pairwise_unrecovered(
    scheme: Any, class_sizes: Sequence[int], gamma: Any, max_packets: int
) -> jax.Array:
    """Joint probability that classes ``l`` and ``m`` are both unrecovered.

    The classes are dependent (strongly under EW), so this is not the product of the
    marginals. The diagonal equals `expected_unrecovered`.

    Args:
        scheme, class_sizes, gamma, max_packets: as in `decoding_probabilities`.

    Returns:
        ``[L, L, max_packets + 1]`` float32, symmetric in its first two axes.
    """
    joint, patterns = _joint(scheme, class_sizes, gamma, max_packets)
    missing = (~patterns.bits).astype(np.float32)
    return jnp.einsum("np,pl,pm->lmn", joint, missing, missing, precision=_HIGHEST)


# ---------------------------------------------------------------------------------
# Losses conditioned on the number of received packets (eqs. 17 and 19).
# ---------------------------------------------------------------------------------


def block_energies(
    rows: int, inner: int, columns: int, variance_a: Any, variance_b: Any
) -> jax.Array:
    """Expected energy ``E||A_i B_j||_F^2 = U H Q sigma_A^2 sigma_B^2`` (eq. 12).

    For zero-mean blocks with uncorrelated entries: ``A_i`` is ``U x H`` (``rows x
    inner``) and ``B_j`` is ``H x Q`` (``inner x columns``).

    Args:
        rows: ``U``, rows of a block of A.
        inner: ``H``, the inner dimension.
        columns: ``Q``, columns of a block of B.
        variance_a: entry variances of the A blocks, any shape.
        variance_b: entry variances of the B blocks, broadcasting with variance_a.

    Returns:
        ``broadcast(variance_a, variance_b)`` float32 energies; e.g. for r x c pass
        ``var_a[:, None], var_b[None, :]`` and flatten to the sub-product order.
    """
    factors = [
        _check_count(rows, "rows", 1),
        _check_count(inner, "inner", 1),
        _check_count(columns, "columns", 1),
    ]
    size = float(math.prod(factors))
    for name, value in (("variance_a", variance_a), ("variance_b", variance_b)):
        if _is_concrete(value):
            host = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(host)) or np.any(host < 0):
                raise ValueError(
                    f"{name} must be finite and non-negative (got {_describe(host)})"
                )
    va = jnp.asarray(variance_a, jnp.float32)
    vb = jnp.asarray(variance_b, jnp.float32)
    return size * va * vb


def _class_matrix(class_table: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, L]`` float32 one-hot class membership of the sub-products."""
    return (class_table[:, None] == np.arange(num_classes)).astype(np.float32)


def conditional_loss(
    scheme: Any,
    class_sizes: Sequence[int],
    gamma: Any,
    subproduct_energies: Any,
    max_packets: int,
    gram: Any = None,
    *,
    normalized: bool = False,
    class_of_subproduct: Any = None,
) -> jax.Array:
    """Expected loss ``E[||C - C_hat||_F^2 | n packets]`` (eq. 17, generalised).

    With energies ``E_k = E||C_k||_F^2``:

        loss(n) = sum_k E_k (1 - P_{d, class(k)}(n)),

    which is Theorem 1 for r x c (``E_k = U H Q sigma_A^2 sigma_B^2``, eq. 12) and the
    exact c x r expectation under Assumption 1: there the cross terms
    ``E<A_m B_m, A_j B_j>`` vanish for independent zero-mean blocks, so no factor
    ``M`` appears (compare `cxr_loss_bound`, eq. 19). With a Gram matrix ``G``
    (``G_kj = <C_k, C_j>_F``, e.g. of one c x r product) the loss is
    ``E[u^T G u]`` over the joint distribution of the unrecovered indicators ``u``.

    Args:
        scheme: "now" or "ew".
        class_sizes: ``(k_1, ..., k_L)`` positive integers.
        gamma: ``[L]`` float32 window probabilities summing to 1.
        subproduct_energies: ``[K]`` float32 non-negative energies, or None when
            ``gram`` is given.
        max_packets: largest number of received packets.
        gram: ``[K, K]`` float32 Gram matrix, or None to use the energies.
        normalized: divide by ``sum_k E_k`` (or ``1^T G 1 = ||C||_F^2``).
        class_of_subproduct: ``[K]`` int class of each sub-product; by default the
            first ``k_1`` sub-products are class 0, the next ``k_2`` class 1, etc.

    Returns:
        ``[max_packets + 1]`` float32.

    Raises:
        ValueError: on invalid arguments, or if both or neither of
            ``subproduct_energies`` and ``gram`` are given.
    """
    sizes = _check_class_sizes(class_sizes)
    _check_one_loss_matrix(subproduct_energies, gram)
    num_subproducts = sum(sizes)
    membership = _class_matrix(
        _check_class_table(class_of_subproduct, sizes), len(sizes)
    )
    if gram is None:
        energies = _check_nonnegative_array(
            subproduct_energies,
            "subproduct_energies",
            (num_subproducts,),
            "one expected energy per sub-product",
        )
        class_energy = jnp.einsum("k,kl->l", energies, membership, precision=_HIGHEST)
        unrecovered = expected_unrecovered(scheme, sizes, gamma, max_packets)
        loss = jnp.einsum("l,ln->n", class_energy, unrecovered, precision=_HIGHEST)
        total, total_name = jnp.sum(energies), "sum(subproduct_energies)"
    else:
        gram = _check_gram(gram, num_subproducts)
        class_gram = jnp.einsum(
            "kl,kj,jm->lm", membership, gram, membership, precision=_HIGHEST
        )
        pairwise = expected_pairwise_unrecovered(scheme, sizes, gamma, max_packets)
        loss = jnp.einsum("lm,lmn->n", class_gram, pairwise, precision=_HIGHEST)
        total, total_name = jnp.sum(gram), "1^T gram 1"
    if normalized:
        return _normalize(loss, total, total_name)
    return loss


def cxr_loss_bound(
    scheme: Any,
    class_sizes: Sequence[int],
    gamma: Any,
    subproduct_energies: Any,
    max_packets: int,
    *,
    normalized: bool = False,
    class_of_subproduct: Any = None,
) -> jax.Array:
    """Theorem 2's upper bound on the c x r loss given n packets (eq. 19).

    ``M sum_k E_k (1 - P_{d, class(k)}(n))`` with ``M = K`` the number of outer
    products; it follows from the triangle and Cauchy-Schwarz inequalities
    (eqs. 20-22) and holds for every realisation, not only under Assumption 1. The
    exact expectation under Assumption 1 is `conditional_loss` (no factor ``M``).

    Args:
        scheme, class_sizes, gamma, subproduct_energies, max_packets, normalized,
        class_of_subproduct: as in `conditional_loss`.

    Returns:
        ``[max_packets + 1]`` float32.
    """
    exact = conditional_loss(
        scheme,
        class_sizes,
        gamma,
        subproduct_energies,
        max_packets,
        normalized=normalized,
        class_of_subproduct=class_of_subproduct,
    )
    return sum(_check_class_sizes(class_sizes)) * exact


def mds_conditional_loss(
    subproducts: int, max_packets: int, *, total_energy: Any = 1.0
) -> jax.Array:
    """MDS loss given n packets: everything is recovered iff ``n >= K``.

    Args:
        subproducts: ``K``, the number of sub-products.
        max_packets: largest number of received packets.
        total_energy: ``E||C||_F^2`` (the default 1 gives the normalized loss).

    Returns:
        ``[max_packets + 1]`` float32, ``total_energy`` for ``n < K`` and 0 after.
    """
    subproducts = _check_count(subproducts, "subproducts", 1)
    max_packets = _check_count(max_packets, "max_packets", 0)
    missing = (np.arange(max_packets + 1) < subproducts).astype(np.float32)
    return jnp.asarray(total_energy, jnp.float32) * missing


def _missing_after(workers: int, repetitions: int, copies: int) -> np.ndarray:
    """``[workers + 1]`` C(W - copies r, n) / C(W, n): the first n of a uniformly
    random order of the W workers miss ``copies`` given groups of r workers."""
    missed = copies * repetitions
    ratio = np.ones(workers + 1)
    n = np.arange(workers + 1, dtype=np.float64)
    for i in range(missed):
        ratio = ratio * np.clip(workers - n - i, 0.0, None) / (workers - i)
    return ratio.astype(np.float32)


def repetition_conditional_loss(
    subproduct_energies: Any,
    repetitions: int,
    *,
    gram: Any = None,
    normalized: bool = False,
) -> jax.Array:
    """r-fold repetition given n of its ``W = r K`` packets (i.i.d. workers).

    Each sub-product is computed by ``r`` workers. For i.i.d. response times the
    first ``n`` arrivals are a uniformly random ``n``-subset of the workers, so

        P(k not recovered | n) = C(W - r, n) / C(W, n),
        P(k and j not recovered | n) = C(W - 2r, n) / C(W, n)   (k != j).

    Args:
        subproduct_energies: ``[K]`` float32 energies, or None when ``gram`` is given.
        repetitions: ``r >= 1``.
        gram: ``[K, K]`` float32 Gram matrix of the sub-products, or None.
        normalized: divide by ``sum_k E_k`` (or ``1^T G 1``).

    Returns:
        ``[r K + 1]`` float32 loss after ``n = 0..rK`` packets.
    """
    _check_one_loss_matrix(subproduct_energies, gram)
    repetitions = _check_count(repetitions, "repetitions", 1)
    if gram is None:
        energies = jnp.asarray(subproduct_energies, jnp.float32)
        if energies.ndim != 1 or energies.shape[0] < 1:
            raise ValueError(
                "subproduct_energies must have shape [K] with K >= 1 "
                f"(got {energies.shape})"
            )
        energies = _check_nonnegative_array(
            subproduct_energies,
            "subproduct_energies",
            energies.shape,
            "one expected energy per sub-product",
        )
        workers = repetitions * energies.shape[0]
        loss = jnp.sum(energies) * _missing_after(workers, repetitions, 1)
        total, total_name = jnp.sum(energies), "sum(subproduct_energies)"
    else:
        size = jnp.shape(gram)[0] if jnp.ndim(gram) == 2 else -1
        if size < 1:
            raise ValueError(
                f"gram must have shape [K, K] with K >= 1 (got {jnp.shape(gram)})"
            )
        gram = _check_gram(gram, size)
        workers = repetitions * size
        diagonal = jnp.trace(gram)
        off_diagonal = jnp.sum(gram) - diagonal
        loss = diagonal * _missing_after(workers, repetitions, 1)
        if size > 1:
            loss = loss + off_diagonal * _missing_after(workers, repetitions, 2)
        total, total_name = jnp.sum(gram), "1^T gram 1"
    if normalized:
        return _normalize(loss, total, total_name)
    return loss


def uncoded_conditional_loss(
    subproduct_energies: Any, *, gram: Any = None, normalized: bool = False
) -> jax.Array:
    """Uncoded computation (one sub-product per worker, ``W = K``) given n packets.

    The case ``r = 1`` of `repetition_conditional_loss`:
    ``P(k not recovered | n) = (K - n) / K``.
    """
    return repetition_conditional_loss(
        subproduct_energies, 1, gram=gram, normalized=normalized
    )


# ---------------------------------------------------------------------------------
# Number of packets received by a deadline (eq. 13) and the expectation over it.
# ---------------------------------------------------------------------------------


def _log_binomial_coefficients(workers: int) -> np.ndarray:
    lf = np.array([math.lgamma(i + 1.0) for i in range(workers + 1)])
    return (lf[workers] - lf - lf[::-1]).astype(np.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _binomial_pmf(workers: int, p: jax.Array) -> jax.Array:
    """``[..., workers + 1]`` Binomial(n; workers, p), log space, exact at p = 0, 1."""
    n = np.arange(workers + 1, dtype=np.float32)
    positive = p > 0
    below_one = p < 1
    log_p = jnp.log(jnp.where(positive, p, 1.0))[..., None]
    log_q = jnp.log1p(-jnp.where(below_one, p, 0.0))[..., None]
    exponent = _log_binomial_coefficients(workers) + n * log_p + (workers - n) * log_q
    impossible = ((n > 0) & ~positive[..., None]) | (
        (n < workers) & ~below_one[..., None]
    )
    return jnp.where(impossible, 0.0, jnp.exp(exponent))


@_binomial_pmf.defjvp
def _binomial_pmf_jvp(
    workers: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    # d/dp Binomial(n; W, p) = W (Binomial(n - 1; W - 1, p) - Binomial(n; W - 1, p)).
    (p,), (p_dot,) = primals, tangents
    pmf = _binomial_pmf(workers, p)
    if workers == 0:
        return pmf, jnp.zeros_like(pmf)
    smaller = _binomial_pmf(workers - 1, p)
    zero = jnp.zeros_like(smaller[..., :1])
    derivative = workers * (
        jnp.concatenate([zero, smaller], axis=-1)
        - jnp.concatenate([smaller, zero], axis=-1)
    )
    return pmf, derivative * p_dot[..., None]


def arrival_probabilities(workers: int, cdf_value: Any) -> jax.Array:
    """Distribution of the number of packets ``N(t)`` received by time ``t`` (eq. 13).

    ``P_{N(t)}(n) = C(W, n) (1 - F(t))^(W - n) F(t)^n`` for i.i.d. workers,
    differentiable in ``F(t)`` with exact derivatives also at 0 and 1.

    Args:
        workers: ``W >= 0``.
        cdf_value: ``[...]`` float32 values of ``F(Omega t)`` in [0, 1], e.g. one per
            deadline.

    Returns:
        ``[..., workers + 1]`` float32, summing to 1 over the last axis.

    Raises:
        ValueError: if a concrete ``cdf_value`` lies outside [0, 1].
    """
    workers = _check_count(workers, "workers", 0)
    p = jnp.asarray(cdf_value, jnp.float32)
    if _is_concrete(cdf_value):
        host = np.asarray(cdf_value, dtype=np.float64)
        if not np.all((host >= 0) & (host <= 1)):
            raise ValueError(f"cdf_value must lie in [0, 1] (got {_describe(host)})")
    return _binomial_kernel(workers, p)


_binomial_kernel = jax.jit(_binomial_pmf, static_argnums=0)


def _poisson_binomial(p: jax.Array) -> jax.Array:
    """``[..., W + 1]`` distribution of the number of successes of independent trials
    with success probabilities ``p [..., W]``, by a DP over the trials."""
    workers = p.shape[-1]
    start = jnp.zeros(p.shape[:-1] + (workers + 1,), jnp.float32).at[..., 0].set(1.0)

    def add_worker(dist: jax.Array, p_w: jax.Array) -> tuple[jax.Array, None]:
        shifted = jnp.concatenate([jnp.zeros_like(dist[..., :1]), dist[..., :-1]], -1)
        return dist * (1.0 - p_w[..., None]) + shifted * p_w[..., None], None

    dist, _ = jax.lax.scan(add_worker, start, jnp.moveaxis(p, -1, 0))
    return dist


@functools.partial(jax.jit, static_argnames=("workers",))
def _arrivals_kernel(
    latency: latency_lib.LatencyModel, deadlines: jax.Array, workers: int
) -> jax.Array:
    if latency.is_homogeneous:
        return _binomial_pmf(workers, latency.cdf(deadlines))
    return _poisson_binomial(latency.cdf(deadlines[..., None]))


def arrivals_by_deadline(
    latency: latency_lib.LatencyModel, workers: int, deadlines: Any
) -> jax.Array:
    """Distribution of the number of packets received by each deadline.

    Binomial (eq. 13) for i.i.d. workers; Poisson-binomial (a DP over the workers)
    when the latency has per-worker parameters.

    Args:
        latency: a `uepjax.latency` model; per-worker parameters must have length
            ``workers``.
        workers: ``W >= 0``.
        deadlines: ``[...]`` non-negative times.

    Returns:
        ``[..., workers + 1]`` float32.
    """
    workers = _check_count(workers, "workers", 0)
    latency = _check_latency(latency, workers)
    deadlines = _check_deadlines(deadlines)
    return _arrivals_kernel(latency, deadlines, workers)


def average_over_arrivals(
    conditional: Any, latency: latency_lib.LatencyModel, deadlines: Any
) -> jax.Array:
    """``E[loss(t)] = sum_n P(N(t) = n) E[loss | n]`` (eqs. 16 and 18).

    Valid for the coded schemes with heterogeneous workers too: the windows are drawn
    independently of the response times, so the packets received form an i.i.d.
    window sample whatever subset of workers they come from.

    Args:
        conditional: ``[W + 1]`` float32 expected loss after ``n = 0..W`` packets (one
            entry per number of workers).
        latency: a `uepjax.latency` model for the ``W`` workers.
        deadlines: ``[...]`` non-negative times.

    Returns:
        ``[...]`` float32 expected loss at each deadline.
    """
    conditional = jnp.asarray(conditional, jnp.float32)
    if conditional.ndim != 1:
        raise ValueError(
            f"conditional must have shape [workers + 1] (got {conditional.shape})"
        )
    arrivals = arrivals_by_deadline(latency, conditional.shape[0] - 1, deadlines)
    return jnp.einsum("...n,n->...", arrivals, conditional, precision=_HIGHEST)


def expected_loss(
    scheme: Any,
    class_sizes: Sequence[int],
    gamma: Any,
    subproduct_energies: Any,
    workers: int,
    latency: latency_lib.LatencyModel,
    deadlines: Any,
    *,
    gram: Any = None,
    normalized: bool = False,
    cxr_bound: bool = False,
    class_of_subproduct: Any = None,
) -> jax.Array:
    """Expected loss at each deadline of a NOW / EW coded product (eqs. 16 and 18).

    ``sum_n P(N(t) = n) E[loss | n]`` with ``N(t)`` binomial for i.i.d. workers
    (eq. 13) and Poisson-binomial for per-worker latency parameters. The conditional
    loss is `conditional_loss` (Theorem 1, or the exact c x r value), or Theorem 2's
    bound `cxr_loss_bound` when ``cxr_bound`` is true.

    Args:
        scheme, class_sizes, gamma, subproduct_energies, gram, normalized,
        class_of_subproduct: as in `conditional_loss`.
        workers: ``W``, the number of workers (one packet each).
        latency: a `uepjax.latency` model; set its load to ``K / W`` for Remark 1.
        deadlines: ``[D]`` (or any shape) non-negative deadlines ``T_max``.
        cxr_bound: use the bound of eq. (19) (needs energies, not a Gram matrix).

    Returns:
        ``deadlines.shape`` float32.

    Example:
        >>> from uepjax.latency import Exponential
        >>> loss = expected_loss("ew", (3, 3, 3), [0.4, 0.35, 0.25], [1.0] * 9,
        ...                      30, Exponential(1.0), [0.1, 1.0], normalized=True)
        >>> bool(loss[0] > loss[1])
        True
    """
    workers = _check_count(workers, "workers", 0)
    if cxr_bound:
        if gram is not None:
            raise ValueError(
                "cxr_bound=True uses subproduct_energies (eq. 19); pass gram=None"
            )
        conditional = cxr_loss_bound(
            scheme,
            class_sizes,
            gamma,
            subproduct_energies,
            workers,
            normalized=normalized,
            class_of_subproduct=class_of_subproduct,
        )
    else:
        conditional = conditional_loss(
            scheme,
            class_sizes,
            gamma,
            subproduct_energies,
            workers,
            gram,
            normalized=normalized,
            class_of_subproduct=class_of_subproduct,
        )
    return average_over_arrivals(conditional, latency, deadlines)


def mds_expected_loss(
    subproducts: int,
    workers: int,
    latency: latency_lib.LatencyModel,
    deadlines: Any,
    *,
    total_energy: Any = 1.0,
) -> jax.Array:
    """MDS loss at each deadline: ``total_energy * P(N(t) < K)``.

    Args:
        subproducts: ``K``.
        workers: ``W`` (any ``W >= 0``; the code is recoverable from any ``K``).
        latency: a `uepjax.latency` model (per-worker parameters allowed).
        deadlines: ``[...]`` non-negative deadlines.
        total_energy: ``E||C||_F^2``; 1 gives the normalized loss.

    Returns:
        ``deadlines.shape`` float32.
    """
    workers = _check_count(workers, "workers", 0)
    conditional = mds_conditional_loss(subproducts, workers, total_energy=total_energy)
    return average_over_arrivals(conditional, latency, deadlines)


def repetition_expected_loss(
    subproduct_energies: Any,
    repetitions: int,
    latency: latency_lib.LatencyModel,
    deadlines: Any,
    *,
    gram: Any = None,
    normalized: bool = False,
) -> jax.Array:
    """r-fold repetition with ``W = r K`` i.i.d. workers at each deadline.

    Equals ``sum_k E_k (1 - F(Omega t))^r`` (and ``(1 - F)^(2r)`` for the off-diagonal
    Gram terms).

    Args:
        subproduct_energies, repetitions, gram, normalized: as in
            `repetition_conditional_loss`.
        latency: a homogeneous `uepjax.latency` model.
        deadlines: ``[...]`` non-negative deadlines.

    Returns:
        ``deadlines.shape`` float32.

    Raises:
        ValueError: if the latency has per-worker parameters: which worker holds
            which sub-product then matters and this closed form does not apply.
    """
    if isinstance(latency, latency_lib.LatencyModel) and not latency.is_homogeneous:
        raise ValueError(
            "repetition and uncoded closed forms need i.i.d. workers (got per-worker "
            f"latency parameters of shape {latency.parameter_shape})"
        )
    conditional = repetition_conditional_loss(
        subproduct_energies, repetitions, gram=gram, normalized=normalized
    )
    return average_over_arrivals(conditional, latency, deadlines)


def uncoded_expected_loss(
    subproduct_energies: Any,
    latency: latency_lib.LatencyModel,
    deadlines: Any,
    *,
    gram: Any = None,
    normalized: bool = False,
) -> jax.Array:
    """Uncoded computation (``W = K`` i.i.d. workers) at each deadline, ``r = 1``."""
    return repetition_expected_loss(
        subproduct_energies, 1, latency, deadlines, gram=gram, normalized=normalized
    )
