"""What every photo transform shares: the level and size constants, `Photo`, argument checks.

The checks turn user input into one working form (a float32 [H, W] image clipped to [0, 1], masks
of the image's height and width, float32 [M, 4] boxes) and raise ValueError with the problem
named; `_finish` clips the result and restores a trailing channel axis. `_scale` and `_factor`
turn the release's constants into this image's size and strength.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

LEVELS = (1, 2, 3, 4)
REFERENCE_SIZE = 320


class Photo(NamedTuple):
    """A transformed image with the masks and boxes that follow it.

    Fields:
      image: float32, the input's shape ([H, W] or [H, W, 1]), values in [0, 1].
      masks: the input masks moved with the image (same shape and dtype), or None.
      boxes: float32 [M, 4] (x0, y0, x1, y1) moved with the image, or None.
    """

    image: np.ndarray
    masks: np.ndarray | None
    boxes: np.ndarray | None


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in LEVELS:
        raise ValueError(f"level must be an int in 1..4, got {level!r}.")
    return int(level)


def _check_image(image: Any) -> tuple[np.ndarray, bool]:
    """-> (float32 [H, W] copy, had_channel_axis)."""
    x = np.asarray(image)
    channel = x.ndim == 3 and x.shape[-1] == 1
    if not (x.ndim == 2 or channel):
        raise ValueError(f"image must be [H, W] or [H, W, 1], got shape {x.shape}.")
    x = x[..., 0] if channel else x
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got {x.shape}.")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values.")
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError(
            f"image values must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]; convert "
            "TorchXRayVision-scale images with (x + 1024) / 2048.")
    return np.clip(x, 0.0, 1.0), channel


def _check_masks(masks: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if masks is None:
        return None
    m = np.asarray(masks)
    if m.ndim not in (2, 3) or m.shape[-2:] != shape:
        raise ValueError(f"masks must be [H, W] or [K, H, W] with H, W = {shape}, "
                         f"got shape {m.shape}.")
    return m


def _check_boxes(boxes: Any) -> np.ndarray | None:
    if boxes is None:
        return None
    b = np.asarray(boxes, np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [M, 4] as (x0, y0, x1, y1), got shape {b.shape}.")
    if not np.isfinite(b).all():
        raise ValueError("boxes contain NaN or infinite values.")
    return b


def _prep(image, level, masks, boxes):
    """Validates the common arguments -> (level, float32 [H, W] image, channel?, masks, boxes)."""
    level = _check_level(level)
    x, channel = _check_image(image)
    return level, x, channel, _check_masks(masks, x.shape), _check_boxes(boxes)


def _finish(x: np.ndarray, channel: bool, masks, boxes) -> Photo:
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return Photo(x[..., None] if channel else x, masks, boxes)


def _scale(x: np.ndarray) -> float:
    return min(x.shape) / REFERENCE_SIZE


def _factor(level: int) -> float:
    """The release's level -> strength: 0.5 at level 1, else the level itself."""
    return 0.5 if level == 1 else float(level)
