"""Looking at phantoms: a PNG contact sheet with finding outlines and label captions.

Owns `save_grid` and the colour and abbreviation of each finding in it.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.common.files import atomic_path
from cxr_jax.data.phantoms.schema import PhantomBatch

_COLOURS = {
    "nodule": (255, 64, 64), "mass": (255, 140, 0), "consolidation": (255, 230, 0),
    "effusion": (0, 200, 255), "pneumothorax": (255, 0, 255), "cardiomegaly": (0, 255, 90),
    "foreign_object": (80, 120, 255), "opacity": (255, 170, 200),
}
_SHORT = {"nodule": "nod", "mass": "mass", "consolidation": "cons", "effusion": "eff",
          "pneumothorax": "ptx", "cardiomegaly": "cmg", "foreign_object": "fo", "opacity": "op"}
_LETTER = {"nodule": "N", "mass": "M", "consolidation": "C", "effusion": "E",
           "pneumothorax": "P", "cardiomegaly": "H", "foreign_object": "F", "opacity": "O"}
_CAPTION = 12          # caption height under each tile, pixels


def _outline(m: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask [..., H, W] (pixels with a 4-neighbour outside)."""
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
    inner = p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m & ~inner


def _tiles(batch: PhantomBatch, max_images: int, with_masks: bool) -> np.ndarray:
    """RGB uint8 [n, H, W, 3] of the first images in unit grey, finding outlines in colour."""
    imgs = np.asarray(batch.images)[:max_images, ..., 0].astype(np.float32)
    if imgs.shape[0] == 0:
        raise ValueError("batch has no images to draw.")
    if imgs.min() < -0.5:                                   # xrv scale
        imgs = (imgs + 1024.0) / 2048.0
    n = imgs.shape[0]
    rgb = np.repeat((np.clip(imgs, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if with_masks:
        for k, name in enumerate(batch.finding_names):
            edge = _outline(np.asarray(batch.masks[:n, k]))
            rgb[edge] = _COLOURS.get(name, (255, 255, 255))
    return rgb


def _caption(draw, batch: PhantomBatch, i: int, x: int, y: int, W: int) -> None:
    """Writes image i's positive findings at (x, y), one letter each on narrow tiles."""
    for k, name in enumerate(batch.finding_names):
        if batch.labels[i, k] > 0:
            word = _SHORT.get(name, name[:4])
            if W < 24 * len(batch.finding_names):        # narrow tiles: one letter each
                word = _LETTER.get(name, name[0].upper())
            draw.text((x, y), word, fill=_COLOURS.get(name, (255, 255, 255)))
            x += 6 * len(word) + 3


def save_grid(batch: PhantomBatch, path, *, ncols: int = 8, with_masks: bool = True,
              max_images: int = 64) -> np.ndarray:
    """Writes a PNG grid of phantoms, finding masks outlined in colour, labels printed below.

    The file is written whole or not at all (a temporary file renamed over `path`).

    Args:
      batch: a PhantomBatch (images in either intensity convention).
      path: output file (PNG).
      ncols: tiles per row.
      with_masks: draw the outline of every finding mask (colours per finding, listed in the
        caption of each tile).
      max_images: at most this many images are drawn.
    Returns:
      The RGB grid as uint8 [rows * (H + caption), ncols * W, 3].
    """
    from PIL import Image, ImageDraw

    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols!r}.")
    rgb = _tiles(batch, max_images, with_masks)
    n, H, W = rgb.shape[:3]
    cap = _CAPTION
    grid = np.zeros((-(-n // ncols) * (H + cap), ncols * W, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (H + cap):r * (H + cap) + H, c * W:(c + 1) * W] = rgb[i]
    im = Image.fromarray(grid)
    draw = ImageDraw.Draw(im)
    for i in range(n):
        r, c = divmod(i, ncols)
        _caption(draw, batch, i, c * W + 1, r * (H + cap) + H, W)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return np.asarray(im)
