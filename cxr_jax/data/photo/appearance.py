"""Appearance transforms: they change pixel values only and return masks and boxes unchanged.

Brightness and contrast up or down, Gaussian and motion blur, matte (Gaussian) and glossy
(rectangular) glare, moire from screen line gratings, and a sigmoid exposure curve. Pixel sizes
are the release's values for images of about 320 pixels, scaled by min(H, W) / 320.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cxr_jax.data.photo._common import Photo, _factor, _finish, _prep, _scale

def brightness_up(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """x * (1 + 0.2 f + U(-0.01, 0.01)), f = 0.5 at level 1 else the level; clipped."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    factor = 1.0 + 0.2 * _factor(level) + rng.uniform(-0.01, 0.01)
    return _finish(x * factor, ch, masks, boxes)


def brightness_down(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """x / (1 + 0.4 f + U(-0.01, 0.01)), f = 0.5 at level 1 else the level."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    factor = 1.0 / (1.0 + 0.4 * _factor(level) + rng.uniform(-0.01, 0.01))
    return _finish(x * factor, ch, masks, boxes)


def _contrast(x: np.ndarray, c: float) -> np.ndarray:
    mean = float(x.mean())
    return mean + c * (x - mean)


def contrast_up(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """mean + c (x - mean), c = 1 + 0.2 f + U(-0.01, 0.01) (f as for brightness); clipped."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    return _finish(_contrast(x, 1.0 + 0.2 * _factor(level) + rng.uniform(-0.01, 0.01)), ch,
                   masks, boxes)


def contrast_down(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """mean + c (x - mean), c = 1 / (1 + 0.4 f + U(-0.01, 0.01))."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    return _finish(_contrast(x, 1.0 / (1.0 + 0.4 * _factor(level) + rng.uniform(-0.01, 0.01))),
                   ch, masks, boxes)


def blur(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Gaussian blur, sigma = (1.5, 3, 6, 10)[level - 1] x min(H, W) / 320 pixels."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    sigma = (1.5, 3.0, 6.0, 10.0)[level - 1] * _scale(x)
    return _finish(ndimage.gaussian_filter(x, sigma, mode="nearest"), ch, masks, boxes)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised anti-aliased line of `length` pixels at `angle` (radians), odd square."""
    size = int(math.ceil(length)) | 1
    k = np.zeros((size, size), np.float64)
    c = (size - 1) / 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(4 * length)))
    px, py = c + t * math.cos(angle), c + t * math.sin(angle)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(k, (yi, xi), w)
    return k / k.sum()


def motion_blur(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Mean along a line of (2, 10, 25, 45)[level - 1] x min(H, W) / 320 pixels (at least 2),
    in a random direction."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    length = max(2.0, (2, 10, 25, 45)[level - 1] * _scale(x))
    kernel = _line_kernel(length, rng.uniform(0.0, math.pi))
    return _finish(ndimage.convolve(x, kernel, mode="nearest"), ch, masks, boxes)


def _over(x: np.ndarray, alpha: np.ndarray, value: float = 1.0) -> np.ndarray:
    """Alpha-composites a layer of constant `value` with opacity `alpha` over x."""
    return x * (1.0 - alpha) + value * alpha


def glare_matte(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """A white Gaussian glare at a uniform random centre: opacity peak x exp(-r^2 / 2 sd^2),
    sd = 50 x level x min(H, W) / 320 pixels, peak = min(100 level, 150 + 20 level) / 255."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    H, W = x.shape
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    sd = 50.0 * level * _scale(x)
    peak = min(100.0 * level, 150.0 + 20.0 * level) / 255.0
    r2 = (np.arange(W)[None, :] + 0.5 - cx) ** 2 + (np.arange(H)[:, None] + 0.5 - cy) ** 2
    return _finish(_over(x, peak * np.exp(-r2 / (2 * sd * sd))), ch, masks, boxes)


def glare_glossy(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """A white rectangular reflection at one of nine places (corners, edge middles, centre):
    (0.1 level + U(0, 0.05)) of the width and height, opacity (150 + 20 level + U(0, 20)) / 255."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    H, W = x.shape
    bw = int((0.1 * level + rng.uniform(0, 0.05)) * W)
    bh = int((0.1 * level + rng.uniform(0, 0.05)) * H)
    place = int(rng.integers(0, 9))                  # row-major over a 3 x 3 layout
    alpha = (150.0 + 20.0 * level + rng.uniform(0, 20)) / 255.0
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    col, row = place % 3, place // 3
    x0 = (0, int(cx * W - bw / 2), W - bw)[col]
    y0 = (0, int(cy * H - bh / 2), H - bh)[row]
    a = np.zeros_like(x)
    a[max(0, y0):max(0, y0 + bh), max(0, x0):max(0, x0 + bw)] = alpha
    return _finish(_over(x, a), ch, masks, boxes)


def moire(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Two nearly parallel dark line gratings composited at 2x and downsampled (moire).

    Lines 1 pixel thick with gap (20, 4.5, 2.5, 1)[level - 1] pixels at 2x, opacity
    (0.05, 0.15, 0.35, 0.5)[level - 1]; grating angles 90 and 90 + N(0, 1) degrees, random
    offsets, line spacing varying by +-12.5% across the image (the release's "spread" 0.5
    perspective warp, of which the image sees the middle half).
    """
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    H, W = x.shape
    gap = (20.0, 4.5, 2.5, 1.0)[level - 1]
    opacity = (0.05, 0.15, 0.35, 0.5)[level - 1]
    thick, spread = 1.0, 0.5
    up = np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)
    up = ndimage.gaussian_filter(up, 0.5, mode="nearest")     # smoother than pixel replication
    yy, xx = np.mgrid[0:2 * H, 0:2 * W].astype(np.float64)
    yy -= H
    xx -= W
    dim = 2.0 * max(2 * H, 2 * W)                                # the release's mask size
    for angle in (90.0, 90.0 + rng.normal(0.0, 1.0)):
        a = math.radians(angle - 90.0)
        xr = xx * math.cos(a) + yy * math.sin(a)
        yr = -xx * math.sin(a) + yy * math.cos(a)
        yr = yr / (1.0 + spread * xr / dim) + rng.uniform(0, 100)
        line = np.mod(yr, thick + gap) < thick
        up = _over(up, opacity * line, 0.0)
    out = up.reshape(H, 2, W, 2).mean(axis=(1, 3))
    return _finish(out, ch, masks, boxes)


def exposure(image, level, rng, *, masks=None, boxes=None) -> Photo:
    """Sigmoid exposure curve 1 / (1 + exp(g (c - x))), gain g = (5, 7, 9, 11)[level - 1],
    cutoff c ~ U(0.4, 0.6) (under- or over-exposed); the release uses g = 5, c = 0.5."""
    level, x, ch, masks, boxes = _prep(image, level, masks, boxes)
    gain = (5.0, 7.0, 9.0, 11.0)[level - 1]
    cutoff = rng.uniform(0.4, 0.6)
    return _finish(1.0 / (1.0 + np.exp(gain * (cutoff - x))), ch, masks, boxes)
