"""Codes that protect sub-products: UEP windows and the classical baselines.

A worker's packet is a linear combination `sum_k c_k C_k` of the sub-products (the
paper's packet model), so a packet is described by its coefficient row `c` of length
`K`. The codes:

- NOW-UEP (non-overlapping windows): window `l` holds class `l`.
- EW-UEP (expanding windows): window `l` holds classes `1..l`.
- Equal protection: one window of all `K` sub-products, random coefficients.
- MDS: any `K` packets decode everything (Vandermonde rows over a finite field).
- Uncoded: worker `w` returns sub-product `w` alone.
- Repetition: `r` workers return each sub-product.

For the window codes a worker draws a window from `gamma`, then coefficients uniformly
from the field on that window's support (a coefficient may be zero, as in random linear
network codes).
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np

from uepjax import fields

__all__ = [
    "Scheme",
    "Code",
    "now",
    "ew",
    "mds",
    "equal_protection",
    "uncoded",
    "repetition",
    "make_code",
    "RowModel",
    "row_model",
    "sample_rows",
    "worker_coefficients",
]

_GAMMA_TOLERANCE = 1e-6


class Scheme(enum.Enum):
    """The coding strategies that uepjax simulates."""

    NOW = "now"
    EW = "ew"
    MDS = "mds"
    EQUAL = "equal"
    UNCODED = "uncoded"
    REPETITION = "repetition"

    @classmethod
    def parse(cls, scheme: str | Scheme) -> Scheme:
        """Returns the scheme named by `scheme` (a `Scheme` or its value)."""
        if isinstance(scheme, Scheme):
            return scheme
        try:
            return cls(str(scheme).lower())
        except ValueError:
            allowed = ", ".join(repr(s.value) for s in cls)
            raise ValueError(
                f"scheme must be one of {allowed} (got {scheme!r})"
            ) from None


@dataclasses.dataclass(frozen=True)
class Code:
    """A code over `K` sub-products.

    Attributes:
        scheme: the coding strategy (static).
        class_sizes: `k_1..k_L`, most important class first (static). Baselines have a
            single class of all `K` sub-products.
        gamma: `[L] float32` window-selection probabilities (an array leaf, so new
            values do not recompile).
        repetitions: workers per sub-product for `Scheme.REPETITION`, else 1 (static).
    """

    scheme: Scheme
    class_sizes: tuple[int, ...]
    gamma: jax.Array
    repetitions: int = 1

    @property
    def subproducts(self) -> int:
        """`K`, the number of sub-products."""
        return sum(self.class_sizes)

    @property
    def num_classes(self) -> int:
        """`L`, the number of classes."""
        return len(self.class_sizes)

    @property
    def class_of_subproduct(self) -> np.ndarray:
        """`[K] int32` class index of every sub-product."""
        return np.repeat(np.arange(self.num_classes), self.class_sizes).astype(np.int32)

    @property
    def iid_rows(self) -> bool:
        """Whether workers draw i.i.d. rows (every arrival order is then alike)."""
        return self.scheme in (Scheme.NOW, Scheme.EW, Scheme.EQUAL)

    @property
    def windows(self) -> np.ndarray:
        """`[L, K] bool`: which sub-products window `l` combines.

        NOW: window `l` is class `l`; EW: classes `0..l`; the other schemes have one
            window
        of all sub-products.
        """
        cls = self.class_of_subproduct
        window = np.arange(self.num_classes)[:, None]
        if self.scheme is Scheme.EW:
            return cls[None, :] <= window
        return cls[None, :] == window

    def required_workers(self) -> int | None:
        """The exact number of workers the scheme needs, or None if any number works."""
        if self.scheme is Scheme.UNCODED:
            return self.subproducts
        if self.scheme is Scheme.REPETITION:
            return self.subproducts * self.repetitions
        return None

    def check_workers(self, workers: int) -> None:
        """Raises ValueError if `workers` does not fit the scheme."""
        if not isinstance(workers, int | np.integer) or workers < 1:
            raise ValueError(f"workers must be a positive integer (got {workers!r})")
        required = self.required_workers()
        if required is not None and workers != required:
            raise ValueError(
                f"workers must be {required} for the {self.scheme.value} scheme with "
                f"{self.subproducts} sub-products (got {workers})"
            )
        if self.scheme is Scheme.MDS and workers < self.subproducts:
            raise ValueError(
                f"workers must be at least the {self.subproducts} sub-products for an "
                f"MDS code to decode anything (got {workers})"
            )


jax.tree_util.register_dataclass(
    Code,
    data_fields=["gamma"],
    meta_fields=["scheme", "class_sizes", "repetitions"],
)


def _check_class_sizes(class_sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(class_sizes)
    except TypeError:
        raise ValueError(
            f"class_sizes must be a sequence of positive integers (got {class_sizes!r})"
        ) from None
    if not sizes or not all(
        isinstance(k, int | np.integer) and not isinstance(k, bool) and k > 0
        for k in sizes
    ):
        raise ValueError(
            f"class_sizes must be a non-empty sequence of positive integers "
            f"(got {class_sizes!r})"
        )
    return tuple(int(k) for k in sizes)


def _check_gamma(gamma, num_classes: int) -> jax.Array:
    if isinstance(gamma, jax.core.Tracer):
        if gamma.shape != (num_classes,):
            raise ValueError(
                f"gamma must have one entry per class ({num_classes}) "
                f"(got shape {gamma.shape})"
            )
        return gamma
    values = np.asarray(gamma, dtype=np.float64)
    if values.shape != (num_classes,):
        raise ValueError(
            f"gamma must have one entry per class ({num_classes}) "
            f"(got shape {values.shape})"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(
            f"gamma must be finite and non-negative (got {values.tolist()})"
        )
    total = float(values.sum())
    if abs(total - 1.0) > _GAMMA_TOLERANCE:
        raise ValueError(
            f"gamma must sum to 1 (got {total:.6g}); "
            "pass normalized window probabilities"
        )
    return jnp.asarray(values, dtype=jnp.float32)


def _window_code(scheme: Scheme, class_sizes, gamma) -> Code:
    sizes = _check_class_sizes(class_sizes)
    return Code(scheme, sizes, _check_gamma(gamma, len(sizes)))


def now(class_sizes, gamma) -> Code:
    """NOW-UEP: window `l` combines the sub-products of class `l` only."""
    return _window_code(Scheme.NOW, class_sizes, gamma)


def ew(class_sizes, gamma) -> Code:
    """EW-UEP: window `l` combines the sub-products of classes `1..l`."""
    return _window_code(Scheme.EW, class_sizes, gamma)


def _single_class(scheme: Scheme, subproducts: int, repetitions: int = 1) -> Code:
    (size,) = _check_class_sizes([subproducts])
    return Code(scheme, (size,), jnp.ones((1,), jnp.float32), repetitions)


def mds(subproducts: int) -> Code:
    """An MDS code: any `K` packets recover all `K` sub-products."""
    return _single_class(Scheme.MDS, subproducts)


def equal_protection(subproducts: int) -> Code:
    """A random linear code over one window of all sub-products."""
    return _single_class(Scheme.EQUAL, subproducts)


def uncoded(subproducts: int) -> Code:
    """No code: worker `w` computes sub-product `w` (needs `K` workers)."""
    return _single_class(Scheme.UNCODED, subproducts)


def repetition(subproducts: int, repetitions: int = 2) -> Code:
    """`r`-fold repetition: workers `w` and `w + K`, ... compute sub-product `w`."""
    if not isinstance(repetitions, int | np.integer) or repetitions < 1:
        raise ValueError(
            f"repetitions must be a positive integer (got {repetitions!r})"
        )
    return _single_class(Scheme.REPETITION, subproducts, int(repetitions))


def make_code(scheme, class_sizes, gamma=None, repetitions: int = 2) -> Code:
    """Builds any scheme from its name, for configs and the command line.

    Args:
        scheme: a `Scheme` or its name (`"now"`, `"ew"`, `"mds"`, ...).
        class_sizes: `k_1..k_L`; baselines use only their sum `K`.
        gamma: `[L]` window probabilities, required for NOW and EW.
        repetitions: `r` for the repetition scheme.
    """
    scheme = Scheme.parse(scheme)
    if scheme in (Scheme.NOW, Scheme.EW):
        if gamma is None:
            raise ValueError(f"gamma is required for the {scheme.value} scheme")
        return _window_code(scheme, class_sizes, gamma)
    subproducts = sum(_check_class_sizes(class_sizes))
    if scheme is Scheme.REPETITION:
        return repetition(subproducts, repetitions)
    return _single_class(scheme, subproducts)


def _vandermonde(field: fields.Field, workers: int, subproducts: int) -> jax.Array:
    """`[workers, K]` rows `(1, x_w, x_w^2, ...)` at distinct nodes `x_w = w + 1`."""
    if field.kind is fields.FieldKind.REAL:
        raise ValueError("a Vandermonde MDS code needs a finite field")
    if field.order <= workers:
        raise ValueError(
            f"an MDS code with {workers} workers needs a field of more than {workers} "
            f"elements (got q={field.order}); use a larger field"
        )
    nodes = field.from_int(jnp.arange(1, workers + 1, dtype=jnp.uint32))
    powers = [jnp.ones_like(nodes)]
    for _ in range(subproducts - 1):
        powers.append(field.mul(powers[-1], nodes))
    return jnp.stack(powers, axis=-1)


@dataclasses.dataclass(frozen=True)
class RowModel:
    """How the workers' coefficient rows are drawn, as arrays only.

    Window codes draw i.i.d. rows (`windows`, `gamma`); the other schemes assign fixed
    rows to the workers (`fixed`). Codes with the same shapes and `blocks` share one
    compiled sampler.

    Attributes:
        windows: `[L, K] bool` window membership, or None for fixed rows.
        gamma: `[L] float32` window probabilities, or None for fixed rows.
        fixed: `[W, K]` field elements, one row per worker, or None.
        blocks: sizes of consecutive sub-product blocks such that every row lies in
            one block (NOW: the classes; unit rows: single sub-products), or None
            (static). The decoder then decodes the blocks apart.
    """

    windows: jax.Array | None
    gamma: jax.Array | None
    fixed: jax.Array | None
    blocks: tuple[int, ...] | None = None

    @property
    def iid(self) -> bool:
        """Whether workers draw i.i.d. rows (every arrival order is then alike)."""
        return self.fixed is None


jax.tree_util.register_dataclass(
    RowModel, data_fields=["windows", "gamma", "fixed"], meta_fields=["blocks"]
)


def row_model(code: Code, field: fields.Field, workers: int) -> RowModel:
    """The `RowModel` of `code` for `workers` workers over `field`.

    MDS rows are Vandermonde rows over a finite field and i.i.d. Gaussian rows (MDS with
    probability one) over the reals; uncoded and repetition rows are unit vectors.
    """
    code.check_workers(workers)
    k = code.subproducts
    if code.iid_rows:
        blocks = code.class_sizes if code.scheme is Scheme.NOW else None
        return RowModel(jnp.asarray(code.windows), code.gamma, None, blocks)
    if code.scheme is Scheme.MDS:
        if field.kind is fields.FieldKind.REAL:
            return RowModel(jnp.ones((1, k), bool), jnp.ones((1,), jnp.float32), None)
        return RowModel(None, None, _vandermonde(field, workers, k))
    unit = jnp.arange(workers)[:, None] % k == jnp.arange(k)[None, :]
    return RowModel(None, None, unit.astype(field.dtype), (1,) * k)


def sample_rows(
    key: jax.Array, model: RowModel, field: fields.Field, workers: int
) -> jax.Array:
    """`[workers, K]` rows drawn from `model`; see `worker_coefficients`."""
    if not model.iid:
        return model.fixed
    key_window, key_coefficient = jax.random.split(key)
    # Inverse-CDF sampling of the window: one uniform per worker.
    thresholds = jnp.cumsum(model.gamma)[:-1]
    uniform = jax.random.uniform(key_window, (workers, 1))
    window = jnp.sum(uniform >= thresholds, axis=-1)
    support = model.windows[window]
    values = field.random(key_coefficient, support.shape)
    return jnp.where(support, values, jnp.zeros_like(values))


def worker_coefficients(
    key: jax.Array, code: Code, field: fields.Field, workers: int
) -> jax.Array:
    """Samples the coefficient row of every worker's packet.

    Args:
        key: a typed PRNG key.
        code: the code.
        field: the coefficient field (`fields.get_field(q)`).
        workers: `W`, checked against the scheme.

    Returns:
        `[workers, K]` field elements (`uint32`, or `float32` for the real field); row
        `w` is the packet of worker `w`. The window codes draw i.i.d. rows; MDS uses
        Vandermonde rows over a finite field (i.i.d. Gaussian rows, MDS with probability
        one, over the reals); uncoded and repetition rows are unit vectors.

    Example:
        >>> code = now((3, 3, 3), (0.40, 0.35, 0.25))
        >>> field = fields.get_field(256)
        >>> rows = worker_coefficients(jax.random.key(0), code, field, 30)
        >>> rows.shape
        (30, 9)
    """
    return sample_rows(key, row_model(code, field, workers), field, workers)
