"""Tests of uepjax.simulate: Monte Carlo by real decoding against closed forms.

Every statistical comparison uses a fixed key and a tolerance of 4.5 standard errors of
the Monte Carlo estimate (plus a float32 allowance), so a correct engine fails with
probability below 1e-5 per point.
"""

import jax
import numpy as np
import pytest

from uepjax import codes, decode, fields, latency, partition, simulate, theory

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


@pytest.mark.parametrize(
    "blocks, platform, expected",
    [(8, "cpu", 4), (3, "cpu", 3), (6, "cpu", 3), (5, "cpu", 1), (128, "gpu", 128)],
)
def test_value_groups_divide_the_blocks_of_a_chunk(blocks, platform, expected):
    assert simulate._value_group(blocks, platform) == expected


@pytest.mark.parametrize(
    "code, q, workers",
    [
        (codes.now((2, 3, 4), GAMMA), 2**31 - 1, WORKERS),
        (codes.now(SIZES, GAMMA), 256, WORKERS),
        (codes.now(SIZES, GAMMA), "real", WORKERS),
        (codes.repetition(9, 2), 65521, 18),
    ],
)
def test_decoding_by_blocks_gives_the_same_curves(monkeypatch, code, q, workers):
    def run():
        return simulate.curves(
            jax.random.key(13),
            code,
            q,
            workers,
            3072,
            gram=np.diag(ENERGIES),
            response_time=latency.Exponential(1.0),
            deadlines=np.linspace(0.0, 1.5, 7),
        )

    one_pass = run()
    monkeypatch.setattr(simulate, "BLOCK_DECODING_TRIALS", 1)
    field = fields.get_field(q)
    assert simulate._row_model(code, field, workers, 3072).blocks
    assert decode._blocks_pay(field)
    by_blocks = run()
    for name in ("decoded", "by_arrivals", "by_deadline"):
        first, second = getattr(one_pass, name), getattr(by_blocks, name)
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


SMALL_SIZES = (2, 2)
SMALL_GAMMA = (0.6, 0.4)
SMALL_WORKERS = 8


def small_curves(key, trials, **kwargs):
    """A small point whose shape (chunks of 2 blocks) the stopping tests share."""
    arguments = dict(
        gram=np.ones(4),
        response_time=latency.Exponential(1.0),
        deadlines=np.linspace(0.0, 2.0, 5),
        chunk_size=2048,
    )
    arguments.update(kwargs)
    code = codes.ew(SMALL_SIZES, SMALL_GAMMA)
    return simulate.curves(key, code, 65521, SMALL_WORKERS, trials, **arguments)


def test_stopping_on_confidence_reproduces_a_fixed_run_of_its_trials():
    rule = simulate.StoppingRule(
        "by_deadline", standard_error=0.0015, min_trials=4096, batch_trials=2048
    )
    stopped = small_curves(jax.random.key(20), 40960, stopping=rule)
    assert stopped.stop_reason is simulate.StopReason.TOLERANCE
    trials = stopped.by_deadline.trials
    assert trials < 40960 and (trials - 4096) % 2048 == 0
    assert trials > 4096 and stopped.by_deadline.standard_error.max() <= 0.0015
    # One round fewer was not enough: the rule stops at the first round that is.
    fewer = small_curves(jax.random.key(20), trials - 2048)
    assert fewer.by_deadline.standard_error.max() > 0.0015
    # The rounds do not change the numbers: a plain run of as many trials agrees.
    fixed = small_curves(jax.random.key(20), trials)
    assert fixed.stop_reason is simulate.StopReason.TRIALS
    for name in simulate.QUANTITIES:
        np.testing.assert_array_equal(
            getattr(stopped, name).mean, getattr(fixed, name).mean
        )
        np.testing.assert_array_equal(
            getattr(stopped, name).standard_error, getattr(fixed, name).standard_error
        )


def test_a_relative_tolerance_and_the_budgets_also_stop_a_run():
    relative = simulate.StoppingRule(
        "by_arrivals", relative_error=0.05, min_trials=2048, batch_trials=2048
    )
    result = small_curves(jax.random.key(21), 40960, stopping=relative)
    estimate = result.by_arrivals
    assert result.stop_reason is simulate.StopReason.TOLERANCE
    assert np.all(estimate.standard_error <= 0.05 * np.abs(estimate.mean))
    tight = simulate.StoppingRule("decoded", standard_error=1e-9, min_trials=2048)
    budget = small_curves(jax.random.key(21), 6144, stopping=tight)
    assert budget.stop_reason is simulate.StopReason.TRIALS
    assert budget.decoded.trials == 6144
    late = simulate.StoppingRule(
        "decoded", standard_error=1e-9, min_trials=2048, max_seconds=1e-6
    )
    timed = small_curves(jax.random.key(21), 40960, stopping=late)
    assert timed.stop_reason is simulate.StopReason.TIME
    assert timed.decoded.trials == 2048


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target="loss"), "target must be one of decoded, by_arrivals"),
        (dict(standard_error=0.0), "standard_error must be a positive number"),
        (dict(relative_error=float("nan")), "relative_error must be a positive"),
        (dict(min_trials=1000), "min_trials must be a positive multiple of 1024"),
        (dict(batch_trials=0), "batch_trials must be a positive multiple of 1024"),
        (dict(max_seconds=-1.0), "max_seconds must be a positive number"),
    ],
)
def test_bad_stopping_rules_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate.StoppingRule(**kwargs)


def test_a_target_that_is_not_estimated_is_refused():
    rule = simulate.StoppingRule("by_deadline", standard_error=0.01)
    with pytest.raises(ValueError, match="stopping.target 'by_deadline' is not"):
        simulate.curves(
            jax.random.key(0), codes.ew(SIZES, GAMMA), 16, WORKERS, 1024, stopping=rule
        )


def test_confidence_intervals_cover_the_estimate_and_stay_in_range():
    estimate = simulate.Estimate(
        np.array([0.0, 0.3, 1.0]), np.array([0.0, 0.01, 0.0]), 1000
    )
    low, high = simulate.confidence_interval(estimate, 0.95)
    np.testing.assert_allclose(low, [0.0, 0.3 - 1.959964 * 0.01, 1.0], rtol=1e-6)
    np.testing.assert_allclose(high, [0.0, 0.3 + 1.959964 * 0.01, 1.0], rtol=1e-6)
    # Wilson: no trial decoded / every trial decoded still leaves room.
    low, high = simulate.confidence_interval(estimate, 0.95, proportion=True)
    assert low[0] == 0.0 and 0.0 < high[0] < 0.005
    assert 0.995 < low[2] < 1.0 and high[2] == 1.0
    assert low[1] < 0.3 < high[1]
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\)"):
        simulate.confidence_interval(estimate, 1.0)


def test_tree_sums_add_in_a_fixed_order_whatever_the_batch():
    tree_sum = jax.jit(simulate._tree_sum, static_argnums=1)
    values = np.random.default_rng(0).normal(size=(3, 1024, 5)).astype(np.float32)
    whole = np.asarray(tree_sum(values, 1))
    alone = np.asarray(tree_sum(values[1:2], 1))
    np.testing.assert_array_equal(alone[0], whole[1])
    np.testing.assert_allclose(whole, values.astype(np.float64).sum(1), rtol=1e-5)
    odd = np.arange(7, dtype=np.float32)[:, None]
    assert float(tree_sum(odd, 0)[0]) == 21.0
