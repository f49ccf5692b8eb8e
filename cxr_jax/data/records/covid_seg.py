"""COVID-19 chest X-ray segmentations: `read_covid_segmentation` and the concept names.

The dataset (General Blockchain's "COVID-19 Chest X-ray Segmentations Dataset": 100 radiographs
of the Cohen COVID-19 image collection, annotated by radiologists; the concept source of the CXR
network dissection work, Khakzar et al. 2021) ships one table, ``structure.csv``, with one row
per (image, concept) mask. The columns read here:

* ``Filename``: the radiograph, found in ``<root>/images/``;
* ``Template Name``: the concept, one of 14 classes (`COVID_SEG_CONCEPTS`);
* ``Mask``: a PNG, relative to ``<root>``, holding the concept's mask on a sub-rectangle of the
  radiograph (published masks are opaque RGBA: black outside, the class colour inside);
* ``Left``, ``Top``: the rectangle's top-left corner in the radiograph's pixels; the mask PNG's
  own size is the rectangle's extent;
* optional: ``Resolution`` (``"943x751"``, the radiograph's width x height), ``Width`` and
  ``Height`` (the rectangle's size, which the mask PNG must have).

The other published columns (``#``, ``Taxonomy``, ``Class``, ``Image``, ``Tag``, ``Points``, ...)
are not used. A few published rows name a concept but leave ``Mask`` empty (14 "Monitoring
Probes" rows); they carry no region, and the entry lists the concept in ``unmasked``.

Published spellings: the 13 classes that occur are written as in `COVID_SEG_CONCEPTS`, except
"Nosogastric Tube", read as "Nasogastric Tube" (`COVID_SEG_ALIASES`); "Chest Tube" does not occur.
Any spelling is matched case-insensitively with spaces, underscores and hyphens treated alike.

This module only parses: `cxr_jax.semantics.concepts.concept_masks` reads the mask PNGs and
composes the per-concept masks of an entry.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import NamedTuple

from cxr_jax.data.records._csv import (Problems, parse_float, parsed_rows, read_header,
                                       read_rows)

#: The 14 concept classes, in the order of the CXR dissection code's label indices.
COVID_SEG_CONCEPTS = (
    "Left Lung", "Right Lung", "Cardiomediastinum", "Airways",        # anatomy
    "Ground Glass Opacities", "Consolidation", "Pleural Effusion",    # pathology
    "Pneumothorax",
    "Endotracheal Tube", "Central Venous Line", "Monitoring Probes",  # objects
    "Nasogastric Tube", "Chest Tube", "Tubings",
)
#: Other spellings accepted for the concepts: the published typo, the dataset README's wording,
#: singulars and common abbreviations.
COVID_SEG_ALIASES = MappingProxyType({
    "Nosogastric Tube": "Nasogastric Tube",          # as structure.csv spells it
    "NG Tube": "Nasogastric Tube",
    "Ground Glass Opacity": "Ground Glass Opacities",
    "GGO": "Ground Glass Opacities",
    "Endotracheal": "Endotracheal Tube",
    "ET Tube": "Endotracheal Tube",
    "ETT": "Endotracheal Tube",
    "Central Veinous Line": "Central Venous Line",   # the dataset README's spelling
    "Central Line": "Central Venous Line",
    "CVC": "Central Venous Line",
    "Monitoring Probe": "Monitoring Probes",
    "Tubing": "Tubings",
    "Airway": "Airways",
    "Effusion": "Pleural Effusion",
})


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


_LOOKUP = {_key(n): n for n in COVID_SEG_CONCEPTS}
_LOOKUP.update({_key(a): c for a, c in COVID_SEG_ALIASES.items()})
_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX\u00d7]\s*(\d+)\s*$")


def covid_concept(name: str) -> str:
    """The canonical concept name (one of `COVID_SEG_CONCEPTS`) for any accepted spelling.

    Matching ignores case and treats runs of spaces, underscores and hyphens as one space, so
    "ground_glass opacities", "Ground-Glass Opacities" and "GGO" all give
    "Ground Glass Opacities". Raises ValueError for an unknown or empty name.
    """
    hit = _LOOKUP.get(_key(name))
    if hit is None:
        if not _key(name):
            raise ValueError("empty Template Name")
        raise ValueError(f"unknown Template Name {name!r}; known: "
                         f"{', '.join(COVID_SEG_CONCEPTS)} (and aliases such as 'ET tube', "
                         f"'NG tube')")
    return hit


class SegmentationMask(NamedTuple):
    """One row of ``structure.csv``: a concept's mask on a sub-rectangle of the radiograph.

    Attributes:
      concept: canonical concept name (`COVID_SEG_CONCEPTS`).
      path: the mask image (nonzero colour = inside).
      left, top: the rectangle's top-left corner in the radiograph's pixels (may be negative or
        reach past the image: what falls outside is clipped when masks are composed).
      size: ``(width, height)`` the row gives for the rectangle, or None when the table does not
        say; the mask image must have this size.
      line: the row's line in the table.
    """

    concept: str
    path: str
    left: int
    top: int
    size: tuple[int, int] | None
    line: int


class SegmentationEntry(NamedTuple):
    """One radiograph of the segmentation table with all its concept masks.

    Attributes:
      path: the radiograph file.
      masks: its `SegmentationMask` rows in file order (one concept may have several).
      size: ``(width, height)`` of the radiograph from the ``Resolution`` column, or None.
      unmasked: concepts named on rows whose ``Mask`` is empty (no region given).
      source, line: the table and the line of the image's first row.
    """

    path: str
    masks: tuple[SegmentationMask, ...]
    size: tuple[int, int] | None
    unmasked: tuple[str, ...]
    source: str
    line: int

    @property
    def concepts(self) -> tuple[str, ...]:
        """The distinct concepts that have a mask, in first-row order."""
        return tuple(dict.fromkeys(m.concept for m in self.masks))


def _offset(value: str, column: str) -> int:
    """An integer pixel offset; integral decimals ("12.0", as pandas writes them) are accepted."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    v = parse_float(text, column) if text else None
    if v is None or v != int(v):
        raise ValueError(f"{column} {value!r} is not an integer")
    return int(v)


def _extent(value: str, column: str) -> int | None:
    if not value.strip():
        return None
    v = _offset(value, column)
    if v <= 0:
        raise ValueError(f"{column} {value!r} is not a positive integer")
    return v


def _resolution(value: str) -> tuple[int, int] | None:
    if not value.strip():
        return None
    m = _RESOLUTION.match(value)
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(f"Resolution {value!r} is not like '943x751' (width x height)")
    return int(m.group(1)), int(m.group(2))


def read_covid_segmentation(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                            images: str | None = "images",
                            lenient: bool = False) -> list[SegmentationEntry]:
    """Read the COVID-19 CXR segmentation table (``structure.csv``) into one entry per image.

    Rows are grouped by ``Filename`` (entries in the order images first appear). Each row with a
    ``Mask`` gives a `SegmentationMask` (concept, mask path, ``Left``, ``Top``, its ``Width`` x
    ``Height`` when the table has them); a row with an empty ``Mask`` adds its concept to the
    entry's ``unmasked``. ``Resolution`` becomes the entry's ``size`` and must agree between the
    rows of one image; a rectangle wholly outside that size is an error (one partly outside is
    fine, and is clipped when masks are composed).

    Bad rows (a missing required column is always an error): an empty ``Filename``, an unknown
    or empty ``Template Name``, a non-integer ``Left`` / ``Top``, a non-positive ``Width`` /
    ``Height``, a malformed ``Resolution``, a wrong number of fields. Strict mode raises
    ``ValueError("<file>, line <n>: <problem> ...")``; ``lenient=True`` skips them, counted in one
    warning, and also leaves out every image one of whose rows was skipped, since its concept
    masks would be incomplete.

    Args:
      csv_path: the table (``structure.csv``; gzipped or not).
      root: the dataset folder that ``Mask`` paths (and the images folder) are relative to;
        default: the table's folder, where the dataset keeps it.
      images: the folder under ``root`` holding the radiographs ("images" as published); None
        or "" when ``Filename`` is relative to ``root`` itself.
      lenient: skip bad rows (and their images) with one warning instead of raising.

    Returns:
      A list of `SegmentationEntry`.

    Example:
      >>> entries = read_covid_segmentation("covid-19-chest-xray-segmentations-dataset/"
      ...                                   "structure.csv")
      >>> masks = concept_masks(entries[0], 224)   # cxr_jax.semantics.concepts; [14, 224, 224]
    """
    csv_path = os.fspath(csv_path)
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(csv_path))
    image_dir = os.path.join(base, images) if images else base
    problems = Problems("read_covid_segmentation", lenient)
    rows = read_rows(csv_path)
    head = read_header(rows, csv_path)
    c_file = head.find("Filename")[0]
    c_name = head.find("Template Name")[0]
    c_mask = head.find("Mask")[0]
    c_left = head.find("Left")[0]
    c_top = head.find("Top")[0]
    c_res = head.find("Resolution", required=False)
    c_w = head.find("Width", required=False)
    c_h = head.find("Height", required=False)
    sizes: dict[str, tuple[tuple[int, int], int]] = {}  # image -> (Resolution, line)

    def parse(row: list[str], line: int):
        name = row[c_file].strip()
        if not name:
            raise ValueError("empty Filename")
        try:
            concept = covid_concept(row[c_name])
            res = _resolution(row[c_res[0]]) if c_res is not None else None
            if res is not None:
                first = sizes.get(name)
                if first is not None and first[0] != res:
                    raise ValueError(f"Resolution {row[c_res[0]].strip()!r} differs from the "
                                     f"{first[0][0]}x{first[0][1]} of line {first[1]} for the "
                                     f"same image")
            rel = row[c_mask].strip()
            if not rel:
                return name, line, res, concept, None
            left = _offset(row[c_left], "Left")
            top = _offset(row[c_top], "Top")
            w = _extent(row[c_w[0]], "Width") if c_w is not None else None
            h = _extent(row[c_h[0]], "Height") if c_h is not None else None
            extent = (w, h) if w is not None and h is not None else None
            if res is not None and (left >= res[0] or top >= res[1] or (
                    extent is not None and (left + w <= 0 or top + h <= 0))):
                raise ValueError(f"mask rectangle at Left={left}, Top={top}"
                                 f"{f' of {w}x{h}' if extent else ''} lies wholly outside the "
                                 f"{res[0]}x{res[1]} image")
        except ValueError as e:
            raise ValueError(f"{e}; image {name!r} is left out in lenient mode") from None
        mask = SegmentationMask(concept, os.path.join(base, rel), left, top, extent, line)
        return name, line, res, concept, mask

    bad: set[str] = set()

    def skip(line: int, row: list[str]) -> None:
        if len(row) > c_file and row[c_file].strip():
            bad.add(row[c_file].strip())

    groups: dict[str, list] = {}  # name -> [first line, size, masks, unmasked]
    for name, line, res, concept, mask in parsed_rows(rows, head, parse, problems,
                                                      on_skip=skip):
        g = groups.get(name)
        if g is None:
            g = groups[name] = [line, None, [], []]
        if res is not None and name not in sizes:
            sizes[name] = (res, line)
            g[1] = res
        if mask is None:
            g[3].append(concept)
        else:
            g[2].append(mask)
    problems.finish()
    return [SegmentationEntry(path=os.path.join(image_dir, name), masks=tuple(g[2]), size=g[1],
                              unmasked=tuple(dict.fromkeys(g[3])), source=csv_path,
                              line=g[0])
            for name, g in groups.items() if name not in bad]


def covid_concepts(names: Sequence[str] | None = None) -> tuple[str, ...]:
    """Canonical names for a concept selection (all of `COVID_SEG_CONCEPTS` when None); raises
    ValueError for an unknown or repeated name."""
    if names is None:
        return COVID_SEG_CONCEPTS
    if isinstance(names, str):
        names = (names,)
    out = tuple(covid_concept(n) for n in names)
    if len(set(out)) != len(out):
        raise ValueError(f"concepts {list(names)} name the same concept twice")
    return out
