"""Mesh, shardings and global-batch assembly: the only place that knows how arrays are laid out.

Data parallel over one 'data' axis spanning every device of every process. The mesh uses
`AxisType.Auto` so the in-batch similarity matmul on batch-sharded arrays is left to XLA (which
inserts the all-gather); the Explicit default since jax 0.9 rejects it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D data-parallel mesh over the first `num_devices` devices (default: all, all hosts)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices but only {len(devices)} are visible")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> PartitionSpec:
    """FSDP layout of one parameter or optimizer leaf: split its largest dimension that divides
    evenly over the data axis; leaves of fewer than `min_size` elements (`train.fsdp_min_size`:
    sharding biases, norms or the class token saves nothing and costs a collective each), or
    with no such dimension, stay replicated."""
    if axis_size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % axis_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[dim] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def fsdp_sharding(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> NamedSharding:
    return NamedSharding(mesh, fsdp_spec(tuple(shape), mesh.shape[DATA_AXIS], min_size))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The per-process batch size; the global batch must split evenly over devices and hosts."""
    if global_batch_size % mesh.size:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by the {mesh.size} devices of the "
            "mesh; pick a multiple of the device count"
        )
    return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's slice of the batch into global batch-sharded arrays."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


class DevicePrefetcher:
    """Keeps `size` global batches in flight to the devices so the step never waits on a copy.

    Reading ahead moves the host iterator past what training consumed, so the iterator state is
    captured with every batch; `get_state()` returns the position right after the last batch
    handed out, which is what a checkpoint must store to resume at the right data position.
    """

    def __init__(
        self, host_iterator: Iterator[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2
    ):
        self._it = host_iterator
        self._mesh = mesh
        self._size = max(size, 1)
        self._queue: collections.deque[tuple[dict[str, jax.Array], Any]] = collections.deque()
        self._state = self._host_state()

    def _host_state(self) -> Any:
        get_state = getattr(self._it, "get_state", None)
        return get_state() if get_state else None

    def _fill(self) -> None:
        while len(self._queue) < self._size:
            try:
                host = next(self._it)
            except StopIteration:
                return
            self._queue.append((global_batch(host, self._mesh), self._host_state()))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        self._fill()
        if not self._queue:
            raise StopIteration
        batch, self._state = self._queue.popleft()
        return batch

    def peek(self) -> dict[str, jax.Array]:
        """The batch the next `next()` returns, left in place (to compile the step for it)."""
        self._fill()
        if not self._queue:
            raise StopIteration
        return self._queue[0][0]

    def get_state(self) -> Any:
        return self._state

    def set_state(self, state: Any) -> None:
        """Restore the host iterator and drop what was read ahead."""
        self._it.set_state(state)  # type: ignore[attr-defined]
        self._queue.clear()
        self._state = state
