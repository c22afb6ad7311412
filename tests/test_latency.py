"""Tests of uepjax.latency: CDFs against closed forms and samples, load, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uepjax import latency as lat

SAMPLES = 20_000
TIMES = np.array([0.05, 0.3, 0.7, 1.0, 1.5, 2.5, 4.0])


def _closed_form_cdf(name, params, t):
    """Reference CDFs from their textbook formulas, in float64."""
    t = np.asarray(t, dtype=np.float64)
    if name == "exponential":
        (rate,) = params
        return np.where(t > 0, 1 - np.exp(-rate * np.maximum(t, 0)), 0.0)
    if name == "shifted":
        rate, shift = params
        return np.where(t > shift, 1 - np.exp(-rate * np.maximum(t - shift, 0)), 0.0)
    if name == "pareto":
        scale, shape = params
        return np.where(t > scale, 1 - (scale / np.maximum(t, scale)) ** shape, 0.0)
    if name == "weibull":
        scale, shape = params
        return np.where(t > 0, 1 - np.exp(-((np.maximum(t, 0) / scale) ** shape)), 0.0)
    raise AssertionError(name)


def _closed_form_mean(name, params):
    if name == "exponential":
        return 1 / params[0]
    if name == "shifted":
        return params[1] + 1 / params[0]
    if name == "pareto":
        scale, shape = params
        return scale * shape / (shape - 1)
    if name == "weibull":
        scale, shape = params
        return scale * math.gamma(1 + 1 / shape)
    raise AssertionError(name)


def _make(name, params, load=1.0):
    if name == "exponential":
        return lat.Exponential(rate=params[0], load=load)
    if name == "shifted":
        return lat.ShiftedExponential(rate=params[0], shift=params[1], load=load)
    if name == "pareto":
        return lat.Pareto(scale=params[0], shape=params[1], load=load)
    return lat.Weibull(scale=params[0], shape=params[1], load=load)


# Pareto with shape 3.5 and Weibull with shape 1.5 have finite variance, so the sample
# mean test below has a valid standard error.
MODELS = [
    ("exponential", (1.3,)),
    ("shifted", (2.0, 0.4)),
    ("pareto", (0.5, 3.5)),
    ("weibull", (1.2, 1.5)),
    ("weibull", (0.8, 0.6)),
]


@pytest.mark.parametrize(("name", "params"), MODELS)
def test_cdf_matches_closed_form(name, params):
    model = _make(name, params)
    t = np.concatenate([[-1.0, 0.0], TIMES])
    np.testing.assert_allclose(
        model.cdf(t), _closed_form_cdf(name, params, t), rtol=2e-6, atol=2e-7
    )


@pytest.mark.parametrize(("name", "params"), MODELS)
def test_cdf_matches_empirical_cdf_of_samples(name, params):
    model = _make(name, params)
    samples = np.asarray(model.sample(jax.random.key(11), (SAMPLES,)))
    exact = np.asarray(model.cdf(TIMES), dtype=np.float64)
    empirical = (samples[None, :] <= TIMES[:, None]).mean(axis=1)
    # 4.5 binomial standard errors, plus 1/SAMPLES where exact is 0 or 1.
    tolerance = 4.5 * np.sqrt(exact * (1 - exact) / SAMPLES) + 1 / SAMPLES
    assert np.all(np.abs(empirical - exact) <= tolerance), (empirical, exact)


@pytest.mark.parametrize(("name", "params"), MODELS)
def test_mean_matches_closed_form_and_samples(name, params):
    model = _make(name, params)
    expected = _closed_form_mean(name, params)
    np.testing.assert_allclose(model.mean(), expected, rtol=1e-5)
    samples = np.asarray(model.sample(jax.random.key(5), (SAMPLES,)), np.float64)
    # 4.5 standard errors of the sample mean.
    error = 4.5 * samples.std() / math.sqrt(SAMPLES)
    assert abs(samples.mean() - expected) <= error


def test_pareto_mean_is_infinite_for_heavy_tails():
    assert np.isinf(lat.Pareto(scale=1.0, shape=0.8).mean())
    assert np.isinf(lat.Pareto(scale=1.0, shape=1.0).mean())


@pytest.mark.parametrize(("name", "params"), MODELS)
@pytest.mark.parametrize("omega", [0.3, 2.5])
def test_load_scales_time(name, params, omega):
    base = _make(name, params)
    loaded = lat.with_load(base, omega)
    np.testing.assert_allclose(loaded.cdf(TIMES), base.cdf(omega * TIMES), rtol=1e-5)
    key = jax.random.key(3)
    np.testing.assert_allclose(
        loaded.sample(key, (100,)), base.sample(key, (100,)) / omega, rtol=1e-6
    )
    np.testing.assert_allclose(loaded.mean(), base.mean() / omega, rtol=1e-6)
    direct = _make(name, params, load=omega)
    np.testing.assert_allclose(direct.cdf(TIMES), loaded.cdf(TIMES))


def test_with_load_replaces_the_load():
    model = lat.with_load(lat.with_load(lat.Exponential(1.0), 4.0), 0.5)
    assert float(model.load) == 0.5


def test_per_worker_parameters():
    rates = np.array([0.5, 1.0, 3.0])
    model = lat.Exponential(rate=rates, load=0.9)
    assert model.num_workers == 3
    assert not lat.is_homogeneous(model)
    assert lat.is_homogeneous(lat.Exponential(1.0))

    grid = model.cdf(TIMES[:, None])
    assert grid.shape == (TIMES.size, 3)
    for w, rate in enumerate(rates):
        single = lat.Exponential(rate=rate, load=0.9)
        np.testing.assert_allclose(grid[:, w], single.cdf(TIMES), rtol=1e-6)

    samples = np.asarray(model.sample(jax.random.key(2), (SAMPLES, 3)))
    empirical = (samples[None, :, :] <= TIMES[:, None, None]).mean(axis=1)
    exact = np.asarray(grid, np.float64)
    tolerance = 4.5 * np.sqrt(exact * (1 - exact) / SAMPLES) + 1 / SAMPLES
    assert np.all(np.abs(empirical - exact) <= tolerance)
    np.testing.assert_allclose(model.mean(), 1 / (rates * 0.9), rtol=1e-6)


def test_per_worker_sample_shape_must_end_with_workers():
    model = lat.Weibull(scale=[1.0, 2.0], shape=1.5)
    assert model.sample(jax.random.key(0), (7, 2)).shape == (7, 2)
    with pytest.raises(ValueError, match=r"workers dimension \(2,\).*\(2, 7\)"):
        model.sample(jax.random.key(0), (2, 7))
    with pytest.raises(ValueError, match="workers dimension"):
        model.sample(jax.random.key(0), ())


def test_mixed_per_worker_and_scalar_parameters():
    model = lat.ShiftedExponential(rate=2.0, shift=[0.0, 0.5, 1.0])
    t = np.array([0.7])
    np.testing.assert_allclose(
        model.cdf(t),
        _closed_form_cdf("shifted", (2.0, np.array([0.0, 0.5, 1.0])), t),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: lat.Exponential(rate=0.0), r"rate must be finite and > 0 \(got 0.0\)"),
        (lambda: lat.Exponential(rate=-2), r"rate must be finite and > 0 \(got -2.0\)"),
        (lambda: lat.Exponential(rate=float("nan")), r"rate must be .*nan"),
        (lambda: lat.Exponential(rate=float("inf")), r"rate must be .*inf"),
        (lambda: lat.Exponential(rate=[1.0, -1.0]), r"rate must be .*\[ 1. -1.\]"),
        (lambda: lat.Exponential(load=0.0), r"load must be finite and > 0"),
        (lambda: lat.Exponential(rate="fast"), r"rate must be a real number"),
        (
            lambda: lat.ShiftedExponential(shift=-0.1),
            r"shift must be finite and >= 0 \(got -0.1",
        ),
        (lambda: lat.Pareto(scale=-1.0), r"scale must be finite and > 0"),
        (lambda: lat.Pareto(shape=0.0), r"shape must be finite and > 0"),
        (lambda: lat.Weibull(shape=-1.5), r"shape must be finite and > 0"),
        (
            lambda: lat.Exponential(rate=np.ones((2, 2))),
            r"rate must be a scalar or have shape \[workers\] \(got shape \(2, 2\)\)",
        ),
        (
            lambda: lat.Pareto(scale=[1.0, 2.0], shape=[2.0, 2.0, 2.0]),
            r"same length",
        ),
        (
            lambda: lat.with_load(lat.Exponential(1.0), -3.0),
            r"load must be finite and > 0 \(got -3.0\)",
        ),
        (lambda: lat.with_load("exponential", 1.0), r"latency must be a uepjax"),
    ],
)
def test_bad_input_raises_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_traced_parameters_are_not_checked():
    # A traced rate cannot be checked (and must not be): the formula is evaluated.
    value = jax.jit(lambda r: lat.Exponential(rate=r).cdf(1.0))(jnp.float32(-1.0))
    np.testing.assert_allclose(value, 1 - math.e, rtol=1e-6)
    rates = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda r: lat.Exponential(rate=r).cdf(1.0))(rates)
    np.testing.assert_allclose(batched, 1 - np.exp(-np.asarray(rates)), rtol=1e-6)


def test_jit_with_new_parameters_does_not_retrace():
    traces = []

    @jax.jit
    def evaluate(model, t, key):
        traces.append(None)
        return model.cdf(t), model.sample(key, (5, 3)), model.mean()

    t = jnp.asarray(TIMES[:3])
    for rate, shape in [(1.0, 2.0), (0.3, 1.2), (5.0, 0.7)]:
        model = lat.Weibull(scale=[rate, rate, 2.0], shape=shape, load=0.5)
        cdf, _, _ = evaluate(model, t[:, None], jax.random.key(int(rate * 10)))
        expected = _closed_form_cdf("weibull", (rate, shape), 0.5 * TIMES[:3])
        np.testing.assert_allclose(cdf[:, 0], expected, rtol=2e-6, atol=1e-7)
    assert len(traces) == 1


def test_pytree_round_trip_and_leaves():
    model = lat.Pareto(scale=[1.0, 2.0], shape=3.0, load=0.25)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    assert len(leaves) == 3
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, lat.Pareto)
    np.testing.assert_array_equal(rebuilt.cdf(2.0), model.cdf(2.0))
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, model)
    np.testing.assert_allclose(doubled.scale, [2.0, 4.0])


def test_gradients_are_finite_and_correct():
    t = 0.8
    grad_rate = jax.grad(lambda r: lat.Exponential(rate=r).cdf(t))(1.5)
    np.testing.assert_allclose(grad_rate, t * math.exp(-1.5 * t), rtol=1e-5)
    # Below the support (and at t = 0 for a Weibull with shape < 1) the formulas are
    # singular; the gradients must stay finite.
    for model in [
        lat.Weibull(scale=1.0, shape=0.5),
        lat.Pareto(scale=1.0, shape=2.0),
        lat.ShiftedExponential(rate=1.0, shift=0.5),
    ]:
        for time in [-1.0, 0.0, 0.25]:
            grad_time = jax.grad(lambda s, m=model: m.cdf(s))(time)
            grads = jax.grad(lambda m, s=time: m.cdf(s))(model)
            assert np.isfinite(grad_time)
            assert all(np.isfinite(g) for g in jax.tree_util.tree_leaves(grads))
