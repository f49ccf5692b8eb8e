"""The healthy patient: anatomy parameters, the drawn chest and its concept masks.

Owns `Patient` (every per-image parameter drawn before the findings: build, lungs, which findings
are present, heart shape and size, bones, tissue densities, film settings) and `render`, which
draws body outline, diaphragm domes and abdomen, heart, mediastinum with trachea, lungs, ribs,
clavicles, spine, gastric bubble, hila and lung markings (v1; v2's vessels come from
`texture.vessels`) in unit intensities, and returns them with the exact bool mask of every
anatomical concept (`Anatomy`). Each structure has its own function; they only compute, and the
random draws stay in `draw_patient` and `_markings`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cxr_jax.data.phantoms._fields import _b, _Draws, _smooth, _soft
from cxr_jax.data.phantoms.geometry import Frame, dome, lung_e, lung_frame, row_band
from cxr_jax.data.phantoms.schema import FINDINGS

_CTR_NORMAL = (0.38, 0.46)
_CTR_ENLARGED = (0.56, 0.66)


@dataclasses.dataclass(slots=True)
class Patient:
    """Per-image parameters ([B] arrays) of one chunk, in the order they are drawn.

    lungs[side] holds the lung outline of a side (see `geometry.lung_frame`); has[finding] whether
    the finding is drawn; the heart is an ellipse with semi-axes ha, hb tilted by phi around
    (hx, hy), v_ext its vertical half-extent and ctr the cardiothoracic ratio it was sized with.
    t_* are tissue densities (unit intensities); contrast, bright and noise_sd are film settings.
    """

    body_w: np.ndarray
    shoulder: np.ndarray
    lungs: dict[int, dict[str, np.ndarray]]
    has: dict[str, np.ndarray]
    ctr: np.ndarray
    phi: np.ndarray
    ha: np.ndarray
    hb: np.ndarray
    v_ext: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    med_x: np.ndarray
    rib_sp: np.ndarray
    rib_off: np.ndarray
    clav_y: np.ndarray
    t_soft: np.ndarray
    t_heart: np.ndarray
    t_abd: np.ndarray
    t_air: np.ndarray
    t_bone: np.ndarray
    contrast: np.ndarray
    bright: np.ndarray
    noise_sd: np.ndarray
    bubble: np.ndarray


@dataclasses.dataclass(slots=True)
class Anatomy:
    """The drawn healthy chest: `img` (unit intensities, lung markings not yet added), `marks`
    (the lung markings, added once the findings have been drawn; None from a v2 `render`, whose
    markings `texture.vessels` draws), and the bool masks."""

    img: np.ndarray
    marks: np.ndarray | None
    lung_bins: dict[int, np.ndarray]
    lung_dist: dict[int, np.ndarray]     # signed distance inside each lung, on cols[side] only
    lung_any: np.ndarray
    heart_bin: np.ndarray
    med_bin: np.ndarray
    spine_bin: np.ndarray
    ribs_bin: np.ndarray
    clav_bin: np.ndarray
    diaph_bin: np.ndarray
    body: np.ndarray                     # soft body layer (v2 texture draws on it)
    lung: np.ndarray                     # soft lungs, heart and mediastinum cut out
    trachea_bin: np.ndarray              # the airway (trachea) down to the carina

    def concept_masks(self) -> tuple[np.ndarray, ...]:
        """The anatomical concept masks in CONCEPTS order (left_lung ... diaphragm)."""
        return (self.lung_bins[+1], self.lung_bins[-1], self.heart_bin, self.med_bin,
                self.spine_bin, self.ribs_bin, self.clav_bin, self.diaph_bin)


def draw_patient(d: _Draws, prev: np.ndarray) -> Patient:
    """Draws every per-image parameter that precedes the findings (prev: [K] prevalences)."""
    body_w = d.u(0.95, 1.12)
    shoulder = d.u(-0.72, -0.60)
    lungs = {-1: lung_frame(d, -1), +1: lung_frame(d, +1)}
    has = {k: d.bern(prev[i]) for i, k in enumerate(FINDINGS)}
    ctr = np.where(has["cardiomegaly"], d.u(*_CTR_ENLARGED), d.u(*_CTR_NORMAL))
    heart = _heart_shape(d, lungs, ctr)
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
    return Patient(body_w=body_w, shoulder=shoulder, lungs=lungs, has=has, ctr=ctr, **heart,
                   med_x=med_x, rib_sp=rib_sp, rib_off=rib_off, clav_y=clav_y, t_soft=t_soft,
                   t_heart=t_heart, t_abd=t_abd, t_air=t_air, t_bone=t_bone, contrast=contrast,
                   bright=bright, noise_sd=noise_sd, bubble=bubble)


def _heart_shape(d: _Draws, lungs, ctr) -> dict[str, np.ndarray]:
    """Heart ellipse whose horizontal extent is ctr x thorax width, resting on the left dome."""
    fR, fL = lungs[-1], lungs[+1]
    phi = d.u(0.35, 0.60)
    ratio = d.u(1.15, 1.35)
    half_ext = ctr * (fR["l"] + fL["l"]) / 2      # heart half-width on the image
    ha = half_ext / np.sqrt(np.cos(phi) ** 2 + (np.sin(phi) / ratio) ** 2)
    hb = ha / ratio
    v_ext = np.sqrt((ha * np.sin(phi)) ** 2 + (hb * np.cos(phi)) ** 2)
    hx = half_ext / 3 + d.u(-0.02, 0.02)
    q_ = (hx + 0.1 - fL["cx"]) / (1.15 * fL["a"])      # the heart rests on the left dome
    hy = fL["yd"] - fL["dh"] * (1.0 - q_ * q_) - 0.7 * v_ext
    return dict(phi=phi, ha=ha, hb=hb, v_ext=v_ext, hx=hx, hy=hy)


MARKINGS_FIELD = (34, 14)   # control points (rows, columns) of v1's lung-markings field
CARDIOPHRENIC = 0.12    # v2: height above the dome over which the heart border softens
CARDIOPHRENIC_SOFT = 4.0  # v2: how much wider the heart's edge is where it meets the dome


def render(d: _Draws, fr: Frame, pt: Patient, style: str = "v1",
           blur: np.ndarray | None = None) -> Anatomy:
    """Draws the healthy chest of every image of the chunk. Its only draw is v1's lung-markings
    field; v2, whose markings `texture.vessels` draws, passes over those slots instead and
    returns `marks` None.

    style "v2" draws a body that thins towards its outline, thinner ribs with bright cortices,
    a fainter spine behind the mediastinum and a darker trachea, and borders that are sharp
    where real ones are and soft elsewhere: the lungs' edges (the diaphragm's and the heart's
    silhouettes against air) are blurred per image by `blur` ([B] factors >= 1 on the
    anti-aliasing width: patients move and breathe), and the heart's edge widens up to
    CARDIOPHRENIC_SOFT times within CARDIOPHRENIC of the dome, where the epicardial fat pad
    blurs the cardiophrenic angle. The masks are the same as v1's."""
    w, body_bin, body = _body(fr, pt)
    if style == "v2":  # a rounded body: thinner, so fainter, towards its outline
        body *= 0.4 + 0.6 * np.sqrt(np.clip(w * (1 / 0.16), 0.0, 1.0))
    domes = {side: dome(fr.px[side], pt.lungs[side]) for side in (-1, +1)}
    dome_y = np.where(fr.X < 0, domes[-1], domes[+1])
    abd = _soft(fr.Y - dome_y, 2 * fr.edge)
    edge = fr.edge if blur is None else fr.edge * _b(blur)
    heart_edge = edge
    if style == "v2":
        near_dome = np.clip(1.0 - (dome_y - fr.Y) * (1 / CARDIOPHRENIC), 0.0, 1.0)
        heart_edge = edge * (1.0 + (CARDIOPHRENIC_SOFT - 1.0) * near_dome)
    heart_sd, heart_bin, heart = _heart(fr, pt, dome_y, body_bin, heart_edge)
    med_sd, med_bin, med = _mediastinum(fr, pt, heart_bin, body_bin)
    lung_ell, lung_dist, lung_bins, lung = _lungs(fr, pt, domes, w, heart_sd, med_sd, edge)
    lung *= 1.0 - heart
    lung *= 1.0 - med
    bone, ribs_bin, clav_bin, diaph_bin, spine_bin = _bones(fr, pt, domes, lung_ell,
                                                            np.maximum(heart, abd), body_bin,
                                                            style)
    bone *= body
    img = _soft_tissue(fr, pt, body, heart, heart_sd, med, abd)
    trachea_bin = _air(fr, pt, img, lung, body, trachea_air=0.12 if style == "v1" else 0.22)
    img += bone
    if style == "v1":
        marks = _markings(d, fr, pt, lung)
    else:   # v2 draws vessels instead (texture.vessels); the markings' field keeps its slots
        d.skip(MARKINGS_FIELD[0] * MARKINGS_FIELD[1])
        marks = None
    return Anatomy(img=img, marks=marks, lung_bins=lung_bins,
                   lung_dist=lung_dist, lung_any=lung_bins[-1] | lung_bins[+1],
                   heart_bin=heart_bin, med_bin=med_bin, spine_bin=spine_bin,
                   ribs_bin=ribs_bin & body_bin, clav_bin=clav_bin & body_bin,
                   diaph_bin=diaph_bin & body_bin, body=body, lung=lung,
                   trachea_bin=trachea_bin)


def _body(fr: Frame, pt: Patient):
    """Body outline (neck, sloping shoulders, chest wall): signed width w, mask, soft layer."""
    t = np.clip((fr.Y - _b(pt.shoulder - 0.38)) * (1 / 0.38), 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)                      # smoothstep from neck to full width
    w *= _b(pt.body_w - 0.26)
    w += 0.26
    w -= fr.absX
    return w, w > 0, _soft(w.copy(), 2 * fr.edge)


def _heart(fr: Frame, pt: Patient, dome_y, body_bin, edge):
    """Tilted heart ellipse cut off just below the dome: signed distance, mask, soft layer
    (anti-aliased over `edge`, a width or a per-pixel width field)."""
    dx, dy = fr.X - _b(pt.hx), fr.Y - _b(pt.hy)
    cp, sp = _b(np.cos(pt.phi)), _b(np.sin(pt.phi))
    p1 = (dx * cp + dy * sp) / _b(pt.ha)
    p2 = (dy * cp - dx * sp) / _b(pt.hb)
    heart_sd = (1.0 - (p1 * p1 + p2 * p2)) * _b(pt.hb * 0.5)
    del dx, dy, p1, p2
    np.minimum(heart_sd, dome_y + 0.03 - fr.Y, out=heart_sd)   # its lower part hides below it
    return heart_sd, (heart_sd > 0) & body_bin, _soft(heart_sd.copy(), edge)


def _mediastinum(fr: Frame, pt: Patient, heart_bin, body_bin):
    """Mediastinum widening downwards to the heart: signed distance, mask, soft layer."""
    adx = np.abs(fr.X - _b(pt.med_x))
    med_sd = np.minimum(0.075 + 0.05 * (fr.Y + 0.9) - adx, _b(pt.hy) - fr.Y)
    np.minimum(med_sd, fr.Y + 0.95, out=med_sd)
    return med_sd, (med_sd > 0) & ~heart_bin & body_bin, _soft(med_sd.copy(), fr.edge)


def _lungs(fr: Frame, pt: Patient, domes, w, heart_sd, med_sd, edge):
    """Skewed half-ellipses above the domes; their masks leave out heart, mediastinum and what
    lies outside the body (`render` cuts heart and mediastinum from the soft lungs).

    Everything drawn per side (lung, ribs, clavicle, diaphragm) has px = side * X > -0.15, so
    only the columns fr.cols[side] are computed for that side. Returns per side the ellipse
    value e and the lung distance (on those columns), the full-size masks, and the soft lungs
    (anti-aliased over `edge`, a width or per-image widths [B, 1, 1]).
    """
    lung_ell, lung_dist, lung_bins = {}, {}, {}
    lung = fr.zeros()
    for side in (-1, +1):
        f, cs = pt.lungs[side], fr.cols[side]
        px, Yc, dm = fr.window(side, domes[side])
        e = lung_e(px, Yc, f)
        lung_ell[side] = e
        sd = np.minimum((1.0 - e) * _b(f["a"] * 0.5), dm - Yc)
        ld = np.minimum(np.minimum(sd, -heart_sd[..., cs]),
                        np.minimum(-med_sd[..., cs], w[..., cs]))
        lung_dist[side] = ld
        lung_bins[side] = fr.zeros(bool)
        lung_bins[side][..., cs] = ld > 0
        lung[..., cs] += _soft(sd, edge)
    return lung_ell, lung_dist, lung_bins, lung


def _bones(fr: Frame, pt: Patient, domes, lung_ell, dense, body_bin, style: str = "v1"):
    """Ribs (fading over the dense shadows `dense`), clavicles and spine as one bone layer (not
    yet cut to the body), with the rib, clavicle, diaphragm and spine masks."""
    ribs, ribs_bin = _ribs(fr, pt, domes, lung_ell, cortex=style == "v2")
    bone, clav_bin = _clavicles(fr, pt)
    ribs *= 1.0 - 0.75 * dense                       # ribs fade over the dense shadows
    bone += ribs
    del ribs
    spine, spine_bin = _spine(fr, body_bin)
    if style == "v2":  # behind the mediastinum the spine shows faintly
        spine *= 1.0 - 0.6 * dense
        spine *= 0.7
    bone += spine
    bone *= _b(pt.t_bone)
    return bone, ribs_bin, clav_bin, _diaphragm(fr, pt, domes), spine_bin


def _ribs(fr: Frame, pt: Patient, domes, lung_ell, cortex: bool = False):
    """Posterior ribs: arches rising from the spine and curving down laterally, inside a cage
    slightly larger than each lung. Returns the soft ribs and their mask. With `cortex` (v2)
    the drawn band is thinner than the mask and brighter at its margins than in its middle."""
    ribs = fr.zeros()
    ribs_bin = fr.zeros(bool)
    for side in (-1, +1):
        cs = fr.cols[side]
        px, Yc, dm = fr.window(side, domes[side])
        cage = np.minimum(np.minimum(1.15 - lung_ell[side], dm + 0.06 - Yc), px - 0.07)
        ph = Yc - 0.9 * (px - 0.30) ** 2
        ph *= _b(1.0 / pt.rib_sp)
        ph += _b(pt.rib_off)
        ph -= np.floor(ph)
        ph -= 0.5
        np.abs(ph, out=ph)                           # 0 at the rib's centre line, 0.5 between ribs
        ribs_bin[..., cs] |= (ph < 0.17) & (cage > 0)
        if cortex:
            band = _soft(0.12 - ph, 0.05)
            band *= 0.55 + 0.9 * np.minimum(ph * (1 / 0.12), 1.0) ** 2
        else:
            band = _soft(0.17 - ph, 0.1)
        band *= _soft(cage, 0.06)
        ribs[..., cs] += band
        if cortex:
            _anterior_ribs(ribs, ribs_bin, cs, px, Yc, cage, pt)
    return ribs, ribs_bin


def _anterior_ribs(ribs, ribs_bin, cs, px, Yc, cage, pt: Patient) -> None:
    """v2: the anterior ribs, fainter and wider apart than the posterior ones, run from the
    lateral chest wall down towards the midline and fade out before it (their cartilage does
    not show), so they cross the posterior arches over the outer lung. Added in place to the
    soft ribs and the rib mask of the columns `cs`."""
    ph = Yc + 0.5 * px - 0.35 * px ** 2
    ph *= _b(1.0 / (1.35 * pt.rib_sp))
    ph += _b(pt.rib_off + 0.37)
    ph -= np.floor(ph)
    ph -= 0.5
    np.abs(ph, out=ph)
    fade = np.clip((px - 0.22) * (1 / 0.2), 0.0, 1.0)
    inside = cage > 0
    ribs_bin[..., cs] |= (ph < 0.16) & (fade > 0) & inside
    band = _soft(0.12 - ph, 0.08)
    band *= 0.45 * fade
    band *= _soft(cage, 0.06)
    ribs[..., cs] += band


def _clavicles(fr: Frame, pt: Patient):
    """Clavicles: bands from the sternal end (px ~ 0.07) rising gently to the shoulders. Their
    centre lines stay within Y in [-0.83, -0.56], so only those rows are computed. Returns a
    bone layer holding them and their mask."""
    rows = row_band(fr.pose, -0.83 - 0.03 - 2 * fr.edge, -0.56 + 0.03 + 2 * fr.edge, fr.S)
    bone = fr.zeros()
    clav_bin = fr.zeros(bool)
    for side in (-1, +1):
        cs = fr.cols[side]
        px, Yc = fr.window(side)
        pb = px[:, rows]
        cy = _b(pt.clav_y) - 0.28 * (pb - 0.07) + 0.25 * (pb - 0.35) ** 2
        cd = np.minimum(0.03 - np.abs(Yc[:, rows] - cy), np.minimum(pb - 0.06, 0.68 - pb))
        clav_bin[:, rows, cs] |= cd > 0
        bone[:, rows, cs] += 1.3 * _soft(cd, fr.edge)
    return bone, clav_bin


def _diaphragm(fr: Frame, pt: Patient, domes) -> np.ndarray:
    """Diaphragm concept: a band 0.05 deep under each dome across its lung's width."""
    diaph_bin = fr.zeros(bool)
    for side in (-1, +1):
        f, cs = pt.lungs[side], fr.cols[side]
        px, Yc, dm = fr.window(side, domes[side])
        dd = Yc - dm
        diaph_bin[..., cs] |= (dd >= 0) & (dd < 0.05) & (px > _b(f["m"])) \
            & (px < _b(f["l"] + 0.03))
    return diaph_bin


def _spine(fr: Frame, body_bin):
    """Spine: a vertical band on the midline with slightly darker disc spaces; layer, mask."""
    spine_sd = 0.075 - fr.absX
    spine_bin = (spine_sd > 0) & body_bin
    vert = fr.Y * (1.0 / 0.11)
    vert -= np.floor(vert)
    vert -= 0.5
    np.abs(vert, out=vert)                           # disc spaces slightly darker
    spine = _soft(spine_sd, fr.edge)
    spine *= 0.35 + 0.8 * vert
    return spine, spine_bin


def _soft_tissue(fr: Frame, pt: Patient, body, heart, heart_sd, med, abd) -> np.ndarray:
    """Unit-intensity image of the dense tissue: body, heart (thicker towards its centre; the
    `heart` layer is scaled in place), mediastinum and abdomen."""
    img = body * _b(pt.t_soft)
    img *= 0.9 + 0.1 * np.clip(1.0 - fr.absX, 0.0, 1.0)  # chest wall thins laterally
    heart *= _b(pt.t_heart) * (0.86 + 0.14 * np.clip(heart_sd * _b(4.0 / pt.hb), 0.0, 1.0))
    np.maximum(img, heart, out=img)
    np.maximum(img, med * _b(pt.t_heart * 0.93), out=img)
    np.maximum(img, abd * body * _b(pt.t_abd), out=img)
    return img


def _air(fr: Frame, pt: Patient, img, lung, body, trachea_air: float = 0.12) -> np.ndarray:
    """Subtracts the air of the lungs (denser at the bases), trachea and gastric bubble;
    returns the trachea's mask (the airway concept)."""
    air = lung * _b(pt.t_air)
    air *= 1.05 - 0.12 * (fr.Y + 0.7)                # bases a little denser (breast shadows)
    img -= air
    del air
    trachea = np.minimum(0.03 - np.abs(fr.X - _b(pt.med_x)), _b(pt.hy - pt.v_ext) - 0.05 - fr.Y)
    trachea_bin = (trachea > 0) & (body > 0)
    img -= trachea_air * _soft(trachea, fr.edge) * body
    fL = pt.lungs[+1]
    gb = (fr.X - 0.33) * (1 / 0.09)
    gb *= gb
    t = (fr.Y - _b(fL["yd"] - fL["dh"] + 0.12)) * (1 / 0.055)
    gb += t * t
    img -= _b(0.16 * pt.bubble) * _soft(1.0 - gb, 0.3)
    return trachea_bin


def _markings(d: _Draws, fr: Frame, pt: Patient, lung) -> np.ndarray:
    """Hila and lung markings: ridges of a smooth random field (a vessel-like network), dense
    near the hila and fading towards the periphery, inside the soft lungs."""
    hil = fr.zeros()
    hc = pt.hy - 0.6 * pt.v_ext                        # hilar height; blobs reach +-0.18 of it
    rows = row_band(fr.pose, hc - 0.2, hc + 0.2, fr.S)
    for side in (-1, +1):
        hdx = (fr.X[:, rows] - side * 0.2) * (1 / 0.09)
        hdy = (fr.Y[:, rows] - _b(hc)) * (1 / 0.14)
        hil[:, rows] += _soft(1.0 - hdx * hdx - hdy * hdy, 1.2)
    field = _smooth(d.field(*MARKINGS_FIELD), fr.S)
    np.abs(field, out=field)
    marks = _soft(0.2 - field, 0.2)
    marks *= np.clip(1.15 - fr.absX * (1 / 0.7), 0.1, 1.0)
    marks += 0.6 * hil
    marks *= lung
    marks *= 0.12
    return marks
