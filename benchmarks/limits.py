"""The machine's own limit: the rate of the field operation an elimination repeats.

Gauss-Jordan elimination and the progressive decoder spend their arithmetic on one
elementwise operation, the multiply-subtract ``y - x z`` of a field. This module
times jitted, fused chains of that operation over large ``uint32`` (``float32``)
arrays and reports field elements per second: what the machine does when nothing
but the arithmetic counts (no pivot search, no gathers of rows, no loop overheads).
The decoder's useful operations per second divided by this rate is the fraction of
the limit that decoding reaches.

The operation is the engine's own arithmetic (``uepjax.fields``):

* ``GF(p)``, ``p >= 2^16``: one Montgomery product and a modular subtraction (the
  update of the elimination, which works in a scaled Montgomery domain).
* ``GF(p)``, ``p < 2^16``: a ``uint32`` product, ``%`` and a modular subtraction.
* ``GF(2^8)``: one lookup in the ``256 x 256`` product table and an XOR.
* ``GF(2)``: ``y ^ ((x >> 1) & z)`` on packed ``uint32`` words, counted as 32
  elements a word (the decoder packs 32 unknowns into a word). The shift keeps the
  compiler from folding the chain: AND and XOR with fixed operands repeat after two
  steps, and LLVM notices.
* reals: a ``float32`` multiply-subtract.

A chain of dependent operations can be bound by latency rather than throughput, and
a long fused chain of table lookups compiles badly on some backends, so several
shapes of kernel are tried (one operation per pass over the arrays, independent
chains side by side, short and long chains) and the fastest is the limit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from timing import Timing, measure

from uepjax import fields
from uepjax.fields import _raw_mul, _to_operand

__all__ = [
    "VARIANTS",
    "Kernel",
    "calibrate",
    "elements_per_word",
    "multiply_subtract",
]

VARIANTS = ((1, 1, 1), (1, 4, 1), (1, 16, 1), (4, 4, 1), (4, 16, 1), (1, 4, 4))
"""``(chains, steps, width)`` shapes that are tried: ``chains`` independent chains
side by side, ``steps`` dependent steps per loop iteration, each step subtracting
``width`` independent products (``y - x z_1 - ... - x z_width``, counted as
``width`` operations). Wide steps are not tried for ``GF(2)``, where the compiler
may factor ``(x & z_1) ^ (x & z_2)`` into one AND."""


def elements_per_word(field: fields.Field) -> int:
    """Field elements that one machine word of the limit kernel holds."""
    return 32 if field.kind is fields.FieldKind.BINARY else 1


def multiply_subtract(field: fields.Field, x, y, z):
    """``y - x z`` elementwise in ``field`` (for ``GF(2)`` words, see above)."""
    if field.kind is fields.FieldKind.BINARY:
        return y ^ ((x >> 1) & z)
    if field.kind is fields.FieldKind.REAL:
        return y - x * z
    return field.sub(y, _raw_mul(field, x, z))


def _step(field: fields.Field, x, y, zs):
    """``y - x z_1 - x z_2 - ...``: independent products, then the subtractions."""
    if len(zs) == 1:
        return multiply_subtract(field, x, y, zs[0])
    total = y
    for z in zs:
        if field.kind is fields.FieldKind.REAL:
            total = total - x * z
        else:
            total = field.sub(total, _raw_mul(field, x, z))
    return total


@functools.partial(jax.jit, static_argnames=("field", "unroll"))
def _chain(xs, y, zs, loops: jax.Array, field: fields.Field, unroll: int):
    def body(_, xs):
        # Each step needs the previous one, so nothing can be hoisted or skipped.
        for _ in range(unroll):
            xs = tuple(_step(field, x, y, zs) for x in xs)
        return xs

    return lax.fori_loop(0, loops, body, xs)


def _operands(key: jax.Array, field: fields.Field, elements: int):
    keys = jax.random.split(key, 3)
    if field.kind is fields.FieldKind.BINARY:
        return tuple(jax.random.bits(k, (elements,), dtype=jnp.uint32) for k in keys)
    if field.kind is fields.FieldKind.REAL:
        x, y = (jax.random.normal(k, (elements,)) for k in keys[:2])
        # |z| < 1 keeps the chain bounded (it contracts to y / (1 + z)).
        z = jax.random.uniform(keys[2], (elements,), minval=-0.9, maxval=0.9)
        return x, y, z
    x, y, z = (field.random(k, (elements,)) for k in keys)
    return x, y, _to_operand(field, z)


class Kernel(NamedTuple):
    """One shape of the limit kernel, ready to call.

    Attributes:
        field: the field.
        chains: independent chains side by side (each over ``elements / chains``).
        unroll: dependent steps per chain in one loop iteration (fused).
        width: independent products per step.
        loops: loop iterations per call.
        elements: words in all chains together.
        call: runs the kernel once (returns its arrays).
    """

    field: fields.Field
    chains: int
    unroll: int
    width: int
    loops: int
    elements: int
    call: Callable

    @property
    def name(self) -> str:
        """``chains x steps``, with ``, width w`` for wide steps."""
        wide = f", width {self.width}" if self.width > 1 else ""
        return f"{self.chains}x{self.unroll}{wide}"

    @property
    def work(self) -> float:
        """Field multiply-subtracts per call."""
        return (
            float(self.elements)
            * self.unroll
            * self.width
            * self.loops
            * elements_per_word(self.field)
        )


def _kernel(field, elements, chains, unroll, width, loops) -> Kernel:
    x, y, z = _operands(jax.random.key(0), field, elements)
    size = elements // chains
    xs = tuple(x[i * size : (i + 1) * size] for i in range(chains))
    # Rotations of z: distinct operands of the same distribution.
    zs = tuple(jnp.roll(z[:size], 7 * i) for i in range(width))
    y = y[:size]
    count = jnp.int32(loops)

    def call():
        return _chain(xs, y, zs, count, field, unroll)

    return Kernel(field, chains, unroll, width, loops, size * chains, call)


def calibrate(
    field: fields.Field,
    elements: int,
    seconds: float,
    repeats: int,
    variants: tuple[tuple[int, int, int], ...] = VARIANTS,
) -> tuple[Kernel, float, dict[str, tuple[Timing, float]]]:
    """Finds the fastest kernel shape and sizes it to about ``seconds`` a call.

    Args:
        field: the field.
        elements: words in all chains together.
        seconds: about how long one call of the returned kernel lasts.
        repeats: timed repeats of every shape.
        variants: the ``(chains, steps, width)`` shapes to try (see
            :data:`VARIANTS`).

    Returns:
        ``(kernel, elements per second, (timing, rate) of every shape by
        :attr:`Kernel.name`)``; rates count elements as in
        :func:`elements_per_word`.
    """
    best, best_rate, timings = None, 0.0, {}
    for chains, unroll, width in variants:
        if width > 1 and field.kind is fields.FieldKind.BINARY:
            continue
        probe = _kernel(field, elements, chains, unroll, width, 1)
        first = measure(probe.call, 1)
        loops = max(1, round(seconds / max(first.wall_min, 1e-6)))
        kernel = _kernel(field, elements, chains, unroll, width, loops)
        timing = measure(kernel.call, repeats)
        rate = kernel.work / timing.wall
        timings[kernel.name] = (timing, rate)
        if rate > best_rate:
            best, best_rate = kernel, rate
    return best, best_rate, timings
