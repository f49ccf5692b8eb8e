"""How the v2 findings blend in: soft and partly spiculated lesion margins, air bronchograms in
consolidation, and a ground-glass haze that fades in rather than stepping at the zone lines.

v1 draws a nodule as a bright plateau with a two-pixel rim, which a CNN can find by its edge
alone. v2 keeps every v1 site, size and brightness (the same draws) and changes only how the
brightness falls off, from draws of its own (`texture.draws`):

  round lesions  brightness amp min(1, 1.5 (1 - q)), q the squared normalised radius, so
                 the outer sixth of the radius fades to nothing (v1: a ninth, then a
                 two-pixel anti-aliased rim, plus no detector blur); about half the lesions
                 carry 5-9 spicules at irregular angles and of irregular lengths (up to 60%
                 of the radius past the margin), each a Gaussian lobe in angle, so it tapers
                 to a thin strand at its tip.
  consolidation  lobar (larger, a smooth outline) or patchy (a rougher one); inside it the
                 vessels vanish (the silhouette sign) and the bronchi along them stay dark
                 (air bronchograms).
  opacity        the zone haze averaged over a band 0.08 high across the zone lines, so
                 neighbouring scores blend, and a finer texture; being additive, the vessels
                 stay visible through it.

Each function returns or changes only pixels inside the finding's mask, so a finding's mask
stays exactly where its pixels changed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cxr_jax.data.phantoms._fields import _b, _Draws, _smooth

SPICULATED = 0.5     # share of round lesions with spicules
SPICULES = (5, 10)   # spicule count range [lo, hi)
SPICULE_REACH = (0.25, 0.6)  # how far the longest spicule reaches out (share of the radius)
SPICULE_WIDTH = 0.12  # angular width (radians, Gaussian sd) of a spicule at the margin
SPICULE_JITTER = 0.7  # how far a spicule's angle strays from even spacing (share of a gap)
BRONCHOGRAM = 0.65   # darkening of the bronchi inside consolidation, share of its brightness
HAZE_BAND = 0.08     # height of the band over which neighbouring zone scores blend


class Draws(NamedTuple):
    """The v2 finding draws of a chunk ([B] arrays, drawn for every image)."""

    spiculated: np.ndarray
    spicules: np.ndarray
    reach: np.ndarray
    phase: np.ndarray
    lobar: np.ndarray
    haze: np.ndarray       # [B, 16, 16] coefficients of the haze texture
    jitter: np.ndarray     # [B, K] uniforms: each spicule's angle off even spacing
    length: np.ndarray     # [B, K] uniforms: each spicule's length, share of `reach`


def draw(d2: _Draws) -> Draws:
    """Draws the v2 finding parameters of every image of the chunk."""
    lo, hi = SPICULES
    return Draws(spiculated=d2.bern(SPICULATED),
                 spicules=np.floor(d2.u(lo, hi)).astype(np.int64),
                 reach=d2.u(*SPICULE_REACH), phase=d2.u(0.0, 2 * np.pi),
                 lobar=d2.bern(0.5), haze=d2.field(16),
                 jitter=d2.uniform01(hi - 1), length=d2.uniform01(hi - 1))


def spiculate(v: Draws, sub: np.ndarray, ddx: np.ndarray, ddy: np.ndarray,
              qq: np.ndarray) -> np.ndarray:
    """qq [n, S, S] (squared normalised radius of images `sub`) with the spicules of the
    spiculated ones. Spicule k of an image with `spicules` = m points at angle
    phase + 2 pi (k + SPICULE_JITTER (jitter_k - 1/2)) / m and reaches reach x (0.35 + 0.65
    length_k) past the margin; at angle theta the radius grows by the largest
    reach_k exp(-(angle difference / SPICULE_WIDTH)^2 / 2), so each spicule narrows towards its
    tip. Only pixels the spicules can reach are computed (in place on qq)."""
    reach = v.reach[sub] * v.spiculated[sub]
    near = qq < _b((1.0 + reach) ** 2)
    near &= (reach > 0)[:, None, None]
    where = np.nonzero(near)
    if not where[0].size:
        return qq
    k = np.arange(v.jitter.shape[1])
    m = v.spicules[sub][:, None]
    angle = v.phase[sub][:, None] + 2 * np.pi * (k + SPICULE_JITTER * (v.jitter[sub] - 0.5)) / m
    length = np.where(k < m, reach[:, None] * (0.35 + 0.65 * v.length[sub]), 0.0)  # [n, K]
    theta = np.arctan2(ddy[where], ddx[where])
    off = theta[:, None] - angle[where[0]]                          # [P, K]
    off = (off + np.pi) % (2 * np.pi) - np.pi
    lobes = np.exp(-0.5 * (off / SPICULE_WIDTH) ** 2)
    lobes *= length[where[0]]
    grow = 1.0 + lobes.max(axis=1)
    qq[where] /= (grow * grow).astype(qq.dtype)
    return qq


def soft_profile(qq: np.ndarray) -> np.ndarray:
    """The v2 lesion profile: min(1, 1.5 (1 - qq)) inside (qq < 1), 0 outside."""
    return np.clip(1.5 * (1.0 - qq), 0.0, 1.0)


def consolidation_shape(v: Draws, sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(size factor, outline roughness) [n] of the consolidations of images `sub`: lobar ones
    1.25x larger with half v1's roughness, patchy ones v1's size with twice it."""
    lobar = v.lobar[sub]
    return np.where(lobar, 1.25, 1.0), np.where(lobar, 0.25, 1.0)


def silhouette(marks: np.ndarray, weight: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Consolidation's brightness in v2 ([n, S, S]): the vessel
    markings `marks` inside it vanish in proportion to its `weight` (0..1), and the bronchi
    along them stay dark, so the added brightness is amp x weight x (1 - BRONCHOGRAM x the
    normalised markings). Also erases those markings from `marks` (in place)."""
    scale = np.maximum(marks.max(axis=(1, 2), keepdims=True), 1e-6)
    bronchi = np.clip(marks / scale * 2.0, 0.0, 1.0)
    add = _b(amp) * weight * (1.0 - BRONCHOGRAM * bronchi)
    marks *= 1.0 - weight
    return add


def haze(v: Draws, sub: np.ndarray, Y: np.ndarray, zone_amp, S: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """The ground-glass haze of images `sub` and its mask: `zone_amp(Y)` ([n, S, S] brightness
    of each pixel's zone, 0 outside scored zones) averaged over a band HAZE_BAND high, kept only
    where zone_amp(Y) > 0, times a fine texture."""
    inside = zone_amp(Y)
    band = sum(zone_amp(Y + o) for o in np.linspace(-0.5, 0.5, 5) * HAZE_BAND) / 5.0
    band *= inside > 0
    band *= np.clip(0.7 + 0.3 * _smooth(v.haze[sub], S), 0.3, 1.0)
    return band, inside > 0
