"""From a decoded radiograph (or a `Record`) to model input, with its boxes and masks following.

`preprocess` scales boxes from their annotation frame (``frame_size``, e.g. NIH's 1024x1024) to
the decoded image, ``x * W / frame_width``; takes the centred square of side ``min(H, W)``
(offset ``((H - side) // 2, (W - side) // 2)``); and resizes it to ``size x size`` with
`resize`. Boxes follow ``x' = (x * sx - left) * size / side`` and are clipped to the crop; masks
are cropped and resized with the same weights and kept where at least half a pixel is covered.
`to_intensity` then applies the model's intensity convention (see `INTENSITIES`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_jax.data.images.decode import load_image
from cxr_jax.data.images.geometry import (crop_geometry, _move_boxes, _move_shape, box_masks,
                                          shape_masks)
from cxr_jax.data.images.resizing import resize
from cxr_jax.data.records import Box, Record

__all__ = ["INTENSITIES", "to_intensity", "preprocess", "load_record"]

INTENSITIES = ("xrv", "unit")


def to_intensity(x: np.ndarray, intensity: str = "xrv") -> np.ndarray:
    """Map [0, 1] intensities to the model convention: "xrv" -> ``2048 x - 1024``; "unit" -> x."""
    if intensity == "xrv":
        return (np.asarray(x, np.float32) * np.float32(2048.0) - np.float32(1024.0))
    if intensity == "unit":
        return np.asarray(x, np.float32)
    raise ValueError(f"intensity={intensity!r}; choose one of {INTENSITIES}")


def preprocess(image: np.ndarray, *, size: int = 224, crop: str | None = "centre",
               intensity: str = "xrv", boxes: Sequence[Box] | None = None,
               masks: np.ndarray | None = None, frame_size: tuple[int, int] | None = None,
               ) -> tuple[np.ndarray, tuple[Box, ...] | None, np.ndarray | None]:
    """Centre-crop, resize and normalise a decoded radiograph; boxes and masks follow.

    Geometry (continuous pixel coordinates): boxes are scaled from ``frame_size`` to the image,
    ``x * W / frame_w``; the crop is the centred ``side x side`` square, ``side = min(H, W)``;
    the resize maps it onto ``size x size``. So ``x' = (x * W / frame_w - left) * size / side``.

    Args:
      image: float array [H, W] (or [H, W, 1]) in [0, 1], as `load_image` returns.
      size: output side.
      crop: "centre" (the TorchXRayVision crop) or None (no crop: the whole image is resized to
        a square, changing the aspect ratio).
      intensity: "xrv" ([-1024, 1024]) or "unit" ([0, 1]).
      boxes: `Box` tuples in the ``frame_size`` frame (the image's own pixels when None); each
        must lie inside that frame.
      masks: bool or float array [..., H, W] on the image's pixel grid.
      frame_size: ``(width, height)`` the boxes are expressed in, e.g. ``Record.frame_size``.

    Returns:
      ``(x, boxes, masks)``: x float32 [size, size, 1]; the boxes in output pixels, clipped to the
      crop, with boxes that fall wholly outside it dropped (None when none were given); masks bool
      [..., size, size], a pixel set where at least half its area was set (None when not given).
    """
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"preprocess needs one grayscale image [H, W] or [H, W, 1]; got shape "
                         f"{np.shape(image)} (load_image returns [H, W])")
    if not np.isfinite(x).all():
        raise ValueError("preprocess: the image contains NaN or infinite values")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"preprocess expects intensities in [0, 1] (as load_image returns); got "
                         f"[{x.min():g}, {x.max():g}]")
    if int(size) < 1:
        raise ValueError(f"size={size!r} must be a positive integer")
    size = int(size)
    h, w = x.shape
    top, left, ch, cw, aff = crop_geometry(h, w, size, crop, frame_size)
    out = to_intensity(resize(x[top:top + ch, left:left + cw], (size, size)), intensity)

    new_boxes = None
    if boxes is not None:
        fw, fh = frame_size if frame_size is not None else (w, h)
        tol = 1e-6 * max(fw, fh)
        for b in boxes:
            _, x0, y0, x1, y1 = b if len(b) == 5 else (None, *b)
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"box {tuple(b)!r} is empty or inverted (need x0 < x1, y0 < y1)")
            if x0 < -tol or y0 < -tol or x1 > fw + tol or y1 > fh + tol:
                raise ValueError(f"box {tuple(b)!r} lies outside the {fw}x{fh} "
                                 f"{'annotation frame' if frame_size else 'image'}")
        new_boxes, _ = _move_boxes(boxes, aff, size, size)

    new_masks = None
    if masks is not None:
        m = np.asarray(masks)
        if m.shape[-2:] != (h, w):
            raise ValueError(f"masks have shape {m.shape}; their last two axes must match the "
                             f"image's {(h, w)}")
        crop_m = m[..., top:top + ch, left:left + cw].astype(np.float32)
        new_masks = resize(crop_m, (size, size)) >= 0.5
    return out[..., None], new_boxes, new_masks


def load_record(record: Record, *, size: int = 224, crop: str | None = "centre",
                intensity: str = "xrv", masks: bool = False
                ) -> tuple[np.ndarray, tuple[Box, ...], np.ndarray | None]:
    """Decode a record's image and preprocess it with its boxes (and per-box masks).

    The image is decoded with the record's photometric interpretation; boxes are scaled from
    ``record.frame_size`` to the decoded size (NIH's 1024 frame onto a 512x512 PNG: x 1/2) and
    follow the crop and resize. With ``masks=True`` one mask per returned box is rasterised
    directly at the output resolution from the exact shape moved by the same affine map
    (``record.meta["shapes"]`` from ``read_object_cxr(..., masks=True)``), or from the box itself.

    Args:
      record: a `Record`.
      size, crop, intensity: as for `preprocess`.
      masks: also return masks aligned with the returned boxes.

    Returns:
      ``(x [size, size, 1] float32, boxes, masks [len(boxes), size, size] bool or None)``.

    Raises:
      ValueError / FileNotFoundError: an unreadable image or a box outside it; the message names
      the image and the annotation file and line the record came from.
    """
    where = f" (listed in {record.source}, line {record.line})" if record.source else ""
    try:
        image = load_image(record.path, photometric=record.photometric)
        h, w = image.shape
        x, boxes, _ = preprocess(image, size=size, crop=crop, intensity=intensity,
                                 boxes=record.boxes, frame_size=record.frame_size)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}{where}") from e
    except ValueError as e:
        raise ValueError(f"{record.path}: {e}{where}") from e
    if not masks:
        return x, boxes, None
    aff = crop_geometry(h, w, int(size), crop, record.frame_size)[4]
    _, keep = _move_boxes(record.boxes, aff, int(size), int(size))
    shapes = record.meta.get("shapes") if record.meta else None
    if shapes is not None and len(shapes) == len(record.boxes):
        moved = [_move_shape(shapes[i], aff) for i in keep]
        return x, boxes, shape_masks(moved, int(size), int(size))
    return x, boxes, box_masks(boxes, int(size), int(size))
