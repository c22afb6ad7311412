"""Finite fields and batched row echelon forms, exact with 32-bit types.

The decoder of the paper (the decoding function of eq. (7)) recovers sub-product ``k``
from the packets received so far iff the unit vector ``e_k`` lies in the row space of
their coefficient matrix. This module provides the fields those coefficients live in
and batched Gauss-Jordan elimination over them, without enabling 64-bit types.

Supported fields and how their arithmetic stays exact:

* ``GF(2)``: elements ``0, 1``; elimination packs each row into ``uint32`` words (32
  columns per word) and reduces with XOR.
* ``GF(2^m)``, ``2 <= m <= 16``: elements are ``uint32`` holding the coefficient bits
  of a polynomial in ``x`` modulo the field's primitive polynomial (the Conway
  polynomial, the same as ``galois.GF(2**m).irreducible_poly``). Products use exp/log
  tables built once in numpy; for ``m <= 8`` a full ``q x q`` product table is used.
* ``GF(p)``, odd prime ``p <= 2^31 - 1``: elements are ``uint32`` in ``[0, p)``. For
  ``p < 2^16`` the ``uint32`` product of two elements is below ``2^32`` and ``%`` is
  exact. For ``2^16 <= p < 2^31`` the 64-bit product is formed in two ``uint32``
  words from 16-bit limbs and reduced by Montgomery reduction with ``R = 2^32``;
  every intermediate sum stays below ``2^32`` because ``p < 2^31``.
* ``REAL``: ``float32`` with the relative tolerance :data:`REAL_TOLERANCE` and
  threshold pivoting (:data:`REAL_PIVOT_THRESHOLD`).

Example:
    >>> import jax.numpy as jnp
    >>> field = get_field(256)
    >>> int(field.mul(jnp.uint32(3), jnp.uint32(7)))
    9
    >>> rank(jnp.array([[1, 2], [2, 4]]), 65521).tolist()
    1
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "MAX_BINARY_DEGREE",
    "MAX_PRIME",
    "REAL_PIVOT_THRESHOLD",
    "REAL_TOLERANCE",
    "Echelon",
    "Field",
    "FieldKind",
    "get_field",
    "rank",
    "recoverable",
    "row_echelon",
]

logger = logging.getLogger(__name__)

MAX_PRIME = 2**31 - 1
"""Largest supported prime order: products stay exact in ``uint32`` words."""

MAX_BINARY_DEGREE = 16
"""Largest ``m`` for ``GF(2^m)``: the exp/log tables have ``O(2^m)`` entries."""

REAL_TOLERANCE = 1e-5
"""Tolerance of real (``float32``) elimination, relative to the row scale.

:func:`row_echelon` scales every row to unit maximum magnitude and treats a column
entry of magnitude at most ``REAL_TOLERANCE`` as zero when it looks for a pivot. The
progressive decoder (:mod:`uepjax.decode`) counts a new row as independent when its
largest entry after reduction exceeds ``REAL_TOLERANCE`` times its largest entry,
and ``e_k`` as recovered when its pivot row is at most ``REAL_TOLERANCE`` outside
the pivot columns. About 80 times the ``float32`` machine epsilon.

Note:
    :func:`row_echelon` and :func:`recoverable` over the reals can under-count the
    rank of dense, numerically low-rank ``float32`` matrices (products of thin
    Gaussian factors): the threshold pivoting loses pivots that float64 elimination
    finds. :func:`rank` counts singular values instead and is not affected; use a
    finite field for exact answers. The progressive decoder of :mod:`uepjax.decode`,
    which the Monte Carlo engine uses, grows a reduced row echelon basis of its own;
    its tests compare it with float64 rank checks on every prefix of Gaussian rows
    with NOW and EW supports.
"""

REAL_PIVOT_THRESHOLD = 1e-3
"""Threshold pivoting of real elimination.

A pivot is chosen among the candidates whose magnitude is at least this fraction of
the largest candidate, preferring the one that keeps the support of the rows small
(the row whose last nonzero comes first in :func:`row_echelon`, the last column in
the decoder). Exact zeros then survive elimination, so recoveries that follow from
the support pattern of the coefficients (NOW and EW windows) are decided on exact
zeros rather than on rounding residues.

Note:
    With these choices, random Gaussian coefficient rows with NOW or EW supports
    and up to about 100 unknowns agree with the large-field rule in all but about
    one trial in a thousand (rare near-dependent or ill-conditioned prefixes, a
    limit of ``float32``). The threshold lets basis entries grow (to about 2,600
    after six pivots in one EW trial), and the decoder's independence test is
    relative to the new row only, so an exact copy of an earlier row can then be
    counted as independent. Use ``GF(2^31 - 1)`` for exact large-field behaviour.
"""

# Conway polynomials of GF(2^m), bit i is the coefficient of x^i. They are primitive,
# so x (the integer 2) generates the multiplicative group, and they are the defaults
# of galois, so products here equal galois products elementwise.
_CONWAY_POLYNOMIALS = {
    2: 0x7,
    3: 0xB,
    4: 0x13,
    5: 0x25,
    6: 0x5B,
    7: 0x83,
    8: 0x11D,
    9: 0x211,
    10: 0x46F,
    11: 0x805,
    12: 0x10EB,
    13: 0x201B,
    14: 0x40A9,
    15: 0x8035,
    16: 0x1002D,
}

# GF(2^m) with m up to this uses a full q x q product table (at most 2^16 entries).
_FULL_TABLE_MAX_DEGREE = 8

_MILLER_RABIN_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


class FieldKind(enum.Enum):
    """The family a :class:`Field` belongs to."""

    BINARY = "binary"
    EXTENSION = "extension"
    PRIME = "prime"
    REAL = "real"


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin test, exact for every ``n < 3.3e24``."""
    if n < 2:
        return False
    for base in _MILLER_RABIN_BASES:
        if n % base == 0:
            return n == base
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for base in _MILLER_RABIN_BASES:
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_field(order: int | None, kind: FieldKind) -> None:
    """Raises ValueError unless ``(order, kind)`` describes a supported field."""
    if not isinstance(kind, FieldKind):
        raise ValueError(f"kind must be a FieldKind (got {kind!r})")
    if kind is FieldKind.REAL:
        if order is not None:
            raise ValueError(f"order must be None for the REAL field (got {order!r})")
        return
    if isinstance(order, bool) or not isinstance(order, int):
        raise ValueError(f"order must be an int for {kind.name} fields (got {order!r})")
    if kind is FieldKind.BINARY and order != 2:
        raise ValueError(f"order must be 2 for the BINARY field (got {order})")
    if kind is FieldKind.EXTENSION and not (
        _is_power_of_two(order) and 4 <= order <= 2**MAX_BINARY_DEGREE
    ):
        raise ValueError(
            "order must be 2^m with 2 <= m <= "
            f"{MAX_BINARY_DEGREE} for EXTENSION fields (got {order})"
        )
    if kind is FieldKind.PRIME and not (
        order % 2 == 1 and order <= MAX_PRIME and _is_prime(order)
    ):
        raise ValueError(
            f"order must be an odd prime <= {MAX_PRIME} for PRIME fields (got {order})"
        )


@dataclasses.dataclass(frozen=True)
class Field:
    """A coefficient field: hashable, so it can be a static ``jax.jit`` argument.

    Build fields with :func:`get_field`. Elements are ``uint32`` arrays for the finite
    fields (values in ``[0, order)``) and ``float32`` arrays for ``REAL``. Every
    method is elementwise, broadcasts like numpy, and works under ``jit`` and
    ``vmap``. Inputs must already be field elements: values outside ``[0, order)``
    are not detected and give meaningless results.

    Attributes:
        order: number of elements, or ``None`` for ``REAL``.
        kind: the field family.

    Example:
        >>> import jax.numpy as jnp
        >>> field = get_field(7)
        >>> field.mul(jnp.uint32(3), field.inv(jnp.uint32(3))).tolist()
        1
    """

    order: int | None
    kind: FieldKind

    def __post_init__(self) -> None:
        _check_field(self.order, self.kind)

    def __repr__(self) -> str:
        if self.kind is FieldKind.REAL:
            return "Field(REAL)"
        if self.kind is FieldKind.EXTENSION:
            return f"Field(GF(2^{self.degree}))"
        return f"Field(GF({self.order}))"

    @property
    def dtype(self) -> np.dtype:
        """Element dtype: ``uint32`` for finite fields, ``float32`` for ``REAL``."""
        if self.kind is FieldKind.REAL:
            return np.dtype(np.float32)
        return np.dtype(np.uint32)

    @property
    def degree(self) -> int | None:
        """``m`` for ``GF(2^m)``, 1 for prime fields, ``None`` for ``REAL``."""
        if self.kind is FieldKind.REAL:
            return None
        if self.kind is FieldKind.PRIME:
            return 1
        return self.order.bit_length() - 1

    @property
    def characteristic(self) -> int:
        """2 for binary fields, ``p`` for ``GF(p)``, 0 for ``REAL``."""
        if self.kind is FieldKind.REAL:
            return 0
        if self.kind is FieldKind.PRIME:
            return self.order
        return 2

    def _asarray(self, x: Any) -> jax.Array:
        return jnp.asarray(x, dtype=self.dtype)

    def add(self, a: Any, b: Any) -> jax.Array:
        """Sum ``a + b``."""
        a, b = self._asarray(a), self._asarray(b)
        if self.kind is FieldKind.REAL:
            return a + b
        if self.kind is FieldKind.PRIME:
            return _mod_add(a, b, self.order)
        return a ^ b

    def sub(self, a: Any, b: Any) -> jax.Array:
        """Difference ``a - b``."""
        a, b = self._asarray(a), self._asarray(b)
        if self.kind is FieldKind.REAL:
            return a - b
        if self.kind is FieldKind.PRIME:
            return _mod_sub(a, b, self.order)
        return a ^ b

    def neg(self, a: Any) -> jax.Array:
        """Additive inverse ``-a``."""
        a = self._asarray(a)
        if self.kind is FieldKind.REAL:
            return -a
        if self.kind is FieldKind.PRIME:
            return jnp.where(a == 0, a, np.uint32(self.order) - a)
        return a

    def mul(self, a: Any, b: Any) -> jax.Array:
        """Product ``a * b``, exact (see the module docstring for the bounds)."""
        a, b = self._asarray(a), self._asarray(b)
        if _reduction(self) == "montgomery":
            return _montgomery(
                _montgomery(a, b, self.order), _mont_r2(self.order), self.order
            )
        return _raw_mul(self, a, b)

    def inv(self, a: Any) -> jax.Array:
        """Multiplicative inverse ``1 / a``; by convention ``inv(0) = 0``.

        ``GF(2^m)`` uses the log table, ``GF(p)`` a table of inverses for
        ``p < 2^16`` and otherwise Fermat's little theorem ``a^(p-2)`` by
        square-and-multiply over the static exponent.
        """
        a = self._asarray(a)
        if self.kind is FieldKind.REAL:
            safe = jnp.where(a == 0, jnp.float32(1), a)
            return jnp.where(a == 0, jnp.float32(0), 1 / safe)
        if self.kind is FieldKind.BINARY:
            return a
        if self.kind is FieldKind.EXTENSION:
            return _table_inv(self, a)
        if _reduction(self) == "remainder":
            return _gather(_prime_inverses(self.order), a)
        return self.power(a, self.order - 2)

    def power(self, a: Any, exponent: int) -> jax.Array:
        """``a`` raised to a static non-negative integer ``exponent`` (``0^0 = 1``).

        Raises:
            ValueError: if ``exponent`` is not a non-negative int.
        """
        if isinstance(exponent, bool) or not isinstance(exponent, numbers.Integral):
            raise ValueError(f"exponent must be a non-negative int (got {exponent!r})")
        if exponent < 0:
            raise ValueError(f"exponent must be a non-negative int (got {exponent})")
        a = self._asarray(a)
        exponent = int(exponent)
        if self.kind is FieldKind.REAL:
            return a**exponent
        if exponent == 0:
            return jnp.ones_like(a)
        if self.kind is FieldKind.BINARY:
            return a
        if self.kind is FieldKind.EXTENSION:
            # a^e = exp[(log a) (e mod (q - 1))]; the product stays below 2^32.
            tables, q = _tables(self.degree), self.order
            log = _table_log(self, a).astype(jnp.uint32)
            index = (log * np.uint32(exponent % (q - 1))) % np.uint32(q - 1)
            return jnp.where(a == 0, a, _gather(tables.exp, index))
        p = self.order
        if _reduction(self) == "montgomery":
            base = _montgomery(a, _mont_r2(p), p)
            result = _power_loop(functools.partial(_montgomery, p=p), base, exponent)
            return _montgomery(result, jnp.ones_like(result), p)
        return _power_loop(functools.partial(_raw_mul, self), a, exponent)

    def is_zero(self, a: Any) -> jax.Array:
        """``a == 0`` as bool (exact comparison, also for ``REAL``)."""
        return self._asarray(a) == 0

    def from_int(self, x: Any) -> jax.Array:
        """Maps integers (``int32`` range) to field elements.

        ``GF(p)``: ``x mod p`` (negative ``x`` allowed). ``GF(2)``: ``x mod 2``.
        ``GF(2^m)``: the element whose integer representation (the galois
        convention, coefficient bits of a polynomial) is ``x mod 2^m``, for
        non-negative ``x``. ``REAL``: ``float32(x)``.
        """
        if self.kind is FieldKind.REAL:
            return jnp.asarray(x, dtype=jnp.float32)
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"x must have an integer dtype (got {x.dtype})")
        if self.kind is FieldKind.PRIME:
            return jnp.remainder(x, x.dtype.type(self.order)).astype(jnp.uint32)
        return x.astype(jnp.uint32) & np.uint32(self.order - 1)

    def random(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Elements drawn uniformly from the field; ``REAL``: standard normal.

        Note:
            For ``GF(p)`` with ``p`` odd, an element is uniform up to a bias below
            ``2^-31`` (see :func:`_random_residues`).
        """
        shape = tuple(shape)
        # Flat draws: threefry over a multi-dimensional shape compiles several times
        # slower on CPU than the same number of values drawn flat and reshaped.
        size = (math.prod(shape),)
        if self.kind is FieldKind.REAL:
            return jax.random.normal(key, size, dtype=jnp.float32).reshape(shape)
        if self.kind is FieldKind.PRIME:
            return _random_residues(key, size[0], self.order).reshape(shape)
        return _random_packed(key, size[0], self.degree).reshape(shape)

    def random_nonzero(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Elements drawn uniformly from the nonzero elements; ``REAL``: normal."""
        shape = tuple(shape)
        size = (math.prod(shape),)
        if self.kind is FieldKind.REAL:
            return jax.random.normal(key, size, dtype=jnp.float32).reshape(shape)
        if self.kind is FieldKind.BINARY:
            return jnp.ones(shape, dtype=jnp.uint32)
        draw = jax.random.randint(key, size, 1, self.order, dtype=jnp.int32)
        return draw.astype(jnp.uint32).reshape(shape)


def _random_words(key: jax.Array, size: int) -> jax.Array:
    """``[size]`` random ``uint32`` words, one Threefry hash for every two of them.

    The words are the Threefry-2x32 hash of the counters ``0 .. size - 1`` under
    the key, as JAX's non-partitionable ``random_bits`` made them. The default
    (partitionable) ``jax.random.bits`` spends a hash on every word. Keys of
    another PRNG implementation fall back to ``jax.random.bits``.
    """
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed and str(jax.random.key_impl(key)) == "threefry2x32":
        counters = jnp.arange(size, dtype=jnp.uint32)
        return _threefry_2x32(jax.random.key_data(key), counters)
    return jax.random.bits(key, (size,), dtype=jnp.uint32)


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def _threefry_2x32(key: jax.Array, counters: jax.Array) -> jax.Array:
    """The Threefry-2x32 hash (20 rounds) of ``counters [n] uint32`` under the
    ``[2] uint32`` key, word for word as ``jax.extend.random.threefry_2x32``.

    The first and second halves of the counters (padded with a zero to an even
    length) form the pairs, and the hashed halves are joined in the same order.
    Spelt out in ``jnp`` operations, the rounds fuse into one pass; on a 2-core CPU
    JAX's own compiled to nine, and took 2.3 times as long for 4.4 million words
    (1.4 to 2.5 times for 270 words in each of 16,384 trials).
    """
    size = counters.shape[0]
    if size % 2:
        counters = jnp.concatenate([counters, jnp.zeros((1,), jnp.uint32)])
    half = counters.shape[0] // 2
    keys = (key[0], key[1], key[0] ^ key[1] ^ np.uint32(_THREEFRY_PARITY))
    x0, x1 = counters[:half] + keys[0], counters[half:] + keys[1]
    for block in range(5):
        for bits in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return jnp.concatenate([x0, x1])[:size]


def _random_residues(key: jax.Array, size: int, p: int) -> jax.Array:
    """``[size]`` uniform elements of ``GF(p)``, ``p`` odd, up to a bias below 2^-31.

    A word ``w`` gives ``w mod p`` when ``2^32 mod p <= 2`` (``p = 2^31 - 1``): at
    most two residues are more likely than the others, by ``2^-32``. Otherwise two
    words ``(h, l)`` give ``(h 2^32 + l) 2^-32 mod p`` by a Montgomery reduction of
    ``(h mod p, l)``: the image of ``h 2^32 + l mod p`` under a bijection, so the
    bias is below ``p 2^-64``.
    """
    if 2**32 % p <= 2:
        return _random_words(key, size) % np.uint32(p)
    words = _random_words(key, 2 * size)
    return _montgomery_reduce(words[:size] % np.uint32(p), words[size:], p)


def _random_packed(key: jax.Array, size: int, degree: int) -> jax.Array:
    """``[size]`` uniform ``degree``-bit elements, several cut from each random word.

    Each ``uint32`` word is split into lanes of 1, 2, 4, 8 or 16 bits (the smallest
    that holds ``degree`` bits), so ``GF(2)`` draws 32 elements per word and
    ``GF(2^8)`` four: random bits, not arithmetic, dominate sampling on a CPU. The
    words still come from ``jax.random.bits``: with so few of them, drawing them as
    :func:`_random_words` does made no measurable difference to the paper's point
    over ``GF(2^8)`` (68 words a trial, against 540 for ``randint`` over ``GF(p)``).
    """
    lane = next(width for width in (1, 2, 4, 8, 16) if width >= degree)
    lanes = 32 // lane
    words = jax.random.bits(key, (-(-size // lanes),), dtype=jnp.uint32)
    shifts = np.arange(0, 32, lane, dtype=np.uint32)
    elements = (words[:, None] >> shifts) & np.uint32((1 << degree) - 1)
    return elements.reshape(-1)[:size]


@functools.cache
def _field_of_order(order: int) -> Field:
    if order == 2:
        return Field(2, FieldKind.BINARY)
    if _is_power_of_two(order):
        return Field(order, FieldKind.EXTENSION)
    return Field(order, FieldKind.PRIME)


def get_field(q: int | str | Field) -> Field:
    """Validates a field specification and returns the :class:`Field`.

    Args:
        q: a field order (a prime ``p <= 2^31 - 1`` or a power of two ``2^m`` with
            ``m <= 16``), the string ``"real"``, or a :class:`Field`.

    Returns:
        The field.

    Raises:
        ValueError: if ``q`` is not one of the above; the message names the
            requirement and the value received.

    Example:
        >>> get_field(256)
        Field(GF(2^8))
        >>> get_field("real").kind
        <FieldKind.REAL: 'real'>
    """
    if isinstance(q, Field):
        return q
    if isinstance(q, str):
        if q.strip().lower() == "real":
            return Field(None, FieldKind.REAL)
        raise ValueError(f"q must be an int field order, 'real' or a Field (got {q!r})")
    if isinstance(q, bool) or not isinstance(q, numbers.Integral):
        raise ValueError(f"q must be an int field order, 'real' or a Field (got {q!r})")
    q = int(q)
    if q < 2:
        raise ValueError(f"q must be a prime or a power of two, at least 2 (got {q})")
    if _is_power_of_two(q):
        degree = q.bit_length() - 1
        if degree > MAX_BINARY_DEGREE:
            raise ValueError(
                f"q must be at most 2^{MAX_BINARY_DEGREE} = {2**MAX_BINARY_DEGREE} "
                f"when it is a power of two (got {q} = 2^{degree})"
            )
        return _field_of_order(q)
    if _is_prime(q):
        if q > MAX_PRIME:
            raise ValueError(
                f"q must be at most 2^31 - 1 = {MAX_PRIME} when it is prime (got {q}); "
                "larger primes do not fit exact 32-bit arithmetic"
            )
        return _field_of_order(q)
    raise ValueError(
        f"q must be a prime or a power of two (got {q}); for example 2, 256, 65521 "
        "or 'real'"
    )


# ---------------------------------------------------------------------------------
# Modular arithmetic for GF(p).


def _reduction(field: Field) -> str | None:
    """How products of ``GF(p)`` are reduced: ``remainder`` or ``montgomery``."""
    if field.kind is not FieldKind.PRIME:
        return None
    return "remainder" if field.order < 2**16 else "montgomery"


def _mod_add(a: jax.Array, b: jax.Array, p: int) -> jax.Array:
    # a, b < p < 2^31, so a + b < 2^32 does not wrap; below p, total - p wraps
    # above total and the unsigned minimum keeps total.
    total = a + b
    return jnp.minimum(total, total - np.uint32(p))


def _mod_sub(a: jax.Array, b: jax.Array, p: int) -> jax.Array:
    # For a < b the difference wraps above 2^31 and adding p wraps it into [0, p).
    diff = a - b
    return jnp.minimum(diff, diff + np.uint32(p))


def _mul_high(a: jax.Array, b: jax.Array) -> jax.Array:
    """High 32 bits of the 64-bit product of two ``uint32`` values (16-bit limbs)."""
    mask = np.uint32(0xFFFF)
    a_lo, a_hi = a & mask, a >> 16
    b_lo, b_hi = b & mask, b >> 16
    low = a_lo * b_lo
    # Each partial sum is at most (2^16 - 1)^2 + 2^16 - 1 < 2^32.
    mid = a_hi * b_lo + (low >> 16)
    mid2 = a_lo * b_hi + (mid & mask)
    return a_hi * b_hi + (mid >> 16) + (mid2 >> 16)


@functools.cache
def _mont_constants(p: int) -> tuple[int, int]:
    """``(-p^-1 mod 2^32, R^2 mod p)`` with ``R = 2^32``."""
    return (-pow(p, -1, 2**32)) % 2**32, pow(2, 64, p)


def _mont_r2(p: int) -> jax.Array:
    return jnp.uint32(_mont_constants(p)[1])


def _montgomery_reduce(high: jax.Array, low: jax.Array, p: int) -> jax.Array:
    """``T * 2^-32 mod p`` for ``T = high * 2^32 + low < p * 2^32``, in ``[0, p)``.

    With ``m = T * (-p^-1) mod 2^32``, ``T + m p`` is a multiple of ``2^32`` and
    ``(T + m p) / 2^32 < 2 p < 2^32``, so one conditional subtraction finishes. The
    carry out of the low words is 1 exactly when ``low`` is nonzero.
    """
    p_neg_inv = np.uint32(_mont_constants(p)[0])
    m = low * p_neg_inv
    total = high + _mul_high(m, jnp.uint32(p)) + jnp.minimum(low, np.uint32(1))
    return jnp.minimum(total, total - np.uint32(p))


def _montgomery(a: jax.Array, b: jax.Array, p: int) -> jax.Array:
    """Montgomery product ``a * b * 2^-32 mod p`` for ``a, b < p < 2^31``."""
    return _montgomery_reduce(_mul_high(a, b), a * b, p)


def _add_wide(
    x: tuple[jax.Array, jax.Array], y: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Sum of two 64-bit values held as ``(high, low)`` ``uint32`` words."""
    low = x[1] + y[1]
    carry = (low < x[1]).astype(jnp.uint32)
    return x[0] + y[0] + carry, low


def _montgomery_combination(
    a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array, p: int
) -> jax.Array:
    """``(a b + c d) 2^-32 mod p`` with one reduction (``2 p^2 < p 2^32``)."""
    high, low = _add_wide((_mul_high(a, b), a * b), (_mul_high(c, d), c * d))
    return _montgomery_reduce(high, low, p)


def _montgomery_vector_matrix(
    v: jax.Array, m: jax.Array, p: int, axis: int
) -> jax.Array:
    """``sum_k v_k m_k 2^-32 mod p`` over ``K`` on ``axis`` of both arrays.

    With the batch first (``axis = 1``): ``v [batch, K]``, ``m [batch, K, M]`` ->
    ``[batch, M]``; with the batch last (``axis = 0``): ``v [K, batch]``,
    ``m [K, M, batch]`` -> ``[M, batch]``.

    Up to ``floor(2^32 / p)`` 64-bit products are summed before each reduction, so
    the sum stays below ``p 2^32``. The sum is spelt out slice by slice of ``m``, so
    XLA fuses it into one elementwise pass; a reduction over ``K`` compiled to four
    passes, each writing a temporary as large as ``m``, and made decoding over
    ``GF(2^31 - 1)`` 1.6 times as long.
    """
    capacity = 2**32 // p
    total = None
    for start in range(0, m.shape[axis], capacity):
        wide = None
        for k in range(start, min(start + capacity, m.shape[axis])):
            x = lax.index_in_dim(v, k, axis)
            y = lax.index_in_dim(m, k, axis, keepdims=False)
            term = (_mul_high(x, y), x * y)
            wide = term if wide is None else _add_wide(wide, term)
        reduced = _montgomery_reduce(wide[0], wide[1], p)
        total = reduced if total is None else _mod_add(total, reduced, p)
    return total


TRIALS_LAST_BELOW = 16
"""The progressive decoder (:mod:`uepjax.decode`) over Montgomery fields holds the
bases of fewer unknowns than this with the batch on the last axis, so that every
product runs over whole vectors of trials; wider ones hold it first, where rows of
16 or more entries fill the vectors. On a 2-core CPU (AVX2), EW 9 x 30 decoding
over GF(2^31 - 1) took 0.8 times as long with the trials last; at 16 unknowns and
above (64 x 16, 128 x 32, 256 x 64) it took 1.2 to 1.5 times as long. The rank
does not use this bound (see :data:`TRIALS_TILE`)."""


def _trials_last(field: Field, width: int) -> bool:
    """Whether an elimination of ``width``-entry vectors holds the batch last."""
    return _reduction(field) == "montgomery" and width < TRIALS_LAST_BELOW


def _power_loop(
    mul: Callable[[jax.Array, jax.Array], jax.Array], base: jax.Array, exponent: int
) -> jax.Array:
    """``base^exponent`` (``exponent >= 1``) by left-to-right square-and-multiply.

    The static exponent bits drive a ``lax.fori_loop``, so that the compiled
    program stays small for exponents such as ``p - 2``.
    """
    bits = jnp.asarray([int(b) for b in bin(exponent)[3:]], dtype=bool)

    def step(i, result):
        result = mul(result, result)
        return jnp.where(bits[i], mul(result, base), result)

    return lax.fori_loop(0, bits.shape[0], step, base)


# ---------------------------------------------------------------------------------
# Tables for GF(2^m).


class _Tables(NamedTuple):
    exp: np.ndarray  # [4 (q - 1) + 1] uint32; zero from index 2 (q - 1) on
    log: np.ndarray  # [q] int32; log[0] = 2 (q - 1) lands in the zero region
    product: np.ndarray | None  # [q * q] uint8 for m <= 8 (64 KiB), else None


@functools.cache
def _tables(degree: int) -> _Tables:
    """Exp/log tables of ``GF(2^degree)`` with generator ``x`` (built once)."""
    q = 1 << degree
    polynomial = _CONWAY_POLYNOMIALS[degree]
    powers = np.zeros(q - 1, dtype=np.int64)
    value = 1
    for i in range(q - 1):
        powers[i] = value
        value <<= 1
        if value & q:
            value ^= polynomial
    if value != 1 or len(np.unique(powers)) != q - 1:
        raise RuntimeError(
            f"polynomial {polynomial:#x} of GF(2^{degree}) is not primitive"
        )
    exp = np.zeros(4 * (q - 1) + 1, dtype=np.uint32)
    exp[: 2 * (q - 1)] = np.concatenate([powers, powers])
    log = np.empty(q, dtype=np.int32)
    log[powers] = np.arange(q - 1, dtype=np.int32)
    log[0] = 2 * (q - 1)
    product = None
    if degree <= _FULL_TABLE_MAX_DEGREE:
        product = exp[log[:, None] + log[None, :]].reshape(-1).astype(np.uint8)
    logger.debug("built GF(2^%d) tables", degree)
    return _Tables(exp=exp, log=log, product=product)


@functools.cache
def _prime_inverses(p: int) -> np.ndarray:
    """``[p] uint32`` table of inverses in ``GF(p)`` (``0 -> 0``), for ``p < 2^16``."""
    elements = np.arange(p, dtype=np.int64)
    inverses = np.ones(p, dtype=np.int64)
    base, exponent = elements.copy(), p - 2
    while exponent:
        if exponent & 1:
            inverses = inverses * base % p
        base = base * base % p
        exponent >>= 1
    inverses[0] = 0
    return inverses.astype(np.uint32)


def _gather(table: np.ndarray, index: jax.Array) -> jax.Array:
    return jnp.asarray(table).at[index].get(mode="promise_in_bounds")


def _table_log(field: Field, a: jax.Array) -> jax.Array:
    return _gather(_tables(field.degree).log, a)


def _table_inv(field: Field, a: jax.Array) -> jax.Array:
    q = field.order
    log = _table_log(field, a)
    # Nonzero a: exp[(q - 1) - log a]; zero a: index into the zero region.
    index = jnp.where(a == 0, 2 * (q - 1), (q - 1) - log)
    return _gather(_tables(field.degree).exp, index)


# ---------------------------------------------------------------------------------
# Arithmetic used by the eliminations. A "raw" product equals the field product times
# a fixed nonzero constant of the field (2^-32 for Montgomery products, else 1), which
# does not change zero patterns or row spaces.


def _raw_mul(field: Field, a: jax.Array, b: jax.Array) -> jax.Array:
    """Broadcasting raw product; per-operand table lookups happen before broadcast."""
    kind = field.kind
    if kind is FieldKind.REAL:
        return a * b
    if kind is FieldKind.BINARY:
        return a & b
    if kind is FieldKind.PRIME:
        reduction = _reduction(field)
        if reduction == "remainder":
            return (a * b) % np.uint32(field.order)
        return _montgomery(a, b, field.order)
    tables = _tables(field.degree)
    if tables.product is not None:
        # uint8 entries keep the table cache-resident: lookups run about twice
        # as fast as from a uint32 table.
        index = (a.astype(jnp.uint32) << field.degree) | b.astype(jnp.uint32)
        return _gather(tables.product, index).astype(jnp.result_type(a, b))
    return _gather(tables.exp, _table_log(field, a) + _table_log(field, b))


def _raw_sub(field: Field, a: jax.Array, b: jax.Array) -> jax.Array:
    """``field.sub(a, b)`` in the dtype of ``a`` (see :func:`_elimination_dtype`)."""
    if field.kind is FieldKind.EXTENSION:
        return a ^ b.astype(a.dtype)
    return field.sub(a, b)


def _elimination_dtype(field: Field) -> jnp.dtype:
    """The dtype in which eliminations hold the elements of ``field``.

    ``GF(2^m)`` with a product table (``m <= 8``) is held in ``uint8``: each pass
    moves a quarter of the bytes, and XORs and zero tests run 32 elements to an
    AVX2 vector. The products stay table lookups. On a 2-core CPU the rank of
    16,384 matrices 15 x 9 over GF(2^8) took 0.53 times as long as in ``uint32``.
    """
    if field.kind is FieldKind.EXTENSION and field.degree <= _FULL_TABLE_MAX_DEGREE:
        return jnp.dtype(jnp.uint8)
    return jnp.dtype(field.dtype)


def _to_operand(field: Field, a: jax.Array) -> jax.Array:
    """``b`` such that ``_raw_mul(field, x, b) == field.mul(x, a)`` exactly."""
    if _reduction(field) == "montgomery":
        return _montgomery(a, _mont_r2(field.order), field.order)
    return a


def _from_operand(field: Field, b: jax.Array) -> jax.Array:
    """Inverse of :func:`_to_operand`."""
    if _reduction(field) == "montgomery":
        return _montgomery(b, jnp.ones_like(b), field.order)
    return b


def _inverse_operand(field: Field, a: jax.Array) -> jax.Array:
    """``_to_operand(field, field.inv(a))``, fused for Montgomery arithmetic."""
    if _reduction(field) == "montgomery":
        # a read as a Montgomery residue is a/R, so (a/R)^(p-2) R = R^2 / a = the
        # operand form of 1 / a.
        p = field.order
        return _power_loop(functools.partial(_montgomery, p=p), a, p - 2)
    return field.inv(a).astype(a.dtype)


def _field_sum(field: Field, x: jax.Array, axis: int) -> jax.Array:
    """Sum over one axis in the field (exact, no ``uint32`` overflow)."""
    if field.kind is FieldKind.REAL:
        return jnp.sum(x, axis=axis)
    if field.kind is not FieldKind.PRIME:
        return jnp.bitwise_xor.reduce(x, axis=axis)
    p = field.order
    axis = axis % x.ndim
    # Up to `group` reduced residues sum exactly in uint32.
    group = (2**32 - 1) // (p - 1)
    while x.shape[axis] > group:
        n = x.shape[axis]
        pad = (-n) % group
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = jnp.pad(x, widths)
        if group == 2:
            half = (n + pad) // 2
            first = lax.slice_in_dim(x, 0, half, axis=axis)
            second = lax.slice_in_dim(x, half, 2 * half, axis=axis)
            x = _mod_add(first, second, p)
        else:
            shape = x.shape[:axis] + ((n + pad) // group, group) + x.shape[axis + 1 :]
            x = jnp.sum(x.reshape(shape), axis=axis + 1, dtype=jnp.uint32)
            x = x % np.uint32(p)
    return jnp.sum(x, axis=axis, dtype=jnp.uint32) % np.uint32(p)


def _pack_bits(bits: jax.Array) -> jax.Array:
    """``[..., n]`` 0/1 ``uint32`` -> ``[..., ceil(n / 32)]`` words, bit ``j % 32``."""
    n = bits.shape[-1]
    words = -(-n // 32)
    widths = [(0, 0)] * (bits.ndim - 1) + [(0, words * 32 - n)]
    bits = jnp.pad(bits, widths).reshape(bits.shape[:-1] + (words, 32))
    shifts = jnp.arange(32, dtype=jnp.uint32)
    return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def _unpack_bits(words: jax.Array, n: int) -> jax.Array:
    """Inverse of :func:`_pack_bits`: ``[..., words]`` -> ``[..., n]`` bool."""
    shifts = jnp.arange(32, dtype=jnp.uint32)
    bits = (words[..., None] >> shifts) & np.uint32(1)
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * 32,))[..., :n] == 1


def _as_field_array(x: Any, field: Field, name: str, min_ndim: int) -> jax.Array:
    """Checks the static dtype and rank of user input and casts to the field dtype."""
    x = jnp.asarray(x)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions [..., rows, cols] "
            f"(got shape {x.shape})"
        )
    if field.kind is FieldKind.REAL:
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise ValueError(f"{name} must be real for the REAL field (got {x.dtype})")
        return x.astype(jnp.float32)
    if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        raise ValueError(
            f"{name} must have an integer dtype for {field!r} (got {x.dtype}); "
            "pass field elements as integers in [0, q)"
        )
    return x.astype(jnp.uint32)


# ---------------------------------------------------------------------------------
# Gauss-Jordan elimination.


class Echelon(NamedTuple):
    """Reduced row echelon forms of a batch of matrices.

    Attributes:
        reduced: ``[..., rows, cols]`` field dtype; the RREF (pivots equal to 1,
            pivot rows first in pivot-column order, then zero rows).
        pivot_columns: ``[..., cols] bool``; True where a column holds a pivot.
        rank: ``[...] int32``; the number of pivots.
    """

    reduced: jax.Array
    pivot_columns: jax.Array
    rank: jax.Array


def _finish(
    m: jax.Array, used: jax.Array, row_pivot: jax.Array, pivot_columns: jax.Array
) -> Echelon:
    """Zeroes non-pivot rows and sorts pivot rows by their pivot column."""
    m = jnp.where(used[..., None], m, jnp.zeros_like(m))
    order = jnp.argsort(row_pivot, axis=-1, stable=True)
    reduced = jnp.take_along_axis(m, order[..., None], axis=-2)
    return Echelon(reduced, pivot_columns, jnp.sum(used, axis=-1, dtype=jnp.int32))


def _echelon_binary(m: jax.Array) -> Echelon:
    """GF(2) Gauss-Jordan on packed rows: ``[batch, rows, cols]`` 0/1 ``uint32``."""
    batch, rows, cols = m.shape
    packed = _pack_bits(m & np.uint32(1))  # [batch, rows, words]
    row_ids = jnp.arange(rows)

    def step(c, state):
        packed, used, row_pivot, pivot_columns = state
        word = lax.dynamic_index_in_dim(packed, c // 32, axis=2, keepdims=False)
        bit = ((word >> (c % 32).astype(jnp.uint32)) & np.uint32(1)) == 1
        candidates = bit & ~used
        has = jnp.any(candidates, axis=-1)
        pivot = jnp.argmax(candidates, axis=-1)
        pivot_row = jnp.take_along_axis(packed, pivot[:, None, None], axis=1)
        is_pivot = (row_ids == pivot[:, None]) & has[:, None]
        eliminate = bit & ~is_pivot & has[:, None]
        packed = packed ^ jnp.where(eliminate[..., None], pivot_row, np.uint32(0))
        used = used | is_pivot
        row_pivot = jnp.where(is_pivot, c, row_pivot)
        pivot_columns = lax.dynamic_update_index_in_dim(pivot_columns, has, c, axis=1)
        return packed, used, row_pivot, pivot_columns

    state = (
        packed,
        jnp.zeros((batch, rows), bool),
        jnp.full((batch, rows), cols, jnp.int32),
        jnp.zeros((batch, cols), bool),
    )
    packed, used, row_pivot, pivot_columns = lax.fori_loop(0, cols, step, state)
    reduced = _unpack_bits(packed, cols).astype(jnp.uint32)
    return _finish(reduced, used, row_pivot, pivot_columns)


def _echelon_general(m: jax.Array, field: Field) -> Echelon:
    """Gauss-Jordan with normalised pivots over GF(2^m), GF(p) or the reals."""
    m = m.astype(_elimination_dtype(field))
    batch, rows, cols = m.shape
    real = field.kind is FieldKind.REAL
    row_ids = jnp.arange(rows)
    column_ids = jnp.arange(cols)
    if real:
        scale = jnp.max(jnp.abs(m), axis=-1, keepdims=True)
        m = m / jnp.where(scale > 0, scale, 1)

    def step(c, state):
        m, used, row_pivot, pivot_columns = state
        column = lax.dynamic_index_in_dim(m, c, axis=2, keepdims=False)
        if real:
            # Threshold pivoting: among the remaining rows whose entry is within a
            # factor REAL_PIVOT_THRESHOLD of the largest, take the one whose last
            # nonzero entry comes first, so that exact zeros survive elimination.
            magnitude = jnp.where(used, -1.0, jnp.abs(column))
            largest = jnp.max(magnitude, axis=-1)
            has = largest > REAL_TOLERANCE
            eligible = magnitude >= REAL_PIVOT_THRESHOLD * largest[:, None]
            extent = jnp.max(jnp.where(m != 0, column_ids, -1), axis=-1)
            pivot = jnp.argmin(jnp.where(eligible, extent, cols), axis=-1)
        else:
            candidates = (column != 0) & ~used
            pivot = jnp.argmax(candidates, axis=-1)
            has = jnp.any(candidates, axis=-1)
        pivot_row = jnp.take_along_axis(m, pivot[:, None, None], axis=1)[:, 0]
        pivot_value = jnp.take_along_axis(column, pivot[:, None], axis=1)
        pivot_value = jnp.where(has[:, None], pivot_value, jnp.ones_like(pivot_value))
        if real:
            operand = pivot_row / pivot_value
        else:
            operand = _raw_mul(field, pivot_row, _inverse_operand(field, pivot_value))
        normalised = _from_operand(field, operand)
        is_pivot = (row_ids == pivot[:, None]) & has[:, None]
        factors = jnp.where(is_pivot | ~has[:, None], jnp.zeros_like(column), column)
        update = _raw_mul(field, factors[:, :, None], operand[:, None, :])
        m = _raw_sub(field, m, update)
        if real:
            # The eliminated column is zero up to rounding; make it exactly zero.
            m = jnp.where(
                (has[:, None] & ~is_pivot)[..., None] & (column_ids == c),
                0.0,
                m,
            )
        m = jnp.where(is_pivot[..., None], normalised[:, None, :], m)
        used = used | is_pivot
        row_pivot = jnp.where(is_pivot, c, row_pivot)
        pivot_columns = lax.dynamic_update_index_in_dim(pivot_columns, has, c, axis=1)
        return m, used, row_pivot, pivot_columns

    state = (
        m,
        jnp.zeros((batch, rows), bool),
        jnp.full((batch, rows), cols, jnp.int32),
        jnp.zeros((batch, cols), bool),
    )
    m, used, row_pivot, pivot_columns = lax.fori_loop(0, cols, step, state)
    return _finish(m.astype(field.dtype), used, row_pivot, pivot_columns)


def _echelon_flat(matrices: jax.Array, field: Field) -> Echelon:
    batch_shape = matrices.shape[:-2]
    rows, cols = matrices.shape[-2:]
    m = matrices.reshape((math.prod(batch_shape), rows, cols))
    if rows == 0 or cols == 0:
        # No equations or no unknowns: nothing to eliminate, rank 0.
        batch = m.shape[0]
        result = Echelon(
            m, jnp.zeros((batch, cols), bool), jnp.zeros((batch,), jnp.int32)
        )
    elif field.kind is FieldKind.BINARY:
        result = _echelon_binary(m)
    else:
        result = _echelon_general(m, field)
    return Echelon(
        result.reduced.reshape(batch_shape + (rows, cols)),
        result.pivot_columns.reshape(batch_shape + (cols,)),
        result.rank.reshape(batch_shape),
    )


@functools.partial(jax.jit, static_argnames="field")
def _row_echelon_jit(matrices: jax.Array, field: Field) -> Echelon:
    return _echelon_flat(matrices, field)


@functools.partial(jax.jit, static_argnames="field")
def _recoverable_from_echelon(echelon: Echelon, field: Field) -> jax.Array:
    reduced, pivot_columns = echelon.reduced, echelon.pivot_columns
    if reduced.shape[-2] == 0:
        return jnp.zeros(pivot_columns.shape, bool)
    if field.kind is FieldKind.REAL:
        nonzero = jnp.abs(reduced) > REAL_TOLERANCE
    else:
        nonzero = reduced != 0
    # A pivot row that is nonzero outside the pivot columns mixes e_k with free
    # columns, so e_k is not in the row space.
    mixed = jnp.any(nonzero & ~pivot_columns[..., None, :], axis=-1)
    # In the RREF the pivot of column k sits in row (number of pivots before k).
    pivot_row = jnp.cumsum(pivot_columns, axis=-1, dtype=jnp.int32) - 1
    pivot_row = jnp.clip(pivot_row, 0, reduced.shape[-2] - 1)
    mixed_at_pivot = jnp.take_along_axis(mixed, pivot_row, axis=-1)
    return pivot_columns & ~mixed_at_pivot


def row_echelon(matrices: Any, q: int | str | Field) -> Echelon:
    """Batched reduced row echelon form (Gauss-Jordan elimination).

    Args:
        matrices: ``[..., rows, cols]`` integer field elements in ``[0, q)`` (any
            integer dtype) or, for ``q="real"``, real numbers.
        q: field order, ``"real"`` or a :class:`Field` (see :func:`get_field`).

    Returns:
        :class:`Echelon` with ``reduced [..., rows, cols]`` (``uint32`` or
        ``float32``), ``pivot_columns [..., cols] bool`` and ``rank [...] int32``.

    Raises:
        ValueError: if ``q`` is not a supported field or ``matrices`` has fewer than
            two dimensions or a non-integer dtype for a finite field.

    Note:
        One loop iteration per column (``lax.fori_loop``), vectorised over rows and
        the batch. Real matrices: rows are scaled to unit maximum magnitude and
        entries of magnitude at most :data:`REAL_TOLERANCE` count as zero.

    Example:
        >>> import jax.numpy as jnp
        >>> row_echelon(jnp.array([[0, 1, 1], [1, 1, 0]]), 2).reduced.tolist()
        [[1, 0, 1], [0, 1, 1]]
    """
    field = get_field(q)
    matrices = _as_field_array(matrices, field, "matrices", 2)
    return _row_echelon_jit(matrices, field)


def rank(matrices: Any, q: int | str | Field) -> jax.Array:
    """Ranks of a batch of matrices over ``GF(q)`` (or the reals).

    Args:
        matrices: ``[..., rows, cols]`` field elements, as in :func:`row_echelon`.
        q: field order, ``"real"`` or a :class:`Field`.

    Returns:
        ``[...] int32`` ranks.

    Raises:
        ValueError: as :func:`row_echelon`.

    Note:
        Finite fields other than ``GF(2)`` use forward elimination without
        normalising the pivots (about half the work of :func:`row_echelon`); over
        ``GF(2)`` packed rows make Gauss-Jordan cheaper still.
        Over the reals this is the numerical rank: the number of singular values
        above ``max(rows, cols) * eps * sigma_max`` with the ``float32`` epsilon
        (numpy's rule). It is robust for dense, numerically low-rank matrices, where
        the pivot count of :func:`row_echelon` (tuned to keep exact zeros of
        structured coefficient matrices) can differ.

    Example:
        >>> import jax.numpy as jnp
        >>> rank(jnp.array([[1, 1], [1, 1]]), 2).tolist()
        1
    """
    field = get_field(q)
    matrices = _as_field_array(matrices, field, "matrices", 2)
    if field.kind is FieldKind.REAL:
        return _real_rank(matrices)
    return _rank_jit(matrices, field)


RANK_BLOCK_BYTES = 2**23
"""The most bytes of matrices that :func:`rank` eliminates at once; larger batches
run in a loop over blocks of equal size, so that the steps of a block's elimination
find it in cache. Over GF(2^31 - 1), 16,384 matrices 30 x 9 or 64 x 16 took half
the time in blocks, 65,536 of 15 x 9 0.75 of it (0.73 over GF(65521)); table
fields, bound by their lookups, neither gain nor lose."""

RANK_PHASES = 4
"""Phases of :func:`_rank_forward`: columns eliminated in earlier phases are sliced
off, so the work falls from ``R C^2`` towards the ``R C (C + 1) / 2`` entries that
forward elimination has to update. Over GF(2^31 - 1), four phases took 0.6 to 0.9
of one phase's time (15 x 9 with the batch last; 32 x 16, 64 x 16 and 40 x 20 with
it first)."""


def _rank_phase_bounds(cols: int) -> list[int]:
    """The first column of each of :func:`_rank_forward`'s phases, then ``cols``."""
    phases = min(RANK_PHASES, cols)
    return [cols * i // phases for i in range(phases + 1)]


TRIALS_TILE = 8
"""Matrices in a tile of :func:`_rank_forward` over Montgomery fields: the batch runs
as ``[batch / 8, rows, cols, 8]``, eight matrices side by side along the last axis
(one AVX2 vector of ``uint32``). Moving the batch into tiles reads and writes memory
in order, where moving it to the last axis of ``[rows, cols, batch]`` strides across
all of it: for 16,384 matrices 15 x 9 the tiles took 0.3 times as long to form (as
long as a copy), and the whole rank over GF(2^31 - 1) 0.8 times. Against the batch
first (tiles of one), the rank over GF(2^31 - 1) took 0.37 times as long at 15 x 9,
0.7 to 0.9 times from 16 to 48 columns, and 1.06 and 1.11 times at 32 and 64
columns, where rows fill whole vectors; every width is tiled. No accelerator has
timed the layouts yet."""


def _forward_step(column: jax.Array, m: jax.Array, field: Field):
    """Eliminates ``column [tiles, rows, 1, tile]`` of ``m [tiles, rows, cols, tile]``.

    The pivot is the first row with a nonzero entry in ``column``. A multiple of
    it is subtracted from every row, the pivot row included, so the column and the
    pivot row become zero and the rank of the other rows drops by one. Returns the
    new ``m`` and ``[tiles, tile] bool``, True where the column held a pivot.
    """
    nonzero = column != 0
    has = jnp.any(nonzero, axis=1, keepdims=True)
    pivot = jnp.argmax(nonzero, axis=1, keepdims=True)
    pivot_row = jnp.take_along_axis(m, pivot, axis=1)
    pivot_value = jnp.take_along_axis(column, pivot, axis=1)
    if _reduction(field) == "montgomery":
        # Fraction-free, (v m - m_c r) 2^-32 with one reduction and no inverse: the
        # factor 2^-32 scales every row alike. Without a pivot, v = 1 keeps m.
        p = field.order
        value = jnp.where(has, pivot_value, np.uint32(1))
        m = _montgomery_combination(value, m, field.neg(column), pivot_row, p)
    else:
        # A zero column (no pivot) makes the update zero whatever the inverse is.
        operand = _raw_mul(field, pivot_row, _inverse_operand(field, pivot_value))
        m = _raw_sub(field, m, _raw_mul(field, column, operand))
    return m, has[:, 0, 0, :]


def _rank_forward(m: jax.Array, field: Field) -> jax.Array:
    """Rank of ``m [batch, rows, cols]`` over a non-binary finite field: ``[batch]``;
    ``m`` holds elements in :func:`_elimination_dtype`.

    Forward elimination without normalised pivots, one loop iteration per column
    in up to :data:`RANK_PHASES` phases; each phase drops the columns already zero.
    Montgomery matrices are eliminated in tiles of :data:`TRIALS_TILE`, others with
    tiles of one (the batch first).
    """
    if m.shape[2] > m.shape[1]:
        # rank(M) = rank(M^T): fewer columns mean fewer and narrower steps.
        m = jnp.swapaxes(m, 1, 2)
    batch, rows, cols = m.shape
    tile = TRIALS_TILE if _reduction(field) == "montgomery" else 1
    tiles = -(-batch // tile)
    # Zero matrices fill the last tile (rank 0, dropped below).
    m = jnp.pad(m, ((0, tiles * tile - batch), (0, 0), (0, 0)))
    m = m.reshape(tiles, tile, rows * cols).transpose(0, 2, 1)
    m = m.reshape(tiles, rows, cols, tile)
    bounds = _rank_phase_bounds(cols)

    def step(c, state):
        m, column, rank = state
        m, has = _forward_step(column, m, field)
        # The next column rides in the loop state. Sliced from m inside the update,
        # it kept XLA from updating m in place: every step wrote a new m and
        # copied it back. (The last step's read, clamped to the last column, is
        # not used.)
        column = lax.dynamic_index_in_dim(m, c + 1, axis=2)
        return m, column, rank + has.astype(jnp.int32)

    rank = jnp.zeros((tiles, tile), jnp.int32)
    column = m[:, :, :1]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        done = start - (cols - m.shape[2])
        m = lax.slice_in_dim(m, done, m.shape[2], axis=2)
        m, column, rank = lax.fori_loop(0, stop - start, step, (m, column, rank))
    return rank.reshape(-1)[:batch]


@functools.partial(jax.jit, static_argnames="field")
def _rank_jit(matrices: jax.Array, field: Field) -> jax.Array:
    if field.kind is FieldKind.BINARY or 0 in matrices.shape[-2:]:
        # Only the pivot count leaves the program, so XLA drops the final ordering
        # of the reduced rows.
        return _echelon_flat(matrices, field).rank
    batch_shape = matrices.shape[:-2]
    rows, cols = matrices.shape[-2:]
    batch = math.prod(batch_shape)
    flat = matrices.reshape((batch, rows, cols)).astype(_elimination_dtype(field))
    item = rows * cols * flat.dtype.itemsize
    blocks = -(-batch * item // RANK_BLOCK_BYTES)
    if blocks <= 1:
        return _rank_forward(flat, field).reshape(batch_shape)
    # Blocks of equal size, the last padded with zero matrices (rank 0).
    size = -(-batch // blocks)
    padded = jnp.pad(flat, ((0, blocks * size - batch), (0, 0), (0, 0)))
    ranks = lax.map(
        lambda m: _rank_forward(m, field), padded.reshape(blocks, size, rows, cols)
    )
    return ranks.reshape(-1)[:batch].reshape(batch_shape)


@jax.jit
def _real_rank(matrices: jax.Array) -> jax.Array:
    if min(matrices.shape[-2:]) == 0:
        return jnp.zeros(matrices.shape[:-2], jnp.int32)
    singular = jnp.linalg.svd(matrices, compute_uv=False)
    eps = jnp.finfo(jnp.float32).eps
    threshold = singular[..., :1] * (max(matrices.shape[-2:]) * eps)
    return jnp.sum(singular > threshold, axis=-1, dtype=jnp.int32)


def recoverable(matrices: Any, q: int | str | Field) -> jax.Array:
    """Which unknowns a batch of coefficient matrices determines.

    Unknown ``k`` is recoverable iff ``e_k`` lies in the row space: in the RREF,
    column ``k`` holds a pivot and its pivot row is zero outside the pivot columns.

    Args:
        matrices: ``[..., rows, cols]`` coefficient rows, as in :func:`row_echelon`.
        q: field order, ``"real"`` or a :class:`Field`.

    Returns:
        ``[..., cols] bool``.

    Raises:
        ValueError: as :func:`row_echelon`.

    Example:
        >>> import jax.numpy as jnp
        >>> recoverable(jnp.array([[1, 0, 0], [0, 1, 1]]), 3).tolist()
        [True, False, False]
    """
    field = get_field(q)
    matrices = _as_field_array(matrices, field, "matrices", 2)
    return _recoverable_from_echelon(_row_echelon_jit(matrices, field), field)
