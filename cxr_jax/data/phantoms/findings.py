"""The findings: each drawn onto the healthy chest together with its exact mask.

Owns nodule and mass (round, the mass lobulated), consolidation (irregular and mottled), effusion
(a meniscus at one or both bases), pneumothorax (a lucent crescent behind a pleural line),
BrixIA opacity (zone haze and its 0-3 severity scores), cardiomegaly (its mask is the heart) and
foreign objects (metal shapes, drawn after the film settings). A finding's parameters are drawn
for every image, whether or not it has the finding, so that each image's draws do not depend on
its labels; only images with the finding are drawn on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cxr_jax.data.phantoms import blend
from cxr_jax.data.phantoms._fields import _b, _Draws, _smooth
from cxr_jax.data.phantoms.anatomy import Anatomy, Patient
from cxr_jax.data.phantoms.geometry import SKEW, Frame, lung_e, to_pixel
from cxr_jax.data.phantoms.schema import FINDINGS

_K = {k: i for i, k in enumerate(FINDINGS)}
# BrixIA score -> added brightness (unit intensities) of the diffuse haze.
_OPACITY_AMPLITUDE = np.array([0.0, 0.08, 0.14, 0.20], np.float32)
# name, radius range, added brightness range, lobulation
_ROUND_LESIONS = (("nodule", 0.07, 0.095, 0.38, 0.48, 0.0),
                  ("mass", 0.11, 0.16, 0.24, 0.34, 0.35))


def render(d: _Draws, fr: Frame, pt: Patient, an: Anatomy, masks: np.ndarray,
           v: blend.Draws | None = None) -> np.ndarray:
    """Draws the lung findings and cardiomegaly onto an.img (adding the lung markings once the
    pneumothorax has erased them from its crescent) and into `masks` [B, K, S, S] (all False on
    entry). With `v` (style v2) the lesions, consolidation and haze blend in (`blend`).
    Returns the BrixIA severity [B, 6] int32."""
    wfield = {"mass": d.field(8), "consolidation": d.field(12), "opacity": d.field(8),
              "mottle": d.field(22)}
    for name, r_lo, r_hi, a_lo, a_hi, lobe in _ROUND_LESIONS:
        lobes = wfield["mass"] if lobe else None
        _round_lesion(d, fr, pt, an, masks, name, (r_lo, r_hi), (a_lo, a_hi), lobe, lobes, v)
    _consolidation(d, fr, pt, an, masks, wfield["consolidation"], wfield["mottle"], v)
    _effusion(d, fr, pt, an, masks)
    _pneumothorax(d, fr, pt, an, masks)
    an.img += an.marks
    severity = _draw_severity(d, pt.has["opacity"])
    _opacity(fr, pt, an, masks, severity, wfield["opacity"], v)
    masks[:, _K["cardiomegaly"]] = an.heart_bin & pt.has["cardiomegaly"][:, None, None]
    return severity


def _lung_site(d: _Draws, fr: Frame, pt: Patient, an: Anatomy, t_lo, t_hi, f_lo, f_hi,
               clearance, n_try=8):
    """Centres (X0, Y0) [B] inside a lung: the first of n_try candidates whose lung distance
    exceeds `clearance` [B], else the candidate deepest inside the lung.

    A candidate is a side, a height t (0 base ... 1 apex) and a lateral fraction f of the lung's
    half-width at that height, drawn uniformly in [t_lo, t_hi) and [f_lo, f_hi).
    """
    B = fr.B
    side = np.where(d.uniform01(n_try) < 0.5, -1, 1)
    tt = t_lo + (t_hi - t_lo) * d.uniform01(n_try)
    ff = f_lo + (f_hi - f_lo) * d.uniform01(n_try)
    x0, y0 = np.zeros((B, n_try)), np.zeros((B, n_try))
    for sd_ in (-1, +1):
        f = {k: v[:, None] for k, v in pt.lungs[sd_].items()}
        y = f["yb"] - tt * f["h"]
        px = f["cx"] - SKEW * tt * f["a"] + ff * f["a"] * np.sqrt(1.0 - tt * tt)
        x0 = np.where(side == sd_, sd_ * px, x0)
        y0 = np.where(side == sd_, y, y0)
    r, cc = to_pixel(x0, y0, fr.pose, fr.S)
    depth = np.full((B, n_try), -1.0)
    rows = np.arange(B)[:, None]
    for sd_ in (-1, +1):
        ld, c_in = an.lung_dist[sd_], cc - fr.cols[sd_].start   # lung distance, window columns
        ok = (side == sd_) & (c_in >= 0) & (c_in < ld.shape[-1])
        depth = np.where(ok, ld[rows, r, np.clip(c_in, 0, ld.shape[-1] - 1)], depth)
    ok = depth > clearance[:, None]
    pick = np.where(ok.any(axis=1), ok.argmax(axis=1), depth.argmax(axis=1))
    return x0[np.arange(B), pick], y0[np.arange(B), pick]


def _paint_blob(an: Anatomy, masks, name, sub, qq, amp, gain, texture=None) -> None:
    """Masks and brightens, in the images `sub`, the lung pixels where qq < 1: by amp [B] times
    clip(gain (1 - qq), 0, 1), times `texture` where given."""
    m = (qq < 1.0) & an.lung_any[sub]
    masks[sub, _K[name]] = m
    add = _b(amp[sub]) * np.clip(gain * (1.0 - qq), 0.0, 1.0)
    if texture is not None:
        add = add * texture
    an.img[sub] += add * m


def _round_lesion(d, fr: Frame, pt: Patient, an: Anatomy, masks, name, radii, amps, lobe,
                  lobes, v: blend.Draws | None) -> None:
    """Nodule or mass: a round opacity (lobulated by the field coefficients `lobes` when lobe
    > 0) at a lung site with room for most of it; with `v`, soft and partly spiculated."""
    radius = np.maximum(d.u(*radii), 1.6 * fr.pix)
    amp = d.u(*amps)
    x0, y0 = _lung_site(d, fr, pt, an, 0.15, 0.85, -0.6, 0.7, 0.8 * radius)
    sub = np.nonzero(pt.has[name])[0]
    if not sub.size:
        return
    ddx, ddy = fr.X[sub] - _b(x0[sub]), fr.Y[sub] - _b(y0[sub])
    qq = (ddx * ddx + ddy * ddy) * _b(1.0 / radius[sub] ** 2)
    if lobe:
        qq *= 1.0 + lobe * np.tanh(_smooth(lobes[sub], fr.S))
    if v is None:
        _paint_blob(an, masks, name, sub, qq, amp, 1.8)
        return
    qq = blend.spiculate(v, sub, ddx, ddy, qq)
    m = (qq < 1.0) & an.lung_any[sub]
    masks[sub, _K[name]] = m
    an.img[sub] += _b(amp[sub]) * blend.soft_profile(qq) * m


def _consolidation(d, fr: Frame, pt: Patient, an: Anatomy, masks, shape, mottle,
                   v: blend.Draws | None) -> None:
    """Segmental to lobar ill-defined opacity whose outline the field `shape` roughens; mottled
    on a fine scale by the field `mottle` (alveolar filling is patchy, unlike the zone haze).
    With `v`: lobar or patchy, hiding the vessels, with air bronchograms."""
    rx, ry = d.u(0.18, 0.28), d.u(0.15, 0.24)
    amp = d.u(0.30, 0.40)
    x0, y0 = _lung_site(d, fr, pt, an, 0.1, 0.6, -0.4, 0.5, 0.4 * np.minimum(rx, ry))
    sub = np.nonzero(pt.has["consolidation"])[0]
    if not sub.size:
        return
    if v is None:
        grow, rough = np.ones(sub.size), np.full(sub.size, 0.5)
    else:
        grow, rough = blend.consolidation_shape(v, sub)
    a_ = (fr.X[sub] - _b(x0[sub])) * _b(1.0 / (rx[sub] * grow))
    b_ = (fr.Y[sub] - _b(y0[sub])) * _b(1.0 / (ry[sub] * grow))
    qq = a_ * a_ + b_ * b_ + _b(rough) * _smooth(shape[sub], fr.S)
    texture = np.clip(0.7 + 0.3 * _smooth(mottle[sub], fr.S), 0.3, 1.0)
    if v is None:
        _paint_blob(an, masks, "consolidation", sub, qq, amp, 2.0, texture)
        return
    m = (qq < 1.0) & an.lung_any[sub]
    masks[sub, _K["consolidation"]] = m
    weight = np.clip(2.0 * (1.0 - qq), 0.0, 1.0) * texture * m
    marks = an.marks[sub]
    an.img[sub] += blend.silhouette(marks, weight, amp[sub])
    an.marks[sub] = marks


def _effusion(d, fr: Frame, pt: Patient, an: Anatomy, masks) -> None:
    """Fluid at the right, left or both bases: the lung below a meniscus that rises towards the
    chest wall fills with near-soft-tissue density."""
    which = d.choice((0.4, 0.4, 0.2))              # 0 right, 1 left, 2 both
    for side, want in ((-1, (0, 2)), (+1, (1, 2))):
        f = pt.lungs[side]
        level = (f["yd"] - f["dh"]) - d.u(0.04, 0.20)
        climb = d.u(0.08, 0.18)
        amp = pt.t_air * d.u(0.85, 1.0) + 0.06
        sub = np.nonzero(pt.has["effusion"] & np.isin(which, want))[0]
        if not sub.size:
            continue
        Y = fr.Y[sub]
        px = side * fr.X[sub]
        g = np.clip((px - _b(f["m"][sub])) * _b(1.0 / (f["l"] - f["m"])[sub]), 0.0, 1.0)
        ym = _b(level[sub]) - _b(climb[sub]) * g * g
        m = (Y > ym) & an.lung_bins[side][sub]
        masks[sub, _K["effusion"]] |= m
        an.img[sub] += _b(amp[sub]) * np.clip((Y - ym) * (1 / 0.06), 0.0, 1.0) * m


def _pneumothorax(d, fr: Frame, pt: Patient, an: Anatomy, masks) -> None:
    """Air between chest wall and a collapsed lung on one side (drawn per side)."""
    side = np.where(d.bern(0.5), 1, -1)
    collapse = d.u(0.72, 0.86)
    dark = d.u(0.08, 0.12)
    line_amp = d.u(0.10, 0.15)
    sub = np.nonzero(pt.has["pneumothorax"])[0]
    for sd_ in (-1, +1):
        ss = sub[side[sub] == sd_]
        if ss.size:
            _collapsed_lung(fr, pt, an, masks, sd_, ss, collapse[ss], dark[ss], line_amp[ss])


def _collapsed_lung(fr: Frame, pt: Patient, an: Anatomy, masks, side, ss, collapse, dark,
                    line_amp) -> None:
    """In images ss, the lung of `side` shrinks by `collapse` towards a point at its medial
    base: the lucent crescent outside it loses its markings, a bright visceral pleural line
    edges it. Mask: crescent and line."""
    f = pt.lungs[side]
    k = _b(collapse)
    pivot_x = _b(f["cx"][ss] - 0.6 * f["a"][ss])
    pivot_y = _b(f["yb"][ss])
    px = side * fr.X[ss]
    ec = lung_e(pivot_x + (px - pivot_x) / k, pivot_y + (fr.Y[ss] - pivot_y) / k, f, ss)
    lb = an.lung_bins[side][ss]
    crescent = (ec >= 1.0) & lb
    w_e = 2.0 * fr.thin / (collapse * np.minimum(f["a"][ss], f["h"][ss]))
    line = (ec < 1.0) & (ec >= 1.0 - _b(w_e)) & lb
    masks[ss, _K["pneumothorax"]] = crescent | line
    an.marks[ss] *= ~crescent
    an.img[ss] += _b(line_amp) * line - _b(dark) * crescent


def _draw_severity(d: _Draws, has_opacity: np.ndarray) -> np.ndarray:
    """BrixIA scores [B, 6] int32: each zone involved with a per-image probability (at least one
    zone when the image has opacity), scored 1-3; all zero without opacity."""
    pz = d.u(0.25, 0.85)
    involved = d.uniform01(6) < pz[:, None]
    forced = d.choice((1,) * 6)
    involved[np.arange(d.n), forced] |= ~involved.any(axis=1)
    scores = 1 + np.floor(d.uniform01(6) * 3).astype(np.int32)
    return np.where(involved & has_opacity[:, None], scores, 0).astype(np.int32)


def _opacity(fr: Frame, pt: Patient, an: Anatomy, masks, severity, texture_coeffs,
             v: blend.Draws | None) -> None:
    """Diffuse haze over each scored zone (thirds of a lung's apex-to-base height), its
    brightness set by the score and modulated by a smooth texture (with `v`: `blend.haze`)."""
    sub = np.nonzero(pt.has["opacity"])[0]
    if not sub.size:
        return

    zones = []   # per side: its columns, lung mask there, zone lines and score steps
    for j, side in enumerate((-1, +1)):
        f, cs = pt.lungs[side], fr.cols[side]
        sc = _OPACITY_AMPLITUDE[severity[sub, 3 * j:3 * j + 3]]
        zones.append((cs, an.lung_bins[side][sub][..., cs], _b((f["yt"] + f["h"] / 3)[sub]),
                      _b((f["yt"] + 2 * f["h"] / 3)[sub]), _b(sc[:, 0]),
                      _b(sc[:, 1] - sc[:, 0]), _b(sc[:, 2] - sc[:, 1])))

    def zone_amp(Y):   # a lung's mask is empty outside its columns, so only those are computed
        out = np.zeros((sub.size, fr.S, fr.S), np.float32)
        for cs, lung, y1, y2, a0, a1, a2 in zones:
            Yc = Y[..., cs]
            za = a0 + a1 * (Yc >= y1) + a2 * (Yc >= y2)
            out[..., cs] += za * lung
        return out

    if v is not None:
        add, masks[sub, _K["opacity"]] = blend.haze(v, sub, fr.Y[sub], zone_amp, fr.S)
        an.img[sub] += add
        return
    amp = zone_amp(fr.Y[sub])
    masks[sub, _K["opacity"]] = amp > 0
    amp *= np.clip(0.75 + 0.25 * _smooth(texture_coeffs[sub], fr.S), 0.4, 1.0)
    an.img[sub] += amp


class _Object(NamedTuple):
    """One foreign object per image ([B] arrays): kind 0 coin, 1 button, 2 clip, 3 wire,
    4 polygon; centre, angle, half-sizes along and across, wire bend, brightness."""

    kind: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    ang: np.ndarray
    size_a: np.ndarray
    size_b: np.ndarray
    bend: np.ndarray
    value: np.ndarray


def foreign_objects(d: _Draws, fr: Frame, has: np.ndarray, img: np.ndarray,
                    masks: np.ndarray) -> np.ndarray:
    """Draws one to three metal objects (bright, hard-edged) onto img in the images with `has`
    and their union into `masks`. Returns that union [B, S, S]."""
    n_obj = 1 + (d.u() < 0.35) + (d.u() < 0.12)
    fo_bin = fr.zeros(bool)
    for j in range(3):
        o = _draw_object(d, fr)
        sub = np.nonzero(has & (j < n_obj))[0]
        if not sub.size:
            continue
        inside = _object_inside(fr, o, sub)
        fo_bin[sub] |= inside
        img[sub] = np.where(inside, _b(o.value[sub]), img[sub])
    masks[:, _K["foreign_object"]] = fo_bin
    return fo_bin


def _draw_object(d: _Draws, fr: Frame) -> _Object:
    """Draws an object's kind, pose, size (at least ~2.5 pixels across), bend and brightness."""
    pix = fr.pix
    kind = d.choice((0.25, 0.2, 0.2, 0.15, 0.2))   # coin, button, clip, wire, polygon
    x0, y0 = d.u(-0.65, 0.65), d.u(-0.60, 0.30)
    ang = d.u(0.0, math.pi)
    size_a = np.select([kind == 0, kind == 1, kind == 2, kind == 3],
                       [d.u(0.055, 0.08), d.u(0.045, 0.065), d.u(0.07, 0.12),
                        d.u(0.15, 0.32)], d.u(0.05, 0.08))
    size_b = np.select([kind <= 1, kind == 2, kind == 3],
                       [size_a, d.u(0.018, 0.03), np.full(fr.B, max(0.012, 0.75 * pix))],
                       d.u(0.04, 0.07))
    size_a = np.maximum(size_a, 1.2 * pix)
    size_b = np.maximum(size_b, np.where(kind == 3, 0.75 * pix, 1.2 * pix))
    bend = np.where(kind == 3, d.u(-2.0, 2.0), 0.0)
    return _Object(kind, x0, y0, ang, size_a, size_b, bend, d.u(0.96, 1.0))


def _object_inside(fr: Frame, o: _Object, sub: np.ndarray) -> np.ndarray:
    """Pixels inside the object in images `sub`: ellipse (coin, button with a hole), rectangle
    (clip, bent wire) or diamond (polygon)."""
    ca, sa = _b(np.cos(o.ang[sub])), _b(np.sin(o.ang[sub]))
    ddx, ddy = fr.X[sub] - _b(o.x0[sub]), fr.Y[sub] - _b(o.y0[sub])
    xr = ddx * ca + ddy * sa
    yr = ddy * ca - ddx * sa - _b(o.bend[sub]) * xr * xr
    xa = np.abs(xr) * _b(1.0 / o.size_a[sub])
    ya = np.abs(yr) * _b(1.0 / o.size_b[sub])
    kk = _b(o.kind[sub])
    d2 = xa * xa + ya * ya
    inside = np.where(kk <= 1, d2 < 1.0,
                      np.where(kk <= 3, np.maximum(xa, ya) < 1.0, xa + ya < 1.0))
    inside &= ~((kk == 1) & (d2 < 0.16))          # a button's hole
    return inside
