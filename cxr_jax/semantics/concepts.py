"""Concept masks from real annotations, and batches of them for network dissection.

Two sources of concept masks, both on the model-input grid of `cxr_jax.data.images`:

  concept_masks      COVID-19 CXR segmentations (`read_covid_segmentation`): each mask PNG is
                     pasted at its (Left, Top) into the radiograph's frame, pixels falling
                     outside the image are clipped, and the masks of one concept are OR-ed.
  box_concept_masks  NIH ChestX-ray14 boxes (`read_nih`): each box filled on the decoded image's
                     pixel grid (pixel (i, j) is inside when its centre (j + 1/2, i + 1/2) is, as
                     `cxr_jax.data.images.box_masks`), clipped to the image, OR-ed per finding.

Both then take the same geometry as the image (`cxr_jax.data.images.preprocess`): the centred
square crop (``crop="centre"``) and a resize to ``size x size`` by area averaging, keeping an
output pixel when at least half of its footprint is inside:

  mask'[c, i, j] = (R_h M_c R_w^T)[i, j] >= 1/2 - 1e-4,

R the area-averaging matrices of `cxr_jax.data.images.resize` (bilinear when enlarging) and the
1e-4 absorbing float32 rounding, so an exactly half-covered pixel counts as inside. This is the
"area" rule `cxr_jax.semantics.dissection.resize_masks` applies when it brings the masks to its
comparison grid.

Overlapping concepts stay separate channels: a pixel can be both lung and ground-glass opacity,
and each concept is scored on its own mask. The CXR dissection code (CheXplain-Dissection)
instead merges the masks of one image into a single label map with a maximum over class indices,
so a pixel keeps only the highest-numbered concept, and resizes that map to 56 x 56 by nearest
neighbour.

`concept_batches` turns a list of entries (segmentation entries or NIH records) into a
re-iterable source of `ConceptBatch` (images [B, S, S, 1] float32, masks [B, C, S, S] bool) that
`cxr_jax.semantics.dissect` reads twice; an image (or mask file) that cannot be read is
skipped, and the skipped images are reported in one warning.

Example:
  >>> entries = read_covid_segmentation(".../structure.csv")
  >>> batches = concept_batches(entries, image_size=224, batch_size=32)
  >>> d = dissect(model, variables, batches, layer="layer4")   # names come with the batches
  >>> d.label_names
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cxr_jax.data.images import (INTENSITIES, box_masks, load_image, preprocess, resize,
                                 scale_boxes)
from cxr_jax.data.images.geometry import crop_geometry
from cxr_jax.data.records import NIH_FINDINGS, Record
from cxr_jax.data.records.covid_seg import SegmentationEntry, covid_concepts

__all__ = ["ConceptBatch", "ConceptBatches", "box_concept_masks", "concept_batches",
           "concept_masks", "read_mask"]

# An output pixel is inside when at least half of its footprint is (up to float32 rounding),
# the rule of dissect.resize_masks(method="area").
_AREA_TOLERANCE = 1e-4


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, from its header when Pillow reads it, else decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        h, w = load_image(path).shape  # DICOM, or raises a clear error
        return w, h


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask image: bool [h, w], True where the pixel's colour is nonzero.

    Grey-level masks (1, L, I;16, I, F) are inside where the value is nonzero. Colour masks
    (the published RGBA masks: opaque black outside, the class colour inside) are inside where
    any colour channel is nonzero and the pixel is not fully transparent.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16"):
                return np.asarray(im) != 0
            a = np.asarray(im.convert("RGBA"))
    except FileNotFoundError:
        raise FileNotFoundError(f"mask file {path!r} does not exist") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        raise ValueError(f"cannot decode mask {path!r}: {e}") from e
    return a[..., :3].any(axis=-1) & (a[..., 3] > 0)


def _to_grid(full: np.ndarray, size: int, crop: str | None) -> np.ndarray:
    """Masks [K, H, W] on the image's pixel grid -> [K, size, size] bool on the model-input
    grid: the crop and resize of `preprocess`, kept where >= half a pixel is covered."""
    h, w = full.shape[-2:]
    top, left, ch, cw, _ = crop_geometry(h, w, size, crop, None)
    part = full[..., top:top + ch, left:left + cw].astype(np.float32)
    return resize(part, (size, size)) >= 0.5 - _AREA_TOLERANCE


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (pixels per side), got {size!r}")
    return int(size)


def _check_original(original_size, what: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in original_size)
    except (TypeError, ValueError):
        raise ValueError(f"original_size must be (width, height), got {original_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"original_size {original_size!r} of {what} is not positive")
    return w, h


def concept_masks(entry: SegmentationEntry, size: int, *,
                  concepts: Sequence[str] | None = None,
                  original_size: tuple[int, int] | None = None,
                  crop: str | None = "centre") -> np.ndarray:
    """The concept masks of one segmentation entry on the model-input grid.

    For each concept c: M_c = OR over its mask rows of the mask image pasted with its top-left
    corner at (Left, Top) into a blank frame the radiograph's size (mask pixels outside the
    frame are clipped); then the crop and area resize of the module docstring. A concept without
    a mask in this entry (or only on rows with an empty Mask) gives an empty channel.

    Args:
      entry: a `SegmentationEntry` from `read_covid_segmentation`.
      size: output side (the model's input size).
      concepts: the channels, in order: names or aliases of `COVID_SEG_CONCEPTS` (default all
        14, in that order).
      original_size: ``(width, height)`` of the radiograph; default ``entry.size`` (the
        Resolution column), else read from the image file's header.
      crop: "centre" (the centred square, as `preprocess` crops the image) or None (the whole
        frame resized to a square).

    Returns:
      bool [C, size, size].

    Raises:
      ValueError / FileNotFoundError: an unknown concept, a mask file that cannot be read, or a
        mask whose size differs from the Width x Height its row gives (naming file and line).
    """
    size = _check_size(size)
    names = covid_concepts(concepts)
    if original_size is None:
        original_size = entry.size if entry.size is not None else _image_size(entry.path)
    w, h = _check_original(original_size, entry.path)
    index = {n: k for k, n in enumerate(names)}
    out = np.zeros((len(names), size, size), bool)
    for k, name in enumerate(names):
        rows = [m for m in entry.masks if index.get(m.concept) == k]
        if not rows:
            continue
        frame = np.zeros((h, w), bool)
        for m in rows:
            try:
                mask = read_mask(m.path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e} (listed in {entry.source}, line {m.line})") from e
            except ValueError as e:
                raise ValueError(f"{e} (listed in {entry.source}, line {m.line})") from e
            mh, mw = mask.shape
            if m.size is not None and (mw, mh) != tuple(m.size):
                raise ValueError(f"{entry.source}, line {m.line}: mask {m.path!r} is {mw}x{mh} "
                                 f"but the row gives Width x Height {m.size[0]}x{m.size[1]}")
            y0, x0 = max(m.top, 0), max(m.left, 0)
            y1, x1 = min(m.top + mh, h), min(m.left + mw, w)
            if y0 < y1 and x0 < x1:
                frame[y0:y1, x0:x1] |= mask[y0 - m.top:y1 - m.top, x0 - m.left:x1 - m.left]
        out[k] = _to_grid(frame[None], size, crop)[0]
    return out


def box_concept_masks(record: Record, size: int, *, findings: Sequence[str] = NIH_FINDINGS,
                      original_size: tuple[int, int] | None = None,
                      crop: str | None = "centre") -> np.ndarray:
    """A record's boxes as filled masks on the model-input grid, one channel per finding.

    Boxes are scaled from ``record.frame_size`` (NIH's 1024 x 1024) to the decoded image, as
    `load_record` scales them, filled on the image's pixel grid (pixel centres inside the box;
    the grid clips the box to the image), OR-ed per finding, then cropped and resized by the
    area rule of the module docstring. (`load_record(masks=True)` instead fills each moved box
    directly on the output grid by pixel centres; the two differ by at most a pixel at the box
    edges.) Boxes of labels not in ``findings`` are ignored.

    Args:
      record: a `Record` with boxes (e.g. from `read_nih`).
      size: output side.
      findings: the channels, in order (box labels, e.g. `NIH_FINDINGS`).
      original_size: ``(width, height)`` of the image as decoded; default ``record.frame_size``
        (the distributed NIH PNGs are 1024 x 1024), else read from the image file's header.
      crop: "centre" or None, as for `concept_masks`.

    Returns:
      bool [len(findings), size, size].
    """
    size = _check_size(size)
    names = tuple(str(f) for f in ([findings] if isinstance(findings, str) else findings))
    if len(set(names)) != len(names):
        raise ValueError(f"findings {list(names)} name the same finding twice")
    if original_size is None:
        original_size = (record.frame_size if record.frame_size is not None
                         else _image_size(record.path))
    w, h = _check_original(original_size, record.path)
    boxes = tuple(record.boxes)
    if record.frame_size is not None:
        boxes = scale_boxes(boxes, tuple(record.frame_size), (w, h))
    out = np.zeros((len(names), size, size), bool)
    for k, name in enumerate(names):
        mine = [b for b in boxes if b.label == name]
        if mine:
            frame = box_masks(mine, h, w).any(axis=0)
            out[k] = _to_grid(frame[None], size, crop)[0]
    return out


class ConceptBatch(tuple):
    """An (images, concepts) pair that also carries ``concept_names``.

    Unpacks as ``images, masks = batch``; `dissect` reads ``.images``, ``.concepts`` and
    ``.concept_names`` (as from a `PhantomBatch`), so the names need not be passed again.
    """

    def __new__(cls, images: np.ndarray, concepts: np.ndarray, concept_names: tuple[str, ...]):
        self = super().__new__(cls, (images, concepts))
        self.concept_names = tuple(concept_names)
        return self

    @property
    def images(self) -> np.ndarray:
        """float32 [B, S, S, 1] model inputs."""
        return self[0]

    @property
    def concepts(self) -> np.ndarray:
        """bool [B, C, S, S] concept masks."""
        return self[1]


class ConceptBatches:
    """A re-iterable source of `ConceptBatch` built from annotation entries (see
    `concept_batches`). Each iteration decodes the images again; images that failed once are
    not tried again, so every pass yields the same images.

    Attributes:
      concept_names: the C channel names.
      skipped: [(image path, reason)] of the entries left out so far.
    """

    def __init__(self, entries, *, image_size: int, batch_size: int,
                 concepts: Sequence[str] | None, crop: str | None, intensity: str):
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("concept_batches needs at least one entry.")
        kinds = {type(e) for e in self.entries}
        if kinds <= {SegmentationEntry}:
            self.kind = "segmentation"
            self.concept_names = covid_concepts(concepts)
        elif all(isinstance(e, Record) for e in self.entries):
            self.kind = "boxes"
            names = NIH_FINDINGS if concepts is None else (
                (concepts,) if isinstance(concepts, str) else tuple(concepts))
            self.concept_names = tuple(str(n) for n in names)
            if len(set(self.concept_names)) != len(self.concept_names):
                raise ValueError(f"concepts {list(self.concept_names)} repeat a name")
        else:
            raise ValueError(f"concept_batches takes SegmentationEntry items "
                             f"(read_covid_segmentation) or Record items (read_nih), not a mix "
                             f"or others; got {sorted(k.__name__ for k in kinds)}.")
        self.image_size = _check_size(image_size)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.crop, self.intensity = crop, intensity
        if crop not in ("centre", "center", "none", None):
            raise ValueError(f"crop={crop!r}; choose 'centre' or None")
        if intensity not in INTENSITIES:
            raise ValueError(f"intensity={intensity!r}; choose one of {INTENSITIES}")
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        """Entries not (yet) known to be unreadable."""
        return len(self.entries) - len(self._bad)

    def __repr__(self) -> str:
        return (f"ConceptBatches({len(self.entries)} {self.kind} entries, "
                f"{len(self.concept_names)} concepts, image_size={self.image_size}, "
                f"batch_size={self.batch_size}, skipped={len(self.skipped)})")

    def load(self, entry) -> tuple[np.ndarray, np.ndarray]:
        """One entry's (image [S, S, 1] float32, masks [C, S, S] bool); raises if unreadable."""
        s = self.image_size
        if self.kind == "segmentation":
            image = load_image(entry.path)
            h, w = image.shape
            if entry.size is not None and tuple(entry.size) != (w, h):
                raise ValueError(f"image is {w}x{h} but {entry.source}, line {entry.line} gives "
                                 f"Resolution {entry.size[0]}x{entry.size[1]}")
            masks = concept_masks(entry, s, concepts=self.concept_names, original_size=(w, h),
                                  crop=self.crop)
        else:
            image = load_image(entry.path, photometric=entry.photometric)
            h, w = image.shape
            masks = box_concept_masks(entry, s, findings=self.concept_names,
                                      original_size=(w, h), crop=self.crop)
        x, _, _ = preprocess(image, size=s, crop=self.crop, intensity=self.intensity)
        return x, masks

    def __iter__(self) -> Iterator[ConceptBatch]:
        xs, ms, new = [], [], []
        for i, entry in enumerate(self.entries):
            if i in self._bad:
                continue
            try:
                x, m = self.load(entry)
            except (OSError, ValueError, ImportError) as err:  # one bad file must not end a run
                self._bad.add(i)
                new.append((entry.path, str(err)))
                continue
            xs.append(x)
            ms.append(m)
            if len(xs) == self.batch_size:
                yield self._batch(xs, ms)
                xs, ms = [], []
        if new:
            self.skipped.extend(new)
            shown = "; ".join(f"{p}: {r}" for p, r in new[:3]) + ("; ..." if len(new) > 3 else "")
            warnings.warn(f"concept_batches: skipped {len(new)} of {len(self.entries)} images "
                          f"that could not be read: {shown}", stacklevel=2)
        if len(self._bad) == len(self.entries):
            raise ValueError(f"concept_batches: none of the {len(self.entries)} images could be "
                             f"read; first problem: {self.skipped[0][0]}: {self.skipped[0][1]}")
        if xs:
            yield self._batch(xs, ms)

    def _batch(self, xs, ms) -> ConceptBatch:
        return ConceptBatch(np.stack(xs).astype(np.float32, copy=False), np.stack(ms),
                            self.concept_names)


def concept_batches(entries: Sequence[Any], *, image_size: int, batch_size: int,
                    concepts: Sequence[str] | None = None, crop: str | None = "centre",
                    intensity: str = "xrv") -> ConceptBatches:
    """Batches of (images, concept masks) for `dissect`, from segmentation entries or records.

    Images are decoded and preprocessed as everywhere in the project (`load_image`, then
    `preprocess`: centred square crop, area resize to ``image_size``, intensities in
    [-1024, 1024] for "xrv"); masks follow the same geometry (`concept_masks` for
    `SegmentationEntry` items, `box_concept_masks` for `Record` items). Every batch holds
    ``batch_size`` readable images except perhaps the last. An entry whose image or mask files
    cannot be read (or whose image size contradicts the table) is skipped; the entries skipped
    in one pass are reported in one warning, are listed in ``.skipped`` and are not tried again.

    Args:
      entries: `SegmentationEntry` items (`read_covid_segmentation`) or `Record` items with
        boxes (`read_nih`), not mixed.
      image_size: side S of the model input.
      batch_size: images per batch.
      concepts: the C channels: COVID concept names or aliases (default all 14
        `COVID_SEG_CONCEPTS`) for segmentation entries; box labels (default `NIH_FINDINGS`)
        for records.
      crop: "centre" or None (as `preprocess`).
      intensity: "xrv" or "unit" (as `preprocess`).

    Returns:
      A `ConceptBatches`: iterate it (as often as needed) for `ConceptBatch` items, each
      ``(images [B, S, S, 1] float32, masks [B, C, S, S] bool)`` with ``.concept_names``.

    Raises:
      ValueError: no entries, mixed kinds, an unknown COVID concept, bad sizes; while iterating,
        when no image at all can be read.
    """
    return ConceptBatches(entries, image_size=image_size, batch_size=batch_size,
                          concepts=concepts, crop=crop, intensity=intensity)
