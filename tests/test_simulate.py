"""Tests of uepjax.simulate: Monte Carlo by real decoding against closed forms.

Every statistical comparison uses a fixed key and a tolerance of 4.5 standard errors of
the Monte Carlo estimate (plus a float32 allowance), so a correct engine fails with
probability below 1e-5 per point.
"""

import jax
import numpy as np
import pytest

from uepjax import codes, fields, latency, partition, simulate, theory

SIZES = (3, 3, 3)
GAMMA = (0.40, 0.35, 0.25)
WORKERS = 30
LARGE = 2**31 - 1
ENERGIES = np.array([100.0, 10.0, 10.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01])


def within(estimate, exact, sigmas=4.5, slack=None, standard_error=None):
    mean = estimate.mean
    if standard_error is None:
        standard_error = estimate.standard_error
    if slack is None:
        # A per-trial loss lies in [0, 1], so where no trial saw a rare event (and the
        # sample standard error is zero) the mean is still within a few 1/trials.
        slack = 5.0 / estimate.trials
    gap = np.abs(mean - np.asarray(exact, np.float64))
    assert np.all(gap <= sigmas * standard_error + slack), (
        f"largest gap {gap.max():.3g} at {np.unravel_index(gap.argmax(), gap.shape)}, "
        f"standard error there {standard_error.reshape(-1)[gap.argmax()]:.3g}"
    )


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_decoding_probabilities_match_the_large_field_theory(scheme):
    trials = 8192
    estimate = simulate.decoding_estimate(
        jax.random.key(0), scheme, SIZES, GAMMA, WORKERS, trials, LARGE
    )
    exact = theory.decoding_probabilities(scheme, SIZES, GAMMA, WORKERS)
    assert estimate.mean.shape == (3, WORKERS + 1)
    # The binomial standard error of the exact probability: the estimate's own is zero
    # where every trial decoded.
    p = np.clip(np.asarray(exact, np.float64), 0.0, 1.0)
    within(estimate, exact, standard_error=np.sqrt(p * (1 - p) / trials))
    probabilities = simulate.decoding_probabilities(
        jax.random.key(0), scheme, SIZES, GAMMA, WORKERS, trials, LARGE
    )
    np.testing.assert_array_equal(probabilities, estimate.mean)


def test_gf2_differs_from_the_large_field_limit_both_ways():
    trials = 8192
    estimate = simulate.decoding_estimate(
        jax.random.key(1), "ew", SIZES, GAMMA, WORKERS, trials, 2
    )
    exact = np.asarray(theory.decoding_probabilities("ew", SIZES, GAMMA, WORKERS))
    gap = exact - estimate.mean
    # Dependent packets cost GF(2) dearly: at 12 packets every class is far behind.
    assert np.all(gap[:, 12] > 10 * estimate.standard_error[:, 12])
    # But a zero coefficient narrows an EW window: a window-2 packet that misses class 1
    # can decode class 2 from 5 packets, which a large field never does (theory: 0).
    assert exact[1, 5] == 0.0
    assert estimate.mean[1, 5] > 0.0


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_loss_by_arrivals_matches_theorem_1(scheme):
    code = codes.make_code(scheme, SIZES, GAMMA)
    estimate = simulate.loss_by_arrivals(
        jax.random.key(2), code, LARGE, WORKERS, ENERGIES, 8192
    )
    exact = theory.conditional_loss(
        scheme, SIZES, GAMMA, ENERGIES, WORKERS, normalized=True
    )
    within(estimate, exact)
    assert estimate.mean[0] == pytest.approx(1.0)


def test_loss_with_a_full_gram_matrix_matches_the_pairwise_theory():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(9, 9)) * np.sqrt(ENERGIES)[:, None]
    gram = factor @ factor.T
    code = codes.ew(SIZES, GAMMA)
    estimate = simulate.loss_by_arrivals(
        jax.random.key(3), code, LARGE, WORKERS, gram, 8192
    )
    exact = theory.conditional_loss(
        "ew", SIZES, GAMMA, None, WORKERS, gram, normalized=True
    )
    within(estimate, exact)


def test_gram_loss_equals_an_explicit_reconstruction():
    pair = partition.synthetic_matrices(
        jax.random.key(4), "cxr", block_rows=20, block_inner=5, block_cols=30
    )
    parts = partition.partition_cxr(pair.a, pair.b, 9)
    gram = np.asarray(partition.gram_matrix(parts), np.float64)
    product = np.asarray(pair.a, np.float64) @ np.asarray(pair.b, np.float64)
    code = codes.now(SIZES, GAMMA)
    recovery = np.asarray(
        simulate.sample_recovery(jax.random.key(5), code, 65521, WORKERS, 64)
    )
    curve = simulate.loss_by_arrivals(jax.random.key(5), code, 65521, WORKERS, gram, 64)
    recovered = recovery[:, None, :] <= np.arange(WORKERS + 1)[None, :, None]
    estimate = np.asarray(partition.reconstruct(parts, recovered), np.float64)
    explicit = np.sum((product - estimate) ** 2, axis=(-2, -1)) / np.sum(product**2)
    np.testing.assert_allclose(curve.mean, explicit.mean(0), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_loss_by_deadline_matches_eq_16(scheme):
    code = codes.make_code(scheme, SIZES, GAMMA)
    response = latency.Exponential(1.0)
    deadlines = np.linspace(0.0, 2.0, 9)
    estimate = simulate.loss_by_deadline(
        jax.random.key(6), code, LARGE, WORKERS, ENERGIES, response, deadlines, 8192
    )
    exact = theory.expected_loss(
        scheme, SIZES, GAMMA, ENERGIES, WORKERS, response, deadlines, normalized=True
    )
    within(estimate, exact)
    assert estimate.mean[0] == pytest.approx(1.0)


def test_sampled_arrival_times_agree_with_the_conditional_estimate():
    code = codes.ew(SIZES, GAMMA)
    response = latency.Exponential(1.0)
    deadlines = np.array([0.1, 0.3, 0.6, 1.0])
    exact = np.asarray(
        theory.expected_loss(
            "ew", SIZES, GAMMA, ENERGIES, WORKERS, response, deadlines, normalized=True
        )
    )
    sampled = simulate.loss_by_deadline(
        jax.random.key(7),
        code,
        LARGE,
        WORKERS,
        ENERGIES,
        response,
        deadlines,
        8192,
        conditional=False,
    )
    within(sampled, exact)
    conditional = simulate.loss_by_deadline(
        jax.random.key(7), code, LARGE, WORKERS, ENERGIES, response, deadlines, 8192
    )
    # Averaging over the times exactly can only reduce the variance.
    assert np.all(conditional.standard_error <= sampled.standard_error + 1e-9)


def test_heterogeneous_workers_match_the_poisson_binomial_theory():
    rates = np.linspace(0.5, 2.0, WORKERS)
    response = latency.Exponential(rates)
    code = codes.now(SIZES, GAMMA)
    deadlines = np.array([0.2, 0.5, 1.0])
    with pytest.raises(ValueError, match="heterogeneous"):
        simulate.loss_by_deadline(
            jax.random.key(8),
            code,
            LARGE,
            WORKERS,
            ENERGIES,
            response,
            deadlines,
            1024,
            conditional=True,
        )
    estimate = simulate.loss_by_deadline(
        jax.random.key(8), code, LARGE, WORKERS, ENERGIES, response, deadlines, 8192
    )
    exact = theory.expected_loss(
        "now", SIZES, GAMMA, ENERGIES, WORKERS, response, deadlines, normalized=True
    )
    within(estimate, exact)


def test_baselines_match_their_closed_forms():
    mds = simulate.loss_by_arrivals(
        jax.random.key(9), codes.mds(9), 65521, WORKERS, ENERGIES, 2048
    )
    np.testing.assert_array_equal(mds.mean, np.arange(WORKERS + 1) < 9)
    repeated = simulate.loss_by_arrivals(
        jax.random.key(10), codes.repetition(9, 2), 2, 18, ENERGIES, 8192
    )
    within(repeated, theory.repetition_conditional_loss(ENERGIES, 2, normalized=True))
    plain = simulate.loss_by_arrivals(
        jax.random.key(11), codes.uncoded(9), 2, 9, ENERGIES, 8192
    )
    within(plain, theory.uncoded_conditional_loss(ENERGIES, normalized=True))


def test_results_do_not_depend_on_the_chunk_size():
    code = codes.ew(SIZES, GAMMA)
    response = latency.Exponential(1.0)
    deadlines = np.linspace(0.0, 1.5, 7)
    gram = np.stack([np.diag(ENERGIES), np.outer(ENERGIES, ENERGIES) ** 0.5])
    results = [
        simulate.curves(
            jax.random.key(12),
            code,
            256,
            WORKERS,
            5000,
            gram=gram,
            response_time=response,
            deadlines=deadlines,
            chunk_size=chunk,
        )
        for chunk in (1024, 3072, 8192)
    ]
    for other in results[1:]:
        for name in ("decoded", "by_arrivals", "by_deadline"):
            first, second = getattr(results[0], name), getattr(other, name)
            np.testing.assert_array_equal(first.mean, second.mean)
            np.testing.assert_array_equal(first.standard_error, second.standard_error)


def test_new_gamma_and_key_do_not_recompile():
    sizes_before = simulate._chunk._cache_size()
    for seed, gamma in enumerate([(0.4, 0.35, 0.25), (0.1, 0.1, 0.8)]):
        simulate.loss_by_arrivals(
            jax.random.key(seed), codes.now(SIZES, gamma), 16, WORKERS, ENERGIES, 1024
        )
    assert simulate._chunk._cache_size() == sizes_before + 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(trials=0), "trials must be a positive integer"),
        (dict(chunk_size=1000), "chunk_size must be a positive multiple of 1024"),
        (dict(gram=np.ones(8)), r"gram must be \[9, 9\]"),
        (dict(gram=np.full(9, np.nan)), "gram must be finite"),
        (dict(workers=8), "workers must be at least the 9 sub-products"),
        (dict(deadlines=[0.5, -1.0]), "deadlines must be finite and non-negative"),
        (dict(field=12), "q must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = dict(
        code=codes.mds(9),
        field=65521,
        workers=WORKERS,
        gram=ENERGIES,
        response_time=latency.Exponential(1.0),
        deadlines=[0.5, 1.0],
        trials=1024,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate.loss_by_deadline(jax.random.key(0), **arguments)


def test_field_objects_and_real_coefficients_are_accepted():
    code = codes.now(SIZES, GAMMA)
    estimate = simulate.loss_by_arrivals(
        jax.random.key(13), code, fields.get_field("real"), WORKERS, ENERGIES, 4096
    )
    exact = theory.conditional_loss(
        "now", SIZES, GAMMA, ENERGIES, WORKERS, normalized=True
    )
    within(estimate, exact)
