"""Tests of uepjax.fields: arithmetic and eliminations against galois and references."""

import galois
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uepjax import fields
from uepjax.fields import Field, FieldKind, get_field

# The orders the brief names, on both sides of 2^16 and at the largest prime.
ARITHMETIC_ORDERS = [2, 16, 256, 2**16, 65521, 65537, 2**31 - 1]
RANK_ORDERS = [2, 16, 256, 65521, 2**31 - 1]
SHAPES = [(15, 9), (30, 9), (9, 30), (40, 64)]


def _galois(q):
    # Pure-Python ufuncs: no numba compilation, fast enough for small arrays.
    return galois.GF(q, compile="python-calculate")


def _elements(q, n, seed):
    """Random elements plus the edge elements 0, 1, q - 1 in every pairing."""
    rng = np.random.default_rng(seed)
    edges = np.array([0, 1, q - 1], dtype=np.int64)
    a = np.concatenate([np.repeat(edges, 3), rng.integers(0, q, n)])
    b = np.concatenate([np.tile(edges, 3), rng.integers(0, q, n)])
    return a, b


# ---------------------------------------------------------------------------------
# get_field and Field.


@pytest.mark.parametrize(
    "q, kind",
    [
        (2, FieldKind.BINARY),
        (4, FieldKind.EXTENSION),
        (2**16, FieldKind.EXTENSION),
        (3, FieldKind.PRIME),
        (2**31 - 1, FieldKind.PRIME),
        (np.int64(257), FieldKind.PRIME),
        ("real", FieldKind.REAL),
        ("REAL", FieldKind.REAL),
    ],
)
def test_get_field_kinds(q, kind):
    field = get_field(q)
    assert field.kind is kind
    assert get_field(field) is field
    if kind is FieldKind.REAL:
        assert field.order is None and field.dtype == np.float32
    else:
        assert field.order == int(q) and field.dtype == np.uint32


@pytest.mark.parametrize(
    "q, match",
    [
        (12, r"q must be a prime or a power of two \(got 12\)"),
        (9, r"q must be a prime or a power of two \(got 9\)"),
        (
            2**31 + 11,
            r"at most 2\^31 - 1 = 2147483647 when it is prime \(got 2147483659",
        ),
        (2**17, r"at most 2\^16 = 65536 when it is a power of two \(got 131072"),
        (1, r"q must be a prime or a power of two, at least 2 \(got 1\)"),
        (0, r"at least 2 \(got 0\)"),
        (-7, r"at least 2 \(got -7\)"),
        (2.0, r"q must be an int field order, 'real' or a Field \(got 2.0\)"),
        (True, r"q must be an int field order"),
        ("complex", r"got 'complex'"),
        (None, r"got None"),
    ],
)
def test_get_field_rejects(q, match):
    with pytest.raises(ValueError, match=match):
        get_field(q)


@pytest.mark.parametrize(
    "order, kind",
    [(4, FieldKind.BINARY), (256, FieldKind.PRIME), (9, FieldKind.EXTENSION)],
)
def test_field_constructor_validates(order, kind):
    with pytest.raises(ValueError, match="order must be"):
        Field(order, kind)


def test_field_is_hashable_static_argument():
    assert get_field(256) == Field(256, FieldKind.EXTENSION)
    assert hash(get_field(256)) == hash(Field(256, FieldKind.EXTENSION))
    assert len({get_field(256), get_field(256), get_field(257)}) == 2

    @jax.jit
    def square(x):
        return get_field(65537).mul(x, x)

    product = jax.jit(lambda x, f: f.mul(x, x), static_argnums=1)
    x = jnp.uint32(65536)
    assert int(product(x, get_field(65537))) == 1
    assert int(square(x)) == 1


@pytest.mark.parametrize("m", range(2, 17))
def test_extension_polynomials_match_galois(m):
    field_galois = galois.GF(2**m, compile="python-calculate")
    assert int(field_galois.irreducible_poly) == fields._CONWAY_POLYNOMIALS[m]
    a, b = _elements(2**m, 200, seed=m)
    field = get_field(2**m)
    expected = np.asarray(field_galois(a) * field_galois(b))
    np.testing.assert_array_equal(np.asarray(field.mul(a, b)), expected)


# ---------------------------------------------------------------------------------
# Elementwise arithmetic against galois.


@pytest.mark.parametrize("q", ARITHMETIC_ORDERS)
def test_arithmetic_matches_galois(q):
    field, gf = get_field(q), _galois(q)
    a, b = _elements(q, 2000, seed=q % 1000)
    ga, gb = gf(a), gf(b)
    x, y = jnp.asarray(a, jnp.uint32), jnp.asarray(b, jnp.uint32)

    np.testing.assert_array_equal(np.asarray(field.add(x, y)), np.asarray(ga + gb))
    np.testing.assert_array_equal(np.asarray(field.sub(x, y)), np.asarray(ga - gb))
    np.testing.assert_array_equal(np.asarray(field.mul(x, y)), np.asarray(ga * gb))
    np.testing.assert_array_equal(np.asarray(field.neg(x)), np.asarray(-ga))
    nonzero = a != 0
    np.testing.assert_array_equal(
        np.asarray(field.inv(x))[nonzero], np.asarray(ga[nonzero] ** -1)
    )
    assert int(field.inv(jnp.uint32(0))) == 0
    np.testing.assert_array_equal(np.asarray(field.power(x, 5)), np.asarray(ga**5))
    np.testing.assert_array_equal(np.asarray(field.power(x, 0)), np.ones_like(a))
    np.testing.assert_array_equal(np.asarray(field.is_zero(x)), a == 0)


@pytest.mark.parametrize("q", [65521, 65537, 2**31 - 1])
def test_prime_products_of_largest_elements_are_exact(q):
    # The products that come closest to overflowing uint32 words.
    field = get_field(q)
    values = np.array([q - 1, q - 2, q // 2 + 1, 2**16 - 1, 2**15], dtype=np.int64)
    values = values[values < q]
    a, b = np.meshgrid(values, values)
    expected = [int(x) * int(y) % q for x, y in zip(a.ravel(), b.ravel(), strict=True)]
    got = field.mul(jnp.asarray(a, jnp.uint32), jnp.asarray(b, jnp.uint32))
    assert np.asarray(got).ravel().tolist() == expected


@pytest.mark.parametrize("q", [65537, 2**31 - 19])
def test_montgomery_vector_matrix_and_combination_are_exact(q):
    # Sums of 64-bit products are grouped by floor(2^32 / q) before reduction:
    # one group for q near 2^31, large groups for q just above 2^16.
    rng = np.random.default_rng(q % 997)
    a = rng.integers(0, q, (20, 37))
    b = rng.integers(0, q, (20, 37))
    m = rng.integers(0, q, (20, 37, 3))
    # Rows of entries near q - 1 bring each group's sum near its bound.
    a[:5] = q - 1 - rng.integers(0, 1000, (5, 37))
    m[:5] = q - 1 - rng.integers(0, 1000, (5, 37, 3))
    r_inverse = pow(2**32, -1, q)
    expected = [
        [sum(int(x) * int(y) for x, y in zip(v, column, strict=True)) for column in w.T]
        for v, w in zip(a, m, strict=True)
    ]
    expected = [[total * r_inverse % q for total in row] for row in expected]
    v, m = jnp.asarray(a, jnp.uint32), jnp.asarray(m, jnp.uint32)
    got = fields._montgomery_vector_matrix(v, m, q, 1)
    assert np.asarray(got).tolist() == expected
    got = fields._montgomery_vector_matrix(v.T, jnp.moveaxis(m, 0, -1), q, 0)
    assert np.asarray(got).T.tolist() == expected
    c, d = a[:, 0], b[:, 1]
    expected = [
        (int(w) * int(x) + int(y) * int(z)) * r_inverse % q
        for w, x, y, z in zip(a[:, 2], b[:, 3], c, d, strict=True)
    ]
    got = fields._montgomery_combination(
        *(jnp.asarray(v, jnp.uint32) for v in (a[:, 2], b[:, 3], c, d)), q
    )
    assert np.asarray(got).tolist() == expected


@pytest.mark.parametrize("q", [4, 16, 256])
def test_uint8_elimination_arithmetic_matches_the_field(q):
    # Eliminations over GF(2^m <= 256) hold uint8 elements: every product,
    # difference and inverse must equal the field's own uint32 one.
    field = get_field(q)
    assert fields._elimination_dtype(field) == jnp.uint8
    a, b = (v.ravel() for v in np.meshgrid(np.arange(q), np.arange(q)))
    x8, y8 = jnp.asarray(a, jnp.uint8), jnp.asarray(b, jnp.uint8)
    x, y = jnp.asarray(a, jnp.uint32), jnp.asarray(b, jnp.uint32)
    product = fields._raw_mul(field, x8, y8)
    difference = fields._raw_sub(field, x8, y8)
    inverse = fields._inverse_operand(field, x8)
    assert product.dtype == difference.dtype == inverse.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(product), np.asarray(field.mul(x, y)))
    np.testing.assert_array_equal(np.asarray(difference), np.asarray(field.sub(x, y)))
    np.testing.assert_array_equal(np.asarray(inverse), np.asarray(field.inv(x)))


@pytest.mark.parametrize("q", [2, 2**16, 65521, 2**31 - 1])
def test_other_fields_eliminate_in_their_own_dtype(q):
    field = get_field(q)
    assert fields._elimination_dtype(field) == field.dtype


def test_real_arithmetic_and_inverse_of_zero():
    field = get_field("real")
    x = jnp.array([0.0, 2.0, -4.0])
    np.testing.assert_allclose(np.asarray(field.inv(x)), [0.0, 0.5, -0.25])
    np.testing.assert_allclose(np.asarray(field.mul(x, x)), [0.0, 4.0, 16.0])
    assert not np.isnan(np.asarray(field.inv(x))).any()


@pytest.mark.parametrize(
    "q, values, expected",
    [
        (7, [-1, 0, 8, 13], [6, 0, 1, 6]),
        (2**31 - 1, [-1, 2**31 - 1], [2**31 - 2, 0]),
        (2, [0, 1, 2, 3], [0, 1, 0, 1]),
        (256, [0, 5, 255, 256], [0, 5, 255, 0]),
    ],
)
def test_from_int(q, values, expected):
    got = get_field(q).from_int(jnp.asarray(values, jnp.int32))
    assert got.dtype == jnp.uint32
    assert np.asarray(got).tolist() == expected


def test_from_int_rejects_floats():
    with pytest.raises(
        ValueError, match=r"x must have an integer dtype \(got float32\)"
    ):
        get_field(7).from_int(jnp.ones(2))


def test_power_rejects_negative_exponent():
    with pytest.raises(ValueError, match=r"exponent must be a non-negative int"):
        get_field(7).power(jnp.uint32(3), -1)


@pytest.mark.parametrize("q", [2, 7, 16, 65521, 2**31 - 1])
def test_random_is_uniform(q):
    # Fixed key; each tolerance is 4.5 standard errors of the estimate.
    field = get_field(q)
    n = 64_000
    x = np.asarray(field.random(jax.random.key(1), (n,))).astype(np.int64)
    assert x.min() >= 0 and x.max() < q
    if q <= 16:
        counts = np.bincount(x, minlength=q)
        standard_error = np.sqrt(n * (1 / q) * (1 - 1 / q))
        assert np.all(np.abs(counts - n / q) < 4.5 * standard_error)
    else:
        standard_error = q / np.sqrt(12 * n)
        assert abs(x.mean() - (q - 1) / 2) < 4.5 * standard_error
    nonzero = np.asarray(field.random_nonzero(jax.random.key(2), (n,)))
    assert nonzero.min() >= 1 and nonzero.max() < q


@pytest.mark.parametrize("p", [7, 65521, 2**30 + 3, 2**31 - 1])
def test_random_residues_reduce_threefry_words_exactly(p):
    # The words are JAX's non-partitionable Threefry stream of the key; the
    # elements are w mod p (one word) or (h 2^32 + l) 2^-32 mod p (two words).
    key = jax.random.key(5)
    size = 1001
    one_word = 2**32 % p <= 2
    with jax.threefry_partitionable(False):
        bits = jax.random.bits(key, (size if one_word else 2 * size,), jnp.uint32)
    words = [int(w) for w in np.asarray(bits)]
    if one_word:
        expected = [w % p for w in words]
    else:
        inverse_r = pow(2**32, -1, p)
        pairs = zip(words[:size], words[size:], strict=True)
        expected = [(h % p * 2**32 + w) * inverse_r % p for h, w in pairs]
    got = np.asarray(fields._random_residues(key, size, p)).tolist()
    assert got == expected


@pytest.mark.parametrize("size", [1, 2, 3, 270])
def test_threefry_matches_jax_word_for_word(size):
    # Eight keys under vmap, as the simulator draws them, and counters that are
    # not 0..n-1, so that a swapped half or a wrong key schedule shows.
    import jax.extend

    keys = jax.random.key_data(jax.random.split(jax.random.key(11), 8))
    counters = jnp.arange(size, dtype=jnp.uint32) * 40503 + 7
    got = jax.vmap(fields._threefry_2x32, (0, None))(keys, counters)
    expected = jax.vmap(jax.extend.random.threefry_2x32, (0, None))(keys, counters)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_random_real_is_standard_normal():
    x = np.asarray(get_field("real").random(jax.random.key(3), (4, 50_000)))
    assert x.dtype == np.float32 and x.shape == (4, 50_000)
    # Mean and variance within 4.5 standard errors (1 / sqrt(n), sqrt(2 / n)).
    assert abs(x.mean()) < 4.5 / np.sqrt(x.size)
    assert abs(x.var() - 1) < 4.5 * np.sqrt(2 / x.size)


# ---------------------------------------------------------------------------------
# Elimination: rank, RREF and recoverable unknowns against galois.


def _matrices(q, shape, seed, count=3):
    """Random matrices, then planted ranks 1..: products [rows, r] @ [r, cols]."""
    gf = _galois(q)
    rows, cols = shape
    rng = np.random.default_rng(seed)
    out = [np.asarray(gf.Random(shape, seed=seed))]
    for i, r in enumerate(rng.choice(np.arange(1, min(shape)), count, replace=False)):
        left = gf.Random((rows, int(r)), seed=seed + 2 * i + 1)
        right = gf.Random((int(r), cols), seed=seed + 2 * i + 2)
        out.append(np.asarray(left @ right))
    return np.stack(out).astype(np.int64)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("q", RANK_ORDERS)
def test_rank_and_rref_match_galois(q, shape):
    gf = _galois(q)
    count = 1 if shape == (40, 64) else 3
    matrices = _matrices(q, shape, seed=sum(shape) + q % 101, count=count)
    echelon = fields.row_echelon(matrices, q)
    expected_rank = [np.linalg.matrix_rank(gf(m)) for m in matrices]
    assert np.asarray(echelon.rank).tolist() == expected_rank
    assert np.asarray(fields.rank(matrices, q)).tolist() == expected_rank
    expected_rref = np.stack([np.asarray(gf(m).row_reduce()) for m in matrices])
    assert echelon.reduced.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(echelon.reduced), expected_rref)
    pivots = np.asarray(echelon.pivot_columns)
    assert (pivots.sum(-1) == np.asarray(expected_rank)).all()


@pytest.mark.parametrize("q", [256, 65521, 2**31 - 1])
def test_rank_of_a_batch_in_blocks_matches_galois(q, monkeypatch):
    # 37 matrices 7 x 5 in blocks of at most 19 (the last one padded).
    itemsize = fields._elimination_dtype(get_field(q)).itemsize
    monkeypatch.setattr(fields, "RANK_BLOCK_BYTES", 19 * 7 * 5 * itemsize)
    fields._rank_jit.clear_cache()
    gf = _galois(q)
    matrices = np.concatenate(
        [_matrices(q, (7, 5), seed=q % 97 + i, count=3) for i in range(10)]
    )[:37]
    expected = [np.linalg.matrix_rank(gf(m)) for m in matrices]
    assert len(set(expected)) > 1
    assert np.asarray(fields.rank(matrices, q)).tolist() == expected


def _reference_recoverable(matrix, gf):
    """e_k is in the row space iff appending e_k does not raise the rank."""
    rank = np.linalg.matrix_rank(gf(matrix))
    unknowns = matrix.shape[1]
    out = []
    for k in range(unknowns):
        unit = np.zeros((1, unknowns), dtype=np.int64)
        unit[0, k] = 1
        out.append(np.linalg.matrix_rank(gf(np.vstack([matrix, unit]))) == rank)
    return np.array(out)


def _window_matrices(q, trials, rows, cols, seed):
    """Random rows supported on random prefixes of the columns (EW-like windows)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, q, (trials, rows, cols))
    widths = rng.integers(1, cols + 1, (trials, rows, 1))
    return values * (np.arange(cols) < widths)


@pytest.mark.parametrize("shape", [(15, 9), (6, 9)])
@pytest.mark.parametrize("q", RANK_ORDERS)
def test_recoverable_matches_rank_reference(q, shape):
    gf = _galois(q)
    matrices = _window_matrices(q, 4, *shape, seed=q % 89 + shape[0])
    got = np.asarray(fields.recoverable(matrices, q))
    expected = np.stack([_reference_recoverable(m, gf) for m in matrices])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(15, 9), (7, 12), (24, 24)])
@pytest.mark.parametrize("q", RANK_ORDERS)
def test_rank_with_pivotless_columns_matches_galois(q, shape):
    # Window supports and zeroed columns: steps without a pivot in every phase of
    # the forward elimination, and wide matrices (transposed before elimination).
    gf = _galois(q)
    matrices = _window_matrices(q, 6, *shape, seed=q % 83 + shape[1])
    rng = np.random.default_rng(shape[0])
    matrices = matrices * (rng.random((6, 1, shape[1])) > 0.3)
    expected = [np.linalg.matrix_rank(gf(m)) for m in matrices]
    assert len(set(expected)) > 1
    assert np.asarray(fields.rank(matrices, q)).tolist() == expected


def test_recoverable_outcomes_are_mixed():
    # Guards the reference comparison above against trivially all-True/False data.
    got = np.asarray(fields.recoverable(_window_matrices(256, 4, 6, 9, seed=3), 256))
    assert got.any() and not got.all()


@settings(max_examples=40, deadline=None)
@given(
    q=st.sampled_from([2, 3, 8]),
    data=st.data(),
)
def test_small_fields_property(q, data):
    values = data.draw(
        st.lists(st.integers(0, q - 1), min_size=30, max_size=30), label="values"
    )
    matrix = np.array(values, dtype=np.int64).reshape(5, 6)
    gf = _galois(q)
    assert int(fields.rank(matrix, q)) == np.linalg.matrix_rank(gf(matrix))
    np.testing.assert_array_equal(
        np.asarray(fields.recoverable(matrix, q)), _reference_recoverable(matrix, gf)
    )


def test_batched_leading_dimensions_and_vmap():
    matrices = _window_matrices(65521, 6, 15, 9, seed=5).reshape(2, 3, 15, 9)
    ranks = fields.rank(matrices, 65521)
    assert ranks.shape == (2, 3) and ranks.dtype == jnp.int32
    flat = fields.rank(matrices.reshape(6, 15, 9), 65521)
    np.testing.assert_array_equal(np.asarray(ranks).ravel(), np.asarray(flat))
    mapped = jax.vmap(jax.vmap(lambda m: fields.rank(m, 65521)))(jnp.asarray(matrices))
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(ranks))
    recovered = fields.recoverable(matrices, 65521)
    assert recovered.shape == (2, 3, 9) and recovered.dtype == jnp.bool_


def test_empty_and_degenerate_shapes():
    assert np.asarray(fields.rank(np.zeros((3, 0, 4), np.int32), 2)).tolist() == [0] * 3
    assert not np.asarray(fields.recoverable(np.zeros((0, 4), np.int32), 7)).any()
    assert int(fields.rank(np.zeros((4, 4), np.int32), 2**31 - 1)) == 0
    identity = np.eye(5, dtype=np.int32)
    for q in (2, 2**31 - 1, "real"):
        assert np.asarray(fields.recoverable(identity, q)).all()


def test_input_validation():
    with pytest.raises(ValueError, match=r"matrices must have at least 2 dimensions"):
        fields.rank(np.ones(3, np.int32), 2)
    with pytest.raises(ValueError, match=r"integer dtype .* \(got float32\)"):
        fields.rank(np.ones((2, 2), np.float32), 7)
    with pytest.raises(ValueError, match=r"q must be a prime or a power of two"):
        fields.row_echelon(np.ones((2, 2), np.int32), 6)


# ---------------------------------------------------------------------------------
# Real coefficients.


@pytest.mark.parametrize("shape", SHAPES)
def test_real_rank_of_planted_products(shape):
    # Products [rows, r] @ [r, cols] rounded to float32: the float64 rank of the
    # rounded matrix is full, so the reference is the planted rank itself.
    rng = np.random.default_rng(sum(shape))
    rows, cols = shape
    planted = [min(shape)] + list(range(1, min(shape)))
    matrices = np.stack(
        [
            rng.standard_normal((rows, r)) @ rng.standard_normal((r, cols))
            for r in planted
        ]
    ).astype(np.float32)
    assert np.asarray(fields.rank(matrices, "real")).tolist() == planted


def test_real_rank_detects_exact_dependencies():
    rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [5.0, 7.0, 9.0]], np.float32)
    assert int(fields.rank(rows, "real")) == 2
    assert int(fields.row_echelon(rows, "real").rank) == 2
    assert int(fields.rank(np.zeros((3, 4), np.float32), "real")) == 0


def _class_supports(windows, sizes, scheme):
    classes = np.repeat(np.arange(len(sizes)), sizes)
    if scheme == "now":
        return classes[None, None, :] == windows[..., None]
    return classes[None, None, :] <= windows[..., None]


def _large_field_recovered(windows, sizes, scheme):
    """The large-field rule for NOW (n_l >= k_l) and EW (rank recursion) windows."""
    counts = np.stack([(windows == c).sum(-1) for c in range(len(sizes))], -1)
    if scheme == "now":
        by_class = counts >= np.array(sizes)
    else:
        totals = np.cumsum(sizes)
        rank, full = np.zeros(windows.shape[0]), []
        for c in range(len(sizes)):
            rank = np.minimum(rank + counts[:, c], totals[c])
            full.append(rank == totals[c])
        full = np.stack(full, -1)
        by_class = np.flip(np.cumsum(np.flip(full, -1), -1), -1) > 0
    return np.repeat(by_class, sizes, axis=-1)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_real_recoverable_matches_large_field_rule(scheme):
    sizes, trials, rows = (3, 3, 3), 512, 8
    rng = np.random.default_rng(11)
    windows = rng.choice(3, size=(trials, rows), p=[0.5, 0.3, 0.2])
    support = _class_supports(windows, sizes, scheme)
    coefficients = rng.standard_normal((trials, rows, 9)).astype(np.float32) * support
    got = np.asarray(fields.recoverable(coefficients, "real"))
    expected = _large_field_recovered(windows, sizes, scheme)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------
# Compilation.


@pytest.mark.parametrize("q", [2, 2**31 - 1, "real"])
def test_no_retrace_for_new_values(q, count_compiles):
    field = get_field(q)
    first = field.random(jax.random.key(10), (64, 12, 9))
    second = field.random(jax.random.key(11), (64, 12, 9))
    jax.block_until_ready(fields.row_echelon(first, q))
    jax.block_until_ready(fields.recoverable(first, q))
    jax.block_until_ready(fields.rank(first, q))
    with count_compiles() as compiles:
        jax.block_until_ready(fields.row_echelon(second, q))
        jax.block_until_ready(fields.recoverable(second, q))
        jax.block_until_ready(fields.rank(second, field))
    assert compiles == []
