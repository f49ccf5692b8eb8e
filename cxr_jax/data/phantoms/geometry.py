"""Where things are: the patient's pose on the image and the shape of each lung.

Owns the chunk's coordinate frame (`Frame`: the pose draws and every pixel's patient coordinates
X, Y), the per-side lung outline (a skewed half-ellipse above a diaphragm dome) and the
conversions between patient coordinates and image rows / columns, including the bands of rows or
columns a drawing step can be limited to. Coordinates are normalised: the image spans [-1, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cxr_jax.data.phantoms._fields import _axis, _b, _Draws

SKEW = 0.25   # apex lies medial of the lung's centre line by this fraction of its half-width

Pose = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # scale, theta, tx, ty; each [B]


@dataclasses.dataclass(slots=True)
class Frame:
    """One chunk's pixel grid seen from the patient.

    B images of S x S pixels; `pose` maps patient to image coordinates. X, Y [B, S, S] float32 are
    each pixel's patient coordinates (X < 0 is the patient's right, on the image left; Y grows
    downwards); `px[side]` is side * X, the coordinate growing laterally on that side (side -1:
    patient right, +1: left), and `cols[side]` the image columns any point with px > -0.15 on
    that side can fall in. `edge` is the anti-aliasing width of anatomy edges, `thin` the
    half-width of the pleural line, `pix` one pixel, all in normalised units.
    """

    B: int
    S: int
    pix: float
    edge: float
    thin: float
    pose: Pose
    X: np.ndarray
    Y: np.ndarray
    absX: np.ndarray
    px: dict[int, np.ndarray]
    cols: dict[int, slice]

    def zeros(self, dtype=np.float32) -> np.ndarray:
        """An all-zero [B, S, S] stack (a layer or, with dtype=bool, a mask)."""
        return np.zeros((self.B, self.S, self.S), dtype)

    def window(self, side: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """px[side], Y and each of `arrays` [B, S, S] cut to the columns cols[side]."""
        cs = self.cols[side]
        return (self.px[side][..., cs], self.Y[..., cs]) + tuple(a[..., cs] for a in arrays)


def draw_frame(d: _Draws, S: int) -> Frame:
    """Draws each image's pose (scale, small rotation, shift) and builds its patient grid."""
    pix = 2.0 / S
    u, v = _axis(S), _axis(S)
    scale = d.u(0.90, 1.0)
    theta = d.u(-0.06, 0.06)
    tx, ty = d.u(-0.04, 0.04), d.u(-0.03, 0.05)
    pose = (scale, theta, tx, ty)
    c, s = np.cos(theta) / scale, np.sin(theta) / scale
    X = _b(c)[:, :, 0:1] * u[None, None, :] + (_b(s) * v[None, :, None] + _b(-(c * tx + s * ty)))
    Y = _b(-s)[:, :, 0:1] * u[None, None, :] + (_b(c) * v[None, :, None] + _b(s * tx - c * ty))
    return Frame(B=d.n, S=S, pix=pix, edge=max(0.012, 0.9 * pix), thin=max(0.010, 0.65 * pix),
                 pose=pose, X=X, Y=Y, absX=np.abs(X), px={-1: -X, +1: X},
                 cols={side: col_band(pose, side, -0.15, S) for side in (-1, +1)})


def lung_frame(d: _Draws, side: int) -> dict[str, np.ndarray]:
    """Per-image lung geometry for one side (side=-1 patient right / image left, +1 left)."""
    lateral = d.u(0.68, 0.76)
    medial = np.full(d.n, 0.05)
    apex = d.u(-0.80, -0.70)
    base = d.u(0.36, 0.44) - (0.03 if side < 0 else 0.0)   # right hemidiaphragm sits higher
    dome_h = d.u(0.10, 0.16)
    return dict(l=lateral, m=medial, cx=(lateral + medial) / 2, a=(lateral - medial) / 2,
                yt=apex, yb=base, h=base - apex, dh=dome_h, yd=base + 0.02)


def lung_e(px, y, f, sub=None):
    """Skewed-ellipse value e (< 1 inside the lung outline) at patient coords (px, y)."""
    g = {k: _b(v if sub is None else v[sub]) for k, v in f.items()}
    t = (g["yb"] - y) / g["h"]
    xs = (px - g["cx"]) / g["a"] + SKEW * t
    return xs * xs + t * t


def dome(px, f, sub=None):
    """Diaphragm dome height Y(px) for one side (smaller Y is higher on the image)."""
    g = {k: _b(v if sub is None else v[sub]) for k, v in f.items()}
    q = (px - g["cx"]) / (1.15 * g["a"])
    return g["yd"] - g["dh"] * (1.0 - q * q)


def to_pixel(x, y, pose, size):
    """Patient coords [B, M] -> nearest pixel (row, col) [B, M] under each image's pose."""
    scale, theta, tx, ty = (p[:, None] for p in pose)
    u = tx + scale * (np.cos(theta) * x - np.sin(theta) * y)
    v = ty + scale * (np.sin(theta) * x + np.cos(theta) * y)
    col = np.clip(np.floor((u + 1.0) * 0.5 * size), 0, size - 1).astype(np.int64)
    row = np.clip(np.floor((v + 1.0) * 0.5 * size), 0, size - 1).astype(np.int64)
    return row, col


def col_band(pose, side: int, px_min: float, size: int) -> slice:
    """Image columns that can hold points with side * X >= px_min for every pose."""
    scale, theta, tx, ty = pose
    reach = scale * np.abs(np.sin(theta)) * 1.2          # |Y| <= 1.2 on the image
    if side < 0:
        u_hi = np.max(tx + scale * np.cos(theta) * (-px_min) + reach)
        return slice(0, int(np.clip(np.ceil((u_hi + 1.0) * 0.5 * size) + 1, 0, size)))
    u_lo = np.min(tx + scale * np.cos(theta) * px_min - reach)
    return slice(int(np.clip(np.floor((u_lo + 1.0) * 0.5 * size) - 1, 0, size)), size)


def row_band(pose, y_lo, y_hi, size: int) -> slice:
    """Image rows that can hold patient heights [y_lo, y_hi] (per image) for every pose."""
    scale, theta, tx, ty = pose
    reach = scale * np.abs(np.sin(theta)) * 1.2          # |X| <= 1.2 on the image
    v_lo = np.min(ty + scale * np.cos(theta) * y_lo - reach)
    v_hi = np.max(ty + scale * np.cos(theta) * y_hi + reach)
    r0 = int(np.clip(np.floor((v_lo + 1.0) * 0.5 * size) - 1, 0, size))
    r1 = int(np.clip(np.ceil((v_hi + 1.0) * 0.5 * size) + 1, r0, size))
    return slice(r0, r1)
