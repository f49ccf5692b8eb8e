"""Lines and tubes of the v2 phantoms: endotracheal tube, central venous line, nasogastric tube.

The COVID-19 CXR segmentation set annotates these as concepts of their own, and ICU films
carry them often; a classifier and its explanations should meet them. Each is present in an
image with probability TUBE_RATE, independently of the findings and of each other (drawn from
v2's own draws), and is a curve x = x(Y) in the patient frame, so it turns and shifts with the
patient:

  ET tube       down the trachea from the top of the image to a tip above the carina: a
                hollow tube whose walls show brighter than its lumen.
  central line  a right internal jugular line: from the neck, medially down to a tip at the
                cavo-atrial junction, right of the spine.
  NG tube       down the oesophagus, past the left dome, curving into the stomach.

A tube adds brightness only inside its concept mask, and no tube is a finding: labels and
finding masks do not change.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cxr_jax.data.phantoms._fields import _b, _Draws

NAMES = ("et_tube", "central_line", "ng_tube")
TUBE_RATE = 0.15


class _Curve(NamedTuple):
    """x(Y) = x0 + (x1 - x0) s(t) + bow t (1 - t), t = (Y - y0) / (y1 - y0) in [0, 1], with
    s the smoothstep; drawn between y0 and y1 ([B] arrays)."""

    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    bow: np.ndarray


def _distance(fr, c: _Curve, sub: np.ndarray) -> np.ndarray:
    """Distance [n, S, S] (normalised units) from each pixel of images `sub` to the curve, up
    to the first order in its slope; infinite beyond its ends."""
    y0, y1 = _b(c.y0[sub]), _b(c.y1[sub])
    t = (fr.Y[sub] - y0) / (y1 - y0)
    tc = np.clip(t, 0.0, 1.0)
    x0, x1, bow = _b(c.x0[sub]), _b(c.x1[sub]), _b(c.bow[sub])
    x = x0 + (x1 - x0) * tc * tc * (3.0 - 2.0 * tc) + bow * tc * (1.0 - tc)
    slope = ((x1 - x0) * 6.0 * tc * (1.0 - tc) + bow * (1.0 - 2.0 * tc)) / (y1 - y0)
    dist = np.abs(fr.X[sub] - x) / np.sqrt(1.0 + slope * slope)
    dist[(t < 0.0) | (t > 1.0)] = np.inf
    return dist


def _line(dist: np.ndarray, half_width: float, edge: float) -> np.ndarray:
    """Anti-aliased band of `half_width` around a curve, from its distance field."""
    return np.clip((half_width - dist) / edge + 0.5, 0.0, 1.0)


def draw(d2: _Draws, fr, pt, img: np.ndarray) -> tuple[np.ndarray, ...]:
    """Draws the tubes onto img (in place; display units, after the film curve, as they are
    radio-opaque) and returns their masks [B, S, S], in NAMES order."""
    has = [d2.bern(TUBE_RATE) for _ in NAMES]
    carina = pt.hy - pt.v_ext - 0.05
    fL = pt.lungs[+1]
    curves = (
        _Curve(pt.med_x + d2.u(-0.01, 0.01), pt.med_x + d2.u(-0.012, 0.012),
               np.full(fr.B, -1.05), carina - d2.u(0.08, 0.25), d2.u(-0.02, 0.02)),
        _Curve(d2.u(-0.26, -0.18), pt.med_x - d2.u(0.07, 0.1), np.full(fr.B, -1.05),
               pt.hy - pt.v_ext + d2.u(0.0, 0.12), d2.u(-0.04, 0.04)),
        _Curve(pt.med_x + d2.u(0.015, 0.035), d2.u(0.22, 0.36), np.full(fr.B, -1.05),
               fL["yd"] - fL["dh"] + d2.u(0.18, 0.3), d2.u(-0.05, 0.0)),
    )
    widths = ((0.024, 0.006, 0.07), (0.006, 0.0, 0.16), (0.009, 0.0, 0.12))  # half, wall, amp
    out = []
    w = max(0.004, 0.5 * fr.pix)
    for present, curve, (half, wall, amp) in zip(has, curves, widths):
        mask = fr.zeros(bool)
        sub = np.nonzero(present)[0]
        if sub.size:
            dist = _distance(fr, curve, sub)
            if wall:   # a hollow tube: walls brighter than its lumen
                add = amp * (2.0 * _line(np.abs(dist - half), wall, w) + _line(dist, half, w))
            else:
                add = amp * _line(dist, half, w)
            mask[sub] = add > 0
            img[sub] += add
        out.append(mask)
    return tuple(out)
