"""A list of image paths from any dataset table: one path column, resolved against a root.

`read_image_paths` takes the column a user names, or the first of `PATH_COLUMNS` the header
has: NIH's ``Image Index`` (a bare file name, found in ``root/images/`` as the published folder
keeps it, or in ``root``), CheXpert's and CheXphoto's ``Path`` (relative to the folder above the
dataset's, as the CSV spells ``CheXpert-v1.0-small/...``), Object-CXR's ``image_name``, or a
generic ``path`` / ``filename`` / ``image``. A row that is malformed or has an empty path is
returned as a problem, not raised, so a long run can list it and go on.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from cxr_jax.data.records._csv import read_header, read_rows

PATH_COLUMNS = ("Path", "Image Index", "image_name", "path", "filename", "file", "image",
                "image_path")


class ImagePaths(NamedTuple):
    """Paths read from a table: `paths` [(line, path)] in file order and `problems`
    [(line, reason)] for the rows that give none."""

    paths: list[tuple[int, str]]
    problems: list[tuple[int, str]]
    column: str


def read_image_paths(table: str | os.PathLike, *, column: str | None = None,
                     root: str | os.PathLike | None = None) -> ImagePaths:
    """Reads the image paths listed in a CSV (optionally gzipped) table.

    Args:
      table: the CSV file.
      column: the path column; None takes the first of `PATH_COLUMNS` present.
      root: folder the paths are relative to (default: the table's folder). Absolute paths are
        kept. A bare name missing from `root` but present in `root/images/` (NIH's layout)
        resolves there.
    Returns:
      `ImagePaths(paths, problems, column)`; duplicate paths are kept once (the first row).
    Raises:
      ValueError: the table cannot be read, or has no such column (lists its columns).
    """
    table = os.fspath(table)
    root = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(table))
    rows = read_rows(table)
    head = read_header(rows, table)
    names = (column,) if column else PATH_COLUMNS
    hit = head.find(*names, required=False)
    if hit is None:
        want = f"column {column!r}" if column else f"a path column (one of {list(PATH_COLUMNS)})"
        raise ValueError(f"{table}: no {want}; the header has {head.names}. Name the column "
                         f"with --column.")
    index = hit[0]
    found = next(n for n in head.names if head.find(n, required=False) == hit)
    paths, problems, seen = [], [], set()
    for line, row in rows:
        try:
            head.check_row(row)
        except ValueError as e:
            problems.append((line, f"malformed row: {e}"))
            continue
        value = row[index].strip() if index < len(row) else ""
        if not value:
            problems.append((line, f"empty {found!r}"))
            continue
        path = _resolve(value, root)
        if path not in seen:
            seen.add(path)
            paths.append((line, path))
    return ImagePaths(paths, problems, found)


def _resolve(value: str, root: str) -> str:
    if os.path.isabs(value):
        return value
    path = os.path.join(root, value)
    if not os.path.exists(path) and os.sep not in value and "/" not in value:
        nested = os.path.join(root, "images", value)
        if os.path.exists(nested):
            return nested
    return path
