"""Tests of uepjax.distributed in one process: meshes, exchanges and argument checks.

The multi-device and multi-process runs themselves are in tests/test_runner.py (they
need fresh processes).
"""

import jax
import numpy as np
import pytest

from uepjax import distributed


def test_the_local_mesh_has_one_trials_axis_over_the_local_devices():
    mesh = distributed.local_mesh()
    assert mesh.axis_names == (distributed.AXIS,)
    assert mesh.size == len(jax.local_devices())
    blocks = distributed.shard_blocks(np.arange(mesh.size, dtype=np.uint32), mesh)
    assert blocks.sharding.spec == jax.sharding.PartitionSpec(distributed.AXIS)


@pytest.mark.parametrize(
    "devices, match",
    [
        ([], "devices must not be empty"),
        (lambda: jax.local_devices() * 2, "devices must be distinct"),
    ],
)
def test_bad_device_lists_are_named(devices, match):
    devices = devices() if callable(devices) else devices
    with pytest.raises(ValueError, match=match):
        distributed.local_mesh(devices)


def test_one_process_exchanges_are_the_identity():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    gathered = distributed.allgather(values)
    assert gathered.shape == (1, 2, 3)
    np.testing.assert_array_equal(gathered[0], values)
    np.testing.assert_array_equal(distributed.broadcast_from_main(values), values)
    assert distributed.process_count() == 1 and distributed.is_main_process()
    distributed.barrier("nothing to wait for")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(coordinator_address="127.0.0.1:1234"),
            "coordinator_address, num_processes and process_id go together",
        ),
        (
            dict(coordinator_address="h:1", num_processes=0, process_id=0),
            "num_processes must be a positive integer",
        ),
        (
            dict(coordinator_address="h:1", num_processes=2, process_id=2),
            r"process_id must be an integer in \[0, 2\)",
        ),
        (dict(timeout_seconds=0), "timeout_seconds must be a positive integer"),
    ],
)
def test_bad_distributed_arguments_are_named_before_connecting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)
