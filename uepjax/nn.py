"""Coded matrix products inside training loops: `coded_matmul`, custom VJPs, Flax.

Sec. VII of the paper computes the back-propagation products of dense layers,

    G_i = G_{i+1} V_i^T   (eq. 26)   and   V_i^* = X_i^T G_{i+1}   (eq. 27),

with stragglers: the product is split into sub-products (rxc or cxr), the
sub-products are ranked by the norms of the operands on every call, a code protects
the important ones, and whatever the workers return by the deadline `T_max` is
decoded into an approximate product. This module makes that one differentiable
building block.

One call of `coded_matmul(key, a, b, coding)` is one straggler realization:

1. Importance. The rows of `A` and the columns of `B` (rxc), or the pairs (column
   of `A`, row of `B`) (cxr), are put in decreasing order of norm
   (`partition.partition_rxc` / `partition_cxr` with `sort_by_norm`) and cut into
   blocks of (roughly) equal size: when a dimension is not a multiple of the
   number of blocks, the blocks differ by at most one row and are padded with zero
   rows, which change no product. The class of every sub-product comes from
   `partition.paper_class_table(kind, "dnn")` (Table VIII), recomputed from the
   block norms of this call.
2. Stragglers. Worker `w` returns its packet after a time drawn from the latency
   model with load `Omega = K / W` (Remark 1); the packets that arrive by the
   deadline are decoded.
3. Decoding, jointly over classes. Over a finite field `GF(q)` or the reals the
   received coefficient rows (`codes.worker_coefficients`) go through the
   progressive decoder `decode.recovery_index`. The large-field model
   (`field="large"`, the default) applies the counts rule of
   `theory.decodable_classes` to the windows of the received packets, which is what
   the real-field decoder decides with probability one, at a fraction of the cost.
4. The estimate. `mode="fast"` keeps the recovered sub-products of the exact
   product (the paper's `C_hat`, Sec. IV-B) without forming any packet.
   `mode="faithful"` really encodes the blocks, multiplies the encoded factors of
   every worker, and decodes the received packets in floating point, so the
   numerical error of real-valued decoding is part of the result.

Uncoded computation and `r`-fold repetition have unit coefficient rows; under the
large-field model they are NOW codes of `K` singleton classes whose windows are fixed
by the worker index, and MDS is one class of all `K` sub-products.

Example:
    >>> import jax, jax.numpy as jnp
    >>> coding = coding_setup("ew", "cxr", deadline=1.0)
    >>> a, b = jnp.ones((64, 100)), jnp.ones((100, 30))
    >>> coded_matmul(jax.random.key(0), a, b, coding).shape
    (64, 30)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np

from uepjax import codes, decode, fields, partition, theory
from uepjax import latency as latency_lib

__all__ = [
    "DEFAULT_RATE",
    "STREAM",
    "TABLE_III_GAMMA",
    "TABLE_VII_WORKERS",
    "CodedDense",
    "CodedProduct",
    "CodingSetup",
    "Mode",
    "check_product_fits",
    "backward_products",
    "coded_linear",
    "coded_matmul",
    "coded_product",
    "coding_setup",
    "paper_workers",
]

logger = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST

STREAM = "stragglers"
"""The Flax random stream that `CodedDense` draws its straggler realizations from."""

TABLE_III_GAMMA = (0.40, 0.35, 0.25)
"""Window-selection probabilities of Table III."""

TABLE_VII_WORKERS = {"uncoded": 9, "repetition": 18, "now": 15, "ew": 15}
"""Workers of Table VII for `K = 9` sub-products (2-block repetition)."""

DEFAULT_RATE = 0.5
"""Rate `lambda` of the exponential response times of Sec. VII-C."""

LARGE = "large"
"""The `field` of the large-field model (counts rule, no elimination)."""


class Mode(enum.Enum):
    """How the approximate product is formed from what is recovered."""

    FAST = "fast"
    FAITHFUL = "faithful"

    @classmethod
    def parse(cls, mode: str | Mode) -> Mode:
        """Returns the mode named by `mode` (a `Mode` or its value)."""
        if isinstance(mode, Mode):
            return mode
        try:
            return cls(str(mode).lower())
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"mode must be one of {allowed} (got {mode!r})") from None


@dataclasses.dataclass(frozen=True)
class CodingSetup:
    """How a product is computed by stragglers: partition, code, workers, deadline.

    Build it with `coding_setup`. It is a pytree: the sizes, the scheme, the field
    and the mode are static (hashable, part of the tree structure), while the window
    probabilities, the deadline and the latency parameters are array leaves, so new
    values do not recompile, and a batch of setups can be passed through `jax.vmap`.

    Attributes:
        code: the `codes.Code` (a pytree; `gamma [L] float32` is its leaf).
        deadline: `[] float32` deadline `T_max`.
        latency: the response-time model, its load `Omega` already applied.
        kind: `partition.PartitionKind.RXC` or `CXR` (static).
        blocks: `(N, P)` for rxc, `(M,)` for cxr (static).
        workers: `W` (static).
        field: `"large"` for the large-field model, else a `fields.Field` (static).
        mode: `Mode.FAST` or `Mode.FAITHFUL` (static).
    """

    code: codes.Code
    deadline: jax.Array
    latency: latency_lib.LatencyModel
    kind: partition.PartitionKind
    blocks: tuple[int, ...]
    workers: int
    field: str | fields.Field
    mode: Mode

    @property
    def subproducts(self) -> int:
        """`K = N P` (rxc) or `M` (cxr)."""
        return int(np.prod(self.blocks))

    @property
    def scheme(self) -> codes.Scheme:
        """The coding scheme."""
        return self.code.scheme


jax.tree_util.register_dataclass(
    CodingSetup,
    data_fields=["code", "deadline", "latency"],
    meta_fields=["kind", "blocks", "workers", "field", "mode"],
)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return int(value)


def _check_blocks(kind: partition.PartitionKind, blocks: Any) -> tuple[int, ...]:
    if blocks is None:
        return (3, 3) if kind is partition.PartitionKind.RXC else (9,)
    if isinstance(blocks, numbers.Integral) and not isinstance(blocks, bool):
        blocks = (blocks,)
    try:
        values = tuple(blocks)
    except TypeError:
        values = ()
    expected = 2 if kind is partition.PartitionKind.RXC else 1
    shape = "(N, P)" if expected == 2 else "(M,)"
    if len(values) != expected:
        raise ValueError(
            f"blocks must be {shape} for the {kind.value} partition (got {blocks!r})"
        )
    return tuple(_check_positive_int(v, "blocks") for v in values)


def _check_deadline(deadline: Any) -> jax.Array:
    if isinstance(deadline, jax.core.Tracer):
        return jnp.asarray(deadline, jnp.float32)
    value = np.asarray(deadline, dtype=np.float64)
    if value.shape != () or np.isnan(value) or value < 0:
        raise ValueError(
            f"deadline must be a non-negative number, the time T_max by which packets "
            f"are decoded (got {deadline!r})"
        )
    return jnp.asarray(value, jnp.float32)


def _check_field(field: Any, mode: Mode, scheme: codes.Scheme, workers: int):
    if isinstance(field, str) and field.strip().lower() == LARGE:
        if mode is Mode.FAITHFUL:
            raise ValueError(
                "mode='faithful' decodes real packets, so it needs field='real' "
                "(got field='large'); pass field='real' or use mode='fast'"
            )
        return LARGE
    try:
        resolved = fields.get_field(field)
    except ValueError as error:
        raise ValueError(
            f"field must be 'large' (the large-field model), 'real' or a field order "
            f"q (got {field!r}): {error}"
        ) from None
    if mode is Mode.FAITHFUL and resolved.kind is not fields.FieldKind.REAL:
        raise ValueError(
            f"mode='faithful' encodes and decodes in floating point, so it needs "
            f"field='real' (got {field!r}); pass field='real' or use mode='fast'"
        )
    if (
        scheme is codes.Scheme.MDS
        and resolved.kind is not fields.FieldKind.REAL
        and resolved.order <= workers
    ):
        raise ValueError(
            f"an MDS code with {workers} workers needs a field of more than {workers} "
            f"elements (got q={resolved.order}); pass a larger q, 'real' or 'large'"
        )
    return resolved


def paper_workers(scheme: str | codes.Scheme, subproducts: int = 9, repetitions=2):
    """The workers of Table VII, scaled to `K` sub-products.

    Uncoded: `K`. Repetition: `r K`. NOW, EW, MDS and equal protection: `5 K / 3`
    rounded up (15 for `K = 9`).

    Example:
        >>> paper_workers("ew"), paper_workers("repetition")
        (15, 18)
    """
    scheme = codes.Scheme.parse(scheme)
    k = _check_positive_int(subproducts, "subproducts")
    if scheme is codes.Scheme.UNCODED:
        return k
    if scheme is codes.Scheme.REPETITION:
        return _check_positive_int(repetitions, "repetitions") * k
    return -(-5 * k // 3)


def coding_setup(
    scheme: str | codes.Scheme,
    partition_kind: str | partition.PartitionKind = "cxr",
    *,
    deadline: Any = 1.0,
    workers: int | None = None,
    latency: latency_lib.LatencyModel | None = None,
    scale_load: bool = True,
    gamma: Any = TABLE_III_GAMMA,
    class_sizes: Any = None,
    blocks: Any = None,
    repetitions: int = 2,
    field: Any = LARGE,
    mode: str | Mode = Mode.FAST,
) -> CodingSetup:
    """The setup of Sec. VII-C, with every parameter open to change.

    Args:
        scheme: `"uncoded"`, `"repetition"`, `"now"`, `"ew"`, `"mds"` or `"equal"`.
        partition_kind: `"rxc"` or `"cxr"`.
        deadline: `T_max >= 0` (an array leaf; `inf` waits for every worker).
        workers: `W`; default Table VII (`paper_workers`).
        latency: the response-time model of one worker; default
            `Exponential(rate=0.5)`. Per-worker (`[W]`) parameters are allowed.
        scale_load: if True the load is set to `Omega = K / W` (Remark 1), replacing
            the model's own; if False the model is used as given.
        gamma: `[L]` window probabilities of NOW / EW (Table III by default).
        class_sizes: the UEP class sizes; default Table VIII `(1, 2, 6)` when
            `K = 9` (required for NOW and EW otherwise). The classes come from
            `partition.paper_class_table(kind, "dnn")`; with other sizes or blocks
            the sub-products are ranked by their block-norm products
            (`partition.classes_by_energy`). The baselines use only `K`.
        blocks: `(N, P)` for rxc (default `(3, 3)`), `M` for cxr (default 9).
        repetitions: `r` of the repetition scheme.
        field: `"large"` (large-field model: the counts rule of
            `theory.decodable_classes`), `"real"` (real Gaussian coefficients and
            real elimination) or a field order `q` (uniform coefficients from
            `GF(q)` and exact elimination).
        mode: `"fast"` (recovered sub-products of the exact product) or
            `"faithful"` (encode, multiply and decode real packets; needs
            `field="real"`).

    Returns:
        The `CodingSetup`.

    Raises:
        ValueError: naming the argument, the requirement and the value received.

    Example:
        >>> coding = coding_setup("now", "rxc", deadline=0.5)
        >>> coding.workers, coding.blocks, round(float(coding.latency.load), 6)
        (15, (3, 3), 0.6)
    """
    scheme = codes.Scheme.parse(scheme)
    kind = partition.PartitionKind.parse(partition_kind)
    mode = Mode.parse(mode)
    grid = _check_blocks(kind, blocks)
    k = int(np.prod(grid))
    if class_sizes is None:
        if k == sum(partition.DNN_CLASS_SIZES):
            class_sizes = partition.DNN_CLASS_SIZES
        elif scheme in (codes.Scheme.NOW, codes.Scheme.EW):
            raise ValueError(
                f"class_sizes is required for the {scheme.value} scheme with {k} "
                "sub-products (Table VIII's (1, 2, 6) is for K = 9)"
            )
        else:
            class_sizes = (k,)
    code = codes.make_code(scheme, class_sizes, gamma, repetitions=repetitions)
    if code.subproducts != k:
        raise ValueError(
            f"class_sizes must add up to the {k} sub-products of the {kind.value} "
            f"partition with blocks {grid} (got {list(class_sizes)}); pass class "
            "sizes that sum to K"
        )
    if workers is None:
        workers = paper_workers(scheme, k, repetitions)
    workers = _check_positive_int(workers, "workers")
    code.check_workers(workers)
    if latency is None:
        latency = latency_lib.Exponential(rate=DEFAULT_RATE)
    if not isinstance(latency, latency_lib.LatencyModel):
        raise ValueError(
            f"latency must be a uepjax.latency model (got {type(latency).__name__})"
        )
    if latency.num_workers not in (None, workers):
        raise ValueError(
            f"latency has per-worker parameters for {latency.num_workers} workers, "
            f"but workers is {workers}"
        )
    if scale_load:
        latency = latency_lib.with_load(latency, k / workers)
    return CodingSetup(
        code=code,
        deadline=_check_deadline(deadline),
        latency=latency,
        kind=kind,
        blocks=grid,
        workers=workers,
        field=_check_field(field, mode, scheme, workers),
        mode=mode,
    )


def _fit_message(what: str, size: int, blocks: int, name: str, kind: str) -> str:
    return (
        f"the {kind} partition cuts {what} into {name}={blocks} blocks, which needs at "
        f"least {blocks} of them (got {size}); use fewer blocks or the other partition"
    )


def check_product_fits(
    coding: CodingSetup, a_shape, b_shape, product: str = "a @ b"
) -> None:
    """Raises ValueError unless `coding` can partition the product `A B`.

    Every block must hold at least one row (rxc: `N` rows of `A`, `P` columns of
    `B`; cxr: `M` columns of `A`), and the inner dimensions must agree.

    Args:
        coding: the setup.
        a_shape: the shape of `A`, 2-D.
        b_shape: the shape of `B`, 2-D.
        product: a name for the product in the message, e.g. `"X^T G (eq. 27)"`.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ValueError(
            f"{product}: a and b must be 2-D matrices (got shapes {a_shape} and "
            f"{b_shape})"
        )
    if a_shape[1] != b_shape[0]:
        raise ValueError(
            f"{product}: a has {a_shape[1]} columns but b has {b_shape[0]} rows; the "
            "inner dimensions must agree"
        )
    kind = coding.kind.value
    where = f"{product} = [{a_shape[0]}, {a_shape[1]}] x [{b_shape[0]}, {b_shape[1]}]"
    if coding.kind is partition.PartitionKind.RXC:
        n, p = coding.blocks
        if a_shape[0] < n:
            raise ValueError(
                f"{where}: " + _fit_message("the rows of a", a_shape[0], n, "N", kind)
            )
        if b_shape[1] < p:
            raise ValueError(
                f"{where}: "
                + _fit_message("the columns of b", b_shape[1], p, "P", kind)
            )
    else:
        (m,) = coding.blocks
        if a_shape[1] < m:
            raise ValueError(
                f"{where}: "
                + _fit_message("the inner dimension", a_shape[1], m, "M", kind)
            )


class _Layout(NamedTuple):
    """Where each norm-sorted index of one dimension sits in the padded blocks.

    Attributes:
        slots: `[size]` numpy int, padded position of sorted index `j`.
        block_of: `[size]` numpy int, block of sorted index `j`.
        starts: the sorted rank at which each block after the first begins.
        block_size: rows per padded block.
        padded: True unless `size` is a multiple of the number of blocks.
    """

    slots: np.ndarray
    block_of: np.ndarray
    starts: tuple[int, ...]
    block_size: int
    padded: bool


@functools.cache
def _layout(size: int, blocks: int) -> _Layout:
    """Blocks of sizes differing by at most one, larger blocks first."""
    sizes = np.array([len(part) for part in np.array_split(np.arange(size), blocks)])
    block_size = int(sizes.max())
    block_of = np.repeat(np.arange(blocks), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    offset = np.arange(size) - starts[block_of]
    slots = block_of * block_size + offset
    return _Layout(
        slots,
        block_of,
        tuple(int(s) for s in starts[1:]),
        block_size,
        bool(size % blocks),
    )


def _place(x: jax.Array, layout: _Layout, axis: int) -> jax.Array:
    """Puts the sorted rows (`axis=0`) or columns (`axis=1`) into padded blocks."""
    if not layout.padded:
        return x
    blocks = len(layout.starts) + 1
    shape = list(x.shape)
    shape[axis] = blocks * layout.block_size
    padded = jnp.zeros(shape, x.dtype)
    if axis == 0:
        return padded.at[layout.slots].set(x)
    return padded.at[:, layout.slots].set(x)


def _unsort(permutation: jax.Array, values: jax.Array, axis: int) -> jax.Array:
    """Inverse of taking `values = original[permutation]` along `axis`."""
    if axis == 0:
        return jnp.zeros_like(values).at[permutation].set(values)
    return jnp.zeros_like(values).at[:, permutation].set(values)


def _sort_key(values: jax.Array, longest: int) -> jax.Array:
    """`[longest] uint32` sort keys of `[n]` non-negative `values` (`_blocks_by_rank`).

    Positive values keep their order as bit patterns plus `longest`; the zero at
    index `j` gets `longest - 1 - j`, and the padding after index `n` gets 0.
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
    index = jnp.arange(values.shape[0], dtype=jnp.uint32)
    keys = jnp.where(bits == 0, longest - 1 - index, bits + longest)
    return jnp.pad(keys, (0, longest - values.shape[0]))


def _blocks_by_rank(
    values: Sequence[jax.Array], layouts: Sequence[_Layout]
) -> list[jax.Array]:
    """The block of every entry of each vector, entries taken by decreasing value.

    This is the block that `partition_rxc` / `partition_cxr` with `sort_by_norm`
    (a stable sort, ties in index order) and the cut of `_layout` give each entry,
    computed without a permutation, from one single-operand sort of `uint32` keys
    (several times cheaper than an argsort on the CPU). With `n` the length of the
    longest vector, the key of a positive value is its bit pattern (non-negative
    floats sort like their bit patterns) plus `n`, and the key of a zero at index `j`
    is `n - 1 - j`. So keys order the entries exactly as the stable sort does, and
    zeros (dead ReLU units, blank pixels), the usual ties, are tie-free. The vectors
    are sorted together, shorter ones padded with keys 0, below every real entry.

    With `tau_s` the key at block start `s` (the `s`-th largest), an entry is after
    the start iff its key is at most `tau_s`, unless positive values tie across the
    start (`tau_s` also at rank `s - 1`). Then the start's entry is the one of key
    `tau_s` with the least index `j_s` not taken by an earlier block, and an entry is
    after the start iff its key is below `tau_s`, or equal with an index of at least
    `j_s`. A `lax.cond` counts `j_s` only when such a tie occurs.

    Args:
        values: `[n_v]` non-negative float32 sort keys, one vector per layout.
        layouts: the cut of each vector into blocks.

    Returns:
        `[n_v] int32` block indices in `0..blocks-1`, one array per vector.
    """
    lengths = [int(v.shape[0]) for v in values]
    longest = max(lengths)
    boundaries = max(len(layout.starts) for layout in layouts)
    if boundaries == 0:
        return [jnp.zeros((n,), jnp.int32) for n in lengths]
    # A vector with fewer blocks gets placeholder starts of 1, masked out by `real`.
    starts = np.ones((len(layouts), boundaries), np.int32)
    real = np.zeros((len(layouts), boundaries), bool)
    for v, layout in enumerate(layouts):
        starts[v, : len(layout.starts)] = layout.starts
        real[v, : len(layout.starts)] = True
    keys = jnp.stack([_sort_key(v, longest) for v in values])  # [V, n]
    index = jnp.arange(longest, dtype=jnp.uint32)[None, :]
    ascending = jax.lax.sort(keys, dimension=1, is_stable=False)
    tau = jnp.take_along_axis(ascending, longest - 1 - starts, axis=1)  # [V, S]
    above = jnp.take_along_axis(ascending, longest - starts, axis=1)

    def first_after_tie():
        """`[V, S]` least index of key `tau_s` at or after rank `s`."""
        column = keys[:, :, None]
        greater = jnp.sum(column > tau[:, None, :], axis=1, dtype=jnp.int32)
        equal = column == tau[:, None, :]  # [V, n, S]
        # The start's entry follows the first `s - #{keys > tau_s}` equal entries.
        upto = jnp.cumsum(equal, axis=1, dtype=jnp.int32)
        return jnp.sum(upto <= (starts - greater)[:, None, :], axis=1, dtype=jnp.uint32)

    first = jax.lax.cond(
        jnp.any((tau == above) & real),
        first_after_tie,
        lambda: jnp.zeros(tau.shape, jnp.uint32),
    )
    column, tau, first = keys[:, :, None], tau[:, None, :], first[:, None, :]
    after = (column < tau) | ((column == tau) & (index[:, :, None] >= first))
    # A reduction, so XLA computes the blocks once instead of in every element of
    # the product they mask.
    blocks = jnp.sum(after & real[:, None, :], axis=2, dtype=jnp.int32)  # [V, n]
    return [blocks[v, :n] for v, n in enumerate(lengths)]


def _block_norms(norms2: jax.Array, block: jax.Array, blocks: int) -> jax.Array:
    """`[..., blocks]` Frobenius norms of blocks from `[..., n]` squared row norms.

    Args:
        norms2: `[..., n]` squared norms of the rows (or columns) of one operand.
        block: `[n]` block of every row.
        blocks: the number of blocks.
    """
    member = (block[:, None] == jnp.arange(blocks)[None, :]).astype(norms2.dtype)
    return jnp.sqrt(jnp.matmul(norms2, member, precision=_HIGHEST))


def _class_table(coding: CodingSetup, energies) -> partition.ClassTable:
    """Table VIII for the paper's grids and sizes, else ranking by block norms.

    Args:
        coding: the setup.
        energies: a callable returning the `[K]` block-norm products, called only
            when the table depends on them.
    """
    if _uses_paper_table(coding) and coding.kind is partition.PartitionKind.RXC:
        return partition.paper_class_table("rxc", "dnn")
    if _uses_paper_table(coding):
        return partition.paper_class_table("cxr", "dnn", energies=energies())
    return partition.classes_by_energy(energies(), coding.code.class_sizes)


def _large_field_rule(code: codes.Code) -> tuple[str, tuple[int, ...], np.ndarray]:
    """The counts rule that decides a scheme under the large-field model.

    Returns `(scheme, class sizes, class of each code position)` for
    `theory.decodable_classes`: NOW and EW as they are; uncoded and repetition as NOW
    with `K` singleton classes (a unit row is a window of one sub-product); MDS and
    equal protection as one class of all `K`.
    """
    k = code.subproducts
    if code.scheme in (codes.Scheme.NOW, codes.Scheme.EW):
        return code.scheme.value, code.class_sizes, code.class_of_subproduct
    if code.scheme in (codes.Scheme.UNCODED, codes.Scheme.REPETITION):
        return "now", (1,) * k, np.arange(k, dtype=np.int32)
    return "now", (k,), np.zeros(k, np.int32)


def _window_counts(uniform: jax.Array, code: codes.Code, arrived: jax.Array):
    """`[L']` received packets per window of the large-field rule.

    NOW and EW workers draw window `l` with probability `gamma_l` (inverse CDF of
    `uniform`); uncoded and repetition worker `w` computes sub-product `w mod K`; MDS
    and equal protection have one window.
    """
    k = code.subproducts
    if code.scheme in (codes.Scheme.NOW, codes.Scheme.EW):
        bounds = jnp.cumsum(code.gamma)[:-1]
        window = jnp.sum(uniform[:, None] >= bounds[None, :], axis=1)
        hits = (window[:, None] == jnp.arange(code.num_classes)) & arrived[:, None]
        return jnp.sum(hits, axis=0, dtype=jnp.int32)
    if code.scheme in (codes.Scheme.UNCODED, codes.Scheme.REPETITION):
        return jnp.sum(arrived.reshape(-1, k), axis=0, dtype=jnp.int32)
    return jnp.sum(arrived, dtype=jnp.int32)[None]


class _Decision(NamedTuple):
    arrived: jax.Array  # [W] bool
    rows: jax.Array | None  # [W, K] coefficient rows in code order (not "large")
    recovered: jax.Array  # [K] bool, code order


def _decide(uniform: jax.Array, row_key: jax.Array, coding: CodingSetup) -> _Decision:
    """One straggler realization and what the decoder recovers from it.

    Worker `w` has returned its packet by the deadline iff `uniform[0, w] <
    F(Omega T_max)`, independently of the others; which packets arrive is all the
    decoder depends on (the order of arrivals changes when, not whether, a
    sub-product is recovered), so no response times are drawn. Under the large-field
    model `uniform[1]` draws the windows; otherwise `row_key` draws the coefficient
    rows of `codes.worker_coefficients`.

    Args:
        uniform: `[2, W]` uniform numbers in `[0, 1)`.
        row_key: the key of the coefficient rows (unused by the large-field model).
        coding: the setup.
    """
    workers = coding.workers
    arrived = uniform[0] < coding.latency.cdf(coding.deadline)
    if coding.field == LARGE:
        scheme, sizes, class_of = _large_field_rule(coding.code)
        counts = _window_counts(uniform[1], coding.code, arrived)
        decodable = theory.decodable_classes(scheme, sizes, counts)
        return _Decision(arrived, None, decodable[class_of])
    rows = codes.worker_coefficients(row_key, coding.code, coding.field, workers)
    # A packet that did not arrive is a zero row, which the decoder skips.
    received = jnp.where(arrived[:, None], rows, jnp.zeros_like(rows))
    index = decode.recovery_index(received, coding.field)
    return _Decision(arrived, rows, index <= workers)


class CodedProduct(NamedTuple):
    """One straggler realization of a coded product.

    Attributes:
        product: `[rows of a, columns of b] float32`, the approximate product
            `C_hat`.
        recovered: `[K] bool`, True where sub-product `k` is recovered; `k = n P + p`
            (rxc) or `m` (cxr) over the norm-sorted blocks, so block 0 holds the
            largest rows.
        classes: `[K] int32` importance class of each sub-product (0 = most
            important).
        arrivals: `[] int32`, the packets received by the deadline.
    """

    product: jax.Array
    recovered: jax.Array
    classes: jax.Array
    arrivals: jax.Array


def _uses_paper_table(coding: CodingSetup) -> bool:
    sizes = coding.code.class_sizes
    if coding.code.scheme not in (codes.Scheme.NOW, codes.Scheme.EW):
        sizes = partition.DNN_CLASS_SIZES if coding.subproducts == 9 else sizes
    return coding.blocks in ((3, 3), (9,)) and sizes == partition.DNN_CLASS_SIZES


@functools.cache
def _paper_rxc_table() -> tuple[np.ndarray, np.ndarray]:
    """Table VIII for rxc as numpy: the class and the code position of each `k`."""
    with jax.ensure_compile_time_eval():
        table = partition.paper_class_table("rxc", "dnn")
        classes = np.asarray(table.classes, np.int32)
        order = np.asarray(table.order)
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return classes, position.astype(np.int32)


def _ranked_classes(coding: CodingSetup, energies):
    """`(classes [K], code position [K])` of the partition's sub-products.

    The same table as `_class_table`, computed for the fast path without a sort:
    the rank of a sub-product by decreasing energy (ties by index) is one pairwise
    comparison of the `K` energies, and the sub-product of rank `j` sits at code
    position `j`, as in `partition.classes_by_energy`. The static rxc table of
    Table VIII needs no energies.
    """
    if _uses_paper_table(coding) and coding.kind is partition.PartitionKind.RXC:
        classes, position = _paper_rxc_table()
        return jnp.asarray(classes), jnp.asarray(position)
    sizes = coding.code.class_sizes
    if _uses_paper_table(coding):
        sizes = partition.DNN_CLASS_SIZES
    values = energies()
    index = jnp.arange(values.shape[0])
    ahead = (values[None, :] > values[:, None]) | (
        (values[None, :] == values[:, None]) & (index[None, :] < index[:, None])
    )
    rank = jnp.sum(ahead, axis=1, dtype=jnp.int32)
    labels = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes), jnp.int32)
    return labels[rank], rank


def _bits(recovered: jax.Array) -> jax.Array:
    """`[] int32` with bit `k` set iff sub-product `k` is recovered (`K <= 31`)."""
    weights = jnp.left_shift(1, jnp.arange(recovered.shape[0], dtype=jnp.int32))
    return jnp.sum(jnp.where(recovered, weights, 0), dtype=jnp.int32)


def _bit(bits: jax.Array, index: jax.Array) -> jax.Array:
    return (jnp.right_shift(bits, index) & 1) == 1


def _fast_product(a, b, decision: _Decision, coding: CodingSetup):
    """Recovered sub-products of the exact product, in the original order.

    No operand is permuted: every row / column / pair learns its block from
    `_blocks_by_rank`, and the recovered set becomes a bit mask that XLA fuses into
    one elementwise pass.
    """
    if coding.kind is partition.PartitionKind.RXC:
        n, p = coding.blocks
        row_norms2 = partition.squared_norms(a, 1)
        col_norms2 = partition.squared_norms(b, 0)
        row_block, col_block = _blocks_by_rank(
            [row_norms2, col_norms2], [_layout(a.shape[0], n), _layout(b.shape[1], p)]
        )

        def energies():
            a_norms = _block_norms(row_norms2, row_block, n)
            b_norms = _block_norms(col_norms2, col_block, p)
            return jnp.outer(a_norms, b_norms).reshape(-1)

        classes, position = _ranked_classes(coding, energies)
        recovered = decision.recovered[position]
        index = row_block[:, None] * p + col_block[None, :]
        keep = _bit(_bits(recovered), index)
        return jnp.where(keep, jnp.matmul(a, b), 0.0), classes, recovered

    (m,) = coding.blocks
    a_norms2 = partition.squared_norms(a, 0)
    b_norms2 = partition.squared_norms(b, 1)
    (pair_block,) = _blocks_by_rank([a_norms2 * b_norms2], [_layout(a.shape[1], m)])

    def energies():
        norms = _block_norms(jnp.stack([a_norms2, b_norms2]), pair_block, m)
        return norms[0] * norms[1]

    classes, position = _ranked_classes(coding, energies)
    recovered = decision.recovered[position]
    keep = _bit(_bits(recovered), pair_block)
    # Masking the smaller operand is the cheaper way to drop the lost pairs.
    if a.size <= b.size:
        product = jnp.matmul(jnp.where(keep[None, :], a, 0.0), b)
    else:
        product = jnp.matmul(a, jnp.where(keep[:, None], b, 0.0))
    return product, classes, recovered


class _Blocked(NamedTuple):
    """The norm-sorted, padded partition of one product and how to undo it."""

    part: partition.Partition
    row_permutation: jax.Array
    column_permutation: jax.Array
    layouts: tuple[_Layout, ...]


def _blocked(a: jax.Array, b: jax.Array, coding: CodingSetup) -> _Blocked:
    """Sorts by norm with the partition module, then cuts into padded blocks."""
    if coding.kind is partition.PartitionKind.RXC:
        n, p = coding.blocks
        ordered = partition.partition_rxc(a, b, 1, 1, sort_by_norm=True)
        rows = _layout(a.shape[0], n)
        cols = _layout(b.shape[1], p)
        a_padded = _place(ordered.a_blocks[0], rows, 0)
        b_padded = _place(ordered.b_blocks[0], cols, 1)
        part = partition.partition_rxc(a_padded, b_padded, n, p)
        layouts = (rows, cols)
    else:
        (m,) = coding.blocks
        ordered = partition.partition_cxr(a, b, 1, sort_by_norm=True)
        inner = _layout(a.shape[1], m)
        a_padded = _place(ordered.a_blocks[0], inner, 1)
        b_padded = _place(ordered.b_blocks[0], inner, 0)
        part = partition.partition_cxr(a_padded, b_padded, m)
        layouts = (inner,)
    return _Blocked(part, ordered.row_permutation, ordered.column_permutation, layouts)


def _faithful_product(a, b, decision: _Decision, coding: CodingSetup):
    """Encodes the blocks, multiplies for every worker, decodes the packets.

    Worker `w` computes its packet `sum_k c_wk A_k B_k` as one product of encoded
    factors: rxc `[A_1 .. A_N] [sum_p c_w,np B_p]_n` (the column blocks of `B`
    combined per row block of `A`), cxr `[c_w1 A_1 .. c_wM A_M] [B_1; ..; B_M]`.
    The received packets are decoded by the minimum-norm solution of
    `R^T y_k = e_k` (a pseudo-inverse of the received rows `R`) for every recovered
    `k`; the others stay zero.
    """
    blocked = _blocked(a, b, coding)
    part = blocked.part
    table = _class_table(coding, lambda: partition.block_norm_products(part))
    recovered = table.to_partition_order(decision.recovered)
    rows = table.to_partition_order(decision.rows, axis=-1)  # [W, K]
    if coding.kind is partition.PartitionKind.RXC:
        n, p = coding.blocks
        coefficients = rows.reshape(-1, n, p)
        encoded_b = jnp.einsum(
            "wnp,phq->wnhq", coefficients, part.b_blocks, precision=_HIGHEST
        )
        packets = jnp.einsum(
            "nuh,wnhq->wuq", part.a_blocks, encoded_b, precision=_HIGHEST
        )
    else:
        encoded_a = rows[:, :, None, None] * part.a_blocks[None]
        packets = jnp.einsum(
            "wmuh,mhq->wuq", encoded_a, part.b_blocks, precision=_HIGHEST
        )
    received = jnp.where(decision.arrived[:, None], rows, 0.0)
    decoder = jnp.linalg.pinv(received, rtol=fields.REAL_TOLERANCE)  # [K, W]
    decoder = jnp.where(recovered[:, None], decoder, 0.0)
    flat = packets.reshape(packets.shape[0], -1)
    estimate = jnp.matmul(decoder, flat, precision=_HIGHEST)
    estimate = estimate.reshape((-1,) + packets.shape[1:])  # [K, U, Q]
    if coding.kind is partition.PartitionKind.CXR:
        return jnp.sum(estimate, axis=0), table, recovered
    n, p = coding.blocks
    u, q = estimate.shape[1:]
    tiles = estimate.reshape(n, p, u, q).transpose(0, 2, 1, 3).reshape(n * u, p * q)
    rows_layout, cols_layout = blocked.layouts
    tiles = tiles[rows_layout.slots][:, cols_layout.slots]
    tiles = _unsort(blocked.row_permutation, tiles, 0)
    return _unsort(blocked.column_permutation, tiles, 1), table, recovered


def _coded_product(uniform, row_key, a, b, coding: CodingSetup) -> CodedProduct:
    logger.debug(
        "tracing a coded product %s x %s (%s, %s, W=%d, %s)",
        a.shape,
        b.shape,
        coding.scheme.value,
        coding.kind.value,
        coding.workers,
        coding.mode.value,
    )
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    decision = _decide(uniform, row_key, coding)
    if coding.mode is Mode.FAST:
        product, classes, recovered = _fast_product(a, b, decision, coding)
    else:
        product, table, recovered = _faithful_product(a, b, decision, coding)
        classes = table.classes
    arrivals = jnp.sum(decision.arrived, dtype=jnp.int32)
    return CodedProduct(product, recovered, classes, arrivals)


def _realization(key: jax.Array, coding: CodingSetup, products: int = 0):
    """`(uniform [2, W], row key)` of one product, or of `products` at once.

    One draw of `[products, 2, W]` uniforms serves several products (the two of a
    backward pass), with row keys `fold_in(key, 1 + i)`.
    """
    workers = coding.workers
    if not products:
        return jax.random.uniform(key, (2, workers)), jax.random.fold_in(key, 1)
    uniform = jax.random.uniform(key, (products, 2, workers))
    return [(uniform[i], jax.random.fold_in(key, 1 + i)) for i in range(products)]


@jax.jit
def _coded_product_jit(key, a, b, coding: CodingSetup) -> CodedProduct:
    uniform, row_key = _realization(key, coding)
    return _coded_product(uniform, row_key, a, b, coding)


def _check_key(key: Any) -> None:
    if not (
        hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise ValueError(
            "key must be a typed PRNG key from jax.random.key "
            f"(got {getattr(key, 'dtype', type(key))})"
        )
    if key.shape != ():
        raise ValueError(
            f"key must be a single key (got shape {key.shape}); use jax.vmap for a "
            "batch of realizations"
        )


def _check_operand(x: Any, name: str) -> jax.Array:
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not (
        jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
    ):
        raise ValueError(f"{name} must be a real matrix (got dtype {x.dtype})")
    return x


def coded_product(key: jax.Array, a, b, coding: CodingSetup) -> CodedProduct:
    """`C_hat`, the approximate product `A B` by the deadline, and what was recovered.

    Args:
        key: a typed PRNG key; one key is one straggler realization (window draws,
            coefficients, response times).
        a: `[rows, inner]` real matrix `A`.
        b: `[inner, cols]` real matrix `B`.
        coding: the setup (`coding_setup`).

    Returns:
        The `CodedProduct`. With every packet received (`deadline=inf`) and a code
        that can decode everything, `product == a @ b` (fast mode exactly, faithful
        mode up to the float32 error of decoding).

    Raises:
        ValueError: for an untyped or batched key, a non-real operand, or operands
            that the partition does not fit (`check_product_fits`).

    Note:
        Fast mode costs one exact product plus sorting, and `O(W K)` for the
        decision (large field) or one progressive elimination of `[W, K]` rows.
        Faithful mode computes `W` worker products, each of the size of the
        encoded factors (up to the full product for a window of all sub-products),
        and decodes them with float32 arithmetic at HIGHEST matmul precision.
    """
    _check_key(key)
    a = _check_operand(a, "a")
    b = _check_operand(b, "b")
    check_product_fits(coding, a.shape, b.shape)
    return _coded_product_jit(key, a, b, coding)


def coded_matmul(key: jax.Array, a, b, coding: CodingSetup) -> jax.Array:
    """The approximate product `C_hat` of `A B` under one straggler realization.

    Args:
        key: a typed PRNG key.
        a: `[rows, inner]` real matrix.
        b: `[inner, cols]` real matrix.
        coding: the setup (`coding_setup`).

    Returns:
        `[rows, cols] float32`; see `coded_product`.

    Example:
        >>> coding = coding_setup("uncoded", "rxc", deadline=float("inf"))
        >>> a = jnp.arange(12.0).reshape(3, 4)
        >>> bool(jnp.allclose(coded_matmul(jax.random.key(1), a, a.T, coding), a @ a.T))
        True
    """
    return coded_product(key, a, b, coding).product


def _backward(key, x, kernel, g, coding: CodingSetup):
    (u_input, k_input), (u_kernel, k_kernel) = _realization(key, coding, 2)
    grad_x = _coded_product(u_input, k_input, g, kernel.T, coding)
    grad_kernel = _coded_product(u_kernel, k_kernel, x.T, g, coding)
    return grad_x, grad_kernel


@jax.custom_vjp
def _linear(key, x, kernel, coding):
    return jnp.matmul(x, kernel)


def _linear_fwd(key, x, kernel, coding):
    return jnp.matmul(x, kernel), (key, x, kernel, coding)


def _linear_bwd(residuals, g):
    key, x, kernel, coding = residuals
    grad_x, grad_kernel = _backward(key, x, kernel, g, coding)
    return (
        None,
        grad_x.product.astype(x.dtype),
        grad_kernel.product.astype(kernel.dtype),
        None,
    )


_linear.defvjp(_linear_fwd, _linear_bwd)


def _check_linear(x_shape, kernel_shape, coding: CodingSetup, name: str) -> None:
    if len(kernel_shape) != 2 or x_shape[-1] != kernel_shape[0]:
        raise ValueError(
            f"{name}: x has {x_shape[-1]} features but the kernel has shape "
            f"{tuple(kernel_shape)}; they must agree"
        )
    batch = int(np.prod(x_shape[:-1]))
    out = kernel_shape[1]
    check_product_fits(
        coding, (batch, out), (out, kernel_shape[0]), f"{name}: G V^T (eq. 26)"
    )
    check_product_fits(
        coding, (kernel_shape[0], batch), (batch, out), f"{name}: X^T G (eq. 27)"
    )


def coded_linear(key: jax.Array, x, kernel, coding: CodingSetup) -> jax.Array:
    """`x @ kernel`, exact forward, with both backward products coded.

    The forward pass is the exact product. Its VJP computes the two products of
    back-propagation as coded products under independent straggler realizations
    drawn from `key`: the input gradient `G V^T` (eq. 26) and the kernel gradient
    `X^T G` (eq. 27), where `G` is the cotangent of the output; `backward_products`
    returns them with what was recovered.

    Args:
        key: a typed PRNG key, used only by the backward pass.
        x: `[..., in]` inputs; leading axes are flattened into the batch of the
            products.
        kernel: `[in, out]` weights `V`.
        coding: the setup.

    Returns:
        `[..., out]`, `x @ kernel`.

    Raises:
        ValueError: if the shapes disagree or the partition does not fit the
            products of the layer (`check_product_fits`).
    """
    _check_key(key)
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    _check_linear(x.shape, kernel.shape, coding, "coded_linear")
    batch_shape = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    return _linear(key, flat, kernel, coding).reshape(batch_shape + (kernel.shape[1],))


def backward_products(
    key: jax.Array, x, kernel, g, coding: CodingSetup
) -> tuple[CodedProduct, CodedProduct]:
    """The two coded products that the VJP of `coded_linear` computes.

    Args:
        key: the key passed to `coded_linear`.
        x: `[batch, in]` inputs `X`.
        kernel: `[in, out]` weights `V`.
        g: `[batch, out]` output cotangent `G`.
        coding: the setup.

    Returns:
        `(input gradient G V^T, kernel gradient X^T G)`, each a `CodedProduct`. The
        two realizations are independent: one draw of uniforms for both products
        (arrivals and windows), and coefficient rows from `fold_in(key, 1)` and
        `fold_in(key, 2)`.

    Raises:
        ValueError: as `coded_linear`.
    """
    _check_key(key)
    x, kernel, g = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(g)
    _check_linear(x.shape, kernel.shape, coding, "backward_products")
    if g.shape != (x.shape[0], kernel.shape[1]):
        raise ValueError(
            f"g must have the shape {(x.shape[0], kernel.shape[1])} of x @ kernel "
            f"(got {g.shape})"
        )
    return _backward_jit(key, x, kernel, g, coding)


_backward_jit = jax.jit(_backward)


class CodedDense(linen.Module):
    """A dense layer whose back-propagation products are computed by stragglers.

    The forward pass is `x @ kernel + bias`, exact. With a `coding`, the products
    `G V^T` (eq. 26) and `X^T G` (eq. 27) of its VJP go through `coded_matmul`; the
    bias gradient (a sum over the batch) is exact. Each application draws a key from
    the random stream `rng_stream` ("stragglers" by default), so pass
    `rngs={"stragglers": key}` to `apply`; `init` needs no such stream. With
    `coding=None` the layer is a plain dense layer with the same parameters.

    Attributes:
        features: output features.
        coding: the `CodingSetup`, or None for exact back-propagation.
        use_bias: whether to add a bias.
        kernel_init: initializer of the `[in, features]` kernel.
        bias_init: initializer of the `[features]` bias.
        rng_stream: the name of the random stream of the straggler realizations.

    Example:
        >>> layer = CodedDense(10, coding_setup("ew", "cxr"))
        >>> x = jnp.ones((64, 20))
        >>> params = layer.init(jax.random.key(0), x)
        >>> y = layer.apply(params, x, rngs={"stragglers": jax.random.key(1)})
        >>> y.shape
        (64, 10)
    """

    features: int
    coding: CodingSetup | None = None
    use_bias: bool = True
    kernel_init: Any = linen.initializers.lecun_normal()
    bias_init: Any = linen.initializers.zeros_init()
    rng_stream: str = STREAM

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the layer to `[..., in]` inputs; returns `[..., features]`."""
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32
        )
        if self.coding is None:
            y = jnp.matmul(x, kernel)
        elif self.is_initializing() and not self.has_rng(self.rng_stream):
            # The forward pass is exact; init may use a batch too small to partition.
            y = jnp.matmul(x, kernel)
        elif not self.has_rng(self.rng_stream):
            raise ValueError(
                f"CodedDense {self.name} needs the random stream "
                f"{self.rng_stream!r} for its straggler realizations; pass "
                f"rngs={{{self.rng_stream!r}: key}} to apply"
            )
        else:
            _check_linear(x.shape, kernel.shape, self.coding, f"CodedDense {self.name}")
            y = coded_linear(self.make_rng(self.rng_stream), x, kernel, self.coding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y
