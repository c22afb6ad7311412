"""Progressive decoding: which sub-products are recovered after each arrival.

A trial's packets arrive one after another; packet ``n`` carries the coefficient row
``v_n`` of its linear combination of the ``K`` sub-products. Sub-product ``k`` is
recovered after ``n`` arrivals iff ``e_k`` lies in the row space of ``v_1 .. v_n``
(the decoding function of eq. (7)). Instead of one elimination per prefix, the
decoder makes one pass over the arrivals and maintains a basis of the right null
space ``{x : v_i . x = 0 for all i <= n}``, stored as the columns of a ``K x K``
matrix ``N`` (initially the identity). The row space is the orthogonal complement of
the null space, so ``e_k`` is in the row space iff row ``k`` of ``N`` is zero.

Inserting a row ``v``: with ``s = v N``, if ``s = 0`` the row is dependent and
nothing changes. Otherwise, with ``j`` the first index where ``s_j != 0``, every
column ``i`` is replaced by a combination of columns ``i`` and ``j`` that is
orthogonal to ``v`` (``s_j N_i - s_i N_j`` fraction-free over large ``GF(p)``,
``N_i - (s_i / s_j) N_j`` over ``GF(2^m)`` and ``GF(p < 2^16)`` where inverses are
table lookups, XOR of packed words over ``GF(2)``), and column ``j`` becomes zero.

Over the reals the decoder grows a reduced row echelon basis instead (row ``c`` has
its pivot in column ``c``): a new row is reduced by the basis, normalised at a pivot
chosen by threshold pivoting, and eliminated from the other basis rows; ``e_k`` is
recovered iff its pivot row is zero outside the pivot columns. Exact zeros of the
coefficients stay exact zeros, so recoveries implied by the support pattern (NOW
and EW windows) do not hinge on rounding; see :data:`~uepjax.fields.REAL_TOLERANCE`
and :data:`~uepjax.fields.REAL_PIVOT_THRESHOLD`.

Each arrival costs ``O(K^2)`` vectorised work (``O(K)`` word operations over
``GF(2)``). A trial with full rank needs no more arrivals: once few trials of a large
batch lack it the pass goes on with only those, and it stops when none is left.
Rows that each lie in one block of unknowns (NOW windows) are decoded block by block
(:func:`_recovery_by_blocks`, used by :mod:`uepjax.simulate`).

Example:
    >>> import jax.numpy as jnp
    >>> rows = jnp.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]])
    >>> recovery_index(rows, 2).tolist()
    [2, 2, 3]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uepjax.fields import (
    REAL_PIVOT_THRESHOLD,
    REAL_TOLERANCE,
    Field,
    FieldKind,
    _as_field_array,
    _field_sum,
    _montgomery_combination,
    _montgomery_dot,
    _pack_bits,
    _raw_mul,
    _reduction,
    _to_operand,
    _unpack_bits,
    get_field,
)

__all__ = ["recovered_after_arrivals", "recovery_index"]

_HIGHEST = lax.Precision.HIGHEST

# (basis, row) -> (basis, row was independent [batch], recovered [batch, K])
_Insert = Callable[[Any, jax.Array], tuple[Any, ...]]


COMPACTED_SHARE = 4
"""Once at most ``1 / COMPACTED_SHARE`` of the trials lack full rank, the pass goes
on with only those, gathered into a batch of that size."""

SMALLEST_COMPACTED = 256
"""No compacted stage is made for fewer trials than this: a stage compiles a loop
of its own, which costs more than it saves on small batches."""


def _stage_sizes(batch: int) -> list[int]:
    """Trials carried by each stage of the pass (static)."""
    if batch // COMPACTED_SHARE >= SMALLEST_COMPACTED:
        return [batch, batch // COMPACTED_SHARE]
    return [batch]


def _progressive(
    rows: jax.Array,
    basis: Any,
    insert: _Insert,
    unknowns: int,
    arrival_axis: int = 1,
    available: jax.Array | None = None,
) -> jax.Array:
    """One pass over ``rows [batch, arrivals, ...]`` (``[arrivals, batch, ...]``
    with ``arrival_axis=0``); returns ``[batch, K]`` indices.

    ``available [batch]``, if given, counts the leading rows of each trial that
    can change it (the rest are zero): a trial is done once they are all in.

    A trial with full rank has recovered everything, so once few trials lack it
    the pass goes on with only those: it runs in stages (:func:`_stage_sizes`),
    and a stage ends when its unfinished trials fit the next one, which gathers
    their bases and reads their rows by trial. With the paper's EW code (K = 9,
    W = 30) three quarters of the trials reach full rank within 15 of the 30
    arrivals, and the pass does 18.8 inserts a trial instead of 30
    (``python benchmarks/run.py --only decode``).
    """
    arrivals, batch = rows.shape[arrival_axis], rows.shape[1 - arrival_axis]
    never = arrivals + 1
    sizes = _stage_sizes(batch)
    index = jnp.full((batch, unknowns), never, jnp.int32)
    trial = jnp.arange(batch, dtype=jnp.int32)
    if available is None:
        available = jnp.full((batch,), arrivals, jnp.int32)
    # A trial is unfinished while it lacks full rank and has rows to come; the
    # padding entries of a compacted stage have none (`available` 0).
    state = (jnp.int32(0), basis, jnp.zeros((batch,), jnp.int32), index, available)
    for stage, size in enumerate(sizes):
        following = sizes[stage + 1] if stage + 1 < len(sizes) else 0

        def more(state, following=following):
            n, _, rank, _, available = state
            unfinished = jnp.sum((rank < unknowns) & (n < available))
            return (n < arrivals) & (unfinished > following)

        def arrive(state, trial=trial, compacted=stage > 0):
            n, basis, rank, index, available = state
            row = lax.dynamic_index_in_dim(rows, n, arrival_axis, keepdims=False)
            if compacted:
                row = row[jnp.minimum(trial, batch - 1)]
            basis, independent, recovered = insert(basis, row)
            rank = rank + independent.astype(jnp.int32)
            index = jnp.where(recovered & (index == never), n + 1, index)
            return n + 1, basis, rank, index, available

        state = lax.while_loop(more, arrive, state)
        n, basis, rank, stage_index, available = state
        # Padding entries of a stage point past the batch and are dropped.
        index = index.at[trial].set(stage_index, mode="drop")
        if not following:
            break
        unfinished = (rank < unknowns) & (n < available)
        (picked,) = jnp.nonzero(unfinished, size=following, fill_value=size)
        valid = picked < size
        picked = jnp.minimum(picked, size - 1)
        trial = jnp.where(valid, trial[picked], batch)
        basis = jax.tree.map(lambda x, picked=picked: x[picked], basis)
        available = jnp.where(valid, available[picked], 0)
        state = (n, basis, rank[picked], stage_index[picked], available)
    return index


def _recovery_binary(
    rows: jax.Array, unknowns: int, available: jax.Array | None
) -> jax.Array:
    """GF(2): null-space columns packed into words over the ``K`` coordinates."""
    batch = rows.shape[0]
    packed_rows = _pack_bits(rows & np.uint32(1))  # [batch, arrivals, words]
    identity = jnp.eye(unknowns, dtype=jnp.uint32)
    words = -(-unknowns // 32)
    basis = jnp.broadcast_to(_pack_bits(identity), (batch, unknowns, words))

    def insert(basis, row):
        # basis [batch, K, words]: column i of N as words; row [batch, words].
        overlap = lax.population_count(basis & row[:, None, :])
        s = (jnp.sum(overlap, axis=-1) & np.uint32(1)) == 1  # [batch, K]
        independent = jnp.any(s, axis=-1)
        j = jnp.argmax(s, axis=-1)
        column_j = jnp.take_along_axis(basis, j[:, None, None], axis=1)
        basis = basis ^ jnp.where(s[..., None], column_j, np.uint32(0))
        occupied = jnp.bitwise_or.reduce(basis, axis=1)  # [batch, words]
        return basis, independent, ~_unpack_bits(occupied, unknowns)

    return _progressive(packed_rows, basis, insert, unknowns, 1, available)


def _recovery_finite(
    rows: jax.Array, field: Field, available: jax.Array | None
) -> jax.Array:
    """GF(2^m), GF(p < 2^16): normalised update; larger GF(p): fraction-free."""
    batch, _, unknowns = rows.shape
    basis = jnp.broadcast_to(
        jnp.eye(unknowns, dtype=jnp.uint32), (batch, unknowns, unknowns)
    )
    p = field.order
    montgomery = _reduction(field) == "montgomery"
    one = _to_operand(field, jnp.uint32(1))

    def insert(basis, row):
        # basis [batch, K (coordinate k), K (column i)], row [batch, K].
        if montgomery:
            s = _montgomery_dot(row[:, :, None], basis, 1, p)
        else:
            s = _field_sum(field, _raw_mul(field, row[:, :, None], basis), axis=1)
        nonzero = s != 0
        independent = jnp.any(nonzero, axis=-1)
        j = jnp.argmax(nonzero, axis=-1)
        s_j = jnp.take_along_axis(s, j[:, None], axis=1)
        column_j = jnp.take_along_axis(basis, j[:, None, None], axis=2)
        if montgomery:
            # s_j N_i - s_i N_j with one Montgomery reduction; for a dependent row
            # (s = 0) the factor s_j = R mod p leaves N unchanged.
            s_j = jnp.where(independent[:, None], s_j, one)
            basis = _montgomery_combination(
                s_j[:, :, None], basis, field.neg(s)[:, None, :], column_j, p
            )
        else:
            # N_i - (s_i / s_j) N_j: one product per entry; inverses are lookups.
            ratio = field.mul(s, field.inv(s_j))[:, None, :]
            if field.kind is FieldKind.PRIME:
                # N + (p - ratio) N_j <= (p - 1) p < 2^32: one remainder per entry.
                basis = (basis + field.neg(ratio) * column_j) % np.uint32(p)
            else:
                basis = basis ^ _raw_mul(field, ratio, column_j)
        return basis, independent, ~jnp.any(basis != 0, axis=2)

    if montgomery:
        # Montgomery products vectorise; reading each arrival's rows as a strided
        # slice of trial-major rows made the pass 15% slower than transposing the
        # rows once. Table lookups gain as much the other way round.
        rows = jnp.swapaxes(rows, 0, 1)
        return _progressive(rows, basis, insert, unknowns, 0, available)
    return _progressive(rows, basis, insert, unknowns, 1, available)


def _recovery_real(rows: jax.Array, available: jax.Array | None) -> jax.Array:
    """Reals: a reduced row echelon basis, grown one row at a time."""
    batch, _, unknowns = rows.shape
    basis = jnp.zeros((batch, unknowns, unknowns), jnp.float32)
    pivots = jnp.zeros((batch, unknowns), bool)
    columns = jnp.arange(unknowns)
    identity = jnp.eye(unknowns, dtype=jnp.float32)

    def insert(state, row):
        # basis [batch, K, K]: row c holds the basis vector whose pivot is column c
        # (zero where c is no pivot); entries in pivot columns are exactly 0 or 1.
        basis, pivots = state
        reduced = row - jnp.einsum("bc,bcm->bm", row, basis, precision=_HIGHEST)
        reduced = jnp.where(pivots, 0.0, reduced)
        magnitude = jnp.abs(reduced)
        largest = jnp.max(magnitude, axis=-1)
        independent = largest > REAL_TOLERANCE * jnp.max(jnp.abs(row), axis=-1)
        eligible = magnitude >= REAL_PIVOT_THRESHOLD * largest[:, None]
        j = unknowns - 1 - jnp.argmax(eligible[:, ::-1], axis=-1)
        at_j = (columns == j[:, None]) & independent[:, None]
        pivot_value = jnp.take_along_axis(reduced, j[:, None], axis=1)
        pivot_value = jnp.where(independent[:, None], pivot_value, 1.0)
        # |new_row| <= 1 / REAL_PIVOT_THRESHOLD by the choice of the pivot.
        new_row = jnp.where(at_j, 1.0, reduced / pivot_value)
        factors = jnp.take_along_axis(basis, j[:, None, None], axis=2)
        updated = jnp.where(
            at_j[:, None, :], 0.0, basis - factors * new_row[:, None, :]
        )
        basis = jnp.where(at_j[:, :, None], new_row[:, None, :], updated)
        pivots = pivots | at_j
        # e_k is in the row space iff its pivot row vanishes outside the pivot
        # columns; rows found so are set to exactly e_k, so that their rounding
        # residue cannot feed later decisions.
        free = jnp.where(pivots[:, None, :], 0.0, jnp.abs(basis))
        recovered = pivots & (jnp.max(free, axis=-1) <= REAL_TOLERANCE)
        basis = jnp.where(recovered[:, :, None], identity, basis)
        return (basis, pivots), independent, recovered

    return _progressive(rows, (basis, pivots), insert, unknowns, 1, available)


def _recovery_flat(
    rows: jax.Array, field: Field, available: jax.Array | None = None
) -> jax.Array:
    """``[batch, arrivals, K]`` rows -> ``[batch, K]`` indices (see
    :func:`_progressive` for ``available``)."""
    arrivals, unknowns = rows.shape[1:]
    if arrivals == 0 or unknowns == 0:
        # Nothing arrives or nothing is unknown: every index is "never".
        return jnp.full(rows.shape[:1] + (unknowns,), arrivals + 1, jnp.int32)
    if field.kind is FieldKind.BINARY:
        return _recovery_binary(rows, unknowns, available)
    if field.kind is FieldKind.REAL:
        return _recovery_real(rows, available)
    return _recovery_finite(rows, field, available)


def _recovery_skipping_zeros(rows: jax.Array, field: Field) -> jax.Array:
    """:func:`_recovery_flat` of rows with their zero rows moved last.

    A zero row changes nothing, so each trial's nonzero rows are decoded first, in
    arrival order, and a trial is done after its last one; indices are mapped back
    to arrival counts.
    """
    batch, arrivals, _ = rows.shape
    nonzero = jnp.any(rows != 0, axis=-1)
    # A product with a triangular matrix counts the nonzero rows up to each
    # arrival (exact in float32); a cumulative sum runs as a slow reduce-window on
    # the CPU.
    upper = np.triu(np.ones((arrivals, arrivals), np.float32))
    through = jnp.dot(nonzero.astype(jnp.float32), upper, precision=_HIGHEST)
    through = through.astype(jnp.int32)
    # source[b, m]: the arrival of the (m + 1)-th nonzero row (`arrivals` if none).
    slots = jnp.arange(arrivals, dtype=jnp.int32)
    source = jnp.sum(through[:, None, :] <= slots[:, None], axis=2, dtype=jnp.int32)
    last = jnp.minimum(source, arrivals - 1)
    gathered = jnp.take_along_axis(rows, last[..., None], axis=1)
    packed = jnp.where((source < arrivals)[..., None], gathered, 0).astype(rows.dtype)
    index = _recovery_flat(packed, field, through[:, -1])
    found = jnp.take_along_axis(source, jnp.minimum(index, arrivals) - 1, axis=1)
    return jnp.where(index <= arrivals, found + 1, arrivals + 1)


def _recovery_by_blocks(
    rows: jax.Array, field: Field, blocks: tuple[int, ...]
) -> jax.Array:
    """Indices of rows whose supports each lie in one block of columns.

    ``blocks`` are the sizes of consecutive column blocks (NOW windows, or ones
    for unit rows). The row space is then the direct sum of the blocks' row
    spaces, so ``e_k`` lies in it iff it lies in the row space of the rows cut
    to the block of ``k``: each block is decoded alone, at ``O(k_l^2)`` an insert
    instead of ``O(K^2)``, and blocks of one size share a pass, their trials side
    by side. A row that spans two blocks is decoded as if cut in pieces, which is
    wrong: the caller guarantees the supports.
    """
    batch, arrivals, _ = rows.shape
    starts = np.cumsum((0,) + blocks[:-1])
    index: list[Any] = [None] * len(blocks)
    for size in sorted(set(blocks)):
        chosen = [b for b, block in enumerate(blocks) if block == size]
        part = jnp.stack([rows[:, :, starts[b] : starts[b] + size] for b in chosen], 2)
        part = jnp.moveaxis(part, 2, 1).reshape(batch * len(chosen), arrivals, size)
        # Skipping the zero rows costs about what a GF(2^8) insert saves, and
        # gains where inserts cost most: Montgomery products.
        if _reduction(field) == "montgomery":
            found = _recovery_skipping_zeros(part, field)
        else:
            found = _recovery_flat(part, field)
        found = found.reshape(batch, len(chosen), size)
        for position, b in enumerate(chosen):
            index[b] = found[:, position]
    return jnp.concatenate(index, axis=1)


@functools.partial(jax.jit, static_argnames=("field", "blocks"))
def _recovery_index_jit(
    coefficients: jax.Array, field: Field, blocks: tuple[int, ...] | None = None
) -> jax.Array:
    batch_shape = coefficients.shape[:-2]
    arrivals, unknowns = coefficients.shape[-2:]
    # Trial-major rows: each arrival reads a strided slice, which is cheaper than
    # transposing every trial's rows to arrival-major first.
    rows = coefficients.reshape((math.prod(batch_shape), arrivals, unknowns))
    # GF(2) packs all K coordinates in a word, and blocks made it slower.
    by_blocks = blocks is not None and len(blocks) > 1 and arrivals > 0
    if by_blocks and field.kind is not FieldKind.BINARY:
        index = _recovery_by_blocks(rows, field, blocks)
    else:
        index = _recovery_flat(rows, field)
    return index.reshape(batch_shape + (unknowns,))


def recovery_index(coefficients: Any, q: int | str | Field) -> jax.Array:
    """Number of arrivals after which each unknown is first recovered.

    Args:
        coefficients: ``[..., arrivals, K]`` coefficient rows in arrival order:
            integer field elements in ``[0, q)`` or, for ``q="real"``, reals.
        q: field order, ``"real"`` or a :class:`~uepjax.fields.Field`.

    Returns:
        ``[..., K] int32``: entry ``k`` is the smallest ``n`` in ``1..arrivals``
        such that ``e_k`` lies in the row space of the first ``n`` rows, or
        ``arrivals + 1`` if it never does.

    Raises:
        ValueError: if ``q`` is not a supported field, or ``coefficients`` has fewer
            than two dimensions or a non-integer dtype for a finite field.

    Note:
        Real coefficients are decided with the tolerance
        :data:`~uepjax.fields.REAL_TOLERANCE`: a row is independent when its
        largest entry after reduction by the basis exceeds the tolerance times its
        largest entry, and ``e_k`` is recovered when its pivot row is at most the
        tolerance outside the pivot columns. Near-dependent or ill-conditioned
        prefixes can be misjudged (see :data:`~uepjax.fields.REAL_PIVOT_THRESHOLD`).

    Example:
        >>> import jax.numpy as jnp
        >>> rows = jnp.array([[1, 2], [3, 4], [0, 1]])
        >>> recovery_index(rows, 7).tolist()
        [2, 2]
    """
    field = get_field(q)
    coefficients = _as_field_array(coefficients, field, "coefficients", 2)
    return _recovery_index_jit(coefficients, field)


def recovered_after_arrivals(coefficients: Any, q: int | str | Field) -> jax.Array:
    """Recovered unknowns after every number of arrivals ``0..arrivals``.

    Args:
        coefficients: ``[..., arrivals, K]`` coefficient rows in arrival order, as
            in :func:`recovery_index`.
        q: field order, ``"real"`` or a :class:`~uepjax.fields.Field`.

    Returns:
        ``[..., arrivals + 1, K] bool``: row ``n`` marks the unknowns recovered from
        the first ``n`` arrivals (row 0 is all False).

    Raises:
        ValueError: as :func:`recovery_index`.

    Example:
        >>> import jax.numpy as jnp
        >>> recovered_after_arrivals(jnp.array([[1, 0], [1, 1]]), 2).tolist()
        [[False, False], [True, False], [True, True]]
    """
    index = recovery_index(coefficients, q)
    arrivals = jnp.shape(coefficients)[-2]
    counts = jnp.arange(arrivals + 1, dtype=jnp.int32)
    return index[..., None, :] <= counts[:, None]
