"""Many devices and many processes: meshes, process shares and exchanges.

One process drives all of its local devices through a one-axis `jax.sharding.Mesh`
named `"trials"`: the trial blocks of a chunk are split among the devices. Several
processes (on one host or on many) are joined with `jax.distributed`; every process runs
the same program, takes a deterministic share of the blocks and the block statistics
are exchanged with `jax.experimental.multihost_utils`, so every process ends with the
same numbers.

Example:
    >>> mesh = local_mesh()
    >>> mesh.axis_names
    ('trials',)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "initialize",
    "local_mesh",
    "process_count",
    "process_index",
    "is_main_process",
    "shard_blocks",
    "allgather",
    "broadcast_from_main",
    "barrier",
]

logger = logging.getLogger(__name__)

AXIS = "trials"
"""The name of the mesh axis along which trial blocks are split."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_seconds: int = 300,
) -> None:
    """Joins this process to a `jax.distributed` job.

    With no arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes, TPU pods).
    Must be called before anything else touches a device.

    Args:
        coordinator_address: `host:port` of process 0, e.g. `"10.0.0.1:8476"`.
        num_processes: the number of processes of the job.
        process_id: this process's index, `0 <= process_id < num_processes`.
        timeout_seconds: how long to wait for the other processes before failing.

    Raises:
        ValueError: if only some of the three arguments are given, or they disagree.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "coordinator_address, num_processes and process_id go together: give all "
            "three, or none to let JAX detect the cluster "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    if num_processes is not None:
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(
                f"num_processes must be a positive integer (got {num_processes!r})"
            )
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be an integer in [0, {num_processes}) "
                f"(got {process_id!r})"
            )
    if not isinstance(timeout_seconds, int) or timeout_seconds < 1:
        raise ValueError(
            f"timeout_seconds must be a positive integer (got {timeout_seconds!r})"
        )
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=timeout_seconds,
    )
    logger.debug("joined process %d of %d", jax.process_index(), jax.process_count())


def process_count() -> int:
    """The number of processes of the job (1 without `jax.distributed`)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index in the job."""
    return jax.process_index()


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes files."""
    return jax.process_index() == 0


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over `devices` (all local devices by default).

    Raises:
        ValueError: if `devices` is empty, repeats a device or holds a device of
            another process.
    """
    if devices is None:
        devices = jax.local_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    if len({d.id for d in devices}) != len(devices):
        raise ValueError(f"devices must be distinct (got {devices})")
    foreign = [d for d in devices if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(
            "devices must belong to this process; other processes take their own "
            f"share of the trials (got {foreign})"
        )
    return Mesh(np.array(devices), (AXIS,))


def shard_blocks(blocks: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places `[n]` block indices on `mesh`, split along its axis (`n` a multiple of
    the number of devices)."""
    return jax.device_put(blocks, NamedSharding(mesh, PartitionSpec(AXIS)))


def allgather(values: np.ndarray) -> np.ndarray:
    """`[processes, ...]`: every process's `values` (same shape and dtype on all).

    With one process this is `values[None]` and touches no device.

    Note:
        Without 64-bit mode JAX moves 32-bit values only, so exchange float32 or
        int32 arrays; float64 would be rounded.
    """
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values, tiled=False))


def broadcast_from_main(values: np.ndarray) -> np.ndarray:
    """Process 0's `values` on every process (32-bit dtypes, same shape on all)."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(values))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called `name`."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
