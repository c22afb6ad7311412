"""Tests of uepjax.tune: exact objectives, finite-field tables, the Monte Carlo
gradient, and the optax loop on the paper's setting (Sec. VI)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uepjax import cli, codes, latency, partition, simulate, theory, tune

SIZES = (3, 3, 3)
PAPER = (0.40, 0.35, 0.25)
WORKERS = 30


def paper_energies(kind):
    """The expected sub-product energies of Sec. VI in class order."""
    order = np.asarray(partition.paper_class_table(kind).order)
    return np.asarray(partition.expected_energies(kind), np.float64)[order]


def multinomial_pmf(counts, gamma):
    """Slow reference: Multinomial(c; |c|, gamma) row by row, in float64."""
    counts = np.asarray(counts)
    log_gamma = np.log(np.asarray(gamma, np.float64))
    out = []
    for c in counts:
        log = math.lgamma(c.sum() + 1) - sum(math.lgamma(x + 1) for x in c)
        out.append(math.exp(log + float(c @ log_gamma)))
    return np.array(out)


# ---------------------------------------------------------------------------------
# Exact objectives.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rxc", "cxr"])
@pytest.mark.parametrize("scheme", ["now", "ew"])
def test_expected_loss_is_theorys_loss_at_the_deadline(scheme, kind):
    energies = paper_energies(kind)
    deadlines = [0.25, 0.5, 1.0]
    expected = theory.expected_loss(
        scheme,
        SIZES,
        PAPER,
        energies,
        WORKERS,
        latency.Exponential(1.0),
        deadlines,
        normalized=True,
    )
    per_class = energies.reshape(3, 3).sum(axis=1)
    for t, want in zip(deadlines, np.asarray(expected), strict=True):
        for inputs in (
            dict(class_energies=energies),
            dict(class_energies=per_class),
            dict(gram=np.diag(energies)),
        ):
            problem = tune.make_problem(
                scheme, SIZES, workers=WORKERS, deadline=t, **inputs
            )
            got = float(tune.expected_loss(problem, PAPER))
            assert got == pytest.approx(float(want), rel=1e-5)


def test_average_and_area_objectives_are_integrals_of_the_curve():
    energies = paper_energies("rxc")
    model = latency.Exponential(1.0)
    grid = np.linspace(0.0, 2.0, 4001)
    curve = np.asarray(
        theory.expected_loss(
            "ew", SIZES, PAPER, energies, WORKERS, model, grid, normalized=True
        ),
        np.float64,
    )
    trapezoid = float(np.sum((curve[1:] + curve[:-1]) / 2) * (grid[1] - grid[0]))
    area = tune.make_problem(
        "ew", SIZES, energies, workers=WORKERS, deadline=2.0, objective="area"
    )
    assert float(tune.expected_loss(area, PAPER)) == pytest.approx(trapezoid, rel=1e-4)

    average = tune.make_problem(
        "ew",
        SIZES,
        energies,
        workers=WORKERS,
        deadline=[0.25, 1.0],
        objective="average",
        weights=[3.0, 1.0],
    )
    singles = [
        float(
            tune.expected_loss(
                tune.make_problem("ew", SIZES, energies, workers=WORKERS, deadline=t),
                PAPER,
            )
        )
        for t in (0.25, 1.0)
    ]
    want = 0.75 * singles[0] + 0.25 * singles[1]
    assert float(tune.expected_loss(average, PAPER)) == pytest.approx(want, rel=1e-5)
    moved = average.with_objective(tune.make_objective("deadline", 1.0))
    assert float(tune.expected_loss(moved, PAPER)) == pytest.approx(singles[1])


def test_exact_gradient_matches_finite_differences_and_is_finite_on_the_edge():
    problem = tune.make_problem(
        "now", SIZES, paper_energies("cxr"), workers=WORKERS, deadline=0.5
    )
    gamma = jnp.asarray(PAPER)
    gradient = np.asarray(jax.grad(lambda g: tune.expected_loss(problem, g))(gamma))
    # Along the simplex direction e_1 - e_3 (a polynomial, so a central difference
    # with h = 1e-2 is accurate to O(h^2) relative to its curvature).
    direction = np.array([1.0, 0.0, -1.0])
    h = 1e-2
    values = [
        float(tune.expected_loss(problem, np.asarray(PAPER) + s * h * direction))
        for s in (1, -1)
    ]
    assert (values[0] - values[1]) / (2 * h) == pytest.approx(
        float(gradient @ direction), rel=2e-3
    )
    edge = jax.grad(lambda g: tune.expected_loss(problem, g))(jnp.array([1.0, 0, 0]))
    assert np.all(np.isfinite(np.asarray(edge)))


# ---------------------------------------------------------------------------------
# Monte Carlo: the score-function gradient against the exact one.
# ---------------------------------------------------------------------------------


def _batched_estimates(problem, logits, field, batches, trials):
    def value(theta, key):
        return tune.estimate_loss(key, problem, jax.nn.softmax(theta), trials, field)

    value_and_grad = jax.jit(jax.value_and_grad(lambda t, k: value(t, k).value))
    values, grads = [], []
    for b in range(batches):
        v, g = value_and_grad(logits, jax.random.key(100 + b))
        values.append(float(v))
        grads.append(np.asarray(g, np.float64))
    return np.array(values), np.array(grads)


@pytest.mark.parametrize("scheme, field", [("ew", None), ("now", 2_147_483_647)])
def test_monte_carlo_gradient_matches_the_exact_gradient(scheme, field):
    # A small case where the exact sum is cheap: W = 10, k = (2, 2, 2). Over
    # GF(2^31 - 1) real decoding behaves as the large-field model. Tolerance: 4.5
    # standard errors of the mean over independent batches.
    problem = tune.make_problem(
        scheme, (2, 2, 2), [100.0, 5.0, 0.5], workers=10, deadline=0.8
    )
    logits = jnp.log(jnp.asarray(PAPER))
    exact_value, exact_grad = jax.value_and_grad(
        lambda t: tune.expected_loss(problem, jax.nn.softmax(t))
    )(logits)
    batches = 10
    values, grads = _batched_estimates(problem, logits, field, batches, 1024)
    error = values.std(ddof=1) / np.sqrt(batches)
    assert abs(values.mean() - float(exact_value)) <= 4.5 * error
    errors = grads.std(axis=0, ddof=1) / np.sqrt(batches)
    assert np.all(np.abs(grads.mean(axis=0) - np.asarray(exact_grad)) <= 4.5 * errors)
    # The estimate is informative: its noise is far below the gradient's size.
    assert np.max(errors) < 0.1 * np.max(np.abs(np.asarray(exact_grad)))


# ---------------------------------------------------------------------------------
# Finite-field tables of loss given counts.
# ---------------------------------------------------------------------------------

GF2_WORKERS = 10


@pytest.fixture(scope="module")
def gf2_table():
    """EW over GF(2) with the rxc energies, W = 10: a problem and its table."""
    problem = tune.make_problem(
        "ew", SIZES, paper_energies("rxc"), workers=GF2_WORKERS, deadline=1.2
    )
    return problem, tune.count_loss_table(jax.random.key(1), problem, 2, 256)


def test_table_over_a_large_prime_is_the_large_field_rule():
    problem = tune.make_problem(
        "ew", SIZES, paper_energies("rxc"), workers=8, deadline=0.5
    )
    table = tune.count_loss_table(jax.random.key(0), problem, 2_147_483_647, 16)
    counts = table.counts
    assert counts.shape == (math.comb(8 + 3, 3), 3)
    decodable = np.asarray(theory.decodable_classes("ew", SIZES, counts))
    unrecovered = ~decodable[:, problem.class_of_subproduct]
    want = unrecovered @ np.asarray(problem.gram, np.float64)
    np.testing.assert_allclose(np.asarray(table.mean), want, atol=1e-6)
    assert float(np.max(table.standard_error)) < 1e-6
    # With the table the objective is the large-field one (exact polynomial).
    assert float(tune.expected_loss(problem, PAPER, table)) == pytest.approx(
        float(tune.expected_loss(problem, PAPER)), rel=1e-5
    )


def test_gf2_table_agrees_with_simulate(gf2_table):
    # GF(2) recovers single sub-products from sparse packets and fails on dependent
    # ones, so it differs from the large-field model; the table (windows fixed by the
    # counts) must agree with uepjax.simulate (windows drawn from gamma). The rows of
    # one total come from different heads and are independent, so the standard error
    # of E[loss | n] is exact. Tolerance: 4.5 combined standard errors.
    workers = GF2_WORKERS
    problem, table = gf2_table
    gamma = np.asarray(PAPER)
    weight = multinomial_pmf(table.counts, gamma)
    totals = table.counts.sum(axis=1)
    conditional = np.asarray(tune.loss_given_arrivals(problem, gamma, table))
    table_error = np.sqrt(
        np.bincount(
            totals,
            weights=(weight * np.asarray(table.standard_error, np.float64)) ** 2,
            minlength=workers + 1,
        )
    )
    sim = simulate.loss_by_arrivals(
        jax.random.key(2),
        codes.ew(SIZES, gamma),
        2,
        workers,
        paper_energies("rxc"),
        8192,
    )
    error = np.sqrt(sim.standard_error**2 + table_error**2)
    assert np.all(np.abs(conditional - sim.mean) <= 4.5 * error + 1e-7)
    large = np.asarray(tune.loss_given_arrivals(problem, gamma))
    assert np.max(np.abs(conditional - large)) > 10 * np.max(error)
    # The bound on the objective's standard error covers the per-total errors.
    bound = float(tune.table_error_bound(problem, gamma, table))
    weights = np.asarray(problem.arrival_weights, np.float64)
    assert bound >= np.sqrt(np.sum((weights * table_error) ** 2)) * (1 - 1e-5)


# ---------------------------------------------------------------------------------
# The optax loop.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, kind, deadline",
    [
        ("now", "rxc", 1.0),  # a local minimum inside; the optimum abandons class 3
        ("ew", "rxc", 1.0),  # an interior optimum
        ("now", "cxr", 0.25),  # the optimum is the vertex (1, 0, 0)
    ],
)
def test_tuned_loss_is_within_one_percent_of_the_brute_force_grid(
    scheme, kind, deadline
):
    result = tune.optimize_gamma(
        scheme,
        SIZES,
        paper_energies(kind),
        workers=WORKERS,
        deadline=deadline,
        initial_gamma=PAPER,
    )
    grid = tune.grid_search(result.problem, 0.01)
    assert result.loss <= 1.01 * grid.loss
    assert result.loss == pytest.approx(
        float(tune.expected_loss(result.problem, result.gamma)), rel=1e-4
    )
    assert result.loss < 0.5 * result.initial_loss
    assert result.gamma.sum() == pytest.approx(1.0)
    assert result.history.loss.shape == (500,)
    assert result.history.gamma.shape == (500, 3)
    if deadline == 0.25:
        # On the edge of the simplex: classes 2 and 3 are not worth protecting.
        assert result.gamma[0] > 0.999


def test_second_call_with_new_values_does_not_retrace():
    energies = paper_energies("rxc")
    tune.optimize_gamma("ew", SIZES, energies, workers=12, deadline=0.5, steps=5)
    before = tune._TRACES["step"]
    tune.optimize_gamma(
        "ew",
        SIZES,
        energies * np.array([1.0, 2.0, 3.0] * 3),
        workers=12,
        deadline=0.9,
        steps=5,
        initial_gamma=[0.5, 0.3, 0.2],
        starts=tune.default_starts(3)[1:],
        key=jax.random.key(7),
    )
    assert tune._TRACES["step"] == before


@pytest.mark.parametrize(
    "optimizer", [optax.sgd(0.5, momentum=0.9), optax.lbfgs()], ids=["sgd", "lbfgs"]
)
def test_any_optax_optimizer(optimizer):
    result = tune.optimize_gamma(
        "now",
        (2, 2),
        [10.0, 1.0],
        workers=8,
        deadline=1.5,
        optimizer=optimizer,
        steps=6,
        initial_gamma=[0.3, 0.7],
        starts=np.full((1, 2), 1 / 2),
    )
    assert result.loss < 0.8 * result.initial_loss


def test_finite_field_tuning_with_a_table(gf2_table):
    problem, table = gf2_table
    energies = paper_energies("rxc")
    args = dict(workers=GF2_WORKERS, deadline=0.6)
    result = tune.optimize_gamma("ew", SIZES, energies, field=2, table=table, **args)
    assert result.method == "exact" and result.table is table
    grid = tune.grid_search(result.problem, 0.02, table)
    assert result.loss <= 1.01 * grid.loss
    assert 0 < result.loss_standard_error < 0.2 * result.loss
    with pytest.raises(ValueError, match="GF"):
        tune.optimize_gamma("ew", SIZES, energies, field=256, table=table, **args)


def test_monte_carlo_tuning_finds_the_exact_optimum_of_a_small_case():
    energies = [100.0, 5.0, 0.5]
    args = dict(workers=12, deadline=1.0)
    result = tune.optimize_gamma(
        "ew",
        (2, 2, 2),
        energies,
        method="monte_carlo",
        steps=120,
        starts=tune.default_starts(3)[[0, 1, 4]],
        evaluation_trials=2048,
        **args,
    )
    assert result.method == "monte_carlo"
    problem = tune.make_problem("ew", (2, 2, 2), energies, **args)
    exact = float(tune.expected_loss(problem, result.gamma))
    assert abs(result.loss - exact) <= 4.5 * result.loss_standard_error
    assert exact <= 1.03 * tune.grid_search(problem, 0.02).loss


def test_large_problems_choose_monte_carlo_and_small_ones_exact():
    small = tune.make_problem("ew", SIZES, [1.0, 1.0, 1.0], workers=30, deadline=1)
    big = tune.make_problem("ew", (4,) * 5, [1.0] * 5, workers=100, deadline=1)
    assert tune._resolve_method("auto", small, None, 512, 512, None) == "exact"
    assert tune._resolve_method("auto", big, None, 512, 512, None) == "monte_carlo"
    assert tune._resolve_method("auto", small, 2, 512, 10**6, None) == "monte_carlo"


def test_default_starts_cover_the_faces():
    starts = tune.default_starts(3, PAPER)
    assert starts.shape == (8, 3)
    np.testing.assert_allclose(starts[0], PAPER)
    np.testing.assert_allclose(starts.sum(axis=1), 1.0)
    assert np.all(starts > 0)
    assert tune.default_starts(6).shape == (6, 6)


def test_grid_search_agrees_with_single_evaluations():
    # Every lattice point, edges included, against an evaluation of its own (this
    # once caught a batched evaluation that went wrong on the CPU backend).
    problem = tune.make_problem(
        "ew", SIZES, paper_energies("cxr"), workers=12, deadline=0.8
    )
    grid = tune.grid_search(problem, 0.05)
    for index in range(0, grid.points.shape[0], 7):
        single = float(tune.expected_loss(problem, grid.points[index]))
        assert grid.losses[index] == pytest.approx(single, rel=1e-5, abs=1e-9)
    assert grid.loss == pytest.approx(grid.losses.min())
    np.testing.assert_allclose(grid.gamma, [1.0, 0.0, 0.0])


def test_simplex_grid():
    points = tune.simplex_grid(3, 0.01)
    assert points.shape == (5151, 3)
    np.testing.assert_allclose(points.sum(axis=1), 1.0)
    assert np.any(np.all(points == [1.0, 0.0, 0.0], axis=1))
    with pytest.raises(ValueError, match="step"):
        tune.simplex_grid(3, 0.03)


# ---------------------------------------------------------------------------------
# Invalid input.
# ---------------------------------------------------------------------------------

ENERGIES = [120.0, 3.0, 0.21]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_energies=[1.0, 2.0]), r"class_energies must have shape \(3,\)"),
        (dict(class_energies=[1.0, -2.0, 3.0]), "class_energies must be finite and"),
        (dict(class_energies=[0.0, 0.0, 0.0]), "positive total"),
        (dict(deadline=-0.5), r"deadline must be finite and non-negative \(got -0.5"),
        (dict(objective="median"), "objective must be one of 'deadline'"),
        (dict(deadline=[0.1, 0.2]), "needs one deadline"),
        (dict(objective="area", deadline=0.0), "positive horizon"),
        (dict(weights=[1.0]), "weights are only used"),
        (dict(scheme="mds"), "scheme must be 'now' or 'ew'"),
        (dict(scheme="fountain"), "scheme must be one of"),
        (dict(workers=0), "workers must be an integer >= 1"),
        (dict(initial_gamma=[0.5, 0.5, 0.5]), "initial_gamma must sum to 1"),
        (dict(method="newton"), "method must be one of"),
        (dict(field=6), "q"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(optimizer="adam"), "optimizer must be an optax"),
        (dict(gram=np.eye(9)), "exactly one of class_energies"),
        (dict(starts=[[1.0, 0.0]]), r"starts must have shape \[S, 3\]"),
    ],
)
def test_invalid_input_gets_a_clear_error(kwargs, message):
    arguments = dict(
        scheme="ew",
        class_energies=ENERGIES,
        workers=10,
        deadline=0.5,
        steps=2,
    )
    arguments.update(kwargs)
    scheme = arguments.pop("scheme")
    energies = arguments.pop("class_energies")
    with pytest.raises(ValueError, match=message):
        tune.optimize_gamma(scheme, SIZES, energies, **arguments)


def test_average_objective_weights_are_checked():
    with pytest.raises(ValueError, match="one entry per deadline"):
        tune.make_objective("average", [0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="not all zero"):
        tune.make_objective("average", [0.1, 0.2], [0.0, 0.0])
    with pytest.raises(ValueError, match="gram must be symmetric"):
        tune.make_problem(
            "now", (1, 1), gram=[[1.0, 2.0], [0.0, 1.0]], workers=3, deadline=1.0
        )


# ---------------------------------------------------------------------------------
# The `uepjax tune` job.
# ---------------------------------------------------------------------------------


def test_paper_config_loads_and_bad_keys_are_named(tmp_path):
    from uepjax import config, tune_report

    experiment = tune_report.load_config("sweeps/tune-paper.toml")
    assert experiment.deadlines == (0.25, 0.5, 1.0)
    assert experiment.paper_gamma == PAPER
    bad = tmp_path / "bad.toml"
    bad.write_text('experiment = "tune-paper"\n[tuning]\nstep = 3\n')
    with pytest.raises(config.ConfigError, match="tuning.step is not a known key"):
        tune_report.load_config(bad)
    bad.write_text('experiment = "tune-paper"\ndeadlines = [-1.0]\n')
    with pytest.raises(config.ConfigError, match="deadlines must be non-negative"):
        tune_report.load_config(bad)


def test_tune_job_writes_its_files_and_confirms_the_model(tmp_path):
    import argparse

    from uepjax import plot, tune_report

    path = tmp_path / "small.toml"
    path.write_text(
        'experiment = "tune-paper"\nschemes = ["ew"]\npartitions = ["cxr"]\n'
        "deadlines = [0.8]\n[workers]\ncount = 12\n[tuning]\nsteps = 60\n"
        "grid_step = 0.05\n[confirm]\ntrials = 2048\nchunk_size = 2048\n"
        "[curves]\ncount = 5\n"
    )
    parser = argparse.ArgumentParser()
    tune_report.add_arguments(parser)
    out = tmp_path / "out"
    arguments = parser.parse_args([str(path), "--out", str(out)])
    assert tune_report.run(arguments, cli.say) == 0
    assert {p.name for p in out.iterdir()} == {
        "tune.csv",
        "tune_curves.csv",
        "tune.png",
        "run.json",
    }
    (row,) = plot.read_csv(out / "tune.csv")
    assert float(row["tuned_loss"]) < float(row["paper_loss"])
    assert float(row["tuned_over_grid"]) <= 1.01
    # The model's loss against Monte Carlo with real decoding: 4.5 standard errors.
    for which in ("paper", "tuned"):
        model = float(row[f"{which}_loss"])
        mean, error = float(row[f"mc_{which}_loss"]), float(row[f"mc_{which}_se"])
        assert abs(model - mean) <= 4.5 * error
    table = tune_report.format_table([row])
    assert "cxr" in table and row["tuned_gamma"] in table
