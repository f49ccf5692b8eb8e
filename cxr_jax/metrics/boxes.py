"""Box metrics: multi-Otsu boxes from saliency maps, box overlap (IoU, IoBB, IoR), box <-> mask
conversion and the method-agreement matrix.

Conventions:

* Maps and masks are `[..., H, W]` as in `cxr_jax.metrics.pointing`; multi-Otsu boxes take one
  map `[H, W]` (or a stack `[B, H, W]`, one map at a time).
* A **box** is `(x0, y0, x1, y1)` in pixel-edge coordinates: pixel (row r, column c) covers
  `[c, c+1) x [r, r+1)`, so an integer box holds columns `x0 .. x1-1` and rows `y0 .. y1-1`
  and its area `(x1 - x0)(y1 - y0)` is its pixel count. This is the `Box(label, x0, y0, x1, y1)`
  convention of the dataset readers. A missing box is a row of NaN. Box arrays are `[..., 4]`.
* Per-image results are NaN where the metric is undefined (a missing box, no ground-truth
  region); means skip NaN.

Multi-Otsu thresholding and connected components are inherently per-image and run in
numpy/scikit-image; the remaining box metrics are vectorised numpy.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.measure import label as connected_components

from cxr_jax.metrics.pointing import _check_pair

__all__ = [
    "top_class_mask",
    "boxes_from_saliency",
    "box_mask",
    "mask_box",
    "box_iou",
    "box_set_iou",
    "iobb",
    "box_recall",
    "ior",
    "agreement_matrix",
]


# --------------------------------------------------------------------------- multi-Otsu boxes
def _finite_2d(name: str, a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be one map [H, W] here, got {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; clean the map (e.g. jnp.nan_to_num) "
                         f"before extracting boxes.")
    return a


def top_class_mask(saliency, *, classes: int = 3, nbins: int = 256) -> np.ndarray:
    """Pixels in the highest multi-Otsu class of one map (the "activated" region).

    thresholds t_1 < ... < t_{classes-1} = skimage `threshold_multiotsu(map, classes, nbins)`;
    top = map >= t_{classes-1} (the class `np.digitize(map, thresholds)` labels highest).
    Fallbacks, so no map raises: a constant map has no top class (all False); a map with too
    few distinct values for `classes` classes (e.g. a binary map) takes its maximum value's
    pixels as the top class.

    Args:
      saliency: [H, W] one finite map.
      classes: number of Otsu classes (3 in the seed).
      nbins: histogram bins for the threshold search.
    Returns:
      [H, W] bool.
    """
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}.")
    s = _finite_2d("saliency", saliency)
    hi = s.max()
    if hi == s.min():
        return np.zeros(s.shape, bool)
    try:
        thresholds = threshold_multiotsu(s, classes=classes, nbins=nbins)
    except ValueError:  # fewer distinct (binned) values than classes
        return s == hi
    return s >= thresholds[-1]


def _box_of_top_class(top: np.ndarray, connectivity: int) -> np.ndarray:
    """The bounding box (x0, y0, x1, y1) of the component whose box holds most top pixels."""
    lab, n = connected_components(top, connectivity=connectivity, return_num=True)
    if n == 0:
        return np.full(4, np.nan)
    slices = ndimage.find_objects(lab)
    y0 = np.array([s[0].start for s in slices])
    y1 = np.array([s[0].stop for s in slices])
    x0 = np.array([s[1].start for s in slices])
    x1 = np.array([s[1].stop for s in slices])
    # Top-class pixels inside each box via a summed-area table (boxes may contain pixels of
    # other components too: "the box with the most red pixels").
    sat = np.zeros((top.shape[0] + 1, top.shape[1] + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(top, axis=0), axis=1)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    k = int(np.argmax(inside))  # ties: first component in raster order
    return np.array([x0[k], y0[k], x1[k], y1[k]], np.float64)


def boxes_from_saliency(saliency, *, classes: int = 3, nbins: int = 256,
                        connectivity: int = 2) -> np.ndarray:
    """Bounding box of a saliency map by multi-Otsu thresholding (seed 002's procedure).

    1. top = highest multi-Otsu class (`top_class_mask`; constant map -> no box, too few
       distinct values -> the maximum's pixels);
    2. connected components of `top` (skimage.measure.label; connectivity 2 = 8-neighbour);
    3. each component's bounding box; keep the box that contains the most top-class pixels
       (ties: the first component in raster order).

    Args:
      saliency: [H, W] or [B, H, W] finite maps (one map at a time internally).
      classes: Otsu classes.
      nbins: histogram bins.
      connectivity: 1 (4-neighbour) or 2 (8-neighbour).
    Returns:
      [4] or [B, 4] float64 boxes (x0, y0, x1, y1), pixel-edge coordinates; NaN row = no box.
    """
    s = np.asarray(saliency, np.float64)
    if s.ndim == 2:
        return _box_of_top_class(top_class_mask(s, classes=classes, nbins=nbins), connectivity)
    if s.ndim != 3:
        raise ValueError(f"saliency must be [H, W] or [B, H, W], got {s.shape}.")
    return np.stack([
        _box_of_top_class(top_class_mask(m, classes=classes, nbins=nbins), connectivity)
        for m in s  # multi-Otsu and labelling are per-image operations
    ]) if len(s) else np.zeros((0, 4))


# --------------------------------------------------------------------------- box geometry
def _boxes(name: str, b) -> np.ndarray:
    b = np.asarray(b, np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4] = (x0, y0, x1, y1), got {b.shape}.")
    with np.errstate(invalid="ignore"):
        bad = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    if np.any(bad):
        raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) "
                         f"corners, convert (x, y, w, h) with x1 = x + w, y1 = y + h.")
    return b


def _intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.maximum(iw, 0.0) * np.maximum(ih, 0.0)  # NaN propagates


def _area(b: np.ndarray) -> np.ndarray:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a, b) -> np.ndarray:
    """Intersection over union of boxes, broadcasting over leading axes.

    IoU = |a n b| / (|a| + |b| - |a n b|) with continuous areas (pixel counts for integer
    boxes). NaN if either box is missing (NaN) or both have zero area.

    Args:
      a, b: [..., 4] boxes (x0, y0, x1, y1), broadcastable.
    Returns:
      [...] float64.
    """
    a, b = _boxes("a", a), _boxes("b", b)
    inter = _intersection_area(a, b)
    union = _area(a) + _area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def iobb(pred, gt) -> np.ndarray:
    """Intersection over the detected (predicted) box: |pred n gt| / |pred|.

    The ChestX-ray8 definition (Wang et al. 2017, "IoBB: intersection over the detected B-Box
    area ratio"), as in the public CheXNet-derived evaluation code (`compute_Intersection(...,
    mode="IoBB")`, scored at T(IoBB) in {0.1, 0.25, 0.5, 0.75, 0.9}). That code adds +1 to the
    intersection's width and height (inclusive pixel corners) and has a typo in its ground-truth
    area; here boxes are pixel-edge coordinates, so no +1 is needed and none is added. A small
    box inside a large ground truth scores 1, so report IoBB beside IoU.

    Args:
      pred: [..., 4] predicted boxes.
      gt: [..., 4] ground-truth boxes (broadcastable).
    Returns:
      [...] float64; NaN if either box is missing or the predicted box has zero area.
    """
    pred, gt = _boxes("pred", pred), _boxes("gt", gt)
    inter = _intersection_area(pred, gt)
    area = _area(pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(area > 0, inter / np.where(area > 0, area, 1.0), np.nan)
    return np.where(np.isnan(gt).any(-1), np.nan, out)


def box_recall(pred, gt) -> np.ndarray:
    """Share of the ground-truth box the predicted box covers: |pred n gt| / |gt|.

    IoBB's counterpart over the ground truth: a box that covers the whole finding scores 1
    however large it is, so it measures how much of the finding a map's box reaches (e.g.
    Inverse IBA's claim to highlight every informative region), read beside IoU and IoBB.

    Args:
      pred: [..., 4] predicted boxes.
      gt: [..., 4] ground-truth boxes (broadcastable).
    Returns:
      [...] float64; NaN if the ground truth is missing or has zero area; 0 where the map gave
      no box (a NaN predicted box covers nothing).
    """
    pred, gt = _boxes("pred", pred), _boxes("gt", gt)
    inter = np.nan_to_num(_intersection_area(pred, gt))
    area = _area(gt)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(area > 0, inter / np.where(area > 0, area, 1.0), np.nan)
    return np.where(np.isnan(gt).any(-1), np.nan, out)


def box_mask(boxes, shape: Sequence[int]) -> np.ndarray:
    """Rasterise boxes: pixel (r, c) is inside when its centre (c + .5, r + .5) lies in
    [x0, x1) x [y0, y1). For integer boxes that is exactly columns x0..x1-1, rows y0..y1-1.

    Args:
      boxes: [..., 4] boxes; NaN rows give empty masks.
      shape: (H, W).
    Returns:
      [..., H, W] bool.
    """
    b = _boxes("boxes", boxes)
    h, w = (int(s) for s in shape)
    cy = np.arange(h) + 0.5
    cx = np.arange(w) + 0.5
    with np.errstate(invalid="ignore"):
        rows = (cy >= b[..., 1, None]) & (cy < b[..., 3, None])  # [..., H]
        cols = (cx >= b[..., 0, None]) & (cx < b[..., 2, None])  # [..., W]
    return rows[..., :, None] & cols[..., None, :]


def mask_box(mask) -> np.ndarray:
    """The pixel-edge bounding box (x0, y0, x1, y1) of a boolean mask [H, W]; NaNs when it is
    empty. The inverse of `box_mask` for a box-shaped mask."""
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        return np.full(4, np.nan)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], float)


def ior(act, region) -> np.ndarray:
    """Intersection over region of activation: |act n region| / |act|.

    `act` is the activated area of a map, typically `top_class_mask(map)` (multi-Otsu top
    class); a localisation counts as a hit at IoR >= 0.1 in the seed.

    Args:
      act: [..., H, W] bool activated pixels.
      region: [..., H, W] bool ground truth (e.g. `box_mask(gt_box, (H, W))`).
    Returns:
      [...] float64; NaN when the ground truth is empty or nothing is activated.
    """
    act = np.asarray(act) != 0
    region = np.asarray(region) != 0
    _check_pair("act", act, "region", region)
    n_act = act.sum(axis=(-2, -1))
    inter = (act & region).sum(axis=(-2, -1))
    has = region.any(axis=(-2, -1)) & (n_act > 0)
    return np.where(has, inter / np.maximum(n_act, 1), np.nan)


def _box_sets(name: str, boxes) -> np.ndarray:
    """Per-image box collections -> [N, P, 4] padded with NaN rows."""
    if isinstance(boxes, np.ndarray) or hasattr(boxes, "shape"):
        b = np.asarray(boxes, np.float64)
        if b.ndim == 2:
            b = b[:, None, :]
        if b.ndim != 3:
            raise ValueError(f"{name}: expected [N, 4] or [N, P, 4] boxes, got {b.shape}.")
        return _boxes(name, b)
    rows = []
    for item in boxes:
        if item is None:
            rows.append(np.zeros((0, 4)))
            continue
        a = np.asarray(item, np.float64).reshape(-1, 4)
        rows.append(a[~np.isnan(a).any(-1)])
    p = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), p, 4), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return _boxes(name, out)


def box_set_iou(a, b, *, reference: bool = False) -> np.ndarray:
    """Per-image IoU of two box collections, with a rule for missing boxes.

    value_i = max over box pairs of IoU(a_i, b_i) when both images have boxes; 0 when exactly
    one side has a box (an absent box overlaps nothing, e.g. a constant map against a box);
    NaN when neither has one (nothing to compare; skipped by means). With `reference=True`, b
    is the ground truth: an image without a b box is undefined (NaN) whatever a holds, and an
    image with one but no a box scores 0.

    Args:
      a, b: per-image boxes, each an [N, 4] array (NaN row = none), an [N, P, 4] array, or a
        length-N sequence whose items are None, a box [4] or boxes [n, 4].
      reference: treat b as ground truth (see above).
    Returns:
      [N] float64.
    """
    sa, sb = _box_sets("a", a), _box_sets("b", b)
    if len(sa) != len(sb):
        raise ValueError(f"a and b describe {len(sa)} and {len(sb)} images; they must match.")
    has_a = ~np.isnan(sa).any(-1)  # [N, P]
    has_b = ~np.isnan(sb).any(-1)
    ious = box_iou(sa[:, :, None, :], sb[:, None, :, :])  # [N, P, Q]
    ious = np.where(has_a[:, :, None] & has_b[:, None, :], np.nan_to_num(ious, nan=0.0), -1.0)
    best = ious.reshape(len(sa), -1).max(axis=-1) if ious.size else np.zeros(len(sa))
    any_a, any_b = has_a.any(-1), has_b.any(-1)
    out = np.where(any_a & any_b, best, np.where(any_a | any_b, 0.0, np.nan))
    return np.where(any_b, out, np.nan) if reference else out


def agreement_matrix(boxes_by_method: Mapping[str, object], gt=None, *,
                     gt_name: str = "ground truth") -> tuple[list[str], np.ndarray]:
    """Mean box IoU between every pair of methods, with the ground truth as one more row.

    M_jk = mean over images of `box_set_iou(boxes_j, boxes_k)` (images where neither has a
    box are skipped; one missing box counts 0). The diagonal is 1 wherever a method produced a
    box of positive area. The ground-truth row/column (last) compares each method with the
    radiologist boxes (several per image allowed: the best-matching one counts) over the images
    that have ground truth (`reference=True`: a method without a box there scores 0).

    Args:
      boxes_by_method: {method name: per-image boxes} in any form `box_set_iou` accepts, all
        over the same N images (e.g. `boxes_from_saliency(maps)` -> [N, 4]).
      gt: optional per-image ground-truth boxes, same forms.
      gt_name: the name of the ground-truth row.
    Returns:
      (names, matrix): names [M (+1)], matrix [M (+1), M (+1)] float64 (NaN where no image
      had a box on either side).
    """
    names = list(boxes_by_method.keys())
    sets = [boxes_by_method[n] for n in names]
    if gt is not None:
        names.append(gt_name)
        sets.append(gt)
    sets = [_box_sets(n, s) for n, s in zip(names, sets)]
    sizes = {len(s) for s in sets}
    if len(sizes) > 1:
        raise ValueError(f"every method (and the ground truth) must cover the same images; got "
                         f"image counts {sorted(sizes)}.")
    m = len(sets)
    out = np.full((m, m), np.nan)
    for j in range(m):
        for k in range(j, m):
            v = box_set_iou(sets[j], sets[k], reference=gt is not None and k == m - 1)
            out[j, k] = out[k, j] = np.nanmean(v) if np.any(~np.isnan(v)) else np.nan
    return names, out

