"""Tests of uepjax.codes: windows, packet sampling, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uepjax import codes, fields

GAMMA = (0.40, 0.35, 0.25)


def test_windows_of_now_and_ew():
    now = codes.now((1, 2, 3), (0.5, 0.3, 0.2))
    ew = codes.ew((1, 2, 3), (0.5, 0.3, 0.2))
    np.testing.assert_array_equal(
        now.windows.astype(int),
        [[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]],
    )
    np.testing.assert_array_equal(
        ew.windows.astype(int),
        [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]],
    )
    assert now.subproducts == 6 and now.num_classes == 3
    np.testing.assert_array_equal(now.class_of_subproduct, [0, 1, 1, 2, 2, 2])


@pytest.mark.parametrize(
    "gamma, match",
    [
        ((0.5, 0.5), "one entry per class"),
        ((0.5, 0.3, 0.1), "sum to 1"),
        ((1.2, -0.1, -0.1), "non-negative"),
        ((0.5, float("nan"), 0.5), "finite"),
    ],
)
def test_bad_gamma_is_rejected(gamma, match):
    with pytest.raises(ValueError, match=match):
        codes.now((3, 3, 3), gamma)


@pytest.mark.parametrize("sizes", [(), (3, 0, 3), (3, -1), (2.5, 3), "abc"])
def test_bad_class_sizes_are_rejected(sizes):
    with pytest.raises(ValueError, match="class_sizes"):
        codes.ew(sizes, (1.0,) if len(sizes) == 1 else GAMMA)


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="scheme must be one of .*got 'fountain'"):
        codes.make_code("fountain", (3, 3, 3), GAMMA)


@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_rows_stay_inside_the_drawn_window_and_windows_follow_gamma(scheme):
    code = codes.make_code(scheme, (3, 3, 3), GAMMA)
    field = fields.get_field(2**31 - 1)
    trials, workers = 4000, 30
    keys = jax.random.split(jax.random.key(1), trials)
    rows = jax.vmap(lambda k: codes.worker_coefficients(k, code, field, workers))(keys)
    support = np.asarray(rows) != 0
    windows = code.windows
    # Over GF(2^31 - 1) a zero coefficient has probability 5e-10: the support is the
    # window itself, so every row must equal one of the windows exactly.
    match = (support[:, :, None, :] == windows[None, None]).all(-1)
    assert match.any(-1).all()
    frequency = match.argmax(-1).reshape(-1)
    counts = np.bincount(frequency, minlength=3) / frequency.size
    gamma = np.asarray(GAMMA)
    standard_error = np.sqrt(gamma * (1 - gamma) / frequency.size)
    # 4.5 standard errors of a binomial proportion over trials * workers draws.
    np.testing.assert_array_less(np.abs(counts - GAMMA), 4.5 * standard_error)


@pytest.mark.parametrize("q", [256, 65521, 2**31 - 1])
def test_mds_rows_decode_from_any_k_packets(q):
    field = fields.get_field(q)
    rows = codes.worker_coefficients(jax.random.key(0), codes.mds(9), field, 30)
    rng = np.random.default_rng(0)
    subsets = np.stack([rng.choice(30, 9, replace=False) for _ in range(200)])
    ranks = fields.rank(jnp.asarray(rows)[subsets], q)
    np.testing.assert_array_equal(np.asarray(ranks), 9)


def test_mds_needs_enough_workers_and_a_big_enough_field():
    with pytest.raises(ValueError, match="at least the 9 sub-products .*got 5"):
        codes.worker_coefficients(
            jax.random.key(0), codes.mds(9), fields.get_field(256), 5
        )
    with pytest.raises(ValueError, match="more than 30 elements .*q=16"):
        codes.worker_coefficients(
            jax.random.key(0), codes.mds(9), fields.get_field(16), 30
        )


def test_uncoded_and_repetition_assign_unit_rows():
    field = fields.get_field(2)
    rows = codes.worker_coefficients(jax.random.key(0), codes.uncoded(4), field, 4)
    np.testing.assert_array_equal(np.asarray(rows), np.eye(4, dtype=np.uint32))
    rows = codes.worker_coefficients(
        jax.random.key(0), codes.repetition(3, 2), field, 6
    )
    np.testing.assert_array_equal(np.asarray(rows), np.tile(np.eye(3), (2, 1)))
    with pytest.raises(ValueError, match="workers must be 6 for the repetition"):
        codes.worker_coefficients(jax.random.key(0), codes.repetition(3, 2), field, 7)


def test_real_rows_are_gaussian_on_the_window():
    code = codes.ew((2, 2), (0.5, 0.5))
    rows = codes.worker_coefficients(
        jax.random.key(3), code, fields.get_field("real"), 2000
    )
    rows = np.asarray(rows)
    assert rows.dtype == np.float32
    first = rows[:, :2].reshape(-1)
    assert abs(first.mean()) < 4.5 / np.sqrt(first.size)
    assert abs(first.var() - 1.0) < 4.5 * np.sqrt(2.0 / first.size)


def test_new_gamma_does_not_recompile():
    traces = []
    field = fields.get_field(256)

    @jax.jit
    def sample(key, code):
        traces.append(1)
        return codes.worker_coefficients(key, code, field, 30)

    for gamma in [(0.4, 0.35, 0.25), (0.2, 0.3, 0.5), (1.0, 0.0, 0.0)]:
        sample(jax.random.key(0), codes.now((3, 3, 3), gamma)).block_until_ready()
    assert len(traces) == 1
