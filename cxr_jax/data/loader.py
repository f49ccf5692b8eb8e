"""Grain loading: one code path for phantoms and real records.

A source is random access (`len`, `[i]` -> dict of numpy arrays). `make_loader` wraps it in a
Grain `DataLoader` with an `IndexSampler` that shuffles deterministically by seed; with several
JAX processes each reads only its slice of every global batch (`BatchSliceSampler`), so each
host of a pod reads only its own rows and the global batches do not depend on the layout. The loader's iterator state
(`it.get_state()` / `it.set_state()`) is saved with training checkpoints, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import grain.python as grain
import jax
import numpy as np


class ArraySource(grain.RandomAccessDataSource):
    """Rows of in-memory arrays (e.g. a `PhantomBatch`): item i = {name: array[i]}."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"All arrays need the same number of rows, got {lengths}.")
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._arrays.items())
        return f"ArraySource({shapes})"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}


class RecordSource(grain.RandomAccessDataSource):
    """Real dataset records, decoded and preprocessed on access.

    Item: {"image": [S, S, 1] float32, "labels": [K] float32 (NaN = unknown), "valid": bool}.
    An image that cannot be read does not stop a run: it is logged, returned as zeros with
    `valid=False` and NaN labels (masked out by the BCE loss and skipped by evaluation).
    """

    def __init__(self, records: Sequence[Any], label_names: Sequence[str], *, image_size: int,
                 intensity: str = "xrv"):
        self.records = list(records)
        self.label_names = tuple(label_names)
        self.image_size = image_size
        self.intensity = intensity

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"RecordSource({len(self.records)} records, labels={self.label_names}, "
                f"image_size={self.image_size}, intensity={self.intensity!r})")

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row, _ = self.item(index)
        return row

    def item(self, index: int) -> tuple[dict[str, np.ndarray], tuple]:
        """(the row, the record's boxes moved to the output size; () when unreadable)."""
        from cxr_jax.data import images  # decoding deps load only when real data is used

        rec = self.records[index]
        labels = np.array([rec.labels.get(n, np.nan) for n in self.label_names],
                          np.float32)
        try:
            x, boxes, _ = images.load_record(rec, size=self.image_size,
                                             intensity=self.intensity)
            return ({"image": np.asarray(x, np.float32), "labels": labels, "valid": np.True_},
                    tuple(boxes))
        except Exception as err:  # one bad item must not end a long run
            logging.warning("Skipping unreadable image %s: %s", rec.path, err)
            empty = np.zeros((self.image_size, self.image_size, 1), np.float32)
            return ({"image": empty, "labels": np.full_like(labels, np.nan),
                     "valid": np.False_}, ())


def make_loader(source: grain.RandomAccessDataSource, *, batch_size: int, seed: int = 0,
                shuffle: bool = True, num_epochs: int | None = None,
                drop_remainder: bool = True, worker_count: int = 0,
                shard_by_process: bool = True,
                transforms: Sequence[grain.MapTransform | grain.RandomMapTransform] = (),
                ) -> grain.DataLoader:
    """A deterministic, checkpointable Grain loader yielding dicts of numpy batches.

    Args:
      source: random-access source of dict rows.
      batch_size: rows per batch *on this process* (global batch / process count).
      seed: shuffling seed.
      shuffle: reshuffle every epoch.
      num_epochs: None repeats forever (training); 1 for one pass (evaluation).
      drop_remainder: drop a last partial batch (keeps shapes static for jit).
      worker_count: Grain worker processes (0 = in-process).
      shard_by_process: with several JAX processes, each reads only its slice of every global
        batch (`BatchSliceSampler`), so the global batches, and the random transforms' draws,
        are those of a single process whatever the number of processes.
      transforms: Grain map transforms applied to each row before batching (random ones get a
        generator per row from the sampler's seed: deterministic and resumable), e.g.
        `cxr_jax.data.photo.PhotoAugment`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    sampler = grain.IndexSampler(len(source), shard_options=grain.NoSharding(), shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    if shard_by_process and jax.process_count() > 1:
        sampler = BatchSliceSampler(sampler, batch_size, jax.process_index(), jax.process_count())
    return grain.DataLoader(data_source=source, sampler=sampler,
                            operations=[*transforms,
                                        grain.Batch(batch_size, drop_remainder=drop_remainder)],
                            worker_count=worker_count)


class BatchSliceSampler:
    """Process `index` of `count`'s rows of the global batches of a one-process sampler.

    The global order is `base`'s (one process's order). Global batch s holds base positions
    [s B, (s + 1) B) with B = `batch_size` x `count`; this process reads positions
    [s B + index b, s B + (index + 1) b), b = `batch_size`, so the processes' batches put side by
    side (process 0 first, as a mesh over all devices orders them) are exactly the one-process
    batches, and each record keeps the random generator it has there. A Grain sampler: local
    position j -> `RecordMetadata(index=j, record_key=..., rng=...)`.
    """

    _shard_options = grain.NoSharding()  # the DataLoader must not shard again

    def __init__(self, base, batch_size: int, index: int, count: int):
        if not 0 <= index < count:
            raise ValueError(f"process index {index} is not in [0, {count}).")
        self._base, self._b, self._p, self._n = base, int(batch_size), int(index), int(count)

    def _global(self, j: int) -> int:
        s, r = divmod(int(j), self._b)
        return s * self._b * self._n + self._p * self._b + r

    def __len__(self) -> int:
        total = len(self._base)
        full, rem = divmod(total, self._b * self._n)
        return full * self._b + min(self._b, max(0, rem - self._p * self._b))

    def __getitem__(self, j: int):
        if j < 0 or j >= len(self):
            raise IndexError(f"index {j} is out of bounds for this process's {len(self)} rows.")
        md = self._base[self._global(j)]
        return grain.RecordMetadata(index=j, record_key=md.record_key, rng=md.rng)

    def __repr__(self) -> str:
        return (f"BatchSliceSampler({self._base!r}, batch_size={self._b}, index={self._p}, "
                f"count={self._n})")
