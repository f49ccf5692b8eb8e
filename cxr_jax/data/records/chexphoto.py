"""CheXphoto as released: photo subsets, pairing keys, and the CheXpert originals they show.

The CheXphoto label CSVs (``CheXphoto-v1.0/valid/valid.csv``, ``train.csv``) have CheXpert's
columns, so `read_chexphoto` parses them with `read_chexpert`'s row parser (same label policies,
same errors). What it adds is read from each ``Path``, which is relative to the folder that holds
the release folder::

    CheXphoto-v1.0/valid/natural/oneplus/patient64541/study1/view1_frontal.jpg
    CheXphoto-v1.0/valid/synthetic/digital/patient64541/study1/view1_frontal.jpg
    <release>     /<split>/<kind>/<device or recipe>/<patient>/<study>/<view>.jpg

* the subset, `chexphoto_subset`: the segments between the split and the patient folder
  ("natural/oneplus", "synthetic/digital", "synthetic/photographic", a "film/..." kind alike);
* the pairing key, `original_key`: patient, study and view without the extension
  ("patient64541/study1/view1_frontal"), which a CheXpert original
  (``CheXpert-v1.0[-small]/valid/patient64541/study1/view1_frontal.jpg``) shares with its photos.

Both sit in ``Record.meta`` (``meta["subset"]``, ``meta["key"]``), the schema's place for a
dataset's extras, so the records stay plain `Record` objects that `load_record`, `label_matrix`
and the loaders take as they are. `pair_with_originals` joins photos to originals by the key.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from cxr_jax.data.records._csv import Problems, parsed_rows, read_header, read_rows
from cxr_jax.data.records._schema import Record
from cxr_jax.data.records.chexpert import _row_parser, check_options

_SPLITS = ("train", "valid", "test")
_PATIENT = re.compile(r"patient\d+")
_STUDY = re.compile(r"study\d+")
_PATTERN = "<release>/<split>/<kind>/<device or recipe>/<patient>/<study>/<view>.jpg"


def _segments(path: str) -> list[str]:
    """The non-empty folder and file names of a path written with / or \\ separators."""
    return [p for p in os.fspath(path).replace("\\", "/").split("/") if p]


def _key_parts(parts: list[str], path: str) -> tuple[str, str, str]:
    """(patient, study, view without extension) from a path's last three segments."""
    if len(parts) < 3:
        raise ValueError(f"image path {path!r} has fewer than three folders/names; expected "
                         f".../<patient>/<study>/<view>.jpg")
    patient, study, view = parts[-3], parts[-2], os.path.splitext(parts[-1])[0]
    if not _PATIENT.fullmatch(patient) or not _STUDY.fullmatch(study) or not view:
        raise ValueError(f"image path {path!r} does not end in <patient>/<study>/<view>.jpg "
                         f"(got {patient!r}/{study!r}/{parts[-1]!r}; expected e.g. "
                         f"patient64541/study1/view1_frontal.jpg)")
    return patient, study, view


def original_key(path: str | os.PathLike) -> str:
    """The key that pairs a photo with its original: ``"patient64541/study1/view1_frontal"``.

    It is the path's last three segments, extension dropped, so a CheXphoto photo of any subset
    and the CheXpert original it shows (full or ``-small`` release, relative or rooted path) give
    the same key.

    Raises:
      ValueError: the path (named in the message) does not end in
        ``patientNNNNN/studyN/<view>.<ext>``.
    """
    path = os.fspath(path)
    return "/".join(_key_parts(_segments(path), path))


def chexphoto_subset(path: str | os.PathLike) -> str:
    """The CheXphoto subset a photo path belongs to, e.g. ``"natural/oneplus"``.

    The subset is every segment after the split folder (train/valid/test) and before the
    ``<patient>/<study>/<view>`` tail: ``<kind>/<device or recipe>`` in the release
    ("natural/oneplus", "synthetic/digital", "synthetic/photographic"), or just ``<kind>`` when
    a layout has no device level. The split is looked for after the last segment starting with
    "CheXphoto" (the release folder) when there is one, so a root folder named "train" above the
    release does not confuse it.

    Raises:
      ValueError: naming the path, when it has no split folder, nothing between the split and
        the patient folder (a CheXpert original, say), or no patient/study/view tail.
    """
    path = os.fspath(path)
    parts = _segments(path)
    _key_parts(parts, path)
    release = [i for i, p in enumerate(parts[:-3]) if p.lower().startswith("chexphoto")]
    start = release[-1] + 1 if release else 0
    head = parts[start:-3]
    split = next((i for i, p in enumerate(head) if p in _SPLITS), None)
    if split is None:
        raise ValueError(f"image path {path!r} has no split folder (one of {_SPLITS}) before "
                         f"the patient folder; CheXphoto paths look like {_PATTERN}")
    subset = head[split + 1:]
    if not subset:
        raise ValueError(f"image path {path!r} has no <kind>/<device or recipe> folders between "
                         f"the split {head[split]!r} and the patient folder; CheXphoto paths "
                         f"look like {_PATTERN} (is this a CheXpert original?)")
    return "/".join(subset)


def read_chexphoto(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                   policy: str = "zeros", blank: str = "zeros",
                   lenient: bool = False) -> list[Record]:
    """Read a CheXphoto label CSV (``CheXphoto-v1.0/valid/valid.csv``, ``train.csv``, ...).

    Labels, sex, age, view, patient and split are exactly `read_chexpert`'s for the same rows
    (``policy`` for uncertain -1 cells, ``blank`` for empty ones; see there). Each record also
    carries, in ``Record.meta``:

    * ``"subset"``: `chexphoto_subset` of its Path ("natural/oneplus", "synthetic/digital", ...);
    * ``"key"``: `original_key` of its Path ("patient64541/study1/view1_frontal"), the key
      `pair_with_originals` matches CheXpert originals by.

    Args:
      csv_path: the label CSV (gzipped or not).
      root: folder the CSV's Path column is relative to, i.e. the folder holding
        ``CheXphoto-v1.0/``. None: the nearest folder above the CSV named like the Path's first
        segment (the release folder) gives it, so ``<root>/CheXphoto-v1.0/valid/valid.csv`` and
        ``<root>/CheXphoto-v1.0/valid.csv`` both resolve to ``<root>``; if the CSV lies outside
        the release folder, paths are kept as published (as `read_chexpert` with no root).
        Absolute Paths are kept either way.
      policy: one of `CHEXPERT_POLICIES`.
      blank: one of `CHEXPERT_BLANKS`.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.

    Returns:
      One `Record` per row, in file order.

    Raises:
      ValueError: ``"<file>, line <n>: <problem>"`` for the first malformed row (a bad label
        cell, a wrong field count, a Path that is not a CheXphoto photo path, ...), unless
        ``lenient``; a missing column, an unreadable file or a bad option always.
    """
    check_options(policy, blank)
    csv_path = os.fspath(csv_path)
    problems = Problems("read_chexphoto", lenient)
    rows = read_rows(csv_path)
    head = read_header(rows, csv_path)
    chexpert_row = _row_parser(head, None, policy, blank)  # paths as published; rooted below
    resolve = _path_resolver(csv_path, root)

    def parse(row: list[str], line: int) -> Record:
        rec = chexpert_row(row, line)
        rel = rec.path
        meta = MappingProxyType({"subset": chexphoto_subset(rel), "key": original_key(rel)})
        return dataclasses.replace(rec, path=resolve(rel), meta=meta)

    records = list(parsed_rows(rows, head, parse, problems))
    problems.finish()
    return records


def _path_resolver(csv_path: str, root: str | os.PathLike | None):
    """``rel -> path``: under ``root``, or under the folder above the release folder."""
    if root is not None:
        base = os.fspath(root)
        return lambda rel: os.path.join(base, rel)
    folders = []
    d = os.path.dirname(os.path.abspath(csv_path))
    while True:
        folders.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    found: dict[str, str | None] = {}

    def resolve(rel: str) -> str:
        if os.path.isabs(rel):
            return rel
        release = _segments(rel)[0]
        if release not in found:
            found[release] = next((os.path.dirname(f) for f in folders
                                   if os.path.basename(f) == release), None)
        base = found[release]
        return rel if base is None else os.path.join(base, rel)

    return resolve


def _key_of(item: Any) -> str:
    """A record's pairing key (``meta["key"]`` if it has one) or a path's."""
    if isinstance(item, (str, os.PathLike)):
        return original_key(item)
    meta = getattr(item, "meta", None)
    if meta and "key" in meta:
        return meta["key"]
    return original_key(item.path)


def pair_with_originals(photos: Sequence[Any], originals: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Pair each photo with the CheXpert original it shows, by `original_key`.

    Args:
      photos: records from `read_chexphoto` (their ``meta["key"]``), or any records or paths
        (key from the path). Several photos (one per subset) may share one original.
      originals: records from `read_chexpert` (or paths) of the matching CheXpert split.

    Returns:
      ``(photo, original)`` for every photo that has an original, in photo order; photos
      without one are left out (compare ``len`` with ``len(photos)`` to see how many).

    Raises:
      ValueError: a photo or original path has no patient/study/view tail, or two originals
        share a key (e.g. the full and ``-small`` releases were mixed); both paths are named.
    """
    by_key: dict[str, Any] = {}
    for orig in originals:
        key = _key_of(orig)
        other = by_key.setdefault(key, orig)
        if other is not orig:
            first = other if isinstance(other, (str, os.PathLike)) else other.path
            second = orig if isinstance(orig, (str, os.PathLike)) else orig.path
            raise ValueError(f"two originals share the key {key!r}: {os.fspath(first)!r} and "
                             f"{os.fspath(second)!r}; pass one CheXpert release")
    pairs = []
    for photo in photos:
        orig = by_key.get(_key_of(photo))
        if orig is not None:
            pairs.append((photo, orig))
    return pairs
