"""Batched, jit-compiled versions of the photo transforms, for robustness studies on device.

Why this module exists. The transforms in `appearance`, `geometry` and `recipes` take one numpy
image and a numpy Generator. A robustness study scores hundreds of images under every transform
at every level for several models; a Python loop over images that ships each one to the host and
back would cost more than the models themselves. Here every transform is one JAX function of a
whole batch [B, H, W]: what differs between images lives in a small dict of parameter arrays with a
leading batch axis, and the pixel work is broadcasting, vmap, a few convolutions and gathers. It is
compiled once per (transform, level, shapes) and reused for every later batch and parameter draw.

Three steps, each usable on its own:

  draw(name, level, key, n)                  -> params, a dict of arrays with leading axis n
  apply_batch(name, images, level, params)   -> photos [B, H, W]
  photo_batch(name, images, level, seed, indices) -> (photos, forward matrices or None)

`draw` splits `key` into one key per image and turns ONE uniform vector per image into that
image's parameters (affine maps for the uniform ones, the inverse CDF for the moire angle's
normal, thresholds for signs and coin flips): a single random call keeps the program small. The
names and ranges follow the numpy docstrings (see `draw`), and they do not depend on the image
size (the glare centre and the tilt corners are fractions of the width and height), so one draw
fits any resolution. `homographies(name, level, params, H, W)` gives the matrices that go with a
`draw` + `apply_batch` pair.

How keys are derived. `photo_batch` gives image i the key

    k_i = fold_in(fold_in(fold_in(PRNGKey(seed), indices[i]), NAMES.index(name)), level)

(seed passed as a uint32) and draws its parameters as `draw(name, level, k_i, 1)`. A photo thus
depends only on (seed, the image's index in the data set, transform, level), not on the batch it
was put in, its place there or the batch size, so a study can be re-batched or resumed freely.
The parameters come from JAX's generator: a seed does not reproduce the numpy version's draws.

Geometric transforms (tilt, rotation, translation, photographic) also return their forward
homographies [B, 3, 3]: input pixel coordinates -> photo pixel coordinates, pixel (i, j) covering
[j, j+1) x [i, i+1), as in `geometry.warp`. `unwarp` uses them to pull a map computed on a photo
(a saliency map, say) back into the original's frame, with a mask of where that is defined, and
`warp_masks` moves [B, K, H, W] boolean masks forward (nearest neighbour, zero fill). `jpeg_batch`
is a baseline grayscale JPEG round trip written as an 8 x 8 block DCT, so that compression can be
modelled without leaving the device; as "jpeg" in `NAMES` it runs at quality 75 and ignores the
level (which is still checked).

Where this departs from the numpy versions:
  * Images are interpolated bilinearly by every geometric transform; the numpy `tilt` is bicubic.
    Samples follow scipy's mode="constant": a source position off the input's pixel-centre grid
    [0, H-1] x [0, W-1] gives 0 (with 1e-4 px of slack for float32 round-off), one on it is
    bilinear. Masks use scipy's order-0 rule (nearest, halves rounded up) with the same test.
  * Everything runs in float32 (numpy works partly in float64); results agree to ~1e-5.
    Convolutions and DCT products ask for full float32 precision, so no TF32 on GPUs.
  * The tilt homography solves the same 8 x 8 system with jnp.linalg.solve, but in coordinates
    normalised by the image size (better conditioned in float32), then scales back to pixels.
  * The moire pre-smoothing is the numpy version's sigma-0.5 Gaussian with nearest edges, not an
    approximation; the gratings are computed in float32, which can move a line edge by one 2x
    sub-pixel where a grating's phase lies within ~1e-5 of a line boundary.
  * Blur and jpeg have no random parameters: their params dicts are empty.
  * JPEG uses an exact floating-point DCT where libjpeg (as Pillow calls it) uses its fixed-point
    "islow" DCTs. Smooth images come out within a few grey levels of Pillow's; on noisy ones a
    quantised coefficient that lies on a rounding tie (within ~1%) can round the other way, which
    moves its whole 8 x 8 block by up to about a quarter of that coefficient's quantiser step
    (around 10 grey levels at quality 75) while the mean difference stays below one grey level.
    Coefficients round half away from zero, as in libjpeg. Quality may be 1..100.

All transforms clip their output (and, in the recipes, each intermediate result, as the numpy
versions do) to [0, 1]. Inputs are checked with ValueErrors that name the problem and the fix; the
value checks (NaN, range) cost one host sync per call and are skipped for traced images, so
`jax.jit(apply_batch, static_argnames=("name", "level"))` works too.

Example:
  >>> photos, mats = photo_batch("rotation", images, 2, seed=0, indices=np.arange(len(images)))
  >>> back, valid = unwarp(saliency_on_photos, mats)     # compare with saliency on originals
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cxr_jax.data.photo._common import LEVELS, REFERENCE_SIZE
from cxr_jax.data.photo.registry import GEOMETRIC, TRANSFORMS

NAMES: tuple[str, ...] = tuple(TRANSFORMS) + ("jpeg",)
JPEG_QUALITY = 75
_HIGHEST = lax.Precision.HIGHEST        # no TF32 / bf16 passes in convolutions and einsums
_EDGE_TOL = 1e-4                        # px: slack of the "inside the input" test

# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order.
_IJG_LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.int64)


# ----------------------------------------------------------------------------- argument checks

def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"Unknown photo transform {name!r}. Known: {', '.join(NAMES)}.")
    return name


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in LEVELS:
        raise ValueError(f"level must be an int in 1..4 (1 mild .. 4 severe), got {level!r}; "
                         "pass one of cxr_jax.data.photo.LEVELS.")
    return int(level)


def _check_quality(quality: Any) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100 (libjpeg's scale), got {quality!r}.")
    return int(quality)


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


@jax.jit
def _value_stats(x):
    return jnp.any(~jnp.isfinite(x)), jnp.min(x), jnp.max(x)


def _check_images(images: Any, what: str = "images") -> jax.Array:
    """Shape, dtype and (unless traced) value checks -> float32 [B, H, W] clipped to [0, 1]."""
    if not _is_traced(images) and not isinstance(images, jax.Array):
        images = np.asarray(images)
    shape, dtype = tuple(images.shape), images.dtype
    if len(shape) != 3:
        raise ValueError(
            f"{what} must be a batch [B, H, W] of grayscale images, got shape {shape}; add a "
            f"batch axis with {what}[None] or drop a trailing channel axis with {what}[..., 0].")
    if shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(f"{what} must hold at least one image of at least 2 x 2 pixels, "
                         f"got shape {shape}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{what} must be floating point with values in [0, 1], got dtype "
                         f"{dtype}; convert 8-bit images with {what}.astype(np.float32) / 255.")
    if not _is_traced(images):
        if isinstance(images, jax.Array):
            bad, lo, hi = (np.asarray(v) for v in jax.device_get(_value_stats(images)))
        else:
            x = images.astype(np.float32, copy=False)
            bad = not np.isfinite(x).all()
            lo, hi = (x.min(), x.max()) if not bad else (0.0, 0.0)
        if bad:
            raise ValueError(f"{what} contain NaN or infinite values; fix or drop those images "
                             "before transforming them.")
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{what} values must lie in [0, 1], got [{float(lo):.4g}, {float(hi):.4g}]; "
                "convert TorchXRayVision-scale images with (x + 1024) / 2048.")
    return jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0)


def _check_matrices(matrices: Any, batch: int) -> jax.Array:
    shape = tuple(jnp.shape(matrices))
    if shape != (batch, 3, 3):
        raise ValueError(f"matrices must be [B, 3, 3] forward homographies with B = {batch}, "
                         f"got shape {shape}; use those from photo_batch or homographies.")
    return jnp.asarray(matrices, jnp.float32)


@functools.lru_cache(maxsize=None)
def _param_spec(name: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> {param: (per-image shape, dtype)}, read off `draw` without running it."""
    out = jax.eval_shape(lambda k: _draw_impl(k, name, 1, 1), jax.random.PRNGKey(0))
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in out.items()}


def _check_params(name: str, params: Any, batch: int) -> dict[str, jax.Array]:
    spec = _param_spec(name)
    if not isinstance(params, dict) or set(params) != set(spec):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params for {name!r} must be a dict with keys {sorted(spec)}, got "
                         f"{got}; make them with draw({name!r}, level, key, n=B).")
    out = {}
    for k, (shape, dtype) in spec.items():
        v = params[k]
        if tuple(jnp.shape(v)) != (batch,) + shape:
            raise ValueError(f"params[{k!r}] for {name!r} must have shape {(batch,) + shape} "
                             f"(one entry per image), got {tuple(jnp.shape(v))}; make them "
                             f"with draw({name!r}, level, key, n=B).")
        out[k] = jnp.asarray(v, dtype)
    return out


# ----------------------------------------------------------------------------- parameter draws

# Every image's parameters come from ONE uniform draw u ~ U[0, 1)^k on its key, mapped per
# parameter: (name, shape, kind, lo, hi). One threefry call per image keeps both the compiled
# program and its compile time small. Kinds: "uniform" lo + (hi - lo) u; "normal" N(0, 1) by the
# inverse CDF; "sign" +-1 and "coin" bool with probability 1/2; "int" floor in lo..hi-1.
_JITTER = (("jitter", (), "uniform", -0.01, 0.01),)
_GLARE = (("cx", (), "uniform", 0.0, 1.0), ("cy", (), "uniform", 0.0, 1.0))
_MOIRE = (("angle", (), "normal", 0.0, 0.0), ("offsets", (2,), "uniform", 0.0, 100.0))
_TILT = (("corners", (4, 2), "uniform", 0.0, 0.05),)      # hi is multiplied by the level
_SPECS: dict[str, tuple] = {
    "brightness_up": _JITTER,
    "brightness_down": _JITTER,
    "contrast_up": _JITTER,
    "contrast_down": _JITTER,
    "blur": (),
    "motion_blur": (("angle", (), "uniform", 0.0, math.pi),),
    "glare_matte": _GLARE,
    "glare_glossy": (("w_jitter", (), "uniform", 0.0, 0.05), ("h_jitter", (), "uniform", 0.0, 0.05),
                     ("place", (), "int", 0, 9), ("alpha_jitter", (), "uniform", 0.0, 20.0),
                     ("cx", (), "uniform", 0.3, 0.7), ("cy", (), "uniform", 0.3, 0.7)),
    "moire": _MOIRE,
    "tilt": _TILT,
    "rotation": (("sign", (), "sign", 0, 0),),
    "translation": (("sx", (), "sign", 0, 0), ("sy", (), "sign", 0, 0)),
    "exposure": (("cutoff", (), "uniform", 0.4, 0.6),),
    "digital": (("contrast_up", (), "coin", 0, 0), ("brightness_up", (), "coin", 0, 0),
                ("contrast_jitter", (), "uniform", -0.01, 0.01),
                ("brightness_jitter", (), "uniform", -0.01, 0.01)),
    "photographic": (("glare_cx", (), "uniform", 0.0, 1.0), ("glare_cy", (), "uniform", 0.0, 1.0),
                     ("moire_angle", (), "normal", 0.0, 0.0),
                     ("moire_offsets", (2,), "uniform", 0.0, 100.0)) + _TILT,
    "jpeg": (),
}
assert tuple(_SPECS) == NAMES

# tilt: corner k of the source quad, as fractions of (W, H), moved inwards from the output's
# corner by U(0, 0.05 level) along x and along y
_CORNER_BASE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
_CORNER_INWARD = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], np.float32)


def _draw_one(key, name, level):
    spec = _SPECS[name]
    sizes = [math.prod(shape) for _, shape, *_ in spec]
    u = jax.random.uniform(key, (max(1, sum(sizes)),), jnp.float32)
    out, at = {}, 0
    for (param, shape, kind, lo, hi), size in zip(spec, sizes):
        v = u[at:at + size].reshape(shape)
        at += size
        if param == "corners":
            v = _CORNER_BASE + _CORNER_INWARD * (lo + (hi * level - lo) * v)
        elif kind == "uniform":
            v = lo + (hi - lo) * v
        elif kind == "normal":      # u in [0, 1): keep the inverse CDF finite
            v = jnp.sqrt(2.0) * lax.erf_inv(jnp.clip(2.0 * v - 1.0, -1.0 + 1e-7, 1.0 - 1e-7))
        elif kind == "sign":
            v = jnp.where(v < 0.5, 1.0, -1.0).astype(jnp.float32)
        elif kind == "coin":
            v = v < 0.5
        elif kind == "int":
            v = jnp.clip(jnp.floor(lo + (hi - lo) * v), lo, hi - 1).astype(jnp.int32)
        out[param] = v
    return out


def _draw_impl(key, name, level, n):
    return jax.vmap(lambda k: _draw_one(k, name, level))(jax.random.split(key, n))


_draw_jit = jax.jit(_draw_impl, static_argnums=(1, 2, 3))


def draw(name: str, level: int, key: jax.Array, n: int) -> dict[str, jax.Array]:
    """Per-image parameters of transform `name` at `level` for n images, all from `key`.

    `key` is split into n keys, one per image. Returns a dict of arrays with leading axis n
    (empty for blur and jpeg). Entries, by transform:
      brightness_*/contrast_*: jitter U(-0.01, 0.01), added to the level's factor.
      motion_blur: angle U(0, pi) radians.
      glare_matte: cx, cy U(0, 1), the centre as fractions of the width and height.
      glare_glossy: w_jitter, h_jitter U(0, 0.05), place 0..8 (row-major 3 x 3 layout),
        alpha_jitter U(0, 20), cx, cy U(0.3, 0.7).
      moire: angle N(0, 1) degrees (second grating), offsets [2] U(0, 100).
      tilt: corners [4, 2], the source quad (x, y) as fractions of (W, H), each corner moved
        inwards by U(0, 0.05 level).
      rotation: sign +-1. translation: sx, sy +-1. exposure: cutoff U(0.4, 0.6).
      digital: contrast_up, brightness_up (bool), contrast_jitter, brightness_jitter.
      photographic: glare_cx, glare_cy, moire_angle, moire_offsets, corners.
    """
    name, level = _check_name(name), _check_level(level)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int (the number of images), got {n!r}.")
    return _draw_jit(key, name, level, int(n))


# ----------------------------------------------------------------------------- pixel operations

def _factor(level: int) -> float:
    return 0.5 if level == 1 else float(level)


def _scale(shape) -> float:
    return min(shape[-2:]) / REFERENCE_SIZE


def _col(v):
    """[B] -> [B, 1, 1], for broadcasting a per-image value over its pixels."""
    return jnp.asarray(v)[:, None, None]


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel: radius int(truncate sigma + 0.5), normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * t * t / (sigma * sigma))
    return (w / w.sum()).astype(np.float32)


def _conv_valid(x4, kernel4, groups=1):
    return lax.conv_general_dilated(x4, kernel4, (1, 1), "VALID",
                                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                    feature_group_count=groups, precision=_HIGHEST)


def _gaussian(x, sigma: float):
    """Separable Gaussian blur of [B, H, W] with replicated edges (scipy mode="nearest")."""
    w = _gaussian_weights(sigma)
    r = (w.size - 1) // 2
    if r == 0:
        return x
    k = jnp.asarray(w)
    x = jnp.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")[:, None]
    x = _conv_valid(x, k.reshape(1, 1, -1, 1))[:, 0]
    x = jnp.pad(x, ((0, 0), (0, 0), (r, r)), mode="edge")[:, None]
    return _conv_valid(x, k.reshape(1, 1, 1, -1))[:, 0]


def _line_kernel(length: float, angle):
    """The numpy `_line_kernel` for one traced angle: anti-aliased line, odd square, sum 1."""
    size = int(math.ceil(length)) | 1
    c = (size - 1) / 2
    t = jnp.asarray(np.linspace(-(length - 1) / 2, (length - 1) / 2,
                                max(2, int(4 * length))), jnp.float32)
    px, py = c + t * jnp.cos(angle), c + t * jnp.sin(angle)
    x0, y0 = jnp.floor(px), jnp.floor(py)
    fx, fy = px - x0, py - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    k = jnp.zeros((size, size), jnp.float32)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        k = k.at[jnp.clip(y0 + dy, 0, size - 1), jnp.clip(x0 + dx, 0, size - 1)].add(w)
    return k / k.sum()


def _motion_blur(x, level, angle):
    length = max(2.0, (2, 10, 25, 45)[level - 1] * _scale(x.shape))
    kernels = jax.vmap(lambda a: _line_kernel(length, a))(angle)        # [B, k, k]
    r = kernels.shape[-1] // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r)), mode="edge")[None]        # [1, B, H', W']
    # scipy's convolve flips the kernel; lax's convolution is a correlation
    flipped = kernels[:, None, ::-1, ::-1]                              # [B, 1, k, k]
    return _conv_valid(xp, flipped, groups=x.shape[0])[0]


def _over(x, alpha, value=1.0):
    return x * (1.0 - alpha) + value * alpha


def _contrast(x, c):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    return mean + _col(c) * (x - mean)


def _brightness_factor(level, jitter, up):
    f = _factor(level)
    return jnp.where(up, 1.0 + 0.2 * f + jitter, 1.0 / (1.0 + 0.4 * f + jitter))


def _glare_matte(x, level, cx, cy):
    _, H, W = x.shape
    sd = 50.0 * level * _scale(x.shape)
    peak = min(100.0 * level, 150.0 + 20.0 * level) / 255.0
    dx = jnp.arange(W, dtype=jnp.float32)[None, None, :] + 0.5 - _col(cx * W)
    dy = jnp.arange(H, dtype=jnp.float32)[None, :, None] + 0.5 - _col(cy * H)
    return _over(x, peak * jnp.exp(-(dx * dx + dy * dy) / (2.0 * sd * sd)))


def _glare_glossy(x, level, p):
    _, H, W = x.shape
    bw = jnp.floor((0.1 * level + p["w_jitter"]) * W).astype(jnp.int32)
    bh = jnp.floor((0.1 * level + p["h_jitter"]) * H).astype(jnp.int32)
    alpha = (150.0 + 20.0 * level + p["alpha_jitter"]) / 255.0
    col, row = p["place"] % 3, p["place"] // 3
    x_mid = jnp.trunc(p["cx"] * W - bw / 2).astype(jnp.int32)
    y_mid = jnp.trunc(p["cy"] * H - bh / 2).astype(jnp.int32)
    x0 = jnp.where(col == 0, 0, jnp.where(col == 1, x_mid, W - bw))
    y0 = jnp.where(row == 0, 0, jnp.where(row == 1, y_mid, H - bh))
    cols = jnp.arange(W)[None, None, :]
    rows = jnp.arange(H)[None, :, None]
    inside = ((cols >= _col(jnp.maximum(0, x0))) & (cols < _col(jnp.maximum(0, x0 + bw)))
              & (rows >= _col(jnp.maximum(0, y0))) & (rows < _col(jnp.maximum(0, y0 + bh))))
    return _over(x, jnp.where(inside, _col(alpha), 0.0))


def _moire(x, level, angle, offsets):
    B, H, W = x.shape
    gap = (20.0, 4.5, 2.5, 1.0)[level - 1]
    opacity = (0.05, 0.15, 0.35, 0.5)[level - 1]
    thick, spread = 1.0, 0.5
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    up = _gaussian(up, 0.5)
    yy = jnp.arange(2 * H, dtype=jnp.float32)[None, :, None] - H
    xx = jnp.arange(2 * W, dtype=jnp.float32)[None, None, :] - W
    dim = 2.0 * max(2 * H, 2 * W)
    # first grating at exactly 90 degrees (no rotation), the second at 90 + N(0, 1)
    for deg, off in ((jnp.zeros_like(angle), offsets[:, 0]), (angle, offsets[:, 1])):
        a = _col(jnp.deg2rad(deg))
        xr = xx * jnp.cos(a) + yy * jnp.sin(a)
        yr = -xx * jnp.sin(a) + yy * jnp.cos(a)
        yr = yr / (1.0 + spread * xr / dim) + _col(off)
        line = jnp.mod(yr, thick + gap) < thick
        up = _over(up, opacity * line, 0.0)
    return up.reshape(B, H, 2, W, 2).mean(axis=(2, 4))


def _exposure(x, level, cutoff):
    gain = (5.0, 7.0, 9.0, 11.0)[level - 1]
    return 1.0 / (1.0 + jnp.exp(gain * (_col(cutoff) - x)))


# ----------------------------------------------------------------------------- homographies

def _solve_homography(corners):
    """[4, 2] source quad (normalised) -> 3 x 3 map taking it onto the unit square."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(corners, _CORNER_BASE):
        one, zero = jnp.ones_like(x), jnp.zeros_like(x)
        rows.append(jnp.stack([x, y, one, zero, zero, zero, -u * x, -u * y]))
        rows.append(jnp.stack([zero, zero, zero, x, y, one, -v * x, -v * y]))
        rhs += [u, v]
    h = jnp.linalg.solve(jnp.stack(rows), jnp.asarray(rhs, jnp.float32))
    return jnp.append(h, 1.0).reshape(3, 3)


def _tilt_matrices(corners, H, W):
    hn = jax.vmap(_solve_homography)(corners)
    s = jnp.diag(jnp.array([W, H, 1.0], jnp.float32))
    s_inv = jnp.diag(jnp.array([1.0 / W, 1.0 / H, 1.0], jnp.float32))
    return jnp.einsum("ij,bjk,kl->bil", s, hn, s_inv, precision=_HIGHEST)


def _rotation_matrices(degrees, H, W):
    a = jnp.deg2rad(degrees)
    c, s = jnp.cos(a), jnp.sin(a)
    # geometry.rotate: shift(W/2, H/2) @ [[c, s], [-s, c]] @ shift(-W/2, -H/2)
    tx = W / 2 - c * W / 2 - s * H / 2
    ty = H / 2 + s * W / 2 - c * H / 2
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)
    return jnp.stack([jnp.stack([c, s, tx], -1), jnp.stack([-s, c, ty], -1),
                      jnp.stack([zero, zero, one], -1)], -2)


def _translation_matrices(dx, dy):
    zero, one = jnp.zeros_like(dx), jnp.ones_like(dx)
    return jnp.stack([jnp.stack([one, zero, dx], -1), jnp.stack([zero, one, dy], -1),
                      jnp.stack([zero, zero, one], -1)], -2)


def _matrices(name, level, params, H, W):
    """Forward homographies [B, 3, 3] of a geometric transform, else None."""
    if name in ("tilt", "photographic"):
        return _tilt_matrices(params["corners"], H, W)
    if name == "rotation":
        return _rotation_matrices(params["sign"] * 5.0 * level, H, W)
    if name == "translation":
        return _translation_matrices(params["sx"] * float(round(level * W / 16)),
                                     params["sy"] * float(round(level * H / 16)))
    return None


def _inv3(m):
    """Inverses of [..., 3, 3] matrices by the adjugate (cheaper to compile than LU)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    co = [e * i - f * h, c * h - b * i, b * f - c * e,
          f * g - d * i, a * i - c * g, c * d - a * f,
          d * h - e * g, b * g - a * h, a * e - b * d]
    det = a * co[0] + b * co[3] + c * co[6]
    return (jnp.stack(co, -1) / det[..., None]).reshape(m.shape)


def _source_coords(back, H, W):
    """Where each output pixel samples its input, for [B, 3, 3] output -> input maps.

    Returns (rows, cols) in index units (pixel centres at integers), each [B, H, W], and
    `inside`: whether the position lies on the input's pixel-centre grid [0, H-1] x [0, W-1]."""
    jj = jnp.arange(W, dtype=jnp.float32)[None, None, :] + 0.5
    ii = jnp.arange(H, dtype=jnp.float32)[None, :, None] + 0.5
    m = back[:, :, :, None, None]                                        # [B, 3, 3, 1, 1]
    den = m[:, 2, 0] * jj + m[:, 2, 1] * ii + m[:, 2, 2]
    cols = (m[:, 0, 0] * jj + m[:, 0, 1] * ii + m[:, 0, 2]) / den - 0.5
    rows = (m[:, 1, 0] * jj + m[:, 1, 1] * ii + m[:, 1, 2]) / den - 0.5
    inside = ((rows >= -_EDGE_TOL) & (rows <= H - 1 + _EDGE_TOL)
              & (cols >= -_EDGE_TOL) & (cols <= W - 1 + _EDGE_TOL))
    return rows, cols, inside


def _bilinear(x, back):
    """Samples [B, H, W] at back @ (output pixel): bilinear inside, 0 outside -> (out, inside)."""
    _, H, W = x.shape
    rows, cols, inside = _source_coords(back, H, W)
    sample = jax.vmap(lambda img, r, c: jax.scipy.ndimage.map_coordinates(
        img, [r, c], order=1, mode="nearest"))
    return jnp.where(inside, sample(x, rows, cols), 0.0), inside


def _warp_images(x, forward):
    return _bilinear(x, _inv3(forward))[0]


# ----------------------------------------------------------------------------- transforms

def _apply_impl(images, params, name, level):
    """-> (photos [B, H, W], forward matrices [B, 3, 3] or None); images already checked."""
    x = images
    _, H, W = x.shape
    p = params
    clip = lambda v: jnp.clip(v, 0.0, 1.0)   # noqa: E731
    if name in ("brightness_up", "brightness_down"):
        out = x * _col(_brightness_factor(level, p["jitter"], name == "brightness_up"))
    elif name in ("contrast_up", "contrast_down"):
        out = _contrast(x, _brightness_factor(level, p["jitter"], name == "contrast_up"))
    elif name == "blur":
        out = _gaussian(x, (1.5, 3.0, 6.0, 10.0)[level - 1] * _scale(x.shape))
    elif name == "motion_blur":
        out = _motion_blur(x, level, p["angle"])
    elif name == "glare_matte":
        out = _glare_matte(x, level, p["cx"], p["cy"])
    elif name == "glare_glossy":
        out = _glare_glossy(x, level, p)
    elif name == "moire":
        out = _moire(x, level, p["angle"], p["offsets"])
    elif name == "exposure":
        out = _exposure(x, level, p["cutoff"])
    elif name == "digital":
        y = clip(_contrast(x, _brightness_factor(level, p["contrast_jitter"],
                                                 p["contrast_up"])))
        out = y * _col(_brightness_factor(level, p["brightness_jitter"], p["brightness_up"]))
    elif name == "photographic":
        y = clip(_glare_matte(x, level, p["glare_cx"], p["glare_cy"]))
        out = clip(_moire(y, level, p["moire_angle"], p["moire_offsets"]))
    elif name == "jpeg":
        out = _jpeg_impl(x, JPEG_QUALITY)
    else:
        out = x
    matrices = _matrices(name, level, p, H, W)
    if matrices is not None:
        out = _warp_images(out, matrices)
    return clip(out).astype(jnp.float32), matrices


_apply_jit = jax.jit(_apply_impl, static_argnames=("name", "level"))


def apply_batch(name: str, images: jax.Array, level: int, params: dict) -> jax.Array:
    """Transform `name` at `level` applied to a batch with per-image `params` (from `draw`).

    Args:
      name: one of NAMES.
      images: [B, H, W] float in [0, 1].
      level: 1..4 (ignored by "jpeg", but checked).
      params: draw(name, level, key, B) or the same keys and shapes.
    Returns:
      float32 [B, H, W] in [0, 1]. Compiled once per (name, level, shapes).
    """
    name, level = _check_name(name), _check_level(level)
    x = _check_images(images)
    p = _check_params(name, params, x.shape[0])
    return _apply_jit(x, p, name=name, level=level)[0]


_matrices_jit = jax.jit(_matrices, static_argnums=(0, 1, 3, 4))


def homographies(name: str, level: int, params: dict, height: int,
                 width: int) -> jax.Array | None:
    """Forward homographies [B, 3, 3] (input -> photo pixel coordinates) that apply_batch uses
    for a geometric transform with these params on height x width images; None for the others.
    With draw and apply_batch, this gives the matrices that unwarp and warp_masks need."""
    name, level = _check_name(name), _check_level(level)
    if name not in GEOMETRIC:
        return None
    if not all(isinstance(v, (int, np.integer)) and v >= 2 for v in (height, width)):
        raise ValueError(f"height and width must be ints >= 2, got {height!r}, {width!r}.")
    first = next(iter(params.values()), None) if isinstance(params, dict) else None
    batch = jnp.shape(first)[0] if first is not None and jnp.ndim(first) else -1
    p = _check_params(name, params, batch)
    return _matrices_jit(name, level, p, int(height), int(width))


def _photo_impl(images, seed, indices, name, level):
    tid = NAMES.index(name)

    def one(index):
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(jax.random.PRNGKey(seed), index), tid), level)
        return jax.tree.map(lambda a: a[0], _draw_impl(key, name, level, 1))

    return _apply_impl(images, jax.vmap(one)(indices), name, level)


_photo_jit = jax.jit(_photo_impl, static_argnames=("name", "level"))


def photo_batch(name: str, images: jax.Array, level: int, seed: int,
                indices) -> tuple[jax.Array, jax.Array | None]:
    """Photos of a batch whose randomness depends only on (seed, index, transform, level).

    Image i gets key fold_in(fold_in(fold_in(PRNGKey(seed), indices[i]), NAMES.index(name)),
    level) and parameters draw(name, level, that key, 1), so splitting a data set into batches
    in any way gives the same photos.

    Args:
      name: one of NAMES. images: [B, H, W] float in [0, 1]. level: 1..4.
      seed: int in [0, 2**32). indices: B distinct-per-image ints >= 0 (positions in the data set).
    Returns:
      (photos float32 [B, H, W], forward homographies float32 [B, 3, 3] for the geometric
      transforms — input pixel coordinates -> photo pixel coordinates — else None).
    """
    name, level = _check_name(name), _check_level(level)
    x = _check_images(images)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")
    if _is_traced(indices):
        idx = indices
    else:
        idx = np.asarray(indices)
        if idx.shape != (x.shape[0],) or not np.issubdtype(idx.dtype, np.integer) \
                or (idx.size and (idx.min() < 0 or idx.max() >= 2 ** 32)):
            raise ValueError(f"indices must be {x.shape[0]} non-negative ints (one per image, "
                             f"its position in the data set), got {indices!r}.")
        idx = idx.astype(np.uint32)
    return _photo_jit(x, np.uint32(seed), idx, name=name, level=level)


# ----------------------------------------------------------------------------- maps and masks

@jax.jit
def _unwarp_impl(maps, matrices):
    return _bilinear(maps, matrices)


def unwarp(maps: jax.Array, matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Resamples maps from the photo's frame back into the original's (bilinear).

    Original pixel p takes the photo's value at matrices @ p. Returns (maps float32 [B, H, W],
    valid bool [B, H, W]): valid where that position lies on the photo's pixel grid (between
    its outermost pixel centres); elsewhere the map is 0.
    """
    if _is_traced(maps) or isinstance(maps, jax.Array):
        m = maps
    else:
        m = np.asarray(maps)
    if m.ndim != 3 or not jnp.issubdtype(m.dtype, jnp.floating) and m.dtype != bool:
        raise ValueError(f"maps must be [B, H, W] float, got shape {tuple(m.shape)} and "
                         f"dtype {m.dtype}; add a batch axis with maps[None].")
    mats = _check_matrices(matrices, m.shape[0])
    return _unwarp_impl(jnp.asarray(m, jnp.float32), mats)


@jax.jit
def _warp_masks_impl(masks, matrices):
    B, K, H, W = masks.shape
    rows, cols, inside = _source_coords(_inv3(matrices), H, W)
    # scipy's order-0 rule: nearest with halves rounded up
    r = jnp.clip(jnp.floor(rows + 0.5), 0, H - 1).astype(jnp.int32)
    c = jnp.clip(jnp.floor(cols + 0.5), 0, W - 1).astype(jnp.int32)
    moved = jax.vmap(lambda m, r, c: m[:, r, c])(masks, r, c)           # [B, K, H, W]
    return moved & inside[:, None]


def warp_masks(masks: jax.Array, matrices: jax.Array) -> jax.Array:
    """Moves masks [B, K, H, W] (bool) by the forward homographies, as geometry.warp does:
    nearest neighbour, False where the source lies off the input. Returns bool [B, K, H, W]."""
    shape = tuple(jnp.shape(masks))
    if len(shape) != 4:
        raise ValueError(f"masks must be [B, K, H, W], got shape {shape}; add a mask axis "
                         "with masks[:, None].")
    mats = _check_matrices(matrices, shape[0])
    return _warp_masks_impl(jnp.asarray(masks).astype(bool), mats)


# ----------------------------------------------------------------------------- JPEG

def _quant_table(quality: int) -> np.ndarray:
    """libjpeg's jpeg_set_quality(quality, force_baseline=TRUE) for the luminance table."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255).astype(np.float32)


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: D[k, n] = c_k cos(pi (2n + 1) k / 16)."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.cos(np.pi * (2 * n + 1) * k / 16) * np.sqrt(2 / 8)
    d[0] = np.sqrt(1 / 8)
    return d.astype(np.float32)


def _jpeg_impl(x, quality):
    B, H, W = x.shape
    hp, wp = -(-H // 8) * 8, -(-W // 8) * 8
    v = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)
    v = jnp.pad(v, ((0, 0), (0, hp - H), (0, wp - W)), mode="edge") - 128.0
    blocks = v.reshape(B, hp // 8, 8, wp // 8, 8)                       # b, by, row, bx, col
    d = jnp.asarray(_dct_matrix())
    q = jnp.asarray(_quant_table(quality))
    coef = jnp.einsum("uk,bykxl,vl->byuxv", d, blocks, d, precision=_HIGHEST)
    ratio = coef / q[None, None, :, None, :]
    level_ = jnp.sign(ratio) * jnp.floor(jnp.abs(ratio) + 0.5)           # half away from zero
    deq = level_ * q[None, None, :, None, :]
    pix = jnp.einsum("uk,byuxv,vl->bykxl", d, deq, d, precision=_HIGHEST)
    pix = jnp.clip(jnp.round(pix + 128.0), 0.0, 255.0).reshape(B, hp, wp)[:, :H, :W]
    return pix / 255.0


_jpeg_jit = jax.jit(_jpeg_impl, static_argnames=("quality",))


def jpeg_batch(images: jax.Array, quality: int = JPEG_QUALITY) -> jax.Array:
    """Baseline grayscale JPEG encode + decode of a batch [B, H, W] in [0, 1] at `quality`
    (1..100, libjpeg's table scaling), on device. Returns float32 [B, H, W], multiples of 1/255."""
    quality = _check_quality(quality)
    return _jpeg_jit(_check_images(images), quality=quality)
