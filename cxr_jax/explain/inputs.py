"""Which files to explain, and each one decoded and prepared as its model expects.

`find_images` lists the work: one file, a folder (recursive, every non-hidden file, so a stray
text file is reported rather than silently passed over), or a CSV table with a path column.
`load_input` decodes one file (PNG/JPEG 8 or 16 bit, DICOM with MONOCHROME1 inverted: see
`cxr_jax.data.images.load_image`), takes the centred square, resizes it to the model's input
size and applies the model's intensity convention (`cxr_jax.models.Metadata`). Anything that
stops one file raises `Skip` with a reason for `results.json`; the run goes on.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np

from cxr_jax.data import images as image_io
from cxr_jax.data import records
from cxr_jax.models import Metadata

TABLES = (".csv", ".csv.gz")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Item(NamedTuple):
    """One file to explain: its path and the unique `name` its outputs are written under."""

    path: str
    name: str


class Skip(Exception):
    """A file that cannot be explained; the message is the reason."""


def output_name(relative: str) -> str:
    """A file name for an input's outputs: its path relative to the input root, with folder
    separators as "__" and anything unusual as "_" (`a/b c.png` -> `a__b_c.png`)."""
    parts = [p for p in re.split(r"[\\/]+", relative) if p not in ("", ".")]
    return "__".join(_UNSAFE.sub("_", p) for p in parts)


def find_images(images: str | os.PathLike, *, root: str | os.PathLike | None = None,
                column: str | None = None) -> tuple[list[Item], list[dict]]:
    """The files to explain, in a stable order, and the entries that name none.

    Args:
      images: an image file, a folder (searched recursively; hidden files and folders are left
        out), or a CSV table (`.csv`, `.csv.gz`) with a path column.
      root: for a table, the folder its paths are relative to (default: the table's folder).
      column: for a table, the path column (default: the first known one, e.g. NIH's
        "Image Index" or CheXpert's "Path").
    Returns:
      (items, problems): `Item`s with unique names, and [{"path", "reason"}] for table rows
      without a usable path.
    Raises:
      ValueError: `images` does not exist, or a folder holds no files, or a table has no path
        column.
    """
    path = os.fspath(images)
    if os.path.isdir(path):
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
        if not found:
            raise ValueError(f"--images {path!r} is a folder with no files in it.")
        return [Item(f, output_name(os.path.relpath(f, path))) for f in found], []
    if not os.path.exists(path):
        raise ValueError(f"--images {path!r} does not exist: pass an image file, a folder of "
                         f"images or a CSV table with a path column.")
    if path.lower().endswith(TABLES):
        table = records.read_image_paths(path, column=column, root=root)
        base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(path))
        problems = [{"path": f"{path}, line {line}", "reason": reason}
                    for line, reason in table.problems]
        items = []
        for _, p in table.paths:
            rel = os.path.relpath(p, base)
            items.append(Item(p, output_name(p if rel.startswith("..") else rel)))
        return _unique(items), problems
    return [Item(path, output_name(os.path.basename(path)))], []


def _unique(items: list[Item]) -> list[Item]:
    """Items whose names collide (paths that differ only in unusual characters) get a suffix."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        n = seen.get(item.name, 0)
        seen[item.name] = n + 1
        out.append(item if n == 0 else item._replace(name=f"{item.name}.{n}"))
    return out


def load_input(path: str, metadata: Metadata, *, min_side: int = 64
               ) -> tuple[np.ndarray, np.ndarray]:
    """One file as model input.

    Args:
      path: an image file.
      metadata: the model's `Metadata` (input size, crop, channels, intensity convention).
      min_side: images whose shorter side has fewer pixels are refused (resizing them up to the
        model's input would invent the detail the explanation is about).
    Returns:
      (x, shown): x float32 [S, S, C] ready for the model; shown float32 [S, S] in [0, 1], the
      same crop for display.
    Raises:
      Skip: the reason the file cannot be used (missing, empty, not an image, a DICOM without
        pixels or with a compression no installed decoder reads, NaN pixels, too small).
    """
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise Skip("empty file (0 bytes)")
        image = image_io.load_image(path)
    except Skip:
        raise
    except FileNotFoundError:
        raise Skip("no such file") from None
    except (ValueError, ImportError) as e:
        raise Skip(str(e)) from None
    except Exception as e:  # a decoder's own error types (e.g. decompression bombs)
        raise Skip(f"cannot decode: {type(e).__name__}: {e}") from None
    h, w = image.shape
    if min(h, w) < min_side:
        raise Skip(f"image too small: {w}x{h} pixels; the model needs a side of at least "
                   f"{min_side} (its input is {metadata.input_size}x{metadata.input_size}; "
                   f"lower min_side to allow upscaling)")
    if not np.isfinite(image).all():
        raise Skip("the image has NaN or infinite pixels")
    shown, _, _ = image_io.preprocess(image, size=metadata.input_size, crop=metadata.crop,
                                      intensity="unit")
    shown = shown[..., 0]
    return metadata.to_input(shown), shown
