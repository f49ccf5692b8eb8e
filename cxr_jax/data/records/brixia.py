"""BrixIA (COVID-19 severity): `read_brixia`, `parse_brixia_score` and the zone names.

The metadata CSV is semicolon-separated, UTF-8 with a byte-order mark, one row per DICOM file.
Its six-zone severity score is a digit string that spreadsheet tools tend to turn into an integer;
`parse_brixia_score` restores it and checks it against the published global score.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cxr_jax.data.records._csv import (Header, Problems, first_row, join_root, parse_int,
                                       parse_sex, parsed_rows, read_rows, unique_cell)
from cxr_jax.data.records._schema import Labels, Record, label_index

#: BrixIA zones in BrixiaScore digit order.
BRIXIA_ZONES = ("A", "B", "C", "D", "E", "F")

#: Optional metadata columns kept in ``Record.meta``: meta key -> column.
_META_COLUMNS = (("study_id", "StudyId"), ("study_date", "StudyDate"), ("modality", "Modality"),
                 ("manufacturer", "Manufacturer"), ("age_group_5y", "AgeAtStudyDateFiveYear"))


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
        g = parse_int(str(global_score).strip(), "BrixiaScoreGlobal")
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
    problems = Problems("read_brixia", lenient)
    rows = read_rows(csv_path, delimiter=";")
    fields = first_row(rows, csv_path, "a header")
    if len(fields) == 1 and "," in fields[0]:
        raise ValueError(f"{csv_path}: the header has no ';' but has ','; BrixIA metadata is "
                         "semicolon-separated; is this the right file?")
    head = Header(fields, csv_path)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for name, rec in parsed_rows(rows, head, _row_parser(head, root, seen), problems):
        seen[name] = rec.line
        records.append(rec)
    problems.finish()
    return records


def _row_parser(head: Header, root: str | os.PathLike | None, seen: dict[str, int]
                ) -> Callable[[list[str], int], tuple[str, Record]]:
    """Find the metadata columns; return the row parser ``(row, line) -> (Filename, record)``.

    The parser rejects a Filename already in ``seen`` (name -> line, filled by the caller).
    """
    c_file = head.find("Filename")[0]
    c_phot = head.find("PhotometricInterpretation")[0]
    c_score = head.find("BrixiaScore")[0]
    c_global = head.find("BrixiaScoreGlobal")[0]
    c_cons = head.find("ConsensusTestset")[0]
    optional = {key: head.find(col, required=False) for key, col in _META_COLUMNS}
    c_cols = head.find("Columns", required=False)
    c_rows = head.find("Rows", required=False)
    c_subj = head.find("Subject", required=False)
    c_sex = head.find("Sex", required=False)
    empty = Labels._make(label_index(()), ())
    source = head.path

    def parse(row: list[str], line: int) -> tuple[str, Record]:
        name = unique_cell(row, c_file, seen, "Filename", "file")
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
                meta[key] = parse_int(v, "AgeAtStudyDateFiveYear") if key == "age_group_5y" else v
        frame = None
        if c_cols is not None and c_rows is not None:
            frame = (parse_int(row[c_cols[0]].strip(), "Columns"),
                     parse_int(row[c_rows[0]].strip(), "Rows"))
            if frame[0] <= 0 or frame[1] <= 0:
                raise ValueError(f"image size Columns x Rows = {frame} is not positive")
        return name, Record(
            path=join_root(root, name),
            labels=empty,
            severity=severity,
            patient_id=(row[c_subj[0]].strip() or None) if c_subj else None,
            split="consensus_test" if cons == "1" else None,
            photometric=phot,
            sex=parse_sex(row[c_sex[0]]) if c_sex is not None else None,
            frame_size=frame,
            source=source,
            line=line,
            meta=meta,
        )

    return parse
