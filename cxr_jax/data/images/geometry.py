"""Boxes, shapes and masks under the crop-and-resize map, and their rasterisation.

Coordinates are continuous pixel coordinates with the origin at the image's top-left corner; pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and belongs to a region when its centre
``(j + 1/2, i + 1/2)`` does. Preprocessing moves every point by one affine map per axis,
``x' = x * sx + tx`` (`crop_geometry` builds it from the crop, the output size and the annotation
frame); moved boxes are clipped to the output and dropped when no area is left.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cxr_jax.data.records import Box, Shape

__all__ = ["scale_boxes", "box_masks", "shape_masks", "crop_geometry"]


class _Affine(NamedTuple):
    """x' = x * sx + tx, y' = y * sy + ty."""
    sx: float
    sy: float
    tx: float
    ty: float


def scale_boxes(boxes: Sequence[Box], from_size: tuple[int, int],
                to_size: tuple[int, int]) -> tuple[Box, ...]:
    """Rescale boxes between pixel frames: ``x * to_w / from_w``, ``y * to_h / from_h``.

    Args:
      boxes: `Box` tuples in the ``from_size`` frame.
      from_size, to_size: ``(width, height)`` of the two frames (e.g. (1024, 1024) -> (512, 512)).

    Returns:
      The boxes in the ``to_size`` frame.
    """
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return tuple(Box(b.label, b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy) for b in boxes)


def _move_boxes(boxes: Sequence, a: _Affine, width: float, height: float
                ) -> tuple[tuple[Box, ...], list[int]]:
    out, keep = [], []
    for i, b in enumerate(boxes):
        label, x0, y0, x1, y1 = b if len(b) == 5 else (None, *b)
        x0, x1 = (min(max(v * a.sx + a.tx, 0.0), width) for v in (x0, x1))
        y0, y1 = (min(max(v * a.sy + a.ty, 0.0), height) for v in (y0, y1))
        if x0 < x1 and y0 < y1:
            out.append(Box(label, x0, y0, x1, y1))
            keep.append(i)
    return tuple(out), keep


def _centres(lo: float, hi: float, n: int) -> tuple[int, np.ndarray]:
    start = max(int(np.floor(lo)), 0)
    stop = min(int(np.ceil(hi)) + 1, n)
    return start, np.arange(start, max(stop, start), dtype=np.float64) + 0.5


def box_masks(boxes: Sequence, height: int, width: int) -> np.ndarray:
    """Rasterise boxes: pixel (i, j) is inside when ``x0 <= j + 1/2 < x1`` and likewise for y.

    Args:
      boxes: N `Box` tuples (or ``(x0, y0, x1, y1)`` tuples).
      height, width: mask size.

    Returns:
      bool array [N, height, width].
    """
    if len(boxes) == 0:
        return np.zeros((0, height, width), bool)
    b = np.array([tuple(x)[-4:] for x in boxes], np.float64)
    cy = np.arange(height) + 0.5
    cx = np.arange(width) + 0.5
    iny = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] < b[:, 3:4])    # [N, H]
    inx = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] < b[:, 2:3])    # [N, W]
    return iny[:, :, None] & inx[:, None, :]


def shape_masks(shapes: Sequence[Shape], height: int, width: int) -> np.ndarray:
    """Rasterise Object-CXR shapes (pixel centres inside the shape).

    Rectangle: ``x0 <= cx < x1``, ``y0 <= cy < y1``; ellipse inscribed in its box:
    ``((cx - xc) / a)^2 + ((cy - yc) / b)^2 <= 1``; polygon: even-odd rule.

    Args:
      shapes: N `Shape` tuples, in the pixel frame of the mask.
      height, width: mask size.

    Returns:
      bool array [N, height, width].
    """
    out = np.zeros((len(shapes), height, width), bool)
    for k, s in enumerate(shapes):
        x0, y0, x1, y1 = s.box
        r0, cy = _centres(y0, y1, height)
        c0, cx = _centres(x0, x1, width)
        if cy.size == 0 or cx.size == 0:
            continue
        X, Y = cx[None, :], cy[:, None]
        if s.kind == "rectangle":
            m = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
        elif s.kind == "ellipse":
            a, b = (x1 - x0) / 2, (y1 - y0) / 2
            m = ((X - (x0 + x1) / 2) / a) ** 2 + ((Y - (y0 + y1) / 2) / b) ** 2 <= 1.0
        elif s.kind == "polygon":
            p = np.asarray(s.points, np.float64).reshape(-1, 2)
            xa, ya = p[:, 0], p[:, 1]
            xb, yb = np.roll(xa, -1), np.roll(ya, -1)
            straddle = (ya[:, None] > cy[None, :]) != (yb[:, None] > cy[None, :])   # [E, H]
            with np.errstate(divide="ignore", invalid="ignore"):
                xcross = xa[:, None] + (cy[None, :] - ya[:, None]) * (
                    (xb - xa) / (yb - ya))[:, None]                                  # [E, H]
            crossings = straddle[:, :, None] & (cx[None, None, :] < xcross[:, :, None])
            m = np.logical_xor.reduce(crossings, axis=0)
        else:
            raise ValueError(f"unknown shape kind {s.kind!r}; expected rectangle, ellipse or "
                             "polygon")
        out[k, r0:r0 + cy.size, c0:c0 + cx.size] = m
    return out


def _move_shape(s: Shape, a: _Affine) -> Shape:
    p = np.asarray(s.points, np.float64).reshape(-1, 2) * (a.sx, a.sy) + (a.tx, a.ty)
    return Shape(s.kind, tuple(p.ravel().tolist()))


def crop_geometry(h: int, w: int, size: int, crop: str | None, frame_size: tuple[int, int] | None
              ) -> tuple[int, int, int, int, _Affine]:
    if crop in ("centre", "center"):
        side = min(h, w)
        top, left, ch, cw = (h - side) // 2, (w - side) // 2, side, side
    elif crop is None or crop == "none":
        top, left, ch, cw = 0, 0, h, w
    else:
        raise ValueError(f"crop={crop!r}; choose 'centre' or None")
    fx, fy = (w / frame_size[0], h / frame_size[1]) if frame_size is not None else (1.0, 1.0)
    sx, sy = size / cw, size / ch
    return top, left, ch, cw, _Affine(fx * sx, fy * sy, -left * sx, -top * sy)
