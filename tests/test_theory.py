"""Tests of uepjax.theory against independent references.

The references never call uepjax.theory: recoverability comes from rank tests on real
Gaussian random codes (numpy), probabilities from float64 multinomial sums, and the
Monte Carlo estimates from numpy simulations of the counts model, of the response
times and of the matrices themselves. Statistical tolerances are 4.5 standard errors
of the estimate with a fixed seed.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uepjax import theory
from uepjax.latency import Exponential, with_load

SIZES = (3, 3, 3)
GAMMA = (0.40, 0.35, 0.25)
WORKERS = 30
TRIALS = 20_000


# ---------------------------------------------------------------------------------
# Independent references.
# ---------------------------------------------------------------------------------


def _compositions(total, parts):
    for head in itertools.product(range(total + 1), repeat=parts - 1):
        if sum(head) <= total:
            yield (*head, total - sum(head))


def _window_columns(scheme, sizes):
    """[L, K] bool: the sub-products a packet of each window combines."""
    edges = np.cumsum((0, *sizes))
    columns = np.zeros((len(sizes), edges[-1]), bool)
    for window in range(len(sizes)):
        start = 0 if scheme == "ew" else edges[window]
        columns[window, start : edges[window + 1]] = True
    return columns


@functools.cache
def _brute_force(scheme, sizes, max_packets):
    """Recovery by rank tests on a real Gaussian random code, for every count vector.

    Returns (counts [R, L] int, recovered [R, K] bool, class_recovered [R, L] bool):
    sub-product k is recovered iff appending e_k to the coefficient matrix does not
    raise its rank.
    """
    rng = np.random.default_rng(2024)
    columns = _window_columns(scheme, sizes)
    num_sub = sum(sizes)
    all_counts, all_recovered = [], []
    for n in range(max_packets + 1):
        counts = np.array(list(_compositions(n, len(sizes))))
        recovered = np.zeros((len(counts), num_sub), bool)
        if n > 0:
            windows = np.stack([np.repeat(np.arange(len(sizes)), c) for c in counts])
            mask = columns[windows]  # [C, n, K]
            matrices = rng.standard_normal(mask.shape) * mask
            rank = np.linalg.matrix_rank(matrices)
            for k in range(num_sub):
                unit = np.zeros((len(counts), 1, num_sub))
                unit[:, 0, k] = 1.0
                augmented = np.concatenate([matrices, unit], axis=1)
                recovered[:, k] = np.linalg.matrix_rank(augmented) == rank
        all_counts.append(counts)
        all_recovered.append(recovered)
    counts = np.concatenate(all_counts)
    recovered = np.concatenate(all_recovered)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    class_recovered = np.stack(
        [recovered[:, owner == c].all(axis=1) for c in range(len(sizes))], axis=1
    )
    return counts, recovered, class_recovered


@functools.cache
def _lookup(scheme, sizes, max_packets):
    """Dense table recovered[n_1, ..., n_L, l] of the brute force."""
    counts, _, class_recovered = _brute_force(scheme, sizes, max_packets)
    table = np.zeros((max_packets + 1,) * len(sizes) + (len(sizes),), bool)
    table[tuple(counts.T)] = class_recovered
    return table


def _pmf64(counts, gamma):
    """float64 Multinomial(counts; sum, gamma), a polynomial also for gamma < 0."""
    gamma = np.asarray(gamma, np.float64)
    log_factorial = np.array([math.lgamma(i + 1) for i in range(counts.max() + 1)])
    log_coef = log_factorial[counts.sum(axis=1)] - log_factorial[counts].sum(axis=1)
    return np.exp(log_coef) * np.prod(gamma**counts, axis=1)


def _reference_unrecovered(scheme, sizes, gamma, max_packets):
    """float64 [L, N+1] P(class unrecovered | n) and [L, L, N+1] pairwise."""
    counts, _, class_recovered = _brute_force(scheme, sizes, max_packets)
    pmf = _pmf64(counts, gamma)
    totals = counts.sum(axis=1)
    missing = ~class_recovered
    single = np.zeros((len(sizes), max_packets + 1))
    pair = np.zeros((len(sizes), len(sizes), max_packets + 1))
    for n in range(max_packets + 1):
        rows = totals == n
        single[:, n] = pmf[rows] @ missing[rows]
        pair[:, :, n] = np.einsum(
            "r,rl,rm->lm", pmf[rows], missing[rows], missing[rows]
        )
    return single, pair


def _simulate_counts(rng, gamma, packets, trials):
    """[trials, packets + 1, L] per-window counts after each arrival."""
    windows = rng.choice(len(gamma), size=(trials, packets), p=np.asarray(gamma))
    one_hot = windows[..., None] == np.arange(len(gamma))
    start = np.zeros((trials, 1, len(gamma)), int)
    return np.concatenate([start, np.cumsum(one_hot, axis=1)], axis=1)


def _assert_within_standard_errors(estimate, exact, trials, what):
    # 4.5 binomial standard errors of a frequency, plus 1/trials where exact is 0 or 1.
    exact = np.asarray(exact, np.float64)
    tolerance = 4.5 * np.sqrt(np.clip(exact * (1 - exact), 0, None) / trials)
    tolerance += 1.0 / trials
    bad = np.abs(estimate - exact) > tolerance
    assert not bad.any(), f"{what}: {np.argwhere(bad)[:5]}"


# ---------------------------------------------------------------------------------
# The decoding rule.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["now", "ew"])
@pytest.mark.parametrize(
    ("sizes", "max_packets"),
    [((3, 3, 3), 14), ((1, 2, 2), 8), ((2, 1), 7), ((1, 1, 1, 1), 6), ((4,), 6)],
)
def test_rule_matches_rank_brute_force(scheme, sizes, max_packets):
    counts, recovered, class_recovered = _brute_force(scheme, sizes, max_packets)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    # A class is recovered all at once or not at all (so class-level rules suffice).
    for c in range(len(sizes)):
        block = recovered[:, owner == c]
        assert np.all(block.all(axis=1) == block.any(axis=1))
    rule = theory.decodable_classes(scheme, sizes, jnp.asarray(counts))
    np.testing.assert_array_equal(np.asarray(rule), class_recovered)


def test_rule_matches_rank_brute_force_in_the_fig8_setting():
    for scheme in ["now", "ew"]:
        counts, _, class_recovered = _brute_force(scheme, SIZES, WORKERS)
        rule = theory.decodable_classes(scheme, SIZES, jnp.asarray(counts))
        np.testing.assert_array_equal(np.asarray(rule), class_recovered)


def test_rule_works_under_jit_and_rejects_bad_counts():
    counts = jnp.array([[3, 0, 0], [2, 2, 5]])
    rule = jax.jit(lambda c: theory.decodable_classes("ew", SIZES, c))(counts)
    np.testing.assert_array_equal(rule, [[True, False, False], [True, True, True]])
    with pytest.raises(ValueError, match=r"counts must have shape \[..., 3\]"):
        theory.decodable_classes("ew", SIZES, jnp.zeros((2, 2), int))
    with pytest.raises(ValueError, match="counts must be integers"):
        theory.decodable_classes("ew", SIZES, jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------------
# Probabilities.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_probabilities_match_float64_reference(scheme):
    for gamma in [GAMMA, (0.1, 0.2, 0.7), (0.5, 0.5, 0.0)]:
        single, pair = _reference_unrecovered(scheme, SIZES, gamma, WORKERS)
        p = theory.decoding_probabilities(scheme, SIZES, jnp.array(gamma), WORKERS)
        u = theory.expected_unrecovered(scheme, SIZES, jnp.array(gamma), WORKERS)
        uu = theory.expected_pairwise_unrecovered(scheme, SIZES, gamma, WORKERS)
        np.testing.assert_allclose(p, 1 - single, atol=3e-6)
        np.testing.assert_allclose(u, single, atol=3e-6)
        np.testing.assert_allclose(uu, pair, atol=3e-6)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_probabilities_match_monte_carlo(scheme):
    rng = np.random.default_rng(7)
    counts = _simulate_counts(rng, GAMMA, WORKERS, TRIALS)
    table = _lookup(scheme, SIZES, WORKERS)
    recovered = table[tuple(np.moveaxis(counts, -1, 0))]  # [T, N+1, L]

    exact = theory.decoding_probabilities(scheme, SIZES, jnp.array(GAMMA), WORKERS)
    _assert_within_standard_errors(recovered.mean(0).T, exact, TRIALS, "marginal")

    missing = ~recovered
    both = (missing[..., :, None] & missing[..., None, :]).mean(0)
    pairwise = theory.expected_pairwise_unrecovered(scheme, SIZES, GAMMA, WORKERS)
    _assert_within_standard_errors(np.moveaxis(both, 0, -1), pairwise, TRIALS, "pair")

    codes = recovered @ (2 ** np.arange(3))
    frequencies = (codes[..., None] == np.arange(8)).mean(0).T  # [8, N+1]
    joint = theory.recovered_probability(scheme, SIZES, GAMMA, WORKERS)
    _assert_within_standard_errors(frequencies, joint, TRIALS, "joint")


@pytest.mark.parametrize("scheme", ["now", "ew"])
@pytest.mark.parametrize(
    ("sizes", "gamma"),
    [
        ((3, 3, 3), GAMMA),
        ((1, 2, 2), (0.2, 0.0, 0.8)),
        ((2, 3, 1, 2), (0.4, 0.3, 0.2, 0.1)),
    ],
)
def test_joint_marginal_pairwise_are_consistent(scheme, sizes, gamma):
    n_max = 20
    joint = np.asarray(theory.recovered_probability(scheme, sizes, gamma, n_max))
    p = np.asarray(theory.decoding_probabilities(scheme, sizes, gamma, n_max))
    u = np.asarray(theory.expected_unrecovered(scheme, sizes, gamma, n_max))
    uu = np.asarray(theory.expected_pairwise_unrecovered(scheme, sizes, gamma, n_max))

    np.testing.assert_allclose(joint.sum(0), 1.0, atol=2e-6)
    assert joint.min() >= 0
    bits = (np.arange(2 ** len(sizes))[:, None] >> np.arange(len(sizes))) & 1
    np.testing.assert_allclose(bits.T @ joint, p, atol=2e-6)
    np.testing.assert_allclose(p + u, 1.0, atol=2e-6)
    np.testing.assert_allclose(np.einsum("lln->ln", uu), u, atol=2e-6)
    np.testing.assert_allclose(uu, np.swapaxes(uu, 0, 1), atol=1e-7)
    assert np.all(uu <= np.minimum(u[:, None], u[None, :]) + 2e-6)
    # Probabilities never decrease as packets arrive.
    assert np.all(np.diff(p, axis=1) >= -2e-6)
    if scheme == "ew":
        # EW recovers a prefix of classes: only codes 0, 1, 3, 7, ... occur.
        prefixes = {2**j - 1 for j in range(len(sizes) + 1)}
        others = [s for s in range(2 ** len(sizes)) if s not in prefixes]
        assert np.all(joint[others] == 0)


def test_fig8_class1_is_better_protected():
    for scheme in ["now", "ew"]:
        p = np.asarray(theory.decoding_probabilities(scheme, SIZES, GAMMA, WORKERS))
        assert np.all(p[0] >= p[1] - 1e-6) and np.all(p[1] >= p[2] - 1e-6)
        assert p[0, 9] > p[2, 9] + 0.2
        np.testing.assert_allclose(p[:, :3], 0.0)
        assert np.all(p[:, -1] > 0.98)
    now = theory.decoding_probabilities("now", SIZES, GAMMA, WORKERS)
    ew = theory.decoding_probabilities("ew", SIZES, GAMMA, WORKERS)
    assert np.all(ew[0] >= now[0] - 1e-6)  # EW's first window is in every packet.
    np.testing.assert_allclose(ew[0, 9:], 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------
# Gradients, the simplex edge, compilation.
# ---------------------------------------------------------------------------------


def _reference_objective(scheme, gamma, weights):
    single, pair = _reference_unrecovered(scheme, SIZES, gamma, WORKERS)
    return np.sum(weights[0] * single) + np.sum(weights[1] * pair)


def _objective(scheme, gamma, weights):
    single = theory.expected_unrecovered(scheme, SIZES, gamma, WORKERS)
    pair = theory.expected_pairwise_unrecovered(scheme, SIZES, gamma, WORKERS)
    return jnp.sum(weights[0] * single) + jnp.sum(weights[1] * pair)


@pytest.mark.parametrize("scheme", ["now", "ew"])
@pytest.mark.parametrize(
    "gamma", [GAMMA, (0.7, 0.3, 0.0), (0.0, 0.0, 1.0), (0.05, 0.9, 0.05)]
)
def test_gradient_matches_finite_differences(scheme, gamma):
    rng = np.random.default_rng(3)
    weights = (
        rng.uniform(size=(3, WORKERS + 1)),
        rng.uniform(size=(3, 3, WORKERS + 1)),
    )
    grad = jax.grad(lambda g: _objective(scheme, g, weights))(jnp.array(gamma))
    assert np.all(np.isfinite(grad))

    # Central differences of the float64 polynomial (defined for gamma_l < 0 too, so
    # the edge of the simplex needs no one-sided formula).
    step = 1e-6
    numeric = np.zeros(3)
    for window in range(3):
        shift = np.eye(3)[window] * step
        plus = _reference_objective(scheme, np.array(gamma) + shift, weights)
        minus = _reference_objective(scheme, np.array(gamma) - shift, weights)
        numeric[window] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=2e-4, atol=2e-4)


def test_edge_of_simplex_gives_finite_values_and_second_derivatives():
    gamma = jnp.array([0.6, 0.4, 0.0])
    for scheme in ["now", "ew"]:

        def loss(g, scheme=scheme):
            return jnp.sum(
                theory.conditional_loss(scheme, SIZES, g, jnp.arange(9.0), 12)
            )

        assert np.isfinite(loss(gamma))
        assert np.all(np.isfinite(jax.jit(jax.grad(loss))(gamma)))
        assert np.all(np.isfinite(jax.jit(jax.hessian(loss))(gamma)))
    # Exact gradients at the edge (of the polynomial in gamma): under NOW with
    # k = (1, 1, 1), P(class 3 decoded | 1) = g_3 and
    # P(class 3 decoded | 2) = 2 g_3 (g_1 + g_2) + g_3^2, so at g_3 = 0 the gradients
    # are (0, 0, 1) and (0, 0, 2(g_1 + g_2)).
    jacobian = jax.jacrev(
        lambda g: theory.decoding_probabilities("now", (1, 1, 1), g, 2)[2, 1:]
    )(gamma)
    np.testing.assert_allclose(jacobian, [[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]], atol=1e-6)


def test_new_gamma_does_not_retrace():
    traces = []

    @jax.jit
    def evaluate(gamma, rate):
        traces.append(None)
        return theory.expected_loss(
            "ew", SIZES, gamma, jnp.ones(9), WORKERS, Exponential(rate), [0.5, 1.0]
        )

    for gamma, rate in [(GAMMA, 1.0), ((0.2, 0.3, 0.5), 2.0), ((1.0, 0.0, 0.0), 0.5)]:
        evaluate(jnp.array(gamma), jnp.float32(rate))
    assert len(traces) == 1


def test_vmap_over_gamma_matches_loop():
    gammas = jnp.array([GAMMA, (0.2, 0.3, 0.5), (0.0, 0.5, 0.5)])
    batched = jax.vmap(lambda g: theory.decoding_probabilities("ew", SIZES, g, 12))(
        gammas
    )
    for b, gamma in enumerate(gammas):
        np.testing.assert_allclose(
            batched[b], theory.decoding_probabilities("ew", SIZES, gamma, 12), atol=1e-7
        )


def test_vmap_over_many_gammas_at_the_papers_size():
    # 8 gammas x 5456 count vectors (30 packets, 3 windows): the batched shape at
    # which a broadcast multiply-sum of the multinomial exponent went wrong on
    # jaxlib 0.10's CPU backend, for values and for gradients.
    gammas = jnp.asarray(
        np.random.default_rng(4).dirichlet(np.ones(3), size=8), jnp.float32
    )

    def probabilities(gamma):
        return theory.decoding_probabilities("ew", SIZES, gamma, 30)

    def decoded_by_ten(gamma):
        return jnp.sum(probabilities(gamma)[:, 10])

    batched = jax.jit(jax.vmap(probabilities))(gammas)
    gradients = jax.jit(jax.vmap(jax.grad(decoded_by_ten)))(gammas)
    for b, gamma in enumerate(gammas):
        np.testing.assert_allclose(batched[b], probabilities(gamma), atol=1e-6)
        np.testing.assert_allclose(
            gradients[b], jax.grad(decoded_by_ten)(gamma), rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_gram_loss_matches_float64_reference(scheme):
    rng = np.random.default_rng(1)
    factor = rng.standard_normal((9, 4))
    gram = factor @ factor.T  # non-diagonal, positive semi-definite
    owner = np.repeat(np.arange(3), 3)
    membership = (owner[:, None] == np.arange(3)).astype(float)
    _, pair = _reference_unrecovered(scheme, SIZES, GAMMA, WORKERS)
    expected = np.einsum("lm,lmn->n", membership.T @ gram @ membership, pair)

    loss = theory.conditional_loss(scheme, SIZES, GAMMA, None, WORKERS, gram=gram)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
    normalized = theory.conditional_loss(
        scheme, SIZES, GAMMA, None, WORKERS, gram=gram, normalized=True
    )
    np.testing.assert_allclose(normalized, expected / gram.sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalized[0], 1.0, rtol=1e-6)

    # With a diagonal Gram matrix the two forms agree.
    energies = np.diag(gram)
    diagonal = theory.conditional_loss(
        scheme, SIZES, GAMMA, None, WORKERS, gram=np.diag(energies)
    )
    linear = theory.conditional_loss(scheme, SIZES, GAMMA, energies, WORKERS)
    np.testing.assert_allclose(diagonal, linear, rtol=1e-5, atol=1e-5)


def test_class_table_permutes_subproducts():
    energies = np.array([5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.3, 0.2, 0.1])
    owner = np.repeat(np.arange(3), 3)
    order = np.random.default_rng(0).permutation(9)
    base = theory.conditional_loss("ew", SIZES, GAMMA, energies, 20)
    permuted = theory.conditional_loss(
        "ew", SIZES, GAMMA, energies[order], 20, class_of_subproduct=owner[order]
    )
    np.testing.assert_allclose(permuted, base, rtol=1e-6)
    rng = np.random.default_rng(4)
    factor = rng.standard_normal((9, 9))
    gram = factor @ factor.T
    base = theory.conditional_loss("now", SIZES, GAMMA, None, 20, gram=gram)
    permuted = theory.conditional_loss(
        "now",
        SIZES,
        GAMMA,
        None,
        20,
        gram=gram[np.ix_(order, order)],
        class_of_subproduct=owner[order],
    )
    np.testing.assert_allclose(permuted, base, rtol=1e-5)


# The paper's Sec. VI classes for r x c with N = P = 3 blocks of levels high, medium,
# low: sub-product k = 3 n + p has class 1 for (h,h), (h,m), (m,h), class 2 for (m,m),
# (h,l), (l,h) and class 3 for the rest.
RXC_CLASSES = np.array([0, 0, 1, 0, 1, 2, 1, 2, 2])
LEVEL_VARIANCE = np.array([10.0, 1.0, 0.1])


@pytest.mark.parametrize("scheme", ["now", "ew"])
@pytest.mark.parametrize("partitioning", ["rxc", "cxr"])
def test_expected_loss_matches_matrix_monte_carlo(scheme, partitioning):
    """Theorem 1 (r x c) and the exact c x r value under Assumption 1, checked by
    multiplying random matrices, decoding by counts and measuring ||C - C_hat||^2."""
    rng = np.random.default_rng(17 if partitioning == "rxc" else 18)
    u_rows, h, q_cols = 2, 3, 2
    trials = 8000
    if partitioning == "rxc":
        sd = np.sqrt(LEVEL_VARIANCE)
        a = rng.standard_normal((trials, 3, u_rows, h)) * sd[None, :, None, None]
        b = rng.standard_normal((trials, 3, h, q_cols)) * sd[None, :, None, None]
        blocks = np.einsum("tnuh,tphq->tnpuq", a, b).reshape(trials, 9, u_rows, q_cols)
        classes = RXC_CLASSES
        energies = theory.block_energies(
            u_rows, h, q_cols, LEVEL_VARIANCE[:, None], LEVEL_VARIANCE[None, :]
        ).reshape(9)
    else:
        level = np.repeat(np.arange(3), 3)
        sd = np.sqrt(LEVEL_VARIANCE[level])
        a = rng.standard_normal((trials, 9, u_rows, h)) * sd[None, :, None, None]
        b = rng.standard_normal((trials, 9, h, q_cols)) * sd[None, :, None, None]
        blocks = np.einsum("tmuh,tmhq->tmuq", a, b)
        classes = level
        energies = theory.block_energies(
            u_rows, h, q_cols, LEVEL_VARIANCE[level], LEVEL_VARIANCE[level]
        )
    # rxc blocks tile C (Gram diagonal); cxr blocks are summed (Gram full).
    gram = np.einsum("tkuq,tjuq->tkj", blocks, blocks)
    if partitioning == "rxc":
        gram = gram * np.eye(9)

    counts = _simulate_counts(rng, GAMMA, 15, trials)
    recovered = _lookup(scheme, SIZES, WORKERS)[tuple(np.moveaxis(counts, -1, 0))]
    missing = ~recovered[..., classes]  # [T, N+1, K]
    loss = np.einsum("tnk,tkj,tnj->tn", missing, gram, missing)

    exact = theory.conditional_loss(
        scheme, SIZES, GAMMA, energies, 15, class_of_subproduct=classes
    )
    error = 4.5 * loss.std(axis=0) / np.sqrt(trials)
    assert np.all(np.abs(loss.mean(axis=0) - exact) <= error + 1e-3)

    if partitioning == "cxr":
        bound = theory.cxr_loss_bound(
            scheme, SIZES, GAMMA, energies, 15, class_of_subproduct=classes
        )
        np.testing.assert_allclose(bound, 9 * np.asarray(exact), rtol=1e-6)
        # Eq. (22) holds for every realisation: u^T G u <= M sum_k u_k G_kk.
        diagonal = np.einsum("tnk,tk->tn", missing, np.einsum("tkk->tk", gram))
        assert np.all(loss <= 9 * diagonal * (1 + 1e-9) + 1e-9)
        # The bound is far from tight here (the value of the exact formula).
        assert np.all(np.asarray(bound)[:9] > 3 * loss.mean(axis=0)[:9])


def test_block_energies_is_eq12():
    energies = theory.block_energies(300, 900, 300, [10.0, 1.0], [[10.0], [0.1]])
    np.testing.assert_allclose(
        energies, 300 * 900 * 300 * np.array([[100.0, 10.0], [1.0, 0.1]]), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"rows must be an integer >= 1 \(got 0\)"):
        theory.block_energies(0, 1, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="variance_b must be finite and non-negative"):
        theory.block_energies(1, 1, 1, 1.0, -1.0)


@pytest.mark.parametrize("heterogeneous", [False, True])
@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_expected_loss_over_deadlines_matches_time_monte_carlo(scheme, heterogeneous):
    rng = np.random.default_rng(23)
    rates = rng.uniform(0.5, 2.0, WORKERS) if heterogeneous else np.full(WORKERS, 1.0)
    omega = 9 / WORKERS
    latency = with_load(Exponential(rates if heterogeneous else 1.0), omega)
    deadlines = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    energies = np.repeat([100.0, 1.0, 0.01], 3)
    class_energy = np.array([300.0, 3.0, 0.03])

    windows = rng.choice(3, size=(TRIALS, WORKERS), p=GAMMA)
    times = rng.exponential(1 / rates, size=(TRIALS, WORKERS)) / omega
    arrived = times[:, None, :] <= deadlines[None, :, None]  # [T, D, W]
    one_hot = (windows[..., None] == np.arange(3)).astype(int)
    counts = np.einsum("tdw,twl->tdl", arrived.astype(int), one_hot)
    recovered = _lookup(scheme, SIZES, WORKERS)[tuple(np.moveaxis(counts, -1, 0))]
    loss = (~recovered * class_energy).sum(-1) / energies.sum()

    exact = theory.expected_loss(
        scheme, SIZES, GAMMA, energies, WORKERS, latency, deadlines, normalized=True
    )
    error = 4.5 * loss.std(axis=0) / np.sqrt(TRIALS)
    assert np.all(np.abs(loss.mean(axis=0) - exact) <= error + 1e-6)
    np.testing.assert_allclose(exact[0], 1.0, rtol=1e-6)

    bound = theory.expected_loss(
        scheme,
        SIZES,
        GAMMA,
        energies,
        WORKERS,
        latency,
        deadlines,
        normalized=True,
        cxr_bound=True,
    )
    np.testing.assert_allclose(bound, 9 * np.asarray(exact), rtol=1e-5)


# ---------------------------------------------------------------------------------
# Arrivals by a deadline.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1, 7, 30, 200])
def test_arrival_probabilities_match_binomial_formula(workers):
    p = np.array([0.0, 0.03, 0.5, 0.91, 1.0])
    got = np.asarray(theory.arrival_probabilities(workers, p))
    assert got.shape == (5, workers + 1)
    n = np.arange(workers + 1)
    log_coef = np.array(
        [
            math.lgamma(workers + 1) - math.lgamma(k + 1) - math.lgamma(workers - k + 1)
            for k in n
        ]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.exp(
            log_coef
            + np.where(n > 0, n * np.log(p[:, None]), 0.0)
            + np.where(n < workers, (workers - n) * np.log1p(-p[:, None]), 0.0)
        )
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=2e-6)


def test_arrival_probability_gradients():
    workers = 6
    # The exact derivative of Binomial(n; W, p) at the edges: -W, W at p = 0 and
    # W, -W for n = W, W - 1 at p = 1.
    forward = jax.jit(jax.jacfwd(lambda p: theory.arrival_probabilities(workers, p)))
    reverse = jax.jit(jax.jacrev(lambda p: theory.arrival_probabilities(workers, p)))
    np.testing.assert_allclose(forward(0.0), [-6, 6, 0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(reverse(1.0), [0, 0, 0, 0, 0, -6, 6], atol=1e-5)

    def formula(p):
        n = np.arange(workers + 1)
        coef = np.array([math.comb(workers, k) for k in n], float)
        return coef * p**n * (1 - p) ** (workers - n)

    for p in [0.1, 0.5, 0.77]:
        got = reverse(p)
        np.testing.assert_allclose(forward(p), got, rtol=1e-5, atol=1e-6)
        numeric = (formula(p + 1e-6) - formula(p - 1e-6)) / 2e-6
        np.testing.assert_allclose(got, numeric, rtol=1e-4, atol=1e-5)


def test_heterogeneous_arrivals_match_exhaustive_enumeration():
    rates = np.array([0.3, 1.0, 1.7, 2.5, 4.0])
    latency = Exponential(rates)
    deadlines = np.array([0.1, 0.6, 2.0])
    got = np.asarray(theory.arrivals_by_deadline(latency, 5, deadlines))
    f = 1 - np.exp(-rates[None, :] * deadlines[:, None])
    expected = np.zeros((3, 6))
    for subset in itertools.product([0, 1], repeat=5):
        s = np.array(subset, bool)
        expected[:, s.sum()] += np.prod(np.where(s, f, 1 - f), axis=1)
    np.testing.assert_allclose(got, expected, atol=2e-6)

    # Equal per-worker parameters reproduce the binomial.
    same = theory.arrivals_by_deadline(Exponential(np.full(5, 1.3)), 5, deadlines)
    binomial = theory.arrivals_by_deadline(Exponential(1.3), 5, deadlines)
    np.testing.assert_allclose(same, binomial, atol=2e-6)
    grads = jax.jit(
        jax.grad(
            lambda r: theory.arrivals_by_deadline(Exponential(r), 5, deadlines)[1, 2]
        )
    )(jnp.asarray(rates))
    assert np.all(np.isfinite(grads))


# ---------------------------------------------------------------------------------
# Baselines: MDS, uncoded, repetition.
# ---------------------------------------------------------------------------------


def test_mds_closed_forms():
    conditional = theory.mds_conditional_loss(9, 30, total_energy=2.5)
    np.testing.assert_array_equal(conditional, [2.5] * 9 + [0.0] * 22)

    rng = np.random.default_rng(31)
    deadlines = np.array([0.1, 0.5, 1.0, 2.0])
    latency = with_load(Exponential(1.0), 9 / 30)
    times = rng.exponential(1.0, size=(TRIALS, 30)) / (9 / 30)
    arrivals = (times[:, None, :] <= deadlines[None, :, None]).sum(-1)
    estimate = (arrivals < 9).mean(0)
    exact = np.asarray(theory.mds_expected_loss(9, 30, latency, deadlines))
    _assert_within_standard_errors(estimate, exact, TRIALS, "mds")
    f = 1 - np.exp(-deadlines * 9 / 30)
    closed = [
        sum(math.comb(30, n) * fi**n * (1 - fi) ** (30 - n) for n in range(9))
        for fi in f
    ]
    np.testing.assert_allclose(exact, closed, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("repetitions", [1, 2, 3])
def test_repetition_conditional_matches_random_arrival_orders(repetitions):
    rng = np.random.default_rng(40 + repetitions)
    num_sub = 4
    workers = repetitions * num_sub
    factor = rng.standard_normal((num_sub, 3))
    gram = factor @ factor.T
    holder = np.arange(workers) % num_sub  # worker w computes sub-product w mod K

    order = rng.permuted(np.tile(np.arange(workers), (TRIALS, 1)), axis=1)
    held = holder[order][..., None] == np.arange(num_sub)  # [T, W, K]
    seen = np.concatenate(
        [np.zeros((TRIALS, 1, num_sub), bool), np.cumsum(held, axis=1) > 0], axis=1
    )
    missing = ~seen  # [T, W+1, K]
    loss = np.einsum("tnk,kj,tnj->tn", missing, gram, missing)

    exact = theory.repetition_conditional_loss(None, repetitions, gram=gram)
    assert exact.shape == (workers + 1,)
    error = 4.5 * loss.std(axis=0) / np.sqrt(TRIALS)
    rounding = 1e-5 * (1 + np.abs(exact))
    assert np.all(np.abs(loss.mean(axis=0) - exact) <= error + rounding)

    energies = np.diag(gram)
    single = missing.mean(0) @ energies
    linear = theory.repetition_conditional_loss(energies, repetitions)
    error = 4.5 * (missing @ energies).std(axis=0) / np.sqrt(TRIALS)
    assert np.all(np.abs(single - linear) <= error + 1e-5)
    closed = [
        energies.sum() * math.comb(workers - repetitions, n) / math.comb(workers, n)
        for n in range(workers + 1)
    ]
    np.testing.assert_allclose(linear, closed, rtol=1e-5, atol=1e-6)


def test_uncoded_and_repetition_over_deadlines():
    energies = np.array([4.0, 2.0, 1.0])
    deadlines = np.array([0.0, 0.3, 1.0, 3.0])
    latency = Exponential(1.5)
    f = 1 - np.exp(-1.5 * deadlines)
    uncoded = theory.uncoded_conditional_loss(energies)
    np.testing.assert_allclose(uncoded, 7.0 * np.array([3, 2, 1, 0]) / 3, rtol=1e-6)
    np.testing.assert_allclose(
        theory.uncoded_expected_loss(energies, latency, deadlines),
        7.0 * (1 - f),
        rtol=1e-5,
    )
    factor = np.random.default_rng(5).standard_normal((3, 2))
    gram = factor @ factor.T
    off = gram.sum() - np.trace(gram)
    for r in [2, 4]:
        np.testing.assert_allclose(
            theory.repetition_expected_loss(energies, r, latency, deadlines),
            7.0 * (1 - f) ** r,
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            theory.repetition_expected_loss(
                None, r, latency, deadlines, gram=gram, normalized=True
            ),
            (np.trace(gram) * (1 - f) ** r + off * (1 - f) ** (2 * r)) / gram.sum(),
            rtol=1e-5,
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="need i.i.d. workers"):
        theory.repetition_expected_loss(energies, 2, Exponential(np.ones(6)), deadlines)


# ---------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: theory.decoding_probabilities("ew", SIZES, (0.5, 0.5), 5),
            r"gamma must have shape \(3,\).*\(got shape \(2,\)\)",
        ),
        (
            lambda: theory.decoding_probabilities("ew", SIZES, (0.5, 0.6, -0.1), 5),
            r"gamma must be finite and non-negative \(got \[ 0.5  0.6 -0.1\]\)",
        ),
        (
            lambda: theory.decoding_probabilities("ew", SIZES, (0.3, 0.3, 0.3), 5),
            r"gamma must sum to 1 \(got 0.9\); pass normalized window probabilities",
        ),
        (
            lambda: theory.decoding_probabilities("now", SIZES, (np.nan, 0.5, 0.5), 5),
            r"gamma must be finite",
        ),
        (
            lambda: theory.decoding_probabilities("mds", SIZES, GAMMA, 5),
            r'scheme must be "now" or "ew" \(got \'mds\'\)',
        ),
        (
            lambda: theory.decoding_probabilities("ew", (3, 0, 3), GAMMA, 5),
            r"class_sizes must be a non-empty sequence of positive integers",
        ),
        (
            lambda: theory.decoding_probabilities("ew", (3, 2.5, 3), GAMMA, 5),
            r"class_sizes must be .*\(got \(3, 2.5, 3\)\)",
        ),
        (
            lambda: theory.decoding_probabilities("ew", 9, (1.0,), 5),
            r"class_sizes must be a sequence",
        ),
        (
            lambda: theory.decoding_probabilities("ew", (), (), 5),
            r"class_sizes must be a non-empty",
        ),
        (
            lambda: theory.decoding_probabilities("ew", SIZES, GAMMA, -1),
            r"max_packets must be an integer >= 0 \(got -1\)",
        ),
        (
            lambda: theory.decoding_probabilities("ew", SIZES, GAMMA, 2.0),
            r"max_packets must be an integer",
        ),
        (
            lambda: theory.conditional_loss("ew", SIZES, GAMMA, np.ones(8), 5),
            r"subproduct_energies must have shape \(9,\).*\(got \(8,\)\)",
        ),
        (
            lambda: theory.conditional_loss("ew", SIZES, GAMMA, -np.ones(9), 5),
            r"subproduct_energies must be finite and non-negative",
        ),
        (
            lambda: theory.conditional_loss("ew", SIZES, GAMMA, None, 5),
            r"pass exactly one of subproduct_energies",
        ),
        (
            lambda: theory.conditional_loss(
                "ew", SIZES, GAMMA, np.ones(9), 5, gram=np.eye(9)
            ),
            r"pass exactly one of",
        ),
        (
            lambda: theory.conditional_loss(
                "ew", SIZES, GAMMA, None, 5, gram=np.eye(3)
            ),
            r"gram must have shape \(9, 9\)",
        ),
        (
            lambda: theory.conditional_loss(
                "ew", SIZES, GAMMA, np.zeros(9), 5, normalized=True
            ),
            r"normalized=True needs sum\(subproduct_energies\) > 0 \(got 0.0\)",
        ),
        (
            lambda: theory.conditional_loss(
                "ew", SIZES, GAMMA, np.ones(9), 5, class_of_subproduct=np.zeros(9, int)
            ),
            r"class_of_subproduct must hold class_sizes",
        ),
        (
            lambda: theory.expected_loss(
                "ew", SIZES, GAMMA, np.ones(9), 30, Exponential(1.0), [1.0, -0.5]
            ),
            r"deadlines must be non-negative times \(got \[ 1.  -0.5\]\)",
        ),
        (
            lambda: theory.expected_loss(
                "ew", SIZES, GAMMA, np.ones(9), 30, Exponential(np.ones(4)), [1.0]
            ),
            r"per-worker parameters for 4 workers, but workers is 30",
        ),
        (
            lambda: theory.expected_loss(
                "ew",
                SIZES,
                GAMMA,
                None,
                30,
                Exponential(1.0),
                [1.0],
                gram=np.eye(9),
                cxr_bound=True,
            ),
            r"cxr_bound=True uses subproduct_energies",
        ),
        (
            lambda: theory.arrival_probabilities(5, [0.5, 1.2]),
            r"cdf_value must lie in \[0, 1\] \(got \[0.5 1.2\]\)",
        ),
        (
            lambda: theory.arrival_probabilities(-1, 0.5),
            r"workers must be an integer >= 0 \(got -1\)",
        ),
        (
            lambda: theory.decoding_probabilities("now", (1,) * 8, (0.125,) * 8, 40),
            r"exact enumeration needs \d+ count vectors",
        ),
        (
            lambda: theory.mds_conditional_loss(0, 5),
            r"subproducts must be an integer >= 1 \(got 0\)",
        ),
        (
            lambda: theory.repetition_conditional_loss(np.ones(3), 0),
            r"repetitions must be an integer >= 1 \(got 0\)",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_scheme_enum_names_and_traced_gamma_are_accepted():
    class Scheme:
        name = "EW"

    by_name = theory.decoding_probabilities(Scheme(), SIZES, GAMMA, 10)
    np.testing.assert_allclose(
        by_name, theory.decoding_probabilities("ew", SIZES, GAMMA, 10)
    )
    # A traced gamma is never checked: an unnormalized one is evaluated as given.
    traced = jax.jit(lambda g: theory.decoding_probabilities("now", (1,), g, 2))(
        jnp.array([0.5])
    )
    np.testing.assert_allclose(traced, [[0.0, 0.5, 0.25]], atol=1e-7)
