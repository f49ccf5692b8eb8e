"""The record schema every reader produces: `Box`, `Shape`, `Labels`, `Record`, `label_matrix`.

Nothing here knows a file format. The dataset modules build records from these types, and
`cxr_jax.data.images` consumes them (boxes and shapes follow crops and resizes).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

NAN = float("nan")
#: The shared empty ``meta`` of records that carry no extras.
EMPTY_META: Mapping[str, Any] = MappingProxyType({})


class Box(NamedTuple):
    """An axis-aligned box in continuous pixel coordinates (origin at the top-left image corner).

    Pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``, so a box ``(0, 0, W, H)`` covers a
    whole ``W x H`` image. Invariant: ``x0 < x1`` and ``y0 < y1``.
    """

    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


class Shape(NamedTuple):
    """An Object-CXR annotation shape: ``kind`` in {"rectangle", "ellipse", "polygon"}.

    ``points`` is the flat published coordinate list ``(x1, y1, x2, y2, ...)``: the two corners of
    the bounding box for rectangles and ellipses, the vertices for polygons.
    """

    kind: str
    points: tuple[float, ...]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x0, y0, x1, y1)`` of the shape (of the vertices for a polygon)."""
        xs, ys = self.points[0::2], self.points[1::2]
        return (min(xs), min(ys), max(xs), max(ys))


_INDEX_CACHE: dict[tuple[str, ...], dict[str, int]] = {}


def label_index(names: tuple[str, ...]) -> dict[str, int]:
    """The shared name -> position index of a label set (one dict per distinct name tuple)."""
    index = _INDEX_CACHE.get(names)
    if index is None:
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names in {names!r}")
        index = _INDEX_CACHE.setdefault(names, {n: i for i, n in enumerate(names)})
    return index


def _check_label_value(name: str, v: float) -> float:
    v = float(v)
    if not (v == 0.0 or v == 1.0 or v != v):
        raise ValueError(f"label {name!r} has value {v!r}; labels must be 1.0, 0.0 or NaN")
    return v


class Labels(Mapping):
    """Read-only mapping finding -> 1.0 (present), 0.0 (absent) or NaN (unknown).

    Behaves like the ``dict`` of the public contract (``labels["Cardiomegaly"]``, ``.items()``,
    ``dict(labels)``) but holds only a shared name index and a tuple of values, and readers share
    one instance between all records with equal labels. Equality treats NaN as equal to NaN.

    Args:
      data: a mapping or an iterable of ``(name, value)`` pairs.
    """

    __slots__ = ("_index", "_values")

    def __init__(self, data: Mapping[str, float] | Iterable[tuple[str, float]] = ()):
        items = list(data.items() if isinstance(data, Mapping) else data)
        names = tuple(str(k) for k, _ in items)
        self._index = label_index(names)
        self._values = tuple(_check_label_value(k, v) for k, v in items)

    @classmethod
    def _make(cls, index: dict[str, int], values: tuple[float, ...]) -> "Labels":
        self = object.__new__(cls)
        self._index = index
        self._values = values
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._index)

    def __getitem__(self, name: str) -> float:
        return self._values[self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Mapping) else False
        for k, v in zip(self._index, self._values):
            if k not in other:
                return False
            w = other[k]
            if not (v == w or (v != v and w != w)):
                return False
        return True

    def __hash__(self) -> int:
        return hash((tuple(self._index), tuple(None if v != v else v for v in self._values)))

    def __repr__(self) -> str:
        return f"Labels({dict(zip(self._index, self._values))!r})"


@dataclass(frozen=True, slots=True)
class Record:
    """One image of a dataset and everything the readers know about it.

    Attributes:
      path: image file path (``root`` joined with the published relative path, or the published
        path unchanged when no root was given).
      labels: finding -> 1.0 | 0.0 | NaN (`Labels`, or any mapping).
      boxes: `Box` tuple in the pixel frame ``frame_size`` (the original image's pixels when
        ``frame_size`` is None); ``x0 < x1``, ``y0 < y1``.
      severity: six BrixIA zone scores (A-F, each 0-3) or None.
      patient_id, view ("PA", "AP", "LL", "RL", "LATERAL"), split ("train_val", "test", "train",
        "valid", "consensus_test", ...), photometric ("MONOCHROME1" images are inverted on
        decode), age (years), sex ("M" / "F"): None when the dataset does not say.
      frame_size: ``(width, height)`` of the frame that ``boxes`` are expressed in, e.g. NIH's
        1024x1024; `cxr_jax.data.images` rescales boxes from it to the decoded image's size.
      source, line: the annotation file and line this record was read from (for error messages).
      meta: dataset-specific extras (NIH follow-up number and original size, BrixIA global score,
        Object-CXR shapes, ...).
    """

    path: str
    labels: Mapping[str, float]
    boxes: tuple[Box, ...] = ()
    severity: tuple[int, ...] | None = None
    patient_id: str | None = None
    view: str | None = None
    split: str | None = None
    photometric: str | None = None
    age: float | None = None
    sex: str | None = None
    frame_size: tuple[int, int] | None = None
    source: str | None = None
    line: int | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: EMPTY_META, hash=False)

    def __post_init__(self):
        if self.boxes:
            boxes = tuple(self.boxes)
            for b in boxes:
                if not isinstance(b, Box):
                    raise ValueError(f"{self.path}: boxes must be Box tuples, got {b!r}")
                if not (b.x0 < b.x1 and b.y0 < b.y1):
                    raise ValueError(f"{self.path}: box {b!r} is empty or inverted; "
                                     "boxes need x0 < x1 and y0 < y1")
            if not isinstance(self.boxes, tuple):
                object.__setattr__(self, "boxes", boxes)
        if self.severity is not None:
            sev = tuple(int(s) for s in self.severity)
            if len(sev) != 6:
                raise ValueError(f"{self.path}: severity must have 6 zone scores, got {sev!r}")
            if not isinstance(self.severity, tuple) or sev != self.severity:
                object.__setattr__(self, "severity", sev)


def label_matrix(records: Sequence[Record], names: Sequence[str]) -> np.ndarray:
    """Stack the records' labels into an array; names a record lacks become NaN.

    Args:
      records: N records.
      names: K finding names (the column order).

    Returns:
      float32 array [N, K] with values 1.0, 0.0 or NaN.
    """
    names = tuple(names)
    rows: dict[int, tuple[float, ...]] = {}
    out = np.empty((len(records), len(names)), np.float32)
    for i, rec in enumerate(records):
        lab = rec.labels
        row = rows.get(id(lab))
        if row is None:
            row = tuple(float(lab.get(n, NAN)) for n in names)
            if isinstance(lab, Labels):  # shared and immutable: safe to memoise by identity
                rows[id(lab)] = row
        out[i] = row
    return out
