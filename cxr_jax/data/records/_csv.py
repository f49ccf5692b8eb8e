"""Table plumbing shared by the readers: opening, headers, the row loop, cell parsers.

`parsed_rows` is the one loop over a table's data rows. It checks each row's field count against
the header, hands the row to the reader's ``parse`` function, and turns a ``ValueError`` from
either into a ``"<file>, line <n>: <problem>"`` report through `Problems`: raised at once, or
(lenient) counted for the single warning `Problems.finish` gives when the reader is done.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
#: What `read_rows` yields: (line number, fields).
Rows = Iterator[tuple[int, list[str]]]


def open_text(path: str) -> io.TextIOBase:
    """Open a text table, gunzipping when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


class Problems:
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
        """Warn once about the skipped rows; call it from the public reader itself.

        The warning points at the reader's caller (``stacklevel=3``), so the call must sit
        directly in the ``read_*`` function.
        """
        if self.items:
            shown = "; ".join(self.items[:3]) + ("; ..." if len(self.items) > 3 else "")
            warnings.warn(f"{self.reader}: skipped {len(self.items)} bad row(s) because "
                          f"lenient=True: {shown}", stacklevel=3)


def _norm(name: str) -> str:
    return re.sub(r"\s+", "", name).lower()


class Header:
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


def read_rows(path: str, delimiter: str = ",") -> Rows:
    """Yield (line number, fields) for every non-blank row; the header is the first yield."""
    try:
        with open_text(path) as f:
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


def first_row(rows: Rows, path: str, expected: str = "a CSV header") -> list[str]:
    """The fields of the first row; an empty file is an error that says what was ``expected``."""
    try:
        return next(rows)[1]
    except StopIteration:
        raise ValueError(f"{path}: the file is empty; expected {expected}") from None


def read_header(rows: Rows, path: str) -> Header:
    """Take the first row of ``rows`` as the header."""
    return Header(first_row(rows, path), path)


def parsed_rows(rows: Rows, head: Header, parse: Callable[[list[str], int], T],
                problems: Problems, *, pad_last: bool = False,
                on_skip: Callable[[int, list[str]], None] | None = None) -> Iterator[T]:
    """The row loop of every reader: yield ``parse(row, line)`` for each good data row.

    A row whose field count does not fit ``head`` (`Header.check_row`), or whose ``parse`` raises
    ValueError, goes to ``problems.report(head.path, line, message)``: that raises in strict mode;
    in lenient mode the row is counted, ``on_skip(line, row)`` is called when given, and the loop
    moves on. Other exceptions, and errors of the file itself (`read_rows`), pass through.

    The loop is lazy: what the caller records between two yields (the names seen so far, say) is
    already visible to ``parse`` for the next row.

    Args:
      rows: the data rows, header already taken (`read_rows` after `read_header`).
      head: the table's header; its ``path`` names the file in reports.
      parse: turns one row (fields, line number from `read_rows`) into the value to yield;
        the reader makes it once per file, so the loop adds no per-row set-up.
      problems: where bad rows go.
      pad_last: a row one field short gets an empty last field (Object-CXR rows without objects
        may omit the trailing comma).
      on_skip: told about each row skipped in lenient mode.
    """
    width = head.width
    for line, row in rows:
        try:
            if len(row) != width:
                if pad_last and len(row) == width - 1:
                    row = row + [""]
                else:
                    head.check_row(row)
            value = parse(row, line)
        except ValueError as e:
            problems.report(head.path, line, str(e))  # raises unless lenient
            if on_skip is not None:
                on_skip(line, row)
            continue
        yield value


def parse_int(value: str, column: str) -> int:
    """``int(value)``, or a ValueError naming the column."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not an integer") from None


def parse_float(value: str, column: str) -> float:
    """A finite ``float(value)``, or a ValueError naming the column."""
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{column} {value!r} is not a finite number")
    return v


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}
_SEX_RAW = {"M": "M", "F": "F", "Male": "M", "Female": "F"}


def parse_sex(value: str) -> str | None:
    """Normalise a sex cell to "M" or "F"; None for anything else ("Unknown", blank)."""
    hit = _SEX_RAW.get(value)
    return hit if hit is not None else _SEX.get(value.strip().lower())  # "Unknown" -> None


def unique_cell(row: list[str], col: int, seen: dict[str, int], column: str, noun: str) -> str:
    """The stripped name in ``row[col]``: non-empty and not yet in ``seen`` (name -> line).

    Raises ValueError "empty <column>" or "<noun> '<name>' appears twice (first on line <n>)".
    """
    name = row[col].strip()
    if not name:
        raise ValueError(f"empty {column}")
    if name in seen:
        raise ValueError(f"{noun} {name!r} appears twice (first on line {seen[name]})")
    return name


def join_root(root: str | os.PathLike | None, rel: str) -> str:
    """``rel`` under ``root``, or ``rel`` unchanged when there is no root."""
    return rel if root is None else os.path.join(os.fspath(root), rel)
