"""CheXphoto-style transforms: what photographing a radiograph does to it.

Images are numpy arrays [H, W] or [H, W, 1] with values in [0, 1] (convert TorchXRayVision-scale
images first: x_unit = (x + 1024) / 2048). Every transform has the form

    fn(image, level, rng, *, masks=None, boxes=None) -> Photo(image, masks, boxes)

with `level` in 1..4 (ValueError otherwise) and `rng` a numpy Generator (all randomness comes
from it, so a seed fixes the result). Geometric transforms (tilt, rotation, translation) move
`masks` ([H, W] or [K, H, W], nearest-neighbour, zero fill) and `boxes` ([M, 4] as x0, y0, x1, y1
in pixel coordinates, pixel (i, j) covering [j, j+1) x [i, i+1)): each box's four corners are
mapped, their bounding box is taken and clipped to the image (a box pushed out of the image
becomes zero-area). The others return masks and boxes unchanged.

Parameters follow the CheXphoto release (stanfordmlgroup/cheXphoto, per-level constants read
from its transforms); pixel sizes there were for images of about 320 pixels and are scaled here
by min(H, W) / 320, except the moire line gap, which is a property of the screen's pixel grid.
Deliberate differences: rotation and translation keep the image size (the release enlarges the
canvas for rotation and shrinks the image by a 100-pixel border for translation), motion blur
runs along a random direction (the release: horizontal), and exposure grows with the level (the
release applies one fixed sigmoid curve). Recipes: "digital" = random contrast (up or down) then
random brightness (up or down) at the same level; "photographic" = glare_matte, moire, tilt.

Example:
  >>> image = np.full((64, 64), 0.5, np.float32)
  >>> out = apply("tilt", image, 2, 0, masks=image > 0.4, boxes=[[8, 8, 24, 24]])
  >>> out.image.shape, out.masks.dtype, out.boxes.shape
  ((64, 64), dtype('bool'), (1, 4))
  >>> photo_like = jpeg(apply("photographic", image, 1, 0).image)
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, NamedTuple

import numpy as np
from scipy import ndimage

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


# ---------------------------------------------------------------------------------------------
# Validation.

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


# ---------------------------------------------------------------------------------------------
# Geometry: one homography moves image, masks and boxes.

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


# ---------------------------------------------------------------------------------------------
# Photometric transforms.

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


# ---------------------------------------------------------------------------------------------
# Geometric transforms with levels.

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


# ---------------------------------------------------------------------------------------------
# Recipes, JPEG, registry.

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
