"""Synthetic chest radiograph phantoms with exact ground truth.

A phantom is a frontal (PA) chest radiograph sketch drawn from simple shapes: body outline (soft
tissue), two lung fields, heart, mediastinum with trachea, spine, posterior ribs, clavicles,
diaphragm domes and the abdomen below them. Every patient varies in size, position, rotation,
lung and heart proportions, tissue densities, contrast and noise. Findings are drawn on top, each
with its exact pixel mask, so a label is 1 exactly when its finding is drawn and its mask is
non-empty exactly then:

  nodule          small round opacity inside a lung
  mass            larger, lobulated round opacity inside a lung
  consolidation   irregular patchy opacity inside a lung
  effusion        fluid at a lung base: a meniscus rising towards the chest wall that blunts the
                  costophrenic angle and hides the dome (one or both sides)
  pneumothorax    a lucent crescent without lung markings between the chest wall and a thin
                  bright visceral pleural line (apex and lateral side of one lung)
  cardiomegaly    heart wider than half the thorax (cardiothoracic ratio > 0.5); mask = heart
  foreign_object  Object-CXR style coins, buttons, clips, wires and polygons, bright (metal)
  opacity         BrixIA-style diffuse haze in six zones scored 0-3 (`severity`)

Image orientation follows the radiological convention: the patient's right lung is on the image
left. Geometry is defined in normalised coordinates (the image spans [-1, 1] in both directions),
so any `image_size >= 32` gives the same anatomy.

Every image depends only on `(seed, index)`: its parameters are counter-based hashes of the seed,
the image's index in the stream and a parameter slot, and its pixel noise is a window of a
per-seed noise bank chosen by the same hashes. `generate(10, seed=s)` therefore equals the first
ten images of `generate(20, seed=s)`, and `generate(n, seed=s, start=k)` gives images k..k+n-1 of
the stream: a random-access source for a data loader.

Example:
  >>> batch = generate(16, image_size=128, seed=0)
  >>> batch.images.shape, batch.labels.shape, batch.masks.shape
  ((16, 128, 128, 1), (16, 8), (16, 8, 128, 128))
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Any, Mapping, NamedTuple

import numpy as np

FINDINGS: tuple[str, ...] = (
    "nodule", "mass", "consolidation", "effusion", "pneumothorax", "cardiomegaly",
    "foreign_object", "opacity",
)
CONCEPTS: tuple[str, ...] = (
    "left_lung", "right_lung", "heart", "mediastinum", "spine", "ribs", "clavicles", "diaphragm",
    "foreign_object", "opacity",
)
# BrixIA zones: A-C the patient's right lung (image left), D-F the left lung; upper, middle, lower.
ZONES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
DEFAULT_PREVALENCE = 0.4
INTENSITIES = ("xrv", "unit")
# Findings whose masks lie inside the lung fields (on the image).
LUNG_FINDINGS: tuple[str, ...] = (
    "nodule", "mass", "consolidation", "effusion", "pneumothorax", "opacity",
)
# Findings that make up the "opacity" concept (radio-opaque lung pathology).
OPACITY_FINDINGS: tuple[str, ...] = ("nodule", "mass", "consolidation", "effusion", "opacity")
# BrixIA score -> added brightness (unit intensities) of the diffuse haze.
_OPACITY_AMPLITUDE = np.array([0.0, 0.08, 0.14, 0.20], np.float32)
_CTR_NORMAL = (0.38, 0.46)
_CTR_ENLARGED = (0.56, 0.66)
_MIN_SIZE = 32
_CHUNK = 6
_NOISE_BANK = 16


class PhantomBatch(NamedTuple):
    """A batch of phantoms with their ground truth.

    Fields:
      images: [N, H, W, 1] float32, TorchXRayVision scale [-1024, 1024] (intensity="xrv") or [0, 1].
      labels: [N, K] float32 in {0, 1}, K = len(FINDINGS).
      finding_names: FINDINGS.
      masks: [N, K, H, W] bool; masks[i, k] is non-empty exactly when labels[i, k] == 1.
      concepts: [N, C, H, W] bool anatomy and pathology regions, C = len(CONCEPTS).
      concept_names: CONCEPTS.
      severity: [N, 6] int32 BrixIA scores 0-3 of zones A-F (A-C right lung, D-F left lung,
        upper / middle / lower); all zero exactly when labels[:, opacity] == 0.
      shortcut_mask: [N, H, W] bool, the burned-in shortcut tag (all False without a shortcut).
      marker_mask: [N, H, W] bool, the burned-in laterality letter ("L"/"R"), whether it is an
        uncorrelated film marker or the shortcut tag.
      ctr: [N] float32 cardiothoracic ratio the heart was drawn with (> 0.5 iff cardiomegaly).
      index: [N] int64 position of each image in the seed's stream.
    """

    images: np.ndarray
    labels: np.ndarray
    finding_names: tuple[str, ...]
    masks: np.ndarray
    concepts: np.ndarray
    concept_names: tuple[str, ...]
    severity: np.ndarray
    shortcut_mask: np.ndarray
    marker_mask: np.ndarray
    ctr: np.ndarray
    index: np.ndarray


# ---------------------------------------------------------------------------------------------
# Counter-based randomness: every value is a hash of (seed, image index, slot).

_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class _Draws:
    """Uniform draws per image; the k-th call of a kind uses the same slots for every chunking."""

    def __init__(self, seed: int, index: np.ndarray):
        key = _mix(np.array([seed % 2**64], np.uint64))
        golden = np.array([0x9E3779B97F4A7C15], np.uint64)
        self._base = _mix(key ^ _mix(index.astype(np.uint64) * golden + key))
        self._slot = 0
        self.n = index.shape[0]

    def uniform01(self, k: int) -> np.ndarray:
        """[B, k] float64 uniforms in [0, 1)."""
        slots = np.arange(self._slot, self._slot + k, dtype=np.uint64)
        self._slot += k
        x = _mix(self._base[:, None] + slots[None, :] * np.array([0xD1B54A32D192ED03], np.uint64))
        return (x >> _U64(11)).astype(np.float64) * (1.0 / 2**53)

    def u(self, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        """[B] uniforms in [lo, hi)."""
        return lo + (hi - lo) * self.uniform01(1)[:, 0]

    def bern(self, p: float | np.ndarray) -> np.ndarray:
        """[B] bool, True with probability p."""
        return self.uniform01(1)[:, 0] < p

    def choice(self, probs: tuple[float, ...]) -> np.ndarray:
        """[B] int category drawn with the given probabilities."""
        cdf = np.cumsum(np.asarray(probs, np.float64))
        return np.searchsorted(cdf / cdf[-1], self.uniform01(1)[:, 0], side="right")

    def field(self, g: int, gx: int | None = None) -> np.ndarray:
        """[B, g, gx] float32 iid zero-mean, unit-variance coefficients for a smooth field."""
        gx = g if gx is None else gx
        z = self.uniform01(g * gx).reshape(self.n, g, gx) - 0.5
        return (z * math.sqrt(12.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Grids, smooth random fields and the noise bank (cached per image size / seed).

@functools.lru_cache(maxsize=8)
def _axis(size: int) -> np.ndarray:
    """Pixel-centre coordinates in [-1, 1] along one axis, float32 [size]."""
    return ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _interp(size: int, g: int) -> np.ndarray:
    """Gaussian-kernel upsampling matrix [size, g] (float64) whose rows have unit L2 norm.

    With z iid unit-variance, (R z R^T)[i, j] has unit variance everywhere, and the field is
    smooth on the scale of the control-point spacing 2.4 / (g - 1).
    """
    centres = np.linspace(-1.2, 1.2, g)
    sigma = 0.8 * (centres[1] - centres[0])
    r = np.exp(-0.5 * ((_axis(size)[:, None].astype(np.float64) - centres[None, :]) / sigma) ** 2)
    r /= np.sqrt((r ** 2).sum(axis=1, keepdims=True))
    r.setflags(write=False)
    return r


def _matmul_1thread(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in row blocks small enough (m n k < 2^18) that BLAS runs them on one thread.

    Threaded BLAS on many small products spends its time waking and spinning threads, and
    `generate` already runs chunks in parallel threads; this keeps each product single-threaded
    (OpenBLAS' rule) without touching global BLAS settings. The result is the same product.
    """
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    rows = max(1, (1 << 18) // max(1, b.shape[0] * b.shape[1]) - 1)
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])
    return out


def _smooth(coeffs: np.ndarray, size: int) -> np.ndarray:
    """Smooth unit-variance random field [B, size, size] (float32) from coefficients [B, gy, gx].

    field_b = R_y z_b R_x^T, computed as 2-D GEMMs (a batched matmul with a broadcast operand
    falls off numpy's BLAS path). gy > gx gives features elongated horizontally. The GEMMs run in
    float64 and round to float32, so the result does not depend on how many images share the
    call (BLAS blocking changes the float64 rounding only, far below float32 ulp).
    """
    n, gy, gx = coeffs.shape
    ry, rx = _interp(size, gy), _interp(size, gx)
    z = np.ascontiguousarray(coeffs.transpose(0, 2, 1), dtype=np.float64)
    t = _matmul_1thread(z.reshape(n * gx, gy), ry.T).reshape(n, gx, size).transpose(0, 2, 1)
    t = np.ascontiguousarray(t).reshape(n * size, gx)
    return _matmul_1thread(t, rx.T).reshape(n, size, size).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise_bank(seed: int, size: int) -> np.ndarray:
    """Read-only [NB, size + pad, size + pad] float32 standard-normal noise for one seed."""
    rng = np.random.default_rng([seed % 2**32, (seed // 2**32) % 2**32, size, 0x5EED])
    pad = max(size // 2, 8)
    bank = rng.standard_normal((_NOISE_BANK, size + pad, size + pad), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased indicator of d > 0: clip(d / width + 1/2, 0, 1) (in place on d)."""
    d *= 1.0 / width
    d += 0.5
    return np.clip(d, 0.0, 1.0, out=d)


def _b(x: np.ndarray) -> np.ndarray:
    """[B] parameter -> [B, 1, 1] float32 for broadcasting against images."""
    return np.asarray(x, np.float32)[:, None, None]


# Bitmap font for the laterality markers (5 wide, 7 high).
_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@functools.lru_cache(maxsize=8)
def _glyph(letter: str, size: int) -> np.ndarray:
    """Letter bitmap scaled (nearest) to about 9% of the image height, bool [h, w]."""
    bits = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    h = max(7, int(round(0.09 * size)))
    w = max(5, int(round(h * 5 / 7)))
    return bits[(np.arange(h) * 7) // h][:, (np.arange(w) * 5) // w]


# ---------------------------------------------------------------------------------------------
# Rendering of one chunk.

def _lung_frame(d: _Draws, side: int) -> dict[str, np.ndarray]:
    """Per-image lung geometry for one side (side=-1 patient right / image left, +1 left)."""
    lateral = d.u(0.68, 0.76)
    medial = np.full(d.n, 0.05)
    apex = d.u(-0.80, -0.70)
    base = d.u(0.36, 0.44) - (0.03 if side < 0 else 0.0)   # right hemidiaphragm sits higher
    dome_h = d.u(0.10, 0.16)
    return dict(l=lateral, m=medial, cx=(lateral + medial) / 2, a=(lateral - medial) / 2,
                yt=apex, yb=base, h=base - apex, dh=dome_h, yd=base + 0.02)


_SKEW = 0.25   # apex lies medial of the lung's centre line by this fraction of its half-width


def _lung_e(px, y, f, sub=None):
    """Skewed-ellipse value e (< 1 inside the lung outline) at patient coords (px, y)."""
    g = {k: _b(v if sub is None else v[sub]) for k, v in f.items()}
    t = (g["yb"] - y) / g["h"]
    xs = (px - g["cx"]) / g["a"] + _SKEW * t
    return xs * xs + t * t


def _dome(px, f, sub=None):
    """Diaphragm dome height Y(px) for one side (smaller Y is higher on the image)."""
    g = {k: _b(v if sub is None else v[sub]) for k, v in f.items()}
    q = (px - g["cx"]) / (1.15 * g["a"])
    return g["yd"] - g["dh"] * (1.0 - q * q)


def _to_pixel(x, y, pose, size):
    """Patient coords [B, M] -> nearest pixel (row, col) [B, M] under each image's pose."""
    scale, theta, tx, ty = (p[:, None] for p in pose)
    u = tx + scale * (np.cos(theta) * x - np.sin(theta) * y)
    v = ty + scale * (np.sin(theta) * x + np.cos(theta) * y)
    col = np.clip(np.floor((u + 1.0) * 0.5 * size), 0, size - 1).astype(np.int64)
    row = np.clip(np.floor((v + 1.0) * 0.5 * size), 0, size - 1).astype(np.int64)
    return row, col


def _col_band(pose, side: int, px_min: float, size: int) -> slice:
    """Image columns that can hold points with side * X >= px_min for every pose."""
    scale, theta, tx, ty = pose
    reach = scale * np.abs(np.sin(theta)) * 1.2          # |Y| <= 1.2 on the image
    if side < 0:
        u_hi = np.max(tx + scale * np.cos(theta) * (-px_min) + reach)
        return slice(0, int(np.clip(np.ceil((u_hi + 1.0) * 0.5 * size) + 1, 0, size)))
    u_lo = np.min(tx + scale * np.cos(theta) * px_min - reach)
    return slice(int(np.clip(np.floor((u_lo + 1.0) * 0.5 * size) - 1, 0, size)), size)


def _row_band(pose, y_lo, y_hi, size: int) -> slice:
    """Image rows that can hold patient heights [y_lo, y_hi] (per image) for every pose."""
    scale, theta, tx, ty = pose
    reach = scale * np.abs(np.sin(theta)) * 1.2          # |X| <= 1.2 on the image
    v_lo = np.min(ty + scale * np.cos(theta) * y_lo - reach)
    v_hi = np.max(ty + scale * np.cos(theta) * y_hi + reach)
    r0 = int(np.clip(np.floor((v_lo + 1.0) * 0.5 * size) - 1, 0, size))
    r1 = int(np.clip(np.ceil((v_hi + 1.0) * 0.5 * size) + 1, r0, size))
    return slice(r0, r1)


def _render(seed: int, out: PhantomBatch, lo: int, hi: int, prev: np.ndarray,
            shortcut: tuple[int, float] | None, xrv: bool) -> None:
    """Renders images lo..hi-1 of `out` in place (images, masks, concepts, labels, ...)."""
    index = out.index[lo:hi]
    d = _Draws(seed, index)
    B, S = index.shape[0], out.images.shape[1]
    pix = 2.0 / S                                # one pixel in normalised units
    edge = max(0.012, 0.9 * pix)                 # anti-aliasing width of anatomy edges
    thin = max(0.010, 0.65 * pix)                # half-width of the pleural line
    u, v = _axis(S), _axis(S)
    rows = np.arange(B)[:, None]

    # --- patient pose: image (u, v) -> patient (X, Y) --------------------------------------
    scale = d.u(0.90, 1.0)
    theta = d.u(-0.06, 0.06)
    tx, ty = d.u(-0.04, 0.04), d.u(-0.03, 0.05)
    pose = (scale, theta, tx, ty)
    c, s = np.cos(theta) / scale, np.sin(theta) / scale
    X = _b(c)[:, :, 0:1] * u[None, None, :] + (_b(s) * v[None, :, None] + _b(-(c * tx + s * ty)))
    Y = _b(-s)[:, :, 0:1] * u[None, None, :] + (_b(c) * v[None, :, None] + _b(s * tx - c * ty))
    absX = np.abs(X)

    # --- anatomy parameters ------------------------------------------------------------
    body_w = d.u(0.95, 1.12)
    shoulder = d.u(-0.72, -0.60)
    lungs = {-1: _lung_frame(d, -1), +1: _lung_frame(d, +1)}
    fR, fL = lungs[-1], lungs[+1]
    has = {k: d.bern(prev[i]) for i, k in enumerate(FINDINGS)}
    ctr = np.where(has["cardiomegaly"], d.u(*_CTR_ENLARGED), d.u(*_CTR_NORMAL))
    phi = d.u(0.35, 0.60)
    ratio = d.u(1.15, 1.35)
    half_ext = ctr * (fR["l"] + fL["l"]) / 2      # heart half-width on the image
    ha = half_ext / np.sqrt(np.cos(phi) ** 2 + (np.sin(phi) / ratio) ** 2)
    hb = ha / ratio
    v_ext = np.sqrt((ha * np.sin(phi)) ** 2 + (hb * np.cos(phi)) ** 2)
    hx = half_ext / 3 + d.u(-0.02, 0.02)
    q_ = (hx + 0.1 - fL["cx"]) / (1.15 * fL["a"])      # the heart rests on the left dome
    hy = fL["yd"] - fL["dh"] * (1.0 - q_ * q_) - 0.7 * v_ext
    med_x = d.u(-0.01, 0.02)
    rib_sp = d.u(0.125, 0.145)
    rib_off = d.u(0.0, 1.0)
    clav_y = d.u(-0.66, -0.58)
    t_soft = d.u(0.46, 0.56)
    t_heart = d.u(0.76, 0.84)
    t_abd = d.u(0.72, 0.80)
    t_air = d.u(0.24, 0.30)
    t_bone = d.u(0.10, 0.14)
    contrast = d.u(0.88, 1.12)
    bright = d.u(-0.04, 0.04)
    noise_sd = d.u(0.012, 0.025)
    bubble = d.bern(0.7)

    # --- body: neck, sloping shoulders, chest wall ------------------------------------------
    t = np.clip((Y - _b(shoulder - 0.38)) * (1 / 0.38), 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)                      # smoothstep from neck to full width
    w *= _b(body_w - 0.26)
    w += 0.26
    w -= absX
    body_bin = w > 0
    body = _soft(w.copy(), 2 * edge)
    del t

    # --- diaphragm domes, heart, mediastinum, abdomen -----------------------------------------
    pxR, pxL = -X, X
    domeR, domeL = _dome(pxR, fR), _dome(pxL, fL)
    dome = np.where(X < 0, domeR, domeL)
    abd = _soft(Y - dome, 2 * edge)

    dx, dy = X - _b(hx), Y - _b(hy)
    cp, sp = _b(np.cos(phi)), _b(np.sin(phi))
    p1 = (dx * cp + dy * sp) / _b(ha)
    p2 = (dy * cp - dx * sp) / _b(hb)
    heart_sd = (1.0 - (p1 * p1 + p2 * p2)) * _b(hb * 0.5)
    del dx, dy, p1, p2
    np.minimum(heart_sd, dome + 0.03 - Y, out=heart_sd)   # its lower part hides below the dome
    heart_bin = (heart_sd > 0) & body_bin
    heart = _soft(heart_sd.copy(), edge)

    mx = _b(med_x)
    adx = np.abs(X - mx)
    med_sd = np.minimum(0.075 + 0.05 * (Y + 0.9) - adx, _b(hy) - Y)
    np.minimum(med_sd, Y + 0.95, out=med_sd)
    med_bin = (med_sd > 0) & ~heart_bin & body_bin
    med = _soft(med_sd.copy(), edge)

    # --- lungs: skewed half-ellipses above the domes, minus heart and mediastinum -------------
    # Everything drawn per side (lung, ribs, clavicle, diaphragm) has px = side * X > -0.15, so
    # only the image columns that can hold such points are computed for that side.
    cols = {side: _col_band(pose, side, -0.15, S) for side in (-1, +1)}
    lung_bins, lung_dist, lung_e = {}, {}, {}
    lung = np.zeros((B, S, S), np.float32)
    for side, px_full, dm_full in ((-1, pxR, domeR), (+1, pxL, domeL)):
        f, cs = lungs[side], cols[side]
        px, dm, Yc = px_full[..., cs], dm_full[..., cs], Y[..., cs]
        e = _lung_e(px, Yc, f)
        lung_e[side] = e
        sd = np.minimum((1.0 - e) * _b(f["a"] * 0.5), dm - Yc)
        ld = np.minimum(np.minimum(sd, -heart_sd[..., cs]),
                        np.minimum(-med_sd[..., cs], w[..., cs]))
        lung_dist[side] = ld
        lung_bins[side] = np.zeros((B, S, S), bool)
        lung_bins[side][..., cs] = ld > 0
        lung[..., cs] += _soft(sd, edge)
    lung *= 1.0 - heart
    lung *= 1.0 - med
    lung_any = lung_bins[-1] | lung_bins[+1]

    # --- bones --------------------------------------------------------------------------------
    clav_rows = _row_band(pose, -0.83 - 0.03 - 2 * edge, -0.56 + 0.03 + 2 * edge, S)
    ribs = np.zeros((B, S, S), np.float32)
    bone = np.zeros((B, S, S), np.float32)
    ribs_bin = np.zeros((B, S, S), bool)
    clav_bin = np.zeros((B, S, S), bool)
    diaph_bin = np.zeros((B, S, S), bool)
    for side, px_full, dm_full in ((-1, pxR, domeR), (+1, pxL, domeL)):
        f, cs = lungs[side], cols[side]
        px, dm, Yc = px_full[..., cs], dm_full[..., cs], Y[..., cs]
        # posterior ribs: arches rising from the spine, curving down laterally
        cage = np.minimum(np.minimum(1.15 - lung_e[side], dm + 0.06 - Yc), px - 0.07)
        ph = Yc - 0.9 * (px - 0.30) ** 2
        ph *= _b(1.0 / rib_sp)
        ph += _b(rib_off)
        ph -= np.floor(ph)
        ph -= 0.5
        np.abs(ph, out=ph)                           # 0 at the rib's centre line, 0.5 between ribs
        ribs_bin[..., cs] |= (ph < 0.17) & (cage > 0)
        band = _soft(0.17 - ph, 0.1)
        band *= _soft(cage, 0.06)
        ribs[..., cs] += band
        # clavicle: a band from the sternal end (px ~ 0.07) rising gently to the shoulder;
        # its centre line stays within Y in [-0.83, -0.56], so only those rows are computed
        cb = clav_rows
        pb = px[:, cb]
        cy = _b(clav_y) - 0.28 * (pb - 0.07) + 0.25 * (pb - 0.35) ** 2
        cd = np.minimum(0.03 - np.abs(Yc[:, cb] - cy), np.minimum(pb - 0.06, 0.68 - pb))
        clav_bin[:, cb, cs] |= cd > 0
        bone[:, cb, cs] += 1.3 * _soft(cd, edge)
        # diaphragm concept: a band under the dome across the lung's width
        dd = Yc - dm
        diaph_bin[..., cs] |= (dd >= 0) & (dd < 0.05) & (px > _b(f["m"])) \
            & (px < _b(f["l"] + 0.03))
    ribs *= 1.0 - 0.75 * np.maximum(heart, abd)      # ribs fade over the dense shadows
    bone += ribs
    del ribs
    spine_sd = 0.075 - absX
    spine_bin = (spine_sd > 0) & body_bin
    vert = Y * (1.0 / 0.11)
    vert -= np.floor(vert)
    vert -= 0.5
    np.abs(vert, out=vert)                           # disc spaces slightly darker
    spine = _soft(spine_sd, edge)
    spine *= 0.35 + 0.8 * vert
    bone += spine
    bone *= _b(t_bone)
    bone *= body
    ribs_bin &= body_bin
    clav_bin &= body_bin
    diaph_bin &= body_bin

    # --- composite anatomy (unit intensities: 0 air ... 1 metal) ----------------------------
    img = body * _b(t_soft)
    img *= 0.9 + 0.1 * np.clip(1.0 - absX, 0.0, 1.0)  # chest wall thins laterally
    heart *= _b(t_heart) * (0.86 + 0.14 * np.clip(heart_sd * _b(4.0 / hb), 0.0, 1.0))
    np.maximum(img, heart, out=img)             # thicker (brighter) towards the heart's centre
    np.maximum(img, med * _b(t_heart * 0.93), out=img)
    np.maximum(img, abd * body * _b(t_abd), out=img)
    air = lung * _b(t_air)
    air *= 1.05 - 0.12 * (Y + 0.7)                   # bases a little denser (breast shadows)
    img -= air
    del air
    trachea = np.minimum(0.03 - np.abs(X - mx), _b(hy - v_ext) - 0.05 - Y)
    img -= 0.12 * _soft(trachea, edge) * body
    gb = (X - 0.33) * (1 / 0.09)
    gb *= gb
    t = (Y - _b(fL["yd"] - fL["dh"] + 0.12)) * (1 / 0.055)
    gb += t * t
    img -= _b(0.16 * bubble) * _soft(1.0 - gb, 0.3)
    img += bone
    del bone
    # hila and lung markings: ridges of a smooth random field (a vessel-like network), dense
    # near the hila and fading towards the periphery
    hil = np.zeros((B, S, S), np.float32)
    hc = hy - 0.6 * v_ext                              # hilar height; blobs reach +-0.18 of it
    hb_rows = _row_band(pose, hc - 0.2, hc + 0.2, S)
    for side in (-1, +1):
        hdx = (X[:, hb_rows] - side * 0.2) * (1 / 0.09)
        hdy = (Y[:, hb_rows] - _b(hc)) * (1 / 0.14)
        hil[:, hb_rows] += _soft(1.0 - hdx * hdx - hdy * hdy, 1.2)
    field = _smooth(d.field(34, 14), S)
    np.abs(field, out=field)
    marks = _soft(0.2 - field, 0.2)
    marks *= np.clip(1.15 - absX * (1 / 0.7), 0.1, 1.0)
    marks += 0.6 * hil
    marks *= lung
    marks *= 0.12
    del field, hil

    masks = out.masks[lo:hi]
    masks[...] = False
    K = {k: i for i, k in enumerate(FINDINGS)}
    wfield = {"mass": d.field(8), "consolidation": d.field(12), "opacity": d.field(8),
              "mottle": d.field(22)}

    def lung_site(t_lo, t_hi, f_lo, f_hi, clearance, n_try=8):
        """Centres (X0, Y0) [B] inside a lung: the first of n_try candidates whose lung distance
        exceeds `clearance` [B], else the candidate deepest inside the lung."""
        side = np.where(d.uniform01(n_try) < 0.5, -1, 1)
        tt = t_lo + (t_hi - t_lo) * d.uniform01(n_try)
        ff = f_lo + (f_hi - f_lo) * d.uniform01(n_try)
        x0, y0 = np.zeros((B, n_try)), np.zeros((B, n_try))
        for sd_ in (-1, +1):
            f = {k: v[:, None] for k, v in lungs[sd_].items()}
            y = f["yb"] - tt * f["h"]
            px = f["cx"] - _SKEW * tt * f["a"] + ff * f["a"] * np.sqrt(1.0 - tt * tt)
            x0 = np.where(side == sd_, sd_ * px, x0)
            y0 = np.where(side == sd_, y, y0)
        r, cc = _to_pixel(x0, y0, pose, S)
        depth = np.full((B, n_try), -1.0)
        for sd_ in (-1, +1):
            ld, c_in = lung_dist[sd_], cc - cols[sd_].start      # lung distance, window columns
            ok = (side == sd_) & (c_in >= 0) & (c_in < ld.shape[-1])
            depth = np.where(ok, ld[rows, r, np.clip(c_in, 0, ld.shape[-1] - 1)], depth)
        ok = depth > clearance[:, None]
        pick = np.where(ok.any(axis=1), ok.argmax(axis=1), depth.argmax(axis=1))
        return x0[np.arange(B), pick], y0[np.arange(B), pick]

    # --- nodule and mass ------------------------------------------------------------------------
    for name, r_lo, r_hi, a_lo, a_hi, lobe in (("nodule", 0.07, 0.095, 0.38, 0.48, 0.0),
                                               ("mass", 0.11, 0.16, 0.24, 0.34, 0.35)):
        radius = np.maximum(d.u(r_lo, r_hi), 1.6 * pix)
        amp = d.u(a_lo, a_hi)
        x0, y0 = lung_site(0.15, 0.85, -0.6, 0.7, 0.8 * radius)
        sub = np.nonzero(has[name])[0]
        if sub.size:
            ddx, ddy = X[sub] - _b(x0[sub]), Y[sub] - _b(y0[sub])
            qq = (ddx * ddx + ddy * ddy) * _b(1.0 / radius[sub] ** 2)
            if lobe:
                qq *= 1.0 + lobe * np.tanh(_smooth(wfield["mass"][sub], S))
            m = (qq < 1.0) & lung_any[sub]
            masks[sub, K[name]] = m
            img[sub] += _b(amp[sub]) * np.clip(1.8 * (1.0 - qq), 0.0, 1.0) * m

    # --- consolidation ----------------------------------------------------------------------------
    rx, ry = d.u(0.18, 0.28), d.u(0.15, 0.24)      # segmental to lobar, ill-defined
    amp = d.u(0.30, 0.40)
    x0, y0 = lung_site(0.1, 0.6, -0.4, 0.5, 0.4 * np.minimum(rx, ry))
    sub = np.nonzero(has["consolidation"])[0]
    if sub.size:
        a_ = (X[sub] - _b(x0[sub])) * _b(1.0 / rx[sub])
        b_ = (Y[sub] - _b(y0[sub])) * _b(1.0 / ry[sub])
        qq = a_ * a_ + b_ * b_ + 0.5 * _smooth(wfield["consolidation"][sub], S)
        m = (qq < 1.0) & lung_any[sub]
        masks[sub, K["consolidation"]] = m
        # mottled: alveolar filling is patchy on a fine scale (unlike the smooth zone haze)
        mottle = np.clip(0.7 + 0.3 * _smooth(wfield["mottle"][sub], S), 0.3, 1.0)
        img[sub] += _b(amp[sub]) * np.clip(2.0 * (1.0 - qq), 0.0, 1.0) * mottle * m

    # --- effusion: meniscus at one or both bases --------------------------------------------------
    which = d.choice((0.4, 0.4, 0.2))              # 0 right, 1 left, 2 both
    for side, f, want in ((-1, fR, (0, 2)), (+1, fL, (1, 2))):
        level = (f["yd"] - f["dh"]) - d.u(0.04, 0.20)
        climb = d.u(0.08, 0.18)
        amp = t_air * d.u(0.85, 1.0) + 0.06
        sub = np.nonzero(has["effusion"] & np.isin(which, want))[0]
        if sub.size:
            px = side * X[sub]
            g = np.clip((px - _b(f["m"][sub])) * _b(1.0 / (f["l"] - f["m"])[sub]), 0.0, 1.0)
            ym = _b(level[sub]) - _b(climb[sub]) * g * g
            m = (Y[sub] > ym) & lung_bins[side][sub]
            masks[sub, K["effusion"]] |= m
            img[sub] += _b(amp[sub]) * np.clip((Y[sub] - ym) * (1 / 0.06), 0.0, 1.0) * m

    # --- pneumothorax: crescent between chest wall and the collapsed lung -------------------------
    side = np.where(d.bern(0.5), 1, -1)
    collapse = d.u(0.72, 0.86)
    dark = d.u(0.08, 0.12)
    line_amp = d.u(0.10, 0.15)
    sub = np.nonzero(has["pneumothorax"])[0]
    for sd_ in (-1, +1):
        ss = sub[side[sub] == sd_]
        if not ss.size:
            continue
        f = lungs[sd_]
        k = _b(collapse[ss])
        pivot_x = _b(f["cx"][ss] - 0.6 * f["a"][ss])
        pivot_y = _b(f["yb"][ss])
        px = sd_ * X[ss]
        ec = _lung_e(pivot_x + (px - pivot_x) / k, pivot_y + (Y[ss] - pivot_y) / k, f, ss)
        lb = lung_bins[sd_][ss]
        crescent = (ec >= 1.0) & lb
        w_e = 2.0 * thin / (collapse[ss] * np.minimum(f["a"][ss], f["h"][ss]))
        line = (ec < 1.0) & (ec >= 1.0 - _b(w_e)) & lb
        masks[ss, K["pneumothorax"]] = crescent | line
        marks[ss] *= ~crescent
        img[ss] += _b(line_amp[ss]) * line - _b(dark[ss]) * crescent
    img += marks
    del marks

    # --- BrixIA opacity ---------------------------------------------------------------------------
    pz = d.u(0.25, 0.85)
    involved = d.uniform01(6) < pz[:, None]
    forced = d.choice((1,) * 6)
    involved[np.arange(B), forced] |= ~involved.any(axis=1)
    scores = 1 + np.floor(d.uniform01(6) * 3).astype(np.int32)
    severity = np.where(involved & has["opacity"][:, None], scores, 0).astype(np.int32)
    sub = np.nonzero(has["opacity"])[0]
    if sub.size:
        tex = np.clip(0.75 + 0.25 * _smooth(wfield["opacity"][sub], S), 0.4, 1.0)
        zone_amp = np.zeros((sub.size, S, S), np.float32)
        for j, (side, f) in enumerate(((-1, fR), (+1, fL))):
            y1 = _b((f["yt"] + f["h"] / 3)[sub])
            y2 = _b((f["yt"] + 2 * f["h"] / 3)[sub])
            sc = _OPACITY_AMPLITUDE[severity[sub, 3 * j:3 * j + 3]]
            za = _b(sc[:, 0]) + _b(sc[:, 1] - sc[:, 0]) * (Y[sub] >= y1) \
                + _b(sc[:, 2] - sc[:, 1]) * (Y[sub] >= y2)
            zone_amp += za * lung_bins[side][sub]
        masks[sub, K["opacity"]] = zone_amp > 0
        img[sub] += zone_amp * tex

    # --- cardiomegaly: its mask is the heart ------------------------------------------------------
    masks[:, K["cardiomegaly"]] = heart_bin & has["cardiomegaly"][:, None, None]

    # --- contrast, brightness and a smooth illumination field -------------------------------------
    img -= 0.45
    img *= _b(contrast)
    img += _b(bright + 0.45)
    img += 0.02 * _smooth(d.field(4), S)
    # film shoulder: dense anatomy saturates softly below 0.86, so metal (0.96-1) stands out
    over = np.maximum(img - 0.72, 0.0)
    np.minimum(img, 0.72, out=img)
    img += over / (1.0 + over * (1 / 0.14))
    del over

    # --- foreign objects (metal: bright, hard-edged) ----------------------------------------------
    n_obj = 1 + (d.u() < 0.35) + (d.u() < 0.12)
    fo_bin = np.zeros((B, S, S), bool)
    for j in range(3):
        kind = d.choice((0.25, 0.2, 0.2, 0.15, 0.2))   # coin, button, clip, wire, polygon
        x0, y0 = d.u(-0.65, 0.65), d.u(-0.60, 0.30)
        ang = d.u(0.0, math.pi)
        size_a = np.select([kind == 0, kind == 1, kind == 2, kind == 3],
                           [d.u(0.055, 0.08), d.u(0.045, 0.065), d.u(0.07, 0.12),
                            d.u(0.15, 0.32)], d.u(0.05, 0.08))
        size_b = np.select([kind <= 1, kind == 2, kind == 3],
                           [size_a, d.u(0.018, 0.03), np.full(B, max(0.012, 0.75 * pix))],
                           d.u(0.04, 0.07))
        size_a = np.maximum(size_a, 1.2 * pix)           # at least ~2.5 pixels across
        size_b = np.maximum(size_b, np.where(kind == 3, 0.75 * pix, 1.2 * pix))
        bend = np.where(kind == 3, d.u(-2.0, 2.0), 0.0)
        value = d.u(0.96, 1.0)
        sub = np.nonzero(has["foreign_object"] & (j < n_obj))[0]
        if not sub.size:
            continue
        ca, sa = _b(np.cos(ang[sub])), _b(np.sin(ang[sub]))
        ddx, ddy = X[sub] - _b(x0[sub]), Y[sub] - _b(y0[sub])
        xr = ddx * ca + ddy * sa
        yr = ddy * ca - ddx * sa - _b(bend[sub]) * xr * xr
        xa = np.abs(xr) * _b(1.0 / size_a[sub])
        ya = np.abs(yr) * _b(1.0 / size_b[sub])
        kk = _b(kind[sub])
        d2 = xa * xa + ya * ya
        inside = np.where(kk <= 1, d2 < 1.0,
                          np.where(kk <= 3, np.maximum(xa, ya) < 1.0, xa + ya < 1.0))
        inside &= ~((kk == 1) & (d2 < 0.16))          # a button's hole
        fo_bin[sub] |= inside
        img[sub] = np.where(inside, _b(value[sub]), img[sub])
    masks[:, K["foreign_object"]] = fo_bin

    # --- burned-in laterality marker / shortcut tag -------------------------------------------
    marker_on = d.bern(0.5)
    marker_right = d.bern(0.5)
    letter_l = d.bern(0.5)
    tag_value = d.u(0.80, 0.90)      # a printed annotation: below metal (0.96-1)
    tag_u = d.u()
    labels_pre = masks.any(axis=(2, 3))
    marker = np.zeros((B, S, S), bool)
    shortcut_bin = np.zeros((B, S, S), bool)
    margin = max(1, int(round(0.04 * S)))
    gl, gr = _glyph("L", S), _glyph("R", S)
    gh, gw = gl.shape
    if shortcut is None:
        for right in (False, True):
            sub = np.nonzero(marker_on & (marker_right == right))[0]
            c0 = S - margin - gw if right else margin
            marker[sub, margin:margin + gh, c0:c0 + gw] = np.where(
                letter_l[sub, None, None], gl, gr)
    else:
        k_idx, rate = shortcut
        pos = labels_pre[:, k_idx]
        on = np.where(pos, tag_u < rate, tag_u < 1.0 - rate)
        marker[on, margin:margin + gh, margin:margin + gw] = gr
        shortcut_bin = marker
    img = np.where(marker, _b(tag_value), img)

    # --- quantum noise: a window of the seed's noise bank --------------------------------------
    bank = _noise_bank(seed, S)
    pad = bank.shape[-1] - S
    windows = np.lib.stride_tricks.sliding_window_view(bank, (S, S), axis=(1, 2))
    pick = np.floor(d.uniform01(3) * np.array([_NOISE_BANK, pad + 1, pad + 1])).astype(np.int64)
    noise = windows[pick[:, 0], pick[:, 1], pick[:, 2]]
    noise *= _b(noise_sd)
    img += noise
    np.clip(img, 0.0, 1.0, out=img)

    if xrv:
        img *= 2048.0
        img -= 1024.0
    out.images[lo:hi, ..., 0] = img
    out.labels[lo:hi] = masks.any(axis=(2, 3))
    concepts = out.concepts[lo:hi]
    for j, m in enumerate((lung_bins[+1], lung_bins[-1], heart_bin, med_bin, spine_bin, ribs_bin,
                           clav_bin, diaph_bin, fo_bin)):
        concepts[:, j] = m
    np.any(masks[:, [K[k] for k in OPACITY_FINDINGS]], axis=1,
           out=concepts[:, CONCEPTS.index("opacity")])
    out.severity[lo:hi] = severity
    out.shortcut_mask[lo:hi] = shortcut_bin
    out.marker_mask[lo:hi] = marker
    out.ctr[lo:hi] = ctr


# ---------------------------------------------------------------------------------------------
# Public API.

def _check_prevalence(prevalence: Any) -> np.ndarray:
    if prevalence is None:
        return np.full(len(FINDINGS), DEFAULT_PREVALENCE)
    if isinstance(prevalence, Mapping):
        unknown = set(prevalence) - set(FINDINGS)
        if unknown:
            raise ValueError(f"prevalence names unknown findings {sorted(unknown)}; "
                             f"use names from {FINDINGS}.")
        out = np.array([float(prevalence.get(k, DEFAULT_PREVALENCE)) for k in FINDINGS])
    else:
        out = np.full(len(FINDINGS), float(prevalence))
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"prevalence must lie in [0, 1], got {prevalence!r}.")
    return out


def _check_shortcut(shortcut: Any) -> tuple[int, float] | None:
    if shortcut is None:
        return None
    if not isinstance(shortcut, Mapping) or set(shortcut) - {"label", "rate"} \
            or "label" not in shortcut:
        raise ValueError("shortcut must be a dict like {'label': 'cardiomegaly', 'rate': 0.9}, "
                         f"got {shortcut!r}.")
    label = shortcut["label"]
    if label not in FINDINGS:
        raise ValueError(f"shortcut label {label!r} is not a finding; use one of {FINDINGS}.")
    rate = float(shortcut.get("rate", 0.9))
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"shortcut rate must lie in [0, 1], got {rate!r}.")
    return FINDINGS.index(label), rate


def generate(n: int, *, image_size: int = 224, seed: int = 0,
             shortcut: Mapping[str, Any] | None = None, intensity: str = "xrv",
             start: int = 0, prevalence: float | Mapping[str, float] | None = None,
             num_threads: int | None = None) -> PhantomBatch:
    """Generates n chest radiograph phantoms with exact finding masks and concept masks.

    Each finding k is present independently with probability `prevalence` (0.4 by default);
    labels[i, k] = 1 iff masks[i, k] is non-empty, by construction. Geometry (normalised
    coordinates, image = [-1, 1]^2): the patient frame (X, Y) is the image frame scaled by
    s in [0.9, 1], rotated by up to 3.4 degrees and shifted by up to 0.05. Lungs are skewed
    half-ellipses above the diaphragm domes, lateral margins at |X| in [0.68, 0.76]; the heart is
    a tilted ellipse whose horizontal extent is ctr x (thorax width), ctr in [0.38, 0.46] for
    normal hearts and [0.56, 0.66] with cardiomegaly (thorax width = distance between the lungs'
    lateral margins), so the mask measure "heart wider than half the thorax" agrees with the
    label. Lung findings (nodule, mass, consolidation, effusion, pneumothorax, opacity) lie inside
    the lung masks. BrixIA zones split each lung into thirds of its apex-to-base height; a
    zone's haze adds 0.08 / 0.14 / 0.20 (unit intensities) for scores 1 / 2 / 3.

    Intensities are built in unit scale (0 = air outside the body, lungs ~0.2-0.35, soft tissue
    ~0.5, heart / mediastinum / abdomen ~0.75), then per-patient contrast and a smooth
    illumination field are applied and dense anatomy is softly compressed below 0.86 (a film
    shoulder); metal objects (0.96-1) and burned-in markers (0.8-0.9) are drawn after it, then
    Gaussian noise (sd 0.012-0.025); the result is clipped to [0, 1] and, for intensity="xrv",
    mapped by x -> 2048 x - 1024 (TorchXRayVision convention). Finding sizes (radius, normalised
    units) and added brightness: nodule 0.07-0.095 / +0.38-0.48, mass 0.11-0.16 lobulated /
    +0.24-0.34, consolidation 0.15-0.28 irregular and mottled / up to +0.30-0.40, effusion
    fills the lung's air (~+0.3), pneumothorax -0.08-0.12 and no markings, pleural line
    +0.10-0.15.

    Args:
      n: number of images (>= 0).
      image_size: H = W in pixels, >= 32.
      seed: any int; the same (seed, index) always gives the same image.
      shortcut: None, or {"label": finding, "rate": r}: an "R" tag burned into the top-left
        corner of a positive image with probability r and of a negative one with probability
        1 - r (and no other marker). Without it, half the images carry an uncorrelated "L"/"R"
        film marker in a top corner.
      intensity: "xrv" ([-1024, 1024]) or "unit" ([0, 1]).
      start: index of the first image in the seed's stream (random access).
      prevalence: one probability for every finding, or {finding: probability}.
      num_threads: threads rendering chunks in parallel (default min(2, CPUs)); results do not
        depend on it.
    Returns:
      A `PhantomBatch`. Memory: about 23 bytes per pixel per image (1.1 MB at 224 x 224, mostly
      the bool masks and concepts), so stream large sets with `start` instead of one call.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < _MIN_SIZE:
        raise ValueError(f"image_size must be an int >= {_MIN_SIZE}, got {image_size!r}.")
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}.")
    prev = _check_prevalence(prevalence)
    sc = _check_shortcut(shortcut)
    n, S, seed = int(n), int(image_size), int(seed)
    K, C = len(FINDINGS), len(CONCEPTS)
    out = PhantomBatch(
        images=np.empty((n, S, S, 1), np.float32),
        labels=np.empty((n, K), np.float32),
        finding_names=FINDINGS,
        masks=np.empty((n, K, S, S), bool),
        concepts=np.empty((n, C, S, S), bool),
        concept_names=CONCEPTS,
        severity=np.empty((n, 6), np.int32),
        shortcut_mask=np.empty((n, S, S), bool),
        marker_mask=np.empty((n, S, S), bool),
        ctr=np.empty((n,), np.float32),
        index=np.arange(start, start + n, dtype=np.int64),
    )
    # Small chunks keep the ~60 temporaries of a chunk in cache (measured fastest at ~6 images of
    # 224 x 224); chunks are independent, so threads split them (numpy releases the GIL).
    chunk = max(1, (_CHUNK * 224 * 224) // (S * S))
    spans = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    threads = num_threads if num_threads is not None else min(2, os.cpu_count() or 1)
    render = functools.partial(_render, seed, out, prev=prev, shortcut=sc,
                               xrv=intensity == "xrv")
    if threads <= 1 or len(spans) <= 1:
        for lo, hi in spans:
            render(lo, hi)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(render, lo, hi) for lo, hi in spans]:
                f.result()
    return out


# ---------------------------------------------------------------------------------------------
# Looking at phantoms.

_COLOURS = {
    "nodule": (255, 64, 64), "mass": (255, 140, 0), "consolidation": (255, 230, 0),
    "effusion": (0, 200, 255), "pneumothorax": (255, 0, 255), "cardiomegaly": (0, 255, 90),
    "foreign_object": (80, 120, 255), "opacity": (255, 170, 200),
}


def _outline(m: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask [..., H, W] (pixels with a 4-neighbour outside)."""
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
    inner = p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m & ~inner


def save_grid(batch: PhantomBatch, path, *, ncols: int = 8, with_masks: bool = True,
              max_images: int = 64) -> np.ndarray:
    """Writes a PNG grid of phantoms, finding masks outlined in colour, labels printed below.

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
    imgs = np.asarray(batch.images)[:max_images, ..., 0].astype(np.float32)
    if imgs.shape[0] == 0:
        raise ValueError("batch has no images to draw.")
    if imgs.min() < -0.5:                                   # xrv scale
        imgs = (imgs + 1024.0) / 2048.0
    n, H, W = imgs.shape
    rgb = np.repeat((np.clip(imgs, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if with_masks:
        for k, name in enumerate(batch.finding_names):
            edge = _outline(np.asarray(batch.masks[:n, k]))
            rgb[edge] = _COLOURS.get(name, (255, 255, 255))
    cap = 12
    rows = -(-n // ncols)
    grid = np.zeros((rows * (H + cap), ncols * W, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (H + cap):r * (H + cap) + H, c * W:(c + 1) * W] = rgb[i]
    im = Image.fromarray(grid)
    draw = ImageDraw.Draw(im)
    short = {"nodule": "nod", "mass": "mass", "consolidation": "cons", "effusion": "eff",
             "pneumothorax": "ptx", "cardiomegaly": "cmg", "foreign_object": "fo",
             "opacity": "op"}
    letter = {"nodule": "N", "mass": "M", "consolidation": "C", "effusion": "E",
              "pneumothorax": "P", "cardiomegaly": "H", "foreign_object": "F", "opacity": "O"}
    for i in range(n):
        r, c = divmod(i, ncols)
        x, y = c * W + 1, r * (H + cap) + H
        for k, name in enumerate(batch.finding_names):
            if batch.labels[i, k] > 0:
                word = short.get(name, name[:4])
                if W < 24 * len(batch.finding_names):        # narrow tiles: one letter each
                    word = letter.get(name, name[0].upper())
                draw.text((x, y), word, fill=_COLOURS.get(name, (255, 255, 255)))
                x += 6 * len(word) + 3
    im.save(path)
    return np.asarray(im)
