"""Partitions of a product into sub-products: importance, class tables, Gram matrices.

`C = A B` is split into `K` sub-products in one of two ways (Sec. II-A, eqs. 3-4):

- `rxc` (row-times-column): `A [N*U, H]` is cut into `N` row blocks `A_n [U, H]` and
  `B [H, P*Q]` into `P` column blocks `B_p [H, Q]`. The `K = N*P` sub-products
  `C_np = A_n B_p [U, Q]` tile `C` without overlap and are indexed `k = n*P + p`.
- `cxr` (column-times-row): `A [U, M*H]` is cut into `M` column blocks `A_m [U, H]` and
  `B [M*H, Q]` into `M` row blocks `B_m [H, Q]`. The `K = M` sub-products
  `C_m = A_m B_m [U, Q]` are full-size terms with `C = sum_m C_m`.

If nothing is recovered for the set `u` of sub-products, the loss (eq. 2) is
`||C - C_hat||_F^2 = u^T G u` with the Gram matrix `G_kj = <C_k, C_j>_F`, diagonal for
`rxc`. Importance (Sec. IV-A, VII-C): rows and columns can be put in decreasing order of
norm before the blocks are formed, blocks get importance levels (high, medium, low, ...)
and a class table maps every sub-product to one of `L` classes, most important first.
Classes are numbered from 0. The synthetic matrices of Sec. VI (Assumption 1) and their
expected sub-product energies (eq. 12) are here as well.

All arithmetic is float32; matrix products use `jax.lax.Precision.HIGHEST`, so GPUs and
TPUs do not fall back to TF32 or bfloat16 passes.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PartitionKind",
    "Partition",
    "partition_rxc",
    "partition_cxr",
    "squared_norms",
    "subproducts",
    "subproduct_energies",
    "block_norm_products",
    "gram_matrix",
    "loss",
    "normalized_loss",
    "reconstruct",
    "importance_levels",
    "ClassTable",
    "class_table",
    "pair_class_table",
    "classes_by_energy",
    "PaperSetting",
    "paper_class_table",
    "LEVEL_VARIANCES",
    "SYNTHETIC_PAIR_CLASSES",
    "DNN_PAIR_CLASSES",
    "DNN_CLASS_SIZES",
    "MatrixPair",
    "synthetic_variances",
    "synthetic_matrices",
    "expected_energies",
]

logger = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST

LEVEL_VARIANCES = (10.0, 1.0, 0.1)
"""Entry variances of the high, medium and low importance levels of Sec. VI."""

SYNTHETIC_PAIR_CLASSES = ((0, 0, 1), (0, 1, 2), (1, 2, 2))
"""Class of `C_np` by the levels of `(A_n, B_p)` in Sec. VI (rxc): (h,h), (h,m), (m,h)
are class 0; (m,m), (h,l), (l,h) class 1; the rest class 2."""

DNN_PAIR_CLASSES = ((0, 1, 2), (1, 2, 2), (2, 2, 2))
"""Class of `C_np` by the levels of `(A_n, B_p)` for Table VIII (rxc): (h,h) is class
0; (h,m), (m,h) class 1; the rest class 2."""

DNN_CLASS_SIZES = (1, 2, 6)
"""Class sizes `n_C(s)` of Table VIII (Sec. VII-C)."""

_SYNTHETIC_SIZES = {
    "rxc": {"blocks": 3, "block_rows": 300, "block_inner": 900, "block_cols": 300},
    "cxr": {"blocks": 9, "block_rows": 900, "block_inner": 100, "block_cols": 900},
}


class PartitionKind(enum.Enum):
    """How `C = A B` is split into sub-products (Sec. II-A)."""

    RXC = "rxc"
    CXR = "cxr"

    @classmethod
    def parse(cls, kind: str | PartitionKind) -> PartitionKind:
        """Returns the kind named by `kind` (a `PartitionKind` or its value)."""
        if isinstance(kind, PartitionKind):
            return kind
        try:
            return cls(str(kind).lower())
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in cls)
            raise ValueError(f"kind must be one of {allowed} (got {kind!r})") from None


@dataclasses.dataclass(frozen=True)
class Partition:
    """The blocks of `A` and `B` and the order in which their rows were taken.

    The blocks are formed from `A` and `B` after the permutations below; with no
    importance ordering every permutation is the identity.

    Attributes:
        kind: `PartitionKind.RXC` or `PartitionKind.CXR` (static).
        a_blocks: `[N, U, H] float32` row blocks `A_n` (rxc) or `[M, U, H] float32`
            column blocks `A_m` (cxr).
        b_blocks: `[P, H, Q] float32` column blocks `B_p` (rxc) or `[M, H, Q] float32`
            row blocks `B_m` (cxr).
        row_permutation: `[rows of A] int32`; row `i` of the blocked `A` (and of `C`)
            is row `row_permutation[i]` of the original.
        column_permutation: `[columns of B] int32`, the same for the columns of `B`
            and `C`.
        inner_permutation: `[columns of A] int32`, the same for the columns of `A` and
            the rows of `B` (the pairs of a cxr partition).
    """

    kind: PartitionKind
    a_blocks: jax.Array
    b_blocks: jax.Array
    row_permutation: jax.Array
    column_permutation: jax.Array
    inner_permutation: jax.Array

    @property
    def grid(self) -> tuple[int, ...]:
        """`(N, P)` for rxc, `(M,)` for cxr."""
        if self.kind is PartitionKind.RXC:
            return (self.a_blocks.shape[0], self.b_blocks.shape[0])
        return (self.a_blocks.shape[0],)

    @property
    def num_subproducts(self) -> int:
        """`K = N*P` (rxc) or `K = M` (cxr)."""
        return int(np.prod(self.grid))

    @property
    def block_rows(self) -> int:
        """`U`, the rows of every sub-product."""
        return self.a_blocks.shape[1]

    @property
    def block_inner(self) -> int:
        """`H`, the inner dimension of every block product."""
        return self.a_blocks.shape[2]

    @property
    def block_cols(self) -> int:
        """`Q`, the columns of every sub-product."""
        return self.b_blocks.shape[2]

    @property
    def output_shape(self) -> tuple[int, int]:
        """The shape of `C`: `(N*U, P*Q)` for rxc, `(U, Q)` for cxr."""
        if self.kind is PartitionKind.RXC:
            n, p = self.grid
            return (n * self.block_rows, p * self.block_cols)
        return (self.block_rows, self.block_cols)


jax.tree_util.register_dataclass(
    Partition,
    data_fields=[
        "a_blocks",
        "b_blocks",
        "row_permutation",
        "column_permutation",
        "inner_permutation",
    ],
    meta_fields=["kind"],
)


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_finite(x: jax.Array, name: str) -> None:
    """Raises ValueError if the concrete array `x` has a NaN or infinite entry."""
    if _is_traced(x):
        return
    bad = int(jnp.sum(~jnp.isfinite(x)))
    if bad:
        raise ValueError(
            f"{name} has {bad} NaN or infinite entries; pass finite values"
        )


def _as_matrix(x, name: str) -> jax.Array:
    """Validates a real 2-D matrix and returns it as float32."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be a real matrix (got dtype {x.dtype})")
    if not (
        jnp.issubdtype(x.dtype, jnp.floating)
        or jnp.issubdtype(x.dtype, jnp.integer)
        or x.dtype == bool
    ):
        raise ValueError(f"{name} must be a real matrix (got dtype {x.dtype})")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (got shape {tuple(x.shape)})")
    x = jnp.asarray(x, dtype=jnp.float32)
    _check_finite(x, name)
    return x


def _check_count(value, name: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return int(value)


def _check_divides(size: int, blocks: int, matrix: str, axis: str, name: str) -> None:
    if size % blocks:
        raise ValueError(
            f"{matrix} has {size} {axis}, which {name}={blocks} does not divide"
        )


def squared_norms(x: jax.Array, axis: int) -> jax.Array:
    """Squared Euclidean norms of the columns (`axis=0`) or rows (`axis=1`) of `x`.

    A float32 matrix-vector product with ones at HIGHEST precision, the norms that
    `sort_by_norm` orders by. XLA's CPU backend runs it as one kernel, where a
    reduction over rows first copies the matrix transposed.

    Args:
        x: `[rows, cols]` float32 matrix.
        axis: the axis summed over.

    Returns:
        `[cols]` (`axis=0`) or `[rows]` (`axis=1`) float32.
    """
    squares = x * x
    if axis == 0:
        return jnp.matmul(jnp.ones(x.shape[0], x.dtype), squares, precision=_HIGHEST)
    return jnp.matmul(squares, jnp.ones(x.shape[1], x.dtype), precision=_HIGHEST)


def _decreasing_order(energies: jax.Array) -> jax.Array:
    """`[n] int32` indices by decreasing energy; ties keep the original order."""
    return jnp.argsort(-energies, stable=True).astype(jnp.int32)


def _identity(n: int) -> jax.Array:
    return jnp.arange(n, dtype=jnp.int32)


def partition_rxc(
    a, b, row_blocks: int, col_blocks: int, *, sort_by_norm: bool = False
) -> Partition:
    """Cuts `A` into `N` row blocks and `B` into `P` column blocks (eq. 3).

    Args:
        a: `[N*U, H]` real matrix `A`.
        b: `[H, P*Q]` real matrix `B`.
        row_blocks: `N`, which must divide the rows of `a`.
        col_blocks: `P`, which must divide the columns of `b`.
        sort_by_norm: if True, the rows of `A` and the columns of `B` are first put in
            decreasing order of Euclidean norm (Sec. VII-C), so block 0 holds the
            largest rows. Ties keep the original order.

    Returns:
        The `Partition`; sub-product `k = n*P + p` is `A_n B_p`.

    Raises:
        ValueError: for a non-matrix or complex input, NaN or infinite entries (checked
            when the arrays are concrete), inner dimensions that differ, or block
            counts that do not divide the matrices.

    Example:
        >>> part = partition_rxc(jnp.ones((6, 4)), jnp.ones((4, 6)), 3, 2)
        >>> part.grid, part.a_blocks.shape, part.b_blocks.shape
        ((3, 2), (3, 2, 4), (2, 4, 3))
    """
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a has {a.shape[1]} columns but b has {b.shape[0]} rows; the inner "
            "dimensions of a @ b must agree"
        )
    n = _check_count(row_blocks, "row_blocks")
    p = _check_count(col_blocks, "col_blocks")
    _check_divides(a.shape[0], n, "a", "rows", "row_blocks")
    _check_divides(b.shape[1], p, "b", "columns", "col_blocks")
    inner = a.shape[1]

    if sort_by_norm:
        rows = _decreasing_order(squared_norms(a, 1))
        cols = _decreasing_order(squared_norms(b, 0))
        a = a[rows]
        b = b[:, cols]
    else:
        rows = _identity(a.shape[0])
        cols = _identity(b.shape[1])

    a_blocks = a.reshape(n, a.shape[0] // n, inner)
    b_blocks = b.reshape(inner, p, b.shape[1] // p).transpose(1, 0, 2)
    return Partition(
        PartitionKind.RXC, a_blocks, b_blocks, rows, cols, _identity(inner)
    )


def partition_cxr(a, b, blocks: int, *, sort_by_norm: bool = False) -> Partition:
    """Cuts `A` into `M` column blocks and `B` into `M` matching row blocks (eq. 4).

    Args:
        a: `[U, M*H]` real matrix `A`.
        b: `[M*H, Q]` real matrix `B`.
        blocks: `M`, which must divide the inner dimension.
        sort_by_norm: if True, the pairs (column `i` of `A`, row `i` of `B`) are first
            put in decreasing order of `||A[:, i]|| ||B[i, :]||`, the norm of the
            rank-one term they contribute to `C` (Sec. VII-C). Ties keep the original
            order.

    Returns:
        The `Partition`; sub-product `k = m` is `A_m B_m`.

    Raises:
        ValueError: for a non-matrix or complex input, NaN or infinite entries (checked
            when the arrays are concrete), inner dimensions that differ, or a block
            count that does not divide them.

    Example:
        >>> part = partition_cxr(jnp.ones((5, 6)), jnp.ones((6, 4)), 3)
        >>> part.grid, part.a_blocks.shape, part.b_blocks.shape
        ((3,), (3, 5, 2), (3, 2, 4))
    """
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a has {a.shape[1]} columns but b has {b.shape[0]} rows; the inner "
            "dimensions of a @ b must agree"
        )
    m = _check_count(blocks, "blocks")
    _check_divides(a.shape[1], m, "a", "columns", "blocks")
    u, inner = a.shape
    h = inner // m

    if sort_by_norm:
        pairs = _decreasing_order(squared_norms(a, 0) * squared_norms(b, 1))
        a = a[:, pairs]
        b = b[pairs]
    else:
        pairs = _identity(inner)

    a_blocks = a.reshape(u, m, h).transpose(1, 0, 2)
    b_blocks = b.reshape(m, h, b.shape[1])
    return Partition(
        PartitionKind.CXR,
        a_blocks,
        b_blocks,
        _identity(u),
        _identity(b.shape[1]),
        pairs,
    )


def subproducts(partition: Partition) -> jax.Array:
    """Every sub-product, explicitly.

    Args:
        partition: the partition.

    Returns:
        `[K, U, Q] float32`: `C_k` in the partition's order (`k = n*P + p` for rxc,
        `k = m` for cxr), rows and columns in the blocked (possibly sorted) order.

    Note:
        This forms `K` products of size `U x Q`; the losses need only `gram_matrix`.
    """
    if partition.kind is PartitionKind.RXC:
        n, p = partition.grid
        tiles = jnp.einsum(
            "nuh,phq->npuq", partition.a_blocks, partition.b_blocks, precision=_HIGHEST
        )
        return tiles.reshape(n * p, partition.block_rows, partition.block_cols)
    return jnp.einsum(
        "muh,mhq->muq", partition.a_blocks, partition.b_blocks, precision=_HIGHEST
    )


def _block_grams(x: jax.Array, contract_axis: int) -> jax.Array:
    """`[blocks, H, H]` Gram matrices of the blocks, contracting `contract_axis`."""
    spec = "buh,bug->bhg" if contract_axis == 1 else "bhq,bgq->bhg"
    return jnp.einsum(spec, x, x, precision=_HIGHEST)


def _rxc_energies(partition: Partition) -> jax.Array:
    """`[N, P]` energies `||A_n B_p||_F^2` by the cheaper of two exact routes."""
    n, p = partition.grid
    u, h, q = partition.block_rows, partition.block_inner, partition.block_cols
    tile_cost = n * p * u * h * q
    gram_cost = (n * u + p * q) * h * h + n * p * h * h
    logger.debug(
        "rxc energies for N=%d P=%d U=%d H=%d Q=%d via %s",
        n,
        p,
        u,
        h,
        q,
        "tiles" if tile_cost <= gram_cost else "block Gram matrices",
    )
    if tile_cost <= gram_cost:
        tiles = jnp.einsum(
            "nuh,phq->npuq", partition.a_blocks, partition.b_blocks, precision=_HIGHEST
        )
        return jnp.sum(jnp.sum(tiles * tiles, axis=3), axis=2)
    # ||A_n B_p||^2 = sum((A_n^T A_n) * (B_p B_p^T)): [H, H] matrices, no U x Q tile.
    a_grams = _block_grams(partition.a_blocks, 1)
    b_grams = _block_grams(partition.b_blocks, 2)
    return jnp.einsum("nhg,phg->np", a_grams, b_grams, precision=_HIGHEST)


def _cxr_gram(partition: Partition) -> jax.Array:
    m, h = partition.grid[0], partition.block_inner
    a = partition.a_blocks.transpose(1, 0, 2).reshape(partition.block_rows, m * h)
    b = partition.b_blocks.reshape(m * h, partition.block_cols)
    a_gram = jnp.matmul(a.T, a, precision=_HIGHEST)
    b_gram = jnp.matmul(b, b.T, precision=_HIGHEST)
    # <A_m B_m, A_j B_j>_F = sum((A_m^T A_j) * (B_m B_j^T)); summing g, then h, keeps
    # each float32 sum to H terms.
    products = (a_gram * b_gram).reshape(m, h, m, h)
    gram = jnp.sum(jnp.sum(products, axis=3), axis=1)
    return 0.5 * (gram + gram.T)


def subproduct_energies(partition: Partition) -> jax.Array:
    """The energies `||C_k||_F^2` of the sub-products, the diagonal of the Gram matrix.

    Args:
        partition: the partition.

    Returns:
        `[K] float32` in the partition's order.

    Note:
        rxc takes the cheaper exact route: the tiles `A_n B_p` (`N P U H Q` products)
        or the block Gram matrices `A_n^T A_n`, `B_p B_p^T` (`(N U + P Q) H^2`). cxr
        uses `sum((A_m^T A_m) * (B_m B_m^T))`, never a `U x Q` product.
    """
    if partition.kind is PartitionKind.RXC:
        return _rxc_energies(partition).reshape(-1)
    a_grams = _block_grams(partition.a_blocks, 1)
    b_grams = _block_grams(partition.b_blocks, 2)
    return jnp.sum(jnp.sum(a_grams * b_grams, axis=2), axis=1)


def block_norm_products(partition: Partition) -> jax.Array:
    """`||A_k||_F ||B_k||_F` of every sub-product, the block-norm ranking of Sec. VII-C.

    Args:
        partition: the partition.

    Returns:
        `[K] float32`: `||A_n||_F ||B_p||_F` at `k = n*P + p` (rxc) or
        `||A_m||_F ||B_m||_F` (cxr), an upper bound on `||C_k||_F`.
    """
    a_norms = jnp.sqrt(jnp.sum(partition.a_blocks**2, axis=(1, 2)))
    b_norms = jnp.sqrt(jnp.sum(partition.b_blocks**2, axis=(1, 2)))
    if partition.kind is PartitionKind.RXC:
        return jnp.outer(a_norms, b_norms).reshape(-1)
    return a_norms * b_norms


def gram_matrix(partition: Partition) -> jax.Array:
    """The Gram matrix of the sub-products, `G_kj = <C_k, C_j>_F`.

    `||C - C_hat||_F^2 = u^T G u` for the indicator `u` of the sub-products that are
    not recovered (eq. 2), and `1^T G 1 = ||C||_F^2`.

    Args:
        partition: the partition.

    Returns:
        `[K, K] float32`, symmetric positive semi-definite. rxc: diagonal, as the tiles
        do not overlap (no off-diagonal product is formed). cxr: the exact cross terms
        `G_mj = sum((A_m^T A_j) * (B_m B_j^T))` from `[M H, M H]` Gram matrices of the
        columns of `A` and the rows of `B`, without any `U x Q` product.

    Note:
        cxr costs `(U + Q) (M H)^2` multiply-adds and `(M H)^2` floats of memory; for a
        very large inner dimension `M H`, `subproducts` followed by inner products can
        be cheaper. Entries are float32 with HIGHEST-precision products; their error is
        about `1e-6` of `sqrt(G_kk G_jj)` times a modest factor.

    Example:
        >>> a = jnp.arange(12.0).reshape(2, 6)
        >>> gram_matrix(partition_cxr(a, a.T, 3)).shape
        (3, 3)
    """
    if partition.kind is PartitionKind.RXC:
        return jnp.diag(subproduct_energies(partition))
    return _cxr_gram(partition)


def _check_gram(gram) -> jax.Array:
    if not hasattr(gram, "dtype"):
        gram = np.asarray(gram)
    if not jnp.issubdtype(gram.dtype, jnp.floating):
        raise ValueError(f"gram must be a real floating array (got dtype {gram.dtype})")
    shape = tuple(gram.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == shape[1])):
        raise ValueError(
            "gram must be a [K, K] Gram matrix or the [K] diagonal of one "
            f"(got shape {shape})"
        )
    gram = jnp.asarray(gram, dtype=jnp.float32)
    _check_finite(gram, "gram")
    return gram


def _check_mask(mask, name: str, k: int) -> jax.Array:
    if not hasattr(mask, "dtype"):
        mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(
            f"{name} must be a bool array (got dtype {mask.dtype}); pass a mask with "
            "one entry per sub-product"
        )
    if mask.ndim < 1 or mask.shape[-1] != k:
        raise ValueError(
            f"{name} must have shape [..., {k}], one entry per sub-product "
            f"(got shape {tuple(mask.shape)})"
        )
    return jnp.asarray(mask)


def _quadratic_loss(mask: jax.Array, gram: jax.Array) -> jax.Array:
    u = mask.astype(jnp.float32)
    if gram.ndim == 1:
        value = jnp.matmul(u, gram, precision=_HIGHEST)
    else:
        value = jnp.sum(jnp.matmul(u, gram, precision=_HIGHEST) * u, axis=-1)
    return jnp.maximum(value, 0.0)


def loss(unrecovered, gram) -> jax.Array:
    """The loss `||C - C_hat||_F^2 = u^T G u` (eq. 2) from the Gram matrix.

    Args:
        unrecovered: `[..., K] bool`, True where a sub-product is not recovered.
        gram: `[K, K]` Gram matrix from `gram_matrix`, or its `[K]` diagonal (the fast
            path for rxc, where the Gram matrix is diagonal).

    Returns:
        `[...] float32`. Rounding can make `u^T G u` slightly negative when the missing
        terms nearly cancel; the result is clipped at 0.

    Raises:
        ValueError: for a non-bool mask, a mask whose last axis is not `K`, or a
            malformed or non-finite (when concrete) Gram matrix.

    Example:
        >>> loss(jnp.array([True, False]), jnp.array([2.0, 3.0])).item()
        2.0
    """
    gram = _check_gram(gram)
    mask = _check_mask(unrecovered, "unrecovered", gram.shape[0])
    return _quadratic_loss(mask, gram)


def normalized_loss(unrecovered, gram) -> jax.Array:
    """The normalized loss `u^T G u / 1^T G 1 = ||C - C_hat||_F^2 / ||C||_F^2`.

    Args:
        unrecovered: `[..., K] bool`, True where a sub-product is not recovered.
        gram: `[K, K]` Gram matrix, or its `[K]` diagonal for rxc.

    Returns:
        `[...] float32` in `[0, 1]` up to rounding. If `C = 0` nothing can be lost and
        the result is 0 (rather than 0/0).

    Raises:
        ValueError: as `loss`.

    Example:
        >>> normalized_loss(jnp.array([True, False]), jnp.array([1.0, 3.0])).item()
        0.25
    """
    gram = _check_gram(gram)
    mask = _check_mask(unrecovered, "unrecovered", gram.shape[0])
    total = jnp.sum(gram)
    value = _quadratic_loss(mask, gram)
    positive = total > 0
    return jnp.where(positive, value / jnp.where(positive, total, 1.0), 0.0)


def _inverse_permutation(permutation: jax.Array) -> jax.Array:
    n = permutation.shape[0]
    return jnp.zeros((n,), jnp.int32).at[permutation].set(_identity(n))


def reconstruct(partition: Partition, recovered) -> jax.Array:
    """The estimate `C_hat`: recovered sub-products, zeros elsewhere (Sec. IV-B).

    Args:
        partition: the partition.
        recovered: `[..., K] bool`, True where sub-product `k` (partition order) is
            recovered.

    Returns:
        `[..., rows of A, columns of B] float32` in the ORIGINAL row and column order of
        `A` and `B`, whatever importance ordering the partition used; with every
        sub-product recovered it is `A @ B`.

    Raises:
        ValueError: for a non-bool mask or one whose last axis is not `K`.
    """
    mask = _check_mask(recovered, "recovered", partition.num_subproducts)
    batch = mask.shape[:-1]
    if partition.kind is PartitionKind.CXR:
        a_kept = partition.a_blocks * mask[..., :, None, None].astype(jnp.float32)
        return jnp.einsum(
            "...muh,mhq->...uq", a_kept, partition.b_blocks, precision=_HIGHEST
        )

    n, p = partition.grid
    u, q = partition.block_rows, partition.block_cols
    tiles = jnp.einsum(
        "nuh,phq->nupq", partition.a_blocks, partition.b_blocks, precision=_HIGHEST
    )
    keep = mask.reshape(*batch, n, 1, p, 1)
    blocked = jnp.where(keep, tiles, 0.0).reshape(*batch, n * u, p * q)
    rows = _inverse_permutation(partition.row_permutation)
    cols = _inverse_permutation(partition.column_permutation)
    return jnp.take(jnp.take(blocked, rows, axis=-2), cols, axis=-1)


def importance_levels(
    num_blocks: int, num_levels: int = 3, block_norms=None
) -> np.ndarray:
    """Importance levels of blocks: the top `1/S` high, the next `1/S` medium, ...

    Args:
        num_blocks: the number of blocks (`N`, `P` or `M`).
        num_levels: `S`, the number of levels, at most `num_blocks`. Level sizes
            differ by at most one, larger levels first (e.g. 4, 3, 3 for 10 blocks).
        block_norms: optional concrete `[num_blocks]` norms. Without them the blocks are
            taken to be in decreasing importance already (a norm-sorted partition);
            with them the blocks are ranked by decreasing norm, ties by index.

    Returns:
        `[num_blocks] int32` numpy array, the level of every block (0 is the most
        important).

    Example:
        >>> importance_levels(9).tolist()
        [0, 0, 0, 1, 1, 1, 2, 2, 2]
    """
    blocks = _check_count(num_blocks, "num_blocks")
    levels = _check_count(num_levels, "num_levels")
    if levels > blocks:
        raise ValueError(
            f"num_levels must be at most num_blocks={blocks} (got {num_levels})"
        )
    sizes = [len(part) for part in np.array_split(np.arange(blocks), levels)]
    by_rank = np.repeat(np.arange(levels), sizes).astype(np.int32)
    if block_norms is None:
        return by_rank
    if _is_traced(block_norms):
        raise ValueError(
            "block_norms must be concrete (levels decide static class sizes); call "
            "importance_levels outside jit"
        )
    norms = np.asarray(block_norms, dtype=np.float64)
    if norms.shape != (blocks,):
        raise ValueError(
            f"block_norms must have shape ({blocks},) (got shape {norms.shape})"
        )
    if not np.all(np.isfinite(norms)):
        raise ValueError(f"block_norms must be finite (got {norms.tolist()})")
    result = np.empty(blocks, np.int32)
    result[np.argsort(-norms, kind="stable")] = by_rank
    return result


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The class of every sub-product and the order a code sees them in.

    A code indexes sub-products most important class first: code position `j` holds
    partition sub-product `order[j]`, so class 0 is the first `k_1` positions, class 1
    the next `k_2`, and so on.

    Attributes:
        classes: `[K] int32`, the class of partition sub-product `k` (0 = most
            important).
        order: `[K] int32` permutation, partition indices sorted by class (stable).
        class_sizes: `(k_1, ..., k_L)` (static).
    """

    classes: jax.Array
    order: jax.Array
    class_sizes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """`L`, the number of classes."""
        return len(self.class_sizes)

    @property
    def num_subproducts(self) -> int:
        """`K`, the number of sub-products."""
        return sum(self.class_sizes)

    def _check_axis(self, values, axis: int) -> jax.Array:
        values = jnp.asarray(values)
        if values.ndim == 0 or values.shape[axis] != self.num_subproducts:
            raise ValueError(
                f"values must have {self.num_subproducts} entries along axis {axis} "
                f"(got shape {tuple(values.shape)})"
            )
        return values

    def to_code_order(self, values, axis: int = -1) -> jax.Array:
        """Reorders `values` from partition order to code order along `axis`."""
        values = self._check_axis(values, axis)
        return jnp.take(values, self.order, axis=axis)

    def to_partition_order(self, values, axis: int = -1) -> jax.Array:
        """Reorders `values` from code order to partition order along `axis`.

        E.g. a decoder's `[..., K] bool` recovered mask, before `reconstruct`.
        """
        values = self._check_axis(values, axis)
        return jnp.take(values, _inverse_permutation(self.order), axis=axis)

    def reorder_gram(self, gram) -> jax.Array:
        """The Gram matrix `[K, K]` (or its `[K]` diagonal) in code order."""
        gram = _check_gram(gram)
        if gram.shape[0] != self.num_subproducts:
            raise ValueError(
                f"gram must be for {self.num_subproducts} sub-products "
                f"(got shape {tuple(gram.shape)})"
            )
        gram = jnp.take(gram, self.order, axis=0)
        return gram if gram.ndim == 1 else jnp.take(gram, self.order, axis=1)


jax.tree_util.register_dataclass(
    ClassTable, data_fields=["classes", "order"], meta_fields=["class_sizes"]
)


def _check_class_sizes(class_sizes, k: int | None = None) -> tuple[int, ...]:
    try:
        sizes = tuple(class_sizes)
    except TypeError:
        raise ValueError(
            f"class_sizes must be a sequence of positive integers (got {class_sizes!r})"
        ) from None
    if not sizes or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0
        for s in sizes
    ):
        raise ValueError(
            "class_sizes must be a non-empty sequence of positive integers "
            f"(got {class_sizes!r})"
        )
    sizes = tuple(int(s) for s in sizes)
    if k is not None and sum(sizes) != k:
        raise ValueError(
            f"class_sizes must sum to the {k} sub-products (got {sizes}, sum "
            f"{sum(sizes)})"
        )
    return sizes


def _table_from_classes(classes: np.ndarray) -> ClassTable:
    counts = np.bincount(classes, minlength=int(classes.max()) + 1)
    order = np.argsort(classes, kind="stable").astype(np.int32)
    return ClassTable(
        jnp.asarray(classes, jnp.int32),
        jnp.asarray(order),
        tuple(int(c) for c in counts),
    )


def class_table(
    classes=None, *, class_sizes=None, num_subproducts: int | None = None
) -> ClassTable:
    """A class table from explicit class indices or from class sizes.

    Args:
        classes: concrete integer class indices, `[K]`, `[M]` (cxr) or `[N, P]` (rxc,
            flattened row-major to `k = n*P + p`). Classes are numbered from 0, most
            important first, and every class from 0 to `L - 1` must occur.
        class_sizes: instead of `classes`, `(k_1, ..., k_L)`: the first `k_1`
            sub-products in partition order are class 0, and so on. This is importance
            order for a norm-sorted cxr partition; use `classes_by_energy` to rank by
            energy instead.
        num_subproducts: optional `K` to check the table against.

    Returns:
        The `ClassTable`.

    Raises:
        ValueError: if not exactly one of `classes` and `class_sizes` is given, for
            non-integer, negative or gapped class indices, or a size mismatch with
            `num_subproducts`.

    Example:
        >>> class_table([[0, 1], [1, 2]]).class_sizes
        (1, 2, 1)
    """
    if (classes is None) == (class_sizes is None):
        raise ValueError("pass exactly one of classes and class_sizes")
    k = (
        None
        if num_subproducts is None
        else _check_count(num_subproducts, "num_subproducts")
    )
    if class_sizes is not None:
        sizes = _check_class_sizes(class_sizes, k)
        return _table_from_classes(np.repeat(np.arange(len(sizes)), sizes))

    if _is_traced(classes):
        raise ValueError(
            "classes must be concrete (they decide static class sizes); build the "
            "table outside jit"
        )
    table = np.asarray(classes)
    if table.dtype == bool or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(
            f"classes must be integer class indices (got dtype {table.dtype})"
        )
    if table.ndim not in (1, 2) or table.size == 0:
        raise ValueError(
            "classes must be a non-empty [K], [M] or [N, P] array "
            f"(got shape {table.shape})"
        )
    flat = table.reshape(-1).astype(np.int64)
    if k is not None and flat.size != k:
        raise ValueError(
            f"classes must have {k} entries, one per sub-product (got {flat.size})"
        )
    if flat.min() < 0:
        raise ValueError(
            f"classes must be non-negative, numbered from 0 (got {table.tolist()})"
        )
    missing = np.setdiff1d(np.arange(flat.max() + 1), flat)
    if missing.size:
        raise ValueError(
            f"classes must use every class from 0 to {flat.max()}, but class "
            f"{missing[0]} is empty (got {table.tolist()})"
        )
    return _table_from_classes(flat)


def pair_class_table(a_levels, b_levels, pair_classes) -> ClassTable:
    """An rxc class table by level pair: `C_np` gets `pair_classes[s(A_n), s(B_p)]`.

    Args:
        a_levels: `[N]` importance levels of the blocks of `A` (`importance_levels`).
        b_levels: `[P]` importance levels of the blocks of `B`.
        pair_classes: `[S_A, S_B]` integer class of each level pair, e.g.
            `SYNTHETIC_PAIR_CLASSES` (Sec. VI) or `DNN_PAIR_CLASSES` (Table VIII).

    Returns:
        The `ClassTable` of the `N*P` sub-products, `k = n*P + p`.

    Raises:
        ValueError: for levels outside `pair_classes`, or a table `class_table`
            rejects.

    Example:
        >>> pair_class_table([0, 1, 2], [0, 1, 2], DNN_PAIR_CLASSES).class_sizes
        (1, 2, 6)
    """
    pairs = np.asarray(pair_classes)
    if pairs.ndim != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(
            "pair_classes must be a 2-D integer array [levels of A, levels of B] "
            f"(got {pair_classes!r})"
        )
    levels = []
    for name, value, limit in (
        ("a_levels", a_levels, pairs.shape[0]),
        ("b_levels", b_levels, pairs.shape[1]),
    ):
        array = np.asarray(value)
        if (
            array.ndim != 1
            or array.size == 0
            or not np.issubdtype(array.dtype, np.integer)
            or array.min() < 0
            or array.max() >= limit
        ):
            raise ValueError(
                f"{name} must be a non-empty 1-D array of levels in 0..{limit - 1}, "
                f"the size of pair_classes (got {np.asarray(value).tolist()})"
            )
        levels.append(array)
    return class_table(pairs[levels[0][:, None], levels[1][None, :]])


def classes_by_energy(energies, class_sizes) -> ClassTable:
    """Classes of given sizes by decreasing energy: the `k_1` largest are class 0, ...

    This is the permutation a code needs: `order[:k_1]` are the sub-products of class 0.

    Args:
        energies: `[K]` real sub-product energies, expected (`expected_energies`) or
            actual (`subproduct_energies`, `block_norm_products`); may be traced.
            Ties go to the lower index.
        class_sizes: `(k_1, ..., k_L)`, static, summing to `K`.

    Returns:
        The `ClassTable`.

    Raises:
        ValueError: for a malformed or non-finite (when concrete) `energies` or class
            sizes that do not sum to `K`.

    Example:
        >>> table = classes_by_energy(jnp.array([1.0, 5.0, 3.0]), (1, 2))
        >>> table.order.tolist(), table.classes.tolist()
        ([1, 2, 0], [1, 0, 1])
    """
    if not hasattr(energies, "dtype"):
        energies = np.asarray(energies)
    if energies.ndim != 1 or not (
        jnp.issubdtype(energies.dtype, jnp.floating)
        or jnp.issubdtype(energies.dtype, jnp.integer)
    ):
        raise ValueError(
            f"energies must be a real [K] array (got shape {tuple(energies.shape)}, "
            f"dtype {energies.dtype})"
        )
    energies = jnp.asarray(energies, jnp.float32)
    _check_finite(energies, "energies")
    sizes = _check_class_sizes(class_sizes, energies.shape[0])
    order = _decreasing_order(energies)
    labels = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes), jnp.int32)
    classes = jnp.zeros_like(labels).at[order].set(labels)
    return ClassTable(classes, order, sizes)


class PaperSetting(enum.Enum):
    """The paper's class tables: Sec. VI (synthetic data) and Table VIII (DNN)."""

    SYNTHETIC = "synthetic"
    DNN = "dnn"

    @classmethod
    def parse(cls, setting: str | PaperSetting) -> PaperSetting:
        """Returns the setting named by `setting` (a `PaperSetting` or its value)."""
        if isinstance(setting, PaperSetting):
            return setting
        try:
            return cls(str(setting).lower())
        except ValueError:
            allowed = ", ".join(repr(s.value) for s in cls)
            raise ValueError(
                f"setting must be one of {allowed} (got {setting!r})"
            ) from None


def paper_class_table(
    kind: str | PartitionKind,
    setting: str | PaperSetting = PaperSetting.SYNTHETIC,
    *,
    energies=None,
) -> ClassTable:
    """The class tables of the paper, for `K = 9` sub-products in three classes.

    - Sec. VI, rxc (`N = P = 3`, block `i` at level `i`): (h,h), (h,m), (m,h) are class
      0; (m,m), (h,l), (l,h) class 1; the rest class 2. Sizes (3, 3, 3).
    - Sec. VI, cxr (`M = 9`): blocks 1-3, 4-6, 7-9 are classes 0, 1, 2.
    - Table VIII, rxc: (h,h) is class 0; (h,m), (m,h) class 1; the rest class 2.
      Sizes (1, 2, 6).
    - Table VIII, cxr: the block with the largest block-norm product is class 0, the
      next two class 1, the remaining six class 2 (`classes_by_energy` on `energies`).

    Args:
        kind: `"rxc"` or `"cxr"`.
        setting: `"synthetic"` (Sec. VI) or `"dnn"` (Table VIII).
        energies: for the cxr table of Table VIII only, the `[9]` values to rank, e.g.
            `block_norm_products(partition)`. Without them the blocks are taken to be in
            decreasing importance already (block 0 class 0, blocks 1-2 class 1).

    Returns:
        The `ClassTable`.

    Raises:
        ValueError: for an unknown kind or setting, or `energies` where the table does
            not use them.

    Example:
        >>> paper_class_table("rxc").classes.tolist()
        [0, 0, 1, 0, 1, 2, 1, 2, 2]
    """
    kind = PartitionKind.parse(kind)
    setting = PaperSetting.parse(setting)
    if energies is not None and not (
        kind is PartitionKind.CXR and setting is PaperSetting.DNN
    ):
        raise ValueError(
            "energies is only used by the cxr table of Table VIII (kind='cxr', "
            f"setting='dnn'); got kind={kind.value!r}, setting={setting.value!r}"
        )
    if kind is PartitionKind.RXC:
        pairs = (
            SYNTHETIC_PAIR_CLASSES
            if setting is PaperSetting.SYNTHETIC
            else DNN_PAIR_CLASSES
        )
        levels = importance_levels(3, 3)
        return pair_class_table(levels, levels, pairs)
    if setting is PaperSetting.SYNTHETIC:
        return class_table(importance_levels(9, 3))
    if energies is None:
        return class_table(class_sizes=DNN_CLASS_SIZES)
    return classes_by_energy(energies, DNN_CLASS_SIZES)


class MatrixPair(NamedTuple):
    """A pair of factors `A`, `B` of a product `C = A B`."""

    a: jax.Array
    b: jax.Array


def synthetic_variances(kind: str | PartitionKind) -> tuple[np.ndarray, np.ndarray]:
    """The per-block entry variances of Sec. VI.

    Args:
        kind: `"rxc"` (`N = P = 3`; block `i` at level `i`) or `"cxr"` (`M = 9`; blocks
            1-3 high, 4-6 medium, 7-9 low).

    Returns:
        `(a_variances, b_variances)`, numpy float64 arrays from `LEVEL_VARIANCES`.

    Example:
        >>> synthetic_variances("rxc")[0].tolist()
        [10.0, 1.0, 0.1]
    """
    kind = PartitionKind.parse(kind)
    levels = importance_levels(_SYNTHETIC_SIZES[kind.value]["blocks"], 3)
    variances = np.asarray(LEVEL_VARIANCES, np.float64)[levels]
    return variances, variances.copy()


def _synthetic_setup(
    kind, block_rows, block_inner, block_cols, a_variances, b_variances
):
    kind = PartitionKind.parse(kind)
    defaults = _SYNTHETIC_SIZES[kind.value]
    sizes = []
    for name, value in (
        ("block_rows", block_rows),
        ("block_inner", block_inner),
        ("block_cols", block_cols),
    ):
        sizes.append(_check_count(defaults[name] if value is None else value, name))
    default_a, default_b = synthetic_variances(kind)
    variances = []
    for name, value, default in (
        ("a_variances", a_variances, default_a),
        ("b_variances", b_variances, default_b),
    ):
        value = default if value is None else value
        if not hasattr(value, "dtype"):
            value = np.asarray(value, np.float32)
        if value.ndim != 1 or value.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty 1-D array of per-block variances "
                f"(got shape {tuple(value.shape)})"
            )
        if not _is_traced(value):
            concrete = np.asarray(value, np.float64)
            if not np.all(np.isfinite(concrete)) or np.any(concrete < 0):
                raise ValueError(
                    f"{name} must be finite and non-negative (got {concrete.tolist()})"
                )
        variances.append(jnp.asarray(value, jnp.float32))
    if kind is PartitionKind.CXR and variances[0].shape != variances[1].shape:
        raise ValueError(
            "a_variances and b_variances must have one entry per block M for cxr "
            f"(got {variances[0].shape[0]} and {variances[1].shape[0]})"
        )
    return kind, sizes, variances


def synthetic_matrices(
    key: jax.Array,
    kind: str | PartitionKind,
    *,
    block_rows: int | None = None,
    block_inner: int | None = None,
    block_cols: int | None = None,
    a_variances=None,
    b_variances=None,
) -> MatrixPair:
    """Gaussian `A`, `B` with i.i.d. blocks of given variances (Sec. VI, Assumption 1).

    Every entry is drawn independently, `N(0, sigma^2)` with the variance of its block;
    in particular no block is reused (unlike the normalisation of the paper's own cxr
    code).

    Args:
        key: a typed PRNG key (`jax.random.key`).
        kind: `"rxc"` or `"cxr"`.
        block_rows: `U`; default 300 (rxc) or 900 (cxr).
        block_inner: `H`; default 900 (rxc) or 100 (cxr).
        block_cols: `Q`; default 300 (rxc) or 900 (cxr).
        a_variances: `[N]` (rxc) or `[M]` (cxr) entry variances of the blocks of `A`;
            default `synthetic_variances(kind)`, i.e. (10, 1, 0.1) per level. May be
            traced.
        b_variances: `[P]` (rxc) or `[M]` (cxr) entry variances of the blocks of `B`.

    Returns:
        `MatrixPair(a, b)`, float32: rxc `a [N U, H]`, `b [H, P Q]`; cxr `a [U, M H]`,
        `b [M H, Q]`. Partition them with `partition_rxc(a, b, N, P)` or
        `partition_cxr(a, b, M)`.

    Raises:
        ValueError: for an untyped key, a non-positive size, or bad variances.

    Example:
        >>> pair = synthetic_matrices(jax.random.key(0), "cxr", block_rows=4,
        ...                           block_inner=2, block_cols=3)
        >>> pair.a.shape, pair.b.shape
        ((4, 18), (18, 3))
    """
    if not (
        hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise ValueError(
            "key must be a typed PRNG key from jax.random.key "
            f"(got {getattr(key, 'dtype', type(key))})"
        )
    kind, (u, h, q), (var_a, var_b) = _synthetic_setup(
        kind, block_rows, block_inner, block_cols, a_variances, b_variances
    )
    key_a, key_b = jax.random.split(key)
    scale_a = jnp.sqrt(var_a)
    scale_b = jnp.sqrt(var_b)
    if kind is PartitionKind.RXC:
        n, p = var_a.shape[0], var_b.shape[0]
        a = jax.random.normal(key_a, (n, u, h)) * scale_a[:, None, None]
        b = jax.random.normal(key_b, (h, p, q)) * scale_b[None, :, None]
        return MatrixPair(a.reshape(n * u, h), b.reshape(h, p * q))
    m = var_a.shape[0]
    a = jax.random.normal(key_a, (u, m, h)) * scale_a[None, :, None]
    b = jax.random.normal(key_b, (m, h, q)) * scale_b[:, None, None]
    return MatrixPair(a.reshape(u, m * h), b.reshape(m * h, q))


def expected_energies(
    kind: str | PartitionKind,
    *,
    block_rows: int | None = None,
    block_inner: int | None = None,
    block_cols: int | None = None,
    a_variances=None,
    b_variances=None,
) -> jax.Array:
    """Expected energies `E||C_k||_F^2 = U H Q sigma_A^2 sigma_B^2` (eq. 12).

    Under Assumption 1 the cross terms of a cxr Gram matrix have mean zero, so these are
    the diagonal of the expected Gram matrix for either kind.

    Args:
        kind: `"rxc"` or `"cxr"`.
        block_rows, block_inner, block_cols, a_variances, b_variances: as for
            `synthetic_matrices`, with the same defaults.

    Returns:
        `[K] float32` in partition order: `k = n*P + p` (rxc) or `k = m` (cxr).

    Example:
        >>> sizes = dict(block_rows=1, block_inner=1, block_cols=1)
        >>> expected_energies("cxr", **sizes).tolist()[:4]
        [100.0, 100.0, 100.0, 1.0]
    """
    kind, (u, h, q), (var_a, var_b) = _synthetic_setup(
        kind, block_rows, block_inner, block_cols, a_variances, b_variances
    )
    scale = float(u) * float(h) * float(q)
    if kind is PartitionKind.RXC:
        return (scale * jnp.outer(var_a, var_b)).reshape(-1)
    return scale * var_a * var_b
