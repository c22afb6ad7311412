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

Each row read costs ``O(K^2)`` vectorised work (``O(K)`` word operations over
``GF(2)``). A row whose support lies in the recovered set is in the row space, so a
trial reads only its other rows and is done when none is left; once few trials of a
large batch are left the pass goes on with only those. Rows that each lie in one
block of unknowns (NOW windows) can be decoded block by block
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
    _elimination_dtype,
    _field_sum,
    _inverse_operand,
    _montgomery_combination,
    _montgomery_vector_matrix,
    _pack_bits,
    _raw_mul,
    _reduction,
    _to_operand,
    _trials_last,
    _unpack_bits,
    get_field,
)

__all__ = ["recovered_after_arrivals", "recovery_index"]


# (basis, row [batch, ...]) -> (basis, recovered [batch, K])
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
    support: jax.Array,
    basis: Any,
    insert: _Insert,
    unknowns: int,
    trials_last: bool = False,
) -> jax.Array:
    """One pass over ``rows [batch, arrivals, ...]``; returns ``[batch, K]``
    indices.

    ``support [batch, arrivals, K] bool`` marks each row's nonzero coordinates. A
    row whose support lies in the recovered set is in the row space (it is a
    combination of recovered ``e_k``) and changes nothing, so each trial reads
    only its other rows, in arrival order, and is done when none is left. With
    random coefficients the rows read are almost all independent: a trial of the
    paper's EW code (K = 9, W = 30) reads 9.0 of its 30 rows on average over
    GF(2^8) and 10.0 over GF(2); with the stages below, the pass does 9.25 and 13.5
    inserts a trial (``python benchmarks/run.py --only decode``).

    Trials run side by side, one row each per step, in stages
    (:func:`_stage_sizes`): once the unfinished trials fit the next stage, it
    gathers their bases and goes on with only those. The leaves of ``basis`` hold
    the trials on their first axis, or on their last with ``trials_last``;
    ``insert`` takes rows and gives recovered sets ``[batch, ...]`` either way.
    """
    batch, arrivals = rows.shape[:2]
    never = arrivals + 1
    flat_rows = rows.reshape((batch * arrivals,) + rows.shape[2:])
    # rows_with[b, k]: bit n (of word n // 32) marks that row n has k in its support.
    rows_with = _pack_bits(jnp.swapaxes(support, 1, 2).astype(jnp.uint32))
    word_starts = 32 * jnp.arange(rows_with.shape[-1], dtype=jnp.int32)

    def next_row(rows_with, start, recovered):
        # The first row at or after `start` with support outside the recovered set.
        unrecovered = jnp.where(recovered[..., None], np.uint32(0), rows_with)
        fresh = jnp.bitwise_or.reduce(unrecovered, axis=1)  # [batch, words]
        skip = jnp.clip(start[:, None] - word_starts, 0, 32)
        kept = jnp.where(
            skip < 32, np.uint32(0xFFFFFFFF) << jnp.minimum(skip, 31), np.uint32(0)
        )
        fresh = fresh & kept.astype(jnp.uint32)
        lowest = fresh & (~fresh + np.uint32(1))
        position = word_starts + 31 - lax.clz(lowest).astype(jnp.int32)
        return jnp.min(jnp.where(fresh != 0, position, arrivals), axis=-1)

    sizes = _stage_sizes(batch)
    index = jnp.full((batch, unknowns), never, jnp.int32)
    trial = jnp.arange(batch, dtype=jnp.int32)
    recovered = jnp.zeros((batch, unknowns), bool)
    upcoming = next_row(rows_with, jnp.zeros((batch,), jnp.int32), recovered)
    state = (basis, index, upcoming, recovered)
    for stage, size in enumerate(sizes):
        following = sizes[stage + 1] if stage + 1 < len(sizes) else 0

        def more(state, following=following):
            return jnp.sum(state[2] < arrivals) > following

        def arrive(state, trial=trial, rows_with=rows_with):
            basis, index, upcoming, recovered = state
            pending = upcoming < arrivals
            # Padding entries of a compacted stage point past the batch.
            source = jnp.minimum(trial, batch - 1) * arrivals
            row = flat_rows[source + jnp.minimum(upcoming, arrivals - 1)]
            pending = pending.reshape(pending.shape + (1,) * (row.ndim - 1))
            row = jnp.where(pending, row, jnp.zeros((), row.dtype))
            basis, recovered = insert(basis, row)
            index = jnp.where(
                recovered & (index == never), upcoming[:, None] + 1, index
            )
            upcoming = next_row(rows_with, upcoming + 1, recovered)
            return basis, index, upcoming, recovered

        state = lax.while_loop(more, arrive, state)
        basis, stage_index, upcoming, recovered = state
        index = index.at[trial].set(stage_index, mode="drop")
        if not following:
            break
        (picked,) = jnp.nonzero(upcoming < arrivals, size=following, fill_value=size)
        valid = picked < size
        picked = jnp.minimum(picked, size - 1)
        trial = jnp.where(valid, trial[picked], batch)
        if trials_last:
            basis = jax.tree.map(lambda x, picked=picked: x[..., picked], basis)
        else:
            basis = jax.tree.map(lambda x, picked=picked: x[picked], basis)
        rows_with = rows_with[picked]
        upcoming = jnp.where(valid, upcoming[picked], arrivals)
        state = (basis, stage_index[picked], upcoming, recovered[picked])
    return index


def _recovery_binary(rows: jax.Array, unknowns: int) -> jax.Array:
    """GF(2): null-space columns packed into words over the ``K`` coordinates."""
    batch = rows.shape[0]
    bits = rows & np.uint32(1)
    packed_rows = _pack_bits(bits)  # [batch, arrivals, words]
    identity = jnp.eye(unknowns, dtype=jnp.uint32)
    words = -(-unknowns // 32)
    basis = jnp.broadcast_to(_pack_bits(identity), (batch, unknowns, words))

    def insert(basis, row):
        # basis [batch, K, words]: column i of N as words; row [batch, words].
        overlap = lax.population_count(basis & row[:, None, :])
        s = (jnp.sum(overlap, axis=-1) & np.uint32(1)) == 1  # [batch, K]
        j = jnp.argmax(s, axis=-1)
        column_j = jnp.take_along_axis(basis, j[:, None, None], axis=1)
        basis = basis ^ jnp.where(s[..., None], column_j, np.uint32(0))
        occupied = jnp.bitwise_or.reduce(basis, axis=1)  # [batch, words]
        return basis, ~_unpack_bits(occupied, unknowns)

    return _progressive(packed_rows, bits != 0, basis, insert, unknowns)


def _recovery_normalised(rows: jax.Array, field: Field) -> jax.Array:
    """GF(2^m) and GF(p < 2^16): normalised updates, inverses are table lookups."""
    dtype = _elimination_dtype(field)
    rows = rows.astype(dtype)
    batch, _, unknowns = rows.shape
    basis = jnp.broadcast_to(
        jnp.eye(unknowns, dtype=dtype), (batch, unknowns, unknowns)
    )

    def insert(basis, row):
        # basis [batch, K (coordinate k), K (column i)], row [batch, K].
        s = _field_sum(field, _raw_mul(field, row[:, :, None], basis), axis=1)
        j = jnp.argmax(s != 0, axis=-1)
        s_j = jnp.take_along_axis(s, j[:, None], axis=1)
        column_j = jnp.take_along_axis(basis, j[:, None, None], axis=2)
        # N_i - (s_i / s_j) N_j: one product per entry. A dependent row (s = 0)
        # makes the update zero whatever the inverse of s_j is.
        ratio = _raw_mul(field, s, _inverse_operand(field, s_j))[:, None, :]
        if field.kind is FieldKind.PRIME:
            # N + (p - ratio) N_j <= (p - 1) p < 2^32: one remainder per entry.
            p = np.uint32(field.order)
            basis = (basis + field.neg(ratio) * column_j) % p
        else:
            basis = basis ^ _raw_mul(field, ratio, column_j)
        return basis, ~jnp.any(basis != 0, axis=2)

    return _progressive(rows, rows != 0, basis, insert, unknowns)


def _recovery_montgomery(rows: jax.Array, field: Field) -> jax.Array:
    """Larger GF(p): fraction-free updates with one Montgomery reduction.

    Bases of few unknowns are held with the trials last, ``[K, K, batch]``, others
    ``[batch, K, K]`` (:data:`~uepjax.fields.TRIALS_LAST_BELOW`).
    """
    batch, _, unknowns = rows.shape
    last = _trials_last(field, unknowns)
    # Axis of the coordinate k in the basis; the column i follows it.
    coordinate = 0 if last else 1
    identity = jnp.eye(unknowns, dtype=jnp.uint32)
    if last:
        basis = jnp.broadcast_to(identity[:, :, None], (unknowns, unknowns, batch))
    else:
        basis = jnp.broadcast_to(identity, (batch, unknowns, unknowns))
    p = field.order
    one = _to_operand(field, jnp.uint32(1))

    def insert(basis, row):
        # s [K (column i), batch] or [batch, K].
        s = _montgomery_vector_matrix(row.T if last else row, basis, p, coordinate)
        nonzero = s != 0
        independent = jnp.any(nonzero, axis=coordinate, keepdims=True)
        j = jnp.argmax(nonzero, axis=coordinate, keepdims=True)
        # s_j N_i - s_i N_j; for a dependent row (s = 0) the factor s_j = R mod p
        # leaves N unchanged.
        s_j = jnp.where(independent, jnp.take_along_axis(s, j, coordinate), one)
        j = jnp.expand_dims(j, coordinate)
        column_j = jnp.take_along_axis(basis, j, axis=coordinate + 1)
        basis = _montgomery_combination(
            jnp.expand_dims(s_j, coordinate),
            basis,
            jnp.expand_dims(field.neg(s), coordinate),
            column_j,
            p,
        )
        recovered = ~jnp.any(basis != 0, axis=coordinate + 1)
        return basis, recovered.T if last else recovered

    return _progressive(rows, rows != 0, basis, insert, unknowns, trials_last=last)


def _recovery_real(rows: jax.Array) -> jax.Array:
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
        # Spelt out, the product fuses into one pass (an einsum took 1.1 times as
        # long).
        product = row[:, 0, None] * basis[:, 0]
        for c in range(1, unknowns):
            product = product + row[:, c, None] * basis[:, c]
        reduced = row - product
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
        # One multiply-subtract per entry: row c loses factor c times the new row,
        # which clears column j exactly (x - x * 1); row j, zero so far, gets the
        # new row with the factor -1; a dependent row has all factors 0.
        factors = jnp.take_along_axis(basis, j[:, None, None], axis=2)[..., 0]
        factors = jnp.where(at_j, -1.0, factors)
        factors = jnp.where(independent[:, None], factors, 0.0)
        basis = basis - factors[:, :, None] * new_row[:, None, :]
        pivots = pivots | at_j
        # e_k is in the row space iff its pivot row vanishes outside the pivot
        # columns; rows found so are set to exactly e_k, so that their rounding
        # residue cannot feed later decisions. Each entry is tested, not their
        # maximum: XLA:CPU fuses the test with the update, where a float maximum
        # (a library call) made |basis| be written out first.
        small = (jnp.abs(basis) <= REAL_TOLERANCE) | pivots[:, None, :]
        recovered = pivots & jnp.all(small, axis=-1)
        basis = jnp.where(recovered[:, :, None], identity, basis)
        return (basis, pivots), recovered

    return _progressive(rows, rows != 0, (basis, pivots), insert, unknowns)


def _recovery_flat(rows: jax.Array, field: Field) -> jax.Array:
    """``[batch, arrivals, K]`` rows -> ``[batch, K]`` indices."""
    arrivals, unknowns = rows.shape[1:]
    if arrivals == 0 or unknowns == 0:
        # Nothing arrives or nothing is unknown: every index is "never".
        return jnp.full(rows.shape[:1] + (unknowns,), arrivals + 1, jnp.int32)
    if field.kind is FieldKind.BINARY:
        return _recovery_binary(rows, unknowns)
    if field.kind is FieldKind.REAL:
        return _recovery_real(rows)
    if _reduction(field) == "montgomery":
        return _recovery_montgomery(rows, field)
    return _recovery_normalised(rows, field)


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
        found = _recovery_flat(part, field).reshape(batch, len(chosen), size)
        for position, b in enumerate(chosen):
            index[b] = found[:, position]
    return jnp.concatenate(index, axis=1)


def _blocks_pay(field: Field) -> bool:
    """Whether decoding block by block beats one pass: over every field but GF(2),
    whose packed words hold all ``K`` coordinates at once.

    The gain depends on the batch. On NOW 9 x 30 rows in batches of 8,192 trials
    (the simulator's default chunk) blocks took 0.44-0.81 of one pass over GF(2^8),
    GF(65521), GF(2^31 - 1) and the reals, and the paper's NOW point over GF(2^8)
    took 3.3-3.7 s by blocks against 4.6-4.9 s in one pass. In batches of 16,384
    one pass was the faster over GF(2^8) and the reals (blocks 1.4x as long).
    """
    return field.kind is not FieldKind.BINARY


@functools.partial(jax.jit, static_argnames=("field", "blocks"))
def _recovery_index_jit(
    coefficients: jax.Array, field: Field, blocks: tuple[int, ...] | None = None
) -> jax.Array:
    batch_shape = coefficients.shape[:-2]
    arrivals, unknowns = coefficients.shape[-2:]
    # Trial-major rows: each step of the pass gathers one row per trial.
    rows = coefficients.reshape((math.prod(batch_shape), arrivals, unknowns))
    by_blocks = blocks is not None and len(blocks) > 1 and arrivals > 0
    if by_blocks and _blocks_pay(field):
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
