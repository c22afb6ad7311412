"""Worker response-time models and their CDFs.

Every worker returns its packet after a random time ``T`` with CDF ``F`` (eq. 8). A
model holds its parameters as array leaves, either scalars (i.i.d. workers) or vectors
of shape ``[workers]`` (heterogeneous workers), so that changing a rate inside
``jax.jit`` does not recompile.

The ``load`` leaf is the factor ``Omega`` of Remark 1: a model with load ``Omega`` has
the CDF ``F(Omega t)``, that is, its response time is ``T / Omega`` where ``T`` follows
the base model. The paper takes ``Omega = K / W``, the number of sub-products divided
by the number of workers.

Example:
    >>> import jax
    >>> from uepjax.latency import Exponential, with_load
    >>> model = with_load(Exponential(rate=1.0), 9 / 30)
    >>> round(float(model.cdf(1.0)), 4)  # 1 - exp(-0.3)
    0.2592
    >>> model.sample(jax.random.key(0), (4, 30)).shape
    (4, 30)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Exponential",
    "LatencyModel",
    "Pareto",
    "ShiftedExponential",
    "Weibull",
    "is_homogeneous",
    "with_load",
]

# How each parameter is checked when its value is concrete: (requirement in words,
# predicate on a float64 numpy array of finite values).
_POSITIVE = ("finite and > 0", lambda v: v > 0)
_NONNEGATIVE = ("finite and >= 0", lambda v: v >= 0)


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _describe(value: np.ndarray) -> str:
    if value.ndim == 0:
        return repr(float(value))
    return np.array2string(value, precision=6, threshold=12)


def _as_leaf(name: str, value: Any, requirement: tuple[str, Any]) -> jax.Array:
    """Converts a parameter to a float32 leaf, checking it when it is concrete."""
    if not _is_concrete(value):
        return jnp.asarray(value, dtype=jnp.float32)
    try:
        host = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a real number or an array of shape [workers] "
            f"(got {value!r})"
        ) from error
    if host.ndim > 1:
        raise ValueError(
            f"{name} must be a scalar or have shape [workers] (got shape {host.shape})"
        )
    words, predicate = requirement
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(host) & predicate(host)
    if not np.all(valid):
        raise ValueError(f"{name} must be {words} (got {_describe(host)})")
    return jnp.asarray(host, dtype=jnp.float32)


def _positive_part(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (x > 0, x with non-positive entries replaced by 1).

    Evaluating a formula on the replaced values and masking afterwards keeps both the
    values and the gradients finite where the formula is singular at 0 (e.g. x**k with
    k < 1).
    """
    positive = x > 0
    return positive, jnp.where(positive, x, 1.0)


class LatencyModel:
    """Base class of the response-time models (eq. 8 and Remark 1).

    Subclasses are frozen dataclasses whose fields are all float32 array leaves of
    shape ``[]`` or ``[workers]``. They implement ``_base_cdf``, ``_base_sample`` and
    ``_base_mean`` for the unloaded model; this class applies the load ``Omega``.
    """

    _requirements: ClassVar[dict[str, tuple[str, Any]]] = {}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            requirement = self._requirements.get(field.name, _POSITIVE)
            leaf = _as_leaf(field.name, getattr(self, field.name), requirement)
            object.__setattr__(self, field.name, leaf)
        lengths = {leaf.shape[0] for leaf in self._leaves() if leaf.ndim == 1}
        if len(lengths) > 1:
            shapes = {
                f.name: getattr(self, f.name).shape for f in dataclasses.fields(self)
            }
            raise ValueError(
                "per-worker parameters must all have the same length "
                f"(got shapes {shapes})"
            )

    def _leaves(self) -> tuple[jax.Array, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def tree_flatten(self) -> tuple[tuple[jax.Array, ...], None]:
        return self._leaves(), None

    @classmethod
    def tree_unflatten(cls, aux: None, leaves: tuple[Any, ...]) -> LatencyModel:
        # Bypasses __init__: jax rebuilds pytrees with tracers, None or sentinel
        # objects as leaves, which must be stored untouched.
        del aux
        model = object.__new__(cls)
        for field, leaf in zip(dataclasses.fields(cls), leaves, strict=True):
            object.__setattr__(model, field.name, leaf)
        return model

    @property
    def parameter_shape(self) -> tuple[int, ...]:
        """``()`` for i.i.d. workers, ``(workers,)`` for per-worker parameters."""
        return jnp.broadcast_shapes(*(jnp.shape(leaf) for leaf in self._leaves()))

    @property
    def num_workers(self) -> int | None:
        """Number of workers fixed by per-worker parameters, or None if homogeneous."""
        shape = self.parameter_shape
        return shape[0] if shape else None

    @property
    def is_homogeneous(self) -> bool:
        """True iff every parameter is a scalar, so that workers are i.i.d."""
        return self.parameter_shape == ()

    def cdf(self, t: jax.Array) -> jax.Array:
        """CDF of the response time, ``F(Omega t)``, which is 0 for ``t < 0``.

        Args:
            t: times, any shape that broadcasts against the parameter shape; with
                per-worker parameters use e.g. ``deadlines[:, None]`` to obtain
                ``[deadlines, workers]``.

        Returns:
            ``broadcast(t, parameters)`` float32 probabilities in [0, 1].
        """
        scaled = jnp.asarray(t, dtype=jnp.float32) * self.load
        return self._base_cdf(scaled)

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draws response times ``T / Omega``.

        Args:
            key: a typed key from ``jax.random.key``.
            shape: output shape; with per-worker parameters it must end with the
                workers dimension, e.g. ``(trials, workers)``.

        Returns:
            ``shape`` float32 response times.

        Raises:
            ValueError: if ``shape`` does not broadcast the parameters.
        """
        shape = tuple(int(s) for s in shape)
        try:
            ok = jnp.broadcast_shapes(shape, self.parameter_shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"shape must end with the workers dimension {self.parameter_shape} of "
                f"the per-worker parameters (got shape {shape})"
            )
        unit = jax.random.exponential(key, shape, dtype=jnp.float32)
        return self._base_sample(unit) / self.load

    def mean(self) -> jax.Array:
        """Mean response time ``E[T] / Omega`` (inf where it does not exist).

        Returns:
            ``parameter_shape`` float32.
        """
        return self._base_mean() / self.load

    def _base_cdf(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _base_sample(self, unit_exponential: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _base_mean(self) -> jax.Array:
        raise NotImplementedError


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Exponential(LatencyModel):
    """Exponential response times, ``F(t) = 1 - exp(-rate t)`` (the paper's model).

    Attributes:
        rate: ``[]`` or ``[workers]`` float32, > 0.
        load: ``[]`` or ``[workers]`` float32 scaling ``Omega`` > 0 (Remark 1).
    """

    rate: Any = 1.0
    load: Any = 1.0

    def _base_cdf(self, x: jax.Array) -> jax.Array:
        positive, safe = _positive_part(x)
        return jnp.where(positive, -jnp.expm1(-self.rate * safe), 0.0)

    def _base_sample(self, unit_exponential: jax.Array) -> jax.Array:
        return unit_exponential / self.rate

    def _base_mean(self) -> jax.Array:
        return 1.0 / self.rate


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class ShiftedExponential(LatencyModel):
    """Shifted exponential, ``F(t) = 1 - exp(-rate (t - shift))`` for ``t >= shift``.

    Attributes:
        rate: ``[]`` or ``[workers]`` float32, > 0.
        shift: ``[]`` or ``[workers]`` float32 minimum response time, >= 0.
        load: ``[]`` or ``[workers]`` float32 scaling ``Omega`` > 0 (Remark 1).
    """

    rate: Any = 1.0
    shift: Any = 0.0
    load: Any = 1.0

    _requirements: ClassVar[dict[str, tuple[str, Any]]] = {"shift": _NONNEGATIVE}

    def _base_cdf(self, x: jax.Array) -> jax.Array:
        positive, safe = _positive_part(x - self.shift)
        return jnp.where(positive, -jnp.expm1(-self.rate * safe), 0.0)

    def _base_sample(self, unit_exponential: jax.Array) -> jax.Array:
        return self.shift + unit_exponential / self.rate

    def _base_mean(self) -> jax.Array:
        return self.shift + 1.0 / self.rate


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Pareto(LatencyModel):
    """Pareto response times, ``F(t) = 1 - (scale / t)^shape`` for ``t >= scale``.

    Attributes:
        scale: ``[]`` or ``[workers]`` float32 minimum response time, > 0.
        shape: ``[]`` or ``[workers]`` float32 tail index, > 0 (the mean is finite
            only for shape > 1).
        load: ``[]`` or ``[workers]`` float32 scaling ``Omega`` > 0 (Remark 1).
    """

    scale: Any = 1.0
    shape: Any = 2.0
    load: Any = 1.0

    def _base_cdf(self, x: jax.Array) -> jax.Array:
        above, safe = _positive_part(x - self.scale)
        log_ratio = jnp.log1p(safe / self.scale)
        return jnp.where(above, -jnp.expm1(-self.shape * log_ratio), 0.0)

    def _base_sample(self, unit_exponential: jax.Array) -> jax.Array:
        return self.scale * jnp.exp(unit_exponential / self.shape)

    def _base_mean(self) -> jax.Array:
        finite, safe = _positive_part(self.shape - 1.0)
        return jnp.where(finite, self.scale * self.shape / safe, jnp.inf)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Weibull(LatencyModel):
    """Weibull response times, ``F(t) = 1 - exp(-(t / scale)^shape)`` for ``t >= 0``.

    Attributes:
        scale: ``[]`` or ``[workers]`` float32, > 0.
        shape: ``[]`` or ``[workers]`` float32, > 0 (1 gives the exponential).
        load: ``[]`` or ``[workers]`` float32 scaling ``Omega`` > 0 (Remark 1).
    """

    scale: Any = 1.0
    shape: Any = 1.0
    load: Any = 1.0

    def _base_cdf(self, x: jax.Array) -> jax.Array:
        positive, safe = _positive_part(x)
        return jnp.where(
            positive, -jnp.expm1(-((safe / self.scale) ** self.shape)), 0.0
        )

    def _base_sample(self, unit_exponential: jax.Array) -> jax.Array:
        return self.scale * unit_exponential ** (1.0 / self.shape)

    def _base_mean(self) -> jax.Array:
        log_gamma = jax.scipy.special.gammaln(1.0 + 1.0 / self.shape)
        return self.scale * jnp.exp(log_gamma)


def with_load(latency: LatencyModel, omega: Any) -> LatencyModel:
    """Returns a copy of ``latency`` whose load ``Omega`` is ``omega`` (Remark 1).

    The previous load is replaced, not multiplied. The paper compares systems of
    different sizes with ``omega = K / W`` (sub-products per worker).

    Args:
        latency: a latency model.
        omega: ``[]`` or ``[workers]`` load, finite and > 0.

    Returns:
        The same model with CDF ``F(omega t)``.

    Raises:
        ValueError: if ``omega`` is concrete and not finite and positive.
    """
    if not isinstance(latency, LatencyModel):
        raise ValueError(
            f"latency must be a uepjax.latency model (got {type(latency).__name__})"
        )
    return dataclasses.replace(latency, load=omega)


def is_homogeneous(latency: LatencyModel) -> bool:
    """True iff all parameters of ``latency`` are scalars (i.i.d. workers).

    The answer depends on shapes only, so it is static under ``jax.jit``.
    """
    return latency.is_homogeneous
