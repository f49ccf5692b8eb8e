"""Chest radiographs from files to model input, with boxes and masks carried along.

Typical use::

    image = load_image(path, photometric=None)          # float32 [H, W] in [0, 1], 1 = white
    x, boxes, masks = preprocess(image, size=224, crop="centre", intensity="xrv",
                                 boxes=record.boxes, frame_size=record.frame_size)
    x, boxes, masks = load_record(record, size=224, masks=True)   # the same from a Record

Model input conventions: ``x`` is float32 ``[size, size, 1]``, the centred square crop of the
image resized to ``size x size`` (area averaging when shrinking, bilinear when enlarging), with
intensities in [-1024, 1024] (``"xrv"``: ``2048 x - 1024``, TorchXRayVision's convention) or left
in [0, 1] (``"unit"``). Decoded intensities are the stored values over their full range, with
MONOCHROME1 inverted so that 1 is white. Boxes come back in output pixels, clipped to the crop;
masks are bool ``[..., size, size]``.

Modules: `decode` reads files (Pillow formats and DICOM), `resizing` resizes arrays,
`geometry` moves and rasterises boxes and shapes, `preprocessing` ties them together.
"""
from __future__ import annotations

from cxr_jax.data.images.decode import PHOTOMETRICS, load_image
from cxr_jax.data.images.geometry import box_masks, scale_boxes, shape_masks
from cxr_jax.data.images.preprocessing import INTENSITIES, load_record, preprocess, to_intensity
from cxr_jax.data.images.resizing import resize

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
