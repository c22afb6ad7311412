"""Timing helpers: warm up, block until ready, take medians, interleave rivals.

Every measurement records the wall time and the process CPU time (all threads) of
each repeat. On a shared machine the wall time of one repeat swings with the load of
other users; the median over repeats, the minimum, and rivals timed in alternation
(:func:`interleaved`) keep ratios measured in one run comparable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = [
    "LoopTiming",
    "Timing",
    "interleaved",
    "load_average",
    "measure",
    "per_item",
]


class Timing(NamedTuple):
    """Seconds per call of a measured function.

    Attributes:
        wall: median wall-clock seconds over the repeats.
        wall_min: the fastest repeat.
        cpu: median process CPU seconds (all threads) over the repeats.
        repeats: the number of timed repeats.
        first: wall seconds of the first (compiling) call, or 0 if not timed.
    """

    wall: float
    wall_min: float
    cpu: float
    repeats: int
    first: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return self._asdict()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return 0.5 * (ordered[middle - 1] + ordered[middle])


def _once(function: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(function())
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(function: Callable[[], Any], repeats: int) -> Timing:
    """Times ``function`` after one warm-up call that compiles it."""
    first, _ = _once(function)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = _once(function)
        walls.append(wall)
        cpus.append(cpu)
    return Timing(_median(walls), min(walls), _median(cpus), repeats, first)


def interleaved(functions: dict[str, Callable[[], Any]], repeats: int) -> dict:
    """Times rivals in alternation (A, B, A, B, ...) so that they share the load."""
    first = {name: _once(function)[0] for name, function in functions.items()}
    walls = {name: [] for name in functions}
    cpus = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            wall, cpu = _once(function)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {
        name: Timing(
            _median(walls[name]),
            min(walls[name]),
            _median(cpus[name]),
            repeats,
            first[name],
        )
        for name in functions
    }


class LoopTiming(NamedTuple):
    """Seconds per item of a Python loop over matrices.

    Attributes:
        seconds: wall seconds per timed item.
        cpu: process CPU seconds per timed item.
        items: the number of timed items.
        outputs: what the function returned for items ``0..items`` (the warm-up
            item 0 included), to check the answers.
    """

    seconds: float
    cpu: float
    items: int
    outputs: list


def per_item(
    function: Callable[[int], Any], items: int, budget_seconds: float
) -> LoopTiming:
    """Times a Python loop over items ``0, 1, ...`` within a budget.

    Item 0 is a warm-up (galois compiles its kernels on first use) and is not
    counted; then items run one by one until ``budget_seconds`` have passed or
    ``items`` are done, at least one.
    """
    if items < 2:
        raise ValueError(
            f"items must be at least 2, a warm-up and one timed (got {items})"
        )
    outputs = [function(0)]
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(1, items):
        outputs.append(function(index))
        if time.perf_counter() - wall >= budget_seconds:
            break
    done = len(outputs) - 1
    return LoopTiming(
        (time.perf_counter() - wall) / done,
        (time.process_time() - cpu) / done,
        done,
        outputs,
    )


def load_average() -> float | None:
    """The 1-minute load average of the machine, or None where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
