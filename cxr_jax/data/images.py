"""Decoding chest radiographs and turning them into model input, with boxes and masks following.

Pipeline::

    image = load_image(path, photometric=None)          # float32 [H, W] in [0, 1], 1 = white
    x, boxes, masks = preprocess(image, size=224, crop="centre", intensity="xrv",
                                 boxes=record.boxes, frame_size=record.frame_size)
    # x: float32 [224, 224, 1] in [-1024, 1024]; boxes in the 224x224 frame
    x, boxes, masks = load_record(record, size=224, masks=True)   # the same, from a Record

Decoding (`load_image`): PNG, JPEG and anything else Pillow reads, 8 or 16 bit, grayscale or
colour (colour is reduced to luma, so a JPEG with three identical channels gives exactly that
channel); DICOM through the optional pydicom (``pip install 'cxr_jax[dicom]'``), whose compressed
transfer syntaxes need a decoder plugin (Pillow for JPEG baseline). Stored values are scaled by
their full range (``2**bits - 1`` for unsigned integers, ``BitsStored`` for DICOM) to [0, 1], with
no windowing, the same normalisation TorchXRayVision applies. ``MONOCHROME1`` images (DICOM header,
or the ``photometric`` argument, e.g. from a BrixIA record) are inverted, ``x -> 1 - x``, so that
1 is always white (dense tissue, bone) as displayed. EXIF orientation is not applied.

Preprocessing (`preprocess`): boxes in an annotation frame (``frame_size``, e.g. NIH's 1024x1024)
are first scaled to the decoded image's size, ``x * W / frame_width``; then the centre square
crop of side ``min(H, W)`` (offset ``((H - side) // 2, (W - side) // 2)``), then a resize to
``size x size``: area averaging when shrinking (each output pixel is the mean of the input area it
covers, exact for fractional factors) and bilinear interpolation when enlarging. Boxes follow the
same affine map ``x' = (x * sx - left) * size / side`` and are clipped to the crop (a box left
with no area is dropped); masks are cropped and resized with the same weights and kept where the
covered fraction is at least 1/2. Intensities: "xrv" maps [0, 1] to [-1024, 1024]
(``2048 x - 1024``, TorchXRayVision's convention), "unit" keeps [0, 1].

Coordinates: continuous pixel coordinates with the origin at the top-left corner of the image;
pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and is inside a region when its centre
``(j + 1/2, i + 1/2)`` is.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from PIL import Image, UnidentifiedImageError

from cxr_jax.data.records import Box, Record, Shape

__all__ = [
    "PHOTOMETRICS",
    "INTENSITIES",
    "load_image",
    "preprocess",
    "load_record",
    "resize",
    "scale_boxes",
    "box_masks",
    "shape_masks",
    "to_intensity",
]

PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
INTENSITIES = ("xrv", "unit")
_DICOM_INSTALL = "pip install 'cxr_jax[dicom]'"


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def _is_dicom(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or path.lower().endswith((".dcm", ".dicom"))


def load_image(path: str | os.PathLike, *, photometric: str | None = None) -> np.ndarray:
    """Decode a radiograph to one channel of float intensities in [0, 1].

    ``x = stored / max_stored`` (``max_stored = 2**bits - 1``), then ``x -> 1 - x`` for
    MONOCHROME1, so 0 is black and 1 white as a radiologist sees the film.

    Args:
      path: a PNG/JPEG/... file Pillow can read, or a DICOM file (recognised by its ``DICM``
        preamble or a .dcm/.dicom name).
      photometric: "MONOCHROME1" or "MONOCHROME2" to override the file's own interpretation
        (DICOM header; MONOCHROME2 for other formats), e.g. from ``Record.photometric``; None
        uses the file's.

    Returns:
      float32 array [H, W] in [0, 1].

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file cannot be decoded (names the file and the problem).
      ImportError: a DICOM file and pydicom, or the decoder its compression needs, is missing
        (the message names the missing decoder and the extra to install).
    """
    path = os.fspath(path)
    if photometric is not None:
        photometric = str(photometric).strip().upper()
        if photometric not in PHOTOMETRICS:
            raise ValueError(f"photometric={photometric!r}; choose one of {PHOTOMETRICS} or None")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    if _is_dicom(path):
        x, own = _load_dicom(path)
    else:
        x, own = _load_pil(path), "MONOCHROME2"
    if (photometric or own) == "MONOCHROME1":
        x = 1.0 - x
    return np.ascontiguousarray(x, dtype=np.float32)


def _load_pil(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_unit(im, path)
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot decode image {path!r}: not an image format Pillow "
                         f"recognises ({e})") from e
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"cannot decode image {path!r}: {e} (truncated or corrupt file?)") from e


def _pil_to_unit(im: Image.Image, path: str) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"cannot decode image {path!r}: 32-bit integer pixels outside "
                             "[0, 65535]; convert it to 8- or 16-bit first")
        return a.astype(np.float32) / 65535.0
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise ValueError(f"cannot decode image {path!r}: floating-point pixels outside "
                             "[0, 1]; rescale it to [0, 1] first")
        return a
    # Colour (RGB, RGBA, P, CMYK, YCbCr, ...): ITU-R 601 luma; identical channels map to themselves.
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _load_dicom(path: str) -> tuple[np.ndarray, str]:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(f"{path!r} is a DICOM file; decoding DICOM needs the optional decoder "
                          f"pydicom, which is not installed. Install the extra: "
                          f"{_DICOM_INSTALL}") from e
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, struct errors, ...
        raise ValueError(f"cannot read DICOM file {path!r}: {e}") from e
    if "PixelData" not in ds:
        raise ValueError(f"cannot decode DICOM file {path!r}: it has no pixel data")
    try:
        a = ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{ts.name} ({ts})" if ts is not None else "an unknown transfer syntax"
        raise ImportError(f"cannot decode DICOM file {path!r}: its pixel data is compressed as "
                          f"{name} and no installed decoder handles it. JPEG baseline needs "
                          f"Pillow ({_DICOM_INSTALL}); JPEG 2000 and JPEG-LS need pylibjpeg "
                          f"or GDCM. pydicom said: {e}") from e
    except Exception as e:
        raise ValueError(f"cannot decode DICOM file {path!r}: {e}") from e
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"cannot decode DICOM file {path!r}: {ds.SamplesPerPixel} samples per "
                         "pixel; chest radiographs have one")
    if a.ndim == 3:
        raise ValueError(f"cannot decode DICOM file {path!r}: it has {a.shape[0]} frames; "
                         "expected one")
    bits = int(ds.get("BitsStored", a.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0 ** bits - 1
    x = (a.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    phot = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if phot not in PHOTOMETRICS:
        raise ValueError(f"cannot decode DICOM file {path!r}: PhotometricInterpretation "
                         f"{phot!r} is not MONOCHROME1/MONOCHROME2")
    return np.clip(x, 0.0, 1.0), phot


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------

def _resize_matrix(n_in: int, n_out: int) -> sp.csr_matrix:
    """Sparse [n_out, n_in] weights: area averaging when shrinking, bilinear when enlarging."""
    if n_out <= n_in:
        s = n_in / n_out
        lo = np.arange(n_out) * s                           # output cell i covers [lo_i, hi_i)
        hi = lo + s
        k = int(np.ceil(s)) + 1
        j = np.floor(lo).astype(np.int64)[:, None] + np.arange(k)[None, :]
        w = np.minimum(j + 1, hi[:, None]) - np.maximum(j, lo[:, None])
        w = np.where((j < n_in) & (w > 0), w, 0.0) / s
    else:
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        j0 = np.floor(c).astype(np.int64)
        f = c - j0
        j = np.stack([j0, np.minimum(j0 + 1, n_in - 1)], axis=1)
        w = np.stack([1 - f, f], axis=1)
    rows = np.repeat(np.arange(n_out), j.shape[1])
    m = sp.csr_matrix((w.ravel(), (rows, np.minimum(j, n_in - 1).ravel())), shape=(n_out, n_in))
    return m.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes; area averaging when shrinking, bilinear when enlarging.

    ``y = R_h x R_w^T`` with separable weight matrices whose rows sum to 1, so constants are kept
    exactly and an integer shrink factor gives block means.

    Args:
      x: float array [..., H, W].
      size: (out_height, out_width).

    Returns:
      float32 array [..., out_height, out_width].
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize needs an array [..., H, W], got shape {x.shape}")
    (h, w), (oh, ow) = x.shape[-2:], (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1 or h < 1 or w < 1:
        raise ValueError(f"cannot resize {x.shape[-2:]} to {(oh, ow)}: sizes must be positive")
    lead = x.shape[:-2]
    n = int(np.prod(lead, dtype=np.int64))
    y = x.reshape(n, h, w)
    if oh != h:
        t = np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(h, n * w)
        y = np.asarray(_resize_matrix(h, oh) @ t).reshape(oh, n, w).transpose(1, 0, 2)
    if ow != w:
        t = np.ascontiguousarray(y).reshape(n * oh, w)
        y = np.asarray(_resize_matrix(w, ow) @ t.T).T.reshape(n, oh, ow)
    return np.ascontiguousarray(y, np.float32).reshape(*lead, oh, ow)


# --------------------------------------------------------------------------------------------
# Geometry: boxes, shapes, masks
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

def to_intensity(x: np.ndarray, intensity: str = "xrv") -> np.ndarray:
    """Map [0, 1] intensities to the model convention: "xrv" -> ``2048 x - 1024``; "unit" -> x."""
    if intensity == "xrv":
        return (np.asarray(x, np.float32) * np.float32(2048.0) - np.float32(1024.0))
    if intensity == "unit":
        return np.asarray(x, np.float32)
    raise ValueError(f"intensity={intensity!r}; choose one of {INTENSITIES}")


def _geometry(h: int, w: int, size: int, crop: str | None, frame_size: tuple[int, int] | None
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
    top, left, ch, cw, aff = _geometry(h, w, size, crop, frame_size)
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
    aff = _geometry(h, w, int(size), crop, record.frame_size)[4]
    _, keep = _move_boxes(record.boxes, aff, int(size), int(size))
    shapes = record.meta.get("shapes") if record.meta else None
    if shapes is not None and len(shapes) == len(record.boxes):
        moved = [_move_shape(shapes[i], aff) for i in keep]
        return x, boxes, shape_masks(moved, int(size), int(size))
    return x, boxes, box_masks(boxes, int(size), int(size))
