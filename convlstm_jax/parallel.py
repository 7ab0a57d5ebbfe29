"""Placing state and batches on the local devices for a `jax.pmap`ped step, one axis named `AXIS`.

Training, evaluation, prediction and the benchmark share these, so a model's variables reach the devices the
same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

AXIS = 'batch'
PyTree = Any


def replicate(tree: PyTree, devices: Sequence[Any]) -> PyTree:
    """One copy per device along a new leading axis, placed as the pmapped step places its outputs.

    A host array would also work, but its other sharding would make the second step compile again.
    """
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.asarray(devices), (AXIS,)), jax.sharding.PartitionSpec(AXIS)
    )
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), tree)
    return jax.device_put(stacked, sharding)


def unreplicate(tree: PyTree) -> PyTree:
    """The host copy of device 0's replica (all replicas are equal)."""
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def check_batch_size(batch_size: int, device_count: int, name: str = 'batch_size') -> None:
    """A global batch must split evenly over the devices; name the nearest sizes that do."""
    if batch_size < 1 or batch_size % device_count:
        lower = max(device_count, batch_size // device_count * device_count)
        upper = (batch_size // device_count + 1) * device_count
        sizes = sorted({lower, upper})
        raise ValueError(
            f'{name}={batch_size} is not divisible by the {device_count} devices; '
            f'the nearest valid sizes are {" and ".join(map(str, sizes))}'
        )
