"""Data parallelism over a device mesh: the batch axis sharded, everything else replicated.

One mesh axis, "data", over every device of every process. A process holds its own rows of a
batch (its shard of the data); `shard_batch` assembles them into global arrays, `replicate`
puts parameters on every device, and `gather` brings a sharded result back as numpy on every
process. `jax.jit` partitions a pure function of such arrays by itself (no pmap, no
collectives of ours): training steps, attribution methods and metrics run unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    """A one-axis ("data") mesh over all devices (every host's)."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of the mesh (parameters, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's numpy batch into global arrays sharded on the batch axis.

    Each process passes its own rows (the loader shards by process); the leading axis must be
    divisible by the number of local devices.
    """
    sharding = NamedSharding(mesh, P("data"))
    n = len(mesh.local_devices)

    def put(a):
        a = np.asarray(a)
        if a.shape[0] % n:
            raise ValueError(f"Batch of {a.shape[0]} rows does not split over {n} local devices;"
                             " choose a batch size divisible by the device count.")
        return jax.make_array_from_process_local_data(sharding, a)

    return jax.tree_util.tree_map(put, batch)


def local_rows(rows: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's local device count that holds `rows` rows."""
    n = len(mesh.local_devices)
    return -(-int(rows) // n) * n


def gather(tree: Any) -> Any:
    """Global arrays as numpy arrays holding every process's rows, on every process."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    return jax.tree_util.tree_map(
        np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def place_rows(batch: tuple, mesh: Mesh, rows: int | None = None) -> tuple:
    """The batch's rows on the mesh, this process's slice on its devices: global arrays.

    Every process passes the whole batch (arrays sharing a leading axis of n rows). The rows
    are padded, repeating the last one, to `rows` (None: the fewest that split evenly over
    every process's devices); the caller drops the padding from the results.
    """
    n = len(batch[0])
    procs, p = jax.process_count(), jax.process_index()
    rows = rows if rows is not None else local_rows(-(-n // procs), mesh) * procs
    if not n <= rows or rows % (procs * len(mesh.local_devices)):
        raise ValueError(f"{n} rows cannot be padded to {rows}, or {rows} does not split over "
                         f"{procs} process(es) x {len(mesh.local_devices)} device(s).")
    local = rows // procs

    def pad(a):
        a = np.asarray(a)
        return a if len(a) == rows else np.concatenate(
            [a, np.repeat(a[-1:], rows - len(a), axis=0)])

    return shard_batch(tuple(pad(a)[p * local:(p + 1) * local] for a in batch), mesh)


def call_sharded(fn, replicated: Any, batch: tuple, mesh: Mesh) -> Any:
    """`fn(replicated, *batch)` with the batch's rows split over the mesh; numpy outputs.

    The rows are placed by `place_rows` and the padding is dropped from the outputs, which hold
    all n rows on every process. `replicated` must already be on the mesh (`replicate`); `fn` is
    usually jitted, so it compiles once per padded shape.
    """
    out = fn(replicated, *place_rows(batch, mesh))
    return jax.tree_util.tree_map(lambda a: a[:len(batch[0])], gather(out))
