"""Composite recipes built from the single transforms, and the JPEG round trip.

`digital` and `photographic` chain transforms at one level on one `rng`, so a seed fixes the
whole chain; `jpeg` is not levelled or random and is applied to a result's image when the
compression of a saved photo should be modelled too.
"""

from __future__ import annotations

import io

import numpy as np

from cxr_jax.data.photo._common import Photo, _check_image, _check_level
from cxr_jax.data.photo.appearance import (brightness_down, brightness_up, contrast_down,
                                           contrast_up, glare_matte, moire)
from cxr_jax.data.photo.geometry import tilt

def digital(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """The release's "digital" recipe: contrast up or down, then brightness up or down."""
    level = _check_level(level)
    con = contrast_up if rng.integers(0, 2) else contrast_down
    bri = brightness_up if rng.integers(0, 2) else brightness_down
    out = con(image, level, rng, masks=masks, boxes=boxes)
    return bri(out.image, level, rng, masks=out.masks, boxes=out.boxes)


def photographic(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """The "photographic" recipe: glare_matte, then moire, then tilt (masks and boxes follow)."""
    level = _check_level(level)
    out = Photo(image, masks, boxes)
    for fn in (glare_matte, moire, tilt):
        out = fn(out.image, level, rng, masks=out.masks, boxes=out.boxes)
    return out


def jpeg(image, quality: int = 75) -> np.ndarray:
    """Re-encodes as 8-bit JPEG at `quality` (Pillow) and decodes; same shape, float32 [0, 1]."""
    from PIL import Image

    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an int in 1..95, got {quality!r}.")
    x, ch = _check_image(image)
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255.0).astype(np.uint8), mode="L").save(
        buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("L"), np.float32) / 255.0
    return out[..., None] if ch else out
