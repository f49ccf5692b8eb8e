"""Object-CXR (foreign objects): `read_object_cxr` and its annotation string format.

Each CSV row names an image and one annotation string listing its objects, each a rectangle,
ellipse or polygon; `parse_object_cxr_annotation` and `format_object_cxr_annotation` convert
between that string and `Shape` tuples.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from types import MappingProxyType

from cxr_jax.data.records._csv import (Problems, join_root, parsed_rows, read_header, read_rows,
                                       unique_cell)
from cxr_jax.data.records._schema import EMPTY_META, Box, Labels, Record, Shape, label_index

#: The one finding of Object-CXR.
OBJECT_CXR_LABEL = "Foreign Object"

_SHAPE_KINDS = {"0": "rectangle", "1": "ellipse", "2": "polygon"}
_SHAPE_CODES = {v: k for k, v in _SHAPE_KINDS.items()}


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
    problems = Problems("read_object_cxr", lenient)
    rows = read_rows(csv_path)
    head = read_header(rows, csv_path)
    c_img = head.find("image_name", "image_path")[0]
    c_ann = head.find("annotation")[0]
    index = label_index((OBJECT_CXR_LABEL,))
    yes, no = Labels._make(index, (1.0,)), Labels._make(index, (0.0,))
    records: list[Record] = []
    seen: dict[str, int] = {}

    def parse(row: list[str], line: int) -> tuple[str, Record]:
        name = unique_cell(row, c_img, seen, "image name", "image")
        shapes = parse_object_cxr_annotation(row[c_ann])
        return name, Record(
            path=join_root(root, name),
            labels=yes if shapes else no,
            boxes=tuple(Box(OBJECT_CXR_LABEL, *s.box) for s in shapes),
            source=csv_path,
            line=line,
            meta=MappingProxyType({"shapes": shapes}) if masks else EMPTY_META,
        )

    # A row without any annotation may omit the trailing comma: ``name`` alone.
    pad = c_ann == head.width - 1
    for name, rec in parsed_rows(rows, head, parse, problems, pad_last=pad):
        seen[name] = rec.line
        records.append(rec)
    problems.finish()
    return records
