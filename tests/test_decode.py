"""Tests of uepjax.decode: progressive recovery against galois and large-field rules."""

import galois
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uepjax import decode, fields
from uepjax.fields import get_field

ORDERS = [2, 16, 256, 65521, 2**31 - 1]
SHAPES = [(12, 9), (30, 9), (6, 9), (20, 16)]
CLASS_SIZES = (3, 3, 3)
# Trials per field and shape: the galois reference dominates the run time. Tests on
# [TRIALS, 12, 9] share one compilation per field.
TRIALS = 18


def _galois(q):
    # Pure-Python ufuncs: no numba compilation, fast enough for small arrays.
    return galois.GF(q, compile="python-calculate")


def _first_true(recovered):
    """``[..., 0..arrivals, K] bool`` -> first ``n`` marked True, else arrivals + 1."""
    never = recovered.shape[-2]
    return np.where(recovered.any(-2), recovered.argmax(-2), never)


# ---------------------------------------------------------------------------------
# The slow obvious reference: galois ranks of every prefix.


def _leading_column_ranks(matrix):
    """``rank(matrix[:, :m])`` for ``m = 0..cols``, from one galois RREF.

    Row operations keep the linear relations between columns, so the rank of the
    first ``m`` columns is the number of RREF pivots among them.
    """
    reduced = np.asarray(matrix.row_reduce())
    pivots = np.zeros(matrix.shape[1], dtype=np.int64)
    for row in reduced:
        nonzero = np.flatnonzero(row)
        if nonzero.size:
            pivots[nonzero[0]] = 1
    return np.concatenate([[0], np.cumsum(pivots)])


def _reference_recovery_index(matrix, gf):
    """First ``n`` with ``rank(R[:n] + e_k) == rank(R[:n])``, else arrivals + 1.

    The ranks of all prefixes ``R[:n]`` are the leading column ranks of ``R^T``;
    those of ``R[:n] + e_k`` are the leading column ranks of ``[e_k | R^T]``.
    """
    arrivals, unknowns = matrix.shape
    prefix_ranks = _leading_column_ranks(gf(matrix.T))
    index = np.full(unknowns, arrivals + 1)
    for k in range(unknowns):
        unit = np.zeros((unknowns, 1), dtype=np.int64)
        unit[k] = 1
        with_unit = _leading_column_ranks(gf(np.hstack([unit, matrix.T])))[1:]
        # n = 0 never matches: rank(e_k) = 1 > rank of no rows.
        same = np.flatnonzero(with_unit == prefix_ranks)
        if same.size:
            index[k] = same[0]
    return index


def _literal_recovery_index(matrix, gf):
    """The definition itself: one rank pair for every prefix and unknown."""
    arrivals, unknowns = matrix.shape
    index = np.full(unknowns, arrivals + 1)
    for k in range(unknowns):
        unit = np.eye(unknowns, dtype=np.int64)[k : k + 1]
        for n in range(1, arrivals + 1):
            prefix = matrix[:n]
            with_unit = np.vstack([prefix, unit])
            if np.linalg.matrix_rank(gf(with_unit)) == np.linalg.matrix_rank(
                gf(prefix)
            ):
                index[k] = n
                break
    return index


def _dense_matrices(q, trials, shape, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, q, (trials, *shape))


def _window_matrices(q, trials, shape, seed):
    """Rows on nested prefixes (EW), class blocks (NOW) or prefixes of any width.

    Entries are zero with probability 0.2 on top of the support, and some rows are
    replaced by zero rows, copies of an earlier row or sums of two earlier rows.
    """
    gf = _galois(q)
    rng = np.random.default_rng(seed)
    arrivals, unknowns = shape
    blocks = np.array_split(np.arange(unknowns), 3)
    class_of = np.repeat(np.arange(3), [len(block) for block in blocks])
    matrices = []
    for trial in range(trials):
        window = rng.choice(3, size=arrivals, p=[0.5, 0.3, 0.2])
        if trial % 3 == 0:
            support = class_of[None, :] <= window[:, None]
        elif trial % 3 == 1:
            support = class_of[None, :] == window[:, None]
        else:
            widths = rng.integers(1, unknowns + 1, (arrivals, 1))
            support = np.arange(unknowns)[None, :] < widths
        support &= rng.random(shape) > 0.2
        rows = gf(rng.integers(0, q, shape) * support)
        for n in range(1, arrivals):
            draw = rng.random()
            if draw < 0.1:
                rows[n] = 0
            elif draw < 0.2:
                rows[n] = rows[rng.integers(n)]
            elif draw < 0.3:
                rows[n] = rows[rng.integers(n)] + rows[rng.integers(n)]
        matrices.append(np.asarray(rows, dtype=np.int64))
    return np.stack(matrices)


def _mixed_matrices(q, shape, seed):
    """One third dense, the rest window-structured; TRIALS trials for 9 unknowns."""
    trials = TRIALS if shape[1] <= 9 else 6
    dense = _dense_matrices(q, trials // 3, shape, seed)
    window = _window_matrices(q, trials - trials // 3, shape, seed + 1)
    return np.concatenate([dense, window]).astype(np.uint32)


@pytest.mark.parametrize("q", [2, 2**31 - 1])
def test_reference_matches_literal_definition(q):
    # Guards the leading-column shortcut of the reference with the plain definition.
    gf = _galois(q)
    matrices = _window_matrices(q, 3, (7, 5), seed=q % 97)
    for matrix in matrices:
        np.testing.assert_array_equal(
            _reference_recovery_index(matrix, gf), _literal_recovery_index(matrix, gf)
        )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("q", ORDERS)
def test_recovery_index_matches_galois_reference(q, shape):
    gf = _galois(q)
    matrices = _mixed_matrices(q, shape, seed=sum(shape) + q % 1009)
    got = decode.recovery_index(matrices, q)
    assert got.shape == (len(matrices), shape[1]) and got.dtype == jnp.int32
    expected = np.stack([_reference_recovery_index(m, gf) for m in matrices])
    # The data must exercise several recovery times, not one trivial outcome.
    assert len(np.unique(expected)) >= 3
    np.testing.assert_array_equal(np.asarray(got), expected)


# One field per arithmetic path: packed GF(2), tables, remainders, Montgomery.
@pytest.mark.parametrize("q", [2, 256, 65521, 2**31 - 1])
def test_index_at_last_arrival_agrees_with_recoverable(q):
    matrices = _mixed_matrices(q, (12, 9), seed=21 + q % 1009)
    index = np.asarray(decode.recovery_index(matrices, q))
    recoverable = np.asarray(fields.recoverable(matrices, q))
    assert recoverable.any() and not recoverable.all()
    np.testing.assert_array_equal(index <= 12, recoverable)
    assert index.min() >= 1 and index.max() <= 13


@pytest.mark.parametrize("q", ORDERS + ["real"])
def test_recovered_after_arrivals_is_monotone_and_matches_index(q):
    if q == "real":
        matrices = _real_window_matrices("ew", TRIALS, 12, seed=5)
    else:
        matrices = _mixed_matrices(q, (12, 9), seed=33 + q % 1009)
    index = np.asarray(decode.recovery_index(matrices, q))
    recovered = np.asarray(decode.recovered_after_arrivals(matrices, q))
    assert recovered.shape == (len(matrices), 13, 9) and recovered.dtype == np.bool_
    assert not recovered[:, 0].any()
    assert (recovered[:, 1:] >= recovered[:, :-1]).all()
    counts = np.arange(13)[None, :, None]
    np.testing.assert_array_equal(recovered, index[:, None, :] <= counts)
    np.testing.assert_array_equal(_first_true(recovered), index)


@pytest.mark.parametrize(
    "q, shape",
    [(2, (80, 70)), (65537, (14, 10))],
)
def test_every_prefix_agrees_with_recoverable(q, shape):
    # GF(2) rows of three words (the last one partial) and the smallest prime that
    # needs Montgomery reduction: recovered after n arrivals iff recoverable from
    # the first n rows, where the later rows are zeroed (zero rows do not change
    # the row space).
    arrivals, unknowns = shape
    trials = 2 if unknowns > 16 else 6
    matrices = _window_matrices(q, trials, shape, seed=q % 113 + arrivals)
    matrices = matrices.astype(np.uint32)
    keep = np.arange(arrivals)[None, :] < np.arange(arrivals + 1)[:, None]
    prefixes = matrices[:, None] * keep[None, :, :, None]
    expected = np.asarray(fields.recoverable(prefixes, q))
    got = np.asarray(decode.recovered_after_arrivals(matrices, q))
    assert 0 < expected[:, -1].sum() < expected[:, -1].size
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------
# Real coefficients.


def _class_windows(rng, trials, arrivals):
    """``[trials, arrivals]`` class window of every row, most often the first."""
    return rng.choice(len(CLASS_SIZES), size=(trials, arrivals), p=[0.5, 0.3, 0.2])


def _gaussian_on_windows(rng, windows, scheme):
    """Gaussian rows on NOW (one class) or EW (classes up to one) windows."""
    classes = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    if scheme == "now":
        support = classes[None, None, :] == windows[..., None]
    else:
        support = classes[None, None, :] <= windows[..., None]
    values = rng.standard_normal(windows.shape + classes.shape)
    return (values * support).astype(np.float32)


def _real_window_matrices(scheme, trials, arrivals, seed):
    rng = np.random.default_rng(seed)
    return _gaussian_on_windows(rng, _class_windows(rng, trials, arrivals), scheme)


def _large_field_index(windows, scheme):
    """Recovery indices of the large-field rule for NOW and EW window counts.

    NOW: class ``l`` is recovered once ``k_l`` rows of window ``l`` have arrived.
    EW: the rows of windows ``1..j`` have rank ``min_i (T_i + n_{i+1} + .. + n_j)``
    (``T_i`` the number of unknowns in classes ``1..i``); class ``l`` is recovered
    once that rank reaches ``T_j`` for some ``j >= l``.
    """
    trials, arrivals = windows.shape
    sizes = np.array(CLASS_SIZES)
    arrived = np.arange(arrivals + 1)[:, None] > np.arange(arrivals)[None, :]
    counts = np.stack(
        [(arrived & (windows[:, None, :] == c)).sum(-1) for c in range(len(sizes))],
        axis=-1,
    )  # [trials, 0..arrivals, classes]
    if scheme == "now":
        by_class = counts >= sizes
    else:
        totals = np.cumsum(sizes)
        rank, full = np.zeros(counts.shape[:2], dtype=np.int64), []
        for c in range(len(sizes)):
            rank = np.minimum(rank + counts[..., c], totals[c])
            full.append(rank == totals[c])
        full = np.stack(full, -1)
        by_class = np.flip(np.cumsum(np.flip(full, -1), -1), -1) > 0
    return _first_true(np.repeat(by_class, sizes, axis=-1))


def _float64_rank_index(matrices):
    """The rank definition in float64 numpy, batched over trials."""
    trials, arrivals, unknowns = matrices.shape
    rows = matrices.astype(np.float64)
    recovered = np.zeros((trials, arrivals + 1, unknowns), dtype=bool)
    for n in range(1, arrivals + 1):
        prefix_rank = np.linalg.matrix_rank(rows[:, :n])
        for k in range(unknowns):
            unit = np.broadcast_to(np.eye(unknowns)[k], (trials, 1, unknowns))
            with_unit = np.concatenate([rows[:, :n], unit], axis=1)
            recovered[:, n, k] = np.linalg.matrix_rank(with_unit) == prefix_rank
    return _first_true(recovered)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_real_windows_follow_large_field_rule(scheme):
    rng = np.random.default_rng(7)
    windows = _class_windows(rng, 512, 10)
    matrices = _gaussian_on_windows(rng, windows, scheme)
    expected = _large_field_index(windows, scheme)
    # The rule and the float64 ranks agree on these coefficients, and the data
    # covers early, late and missing recoveries.
    np.testing.assert_array_equal(_float64_rank_index(matrices), expected)
    assert (expected <= 9).any() and (expected == 11).any()
    got = np.asarray(decode.recovery_index(matrices, "real"))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_real_recovery_ignores_row_scale(scheme):
    # The tolerance is relative to each row's largest entry.
    matrices = _real_window_matrices(scheme, 64, 10, seed=8)
    rng = np.random.default_rng(9)
    scales = 10.0 ** rng.uniform(-3, 3, matrices.shape[:2] + (1,))
    scaled = (matrices * scales).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(decode.recovery_index(scaled, "real")),
        np.asarray(decode.recovery_index(matrices, "real")),
    )


def test_real_example_with_exact_dependencies():
    a, b, c = [1.5, -0.25, 2.0], [0.5, 3.0, -1.0], [0.0, 1.0, 4.0]
    total = np.add(a, b).tolist()
    rows = np.array([a, b, a, total, c], dtype=np.float32)
    assert np.asarray(decode.recovery_index(rows, "real")).tolist() == [5, 5, 5]
    rows = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 1, 1], [0, 3, 3]], np.float32)
    assert np.asarray(decode.recovery_index(rows, "real")).tolist() == [1, 5, 5]


@pytest.mark.parametrize("q", [2, 256, 65521, 2**31 - 1, "real"])
def test_dependent_rows_do_not_advance_recovery(q):
    # Inserting a dependent row (a copy of an earlier row in even trials, the sum
    # of two earlier rows in odd ones) after arrival p delays every later recovery
    # by one arrival and leaves the earlier ones unchanged.
    field = get_field(q)
    arrivals, trials = 12, TRIALS
    if q == "real":
        matrices = np.concatenate(
            [
                _real_window_matrices(scheme, trials // 2, arrivals, seed=13)
                for scheme in ("now", "ew")
            ]
        )
    else:
        matrices = _mixed_matrices(q, (arrivals, 9), seed=17 + q % 1009)
    rng = np.random.default_rng(19)
    positions = rng.integers(2, arrivals + 1, len(matrices))
    extended = []
    for trial, (matrix, p) in enumerate(zip(matrices, positions, strict=True)):
        first, second = rng.integers(0, p, 2)
        if trial % 2 == 0:
            dependent = matrix[first]
        else:
            dependent = np.asarray(field.add(matrix[first], matrix[second]))
        extended.append(np.insert(matrix, p, dependent, axis=0))
    extended = np.stack(extended).astype(matrices.dtype)
    index = np.asarray(decode.recovery_index(matrices, field))
    expected = np.where(index <= positions[:, None], index, index + 1)
    assert (index <= positions[:, None]).any() and (index > positions[:, None]).any()
    np.testing.assert_array_equal(
        np.asarray(decode.recovery_index(extended, field)), expected
    )


@pytest.mark.parametrize("q", [2, 256, 2**31 - 1, "real"])
def test_many_trials_agree_with_the_rank_of_every_prefix(q):
    # 1280 trials: the pass goes on with the slowest quarter in a compacted stage.
    # 40 arrivals need two words of row bits. Copies of earlier rows are read when
    # they lie outside the recovered set, so trials differ in the rows they read;
    # rows on recovered unknowns only (repeated narrow windows) are skipped. Real
    # trials get zero rows instead: a copy can be misjudged once threshold
    # pivoting has grown the basis (see fields.REAL_PIVOT_THRESHOLD).
    field = get_field(q)
    rng = np.random.default_rng(41)
    trials, arrivals = 1280, 40
    windows = rng.choice(3, size=(trials, arrivals), p=[0.6, 0.25, 0.15])
    classes = np.repeat(np.arange(3), CLASS_SIZES)
    support = classes[None, None, :] <= windows[..., None]
    if q == "real":
        values = rng.standard_normal(support.shape)
    else:
        values = rng.integers(1, q, support.shape)
    matrices = (values * support).astype(field.dtype)
    copied = np.nonzero(rng.random((trials, arrivals)) < 0.25)
    for trial, n in zip(*copied, strict=True):
        if q == "real":
            matrices[trial, n] = 0
        elif n:
            matrices[trial, n] = matrices[trial, rng.integers(n)]
    keep = np.arange(arrivals)[None, :] < np.arange(arrivals + 1)[:, None]
    prefixes = matrices[:, None] * keep[None, :, :, None].astype(field.dtype)
    expected = _first_true(np.asarray(fields.recoverable(prefixes, field)))
    index = np.asarray(decode.recovery_index(matrices, field))
    assert (index == arrivals + 1).any() and (index > 20).any()
    np.testing.assert_array_equal(index, expected)


# ---------------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize("q", [256, "real"])
def test_leading_dimensions_match_flattened_single_and_vmap(q):
    if q == "real":
        matrices = _real_window_matrices("ew", 6, 12, seed=23)
    else:
        matrices = _mixed_matrices(q, (12, 9), seed=29)[:6]
    batched = matrices.reshape(2, 3, 12, 9)
    index = decode.recovery_index(batched, q)
    assert index.shape == (2, 3, 9) and index.dtype == jnp.int32
    flat = np.asarray(decode.recovery_index(matrices, q))
    np.testing.assert_array_equal(np.asarray(index).reshape(6, 9), flat)
    # Per-matrix calls and vmap compile anew; one field keeps the run short.
    if q != "real":
        single = [np.asarray(decode.recovery_index(m, q)) for m in matrices]
        np.testing.assert_array_equal(np.stack(single), flat)
        mapped = jax.vmap(jax.vmap(lambda m: decode.recovery_index(m, q)))(batched)
        np.testing.assert_array_equal(np.asarray(mapped), np.asarray(index))
    recovered = decode.recovered_after_arrivals(batched, q)
    assert recovered.shape == (2, 3, 13, 9)
    np.testing.assert_array_equal(
        np.asarray(recovered).reshape(6, 13, 9),
        np.asarray(decode.recovered_after_arrivals(matrices, q)),
    )


def test_docstring_examples_and_boolean_input():
    rows = jnp.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]])
    assert decode.recovery_index(rows, 2).tolist() == [2, 2, 3]
    assert decode.recovery_index(rows.astype(bool), 2).tolist() == [2, 2, 3]
    rows = jnp.array([[1, 2], [3, 4], [0, 1]])
    assert decode.recovery_index(rows, 7).tolist() == [2, 2]
    recovered = decode.recovered_after_arrivals(jnp.array([[1, 0], [1, 1]]), 2)
    assert recovered.tolist() == [[False, False], [True, False], [True, True]]


@pytest.mark.parametrize("q", [2, 65521, "real"])
def test_zero_batch(q):
    coefficients = np.zeros((0, 7, 5), np.int32)
    index = decode.recovery_index(coefficients, q)
    assert index.shape == (0, 5) and index.dtype == jnp.int32
    assert decode.recovered_after_arrivals(coefficients, q).shape == (0, 8, 5)


@pytest.mark.parametrize("q", [2, 65521, "real"])
@pytest.mark.parametrize("shape", [(4, 0, 5), (0, 5), (3, 4, 0)])
def test_zero_arrivals_or_unknowns(q, shape):
    coefficients = np.zeros(shape, np.int32)
    index = np.asarray(decode.recovery_index(coefficients, q))
    assert index.shape == shape[:-2] + shape[-1:]
    assert (index == shape[-2] + 1).all()
    recovered = decode.recovered_after_arrivals(coefficients, q)
    assert recovered.shape == shape[:-2] + (shape[-2] + 1, shape[-1])
    assert not np.asarray(recovered).any()


# ---------------------------------------------------------------------------------
# Validation and compilation.


@pytest.mark.parametrize(
    "function", [decode.recovery_index, decode.recovered_after_arrivals]
)
@pytest.mark.parametrize(
    "coefficients, q, match",
    [
        (
            np.ones((3, 2), np.float32),
            7,
            r"coefficients must have an integer dtype for Field\(GF\(7\)\) "
            r"\(got float32\)",
        ),
        (
            np.ones(3, np.int32),
            7,
            r"coefficients must have at least 2 dimensions .* \(got shape \(3,\)\)",
        ),
        (
            np.ones((3, 2), np.complex64),
            "real",
            r"coefficients must be real for the REAL field \(got complex64\)",
        ),
        (
            np.ones((3, 2), np.int32),
            6,
            r"q must be a prime or a power of two \(got 6\)",
        ),
        (np.ones((3, 2), np.int32), 2**17, r"at most 2\^16 = 65536"),
        (np.ones((3, 2), np.int32), "complex", r"q must be an int field order"),
    ],
)
def test_input_validation(function, coefficients, q, match):
    with pytest.raises(ValueError, match=match):
        function(coefficients, q)


@pytest.mark.parametrize("q", ORDERS + ["real"])
def test_no_retrace_for_new_values(q, count_compiles):
    field = get_field(q)
    rng = np.random.default_rng(31)
    if q == "real":
        first, second = rng.standard_normal((2, TRIALS, 12, 9)).astype(np.float32)
    else:
        first, second = rng.integers(0, q, (2, TRIALS, 12, 9)).astype(np.uint32)
    jax.block_until_ready(decode.recovery_index(first, q))
    jax.block_until_ready(decode.recovered_after_arrivals(first, q))
    with count_compiles() as compiles:
        jax.block_until_ready(decode.recovery_index(second, q))
        jax.block_until_ready(decode.recovery_index(second, field))
        jax.block_until_ready(decode.recovered_after_arrivals(second, field))
    assert compiles == []


# ---------------------------------------------------------------------------------
# Rows confined to blocks of sub-products (NOW windows, unit rows).


def _block_matrices(q, trials, arrivals, blocks, seed):
    """Rows each inside one block, with zero rows, copies and sums of earlier rows;
    every fourth trial never draws a row of the last block."""
    gf = _galois(q)
    rng = np.random.default_rng(seed)
    unknowns = sum(blocks)
    block_of = np.repeat(np.arange(len(blocks)), blocks)
    matrices = []
    for trial in range(trials):
        last = len(blocks) - (trial % 4 == 0)
        window = rng.integers(0, last, arrivals)
        support = block_of[None, :] == window[:, None]
        support &= rng.random((arrivals, unknowns)) > 0.2
        rows = gf(rng.integers(0, q, (arrivals, unknowns)) * support)
        for n in range(1, arrivals):
            draw, earlier = rng.random(), rng.integers(n)
            same_block = np.flatnonzero(window[:n] == window[n])
            if draw < 0.1:
                rows[n] = 0
            elif draw < 0.25 and same_block.size:
                rows[n] = rows[rng.choice(same_block)] * gf(rng.integers(1, q))
            elif draw < 0.35 and window[earlier] == window[n] and same_block.size:
                rows[n] = rows[earlier] + rows[rng.choice(same_block)]
        matrices.append(np.asarray(rows, dtype=np.int64))
    return np.stack(matrices).astype(np.uint32)


# The block decoder is called directly: `_recovery_index_jit` uses it only where it
# is the faster one (`decode._blocks_pay`), which leaves GF(2) out.
_by_blocks = jax.jit(decode._recovery_by_blocks, static_argnames=("field", "blocks"))


@pytest.mark.parametrize("q", ORDERS)
@pytest.mark.parametrize("blocks", [(3, 3, 3), (2, 3, 4), (1,) * 6])
def test_decoding_by_blocks_matches_galois_reference(q, blocks):
    matrices = _block_matrices(q, 12, 14, blocks, seed=q % 101 + len(blocks))
    field = get_field(q)
    got = np.asarray(_by_blocks(jnp.asarray(matrices), field, blocks))
    gf = _galois(q)
    expected = np.stack([_reference_recovery_index(m, gf) for m in matrices])
    assert (expected <= 14).any() and (expected == 15).any()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("q", [256, 2**31 - 1, "real"])
def test_decoding_by_blocks_agrees_with_one_pass_on_many_trials(q):
    # Enough trials for the compacted stages of the pass (more than 1024).
    blocks = (2, 3, 4)
    if q == "real":
        rng = np.random.default_rng(31)
        windows = rng.choice(3, size=(2048, 30), p=[0.5, 0.3, 0.2])
        classes = np.repeat(np.arange(3), blocks)
        support = classes[None, None, :] == windows[..., None]
        values = rng.standard_normal(support.shape) * support
        matrices = values.astype(np.float32)
    else:
        matrices = _block_matrices(q, 2048, 30, blocks, seed=7)
    field = get_field(q)
    by_blocks = _by_blocks(jnp.asarray(matrices), field, blocks)
    one_pass = decode._recovery_index_jit(jnp.asarray(matrices), field)
    assert (np.asarray(one_pass) == 31).any()
    np.testing.assert_array_equal(np.asarray(by_blocks), np.asarray(one_pass))


@pytest.mark.parametrize("q", [256, 2**31 - 1, "real"])
def test_decoding_by_blocks_without_arrivals(q):
    field = get_field(q)
    empty = jnp.zeros((4, 0, 9), field.dtype)
    index = _by_blocks(empty, field, (3, 3, 3))
    np.testing.assert_array_equal(np.asarray(index), np.ones((4, 9), np.int32))
