"""What the v2 phantoms add to the v1 drawing: lung vessels, soft tissue, and a real exposure.

v1 draws the anatomy as flat regions with sharp edges and white noise (a cartoon next to a
radiograph: a spectral slope of -2.9 where real images fall at about -3.5, nine times their
pixel-scale power, half again their share of edges; see `realism`). v2 keeps every v1 shape,
mask and finding and adds, from draws of its own (so a v1 and a v2 image of the same seed and
index show the same patient and the same findings):

  vessels      branching markings radiating from each hilum inside the lungs: each lung gets
               one tree from a bank of grown vessel trees (trunks leave the hilum and branch,
               narrowing, as projected cylinders), placed at the hilum and stretched to the
               lung, so lines run outwards, wander and split; they narrow and fade towards the
               periphery and are denser at the hila.
               They replace v1's markings (a pneumothorax still erases them in its crescent).
  soft_tissue  shoulder and axillary soft tissue, breast shadows in about half the patients,
               a faint mottled body texture, and arms beside the chest instead of black air.
  exposure     after everything is drawn: scatter (a veil of the image blurred over a sixth of
               its width), the detector's blur, then quantum noise whose spread grows with the
               square root of the signal and is itself blurred, as a downsampled radiograph's is.

The blur moves a finding's change at most a pixel or two past its mask: the masks stay the
regions the findings were drawn in.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from cxr_jax.data.phantoms._fields import _b, _Draws, _smooth, _soft, noise_window
from cxr_jax.data.phantoms.geometry import col_band, row_band

_SALT = 0x76320001    # v2's own draws: _Draws(seed ^ _SALT, index)
BLUR = 0.67            # detector blur sd, pixels at 224 (scaled with the image size)
NOISE = (0.0055, 0.011)  # quantum noise sd at full signal (scaled by sqrt(signal))
VESSEL = (0.30, 0.375)  # vessel contrast
MOTTLE = 0.015         # body texture amplitude (coarse field)
THICK = (0.015, 0.03)  # brightening towards the midline (path length through the chest)
FINE = 0.05           # amplitude of the pixel-scale texture
SHADE = 0.03         # smooth relative density variation
SCATTER = (0.08, 0.16)  # share of the image spread as a veil
GAS = (0.09, 0.18)    # bowel gas below the diaphragm
ARMS = (0.18, 0.32)   # soft tissue beside the chest
WALL = (0.08, 0.14)   # chest-wall overlap of the lateral lungs and apices


def draws(seed: int, index: np.ndarray) -> _Draws:
    """The v2 draws of a chunk, independent of the v1 ones."""
    return _Draws(seed ^ _SALT, index)


TREES = 24            # vessel trees kept per (seed, size)
# The tree canvas spans u (lateral distance from the hilum, in lung widths) in [-0.1, 1.1] and
# v (height from the hilum, in lung half-heights) in [-1.1, 1.1].
_U, _V = (-0.1, 1.1), (-1.1, 1.1)


def _grow(rng: np.random.Generator) -> list[tuple[float, ...]]:
    """Segments (u0, v0, u1, v1, radius0, radius1) of one branching vessel tree: trunks leave
    the hilum upwards, laterally and downwards; each step turns a little, and now and then a
    branch splits in two thinner ones, until the branches are capillary-thin or leave the
    lung."""
    segs = []
    stack = [(0.0, 0.0, a + rng.normal(0, 0.15), rng.uniform(0.018, 0.026))
             for a in (-1.3, -0.85, -0.4, 0.05, 0.45, 0.85, 1.25)]
    while stack:
        u, v, angle, radius = stack.pop()
        step = 0.05 + 2.0 * radius
        while radius > 0.0035 and -0.05 < u < 1.0 and abs(v) < 1.0:
            angle += rng.normal(0, 0.18)
            angle += 0.15 * (0.0 - angle) * (abs(angle) > 1.5)  # keep growing away from the hilum
            nu, nv = u + step * np.cos(angle), v + 2.0 * step * np.sin(angle)
            end_radius = radius * rng.uniform(0.88, 0.96)
            segs.append((u, v, nu, nv, radius, end_radius))
            u, v, radius = nu, nv, end_radius
            if rng.uniform() < 0.55:  # bifurcation: two thinner children
                spread = rng.uniform(0.25, 0.55)
                stack.append((u, v, angle + spread, radius * 0.72))
                angle -= spread * rng.uniform(0.3, 0.8)
                radius *= 0.8
    return segs


def _draw(segs, size: int) -> np.ndarray:
    """Projected thickness of the tree's vessels (cylinders), float32 [size, size]."""
    img = np.zeros((size, size), np.float32)
    su = (size - 1) / (_U[1] - _U[0])
    sv = (size - 1) / (_V[1] - _V[0])
    for u0, v0, u1, v1, r0, r1 in segs:
        x0, x1 = (u0 - _U[0]) * su, (u1 - _U[0]) * su
        y0, y1 = (v0 - _V[0]) * sv, (v1 - _V[0]) * sv
        rad = max(r0 * su, 0.35)
        lo_x, hi_x = int(max(0, min(x0, x1) - rad - 1)), int(min(size, max(x0, x1) + rad + 2))
        lo_y, hi_y = int(max(0, min(y0, y1) - rad - 1)), int(min(size, max(y0, y1) + rad + 2))
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        yy, xx = np.mgrid[lo_y:hi_y, lo_x:hi_x].astype(np.float32)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        dist2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
        r = (r0 + (r1 - r0) * t) * su
        r = np.maximum(r, 0.35)
        chord = np.sqrt(np.maximum(r * r - dist2, 0.0)) / su  # half chord, in lung widths
        np.maximum(img[lo_y:hi_y, lo_x:hi_x], chord, out=img[lo_y:hi_y, lo_x:hi_x])
    return img


@functools.lru_cache(maxsize=4)
def _tree_bank(seed: int, size: int) -> np.ndarray:
    """Read-only [TREES, size, size] vessel trees of one seed (drawn once, then reused)."""
    rng = np.random.default_rng([seed % 2**32, size, 0x7EE5])
    bank = np.stack([_draw(_grow(rng), size) for _ in range(TREES)])
    bank /= bank.max()
    bank.setflags(write=False)
    return bank


def _place(bank: np.ndarray, pick: np.ndarray, px: np.ndarray, y: np.ndarray, u0: float,
           width: np.ndarray, v0: np.ndarray, height: np.ndarray,
           where: np.ndarray) -> np.ndarray:
    """bank[pick[b]] sampled (bilinear, zero outside the canvas) at u = (px - u0) / width,
    v = (y - v0) / height for the pixels of image b inside the bounding box of where[b] (bool
    [B, S, S]: the pixels the caller keeps); 0 elsewhere. px and y are affine in the pixel
    coordinates (the pose is a similarity), so each image is one affine resampling.

    Inside the box the values are those of `ndimage.affine_transform` on the whole image, bit
    for bit: the canvas coordinates are formed as its C loop forms them (offset + r A[:, 0] +
    c A[:, 1], in float64) and handed to `ndimage.map_coordinates`, which shares its
    interpolation."""
    B, S, _ = px.shape
    n = bank.shape[-1]
    out = np.zeros((B, S, S), np.float32)
    su, sv = (n - 1) / (_U[1] - _U[0]), (n - 1) / (_V[1] - _V[0])
    rows, cols = where.any(axis=2), where.any(axis=1)
    for b in np.nonzero(rows.any(axis=1))[0]:
        r0, r1 = rows[b].argmax(), S - rows[b, ::-1].argmax()
        c0, c1 = cols[b].argmax(), S - cols[b, ::-1].argmax()
        # canvas (row, col) = A @ (r, c) + t, from the affine fields at three pixels
        col0 = ((px[b, 0, 0] - u0) / width[b] - _U[0]) * su
        row0 = ((y[b, 0, 0] - v0[b]) / height[b] - _V[0]) * sv
        dcol = np.array([px[b, 1, 0] - px[b, 0, 0], px[b, 0, 1] - px[b, 0, 0]]) / width[b] * su
        drow = np.array([y[b, 1, 0] - y[b, 0, 0], y[b, 0, 1] - y[b, 0, 0]]) / height[b] * sv
        a = np.asarray(np.stack([drow, dcol]), np.float64)
        t = np.asarray([row0, col0], np.float64)
        r = np.arange(r0, r1, dtype=np.float64)[:, None]
        c = np.arange(c0, c1, dtype=np.float64)[None, :]
        coords = np.stack([(t[k] + r * a[k, 0]) + c * a[k, 1] for k in range(2)])
        out[b, r0:r1, c0:c1] = ndimage.map_coordinates(bank[pick[b]], coords, output=np.float32,
                                                       order=1, mode="constant", cval=0.0)
    return out


def vessels(d: _Draws, seed: int, fr, pt, lung: np.ndarray) -> np.ndarray:
    """Vessel markings [B, S, S] (unit intensities, already cut to the soft lungs `lung`): for
    each lung one tree of the seed's bank, placed at the hilum and stretched to the lung.

    A tree is resampled only where it can show (on its side, inside the soft lungs), and the
    hilar blobs only on the rows they reach; everywhere else the markings are 0, as the cut to
    `lung` makes them anyway."""
    hc = pt.hy - 0.6 * pt.v_ext                         # hilar height, as v1's hila
    bank = _tree_bank(seed, fr.S)
    contrast = d.u(*VESSEL)
    marks = fr.zeros()
    in_lung = lung > 0.0
    rows = row_band(fr.pose, hc - 0.2, hc + 0.2, fr.S)  # the hilar blobs reach +-0.18 of hc
    hdy = (fr.Y[:, rows] - _b(hc)) * (1 / 0.13)
    hdy *= hdy
    for side in (-1, +1):
        f = pt.lungs[side]
        pick = np.floor(d.uniform01(1)[:, 0] * TREES).astype(np.int64)
        width = _b(f["l"] - 0.12) * _b(d.u(0.95, 1.1))
        height = _b(np.maximum(hc - f["yt"], f["yb"] - hc))
        lateral = fr.px[side]
        on_side = lateral > 0.0
        tree = _place(bank, pick, lateral, fr.Y, 0.12, width[:, 0, 0], hc, height[:, 0, 0],
                      on_side & in_lung)
        tree *= on_side
        marks += tree
        hdx = (lateral[:, rows] - 0.2) * (1 / 0.08)
        marks[:, rows] += 0.5 * _soft(1.0 - hdx * hdx - hdy, 1.5)  # hilar vessels
    marks *= lung
    marks *= _b(contrast)
    return marks


def soft_tissue(d: _Draws, fr, pt, body: np.ndarray, lung: np.ndarray, img: np.ndarray) -> None:
    """Adds shoulder / axillary soft tissue, breast shadows and a mottled body texture (in
    place; `body` is the soft body mask)."""
    female = d.bern(0.5)
    breast = d.u(0.05, 0.11) * female
    by = d.u(0.25, 0.45)
    bw = d.u(0.28, 0.38)
    shoulder = d.u(0.04, 0.08)
    mottle = _smooth(d.field(14), fr.S)
    add = fr.zeros()
    # Breast shadows: an ellipse per side, 0 beyond 1.2 times its half-axes (bw, 0.8 bw), so
    # only the rows with |Y - by| < 0.4 and the columns with side * X > 0 are computed.
    rows = row_band(fr.pose, by - 0.4, by + 0.4, fr.S)
    ey = (fr.Y[:, rows] - _b(by)) * _b(1.0 / (0.8 * bw))
    ey *= ey
    for side in (-1, +1):
        cs = col_band(fr.pose, side, 0.0, fr.S)
        ex = (fr.px[side][:, rows, cs] - 0.48) * _b(1.0 / bw)
        add[:, rows, cs] += _b(breast) * _soft(1.0 - ex * ex - ey[..., cs], 0.9)
    top = np.clip(-(fr.Y + 0.35) * (1 / 0.4), 0.0, 1.0)
    lateral = np.clip((fr.absX - 0.5) * (1 / 0.35), 0.0, 1.0)
    add += _b(shoulder) * np.maximum(top, lateral * 0.7)
    # Lungs brighter towards the chest wall and apices, where more tissue overlaps them.
    wall = np.clip((fr.absX - 0.38) * (1 / 0.34), 0.0, 1.0) ** 2
    wall += np.clip(-(fr.Y + 0.4) * (1 / 0.35), 0.0, 1.0) ** 2
    add += _b(d.u(*WALL)) * wall
    add += MOTTLE * mottle
    # Pixel-scale texture: the lung interstitium, fainter in the soft tissue.
    add += FINE * _smooth(d.field(80), fr.S) * (0.8 + 0.4 * lung)
    # Path length through an elliptical chest: thicker (brighter) towards the midline.
    add += _b(d.u(*THICK)) * np.sqrt(np.clip(1.0 - (fr.X * (1 / 0.95)) ** 2, 0.0, 1.0))
    add *= body
    img += add
    # Uneven density: smooth shading of the dense shadows, gas in the bowel below the domes.
    img *= 1.0 + SHADE * _smooth(d.field(8), fr.S) * body
    below = np.maximum(pt.lungs[-1]["yd"], pt.lungs[+1]["yd"])
    abdomen = _soft(fr.Y - _b(below), 0.08) * body
    gas = _soft(_smooth(d.field(36), fr.S) - 1.1, 0.5)
    gas *= abdomen
    img -= _b(d.u(*GAS)) * gas
    # Outside the chest wall: arms and shoulder soft tissue rather than black air.
    arms = _b(d.u(*ARMS)) * np.clip(0.8 + 0.4 * (fr.Y + 0.2), 0.5, 1.0)
    arms *= 1.0 + 0.3 * mottle
    img += arms * (1.0 - body)


@functools.lru_cache(maxsize=16)
def _linear_taps(n: int, size: int) -> tuple[np.ndarray, ...]:
    """Linear interpolation from n samples to `size` as `ndimage.zoom(order=1)` does it along
    one axis (grid_mode False, mode "constant"): output k reads samples i0[k] and i1[k] with
    weights w0[k] = 1 - x and w1[k] = 1 - w0[k], x the fraction of k (n - 1) / (size - 1), and
    is 0 where that coordinate lies past the last sample (`outside`). Read-only arrays."""
    zoom = (n - 1) / (size - 1) if size > 1 else 1.0
    cc = np.arange(size, dtype=np.float64) * zoom
    start = np.floor(cc)
    w0 = 1.0 - (cc - start)
    i0 = start.astype(np.int64)
    taps = (i0, np.minimum(i0 + 1, n - 1), w0, 1.0 - w0, cc > n - 1)
    for a in taps:
        a.setflags(write=False)
    return taps


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """[B, n, n] float32 -> [B, size, size] float32 by bilinear interpolation, bit for bit
    `ndimage.zoom(low, (1, size / n, size / n), order=1)` as scipy computes it (a 2x2x2 filter
    per pixel, half of it with weight 0 along the image axis, adding nothing): each pixel is
    the float64 sum, from 0 and in the filter's order, of the four taps value x row weight x
    column weight, then rounded to float32. The row weights are applied on the n-wide rows, so
    only the column step runs at full size, and none of the generic filter's per-pixel work.
    """
    i0, i1, w0, w1, outside = _linear_taps(low.shape[1], size)
    L = low.astype(np.float64)
    out = np.zeros((low.shape[0], size, size))     # 0.0 + the first tap, as the C loop starts
    tap = np.empty_like(out)
    for ir, wr in ((i0, w0), (i1, w1)):
        rows = L[:, ir, :]
        rows *= wr[:, None]
        for ic, wc in ((i0, w0), (i1, w1)):
            np.take(rows, ic, axis=2, out=tap)
            tap *= wc
            out += tap
    out[:, outside, :] = 0.0
    out[:, :, outside] = 0.0
    return out.astype(np.float32)


def exposure(d: _Draws, seed: int, S: int, img: np.ndarray) -> None:
    """Scatter, detector blur and signal-dependent, blurred quantum noise; clips to [0, 1]
    (in place)."""
    scatter = d.u(*SCATTER)
    noise_sd = d.u(NOISE[0], NOISE[1])
    small = max(4, S // 8)
    low = ndimage.zoom(img, (1, small / S, small / S), order=1)
    low = ndimage.gaussian_filter(low, sigma=(0, small / 6, small / 6), mode="nearest")
    veil = _upsample(low, S)
    img *= 1.0 - _b(scatter)
    img += _b(scatter) * veil
    sigma = BLUR * S / 224
    if sigma >= 0.3:
        img[...] = ndimage.gaussian_filter(img, sigma=(0, sigma, sigma), mode="nearest")
    noise = noise_window(d, seed, S) * np.sqrt(np.clip(img, 0.02, 1.0))
    noise *= _b(noise_sd)
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
