"""Geometric transforms: one projective map moves the image, its masks and its boxes together.

`warp` applies a 3 x 3 homography (image interpolated, masks nearest-neighbour with zero fill,
box corners mapped and their bounding box clipped to the image); `homography` solves for the map
taking four points to four others; `translate` and `rotate` build the simple maps. The levelled
transforms `tilt` (perspective), `rotation` and `translation` draw their parameters from `rng`
and keep the image size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cxr_jax.data.photo._common import (Photo, _check_boxes, _check_image, _check_level,
                                        _check_masks, _finish)

def warp(image: np.ndarray, matrix: np.ndarray, *, masks: np.ndarray | None = None,
         boxes: np.ndarray | None = None, order: int = 1) -> Photo:
    """Applies a projective map to an image and moves its masks and boxes with it.

    With p = (x, y, 1) in continuous pixel coordinates (pixel centres at j + 1/2, i + 1/2), the
    output at p_out is the input at matrix^-1 p_out (interpolation `order`, 0 outside the input);
    masks use nearest neighbour; box corners map forward by p_out = matrix p_in.

    Args:
      image: [H, W] or [H, W, 1] in [0, 1].
      matrix: [3, 3] forward homography (input -> output pixel coordinates).
      masks: optional [H, W] or [K, H, W].
      boxes: optional [M, 4] (x0, y0, x1, y1).
      order: spline order for the image (0 nearest, 1 bilinear, 3 bicubic).
    Returns:
      Photo with the warped image, masks and boxes.
    """
    x, channel = _check_image(image)
    masks = _check_masks(masks, x.shape)
    boxes = _check_boxes(boxes)
    m = np.asarray(matrix, np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(f"matrix must be a finite invertible 3 x 3 homography, got {m!r}.")
    H, W = x.shape
    inv = np.linalg.inv(m)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    den = inv[2, 0] * jj + inv[2, 1] * ii + inv[2, 2]
    xs = (inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2]) / den - 0.5
    ys = (inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2]) / den - 0.5
    coords = np.stack([ys, xs])
    out = ndimage.map_coordinates(x, coords, order=order, mode="constant", cval=0.0,
                                  prefilter=order > 1)
    if masks is not None:
        flat = masks.reshape((-1, H, W))
        moved = np.stack([ndimage.map_coordinates(f.astype(np.float32), coords, order=0,
                                                  mode="constant", cval=0.0) for f in flat])
        masks = moved.astype(masks.dtype).reshape(masks.shape)
    if boxes is not None:
        boxes = _warp_boxes(boxes, m, W, H)
    return _finish(out, channel, masks, boxes)


def _warp_boxes(boxes: np.ndarray, m: np.ndarray, W: int, H: int) -> np.ndarray:
    """Maps the four corners of each box, takes their bounding box, clips it to the image."""
    x0, y0, x1, y1 = boxes.T.astype(np.float64)
    cx = np.stack([x0, x1, x1, x0], axis=1)
    cy = np.stack([y0, y0, y1, y1], axis=1)
    den = m[2, 0] * cx + m[2, 1] * cy + m[2, 2]
    px = (m[0, 0] * cx + m[0, 1] * cy + m[0, 2]) / den
    py = (m[1, 0] * cx + m[1, 1] * cy + m[1, 2]) / den
    out = np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], axis=1)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, W)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, H)
    return out.astype(np.float32)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3 x 3 projective map taking four points src [4, 2] to dst [4, 2] (x, y).

    Solves the 8 linear equations h11 x + h12 y + h13 - u (h31 x + h32 y + 1) = 0 (and the same
    for v) exactly; raises ValueError for degenerate (collinear) points.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != (4, 2) or dst.shape != (4, 2):
        raise ValueError("src and dst must be [4, 2] arrays of (x, y) points.")
    a = np.zeros((8, 8))
    rhs = np.zeros(8)
    for k, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * k] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * k + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        rhs[2 * k], rhs[2 * k + 1] = u, v
    try:
        h = np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError as err:
        raise ValueError("degenerate points: no homography maps src to dst.") from err
    return np.append(h, 1.0).reshape(3, 3)


def translate(image, dx: float, dy: float, *, masks=None, boxes=None) -> Photo:
    """Shifts content by (dx, dy) pixels (right, down), zero fill; exact for integer shifts."""
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])
    return warp(image, m, masks=masks, boxes=boxes, order=1)


def rotate(image, degrees: float, *, masks=None, boxes=None) -> Photo:
    """Rotates content by `degrees` counter-clockwise (as seen) about the image centre."""
    x = np.asarray(image)
    H, W = x.shape[:2]
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # y points down, so a counter-clockwise turn on screen is (x, y) -> (c x + s y, -s x + c y)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    shift = np.array([[1.0, 0.0, W / 2], [0.0, 1.0, H / 2], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, -W / 2], [0.0, 1.0, -H / 2], [0.0, 0.0, 1.0]])
    return warp(image, shift @ rot @ back, masks=masks, boxes=boxes, order=1)


def tilt(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Perspective tilt: each corner of the source quad moves inwards by U(0, 0.05 level) of
    the width and height; that quad is stretched onto the full output (bicubic)."""
    level = _check_level(level)
    x = np.asarray(image)
    H, W = x.shape[:2]
    d = 0.05 * level
    src = np.array([[W * rng.uniform(0, d), H * rng.uniform(0, d)],
                    [W * rng.uniform(1 - d, 1), H * rng.uniform(0, d)],
                    [W * rng.uniform(1 - d, 1), H * rng.uniform(1 - d, 1)],
                    [W * rng.uniform(0, d), H * rng.uniform(1 - d, 1)]])
    dst = np.array([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]])
    return warp(image, homography(src, dst), masks=masks, boxes=boxes, order=3)


def rotation(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Rotation by 5 x level degrees, random sign, about the centre; same size, zero fill."""
    level = _check_level(level)
    sign = 1.0 if rng.integers(0, 2) else -1.0
    return rotate(image, sign * 5.0 * level, masks=masks, boxes=boxes)


def translation(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Shift by round(level x size / 16) pixels along x and along y, random signs, zero fill
    (the release: 20 level pixels at about 320)."""
    level = _check_level(level)
    x = np.asarray(image)
    H, W = x.shape[:2]
    sx = 1 if rng.integers(0, 2) else -1
    sy = 1 if rng.integers(0, 2) else -1
    return translate(image, sx * round(level * W / 16), sy * round(level * H / 16),
                     masks=masks, boxes=boxes)
