"""Preprocessed datasets as ArrayRecord shards: decode and resize every image once.

Training on NIH ChestX-ray14 or CheXpert decodes and resizes a PNG or JPEG per item per epoch.
`write_shards` does it once: each item of a list of records becomes one ArrayRecord entry
(image [S, S, 1] float32 exactly as `RecordSource` gives it, labels [K], valid, and the boxes at
the output size [M, 4] with their label indices [M], -1 for a label outside the names), and
`ShardSource` reads them back as a Grain random-access source with the same rows as the
`RecordSource` of the same records (tested).

Layout: DIR/meta.json (names, size, intensity, row count, shard count) and
DIR/shard-SSSSS-of-NNNNN.array_record, shard s holding records [s N / n, (s + 1) N / n) in
order. Deterministic: the same records and settings give the same bytes. Resumable: a shard is
written to a temporary name and renamed when complete, and existing shards are skipped. Several
processes (hosts) split the work: process p of P writes the shards s with s % P == p.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Sequence

import grain.python as grain
import numpy as np

from cxr_jax.common.files import write_json
from cxr_jax.data.loader import RecordSource

_FIELDS = ("image", "labels", "valid", "boxes", "box_labels")


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}.array_record"


def _encode(row: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(row[k]) for k in _FIELDS})
    return buf.getvalue()


def _decode(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in _FIELDS}


def _row(rec, names: Sequence[str], size: int, intensity: str) -> dict:
    """One record decoded and preprocessed once: `RecordSource`'s row and the boxes."""
    row, bs = RecordSource([rec], names, image_size=size, intensity=intensity).item(0)
    boxes = np.array([[b.x0, b.y0, b.x1, b.y1] for b in bs], np.float32).reshape(-1, 4)
    box_labels = np.array([list(names).index(b.label) if b.label in names else -1
                           for b in bs], np.int32)
    return {**row, "boxes": boxes, "box_labels": box_labels}


def write_shards(records: Sequence[Any], label_names: Sequence[str], out_dir: str, *,
                 image_size: int, num_shards: int, intensity: str = "xrv",
                 process_index: int = 0, process_count: int = 1,
                 progress=None) -> dict:
    """Writes this process's shards of `records` (see the module docstring); returns meta.

    Args:
      records: dataset records (`cxr_jax.data.records`), in the order the shards keep.
      label_names: the K label names (the order of `labels`).
      out_dir: output folder.
      image_size, intensity: the preprocessing (`RecordSource`'s).
      num_shards: how many files (e.g. enough for a few hundred MB each).
      process_index, process_count: this process's share (shards s % count == index).
      progress: optional callable(done_shards, total_shards) after each shard.
    Raises:
      ValueError: out_dir holds shards of other settings (its meta.json differs).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    os.makedirs(out_dir, exist_ok=True)
    n = len(records)
    meta = {"label_names": list(label_names), "image_size": int(image_size),
            "intensity": intensity, "num_rows": n, "num_shards": int(num_shards),
            "fields": list(_FIELDS)}
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(f"{out_dir} holds shards of other settings ({old}); use a new "
                             f"folder or delete it.")
    elif process_index == 0:
        write_json(meta_path, meta)
    mine = [s for s in range(num_shards) if s % process_count == process_index]
    for done, s in enumerate(mine, 1):
        path = os.path.join(out_dir, shard_name(s, num_shards))
        if not os.path.exists(path):
            tmp = path + ".tmp"
            writer = ArrayRecordWriter(tmp, "group_size:1")
            for i in range(s * n // num_shards, (s + 1) * n // num_shards):
                writer.write(_encode(_row(records[i], label_names, image_size, intensity)))
            writer.close()
            os.replace(tmp, path)
        if progress is not None:
            progress(done, len(mine))
    return meta


class ShardSource(grain.RandomAccessDataSource):
    """The rows `write_shards` wrote, as a Grain random-access source (training reads it
    instead of a `RecordSource`: nothing is decoded from PNG again)."""

    def __init__(self, out_dir: str):
        meta_path = os.path.join(out_dir, "meta.json")
        if not os.path.exists(meta_path):
            raise ValueError(f"No meta.json in {out_dir!r}: prepare the shards first "
                             f"(python -m experiments.prepare).")
        with open(meta_path) as f:
            self.meta = json.load(f)
        n = self.meta["num_shards"]
        paths = [os.path.join(out_dir, shard_name(s, n)) for s in range(n)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"{len(missing)} of {n} shards are missing in {out_dir!r} (e.g. "
                             f"{os.path.basename(missing[0])}): the preparation has not "
                             f"finished; rerun it, it resumes.")
        self._source = grain.ArrayRecordDataSource(paths)
        if len(self._source) != self.meta["num_rows"]:
            raise ValueError(f"{out_dir!r} holds {len(self._source)} rows, meta.json says "
                             f"{self.meta['num_rows']}.")
        self.label_names = tuple(self.meta["label_names"])

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return (f"ShardSource({self.meta['num_rows']} rows in {self.meta['num_shards']} shards, "
                f"image_size={self.meta['image_size']})")

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{"image", "labels", "valid"}: `RecordSource`'s row (fixed shapes, batchable)."""
        row = self.item(index)
        return {"image": row["image"], "labels": row["labels"], "valid": row["valid"]}

    def item(self, index: int) -> dict[str, np.ndarray]:
        """The whole entry: also "boxes" [M, 4] (x0, y0, x1, y1 at the output size) and
        "box_labels" [M] (indices into `label_names`, -1 for another label)."""
        row = _decode(self._source[index])
        return {**row, "valid": row["valid"][()]}
