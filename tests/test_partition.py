"""Tests for uepjax.partition: blocks, Gram matrices, losses, class tables, synthetic.

References are slow and obvious: numpy float64 slices and products of the original
matrices. Statistical tests use a fixed key and a tolerance of 4.5 standard errors.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uepjax import partition as pt

# A float32 Gram entry carries a relative error of about 1e-7 (measured); 2e-5 of the
# scale of the terms involved leaves room without hiding a wrong term.
RTOL = 2e-5


def _gaussian(seed, shape, scales=None):
    x = np.random.default_rng(seed).standard_normal(shape)
    return x if scales is None else x * scales


def _rxc_reference(a, b, n, p, rows, cols, recovered):
    """C_hat by hand: tiles of the row/column-permuted product, then un-permuted."""
    a_sorted = a[rows]
    b_sorted = b[:, cols]
    u, q = a.shape[0] // n, b.shape[1] // p
    c_sorted = np.zeros((a.shape[0], b.shape[1]))
    for i in range(n):
        for j in range(p):
            if recovered[i * p + j]:
                c_sorted[i * u : (i + 1) * u, j * q : (j + 1) * q] = (
                    a_sorted[i * u : (i + 1) * u] @ b_sorted[:, j * q : (j + 1) * q]
                )
    c_hat = np.zeros_like(c_sorted)
    c_hat[np.ix_(rows, cols)] = c_sorted
    return c_hat


def _cxr_reference(a, b, m, inner, recovered):
    """C_hat by hand: the sum of the kept rank-H terms of the permuted pairs."""
    h = a.shape[1] // m
    c_hat = np.zeros((a.shape[0], b.shape[1]))
    for i in range(m):
        if recovered[i]:
            pairs = inner[i * h : (i + 1) * h]
            c_hat += a[:, pairs] @ b[pairs]
    return c_hat


def _masks(seed, k, count):
    masks = np.random.default_rng(seed).random((count, k)) < 0.5
    masks[0] = False
    masks[1] = True
    return masks


def _rxc_case(u, h, q, seed):
    # Rows and columns of very different norms, so that sorting permutes them.
    a = _gaussian(seed, (3 * u, h), np.exp(np.linspace(-1, 1, 3 * u))[::-1, None])
    b = _gaussian(seed + 1, (h, 2 * q), np.exp(np.linspace(-1, 1, 2 * q))[None, :])
    rng = np.random.default_rng(seed + 2)
    return a[rng.permutation(3 * u)], b[:, rng.permutation(2 * q)]


def _cxr_case(seed):
    """Four blocks with strong cross terms: block 1 nearly cancels block 0."""
    u, h, q = 12, 5, 10
    rng = np.random.default_rng(seed)
    a0, b0 = rng.standard_normal((u, h)), rng.standard_normal((h, q))
    blocks_a = [a0, -a0 + 0.01 * rng.standard_normal((u, h))]
    blocks_b = [b0, b0 + 0.01 * rng.standard_normal((h, q))]
    blocks_a += [a0 + rng.standard_normal((u, h)), 3.0 * rng.standard_normal((u, h))]
    blocks_b += [b0 + rng.standard_normal((h, q)), 0.3 * rng.standard_normal((h, q))]
    return np.concatenate(blocks_a, axis=1), np.concatenate(blocks_b, axis=0)


# ------------------------------------------------------------------ partitions


def test_rxc_blocks_are_slices_of_the_inputs():
    a, b = _gaussian(0, (6, 4)), _gaussian(1, (4, 10))
    part = pt.partition_rxc(a, b, 3, 2)

    assert part.kind is pt.PartitionKind.RXC
    assert part.grid == (3, 2) and part.num_subproducts == 6
    assert (part.block_rows, part.block_inner, part.block_cols) == (2, 4, 5)
    assert part.output_shape == (6, 10)
    np.testing.assert_allclose(part.a_blocks[1], a[2:4], rtol=1e-6)
    np.testing.assert_allclose(part.b_blocks[1], b[:, 5:], rtol=1e-6)
    for perm, size in ((part.row_permutation, 6), (part.column_permutation, 10)):
        np.testing.assert_array_equal(perm, np.arange(size))


def test_cxr_blocks_are_slices_of_the_inputs():
    a, b = _gaussian(0, (5, 6)), _gaussian(1, (6, 4))
    part = pt.partition_cxr(a, b, 3)

    assert part.kind is pt.PartitionKind.CXR
    assert part.grid == (3,) and part.num_subproducts == 3
    assert (part.block_rows, part.block_inner, part.block_cols) == (5, 2, 4)
    assert part.output_shape == (5, 4)
    np.testing.assert_allclose(part.a_blocks[2], a[:, 4:6], rtol=1e-6)
    np.testing.assert_allclose(part.b_blocks[2], b[4:6], rtol=1e-6)


def test_sort_by_norm_orders_rows_columns_and_pairs():
    a, b = _rxc_case(4, 6, 3, seed=3)
    part = pt.partition_rxc(a, b, 3, 2, sort_by_norm=True)
    row_norms = np.linalg.norm(np.asarray(part.a_blocks).reshape(12, 6), axis=1)
    col_norms = np.linalg.norm(np.asarray(part.b_blocks).transpose(1, 0, 2), axis=0)
    assert np.all(np.diff(row_norms) <= 1e-6)
    assert np.all(np.diff(col_norms.reshape(-1)) <= 1e-6)
    assert not np.array_equal(part.row_permutation, np.arange(12))
    np.testing.assert_allclose(
        part.a_blocks.reshape(12, 6), a[np.asarray(part.row_permutation)], rtol=1e-6
    )

    a, b = _cxr_case(4)
    part = pt.partition_cxr(a, b, 4, sort_by_norm=True)
    inner = np.asarray(part.inner_permutation)
    pair_norms = np.linalg.norm(a[:, inner], axis=0) * np.linalg.norm(b[inner], axis=1)
    assert np.all(np.diff(pair_norms) <= 1e-5)
    assert not np.array_equal(inner, np.arange(20))


def test_sort_keeps_ties_in_original_order():
    part = pt.partition_rxc(np.ones((4, 2)), np.ones((2, 4)), 2, 2, sort_by_norm=True)
    np.testing.assert_array_equal(part.row_permutation, np.arange(4))
    np.testing.assert_array_equal(part.column_permutation, np.arange(4))


@pytest.mark.parametrize("sort_by_norm", [False, True])
def test_permutation_round_trip_gives_the_product(sort_by_norm):
    a, b = _rxc_case(5, 7, 4, seed=5)
    part = pt.partition_rxc(a, b, 3, 2, sort_by_norm=sort_by_norm)
    c_hat = pt.reconstruct(part, np.ones(6, bool))
    np.testing.assert_allclose(c_hat, a @ b, rtol=1e-4, atol=1e-4 * np.abs(a @ b).max())

    a, b = _cxr_case(6)
    part = pt.partition_cxr(a, b, 4, sort_by_norm=sort_by_norm)
    c_hat = pt.reconstruct(part, np.ones(4, bool))
    np.testing.assert_allclose(c_hat, a @ b, rtol=1e-4, atol=1e-4 * np.abs(a @ b).max())


def test_subproducts_tile_or_sum_to_the_product():
    a, b = _rxc_case(4, 5, 3, seed=7)
    part = pt.partition_rxc(a, b, 3, 2)
    tiles = np.asarray(pt.subproducts(part))
    assert tiles.shape == (6, 4, 3)
    np.testing.assert_allclose(tiles[3], a[4:8] @ b[:, 3:6], rtol=1e-5, atol=1e-5)

    a, b = _cxr_case(8)
    part = pt.partition_cxr(a, b, 4)
    terms = np.asarray(pt.subproducts(part))
    assert terms.shape == (4, 12, 10)
    np.testing.assert_allclose(terms[2], a[:, 10:15] @ b[10:15], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms.sum(0), a @ b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ Gram and losses

# rxc sizes chosen so that each exact route for the tile energies is taken:
# (U, H, Q) = (4, 40, 3) forms the tiles; (40, 3, 30) uses [H, H] block Gram matrices.
RXC_SIZES = [(4, 40, 3), (40, 3, 30)]


@pytest.mark.parametrize("sizes", RXC_SIZES)
@pytest.mark.parametrize("sort_by_norm", [False, True])
def test_rxc_gram_loss_equals_explicit_reconstruction(sizes, sort_by_norm):
    a, b = _rxc_case(*sizes, seed=11)
    part = pt.partition_rxc(a, b, 3, 2, sort_by_norm=sort_by_norm)
    gram = np.asarray(pt.gram_matrix(part))
    assert gram.shape == (6, 6) and gram.dtype == np.float32
    np.testing.assert_array_equal(gram, np.diag(np.diag(gram)))

    rows = np.asarray(part.row_permutation)
    cols = np.asarray(part.column_permutation)
    masks = _masks(12, 6, 16)
    losses = np.asarray(pt.loss(jnp.asarray(~masks), gram))
    diag_losses = np.asarray(pt.loss(jnp.asarray(~masks), np.diag(gram)))
    c_hats = np.asarray(pt.reconstruct(part, jnp.asarray(masks)))
    for mask, value, fast, c_hat in zip(
        masks, losses, diag_losses, c_hats, strict=True
    ):
        reference = _rxc_reference(a, b, 3, 2, rows, cols, mask)
        scale = np.abs(a @ b).max()
        np.testing.assert_allclose(c_hat, reference, rtol=1e-4, atol=1e-5 * scale)
        exact = np.sum((a @ b - reference) ** 2)
        total = np.sum((a @ b) ** 2)
        np.testing.assert_allclose(value, exact, rtol=RTOL, atol=RTOL * total)
        np.testing.assert_allclose(fast, value, rtol=1e-6, atol=1e-6 * total)


@pytest.mark.parametrize("sort_by_norm", [False, True])
def test_cxr_gram_loss_equals_explicit_reconstruction(sort_by_norm):
    a, b = _cxr_case(13)
    part = pt.partition_cxr(a, b, 4, sort_by_norm=sort_by_norm)
    gram = np.asarray(pt.gram_matrix(part))
    inner = np.asarray(part.inner_permutation)

    # The case must exercise large cross terms, negative ones included (sorting the
    # pairs by norm mixes the blocks and weakens them).
    diag = np.diag(gram)
    correlation = gram / np.sqrt(np.outer(diag, diag))
    negative, positive = (0.1, 0.1) if sort_by_norm else (0.9, 0.4)
    assert correlation.min() < -negative
    assert (correlation - np.eye(4)).max() > positive
    np.testing.assert_allclose(gram, gram.T, rtol=0, atol=0)

    masks = np.array(
        [[int(bit) for bit in np.binary_repr(i, 4)] for i in range(16)], bool
    )
    losses = np.asarray(pt.loss(jnp.asarray(~masks), gram))
    c_hats = np.asarray(pt.reconstruct(part, jnp.asarray(masks)))
    total = np.sum((a @ b) ** 2)
    for mask, value, c_hat in zip(masks, losses, c_hats, strict=True):
        reference = _cxr_reference(a, b, 4, inner, mask)
        np.testing.assert_allclose(c_hat, reference, rtol=1e-4, atol=1e-4)
        missing = _cxr_reference(a, b, 4, inner, ~mask)
        exact = np.sum(missing**2)
        # The scale of an entry of u^T G u is the sum of |G_kj| it adds up.
        scale = np.abs(gram)[np.ix_(~mask, ~mask)].sum()
        np.testing.assert_allclose(value, exact, rtol=0, atol=RTOL * scale + 1e-30)
        assert value >= 0.0
    np.testing.assert_allclose(
        pt.normalized_loss(jnp.zeros(4, bool), gram), 0.0, atol=0
    )
    np.testing.assert_allclose(
        pt.normalized_loss(jnp.ones(4, bool), gram), 1.0, rtol=RTOL
    )
    np.testing.assert_allclose(gram.sum(), total, rtol=RTOL)


def test_energies_and_block_norm_products_against_numpy():
    a, b = _rxc_case(4, 5, 3, seed=17)
    part = pt.partition_rxc(a, b, 3, 2)
    energies = np.asarray(pt.subproduct_energies(part))
    expected = [
        np.sum((a[4 * n : 4 * n + 4] @ b[:, 3 * p : 3 * p + 3]) ** 2)
        for n in range(3)
        for p in range(2)
    ]
    np.testing.assert_allclose(energies, expected, rtol=RTOL)
    norms = np.asarray(pt.block_norm_products(part))
    np.testing.assert_allclose(
        norms[5], np.linalg.norm(a[8:12]) * np.linalg.norm(b[:, 3:6]), rtol=1e-5
    )
    assert np.all(np.sqrt(energies) <= norms * (1 + 1e-5))

    a, b = _cxr_case(18)
    part = pt.partition_cxr(a, b, 4)
    np.testing.assert_allclose(
        pt.subproduct_energies(part), np.diag(pt.gram_matrix(part)), rtol=RTOL
    )
    np.testing.assert_allclose(
        pt.block_norm_products(part)[1],
        np.linalg.norm(a[:, 5:10]) * np.linalg.norm(b[5:10]),
        rtol=1e-5,
    )


def test_normalized_loss_batches_and_handles_zero_product():
    gram = jnp.asarray([[4.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    masks = np.random.default_rng(19).random((2, 5, 3)) < 0.5
    values = np.asarray(pt.normalized_loss(jnp.asarray(masks), gram))
    assert values.shape == (2, 5)
    u = masks.astype(np.float64)
    reference = np.einsum("...k,kj,...j->...", u, np.asarray(gram), u) / 10.0
    np.testing.assert_allclose(values, reference, rtol=1e-6)

    zero = pt.normalized_loss(jnp.ones(3, bool), jnp.zeros((3, 3)))
    assert float(zero) == 0.0


def test_gram_and_normalized_loss_jit_without_retrace():
    traces = {"gram": 0, "loss": 0}

    def gram_fn(part):
        traces["gram"] += 1
        return pt.gram_matrix(part)

    def loss_fn(mask, gram):
        traces["loss"] += 1
        return pt.normalized_loss(mask, gram)

    gram_jit = jax.jit(gram_fn)
    loss_jit = jax.jit(loss_fn)
    for kind, seed in (("rxc", 21), ("cxr", 22)):
        for offset in range(2):
            if kind == "rxc":
                a, b = _rxc_case(4, 5, 3, seed=seed + offset)
                part = pt.partition_rxc(a, b, 3, 2, sort_by_norm=True)
            else:
                a, b = _cxr_case(seed + offset)
                part = pt.partition_cxr(a, b, 4, sort_by_norm=True)
            gram = gram_jit(part)
            scale = float(jnp.max(jnp.diag(gram)))
            np.testing.assert_allclose(
                gram, pt.gram_matrix(part), rtol=RTOL, atol=RTOL * scale
            )
            mask = jnp.asarray(_masks(seed + offset, part.num_subproducts, 8))
            np.testing.assert_allclose(
                loss_jit(mask, gram), pt.normalized_loss(mask, gram), rtol=1e-6
            )
    assert traces == {"gram": 2, "loss": 2}


def test_partition_under_jit_with_sorting():
    a, b = _cxr_case(23)
    eager = pt.gram_matrix(pt.partition_cxr(a, b, 4, sort_by_norm=True))
    traced = jax.jit(
        lambda x, y: pt.gram_matrix(pt.partition_cxr(x, y, 4, sort_by_norm=True))
    )
    scale = float(jnp.max(jnp.diag(eager)))
    np.testing.assert_allclose(traced(a, b), eager, rtol=RTOL, atol=RTOL * scale)


# ------------------------------------------------------------ importance, tables


def test_importance_levels():
    assert pt.importance_levels(3).tolist() == [0, 1, 2]
    assert pt.importance_levels(9).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pt.importance_levels(10).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    norms = [0.5, 3.0, 0.1, 2.0, 2.0, 0.2]
    assert pt.importance_levels(6, 3, norms).tolist() == [1, 0, 2, 0, 1, 2]


LEVEL = {"h": 0, "m": 1, "l": 2}


def _pairs_table(groups):
    """[3, 3] classes from the paper's lists of level pairs, e.g. ['hh', 'hm']."""
    table = np.full((3, 3), -1)
    for cls, pairs in enumerate(groups):
        for pair in pairs:
            table[LEVEL[pair[0]], LEVEL[pair[1]]] = cls
    assert np.all(table >= 0)
    return table


def test_paper_tables_section_vi():
    rxc = pt.paper_class_table("rxc", "synthetic")
    expected = _pairs_table(
        [["hh", "hm", "mh"], ["mm", "hl", "lh"], ["ml", "lm", "ll"]]
    )
    np.testing.assert_array_equal(np.asarray(rxc.classes).reshape(3, 3), expected)
    assert rxc.class_sizes == (3, 3, 3)

    cxr = pt.paper_class_table("cxr", pt.PaperSetting.SYNTHETIC)
    assert cxr.classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert cxr.class_sizes == (3, 3, 3)
    assert cxr.order.tolist() == list(range(9))


def test_paper_tables_table_viii():
    rxc = pt.paper_class_table("rxc", "dnn")
    expected = _pairs_table(
        [["hh"], ["hm", "mh"], ["hl", "lh", "mm", "ml", "lm", "ll"]]
    )
    np.testing.assert_array_equal(np.asarray(rxc.classes).reshape(3, 3), expected)
    assert rxc.class_sizes == (1, 2, 6)
    assert rxc.order.tolist() == [0, 1, 3, 2, 4, 5, 6, 7, 8]

    energies = np.array([0.3, 9.0, 0.2, 4.0, 0.1, 5.0, 0.0, 0.4, 0.5])
    cxr = pt.paper_class_table("cxr", "dnn", energies=energies)
    assert cxr.class_sizes == (1, 2, 6)
    assert cxr.order.tolist()[:3] == [1, 5, 3]
    assert cxr.classes.tolist() == [2, 0, 2, 1, 2, 1, 2, 2, 2]
    unsorted = pt.paper_class_table("cxr", "dnn")
    assert unsorted.classes.tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]


def test_class_table_from_indices_and_sizes():
    table = pt.class_table([[1, 0, 2], [2, 1, 2]])
    assert table.class_sizes == (1, 2, 3)
    assert table.order.tolist() == [1, 0, 4, 2, 3, 5]
    assert table.num_classes == 3 and table.num_subproducts == 6
    table = pt.class_table(class_sizes=(2, 1), num_subproducts=3)
    assert table.classes.tolist() == [0, 0, 1]


def test_classes_by_energy_permutation_ties_and_jit():
    energies = jnp.asarray([1.0, 7.0, 3.0, 7.0, 0.5, 2.0])
    table = pt.classes_by_energy(energies, (2, 3, 1))
    assert table.order.tolist() == [1, 3, 2, 5, 0, 4]
    assert table.classes.tolist() == [1, 0, 1, 0, 2, 1]
    sorted_classes = np.asarray(table.classes)[np.asarray(table.order)]
    assert sorted_classes.tolist() == [0, 0, 1, 1, 1, 2]

    traces = []

    def rank(values):
        traces.append(1)
        return pt.classes_by_energy(values, (2, 3, 1))

    rank_jit = jax.jit(rank)
    assert rank_jit(energies).order.tolist() == table.order.tolist()
    assert rank_jit(-energies).order.tolist() == [4, 0, 5, 2, 1, 3]
    assert len(traces) == 1


def test_class_table_reorders_masks_and_gram_consistently():
    a, b = _cxr_case(29)
    part = pt.partition_cxr(a, b, 4)
    gram = pt.gram_matrix(part)
    table = pt.classes_by_energy(pt.subproduct_energies(part), (1, 3))
    masks = jnp.asarray(_masks(30, 4, 10))
    code_masks = table.to_code_order(masks)
    np.testing.assert_array_equal(table.to_partition_order(code_masks), masks)
    np.testing.assert_allclose(
        pt.normalized_loss(code_masks, table.reorder_gram(gram)),
        pt.normalized_loss(masks, gram),
        rtol=1e-6,
    )
    diag = table.reorder_gram(jnp.diag(gram))
    np.testing.assert_allclose(diag, np.diag(table.reorder_gram(gram)), rtol=0)
    assert int(table.order[0]) == int(jnp.argmax(jnp.diag(gram)))


def test_pair_class_table_general_levels():
    table = pt.pair_class_table([0, 1, 1, 0], [1, 0], [[0, 1], [1, 2]])
    assert table.classes.tolist() == [1, 0, 2, 1, 2, 1, 1, 0]
    assert table.class_sizes == (2, 4, 2)


# ------------------------------------------------------------ synthetic data


def _relative_energy_sd(u, h, q):
    """Relative s.d. of ||X Y||_F^2 for Gaussian X [u, h], Y [h, q]:

    Var = 2 u h q (u + h + q + 1) sigma_X^4 sigma_Y^4 (condition on X; Wishart moments).
    """
    return np.sqrt(2.0 * (u + h + q + 1) / (u * h * q))


@pytest.mark.parametrize("kind", ["rxc", "cxr"])
def test_expected_energies_match_empirical_gram(kind):
    a, b = pt.synthetic_matrices(jax.random.key(31), kind)
    if kind == "rxc":
        assert a.shape == (900, 900) and b.shape == (900, 900)
        part = pt.partition_rxc(a, b, 3, 3)
        u, h, q = 300, 900, 300
    else:
        assert a.shape == (900, 900) and b.shape == (900, 900)
        part = pt.partition_cxr(a, b, 9)
        u, h, q = 900, 100, 900
    gram = np.asarray(pt.gram_matrix(part), np.float64)
    expected = np.asarray(pt.expected_energies(kind), np.float64)
    variances = np.asarray(pt.synthetic_variances(kind)[0])
    levels = np.array(pt.LEVEL_VARIANCES)
    if kind == "rxc":
        np.testing.assert_allclose(
            expected, u * h * q * np.outer(levels, levels).reshape(-1), rtol=1e-6
        )
    else:
        np.testing.assert_allclose(expected, u * h * q * variances**2, rtol=1e-6)

    # One draw per sub-product; 4.5 standard errors of the closed-form s.d.
    tolerance = 4.5 * _relative_energy_sd(u, h, q)
    np.testing.assert_allclose(np.diag(gram), expected, rtol=tolerance)

    if kind == "cxr":
        # Independent blocks: E G_mj = 0 and Var G_mj = U Q H^2 s_m^2 s_j^2 with
        # s_m = sigma_A_m sigma_B_m. A reused block would break this.
        s = variances
        sd = np.sqrt(u * q) * h * np.outer(s, s)
        off = ~np.eye(9, dtype=bool)
        assert np.all(np.abs(gram[off]) <= 4.5 * sd[off])


def test_synthetic_blocks_have_their_variances_and_are_independent():
    u, h, q = 40, 30, 50
    a, b = pt.synthetic_matrices(
        jax.random.key(37), "cxr", block_rows=u, block_inner=h, block_cols=q
    )
    a = np.asarray(a, np.float64).reshape(u, 9, h)
    b = np.asarray(b, np.float64).reshape(9, h, q)
    variances = pt.synthetic_variances("cxr")[0]
    # Sample variance of n entries: relative s.d. sqrt(2 / n); 4.5 standard errors.
    np.testing.assert_allclose(
        a.var(axis=(0, 2)), variances, rtol=4.5 * np.sqrt(2 / (u * h))
    )
    np.testing.assert_allclose(
        b.var(axis=(1, 2)), variances, rtol=4.5 * np.sqrt(2 / (h * q))
    )
    # Correlation of two independent blocks of n entries: s.d. 1 / sqrt(n).
    flat = a.transpose(1, 0, 2).reshape(9, -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    correlation = flat @ flat.T
    assert np.all(np.abs(correlation[~np.eye(9, dtype=bool)]) < 4.5 / np.sqrt(u * h))


def test_synthetic_rxc_custom_sizes_and_traced_variances():
    var_a = jnp.asarray([4.0, 1.0])
    var_b = jnp.asarray([1.0, 2.0, 3.0])
    a, b = pt.synthetic_matrices(
        jax.random.key(41),
        "rxc",
        block_rows=3,
        block_inner=5,
        block_cols=2,
        a_variances=var_a,
        b_variances=var_b,
    )
    assert a.shape == (6, 5) and b.shape == (5, 6)
    energies = pt.expected_energies(
        "rxc",
        block_rows=3,
        block_inner=5,
        block_cols=2,
        a_variances=var_a,
        b_variances=var_b,
    )
    np.testing.assert_allclose(energies, 30.0 * np.outer(var_a, var_b).reshape(-1))

    draw = jax.jit(
        lambda key, va: pt.synthetic_matrices(
            key,
            "rxc",
            block_rows=3,
            block_inner=5,
            block_cols=2,
            a_variances=va,
            b_variances=var_b,
        )
    )
    first = draw(jax.random.key(41), var_a)
    np.testing.assert_allclose(first.a, a, rtol=1e-6)
    doubled = draw(jax.random.key(41), 4.0 * var_a)
    np.testing.assert_allclose(doubled.a, 2.0 * np.asarray(a), rtol=1e-6)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: pt.partition_rxc(np.ones((301, 4)), np.ones((4, 6)), 3, 2),
            "a has 301 rows, which row_blocks=3 does not divide",
        ),
        (
            lambda: pt.partition_rxc(np.ones((6, 4)), np.ones((4, 7)), 3, 2),
            "b has 7 columns, which col_blocks=2 does not divide",
        ),
        (
            lambda: pt.partition_cxr(np.ones((5, 10)), np.ones((10, 4)), 3),
            "a has 10 columns, which blocks=3 does not divide",
        ),
        (
            lambda: pt.partition_rxc(np.ones((6, 4)), np.ones((5, 6)), 3, 2),
            "a has 4 columns but b has 5 rows",
        ),
        (
            lambda: pt.partition_cxr(np.ones((6, 4)), np.ones((5, 6)), 2),
            "a has 4 columns but b has 5 rows",
        ),
        (
            lambda: pt.partition_rxc(np.ones((6, 4)), np.ones((4, 6)), 0, 2),
            r"row_blocks must be a positive integer \(got 0\)",
        ),
        (
            lambda: pt.partition_cxr(np.ones((6, 4)), np.ones((4, 6)), 2.0),
            r"blocks must be a positive integer \(got 2.0\)",
        ),
        (
            lambda: pt.partition_rxc(np.ones(6), np.ones((1, 6)), 3, 2),
            r"a must be a 2-D matrix \(got shape \(6,\)\)",
        ),
        (
            lambda: pt.partition_cxr(np.ones((2, 2), complex), np.ones((2, 2)), 2),
            "a must be a real matrix",
        ),
        (
            lambda: pt.gram_matrix(
                pt.partition_cxr(np.ones((2, 4)), np.full((4, 2), np.nan), 2)
            ),
            "b has 8 NaN or infinite entries",
        ),
    ],
)
def test_bad_partition_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nan_and_inf_entries_are_rejected():
    a = np.ones((6, 4))
    a[2, 1] = np.inf
    with pytest.raises(ValueError, match="a has 1 NaN or infinite entries"):
        pt.partition_rxc(a, np.ones((4, 6)), 3, 2)
    a[2, 1] = np.nan
    with pytest.raises(ValueError, match="a has 1 NaN or infinite entries"):
        pt.partition_cxr(a, np.ones((4, 6)), 2)
    with pytest.raises(ValueError, match="gram has 1 NaN"):
        pt.normalized_loss(jnp.ones(2, bool), jnp.asarray([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="energies has 1 NaN"):
        pt.classes_by_energy(jnp.asarray([1.0, jnp.inf]), (1, 1))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pt.class_table([0, 2, 2]), "class 1 is empty"),
        (lambda: pt.class_table([1, 1, 2]), "class 0 is empty"),
        (lambda: pt.class_table([0, -1]), "classes must be non-negative"),
        (lambda: pt.class_table([0.0, 1.0]), "classes must be integer class indices"),
        (
            lambda: pt.class_table(np.zeros((2, 2, 2), int)),
            "classes must be a non-empty",
        ),
        (
            lambda: pt.class_table([0, 1, 1], num_subproducts=9),
            "classes must have 9 entries",
        ),
        (lambda: pt.class_table(), "exactly one of classes and class_sizes"),
        (
            lambda: pt.class_table([0], class_sizes=(1,)),
            "exactly one of classes and class_sizes",
        ),
        (
            lambda: pt.class_table(class_sizes=(3, 0)),
            "class_sizes must be a non-empty sequence of positive integers",
        ),
        (
            lambda: pt.class_table(class_sizes=(3, 3), num_subproducts=9),
            r"class_sizes must sum to the 9 sub-products \(got \(3, 3\)",
        ),
        (
            lambda: pt.classes_by_energy(jnp.ones(4), (1, 2)),
            "class_sizes must sum to the 4 sub-products",
        ),
        (
            lambda: pt.classes_by_energy(jnp.ones((2, 2)), (1, 3)),
            r"energies must be a real \[K\] array",
        ),
        (
            lambda: pt.pair_class_table([0, 3], [0, 1], pt.DNN_PAIR_CLASSES),
            r"a_levels must be a non-empty 1-D array of levels in 0..2",
        ),
        (
            lambda: pt.pair_class_table([0, 1], [0, 1], [0, 1]),
            "pair_classes must be a 2-D integer array",
        ),
        (
            lambda: pt.paper_class_table("rxc", "dnn", energies=np.ones(9)),
            "energies is only used by the cxr table of Table VIII",
        ),
        (lambda: pt.paper_class_table("rcx"), "kind must be one of 'rxc', 'cxr'"),
        (
            lambda: pt.paper_class_table("cxr", "mnist"),
            "setting must be one of 'synthetic', 'dnn'",
        ),
        (
            lambda: pt.importance_levels(2, 3),
            r"num_levels must be at most num_blocks=2 \(got 3\)",
        ),
        (
            lambda: pt.importance_levels(3, 3, [1.0, 2.0]),
            r"block_norms must have shape \(3,\)",
        ),
    ],
)
def test_bad_class_tables(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: pt.loss(jnp.ones(3, jnp.int32), jnp.eye(3)),
            "unrecovered must be a bool array",
        ),
        (
            lambda: pt.normalized_loss(jnp.ones(4, bool), jnp.eye(3)),
            r"unrecovered must have shape \[..., 3\]",
        ),
        (
            lambda: pt.loss(jnp.ones(3, bool), jnp.ones((3, 2))),
            r"gram must be a \[K, K\] Gram matrix or the \[K\] diagonal",
        ),
        (
            lambda: pt.loss(jnp.ones(2, bool), jnp.eye(2, dtype=jnp.int32)),
            "gram must be a real floating array",
        ),
        (
            lambda: pt.reconstruct(
                pt.partition_cxr(np.ones((2, 4)), np.ones((4, 2)), 2), jnp.ones(3, bool)
            ),
            r"recovered must have shape \[..., 2\]",
        ),
        (
            lambda: pt.synthetic_matrices(jax.random.PRNGKey(0), "rxc"),
            "key must be a typed PRNG key from jax.random.key",
        ),
        (
            lambda: pt.synthetic_matrices(
                jax.random.key(0), "rxc", a_variances=[1.0, -1.0]
            ),
            "a_variances must be finite and non-negative",
        ),
        (
            lambda: pt.expected_energies("cxr", a_variances=[1.0, 2.0]),
            "a_variances and b_variances must have one entry per block M",
        ),
        (
            lambda: pt.expected_energies("rxc", block_inner=0),
            r"block_inner must be a positive integer \(got 0\)",
        ),
    ],
)
def test_bad_loss_and_synthetic_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_docstring_examples_run():
    result = doctest.testmod(pt, extraglobs={"jax": jax, "jnp": jnp, "np": np})
    assert result.attempted > 10 and result.failed == 0


def test_squared_norms_of_rows_and_columns():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 23)).astype(np.float32)
    np.testing.assert_allclose(
        pt.squared_norms(jnp.asarray(x), 1),
        np.sum(x.astype(np.float64) ** 2, 1),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        pt.squared_norms(jnp.asarray(x), 0),
        np.sum(x.astype(np.float64) ** 2, 0),
        rtol=1e-6,
    )
