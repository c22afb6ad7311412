"""Tuning the window probabilities ``gamma`` of NOW and EW codes by gradient descent.

The paper picks ``gamma = (0.40, 0.35, 0.25)`` by hand and leaves its optimisation
open (Sec. VI). For i.i.d. windows the expected normalised loss of an objective over
deadlines is

    J(gamma) = sum_n a_n E[loss | n packets]                                  (16, 18)
             = sum_n a_n sum_{|c| = n} Multinomial(c; n, gamma) loss(c),      (15)

where ``c = (n_1, ..., n_L)`` are the numbers of received packets per window and the
arrival weights ``a_n`` carry the deadlines and the latency model: ``a_n = P(N(t) = n)``
(eq. 13) for the loss at one deadline ``t``, a weighted sum of those for an average over
deadlines, and their integral over ``[0, T]`` for the area under the loss curve. The
weights do not depend on ``gamma``, so every objective is a polynomial in ``gamma``,
and three ways to evaluate it are provided:

- `expected_loss` without a table: the large-field model of `uepjax.theory`, exact in
  value and gradient, for sizes whose count vectors can be enumerated.
- `expected_loss` with a `CountLossTable`: a finite field. ``loss(c)`` becomes a Monte
  Carlo table of real decoding with the windows fixed by ``c`` (`count_loss_table`,
  fixed key), which does not depend on ``gamma``; ``J`` is then an exact polynomial in
  ``gamma`` times that table, with exact gradients.
- `estimate_loss`: a score-function (REINFORCE) Monte Carlo estimator for sizes where
  the sum over count vectors is too large (many classes or workers), with the
  large-field decoding rule or with real decoding over a finite field. ``loss(c)`` is
  piecewise constant in the counts, so a pathwise (reparameterised) gradient would
  vanish; the score function gives an unbiased gradient instead.

`optimize_gamma` minimises ``J`` over softmax logits with any optax optimizer. The
landscape is not convex (the probability of decoding a class grows like ``gamma_l^k_l``
near 0, so abandoning a class is a local minimum that competes with protecting it), so
the optimizer runs from several starting points at once (`default_starts`) and keeps the
best. `grid_search` is the brute-force check over a lattice of the simplex.

Example:
    >>> from uepjax import tune
    >>> result = tune.optimize_gamma("ew", (3, 3, 3), (120.0, 3.0, 0.21),
    ...                              workers=30, deadline=0.5, steps=200)
    >>> bool(result.loss < 0.01)  # the paper's gamma gives 0.034
    True
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uepjax import codes, decode, fields, partition, theory
from uepjax import latency as latency_lib

__all__ = [
    "AREA_INTERVALS",
    "EXACT_STEPS",
    "MAX_GRID_POINTS",
    "METHODS",
    "MONTE_CARLO_STEPS",
    "OBJECTIVES",
    "TABLE_MAX_DECODES",
    "CountLossTable",
    "GridResult",
    "History",
    "LossEstimate",
    "Objective",
    "Problem",
    "TuneResult",
    "count_loss_table",
    "default_starts",
    "estimate_loss",
    "expected_loss",
    "grid_search",
    "loss_given_arrivals",
    "make_objective",
    "make_problem",
    "optimize_gamma",
    "simplex_grid",
    "table_error_bound",
]

logger = logging.getLogger(__name__)

OBJECTIVES = ("deadline", "average", "area")
"""Known objectives: the loss at one deadline, a weighted average over deadlines, and
the area under the loss-versus-time curve on ``[0, horizon]``."""

METHODS = ("auto", "exact", "monte_carlo")
"""How `optimize_gamma` evaluates the objective (see the module docstring)."""

AREA_INTERVALS = 128
"""Simpson intervals on ``[0, horizon]`` for the area objective."""

EXACT_STEPS = 500
"""Default number of updates with the exact objective."""

MONTE_CARLO_STEPS = 300
"""Default number of updates with the Monte Carlo estimator."""

TABLE_MAX_DECODES = 4_000_000
"""``method="auto"`` builds a finite-field table up to this many decoded trials."""

MAX_GRID_POINTS = 2_000_000
"""Largest lattice `grid_search` evaluates."""

_START_FLOOR = 0.02
_LOG_FLOOR = 1e-7

# How many times the optimisation step has been traced (tests check no retracing).
_TRACES: collections.Counter[str] = collections.Counter()


# ---------------------------------------------------------------------------------
# Validation of user input.
# ---------------------------------------------------------------------------------


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _describe(values: np.ndarray) -> str:
    if values.ndim == 0:
        return repr(values.item())
    return np.array2string(values, precision=6, threshold=12)


def _check_scheme(scheme: Any) -> str:
    parsed = codes.Scheme.parse(scheme)
    if parsed not in (codes.Scheme.NOW, codes.Scheme.EW):
        raise ValueError(
            f"scheme must be 'now' or 'ew' (got {scheme!r}); only window codes have "
            "window probabilities to tune"
        )
    return parsed.value


def _check_class_sizes(class_sizes: Any) -> tuple[int, ...]:
    if isinstance(class_sizes, numbers.Integral) or not isinstance(
        class_sizes, Sequence | np.ndarray
    ):
        raise ValueError(
            "class_sizes must be a sequence of positive integers, one per class "
            f"(got {class_sizes!r})"
        )
    sizes = tuple(class_sizes)
    if not sizes or any(
        isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
        for k in sizes
    ):
        raise ValueError(
            "class_sizes must be a non-empty sequence of positive integers "
            f"(got {class_sizes!r})"
        )
    return tuple(int(k) for k in sizes)


def _check_integer(value: Any, name: str, minimum: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _as_float_array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be real numbers (got {value!r})") from None


def _check_gamma(gamma: Any, num_classes: int, name: str = "gamma") -> jax.Array:
    """``[L]`` float32 window probabilities; values are checked when concrete."""
    array = jnp.asarray(gamma, dtype=jnp.float32)
    if array.shape != (num_classes,):
        raise ValueError(
            f"{name} must have shape ({num_classes},), one probability per window "
            f"(got shape {array.shape})"
        )
    if not _is_concrete(gamma):
        return array
    host = _as_float_array(gamma, name)
    if not np.all(np.isfinite(host)) or np.any(host < 0):
        raise ValueError(
            f"{name} must be finite and non-negative (got {_describe(host)}); pass "
            "normalized window probabilities"
        )
    total = float(host.sum())
    if abs(total - 1.0) > theory.GAMMA_TOLERANCE:
        raise ValueError(
            f"{name} must sum to 1 (got {total:.9g}); pass normalized window "
            "probabilities"
        )
    return array


def _check_field(field: Any) -> fields.Field | None:
    """None (or "large") is the large-field model; anything else a real field."""
    if field is None or (isinstance(field, str) and field.lower() == "large"):
        return None
    return fields.get_field(field)


def _field_name(field: fields.Field | None) -> str:
    if field is None:
        return "large-field model"
    if field.order is None:
        return "real"
    return f"GF({field.order})"


def _loss_matrix(
    class_energies: Any, gram: Any, class_sizes: tuple[int, ...]
) -> np.ndarray:
    """The normalised ``[K]`` diagonal or ``[K, K]`` Gram matrix, in class order."""
    num_classes, subproducts = len(class_sizes), sum(class_sizes)
    if (class_energies is None) == (gram is None):
        raise ValueError(
            "pass exactly one of class_energies ([L] per-class or [K] per-sub-product "
            "energies) and gram ([K, K] Gram matrix of the sub-products)"
        )
    if gram is None:
        energies = _as_float_array(class_energies, "class_energies")
        if energies.shape not in ((num_classes,), (subproducts,)):
            raise ValueError(
                f"class_energies must have shape ({num_classes},), one energy per "
                f"class, or ({subproducts},), one per sub-product in class order "
                f"(got shape {energies.shape})"
            )
        if not np.all(np.isfinite(energies)) or np.any(energies < 0):
            raise ValueError(
                "class_energies must be finite and non-negative (got "
                f"{_describe(energies)})"
            )
        if energies.shape[0] != subproducts:
            # Per-class totals: the large-field loss depends only on them; a finite
            # field sees them split evenly over the sub-products of the class.
            energies = np.repeat(energies / np.asarray(class_sizes), class_sizes)
        matrix, name = energies, "class_energies"
    else:
        matrix = _as_float_array(gram, "gram")
        if matrix.shape != (subproducts, subproducts):
            raise ValueError(
                f"gram must have shape ({subproducts}, {subproducts}), the Gram matrix "
                f"of the sub-products in class order (got shape {matrix.shape})"
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("gram must be finite (got NaN or infinite entries)")
        scale = np.abs(matrix).max()
        if not np.allclose(matrix, matrix.T, rtol=1e-5, atol=1e-7 * scale):
            raise ValueError("gram must be symmetric: G_kj = <C_k, C_j>_F")
        if np.any(np.diag(matrix) < 0):
            raise ValueError(
                f"gram must have a non-negative diagonal (got {_describe(matrix)})"
            )
        if not np.any(matrix - np.diag(np.diag(matrix))):
            matrix = np.diag(matrix).copy()
        name = "gram"
    total = float(matrix.sum())
    if not total > 0:
        raise ValueError(
            f"{name} must have a positive total energy to normalise the loss "
            f"(got {total!r})"
        )
    return matrix / total


# ---------------------------------------------------------------------------------
# Objectives: arrival weights a_n that do not depend on gamma.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Objective:
    """A linear functional of the loss-versus-time curve ``E[loss(t)]``.

    ``J = sum_i weights[i] E[loss(deadlines[i])]``: one deadline with weight 1, a
    normalised weighted average over deadlines, or Simpson's rule for the area
    ``int_0^horizon E[loss(t)] dt``.

    Attributes:
        kind: one of `OBJECTIVES`.
        deadlines: the times where the curve is evaluated.
        weights: their weights (non-negative).
        horizon: the upper limit of the area objective, else None.
    """

    kind: str
    deadlines: tuple[float, ...]
    weights: tuple[float, ...]
    horizon: float | None = None

    def arrival_weights(
        self, latency: latency_lib.LatencyModel, workers: int
    ) -> jax.Array:
        """``[W + 1]`` float32 weights ``a_n`` with ``J = sum_n a_n E[loss | n]``.

        ``a_n = sum_i weights[i] P(N(deadlines[i]) = n)``, with the binomial law of
        eq. (13) for i.i.d. workers and the Poisson-binomial law for per-worker
        latency parameters (`uepjax.theory.arrivals_by_deadline`).
        """
        arrivals = theory.arrivals_by_deadline(latency, workers, self.deadlines)
        weights = jnp.asarray(self.weights, jnp.float32)
        return jnp.einsum(
            "d,dn->n", weights, arrivals, precision=jax.lax.Precision.HIGHEST
        )

    def describe(self) -> str:
        """A short label, e.g. ``"loss at t = 0.5"``."""
        if self.kind == "deadline":
            return f"loss at t = {self.deadlines[0]:g}"
        if self.kind == "area":
            return f"area under the loss curve on [0, {self.horizon:g}]"
        shown = ", ".join(f"{t:g}" for t in self.deadlines[:4])
        more = ", ..." if len(self.deadlines) > 4 else ""
        return f"weighted average of the loss at t = {shown}{more}"


def make_objective(
    objective: str = "deadline",
    deadline: Any = None,
    weights: Any = None,
    *,
    intervals: int = AREA_INTERVALS,
) -> Objective:
    """Builds and validates an `Objective`.

    Args:
        objective: ``"deadline"`` (the loss at one deadline), ``"average"`` (a weighted
            average over several deadlines) or ``"area"`` (the area under the loss
            curve on ``[0, deadline]``).
        deadline: a non-negative time (``"deadline"``), a non-empty sequence of them
            (``"average"``) or the positive horizon (``"area"``).
        weights: for ``"average"`` only, non-negative weights of the deadlines,
            normalised to sum 1 (default: equal weights).
        intervals: Simpson intervals for ``"area"`` (even, >= 2).

    Returns:
        The `Objective`.

    Raises:
        ValueError: for an unknown objective, a negative or non-finite deadline, the
            wrong number of deadlines or weights, or weights that are not usable.

    Example:
        >>> make_objective("average", [0.25, 0.5], [1.0, 3.0]).weights
        (0.25, 0.75)
    """
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {', '.join(map(repr, OBJECTIVES))} "
            f"(got {objective!r})"
        )
    if deadline is None:
        raise ValueError(
            f"deadline is required: a time for objective={objective!r}"
            + (" (the horizon of the area)" if objective == "area" else "")
        )
    times = _as_float_array(deadline, "deadline")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError(
            f"deadline must be finite and non-negative (got {_describe(times)})"
        )
    if weights is not None and objective != "average":
        raise ValueError(
            f"weights are only used by objective='average' (got objective="
            f"{objective!r})"
        )
    if objective == "deadline":
        if times.size != 1:
            raise ValueError(
                f"objective='deadline' needs one deadline (got {times.size}); use "
                "objective='average' for several"
            )
        return Objective("deadline", (float(times.reshape(-1)[0]),), (1.0,))
    if objective == "average":
        if times.ndim != 1 or times.size == 0:
            raise ValueError(
                "objective='average' needs a non-empty 1-D sequence of deadlines "
                f"(got shape {times.shape})"
            )
        given = np.ones_like(times) if weights is None else weights
        values = _as_float_array(given, "weights")
        if values.shape != times.shape:
            raise ValueError(
                f"weights must have one entry per deadline, shape {times.shape} (got "
                f"shape {values.shape})"
            )
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(
                "weights must be finite, non-negative and not all zero (got "
                f"{_describe(values)})"
            )
        values = values / values.sum()
        return Objective("average", tuple(map(float, times)), tuple(map(float, values)))
    if times.size != 1 or not float(times.reshape(-1)[0]) > 0:
        raise ValueError(
            "objective='area' needs one positive horizon as deadline (got "
            f"{_describe(times)})"
        )
    intervals = _check_integer(intervals, "intervals", 2)
    if intervals % 2:
        raise ValueError(f"intervals must be even for Simpson's rule (got {intervals})")
    horizon = float(times.reshape(-1)[0])
    nodes = np.linspace(0.0, horizon, intervals + 1)
    simpson = np.ones(intervals + 1)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    simpson *= horizon / intervals / 3.0
    return Objective(
        "area", tuple(map(float, nodes)), tuple(map(float, simpson)), horizon
    )


# ---------------------------------------------------------------------------------
# The problem: everything the objective needs besides gamma.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the expected loss of a window code depends on, besides ``gamma``.

    A pytree: the sizes are static, the loss matrix and the arrival weights are array
    leaves, so a new deadline or new energies do not recompile.

    Attributes:
        scheme: ``"now"`` or ``"ew"`` (static).
        class_sizes: ``(k_1, ..., k_L)``, most important first (static).
        workers: ``W``, one packet each (static).
        gram: ``[K]`` float32 energies or ``[K, K]`` float32 Gram matrix of the
            sub-products in class order, normalised so that ``1^T G 1 = 1``.
        arrival_weights: ``[W + 1]`` float32 weights ``a_n`` of the objective.
    """

    scheme: str
    class_sizes: tuple[int, ...]
    workers: int
    gram: jax.Array
    arrival_weights: jax.Array

    @property
    def num_classes(self) -> int:
        """``L``."""
        return len(self.class_sizes)

    @property
    def subproducts(self) -> int:
        """``K``."""
        return sum(self.class_sizes)

    @property
    def class_of_subproduct(self) -> np.ndarray:
        """``[K] int32`` class of each sub-product (class order)."""
        return np.repeat(np.arange(self.num_classes), self.class_sizes).astype(np.int32)

    @property
    def windows(self) -> np.ndarray:
        """``[L, K] bool``: the sub-products in each window (`uepjax.codes`)."""
        uniform = np.full(self.num_classes, 1.0 / self.num_classes)
        return codes.make_code(self.scheme, self.class_sizes, uniform).windows

    @property
    def compositions(self) -> int:
        """Number of count vectors with totals ``0..W`` (the exact sum's size)."""
        return math.comb(self.workers + self.num_classes, self.num_classes)

    def with_objective(
        self, objective: Objective, latency: latency_lib.LatencyModel | None = None
    ) -> Problem:
        """The same problem with the arrival weights of another objective."""
        latency = latency_lib.Exponential(1.0) if latency is None else latency
        weights = objective.arrival_weights(latency, self.workers)
        return dataclasses.replace(self, arrival_weights=weights)


jax.tree_util.register_dataclass(
    Problem,
    data_fields=["gram", "arrival_weights"],
    meta_fields=["scheme", "class_sizes", "workers"],
)


def make_problem(
    scheme: Any,
    class_sizes: Sequence[int],
    class_energies: Any = None,
    *,
    workers: int,
    deadline: Any,
    gram: Any = None,
    latency: latency_lib.LatencyModel | None = None,
    objective: str = "deadline",
    weights: Any = None,
) -> Problem:
    """Validates a tuning problem and computes its arrival weights.

    Args:
        scheme: ``"now"`` or ``"ew"`` (or `uepjax.codes.Scheme`).
        class_sizes: ``(k_1, ..., k_L)`` positive integers, most important first.
        class_energies: ``[L]`` expected energy of each class, or ``[K]`` of each
            sub-product in class order (e.g. `uepjax.partition.expected_energies`
            reordered by `uepjax.partition.paper_class_table`); any scale. Per-class
            values are split evenly over the sub-products of a class, which only a
            finite field can tell apart.
        workers: ``W >= 1``.
        deadline: the deadline, deadlines or horizon of the objective
            (`make_objective`).
        gram: instead of energies, the ``[K, K]`` Gram matrix ``G_kj = <C_k, C_j>_F``
            of given ``A``, ``B`` in class order (`ClassTable.reorder_gram`).
        latency: a `uepjax.latency` model; default the paper's ``Exponential(1)``.
        objective: ``"deadline"``, ``"average"`` or ``"area"``.
        weights: deadline weights for ``"average"``.

    Returns:
        The `Problem`.

    Raises:
        ValueError: for an unknown scheme or objective, bad class sizes, energies of
            the wrong length or negative, a negative deadline, or a latency model for
            another number of workers.
    """
    scheme = _check_scheme(scheme)
    sizes = _check_class_sizes(class_sizes)
    workers = _check_integer(workers, "workers", 1)
    matrix = _loss_matrix(class_energies, gram, sizes)
    goal = make_objective(objective, deadline, weights)
    latency = latency_lib.Exponential(1.0) if latency is None else latency
    if not isinstance(latency, latency_lib.LatencyModel):
        raise ValueError(
            f"latency must be a uepjax.latency model (got {type(latency).__name__})"
        )
    return Problem(
        scheme,
        sizes,
        workers,
        jnp.asarray(matrix, jnp.float32),
        goal.arrival_weights(latency, workers),
    )


# ---------------------------------------------------------------------------------
# Exact objective: large-field theory, or a finite-field table of loss given counts.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CountLossTable:
    """Monte Carlo ``E[loss | counts]`` over a finite field, for every count vector.

    Row ``r`` belongs to the count vector ``counts[r]`` of the composition table of
    `uepjax.theory` (all totals ``0..W``, sorted by total). A pytree: the estimates
    are leaves, the rest is static.

    Attributes:
        mean: ``[rows]`` float32 normalised loss given the counts.
        standard_error: ``[rows]`` float32 standard error of each entry.
        workers: ``W`` (static).
        num_classes: ``L`` (static).
        trials: decoding trials per row (static).
        field: the field of the coefficients (static).
    """

    mean: jax.Array
    standard_error: jax.Array
    workers: int
    num_classes: int
    trials: int
    field: fields.Field

    @property
    def counts(self) -> np.ndarray:
        """``[rows, L] int32`` the window counts of each row."""
        return theory._composition_table(self.workers, self.num_classes).counts


jax.tree_util.register_dataclass(
    CountLossTable,
    data_fields=["mean", "standard_error"],
    meta_fields=["workers", "num_classes", "trials", "field"],
)


def _check_table(table: CountLossTable, problem: Problem) -> None:
    if not isinstance(table, CountLossTable):
        raise ValueError(f"table must be a CountLossTable (got {type(table).__name__})")
    if (table.workers, table.num_classes) != (problem.workers, problem.num_classes):
        raise ValueError(
            f"table is for {table.workers} workers and {table.num_classes} classes, "
            f"but the problem has {problem.workers} and {problem.num_classes}"
        )


def loss_given_arrivals(
    problem: Problem, gamma: Any, table: CountLossTable | None = None
) -> jax.Array:
    """``E[loss | n packets]`` for ``n = 0..W`` (eqs. 17 and 19, exact c x r value).

    Without a table this is `uepjax.theory.conditional_loss` (large-field model); with
    one it is ``sum_{|c| = n} Multinomial(c; n, gamma) table(c)`` (eq. 15).

    Args:
        problem: the `Problem`.
        gamma: ``[L]`` window probabilities (differentiable; the gradient is the
            exact derivative of the polynomial, also on the edge of the simplex).
        table: a `CountLossTable` for a finite field, or None.

    Returns:
        ``[W + 1]`` float32 normalised loss.
    """
    gamma = _check_gamma(gamma, problem.num_classes)
    workers = problem.workers
    if table is None:
        diagonal = problem.gram.ndim == 1
        return theory.conditional_loss(
            problem.scheme,
            problem.class_sizes,
            gamma,
            problem.gram if diagonal else None,
            workers,
            None if diagonal else problem.gram,
        )
    _check_table(table, problem)
    compositions = theory._composition_table(workers, problem.num_classes)
    pmf = theory._composition_pmf(gamma, workers)
    return jax.ops.segment_sum(
        pmf * table.mean,
        compositions.totals,
        num_segments=workers + 1,
        indices_are_sorted=True,
    )


def expected_loss(
    problem: Problem, gamma: Any, table: CountLossTable | None = None
) -> jax.Array:
    """The objective ``J(gamma) = sum_n a_n E[loss | n]`` (eqs. 16 and 18), exactly.

    Args:
        problem: the `Problem` (its arrival weights carry the objective).
        gamma: ``[L]`` window probabilities; differentiable.
        table: a `CountLossTable` for a finite field, or None for the large-field
            model.

    Returns:
        ``[]`` float32 expected normalised loss (or its area, for the area objective).

    Example:
        >>> p = make_problem("now", (3, 3, 3), (120.0, 3.0, 0.21), workers=30,
        ...                  deadline=1.0)
        >>> round(float(expected_loss(p, [0.4, 0.35, 0.25])), 5)
        0.01028
    """
    conditional = loss_given_arrivals(problem, gamma, table)
    return jnp.dot(
        problem.arrival_weights, conditional, precision=jax.lax.Precision.HIGHEST
    )


def table_error_bound(problem: Problem, gamma: Any, table: CountLossTable) -> jax.Array:
    """An upper bound on the standard error of `expected_loss` with a table.

    The rows decoded from the same head sequence (see `count_loss_table`) share their
    trials and are correlated; bounding each covariance by the product of standard
    deviations (Cauchy-Schwarz) and adding the independent heads gives the bound.

    Args:
        problem: the `Problem`.
        gamma: ``[L]`` window probabilities.
        table: the `CountLossTable`.

    Returns:
        ``[]`` float32, at least the standard error of ``expected_loss(problem,
        gamma, table)`` due to the Monte Carlo error of the table.
    """
    gamma = _check_gamma(gamma, problem.num_classes)
    _check_table(table, problem)
    compositions = theory._composition_table(problem.workers, problem.num_classes)
    heads = _heads(problem.workers, problem.num_classes)
    pmf = theory._composition_pmf(gamma, problem.workers)
    weight = jnp.abs(problem.arrival_weights[compositions.totals] * pmf)
    per_head = jax.ops.segment_sum(
        weight * table.standard_error,
        heads.head_of_row,
        num_segments=heads.windows.shape[0],
    )
    return jnp.sqrt(jnp.sum(per_head**2))


# ---------------------------------------------------------------------------------
# Losses after every prefix of a window sequence: large-field rule or real decoding.
# ---------------------------------------------------------------------------------


def _coefficient_rows(
    key: jax.Array, windows: jax.Array, support: np.ndarray, field: fields.Field
) -> jax.Array:
    """``[W, K]`` packet rows for a fixed window sequence ``windows [W]``.

    The packet model of `uepjax.codes.worker_coefficients` (uniform field elements on
    the window's support) with the windows given instead of drawn.
    """
    values = field.random(key, (windows.shape[0], support.shape[1]))
    return jnp.where(jnp.asarray(support)[windows], values, jnp.zeros_like(values))


def _prefix_counts(windows: jax.Array, num_classes: int) -> jax.Array:
    """``[T, W + 1, L]`` int32 window counts of the first ``n = 0..W`` packets."""
    workers = windows.shape[-1]
    one_hot = jax.nn.one_hot(windows, num_classes, dtype=jnp.float32)
    # A strictly lower-triangular matmul: on CPU cheaper than a cumulative sum, and
    # exact, since the counts are small integers.
    before = np.arange(workers)[None, :] < np.arange(workers + 1)[:, None]
    counts = jnp.einsum(
        "nw,twl->tnl",
        jnp.asarray(before, jnp.float32),
        one_hot,
        precision=jax.lax.Precision.HIGHEST,
    )
    return counts.astype(jnp.int32)


def _class_gram(problem: Problem) -> jax.Array:
    """The Gram matrix summed over the sub-products of each class (``[L]``, ``[L, L]``).

    The large-field decoder recovers whole classes, so ``u^T G u`` equals the same
    quadratic form over class indicators with this matrix.
    """
    membership = jnp.asarray(
        problem.class_of_subproduct[:, None] == np.arange(problem.num_classes),
        jnp.float32,
    )
    highest = jax.lax.Precision.HIGHEST
    if problem.gram.ndim == 1:
        return jnp.matmul(problem.gram, membership, precision=highest)
    return jnp.einsum(
        "kl,kj,jm->lm", membership, problem.gram, membership, precision=highest
    )


def _prefix_losses(
    keys: jax.Array,
    windows: jax.Array,
    counts: jax.Array,
    problem: Problem,
    field: fields.Field | None,
) -> jax.Array:
    """``[T, W + 1]`` normalised loss after the first ``n`` packets of each sequence.

    Args:
        keys: ``[T]`` keys for the coefficients (unused by the large-field model).
        windows: ``[T, W]`` int32 window of each packet, in arrival order.
        counts: ``[T, W + 1, L]`` their prefix counts (`_prefix_counts`).
        problem: the `Problem`.
        field: None for the large-field decoding rule, else real decoding.
    """
    if field is None:
        decodable = theory.decodable_classes(
            problem.scheme, problem.class_sizes, counts
        )
        return partition.loss(~decodable, _class_gram(problem))
    rows = jax.vmap(_coefficient_rows, (0, 0, None, None))(
        keys, windows, problem.windows, field
    )
    recovered = decode.recovered_after_arrivals(rows, field)
    return partition.loss(~recovered, problem.gram)


class _Heads(NamedTuple):
    """Window sequences that decode every count vector as a prefix.

    Head ``h`` fixes the counts of windows ``1..L-1`` (``start[h]`` packets in total)
    and appends ``W - start[h]`` packets of window ``L``; its prefix of length
    ``start[h] + j`` has the counts ``(head, j)``. Every count vector is exactly one
    such prefix, so one progressive decoding per head serves ``W - start + 1`` rows.
    """

    windows: np.ndarray  # [H, W] int32
    start: np.ndarray  # [H] int32
    row: np.ndarray  # [H, W + 1] int32 row of (head, n - start), -1 where n < start
    head_of_row: np.ndarray  # [rows] int32


@functools.lru_cache(maxsize=16)
def _heads(workers: int, num_classes: int) -> _Heads:
    table = theory._composition_table(workers, num_classes)
    if num_classes == 1:
        head_counts = np.zeros((1, 0), np.int32)
    else:
        head_counts = theory._composition_table(workers, num_classes - 1).counts
    start = head_counts.sum(axis=1).astype(np.int32)
    windows = np.full((head_counts.shape[0], workers), num_classes - 1, np.int32)
    for h, counts in enumerate(head_counts):
        windows[h, : start[h]] = np.repeat(np.arange(num_classes - 1), counts)

    radix = (workers + 1) ** np.arange(num_classes, dtype=np.int64)
    row_codes = table.counts.astype(np.int64) @ radix
    order = np.argsort(row_codes)
    n = np.arange(workers + 1)
    last = n[None, :] - start[:, None]  # [H, W + 1]
    valid = last >= 0
    full = np.concatenate(
        [
            np.broadcast_to(head_counts[:, None, :], last.shape + (num_classes - 1,)),
            np.where(valid, last, 0)[..., None],
        ],
        axis=-1,
    ).astype(np.int64)
    position = np.searchsorted(row_codes[order], full @ radix)
    row = np.where(valid, order[np.minimum(position, order.size - 1)], -1)
    head_of_row = np.empty(table.counts.shape[0], np.int32)
    head_of_row[row[valid]] = np.nonzero(valid)[0]
    return _Heads(windows, start, row.astype(np.int32), head_of_row)


@functools.partial(jax.jit, static_argnames=("field", "trials"))
def _table_chunk(
    key: jax.Array,
    head_index: jax.Array,
    windows: jax.Array,
    problem: Problem,
    field: fields.Field,
    trials: int,
) -> tuple[jax.Array, jax.Array]:
    """Sums and sums of squares over ``trials`` of the prefix losses of each head."""
    chunk, workers = windows.shape

    def trial_keys(h):
        head_key = jax.random.fold_in(key, h)
        return jax.vmap(jax.random.fold_in, (None, 0))(head_key, jnp.arange(trials))

    keys = jax.vmap(trial_keys)(head_index).reshape(-1)
    sequences = jnp.repeat(windows, trials, axis=0)
    counts = _prefix_counts(sequences, problem.num_classes)
    losses = _prefix_losses(keys, sequences, counts, problem, field)
    losses = losses.reshape(chunk, trials, workers + 1)
    return jnp.sum(losses, axis=1), jnp.sum(losses**2, axis=1)


def count_loss_table(
    key: jax.Array,
    problem: Problem,
    field: Any,
    trials: int = 512,
    *,
    chunk_size: int = 32_768,
    progress: Callable[[int], None] | None = None,
) -> CountLossTable:
    """``E[loss | counts]`` by real decoding, for every count vector (design idea 6).

    For each count vector ``c`` (totals ``0..W``) the windows of the packets are fixed
    by ``c``, the coefficients are drawn uniformly from the field as in
    `uepjax.codes.worker_coefficients`, and the packets are decoded progressively
    (`uepjax.decode.recovered_after_arrivals`). One decoding of a head sequence
    (windows ``1..L-1`` first, then window ``L``) gives all vectors that share the
    first ``L - 1`` counts, since the recovered set does not depend on the order of
    the packets. The table does not depend on ``gamma``.

    Args:
        key: a typed key; trial ``r`` of head ``h`` uses ``fold_in(fold_in(key, h),
            r)``, so the table does not depend on ``chunk_size``.
        problem: the `Problem` (scheme, sizes, workers and Gram matrix are used).
        field: the field order ``q``, ``"real"`` or a `uepjax.fields.Field`.
        trials: decoding trials per count vector (>= 2).
        chunk_size: decoded sequences per batch (memory).
        progress: called with the number of trials finished after each batch.

    Returns:
        The `CountLossTable`.

    Raises:
        ValueError: for a bad field or trial count, or too many count vectors.

    Note:
        The cost is ``C(W + L - 1, L - 1)`` heads times ``trials`` decodings of ``W``
        packets; for many workers or classes use `estimate_loss` instead.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem (got {type(problem).__name__})")
    field = fields.get_field(field)
    trials = _check_integer(trials, "trials", 2)
    chunk_size = _check_integer(chunk_size, "chunk_size", 1)
    heads = _heads(problem.workers, problem.num_classes)
    count = heads.windows.shape[0]
    per_chunk = max(1, min(count, chunk_size // trials))
    sums = np.zeros((count, problem.workers + 1))
    squares = np.zeros_like(sums)
    logger.debug("count-loss table: %d heads x %d trials over %s", count, trials, field)
    for first in range(0, count, per_chunk):
        index = np.arange(first, first + per_chunk) % count
        chunk_sums, chunk_squares = _table_chunk(
            key,
            jnp.asarray(index, jnp.uint32),
            jnp.asarray(heads.windows[index]),
            problem,
            field,
            trials,
        )
        kept = min(per_chunk, count - first)
        sums[first : first + kept] = np.asarray(chunk_sums, np.float64)[:kept]
        squares[first : first + kept] = np.asarray(chunk_squares, np.float64)[:kept]
        if progress is not None:
            progress(kept * trials)

    valid = heads.row >= 0
    rows = theory._composition_table(problem.workers, problem.num_classes).counts
    mean = np.zeros(rows.shape[0])
    mean_squares = np.zeros(rows.shape[0])
    mean[heads.row[valid]] = sums[valid] / trials
    mean_squares[heads.row[valid]] = squares[valid] / trials
    variance = np.maximum(mean_squares - mean**2, 0.0) * trials / (trials - 1)
    return CountLossTable(
        jnp.asarray(mean, jnp.float32),
        jnp.asarray(np.sqrt(variance / trials), jnp.float32),
        problem.workers,
        problem.num_classes,
        trials,
        field,
    )


# ---------------------------------------------------------------------------------
# Monte Carlo objective for large sizes: the score-function estimator.
# ---------------------------------------------------------------------------------


class LossEstimate(NamedTuple):
    """A Monte Carlo estimate of the objective.

    Attributes:
        value: ``[]`` float32 estimate of ``J(gamma)``; its gradient with respect to
            ``gamma`` is the score-function estimate of the gradient of ``J``.
        standard_error: ``[]`` float32 standard error of ``value`` (no gradient).
    """

    value: jax.Array
    standard_error: jax.Array


def _sample_windows(uniforms: jax.Array, gamma: jax.Array) -> jax.Array:
    """Windows by inverse CDF: ``[T, W]`` int32 from ``[T, W]`` uniforms in [0, 1).

    Window ``l`` is the first one with ``gamma_l > 0`` and ``u < cdf_l``; rounding of
    the cumulative sum can leave ``u`` above all of them, which maps to the last
    window of positive probability, so a window of probability 0 is never drawn.
    """
    positive = gamma > 0
    hit = (uniforms[..., None] < jnp.cumsum(gamma)) & positive
    last = gamma.shape[0] - 1 - jnp.argmax(positive[::-1])
    return jnp.where(jnp.any(hit, axis=-1), jnp.argmax(hit, axis=-1), last)


@functools.partial(jax.jit, static_argnames=("trials", "field"))
def _estimate(
    key: jax.Array,
    problem: Problem,
    gamma: jax.Array,
    trials: int,
    field: fields.Field | None,
) -> LossEstimate:
    def draw(t):
        trial_key = jax.random.fold_in(key, t)
        uniforms = jax.random.uniform(trial_key, (problem.workers,))
        # The large-field model draws no coefficients (and compiles faster without).
        coefficient_key = None if field is None else jax.random.fold_in(trial_key, 1)
        return uniforms, coefficient_key

    uniforms, coefficient_keys = jax.vmap(draw)(jnp.arange(trials, dtype=jnp.uint32))
    windows = _sample_windows(uniforms, jax.lax.stop_gradient(gamma))
    counts = _prefix_counts(windows, problem.num_classes)
    losses = jax.lax.stop_gradient(
        _prefix_losses(coefficient_keys, windows, counts, problem, field)
    )
    weights = problem.arrival_weights
    per_trial = losses @ weights
    value = jnp.mean(per_trial)
    # Leave-one-out baseline per prefix length: keeps the estimator unbiased along
    # the simplex and removes most of its variance.
    baseline = (jnp.sum(losses, axis=0) - losses) / (trials - 1)
    # log P(first n windows) = sum_l counts_l log gamma_l; a window of probability 0
    # is never drawn, so its (masked) logarithm is never used.
    log_gamma = jnp.log(jnp.where(gamma > 0, gamma, 1.0))
    log_probability = counts.astype(jnp.float32) @ log_gamma
    surrogate = jnp.mean(((losses - baseline) * log_probability) @ weights)
    standard_error = jnp.std(per_trial, ddof=1) / jnp.sqrt(trials)
    return LossEstimate(
        value + surrogate - jax.lax.stop_gradient(surrogate),
        jax.lax.stop_gradient(standard_error),
    )


def estimate_loss(
    key: jax.Array,
    problem: Problem,
    gamma: Any,
    trials: int = 1024,
    field: Any = None,
) -> LossEstimate:
    """Monte Carlo objective with a score-function gradient, for large sizes.

    Each trial draws the windows of ``W`` packets in arrival order from ``gamma`` and
    evaluates the loss after every prefix: by the large-field rule
    (`uepjax.theory.decodable_classes`) or by real decoding over a field. With ``f_n``
    the loss after ``n`` packets and ``log p_n`` the log-probability of the first
    ``n`` windows, ``grad E[f_n] = E[(f_n - b_n) grad log p_n]`` for any baseline
    ``b_n`` that does not depend on the trial; the leave-one-out mean is used.

    Args:
        key: a typed key; trial ``t`` uses ``fold_in(key, t)``. A fixed key gives a
            deterministic, differentiable function of ``gamma``.
        problem: the `Problem`.
        gamma: ``[L]`` window probabilities.
        trials: number of trials (>= 2).
        field: None for the large-field model, else a field order, ``"real"`` or a
            `uepjax.fields.Field` for real decoding.

    Returns:
        A `LossEstimate`. ``jax.grad(lambda g: estimate_loss(k, p, g).value)`` is an
        unbiased estimate of the gradient of `expected_loss` along the simplex (for
        the tangent directions, e.g. through softmax logits); its component along
        ``(1, ..., 1)`` is not meaningful.

    Raises:
        ValueError: for a bad ``gamma``, trial count or field.
    """
    trials = _check_integer(trials, "trials", 2)
    gamma = _check_gamma(gamma, problem.num_classes)
    return _estimate(key, problem, gamma, trials, _check_field(field))


# ---------------------------------------------------------------------------------
# Brute force over the simplex.
# ---------------------------------------------------------------------------------


def _unbatched(function: Callable[[Any], Any], inputs: Any) -> Any:
    """``function`` over the leading axis of ``inputs``, one slice at a time.

    Note:
        One slice at a time keeps memory at one ``[count vectors]`` row of the exact
        objective (a simplex grid holds thousands of points). It was introduced when
        the multinomial log-probabilities of `uepjax.theory` went wrong batched on
        jaxlib 0.10's CPU backend; they are now a matrix product and correct under
        ``vmap`` (tested), so multi-start runs could be vmapped again.
    """
    return jax.lax.map(function, inputs)


def simplex_grid(num_classes: int, step: float) -> np.ndarray:
    """All ``gamma`` with coordinates in ``{0, step, 2 step, ..., 1}`` summing to 1.

    Args:
        num_classes: ``L >= 1``.
        step: the lattice spacing, ``1 / m`` for an integer ``m``.

    Returns:
        ``[C(m + L - 1, L - 1), L]`` float64.

    Raises:
        ValueError: if ``1 / step`` is not an integer or the lattice is too large.
    """
    num_classes = _check_integer(num_classes, "num_classes", 1)
    if not isinstance(step, numbers.Real) or not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] (got {step!r})")
    resolution = round(1.0 / step)
    if abs(resolution * step - 1.0) > 1e-9:
        raise ValueError(f"step must be 1/m for an integer m (got {step!r})")
    points = math.comb(resolution + num_classes - 1, num_classes - 1)
    if points > MAX_GRID_POINTS:
        raise ValueError(
            f"a lattice of step {step} over {num_classes} classes has {points} points "
            f"(limit {MAX_GRID_POINTS}); use a coarser step"
        )
    return theory._compositions_of(resolution, num_classes) / resolution


class GridResult(NamedTuple):
    """The brute-force search of `grid_search`.

    Attributes:
        gamma: ``[L]`` the best lattice point.
        loss: its objective.
        points: ``[P, L]`` the lattice.
        losses: ``[P]`` the objective at every point.
    """

    gamma: np.ndarray
    loss: float
    points: np.ndarray
    losses: np.ndarray


@jax.jit
def _grid_losses(
    problem: Problem, points: jax.Array, table: CountLossTable | None
) -> jax.Array:
    return _unbatched(lambda g: expected_loss(problem, g, table), points)


def grid_search(
    problem: Problem,
    step: float = 0.01,
    table: CountLossTable | None = None,
    *,
    chunk_size: int = 1024,
) -> GridResult:
    """Evaluates the exact objective on every point of `simplex_grid`; keeps the best.

    Args:
        problem: the `Problem`.
        step: the lattice spacing (0.01 gives 5151 points for three classes).
        table: a `CountLossTable` for a finite field, or None.
        chunk_size: lattice points evaluated at once.

    Returns:
        A `GridResult`.
    """
    points = simplex_grid(problem.num_classes, step)
    if table is not None:
        _check_table(table, problem)
    chunk_size = _check_integer(chunk_size, "chunk_size", 1)
    size = min(chunk_size, points.shape[0])
    losses = []
    for first in range(0, points.shape[0], size):
        index = np.arange(first, first + size) % points.shape[0]
        chunk = jnp.asarray(points[index], jnp.float32)
        losses.append(np.asarray(_grid_losses(problem, chunk, table), np.float64))
    values = np.concatenate(losses)[: points.shape[0]]
    best = int(np.argmin(values))
    return GridResult(points[best], float(values[best]), points, values)


# ---------------------------------------------------------------------------------
# The optax loop.
# ---------------------------------------------------------------------------------


class History(NamedTuple):
    """The optimisation trajectory of the start that was kept.

    Attributes:
        loss: ``[steps]`` objective before each update (an estimate for Monte Carlo).
        gamma: ``[steps, L]`` the window probabilities before each update.
    """

    loss: np.ndarray
    gamma: np.ndarray


class TuneResult(NamedTuple):
    """What `optimize_gamma` found.

    Attributes:
        gamma: ``[L]`` float64 tuned window probabilities.
        loss: the objective at ``gamma``: exact (large field), exact given the table
            (finite field), or an independent Monte Carlo estimate.
        loss_standard_error: 0 for the large-field exact method, an upper bound for
            a table, the standard error of the Monte Carlo estimate otherwise.
        initial_gamma: ``[L]`` the first starting point.
        initial_loss: its objective (same evaluation as the history).
        history: the `History` of the start that was kept.
        starts: ``[S, L]`` all starting points.
        start_losses: ``[S]`` the objective at the last iterate of each start.
        method: ``"exact"`` or ``"monte_carlo"``.
        field: None for the large-field model, else the field.
        objective: the `Objective`.
        problem: the `Problem`.
        table: the `CountLossTable` used, or None.
    """

    gamma: np.ndarray
    loss: float
    loss_standard_error: float
    initial_gamma: np.ndarray
    initial_loss: float
    history: History
    starts: np.ndarray
    start_losses: np.ndarray
    method: str
    field: fields.Field | None
    objective: Objective
    problem: Problem
    table: CountLossTable | None


def default_starts(num_classes: int, initial_gamma: Any = None) -> np.ndarray:
    """Starting points that cover the faces of the simplex an optimum may lie on.

    The centre of a face protects a subset of the classes equally. For ``L <= 4``
    every face is used (``2^L - 1`` points); for more classes the ``L`` prefix faces
    (protect classes ``1..m`` only), since classes are ordered by importance and an
    optimum abandons the least important ones first. Each centre is mixed with 2%
    of the uniform distribution so that no logit starts at minus infinity.

    Args:
        num_classes: ``L``.
        initial_gamma: an optional ``[L]`` distribution to start from first.

    Returns:
        ``[S, L]`` float64 distributions.
    """
    num_classes = _check_integer(num_classes, "num_classes", 1)
    if num_classes <= 4:
        subsets = [
            s
            for size in range(num_classes, 0, -1)
            for s in itertools.combinations(range(num_classes), size)
        ]
    else:
        subsets = [tuple(range(m)) for m in range(num_classes, 0, -1)]
    centres = np.zeros((len(subsets), num_classes))
    for i, subset in enumerate(subsets):
        centres[i, list(subset)] = 1.0 / len(subset)
    starts = (1 - _START_FLOOR) * centres + _START_FLOOR / num_classes
    if initial_gamma is not None:
        first = np.asarray(_check_gamma(initial_gamma, num_classes, "initial_gamma"))
        starts = np.concatenate([first[None].astype(np.float64), starts])
    return starts


def _check_starts(starts: Any, num_classes: int) -> np.ndarray:
    values = _as_float_array(starts, "starts")
    if values.ndim != 2 or values.shape[1] != num_classes or values.shape[0] == 0:
        raise ValueError(
            f"starts must have shape [S, {num_classes}], one distribution per row "
            f"(got shape {values.shape})"
        )
    for row in values:
        _check_gamma(row, num_classes, "starts")
    return values


@functools.lru_cache(maxsize=32)
def _default_optimizer(
    learning_rate: float, steps: int
) -> optax.GradientTransformationExtraArgs:
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    return optax.with_extra_args_support(optax.adam(schedule))


@dataclasses.dataclass(frozen=True)
class _Engine:
    """The static configuration of the optimisation step (hashable)."""

    optimizer: optax.GradientTransformationExtraArgs
    exact: bool
    field: fields.Field | None
    trials: int

    def value(
        self,
        key: jax.Array,
        problem: Problem,
        table: CountLossTable | None,
        gamma: jax.Array,
    ) -> jax.Array:
        if self.exact:
            return expected_loss(problem, gamma, table)
        return _estimate(key, problem, gamma, self.trials, self.field).value


@functools.partial(jax.jit, static_argnames=("engine",))
def _step(
    engine: _Engine,
    logits: jax.Array,
    state: Any,
    key: jax.Array,
    problem: Problem,
    table: CountLossTable | None,
) -> tuple[jax.Array, Any, jax.Array]:
    """One update of every start: ``[S, L]`` logits, state -> new ones and ``[S]``."""
    _TRACES["step"] += 1

    def one(params, opt_state):
        def objective(theta):
            return engine.value(key, problem, table, jax.nn.softmax(theta))

        value, grad = jax.value_and_grad(objective)(params)
        updates, opt_state = engine.optimizer.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(params, updates), opt_state, value

    if engine.exact:
        # One start after the other (see `_unbatched`); the Monte Carlo estimator is
        # vmapped, so that the starts share their random draws.
        return _unbatched(lambda args: one(*args), (logits, state))
    return jax.vmap(one)(logits, state)


def _resolve_method(
    method: str,
    problem: Problem,
    field: fields.Field | None,
    trials: int,
    table_trials: int,
    table: CountLossTable | None,
) -> str:
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, METHODS))} (got {method!r})"
        )
    if method != "auto":
        return method
    if table is not None:
        return "exact"
    # Exact when one evaluation sums no more terms than a Monte Carlo step samples.
    exact = problem.compositions <= min(
        trials * (problem.workers + 1), theory.MAX_COMPOSITIONS
    )
    if field is not None:
        heads = math.comb(
            problem.workers + problem.num_classes - 1, problem.num_classes - 1
        )
        exact = exact and heads * table_trials <= TABLE_MAX_DECODES
    return "exact" if exact else "monte_carlo"


def optimize_gamma(
    scheme: Any,
    class_sizes: Sequence[int],
    class_energies: Any = None,
    *,
    workers: int,
    deadline: Any,
    gram: Any = None,
    latency: latency_lib.LatencyModel | None = None,
    objective: str = "deadline",
    weights: Any = None,
    field: Any = None,
    method: str = "auto",
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    learning_rate: float = 0.05,
    initial_gamma: Any = None,
    starts: Any = None,
    key: jax.Array | None = None,
    trials: int = 512,
    evaluation_trials: int = 16_384,
    table: CountLossTable | None = None,
    table_trials: int = 512,
    progress: Callable[[int], None] | None = None,
) -> TuneResult:
    """Finds the window probabilities that minimise the expected loss.

    Gradient descent on softmax logits ``gamma = softmax(theta)``, which keeps
    ``gamma`` a distribution and lets a coordinate approach 0 (an abandoned class)
    as its logit decreases. All starts are updated together by one jit-compiled
    step; a second call of the same shapes (new deadline, energies, gamma or key)
    reuses the compiled step. With the exact objective the best point seen along all
    trajectories is kept; with Monte Carlo, the final point of the start whose
    estimate (on common trials) is lowest.

    Args:
        scheme: ``"now"`` or ``"ew"``.
        class_sizes: ``(k_1, ..., k_L)``.
        class_energies: ``[L]`` per-class or ``[K]`` per-sub-product energies.
        workers: ``W``.
        deadline: the deadline (or deadlines, or horizon) of the objective.
        gram: instead of energies, the ``[K, K]`` Gram matrix in class order.
        latency: a `uepjax.latency` model; default the paper's ``Exponential(1)``.
        objective: ``"deadline"``, ``"average"`` or ``"area"`` (`make_objective`).
        weights: deadline weights of ``"average"``.
        field: None (the large-field model), or a field order, ``"real"`` or a
            `uepjax.fields.Field` for real finite-field decoding.
        method: ``"exact"`` (large field: `uepjax.theory`; finite field: a
            `CountLossTable`), ``"monte_carlo"`` (`estimate_loss`), or ``"auto"``:
            exact when a table is given, or when the count vectors are no more than
            the ``trials * (W + 1)`` prefixes one Monte Carlo step evaluates (and,
            for a finite field, the table needs at most `TABLE_MAX_DECODES`
            decodings); Monte Carlo otherwise.
        optimizer: any optax optimizer for the logits (extra-args optimizers such
            as ``optax.lbfgs()`` receive ``value``, ``grad`` and ``value_fn``);
            default Adam with a cosine decay from ``learning_rate`` over ``steps``.
        steps: number of updates; default 500 for the exact objective and 300 for
            Monte Carlo (each of its steps costs more, and its noise limits what
            more steps gain).
        learning_rate: the default optimizer's initial learning rate.
        initial_gamma: a distribution to start from (first of the starts).
        starts: ``[S, L]`` starting distributions instead of `default_starts`.
        key: a typed key for tables and Monte Carlo; default ``jax.random.key(0)``.
        trials: Monte Carlo trials per step.
        evaluation_trials: Monte Carlo trials of the final evaluations.
        table: a precomputed `CountLossTable` for ``field`` (it does not depend on
            the objective, so one table serves every deadline).
        table_trials: trials per count vector when the table is built here.
        progress: called with 1 after every step (for a progress bar).

    Returns:
        A `TuneResult`.

    Raises:
        ValueError: for invalid arguments (see `make_problem` and `make_objective`),
            an unknown method, or a table for another problem or field.

    Example:
        >>> r = optimize_gamma("now", (3, 3, 3), (120.0, 3.0, 0.21), workers=30,
        ...                    deadline=0.25, steps=200)
        >>> bool(r.gamma[0] > 0.99)  # only class 1 is worth protecting this early
        True
    """
    problem = make_problem(
        scheme,
        class_sizes,
        class_energies,
        workers=workers,
        deadline=deadline,
        gram=gram,
        latency=latency,
        objective=objective,
        weights=weights,
    )
    goal = make_objective(objective, deadline, weights)
    field = _check_field(field)
    trials = _check_integer(trials, "trials", 2)
    evaluation_trials = _check_integer(evaluation_trials, "evaluation_trials", 2)
    table_trials = _check_integer(table_trials, "table_trials", 2)
    method = _resolve_method(method, problem, field, trials, table_trials, table)
    if steps is None:
        steps = EXACT_STEPS if method == "exact" else MONTE_CARLO_STEPS
    steps = _check_integer(steps, "steps", 1)
    key = jax.random.key(0) if key is None else key
    key_table, key_steps, key_select, key_report = jax.random.split(key, 4)

    if method == "exact" and field is not None:
        if table is None:
            table = count_loss_table(key_table, problem, field, table_trials)
        _check_table(table, problem)
        if table.field != field:
            raise ValueError(
                f"table was built over {_field_name(table.field)}, not "
                f"{_field_name(field)}"
            )
    else:
        table = None
    if starts is None:
        start_points = default_starts(problem.num_classes, initial_gamma)
    else:
        start_points = _check_starts(starts, problem.num_classes)
        if initial_gamma is not None:
            first = default_starts(problem.num_classes, initial_gamma)[:1]
            start_points = np.concatenate([first, start_points])

    if optimizer is None:
        if not isinstance(learning_rate, numbers.Real) or not learning_rate > 0:
            raise ValueError(
                f"learning_rate must be a positive number (got {learning_rate!r})"
            )
        chosen = _default_optimizer(float(learning_rate), steps)
    elif isinstance(optimizer, optax.GradientTransformation):
        chosen = optax.with_extra_args_support(optimizer)
    else:
        raise ValueError(
            f"optimizer must be an optax GradientTransformation (got "
            f"{type(optimizer).__name__})"
        )
    exact = method == "exact"
    engine = _Engine(chosen, exact, field, 0 if exact else trials)
    logger.debug(
        "optimize_gamma: %s %s, %s, %s, %d starts, %d steps",
        problem.scheme,
        problem.class_sizes,
        _field_name(field),
        method,
        start_points.shape[0],
        steps,
    )

    logits = jnp.log(jnp.maximum(jnp.asarray(start_points, jnp.float32), _LOG_FLOOR))
    state = jax.vmap(chosen.init)(logits)
    trajectory, values = [], []
    for step in range(steps):
        trajectory.append(logits)
        logits, state, value = _step(
            engine, logits, state, jax.random.fold_in(key_steps, step), problem, table
        )
        values.append(value)
        if progress is not None:
            progress(1)

    trajectory.append(logits)
    gammas = jax.nn.softmax(jnp.stack(trajectory), axis=-1)  # [steps + 1, S, L]
    if method == "exact":
        # One more step evaluates the last iterates (its update is discarded); the
        # exact objective is known along every trajectory, so the best point seen is
        # kept, which can never be worse than the start.
        last = _step(engine, logits, state, key_select, problem, table)[2]
        seen = np.asarray(jnp.stack(values + [last]), np.float64)  # [steps + 1, S]
        final = seen[-1]
        when, best = np.unravel_index(int(np.argmin(seen)), seen.shape)
        loss, error = float(seen[when, best]), 0.0
        if table is not None:
            error = float(table_error_bound(problem, gammas[when, best], table))
    else:
        # Common random numbers: every start is evaluated on the same trials; the
        # reported loss comes from independent ones.
        final = np.array(
            [
                float(_estimate(key_select, problem, g, evaluation_trials, field).value)
                for g in gammas[-1]
            ]
        )
        when, best = steps, int(np.argmin(final))
        estimate = _estimate(
            key_report, problem, gammas[when, best], evaluation_trials, field
        )
        loss, error = float(estimate.value), float(estimate.standard_error)
    gamma = np.asarray(gammas[when, best], np.float64)
    gamma = gamma / gamma.sum()

    history = History(
        np.asarray(jnp.stack(values)[:, best], np.float64),
        np.asarray(gammas[:steps, best], np.float64),
    )
    return TuneResult(
        gamma=gamma,
        loss=loss,
        loss_standard_error=error,
        initial_gamma=start_points[0],
        initial_loss=float(values[0][0]),
        history=history,
        starts=start_points,
        start_losses=final,
        method=method,
        field=field,
        objective=goal,
        problem=problem,
        table=table,
    )
