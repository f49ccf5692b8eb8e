"""The registry of transforms by name, and `apply`, which runs one with a seed or key.

`TRANSFORMS` maps each name to its function, `GEOMETRIC` names those that move masks and boxes,
`as_rng` turns an int seed, a numpy Generator, a sequence of ints or a JAX PRNG key into the
numpy Generator the transforms draw from.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cxr_jax.data.photo._common import (Photo, _check_boxes, _check_image, _check_level,
                                        _check_masks)
from cxr_jax.data.photo.appearance import (blur, brightness_down, brightness_up, contrast_down,
                                           contrast_up, exposure, glare_glossy, glare_matte,
                                           moire, motion_blur)
from cxr_jax.data.photo.geometry import rotation, tilt, translation
from cxr_jax.data.photo.recipes import digital, photographic

Transform = Callable[..., Photo]

TRANSFORMS: dict[str, Transform] = {
    "brightness_up": brightness_up,
    "brightness_down": brightness_down,
    "contrast_up": contrast_up,
    "contrast_down": contrast_down,
    "blur": blur,
    "motion_blur": motion_blur,
    "glare_matte": glare_matte,
    "glare_glossy": glare_glossy,
    "moire": moire,
    "tilt": tilt,
    "rotation": rotation,
    "translation": translation,
    "exposure": exposure,
    "digital": digital,
    "photographic": photographic,
}
GEOMETRIC = ("tilt", "rotation", "translation", "photographic")


def names() -> tuple[str, ...]:
    """Registered transform names."""
    return tuple(TRANSFORMS)


def as_rng(key_or_seed: Any) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator (returned as is), a sequence of ints, or
    a JAX PRNG key (its key data seeds the Generator)."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, bool):
        raise ValueError("key_or_seed must be an int, a numpy Generator or a PRNG key, not bool.")
    if isinstance(key_or_seed, (int, np.integer)):
        if key_or_seed < 0:
            raise ValueError(f"seed must be non-negative, got {key_or_seed}.")
        return np.random.default_rng(int(key_or_seed))
    data = key_or_seed
    if type(key_or_seed).__module__.startswith("jax"):
        import jax

        if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(key_or_seed)
    arr = np.asarray(data)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("key_or_seed must be an int, a numpy Generator or a PRNG key, "
                         f"got {key_or_seed!r}.")
    return np.random.default_rng([int(v) for v in arr.astype(np.uint64).ravel()])


def apply(name: str, image, level: int, key_or_seed: Any, *, masks=None, boxes=None) -> Photo:
    """Applies the registered transform `name` at `level` with randomness from `key_or_seed`.

    Args:
      name: one of `names()`.
      image: [H, W] or [H, W, 1] in [0, 1].
      level: 1..4.
      key_or_seed: int seed, numpy Generator, or JAX PRNG key; the same key gives the same
        result.
      masks: optional [H, W] or [K, H, W], moved by geometric transforms.
      boxes: optional [M, 4] (x0, y0, x1, y1) pixels, moved by geometric transforms.
    Returns:
      Photo(image, masks, boxes).
    """
    if name not in TRANSFORMS:
        raise ValueError(f"Unknown photo transform {name!r}. Known: {', '.join(names())}.")
    _check_level(level)
    img, _ = _check_image(image)
    masks = _check_masks(masks, img.shape)
    boxes = _check_boxes(boxes)
    return TRANSFORMS[name](image, level, as_rng(key_or_seed), masks=masks, boxes=boxes)
