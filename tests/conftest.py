"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib

import jax
import pytest


@contextlib.contextmanager
def _count_compiles():
    """Counts XLA compilations (public jax.monitoring events) inside the block."""
    events = []

    def listener(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def count_compiles():
    """``with count_compiles() as compiles:`` lists the compilations of the block."""
    return _count_compiles
