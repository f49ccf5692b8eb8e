"""NIH ChestX-ray14: `read_nih`, `parse_nih_box` and the NIH constants.

A dataset folder holds up to four files, read in this order: the split lists
(``train_val_list.txt``, ``test_list.txt``), the Data_Entry label CSV (one record per row), then
``BBox_List_2017.csv``, whose boxes are attached to the records they name. The published quirks
handled here: Data_Entry's bracketed headers split by the comma into two columns each (see
`cxr_jax.data.records._csv.Header`), "Infiltrate" in the box list where the labels say
"Infiltration", and the early 2017 CSV's ages written like ``058Y``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

from cxr_jax.data.records._csv import (Header, Problems, parse_float, parse_int, parse_sex,
                                       parsed_rows, read_header, read_rows)
from cxr_jax.data.records._schema import Box, Labels, Record, label_index

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

_NIH_INDEX = label_index(NIH_FINDINGS)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMDW]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
#: Where each listed image's split came from: name -> (split, list file, line).
_Splits = dict[str, tuple[str, str, int]]


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
    fx, fy, fw, fh = (parse_float(str(v), c) for v, c in zip((x, y, w, h), "xywh"))
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


def _read_split_list(path: str, split: str, problems: Problems, splits: _Splits) -> None:
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


def _read_splits(root: str, problems: Problems) -> _Splits:
    """The official split lists found in ``root``; an image may be listed once in all."""
    splits: _Splits = {}
    for split, fname in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        p = os.path.join(root, fname)
        if os.path.isfile(p):
            _read_split_list(p, split, problems, splits)
    return splits


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
    problems = Problems("read_nih", lenient)
    entry_path = os.fspath(data_entry) if data_entry is not None else _find(
        root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz",
               "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"], True)
    box_path = os.fspath(bbox_list) if bbox_list is not None else _find(
        root, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], False)

    splits = _read_splits(root, problems)
    records, index, skipped = _read_entries(entry_path, os.path.join(root, "images"), splits,
                                            problems)

    def absent(name: str) -> str:  # why a listed or boxed image has no record
        if name in skipped:
            return f"image {name!r} was skipped as a bad row (line {skipped[name]} of {entry_path})"
        return f"image {name!r} is not in {entry_path}"

    for name, (split, path, line_no) in splits.items():
        if name not in index:
            problems.report(path, line_no, absent(name))
    if box_path is not None:
        _attach_boxes(box_path, records, index, absent, problems)
    problems.finish()
    return records


def _read_entries(path: str, images_dir: str, splits: _Splits, problems: Problems
                  ) -> tuple[list[Record], dict[str, int], dict[str, int]]:
    """Read the Data_Entry CSV.

    Returns:
      The records in file order, image name -> position in that list, and image name -> line of
      each row skipped as bad (lenient mode).
    """
    rows = read_rows(path)
    head = read_header(rows, path)
    records: list[Record] = []
    index: dict[str, int] = {}
    skipped: dict[str, int] = {}
    parse = _entry_parser(head, images_dir, splits, records, index)
    c_img = head.find("Image Index")[0]

    def skip(line: int, row: list[str]) -> None:
        if len(row) > c_img:
            skipped[row[c_img].strip()] = line

    for name, rec in parsed_rows(rows, head, parse, problems, on_skip=skip):
        index[name] = len(records)
        records.append(rec)
    return records, index, skipped


def _entry_parser(head: Header, images_dir: str, splits: _Splits, records: list[Record],
                  index: dict[str, int]) -> Callable[[list[str], int], tuple[str, Record]]:
    """Find the Data_Entry columns; return the row parser ``(row, line) -> (name, record)``.

    The parser reads ``records`` and ``index`` (filled by the caller) to reject repeated images.
    """
    path = head.path
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
            raise ValueError(f"{path}: header group {what} has {group[1]} columns, not 2")
    label_cache: dict[str, Labels] = {}
    pair_cache: dict[tuple[str, str], tuple] = {}
    prefix = images_dir + os.sep

    def parse(row: list[str], line: int) -> tuple[str, Record]:
        name = row[c_img].strip()
        if not name:
            raise ValueError("empty Image Index")
        if name in index:
            raise ValueError(f"image {name!r} appears twice (first on line "
                             f"{records[index[name]].line})")
        labels = _nih_labels(row[c_lab].strip(), label_cache)
        meta: dict[str, Any] = {}
        if c_fup is not None:
            meta["follow_up"] = parse_int(row[c_fup[0]], "Follow-up #")
        if c_size is not None:
            meta["original_size"] = _pair(row, c_size[0], int, "OriginalImage", pair_cache)
        if c_spacing is not None:
            meta["pixel_spacing"] = _pair(row, c_spacing[0], float,
                                          "OriginalImagePixelSpacing", pair_cache)
        split = splits.get(name)
        return name, Record(
            path=prefix + name,
            labels=labels,
            patient_id=row[c_pid].strip() or None,
            view=row[c_view].strip().upper() or None,
            split=split[0] if split else None,
            age=_nih_age(row[c_age[0]]) if c_age is not None else None,
            sex=parse_sex(row[c_sex[0]]) if c_sex is not None else None,
            frame_size=NIH_FRAME,
            source=path,
            line=line,
            meta=meta,
        )

    return parse


def _pair(row: list[str], start: int, kind: type, what: str, cache: dict) -> tuple:
    key = (row[start], row[start + 1])
    hit = cache.get(key)
    if hit is None:
        conv = parse_int if kind is int else parse_float
        hit = cache[key] = (conv(key[0].strip(), what), conv(key[1].strip(), what))
    return hit


def _attach_boxes(box_path: str, records: list[Record], index: dict[str, int],
                  absent: Callable[[str], str], problems: Problems) -> None:
    """Read BBox_List_2017 and give each record its boxes (in place, in file order).

    A box must name an image that has a record (``absent(name)`` says why one does not) and a
    finding that image is labelled with.
    """
    rows = read_rows(box_path)
    head = read_header(rows, box_path)
    c_img = head.find("Image Index")[0]
    c_lab = head.find("Finding Label")[0]
    c_box, c_width = head.find("Bbox [x,y,w,h]")
    if c_width != 4:
        raise ValueError(f"{box_path}: header group 'Bbox [x,y,w,h]' has {c_width} "
                         "columns, not 4")

    def parse(row: list[str], line: int) -> tuple[int, Box]:
        name = row[c_img].strip()
        i = index.get(name)
        if i is None:
            raise ValueError(f"box for an absent image: {absent(name)}")
        box = parse_nih_box(row[c_lab], *row[c_box:c_box + 4])
        if records[i].labels[box.label] != 1.0:
            raise ValueError(f"box labelled {box.label!r} but the image's Finding "
                             f"Labels do not include it (line {records[i].line} of "
                             f"{records[i].source})")
        return i, box

    boxes: dict[int, list[Box]] = {}
    for i, box in parsed_rows(rows, head, parse, problems):
        boxes.setdefault(i, []).append(box)
    for i, bs in boxes.items():
        records[i] = dataclasses.replace(records[i], boxes=tuple(bs))
