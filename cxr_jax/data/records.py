"""Readers for the published chest X-ray datasets, all into one `Record` type.

Four formats are read exactly as their publishers distribute them, quirks included:

* NIH ChestX-ray14 (`read_nih`): ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``
  (optionally gzipped), whose bracketed headers ``OriginalImage[Width,Height]`` and
  ``OriginalImagePixelSpacing[x,y]`` are split by the comma into two columns each;
  ``BBox_List_2017.csv``, whose header ends in three empty columns that the rows lack, with
  ``"Infiltrate"`` where the labels say ``"Infiltration"``; the official split lists
  ``train_val_list.txt`` / ``test_list.txt``.
* CheXpert and CheXphoto (`read_chexpert`): 14 observations valued 1, 0, -1 (uncertain) or blank
  (not mentioned), with the U-Ignore / U-Zeros / U-Ones uncertainty policies.
* Object-CXR (`read_object_cxr`): one annotation string per image, objects separated by ``;``,
  each ``TYPE x1 y1 x2 y2 ...`` with TYPE 0 rectangle, 1 ellipse, 2 polygon.
* BrixIA (`read_brixia`): semicolon-separated with a UTF-8 byte-order mark; the six-zone
  ``BrixiaScore`` is a six-digit string (leading zeros restored if a tool made it an integer)
  whose digit sum must equal ``BrixiaScoreGlobal``.

Bad input never passes silently. A malformed row, a missing column, an unknown label or a box
outside the image raises ``ValueError("<file>, line <n>: <problem> ...")``; with
``lenient=True`` the bad row is skipped instead and all skipped rows of one call are counted in a
single `warnings.warn`. A missing required column is always an error.

Speed and memory: plain `csv` over (g)zipped text, with each distinct label combination parsed
once; a record's label mapping is a compact `Labels` object shared by every record with the same
values. The full NIH CSV (112,120 rows) reads in about 1 s of CPU and holds about 65 MB; the
CheXpert train CSV (223,414 rows) in about 1.7 s and 100 MB (mostly the path strings).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import operator
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Box",
    "Shape",
    "Labels",
    "Record",
    "NIH_FINDINGS",
    "NIH_FRAME",
    "NIH_BOX_ALIASES",
    "CHEXPERT_OBSERVATIONS",
    "CHEXPERT_POLICIES",
    "CHEXPERT_BLANKS",
    "OBJECT_CXR_LABEL",
    "BRIXIA_ZONES",
    "read_nih",
    "read_chexpert",
    "read_object_cxr",
    "read_brixia",
    "parse_nih_box",
    "parse_object_cxr_annotation",
    "format_object_cxr_annotation",
    "parse_brixia_score",
    "label_matrix",
]

NAN = float("nan")

#: The 14 NIH ChestX-ray14 findings, in the order of the NIH paper and TorchXRayVision's NIH set.
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
#: NIH boxes are given in the 1024x1024 frame of the distributed PNGs: (width, height).
NIH_FRAME = (1024, 1024)
#: Names in BBox_List_2017.csv that differ from the Data_Entry label names.
NIH_BOX_ALIASES = MappingProxyType({"Infiltrate": "Infiltration"})
#: The 14 CheXpert/CheXphoto observations, in CSV column order.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
#: Uncertainty policies for CheXpert's -1 ("uncertain"): U-Ignore, U-Zeros, U-Ones.
CHEXPERT_POLICIES = ("ignore", "zeros", "ones")
#: Treatments of CheXpert's blank ("not mentioned") cells.
CHEXPERT_BLANKS = ("zeros", "nan", "xrv")
#: The one finding of Object-CXR.
OBJECT_CXR_LABEL = "Foreign Object"
#: BrixIA zones in BrixiaScore digit order.
BRIXIA_ZONES = ("A", "B", "C", "D", "E", "F")

_EMPTY_META: Mapping[str, Any] = MappingProxyType({})
_SHAPE_KINDS = {"0": "rectangle", "1": "ellipse", "2": "polygon"}
_SHAPE_CODES = {v: k for k, v in _SHAPE_KINDS.items()}


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------

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


def _index_for(names: tuple[str, ...]) -> dict[str, int]:
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
        self._index = _index_for(names)
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
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_META, hash=False)

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


# --------------------------------------------------------------------------------------------
# CSV plumbing: opening, headers, row problems
# --------------------------------------------------------------------------------------------

def _open_text(path: str) -> io.TextIOBase:
    """Open a text table, gunzipping when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


class _Problems:
    """Collects bad rows: raises at the first one, or (lenient) counts them for one warning."""

    def __init__(self, reader: str, lenient: bool):
        self.reader = reader
        self.lenient = lenient
        self.items: list[str] = []

    def report(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        if not self.lenient:
            raise ValueError(f"{where}: {problem} (fix the row, or pass lenient=True to "
                             f"{self.reader} to skip bad rows with a warning)")
        self.items.append(f"{where}: {problem}")

    def finish(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:3]) + ("; ..." if len(self.items) > 3 else "")
            warnings.warn(f"{self.reader}: skipped {len(self.items)} bad row(s) because "
                          f"lenient=True: {shown}", stacklevel=3)


def _norm(name: str) -> str:
    return re.sub(r"\s+", "", name).lower()


class _Header:
    """Column positions of a CSV header, with bracketed multi-column groups merged.

    ``OriginalImage[Width,Height]`` arrives either split by the CSV comma into
    ``OriginalImage[Width`` and ``Height]`` (as published) or quoted as one field; both become one
    named group of two data columns. Trailing empty header fields are dropped.
    """

    def __init__(self, fields: list[str], path: str):
        fields = [f.strip() for f in fields]
        while fields and not fields[-1]:
            fields.pop()
        self.path = path
        self.columns: dict[str, tuple[int, int]] = {}
        self.names: list[str] = []
        pos = i = 0
        while i < len(fields):
            f = fields[i]
            if "[" in f and "]" not in f:
                j = i
                while j < len(fields) and "]" not in fields[j]:
                    j += 1
                if j == len(fields):
                    raise ValueError(f"{path}, line 1: header field {f!r} opens a bracket that "
                                     "never closes")
                name, width, i = ",".join(fields[i:j + 1]), j - i + 1, j + 1
            elif "[" in f and "]" in f and "," in f[f.index("["):]:
                name, width, i = f, f[f.index("["):].count(",") + 1, i + 1
            else:
                name, width, i = f, 1, i + 1
            key = _norm(name)
            if key and key in self.columns:
                raise ValueError(f"{path}, line 1: column {name!r} appears twice in the header")
            if key:
                self.columns[key] = (pos, width)
                self.names.append(name)
                if "[" in key:  # a group is also found by its base name, whatever its parts
                    self.columns.setdefault(key[:key.index("[")] + "[", (pos, width))
            pos += width
        self.width = pos

    def find(self, *names: str, required: bool = True) -> tuple[int, int] | None:
        for n in names:
            key = _norm(n)
            hit = self.columns.get(key)
            if hit is None and "[" in key:
                hit = self.columns.get(key[:key.index("[")] + "[")
            if hit is not None:
                return hit
        if required:
            raise ValueError(f"{self.path}: missing column {names[0]!r} (header has "
                             f"{self.names}); is this the right file?")
        return None

    def check_row(self, row: list[str]) -> None:
        if len(row) == self.width:
            return
        if len(row) < self.width:
            raise ValueError(f"row has {len(row)} fields, the header needs {self.width}")
        if len(row) > self.width and any(f.strip() for f in row[self.width:]):
            raise ValueError(f"row has {len(row)} non-empty fields, the header has {self.width}")


def _rows(path: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for every non-blank row; the header is the first yield."""
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            for row in reader:
                # Skip blank lines (also ",,,"); the first field decides for almost every row.
                if row and (row[0].strip() or any(x.strip() for x in row)):
                    yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); is this the right file?") from e
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e})") from e
    except (EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def _header_of(rows: Iterator[tuple[int, list[str]]], path: str) -> _Header:
    try:
        _, fields = next(rows)
    except StopIteration:
        raise ValueError(f"{path}: the file is empty; expected a CSV header") from None
    return _Header(fields, path)


def _int(value: str, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not an integer") from None


def _float(value: str, column: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{column} {value!r} is not a finite number")
    return v


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


_SEX_RAW = {"M": "M", "F": "F", "Male": "M", "Female": "F"}


def _sex(value: str) -> str | None:
    hit = _SEX_RAW.get(value)
    return hit if hit is not None else _SEX.get(value.strip().lower())  # "Unknown" -> None


def _join(root: str | os.PathLike | None, rel: str) -> str:
    return rel if root is None else os.path.join(os.fspath(root), rel)


# --------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# --------------------------------------------------------------------------------------------

_NIH_INDEX = _index_for(NIH_FINDINGS)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMDW]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _nih_age(value: str) -> float | None:
    """Patient Age: numeric years (2020 CSV) or '058Y' / '006M' / '020D' (early 2017 CSV)."""
    if not value.strip():
        return None
    m = _AGE.match(value)
    if not m:
        raise ValueError(f"Patient Age {value!r} is neither a number nor like '058Y'")
    return float(m.group(1)) * _AGE_UNIT[m.group(2).upper()]


def _nih_labels(text: str, cache: dict[str, Labels]) -> Labels:
    lab = cache.get(text)
    if lab is not None:
        return lab
    names = [n.strip() for n in text.split("|")]
    values = [0.0] * len(NIH_FINDINGS)
    if names == ["No Finding"]:
        pass
    else:
        for n in names:
            if n == "No Finding":
                raise ValueError(f"'No Finding' combined with findings in {text!r}")
            i = _NIH_INDEX.get(n)
            if i is None:
                hint = " (is the column empty?)" if not n else ""
                raise ValueError(f"unknown finding {n!r} in Finding Labels {text!r}{hint}; "
                                 f"known: No Finding, {', '.join(NIH_FINDINGS)}")
            values[i] = 1.0
    lab = cache[text] = Labels._make(_NIH_INDEX, tuple(values))
    return lab


def parse_nih_box(label: str, x: str | float, y: str | float, w: str | float, h: str | float,
                  *, frame: tuple[int, int] = NIH_FRAME) -> Box:
    """Parse one BBox_List_2017 row into a `Box` in the NIH 1024x1024 frame.

    ``Box = (x, y, x + w, y + h)``; "Infiltrate" becomes "Infiltration" (`NIH_BOX_ALIASES`).

    Args:
      label: the ``Finding Label`` cell.
      x, y, w, h: the four ``Bbox [x,y,w,h]`` cells (strings or numbers), in pixels of ``frame``.
      frame: ``(width, height)`` the box must lie in.

    Returns:
      The `Box`. Raises ValueError for an unknown label, non-numeric or non-positive sizes, or a
      box that leaves the frame.
    """
    name = NIH_BOX_ALIASES.get(label.strip(), label.strip())
    if name not in _NIH_INDEX:
        raise ValueError(f"unknown box label {label!r}; known: {', '.join(NIH_FINDINGS)} "
                         f"(and the alias 'Infiltrate')")
    fx, fy, fw, fh = (_float(str(v), c) for v, c in zip((x, y, w, h), "xywh"))
    if fw <= 0 or fh <= 0:
        raise ValueError(f"box size w={fw!r}, h={fh!r} is not positive")
    x1, y1 = fx + fw, fy + fh
    if fx < 0 or fy < 0 or x1 > frame[0] or y1 > frame[1]:
        raise ValueError(f"box x={fx}, y={fy}, w={fw}, h={fh} lies outside the "
                         f"{frame[0]}x{frame[1]} image")
    return Box(name, fx, fy, x1, y1)


def _find(root: str, names: Sequence[str], required: bool) -> str | None:
    for n in names:
        p = os.path.join(root, n)
        if os.path.isfile(p):
            return p
    if required:
        raise FileNotFoundError(f"none of {list(names)} found in {root!r}; point read_nih at the "
                                "ChestX-ray14 folder that holds the label CSV")
    return None


def _read_split_list(path: str, split: str, problems: _Problems,
                     splits: dict[str, tuple[str, str, int]]) -> None:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    for line_no, raw in enumerate(lines, start=1):
        name = raw.strip()
        if not name:
            continue
        if name in splits:
            _, other_path, other_line = splits[name]
            problems.report(path, line_no, f"image {name!r} is already listed in "
                                           f"{other_path}, line {other_line}")
            continue
        splits[name] = (split, path, line_no)


def read_nih(root: str | os.PathLike, *, lenient: bool = False,
             data_entry: str | os.PathLike | None = None,
             bbox_list: str | os.PathLike | None = None) -> list[Record]:
    """Read NIH ChestX-ray14 labels, boxes and the official split from a dataset folder.

    Files looked for in ``root`` (``.gz`` versions too): ``Data_Entry_2017_v2020.csv`` (preferred,
    corrected ages) or ``Data_Entry_2017.csv`` (required); ``BBox_List_2017.csv``,
    ``train_val_list.txt`` and ``test_list.txt`` (optional). Images are ``root/images/<Image Index>``.

    Labels: the 14 `NIH_FINDINGS`, 1.0 when listed in ``Finding Labels`` and 0.0 otherwise
    ("No Finding" = all 0.0). Boxes: in the 1024x1024 frame (``frame_size=(1024, 1024)``) of the
    distributed PNGs, "Infiltrate" read as "Infiltration"; a box must name a finding its image is
    labelled with. Split: "train_val" / "test" from the official lists (None when the lists are
    absent). Views PA and AP are both kept. ``meta`` holds ``follow_up``, ``original_size``
    ``(width, height)`` and ``pixel_spacing`` ``(x, y)`` when the CSV has them.

    Args:
      root: the ChestX-ray14 folder.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.
      data_entry, bbox_list: explicit paths overriding the files looked for in ``root``.

    Returns:
      One `Record` per Data_Entry row, in file order.
    """
    root = os.fspath(root)
    problems = _Problems("read_nih", lenient)
    entry_path = os.fspath(data_entry) if data_entry is not None else _find(
        root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz",
               "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"], True)
    box_path = os.fspath(bbox_list) if bbox_list is not None else _find(
        root, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], False)

    splits: dict[str, tuple[str, str, int]] = {}
    for split, fname in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        p = os.path.join(root, fname)
        if os.path.isfile(p):
            _read_split_list(p, split, problems, splits)

    rows = _rows(entry_path)
    head = _header_of(rows, entry_path)
    c_img = head.find("Image Index")[0]
    c_lab = head.find("Finding Labels")[0]
    c_pid = head.find("Patient ID")[0]
    c_view = head.find("View Position")[0]
    c_fup = head.find("Follow-up #", required=False)
    c_age = head.find("Patient Age", required=False)
    c_sex = head.find("Patient Gender", "Patient Sex", required=False)
    c_size = head.find("OriginalImage[Width,Height]", required=False)
    c_spacing = head.find("OriginalImagePixelSpacing[x,y]", required=False)
    for group, what in ((c_size, "OriginalImage[Width,Height]"),
                        (c_spacing, "OriginalImagePixelSpacing[x,y]")):
        if group is not None and group[1] != 2:
            raise ValueError(f"{entry_path}: header group {what} has {group[1]} columns, not 2")

    images_dir = os.path.join(root, "images")
    label_cache: dict[str, Labels] = {}
    pair_cache: dict[tuple[str, str], tuple] = {}
    records: list[Record] = []
    index: dict[str, int] = {}
    skipped: dict[str, int] = {}
    width = head.width
    for line, row in rows:
        try:
            if len(row) != width:
                head.check_row(row)
            name = row[c_img].strip()
            if not name:
                raise ValueError("empty Image Index")
            if name in index:
                raise ValueError(f"image {name!r} appears twice (first on line "
                                 f"{records[index[name]].line})")
            labels = _nih_labels(row[c_lab].strip(), label_cache)
            meta: dict[str, Any] = {}
            if c_fup is not None:
                meta["follow_up"] = _int(row[c_fup[0]], "Follow-up #")
            if c_size is not None:
                meta["original_size"] = _pair(row, c_size[0], int, "OriginalImage", pair_cache)
            if c_spacing is not None:
                meta["pixel_spacing"] = _pair(row, c_spacing[0], float,
                                              "OriginalImagePixelSpacing", pair_cache)
            split = splits.get(name)
            rec = Record(
                path=images_dir + os.sep + name,
                labels=labels,
                patient_id=row[c_pid].strip() or None,
                view=row[c_view].strip().upper() or None,
                split=split[0] if split else None,
                age=_nih_age(row[c_age[0]]) if c_age is not None else None,
                sex=_sex(row[c_sex[0]]) if c_sex is not None else None,
                frame_size=NIH_FRAME,
                source=entry_path,
                line=line,
                meta=meta,
            )
        except ValueError as e:
            problems.report(entry_path, line, str(e))  # raises unless lenient
            if len(row) > c_img:
                skipped[row[c_img].strip()] = line
            continue
        index[name] = len(records)
        records.append(rec)

    def absent(name: str) -> str:
        if name in skipped:
            return f"image {name!r} was skipped as a bad row (line {skipped[name]} of {entry_path})"
        return f"image {name!r} is not in {entry_path}"

    for name, (split, path, line_no) in splits.items():
        if name not in index:
            problems.report(path, line_no, absent(name))

    if box_path is not None:
        boxes: dict[str, list[Box]] = {}
        rows = _rows(box_path)
        head = _header_of(rows, box_path)
        c_img = head.find("Image Index")[0]
        c_lab = head.find("Finding Label")[0]
        c_box = head.find("Bbox [x,y,w,h]")
        if c_box[1] != 4:
            raise ValueError(f"{box_path}: header group 'Bbox [x,y,w,h]' has {c_box[1]} "
                             "columns, not 4")
        for line, row in rows:
            try:
                head.check_row(row)
                name = row[c_img].strip()
                i = index.get(name)
                if i is None:
                    raise ValueError(f"box for an absent image: {absent(name)}")
                s = c_box[0]
                box = parse_nih_box(row[c_lab], *row[s:s + 4])
                if records[i].labels[box.label] != 1.0:
                    raise ValueError(f"box labelled {box.label!r} but the image's Finding "
                                     f"Labels do not include it (line {records[i].line} of "
                                     f"{entry_path})")
            except ValueError as e:
                problems.report(box_path, line, str(e))
                continue
            boxes.setdefault(name, []).append(box)
        for name, bs in boxes.items():
            i = index[name]
            records[i] = dataclasses.replace(records[i], boxes=tuple(bs))
    problems.finish()
    return records


def _pair(row: list[str], start: int, kind: type, what: str, cache: dict) -> tuple:
    key = (row[start], row[start + 1])
    hit = cache.get(key)
    if hit is None:
        conv = _int if kind is int else _float
        hit = cache[key] = (conv(key[0].strip(), what), conv(key[1].strip(), what))
    return hit


# --------------------------------------------------------------------------------------------
# CheXpert / CheXphoto
# --------------------------------------------------------------------------------------------

_CHEX_INDEX = _index_for(CHEXPERT_OBSERVATIONS)
_CHEX_RAW = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}
_CHEX_SPLITS = ("train", "valid", "test")
_PATIENT = re.compile(r"(patient\d+)")


def _chexpert_labels(raw: tuple[str, ...], uncertain: float, blank_value: float,
                     xrv_healthy: bool) -> Labels:
    vals = []
    for name, cell in zip(CHEXPERT_OBSERVATIONS, raw):
        v = _CHEX_RAW.get(cell.strip(), "bad")
        if v == "bad":
            raise ValueError(f"{name} value {cell!r} is not one of 1.0, 0.0, -1.0 or blank")
        vals.append(blank_value if v is None else uncertain if v == -1.0 else v)
    if xrv_healthy and _CHEX_RAW[raw[0].strip()] == 1.0:
        keep = (_CHEX_INDEX["No Finding"], _CHEX_INDEX["Support Devices"])
        vals = [v if i in keep else 0.0 for i, v in enumerate(vals)]
    return Labels._make(_CHEX_INDEX, tuple(vals))


def _chexpert_info(sex: str | None, age: str | None, fl: str | None, appa: str | None
                   ) -> tuple[str | None, float | None, str | None]:
    """(sex, age, view) from the Sex, Age, Frontal/Lateral and AP/PA cells (None: no column)."""
    view = None
    if fl is not None:
        key = fl.strip().lower()
        if key == "lateral":
            view = "LATERAL"
        elif key == "frontal":
            view = (appa.strip().upper() or None) if appa is not None else None
        elif key:
            raise ValueError(f"Frontal/Lateral value {fl!r} is neither 'Frontal' nor 'Lateral'")
    years = None
    if age is not None and age.strip():
        years = _float(age.strip(), "Age")
        if years == 0:  # placeholder for unknown in the train CSV, as xrv reads it
            years = None
    return (_sex(sex) if sex is not None else None), years, view


def read_chexpert(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  policy: str = "zeros", blank: str = "zeros",
                  lenient: bool = False) -> list[Record]:
    """Read a CheXpert or CheXphoto label CSV (train.csv, valid.csv, ...; gzipped or not).

    Each of the 14 `CHEXPERT_OBSERVATIONS` is published as 1 (positive), 0 (negative), -1
    (uncertain) or blank (not mentioned in the report).

    Uncertain (-1), by ``policy`` (Irvin et al., 2019): "ignore" (U-Ignore) -> NaN, so the label is
    masked out of losses and metrics; "zeros" (U-Zeros) -> 0.0; "ones" (U-Ones) -> 1.0.

    Blank, by ``blank``:
      * "zeros" (default) -> 0.0: the CheXpert convention, where the labeler leaves an
        observation blank when the report does not mention it, which training treats as negative.
      * "nan" -> NaN: not mentioned is treated as unknown.
      * "xrv" -> TorchXRayVision's CheX_Dataset rule: blank -> NaN, except that in rows whose
        "No Finding" is 1 every observation but "No Finding" and "Support Devices" becomes 0.0
        (whatever its cell says). With ``policy="ignore"`` this reproduces xrv's labels exactly.

    Other columns: ``view`` is the AP/PA cell for frontal images ("AP", "PA", and the "LL"/"RL"
    that a few frontal rows carry) and "LATERAL" for lateral ones; ``sex`` "M"/"F"/None
    ("Unknown" -> None); ``age`` in years, with the placeholder age 0 (3 rows of the train CSV)
    read as None, as xrv does; ``patient_id`` "patientNNNNN" and ``split`` (train/valid/test) from
    the path.

    Args:
      csv_path: the label CSV.
      root: folder the CSV's ``Path`` column is relative to (the parent of
        ``CheXpert-v1.0-small/``); paths are kept as published when None.
      policy: one of `CHEXPERT_POLICIES`.
      blank: one of `CHEXPERT_BLANKS`.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.

    Returns:
      One `Record` per row, in file order.
    """
    if policy not in CHEXPERT_POLICIES:
        raise ValueError(f"policy={policy!r}; choose one of {CHEXPERT_POLICIES}")
    if blank not in CHEXPERT_BLANKS:
        raise ValueError(f"blank={blank!r}; choose one of {CHEXPERT_BLANKS}")
    csv_path = os.fspath(csv_path)
    uncertain = {"ignore": NAN, "zeros": 0.0, "ones": 1.0}[policy]
    blank_value = 0.0 if blank == "zeros" else NAN
    xrv_healthy = blank == "xrv"
    problems = _Problems("read_chexpert", lenient)

    rows = _rows(csv_path)
    head = _header_of(rows, csv_path)
    c_path = head.find("Path")[0]
    c_obs = [head.find(o)[0] for o in CHEXPERT_OBSERVATIONS]
    c_sex = head.find("Sex", required=False)
    c_age = head.find("Age", required=False)
    c_fl = head.find("Frontal/Lateral", required=False)
    c_appa = head.find("AP/PA", required=False)

    get_obs = operator.itemgetter(*c_obs)
    # Sex, age and view cells repeat a lot: parse each distinct combination once.
    c_info = [c[0] if c is not None else None for c in (c_sex, c_age, c_fl, c_appa)]
    get_info = operator.itemgetter(*[c if c is not None else c_path for c in c_info])
    cache: dict[tuple[str, ...], Labels] = {}
    info_cache: dict[tuple[str, ...], tuple] = {}
    records: list[Record] = []
    width = head.width
    prefix = None if root is None else os.fspath(root)
    for line, row in rows:
        try:
            if len(row) != width:
                head.check_row(row)
            rel = row[c_path].strip()
            if not rel:
                raise ValueError("empty Path")
            raw = get_obs(row)
            labels = cache.get(raw)
            if labels is None:
                labels = cache[raw] = _chexpert_labels(raw, uncertain, blank_value, xrv_healthy)
            cells = get_info(row)
            info = info_cache.get(cells)
            if info is None:
                info = info_cache[cells] = _chexpert_info(
                    *[cell if c is not None else None for cell, c in zip(cells, c_info)])
            parts = (rel.replace("\\", "/") if "\\" in rel else rel).split("/")
            if len(parts) >= 4 and parts[-3].startswith("patient") and parts[-4] in _CHEX_SPLITS:
                patient, split = parts[-3], parts[-4]  # .../train/patient00001/study1/x.jpg
            else:
                m = _PATIENT.search(rel)
                patient = m.group(1) if m else None
                split = next((p for p in parts if p in _CHEX_SPLITS), None)
            rec = Record(
                path=rel if prefix is None else os.path.join(prefix, rel),
                labels=labels,
                patient_id=patient,
                view=info[2],
                split=split,
                age=info[1],
                sex=info[0],
                source=csv_path,
                line=line,
            )
        except ValueError as e:
            problems.report(csv_path, line, str(e))
            continue
        records.append(rec)
    problems.finish()
    return records


# --------------------------------------------------------------------------------------------
# Object-CXR
# --------------------------------------------------------------------------------------------

def parse_object_cxr_annotation(text: str) -> tuple[Shape, ...]:
    """Parse an Object-CXR annotation string into shapes.

    Format: objects separated by ``;``, each ``TYPE x1 y1 x2 y2 ...`` (whitespace separated),
    TYPE 0 rectangle and 1 ellipse given by their bounding-box corners (``x1 < x2``, ``y1 < y2``),
    2 polygon given by its vertices; origin at the top-left corner. An empty string means no
    object; an empty segment (a trailing ``;``) is ignored.

    Args:
      text: the ``annotation`` cell.

    Returns:
      One `Shape` per object. Raises ValueError naming the object for an unknown type, a
      non-numeric or negative coordinate, an odd coordinate count, a rectangle/ellipse that is not
      exactly two ordered corners, or a polygon with fewer than 3 vertices or zero width/height.
    """
    shapes = []
    for k, seg in enumerate(text.split(";"), start=1):
        tokens = seg.split()
        if not tokens:
            continue
        kind = _SHAPE_KINDS.get(tokens[0])
        if kind is None:
            raise ValueError(f"object {k} ({seg.strip()!r}) has type {tokens[0]!r}; "
                             "expected 0 (rectangle), 1 (ellipse) or 2 (polygon)")
        try:
            pts = tuple(float(t) for t in tokens[1:])
        except ValueError:
            raise ValueError(f"object {k} ({seg.strip()!r}) has a non-numeric "
                             "coordinate") from None
        if not all(math.isfinite(p) for p in pts):
            raise ValueError(f"object {k} ({seg.strip()!r}) has a non-finite coordinate")
        if len(pts) % 2:
            raise ValueError(f"object {k} ({seg.strip()!r}) has an odd number of coordinates")
        if any(p < 0 for p in pts):
            raise ValueError(f"object {k} ({seg.strip()!r}) lies outside the image (negative "
                             "coordinate)")
        if kind != "polygon":
            if len(pts) != 4:
                raise ValueError(f"object {k}: a {kind} needs 4 coordinates x1 y1 x2 y2, got "
                                 f"{len(pts)}")
            if not (pts[0] < pts[2] and pts[1] < pts[3]):
                raise ValueError(f"object {k}: {kind} corners {pts} need x1 < x2 and y1 < y2")
        else:
            if len(pts) < 6:
                raise ValueError(f"object {k}: a polygon needs at least 3 vertices, got "
                                 f"{len(pts) // 2}")
            x0, y0, x1, y1 = Shape(kind, pts).box
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"object {k}: polygon {pts} has zero width or height")
        shapes.append(Shape(kind, pts))
    return tuple(shapes)


def format_object_cxr_annotation(shapes: Iterable[Shape]) -> str:
    """Write shapes back in the Object-CXR annotation format (inverse of the parser)."""
    return ";".join(
        " ".join([_SHAPE_CODES[s.kind]] + [format(p, "g") if p != int(p) else str(int(p))
                                           for p in s.points])
        for s in shapes)


def read_object_cxr(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                    masks: bool = False, lenient: bool = False) -> list[Record]:
    """Read an Object-CXR annotation CSV (train.csv / dev.csv): ``image_name,annotation``.

    Labels: ``{"Foreign Object": 1.0}`` when the annotation lists at least one object, else 0.0.
    Boxes: one `Box` per object, in the image's own pixels (``frame_size`` None), the bounding box
    of the rectangle, ellipse or polygon. With ``masks=True`` each record also keeps its exact
    shapes in ``meta["shapes"]`` (aligned with ``boxes``), which
    `cxr_jax.data.images.shape_masks` rasterises and `cxr_jax.data.images.load_record` follows
    through crop and resize.

    Args:
      csv_path: the annotation CSV (the image column may be called image_name or image_path).
      root: folder the image names are relative to (e.g. the ``train/`` folder); names are kept
        as published when None.
      masks: keep the exact shapes for mask rasterisation.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.

    Returns:
      One `Record` per row, in file order.
    """
    csv_path = os.fspath(csv_path)
    problems = _Problems("read_object_cxr", lenient)
    rows = _rows(csv_path)
    head = _header_of(rows, csv_path)
    c_img = head.find("image_name", "image_path")[0]
    c_ann = head.find("annotation")[0]
    index = _index_for((OBJECT_CXR_LABEL,))
    yes, no = Labels._make(index, (1.0,)), Labels._make(index, (0.0,))
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            # A row without any annotation may omit the trailing comma: ``name`` alone.
            if len(row) == head.width - 1 and c_ann == head.width - 1:
                row = row + [""]
            head.check_row(row)
            name = row[c_img].strip()
            if not name:
                raise ValueError("empty image name")
            if name in seen:
                raise ValueError(f"image {name!r} appears twice (first on line {seen[name]})")
            shapes = parse_object_cxr_annotation(row[c_ann])
            boxes = tuple(Box(OBJECT_CXR_LABEL, *s.box) for s in shapes)
            rec = Record(
                path=_join(root, name),
                labels=yes if shapes else no,
                boxes=boxes,
                source=csv_path,
                line=line,
                meta=MappingProxyType({"shapes": shapes}) if masks else _EMPTY_META,
            )
        except ValueError as e:
            problems.report(csv_path, line, str(e))
            continue
        seen[name] = line
        records.append(rec)
    problems.finish()
    return records


# --------------------------------------------------------------------------------------------
# BrixIA
# --------------------------------------------------------------------------------------------

def parse_brixia_score(score: str | int, global_score: str | int | None = None
                       ) -> tuple[int, ...]:
    """Parse a BrixIA score into six zone scores (zones A-F, each 0-3).

    The published ``BrixiaScore`` is a six-digit string such as ``"000102"``; a spreadsheet or a
    CSV library that read it as an integer dropped the leading zeros (``102``), which
    ``zfill(6)`` restores. When given, ``global_score`` must equal the digit sum (0-18).

    Args:
      score: the BrixiaScore cell (string or integer).
      global_score: the BrixiaScoreGlobal cell, or None to skip the check.

    Returns:
      Tuple of 6 ints. Raises ValueError for more than 6 digits, a non-digit, a zone above 3, or
      a global score that differs from the digit sum.
    """
    text = str(score).strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"BrixiaScore {score!r} is not a string of digits")
    if len(text) > 6:
        raise ValueError(f"BrixiaScore {score!r} has {len(text)} digits; expected 6 (zones A-F)")
    digits = tuple(int(c) for c in text.zfill(6))
    if max(digits) > 3:
        raise ValueError(f"BrixiaScore {score!r} has a zone score above 3")
    if global_score is not None:
        g = _int(str(global_score).strip(), "BrixiaScoreGlobal")
        if g != sum(digits):
            raise ValueError(f"BrixiaScoreGlobal {g} is not the digit sum {sum(digits)} of "
                             f"BrixiaScore {text.zfill(6)!r}")
    return digits


def read_brixia(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                lenient: bool = False) -> list[Record]:
    """Read BrixIA metadata (metadata_global_v2.csv): semicolon-separated, UTF-8 with BOM.

    ``severity``: the six zone scores from ``BrixiaScore`` (`parse_brixia_score`, leading zeros
    restored, checked against ``BrixiaScoreGlobal``). ``photometric``: ``PhotometricInterpretation``
    ("MONOCHROME1" images are inverted by `cxr_jax.data.images.load_image`). ``split``:
    "consensus_test" for the ``ConsensusTestset`` rows, else None. ``frame_size``: (Columns, Rows).
    ``labels`` is empty (BrixIA grades severity; every image is COVID-19 positive). ``meta``:
    ``global_score``, ``consensus_test``, ``study_id``, ``study_date``, ``modality``,
    ``manufacturer`` and ``age_group_5y`` (AgeAtStudyDateFiveYear, as published), where present.

    Args:
      csv_path: the metadata CSV.
      root: folder holding the DICOM files; ``Filename`` is kept as published when None.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.

    Returns:
      One `Record` per row, in file order.
    """
    csv_path = os.fspath(csv_path)
    problems = _Problems("read_brixia", lenient)
    rows = _rows(csv_path, delimiter=";")
    try:
        _, fields = next(rows)
    except StopIteration:
        raise ValueError(f"{csv_path}: the file is empty; expected a header") from None
    if len(fields) == 1 and "," in fields[0]:
        raise ValueError(f"{csv_path}: the header has no ';' but has ','; BrixIA metadata is "
                         "semicolon-separated; is this the right file?")
    head = _Header(fields, csv_path)
    c_file = head.find("Filename")[0]
    c_phot = head.find("PhotometricInterpretation")[0]
    c_score = head.find("BrixiaScore")[0]
    c_global = head.find("BrixiaScoreGlobal")[0]
    c_cons = head.find("ConsensusTestset")[0]
    optional = {key: head.find(col, required=False) for key, col in (
        ("study_id", "StudyId"), ("study_date", "StudyDate"), ("modality", "Modality"),
        ("manufacturer", "Manufacturer"), ("age_group_5y", "AgeAtStudyDateFiveYear"))}
    c_cols = head.find("Columns", required=False)
    c_rows = head.find("Rows", required=False)
    c_subj = head.find("Subject", required=False)
    c_sex = head.find("Sex", required=False)
    empty = Labels._make(_index_for(()), ())
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            head.check_row(row)
            name = row[c_file].strip()
            if not name:
                raise ValueError("empty Filename")
            if name in seen:
                raise ValueError(f"file {name!r} appears twice (first on line {seen[name]})")
            phot = row[c_phot].strip().upper()
            if phot not in ("MONOCHROME1", "MONOCHROME2"):
                raise ValueError(f"PhotometricInterpretation {row[c_phot]!r} is neither "
                                 "MONOCHROME1 nor MONOCHROME2")
            severity = parse_brixia_score(row[c_score], row[c_global])
            cons = row[c_cons].strip()
            if cons not in ("0", "1"):
                raise ValueError(f"ConsensusTestset {row[c_cons]!r} is neither 0 nor 1")
            meta: dict[str, Any] = {"global_score": sum(severity), "consensus_test": cons == "1"}
            for key, col in optional.items():
                if col is not None and row[col[0]].strip():
                    v = row[col[0]].strip()
                    meta[key] = _int(v, "AgeAtStudyDateFiveYear") if key == "age_group_5y" else v
            frame = None
            if c_cols is not None and c_rows is not None:
                frame = (_int(row[c_cols[0]].strip(), "Columns"),
                         _int(row[c_rows[0]].strip(), "Rows"))
                if frame[0] <= 0 or frame[1] <= 0:
                    raise ValueError(f"image size Columns x Rows = {frame} is not positive")
            rec = Record(
                path=_join(root, name),
                labels=empty,
                severity=severity,
                patient_id=(row[c_subj[0]].strip() or None) if c_subj else None,
                split="consensus_test" if cons == "1" else None,
                photometric=phot,
                sex=_sex(row[c_sex[0]]) if c_sex is not None else None,
                frame_size=frame,
                source=csv_path,
                line=line,
                meta=meta,
            )
        except ValueError as e:
            problems.report(csv_path, line, str(e))
            continue
        seen[name] = line
        records.append(rec)
    problems.finish()
    return records
