"""The baselines that the benchmark measures uepjax against.

They are written here, not in the library, the way a researcher would write them
without uepjax's engine, and they answer the same questions on the same inputs:

* :func:`plain_recoverable`: a plain Gauss-Jordan elimination of one matrix (argmax
  pivot, row swap, normalisation, elimination, one column per step) built from the
  public :class:`uepjax.fields.Field` operations and ``jax.vmap``-ed over the trials.
  It answers only which unknowns the full set of arrivals recovers.
* :func:`numpy_recoverable` and :func:`numpy_rank`: the same elimination in NumPy,
  vectorised over a batch of matrices (call it on one matrix at a time for the
  per-trial loop).
* :func:`galois_rank_loop`, :func:`galois_recoverable_loop` and
  :func:`galois_recovery_index_loop`: one galois call per matrix (and per prefix for
  the last one), the slow obvious way.

A matrix ``[W, K]`` holds one trial's coefficient rows; unknown ``k`` is recovered
iff ``e_k`` lies in the row space: in the reduced row echelon form (RREF) column
``k`` holds a pivot and its pivot row is zero outside the pivot columns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uepjax import fields

__all__ = [
    "GF256_POLYNOMIAL",
    "galois_rank_loop",
    "galois_recoverable_loop",
    "galois_recovery_index_loop",
    "numpy_rank",
    "numpy_recoverable",
    "plain_recoverable",
]

GF256_POLYNOMIAL = 0x11D
"""``x^8 + x^4 + x^3 + x^2 + 1``, the primitive polynomial of GF(2^8) (as galois)."""


# ---------------------------------------------------------------------------------
# A plain vmapped Gauss-Jordan elimination in JAX.


def _gauss_jordan_one(matrix: jax.Array, field: fields.Field):
    """RREF of one ``[rows, cols]`` matrix; returns it, the pivot columns and rank."""
    rows, cols = matrix.shape
    real = field.kind is fields.FieldKind.REAL
    row_ids = jnp.arange(rows)
    if real:
        scale = jnp.max(jnp.abs(matrix), axis=-1, keepdims=True)
        matrix = matrix / jnp.where(scale > 0, scale, 1)

    def step(c, state):
        m, rank, pivot_columns = state
        column = m[:, c]
        if real:
            magnitude = jnp.where(row_ids >= rank, jnp.abs(column), -1.0)
            pivot = jnp.argmax(magnitude)
            has = magnitude[pivot] > fields.REAL_TOLERANCE
        else:
            candidates = (column != 0) & (row_ids >= rank)
            pivot = jnp.argmax(candidates)
            has = candidates[pivot]
        target = jnp.minimum(rank, rows - 1)
        swapped = m.at[pivot].set(m[target]).at[target].set(m[pivot])
        normalised = field.mul(swapped[target], field.inv(swapped[target, c]))
        factors = jnp.where(row_ids == target, 0, swapped[:, c]).astype(m.dtype)
        eliminated = field.sub(swapped, field.mul(factors[:, None], normalised[None]))
        eliminated = eliminated.at[target].set(normalised)
        if real:
            eliminated = eliminated.at[:, c].set(jnp.where(row_ids == target, 1.0, 0.0))
        m = jnp.where(has, eliminated, m)
        pivot_columns = pivot_columns.at[c].set(has)
        return m, rank + has.astype(jnp.int32), pivot_columns

    state = (matrix, jnp.int32(0), jnp.zeros((cols,), bool))
    return lax.fori_loop(0, cols, step, state)


def _recovered_from_rref(reduced, pivot_columns, nonzero) -> jax.Array:
    """``[cols] bool``: pivot columns whose pivot row vanishes off the pivots."""
    mixed = jnp.any(nonzero(reduced) & ~pivot_columns[None, :], axis=-1)
    pivot_row = jnp.cumsum(pivot_columns) - 1
    pivot_row = jnp.clip(pivot_row, 0, reduced.shape[0] - 1)
    return pivot_columns & ~mixed[pivot_row]


@functools.partial(jax.jit, static_argnames="field")
def _plain_recoverable_jit(matrices: jax.Array, field: fields.Field) -> jax.Array:
    if field.kind is fields.FieldKind.REAL:

        def nonzero(x):
            return jnp.abs(x) > fields.REAL_TOLERANCE

    else:

        def nonzero(x):
            return x != 0

    def one(matrix):
        reduced, _, pivot_columns = _gauss_jordan_one(matrix, field)
        return _recovered_from_rref(reduced, pivot_columns, nonzero)

    return jax.vmap(one)(matrices)


def plain_recoverable(matrices: jax.Array, field: fields.Field) -> jax.Array:
    """Which unknowns each full matrix recovers, by a plain vmapped Gauss-Jordan.

    Args:
        matrices: ``[trials, W, K]`` field elements (``uint32``, ``float32`` reals).
        field: the coefficient field.

    Returns:
        ``[trials, K] bool``.

    Note:
        Products and inverses are the public exact ``Field.mul`` and ``Field.inv``:
        over ``GF(p)`` with ``p >= 2^16`` a product is two Montgomery products and an
        inverse a Fermat power, where the engine works with one Montgomery product
        in a scaled domain. That is what an elimination on the public API costs.
    """
    return _plain_recoverable_jit(jnp.asarray(matrices, field.dtype), field)


# ---------------------------------------------------------------------------------
# NumPy, vectorised over a batch of matrices (or one matrix at a time).


@functools.cache
def _gf256_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(product [256, 256], inverse [256])`` tables of GF(2^8), built by shifts."""
    exp = np.zeros(510, dtype=np.int64)
    value = 1
    for i in range(255):
        exp[i] = exp[i + 255] = value
        value <<= 1
        if value & 0x100:
            value ^= GF256_POLYNOMIAL
    log = np.zeros(256, dtype=np.int64)
    log[exp[:255]] = np.arange(255)
    product = exp[log[:, None] + log[None, :]]
    product[0, :] = product[:, 0] = 0
    inverse = np.zeros(256, dtype=np.int64)
    inverse[1:] = exp[(255 - log[1:]) % 255]
    return product, inverse


class _NumpyField:
    """Vectorised int64 / float64 arithmetic of one field, for the NumPy baseline."""

    def __init__(self, field: fields.Field):
        self.kind = field.kind
        self.order = field.order
        if self.kind is fields.FieldKind.EXTENSION and self.order != 256:
            raise ValueError(
                f"field must be GF(2), GF(2^8), GF(p) or real for the NumPy baseline "
                f"(got {field!r})"
            )

    def mul(self, a, b):
        if self.kind is fields.FieldKind.REAL:
            return a * b
        if self.kind is fields.FieldKind.BINARY:
            return a & b
        if self.kind is fields.FieldKind.EXTENSION:
            return _gf256_tables()[0][a, b]
        # Residues below 2^31: the product is below 2^62 and exact in int64.
        return a * b % self.order

    def sub(self, a, b):
        if self.kind is fields.FieldKind.REAL:
            return a - b
        if self.kind is fields.FieldKind.PRIME:
            return (a - b) % self.order
        return a ^ b

    def inv(self, a):
        if self.kind is fields.FieldKind.REAL:
            return 1.0 / np.where(a == 0, 1.0, a)
        if self.kind is fields.FieldKind.BINARY:
            return a
        if self.kind is fields.FieldKind.EXTENSION:
            return _gf256_tables()[1][a]
        result = np.ones_like(a)
        base, exponent = a.copy(), self.order - 2
        while exponent:
            if exponent & 1:
                result = result * base % self.order
            base = base * base % self.order
            exponent >>= 1
        return result


def _numpy_rref(matrices: np.ndarray, field: fields.Field):
    """Batched RREF ``[B, rows, cols]``; returns it, pivot columns ``[B, cols]``."""
    arithmetic = _NumpyField(field)
    real = field.kind is fields.FieldKind.REAL
    m = np.array(matrices, dtype=np.float64 if real else np.int64)
    batch, rows, cols = m.shape
    if real:
        scale = np.abs(m).max(axis=-1, keepdims=True)
        m = m / np.where(scale > 0, scale, 1.0)
    everything = np.arange(batch)
    row_ids = np.arange(rows)
    rank = np.zeros(batch, dtype=np.int64)
    pivot_columns = np.zeros((batch, cols), dtype=bool)
    for c in range(cols):
        column = m[:, :, c]
        eligible = row_ids[None, :] >= rank[:, None]
        if real:
            magnitude = np.where(eligible, np.abs(column), -1.0)
            pivot = magnitude.argmax(axis=1)
            has = magnitude[everything, pivot] > fields.REAL_TOLERANCE
        else:
            candidates = (column != 0) & eligible
            pivot = candidates.argmax(axis=1)
            has = candidates[everything, pivot]
        live = everything[has]
        if live.size == 0:
            continue
        pivot, target = pivot[has], rank[has]
        block = m[live]
        pivot_rows = block[np.arange(live.size), pivot].copy()
        block[np.arange(live.size), pivot] = block[np.arange(live.size), target]
        inverse = arithmetic.inv(pivot_rows[:, c])
        normalised = arithmetic.mul(pivot_rows, inverse[:, None])
        factors = block[:, :, c].copy()
        factors[np.arange(live.size), target] = 0
        block = arithmetic.sub(
            block, arithmetic.mul(factors[:, :, None], normalised[:, None])
        )
        block[np.arange(live.size), target] = normalised
        if real:
            block[:, :, c] = 0.0
            block[np.arange(live.size), target, c] = 1.0
        m[live] = block
        pivot_columns[live, c] = True
        rank[live] += 1
    return m, pivot_columns


def numpy_recoverable(matrices: np.ndarray, field: fields.Field) -> np.ndarray:
    """``[B, K] bool`` unknowns recovered by each full ``[W, K]`` matrix, in NumPy."""
    reduced, pivot_columns = _numpy_rref(matrices, field)
    if field.kind is fields.FieldKind.REAL:
        nonzero = np.abs(reduced) > fields.REAL_TOLERANCE
    else:
        nonzero = reduced != 0
    mixed = np.any(nonzero & ~pivot_columns[:, None, :], axis=-1)
    pivot_row = np.clip(np.cumsum(pivot_columns, axis=-1) - 1, 0, reduced.shape[1] - 1)
    return pivot_columns & ~np.take_along_axis(mixed, pivot_row, axis=-1)


def numpy_rank(matrices: np.ndarray, field: fields.Field) -> np.ndarray:
    """``[B]`` ranks by the NumPy elimination."""
    return _numpy_rref(matrices, field)[1].sum(axis=-1)


# ---------------------------------------------------------------------------------
# galois, one call per matrix.


@functools.cache
def _galois_field(order: int):
    import galois

    return galois.GF(order)


def galois_rank_loop(matrices: np.ndarray, order: int) -> np.ndarray:
    """``[B]`` ranks, one ``np.linalg.matrix_rank`` of a galois array per matrix."""
    gf = _galois_field(order)
    return np.array([np.linalg.matrix_rank(gf(m)) for m in np.asarray(matrices)])


def _galois_recovered(gf, matrix: np.ndarray) -> np.ndarray:
    reduced = np.asarray(gf(matrix).row_reduce())
    nonzero = reduced != 0
    # A row's first nonzero entry is its pivot; galois pivots are 1 and leading.
    leading = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), -1)
    pivot_columns = np.zeros(matrix.shape[1], dtype=bool)
    pivot_columns[leading[leading >= 0]] = True
    recovered = np.zeros(matrix.shape[1], dtype=bool)
    for row, column in enumerate(leading):
        if column >= 0 and not np.any(nonzero[row] & ~pivot_columns):
            recovered[column] = True
    return recovered


def galois_recoverable_loop(matrices: np.ndarray, order: int) -> np.ndarray:
    """``[B, K] bool``: one galois ``row_reduce`` of the full matrix per trial."""
    gf = _galois_field(order)
    return np.stack([_galois_recovered(gf, m) for m in np.asarray(matrices)])


def galois_recovery_index_loop(matrices: np.ndarray, order: int) -> np.ndarray:
    """``[B, K]`` first prefix that recovers each unknown: one galois call per prefix.

    The answer of :func:`uepjax.decode.recovery_index`, obtained the slow obvious
    way: ``W`` separate row reductions per trial (``W + 1`` where never).
    """
    gf = _galois_field(order)
    matrices = np.asarray(matrices)
    trials, arrivals, unknowns = matrices.shape
    index = np.full((trials, unknowns), arrivals + 1)
    for t in range(trials):
        for n in range(1, arrivals + 1):
            recovered = _galois_recovered(gf, matrices[t, :n])
            index[t] = np.where(recovered & (index[t] > arrivals), n, index[t])
    return index
