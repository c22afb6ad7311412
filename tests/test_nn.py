"""Tests of uepjax.nn: coded products, their VJP and the Flax layer.

References used here: numpy's stable argsort and `np.array_split` for the blocks of
norm-sorted operands, the partition module's sorted partitions, and the closed-form
expected losses of `uepjax.theory` for the Monte Carlo checks (fixed keys, tolerance
4.5 standard errors of the Monte Carlo mean).
"""

from __future__ import annotations

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uepjax import nn, partition, theory
from uepjax.latency import Exponential

INF = float("inf")


def _matrices(seed, a_shape, b_shape, ties=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=a_shape) * rng.uniform(0.1, 3.0, size=(1, a_shape[1]))
    b = rng.normal(size=b_shape) * rng.uniform(0.1, 3.0, size=(b_shape[0], 1))
    if ties:
        # Zero rows / columns and exact duplicates make many equal norms.
        a[: a_shape[0] // 4] = 0.0
        a[:, : a_shape[1] // 4] = 0.0
        b[:, : b_shape[1] // 4] = 0.0
        a[-1] = a[-2]
        b[:, -1] = b[:, -2]
        b[-1] = b[-2]
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)


def _blocks_of(norms, blocks):
    """Slow reference: block of every entry after a stable descending sort."""
    order = np.argsort(-np.asarray(norms, np.float64), kind="stable")
    block = np.empty(len(order), int)
    for b, part in enumerate(np.array_split(order, blocks)):
        block[part] = b
    return block


def _reference(a, b, coding, recovered):
    """`C_hat` and the classes from numpy, given the recovered sub-products."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a32, b32 = np.asarray(a), np.asarray(b)
    product = a64 @ b64
    recovered = np.asarray(recovered)
    if coding.kind is partition.PartitionKind.RXC:
        n, p = coding.blocks
        rows = _blocks_of(np.sum(a32 * a32, axis=1), n)
        cols = _blocks_of(np.sum(b32 * b32, axis=0), p)
        keep = recovered.reshape(n, p)[rows[:, None], cols[None, :]]
        classes = np.asarray(partition.paper_class_table("rxc", "dnn").classes)
        return np.where(keep, product, 0.0), classes
    (m,) = coding.blocks
    a2, b2 = np.sum(a32 * a32, axis=0), np.sum(b32 * b32, axis=1)
    pairs = _blocks_of(a2 * b2, m)
    energies = np.array(
        [
            np.sqrt(a2[pairs == k].sum()) * np.sqrt(b2[pairs == k].sum())
            for k in range(m)
        ]
    )
    classes = np.asarray(
        partition.classes_by_energy(jnp.asarray(energies), (1, 2, 6)).classes
    )
    keep = recovered[pairs]
    return (a64 * keep[None, :]) @ b64, classes


def _relative(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)


@jax.jit
def _products(keys, a, b, coding):
    """One coded product per key, compiled once per setup structure."""
    return jax.vmap(lambda k: nn._coded_product_jit(k, a, b, coding))(keys)


# --------------------------------------------------------------------------------
# The setup and its validation.


def test_setup_defaults_follow_tables_iii_vii_viii():
    ew = nn.coding_setup("ew", "cxr")
    assert ew.workers == 15 and ew.blocks == (9,)
    assert ew.code.class_sizes == (1, 2, 6)
    np.testing.assert_allclose(ew.code.gamma, [0.40, 0.35, 0.25])
    np.testing.assert_allclose(ew.latency.load, 9 / 15)
    np.testing.assert_allclose(ew.latency.rate, 0.5)
    assert nn.coding_setup("uncoded", "rxc").workers == 9
    assert nn.coding_setup("repetition", "rxc").workers == 18
    assert nn.coding_setup("now", "rxc").blocks == (3, 3)
    np.testing.assert_allclose(nn.coding_setup("repetition", "rxc").latency.load, 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scheme="fountain"), "scheme must be one of"),
        (dict(partition_kind="rows"), "kind must be one of"),
        (dict(mode="faithful"), "needs field='real'"),
        (dict(mode="exact"), "mode must be one of"),
        (dict(scheme="uncoded", workers=10), "workers must be 9"),
        (dict(class_sizes=(3, 3), gamma=(0.5, 0.5)), "must add up to the 9"),
        (dict(deadline=-1.0), "deadline must be a non-negative"),
        (dict(gamma=(0.5, 0.3, 0.1)), "gamma must sum to 1"),
        (dict(scheme="mds", field=13), "needs a field of more than 15"),
        (dict(field="complex"), "field must be 'large'"),
        (dict(blocks=(3,)), r"blocks must be \(N, P\)"),
    ],
)
def test_bad_setups_are_rejected_with_a_clear_message(kwargs, message):
    kwargs = {"scheme": "ew", "partition_kind": "rxc", **kwargs}
    with pytest.raises(ValueError, match=message):
        nn.coding_setup(**kwargs)


def test_bad_operands_are_rejected():
    coding = nn.coding_setup("ew", "rxc")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="typed PRNG key"):
        nn.coded_matmul(0, jnp.ones((6, 4)), jnp.ones((4, 6)), coding)
    with pytest.raises(ValueError, match="inner dimensions must agree"):
        nn.coded_matmul(key, jnp.ones((6, 4)), jnp.ones((5, 6)), coding)
    with pytest.raises(ValueError, match="2-D matrices"):
        nn.coded_matmul(key, jnp.ones((6,)), jnp.ones((6, 6)), coding)
    with pytest.raises(ValueError, match=r"N=3 blocks, which needs at least 3"):
        nn.coded_matmul(key, jnp.ones((2, 4)), jnp.ones((4, 6)), coding)
    cxr = nn.coding_setup("ew", "cxr")
    with pytest.raises(ValueError, match=r"inner dimension into M=9 blocks"):
        nn.coded_matmul(key, jnp.ones((6, 8)), jnp.ones((8, 6)), cxr)


# --------------------------------------------------------------------------------
# The fast product against slow references.


def test_generous_deadline_gives_the_exact_product():
    # Uneven shapes: 64 rows = 22 + 21 + 21 and 100 columns = 34 + 33 + 33.
    a, b = _matrices(3, (64, 20), (20, 100), ties=True)
    coding = nn.coding_setup("uncoded", "rxc", deadline=INF)
    result = nn.coded_product(jax.random.key(1), a, b, coding)
    assert bool(jnp.all(result.recovered))
    assert int(result.arrivals) == coding.workers
    np.testing.assert_array_equal(result.product, jnp.matmul(a, b))


@pytest.mark.parametrize(
    "kind, a_shape, b_shape, ties",
    [
        ("rxc", (64, 20), (20, 100), True),  # 64 = 22 + 21 + 21, 100 = 34 + 33 + 33
        ("cxr", (16, 64), (64, 12), True),  # inner 64 = 8 + 7 * 8
        ("cxr", (16, 10), (10, 12), False),  # inner 10 = 2 + 8 * 1
    ],
)
def test_fast_product_keeps_the_recovered_blocks_of_the_sorted_operands(
    kind, a_shape, b_shape, ties
):
    a, b = _matrices(3, a_shape, b_shape, ties=ties)
    coding = nn.coding_setup("ew", kind, deadline=2.0)
    keys = jax.random.split(jax.random.key(4), 6)
    results = _products(keys, a, b, coding)
    assert 0 < int(jnp.sum(results.recovered)) < results.recovered.size
    for t in range(keys.shape[0]):
        expected, classes = _reference(a, b, coding, results.recovered[t])
        np.testing.assert_array_equal(results.classes[t], classes)
        assert _relative(results.product[t], expected) < 1e-5


@pytest.mark.parametrize("kind", ["rxc", "cxr"])
def test_block_assignment_equals_the_partition_modules_sort(kind):
    # The norm-sorted partition with one block gives the permutation; cutting that
    # order with np.array_split is what the fast path must reproduce, ties included
    # (block starts on repeated values) and without ties (the short cut of unique
    # values).
    for seed, shape, ties in ((5, (40, 22), True), (6, (40, 22), False)):
        a, b = _matrices(seed, shape, shape[::-1], ties=ties)
        if kind == "rxc":
            ordered = partition.partition_rxc(a, b, 1, 1, sort_by_norm=True)
            permutation = np.asarray(ordered.row_permutation)
            norms = partition.squared_norms(a, 1)
            blocks = 3
        else:
            ordered = partition.partition_cxr(a, b, 1, sort_by_norm=True)
            permutation = np.asarray(ordered.inner_permutation)
            norms = partition.squared_norms(a, 0) * partition.squared_norms(b, 1)
            blocks = 9
        expected = np.empty(len(permutation), int)
        for block, part in enumerate(np.array_split(permutation, blocks)):
            expected[part] = block
        layout = nn._layout(len(permutation), blocks)
        (got,) = jax.jit(lambda v, layout=layout: nn._blocks_by_rank([v], [layout]))(
            norms
        )
        np.testing.assert_array_equal(got, expected)


def test_block_assignment_of_vectors_sorted_together():
    # Vectors of other lengths and numbers of blocks share one sort. Zero ties (which
    # the sort keys resolve) and positive ties (which the exact count resolves) cross
    # block starts, and a longest vector with a single block stays in block 0.
    rng = np.random.default_rng(12)
    zeros = rng.permutation(np.concatenate([np.zeros(30), rng.uniform(1, 2, 10)]))
    positive_ties = rng.permutation(np.repeat(rng.uniform(1, 2, 4), 5))
    plain, single = rng.uniform(0, 1, 9), rng.uniform(0, 1, 50)
    for vectors, blocks in (
        ((zeros, plain, single), (4, 9, 1)),
        ((zeros, positive_ties, plain, single), (4, 3, 9, 1)),
        ((single, positive_ties), (1, 3)),
    ):
        layouts = [nn._layout(len(v), k) for v, k in zip(vectors, blocks, strict=True)]
        by_rank = jax.jit(functools.partial(nn._blocks_by_rank, layouts=layouts))
        got = by_rank([jnp.asarray(v, jnp.float32) for v in vectors])
        for v, k, g in zip(vectors, blocks, got, strict=True):
            np.testing.assert_array_equal(g, _blocks_of(v, k))


# --------------------------------------------------------------------------------
# Faithful mode: real encoding and decoding.


@pytest.mark.parametrize("scheme, kind", [("now", "rxc"), ("ew", "cxr")])
def test_fast_and_faithful_modes_agree_up_to_decoding_error(scheme, kind):
    a, b = _matrices(9, (64, 20), (20, 100), ties=True)
    fast = nn.coding_setup(scheme, kind, deadline=2.5, field="real")
    faithful = nn.coding_setup(
        scheme, kind, deadline=2.5, field="real", mode="faithful"
    )
    keys = jax.random.split(jax.random.key(10), 6)
    got_fast = _products(keys, a, b, fast)
    got_faithful = _products(keys, a, b, faithful)
    np.testing.assert_array_equal(got_fast.recovered, got_faithful.recovered)
    np.testing.assert_array_equal(got_fast.classes, got_faithful.classes)
    assert bool(jnp.any(got_fast.recovered))
    errors = [
        _relative(got_faithful.product[t], got_fast.product[t])
        for t in range(keys.shape[0])
    ]
    # float32 rounding amplified by the conditioning of the received coefficient
    # rows: real rows lose a few digits, and that error is visible (the faithful
    # product is not the exact one).
    assert 1e-9 < max(errors) < 1e-3, errors


# --------------------------------------------------------------------------------
# Monte Carlo against the large-field theory.

_TRIALS = 2000


def _code_order_gram(a, b, kind):
    if kind == "rxc":
        part = partition.partition_rxc(a, b, 3, 3, sort_by_norm=True)
        table = partition.paper_class_table("rxc", "dnn")
    else:
        part = partition.partition_cxr(a, b, 9, sort_by_norm=True)
        energies = partition.block_norm_products(part)
        table = partition.paper_class_table("cxr", "dnn", energies=energies)
    return table.reorder_gram(partition.gram_matrix(part))


@jax.jit
def _losses(keys, a, b, coding):
    exact = jnp.matmul(a, b)
    total = jnp.sum(exact**2)

    def loss(key):
        product = nn._coded_product_jit(key, a, b, coding).product
        return jnp.sum((exact - product) ** 2) / total

    return jax.vmap(loss)(keys)


def _mc_loss(a, b, coding, seed):
    keys = jax.random.split(jax.random.key(seed), _TRIALS)
    values = np.asarray(_losses(keys, a, b, coding), np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def _theory_loss(coding, gram, deadline):
    scheme = coding.scheme.value
    if scheme in ("now", "ew"):
        return theory.expected_loss(
            scheme,
            coding.code.class_sizes,
            coding.code.gamma,
            None,
            coding.workers,
            coding.latency,
            deadline,
            gram=gram,
            normalized=True,
        )
    if scheme == "mds":
        return theory.mds_expected_loss(9, coding.workers, coding.latency, deadline)
    repetitions = 2 if scheme == "repetition" else 1
    return theory.repetition_expected_loss(
        None, repetitions, coding.latency, deadline, gram=gram, normalized=True
    )


def _pair(kind):
    # Divisible shapes, so the partition module's sorted partition is the reference.
    if kind == "rxc":
        return _matrices(13, (30, 12), (12, 27))
    return _matrices(13, (20, 18), (18, 16))


@pytest.mark.parametrize(
    "scheme, kind",
    [
        ("uncoded", "rxc"),
        ("now", "rxc"),
        ("ew", "cxr"),
        ("mds", "cxr"),
    ],
)
def test_expected_loss_matches_theory(scheme, kind):
    a, b = _pair(kind)
    deadline = 1.5 if scheme == "mds" else 1.0
    coding = nn.coding_setup(scheme, kind, deadline=deadline)
    mean, error = _mc_loss(a, b, coding, seed=14)
    expected = float(_theory_loss(coding, _code_order_gram(a, b, kind), deadline))
    # 4.5 standard errors of the Monte Carlo mean.
    assert abs(mean - expected) < 4.5 * error + 1e-6, (mean, expected, error)


def test_a_large_prime_field_decodes_like_the_large_field_model():
    a, b = _pair("cxr")
    coding = nn.coding_setup("ew", "cxr", deadline=1.0, field=65521)
    mean, error = _mc_loss(a, b, coding, seed=16)
    expected = float(_theory_loss(coding, _code_order_gram(a, b, "cxr"), 1.0))
    assert abs(mean - expected) < 4.5 * error + 1e-6, (mean, expected, error)


def test_binary_field_recovers_less_than_a_large_field():
    a, b = _pair("cxr")
    binary, _ = _mc_loss(a, b, nn.coding_setup("ew", "cxr", deadline=2.0, field=2), 18)
    large, error = _mc_loss(a, b, nn.coding_setup("ew", "cxr", deadline=2.0), 18)
    assert binary > large + 4.5 * error


def test_uncoded_and_repetition_lose_the_same_on_average():
    # With exponential times and Omega = K / W, the first of two copies arrives like
    # one uncoded worker (Sec. VII-C): the two schemes have the same expected loss.
    a, b = _pair("rxc")
    gram = _code_order_gram(a, b, "rxc")
    uncoded = nn.coding_setup("uncoded", "rxc", deadline=0.7)
    repeated = nn.coding_setup("repetition", "rxc", deadline=0.7)
    np.testing.assert_allclose(
        _theory_loss(uncoded, gram, 0.7), _theory_loss(repeated, gram, 0.7), rtol=1e-5
    )


# --------------------------------------------------------------------------------
# jit, vmap and compilation.


def test_new_probabilities_deadlines_and_rates_do_not_retrace():
    traces = []

    @jax.jit
    def product(key, a, b, coding):
        traces.append(1)
        return nn.coded_matmul(key, a, b, coding)

    a, b = _pair("rxc")
    for t, (deadline, gamma, rate) in enumerate(
        [
            (1.0, (0.4, 0.35, 0.25), 0.5),
            (0.3, (0.2, 0.3, 0.5), 0.5),
            (2.0, (1, 0, 0), 3),
        ]
    ):
        coding = nn.coding_setup(
            "ew", "rxc", deadline=deadline, gamma=gamma, latency=Exponential(rate)
        )
        product(jax.random.key(t), a, b, coding).block_until_ready()
    assert len(traces) == 1


def test_vmap_over_keys_and_over_deadlines():
    a, b = _matrices(3, (64, 20), (20, 100), ties=True)
    keys = jax.random.split(jax.random.key(22), 6)
    coding = nn.coding_setup("ew", "rxc", deadline=1.0)
    batched = _products(keys, a, b, coding).product
    for t in (0, 5):
        np.testing.assert_allclose(
            batched[t], nn.coded_matmul(keys[t], a, b, coding), rtol=1e-6, atol=1e-6
        )
    codings = [nn.coding_setup("ew", "rxc", deadline=d) for d in (0.0, INF)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *codings)
    results = jax.jit(jax.vmap(lambda c: nn._coded_product_jit(keys[0], a, b, c)))(
        stacked
    )
    np.testing.assert_array_equal(results.arrivals, [0, 15])
    np.testing.assert_array_equal(
        results.product[0], jnp.zeros_like(results.product[0])
    )


# --------------------------------------------------------------------------------
# The VJP and the Flax layer.


def test_vjp_is_the_pair_of_coded_backward_products():
    x, kernel = _matrices(23, (64, 30), (30, 20))
    g = jnp.asarray(np.random.default_rng(24).normal(size=(64, 20)), jnp.float32)
    coding = nn.coding_setup("ew", "cxr", deadline=1.0)
    key = jax.random.key(25)

    @jax.jit
    def forward_and_back(x, kernel, g):
        y, vjp = jax.vjp(lambda x, k: nn.coded_linear(key, x, k, coding), x, kernel)
        return y, vjp(g)

    y, (grad_x, grad_kernel) = forward_and_back(x, kernel, g)
    np.testing.assert_allclose(y, jnp.matmul(x, kernel), rtol=1e-6, atol=1e-6)
    products = nn.backward_products(key, x, kernel, g, coding)
    np.testing.assert_allclose(grad_x, products[0].product, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_kernel, products[1].product, rtol=1e-6, atol=1e-6)
    expected_x, _ = _reference(g, kernel.T, coding, products[0].recovered)
    expected_kernel, _ = _reference(x.T, g, coding, products[1].recovered)
    assert _relative(grad_x, expected_x) < 1e-5
    assert _relative(grad_kernel, expected_kernel) < 1e-5


def _sin_loss(x, kernel, key, coding):
    if coding is None:
        y = x @ kernel
    else:
        y = nn.coded_linear(key, x, kernel, coding)
    return jnp.sum(jnp.sin(y))


_gradient = jax.jit(jax.grad(_sin_loss, argnums=(0, 1)))


def test_gradients_follow_the_deadline():
    x, kernel = _matrices(26, (64, 30), (30, 20))
    key = jax.random.key(27)
    exact = _gradient(x, kernel, key, None)
    for deadline in (0.0, INF):
        coding = nn.coding_setup("uncoded", "rxc", deadline=deadline)
        coded = _gradient(x, kernel, key, coding)
        for got, want in zip(coded, exact, strict=True):
            if deadline == 0.0:
                np.testing.assert_array_equal(got, jnp.zeros_like(got))
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _Net(linen.Module):
    coding: nn.CodingSetup | None

    @linen.compact
    def __call__(self, x):
        x = linen.relu(nn.CodedDense(16, self.coding)(x))
        return nn.CodedDense(10, self.coding)(x)


def test_coded_dense_trains_in_a_flax_model_with_any_optax_optimizer():
    rng = np.random.default_rng(28)
    x = jnp.asarray(rng.normal(size=(64, 12)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=64), jnp.int32)
    model = _Net(nn.coding_setup("ew", "cxr", deadline=2.0))
    params = model.init(jax.random.key(0), x[:1])  # no straggler stream needed
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, key):
        def loss(params):
            logits = model.apply(params, x, rngs={nn.STREAM: key})
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, labels
            ).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    losses = []
    for t in range(25):
        params, state, value = step(params, state, jax.random.key(t))
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="needs the random stream 'stragglers'"):
        model.apply(params, x)


def test_coded_dense_without_coding_is_a_plain_dense_layer():
    x = jnp.asarray(np.random.default_rng(29).normal(size=(8, 12)), jnp.float32)
    params = _Net(None).init(jax.random.key(1), x)

    class Plain(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.relu(linen.Dense(16, name="CodedDense_0")(x))
            return linen.Dense(10, name="CodedDense_1")(x)

    np.testing.assert_allclose(
        _Net(None).apply(params, x), Plain().apply(params, x), rtol=1e-6, atol=1e-6
    )


def test_layer_names_the_product_that_does_not_fit():
    layer = nn.CodedDense(2, nn.coding_setup("ew", "rxc"))
    x = jnp.ones((64, 12))
    params = layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"X\^T G \(eq\. 27\).*P=3"):
        layer.apply(params, x, rngs={nn.STREAM: jax.random.key(1)})
