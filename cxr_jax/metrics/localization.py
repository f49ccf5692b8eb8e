"""Localisation metrics: pointing game, multi-Otsu boxes, box IoU, IoR, IoBB, EHR, agreement.

Conventions used throughout:

* Maps and masks are `[..., H, W]` (any leading batch axes; `[B, H, W]` in the usual case).
  Masks are boolean (any non-zero value counts as inside).
* A **box** is `(x0, y0, x1, y1)` in pixel-edge coordinates: pixel (row r, column c) covers
  `[c, c+1) x [r, r+1)`, so an integer box holds columns `x0 .. x1-1` and rows `y0 .. y1-1`
  and its area `(x1 - x0)(y1 - y0)` is its pixel count. This is the `Box(label, x0, y0, x1, y1)`
  convention of the dataset readers. A missing box is a row of NaN. Box arrays are `[..., 4]`.
* Per-image results are NaN where the metric is undefined (no ground-truth region); aggregate
  helpers skip NaN.

`pointing_game` and its helpers are pure `jax.numpy` (jit/vmap/shard-friendly). Multi-Otsu
thresholding and connected components are inherently per-image and run in numpy/scikit-image;
the remaining box and heat metrics are vectorised numpy.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.measure import label as connected_components

__all__ = [
    "pointing_game",
    "pointing_game_points",
    "pointing_game_centre",
    "centre_point_saliency",
    "pointing_game_summary",
    "PointingGameSummary",
    "top_class_mask",
    "boxes_from_saliency",
    "box_mask",
    "box_iou",
    "box_set_iou",
    "iobb",
    "ior",
    "effective_heat_ratio",
    "agreement_matrix",
]


# --------------------------------------------------------------------------- pointing game
def _check_pair(name_a: str, a, name_b: str, b) -> None:
    if a.ndim < 2:
        raise ValueError(f"{name_a} must have shape [..., H, W], got {a.shape}.")
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape; resize the "
            f"saliency map to the mask resolution (e.g. jax.image.resize) first.")


def pointing_game_points(points, masks, *, tolerance: float = 15):
    """Pointing-game hits for given points (TorchRay's rule).

    hit = 1 if some mask pixel p satisfies ||p - point||_2 <= tolerance (the closed disk of
    radius `tolerance` around the point meets the mask), 0 otherwise, NaN if the mask is empty.

    Args:
      points: [..., 2] integer (row, column) positions.
      masks: [..., H, W] ground-truth regions (union of the class's boxes/segments).
      tolerance: disk radius in pixels (15 at 224 px in TorchRay; the seed used 25 at 600 px).
    Returns:
      [...] float32 array of 1.0, 0.0 or NaN.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}.")
    masks = jnp.asarray(masks)
    points = jnp.asarray(points)
    if masks.ndim < 2 or points.shape != masks.shape[:-2] + (2,):
        raise ValueError(f"points must be [..., 2] matching masks [..., H, W]; got points "
                         f"{points.shape} and masks {masks.shape}.")
    masks = masks != 0
    h, w = masks.shape[-2:]
    r = points[..., 0, None, None]
    c = points[..., 1, None, None]
    d2 = (jnp.arange(h)[:, None] - r) ** 2 + (jnp.arange(w)[None, :] - c) ** 2
    hit = jnp.any(masks & (d2 <= tolerance ** 2), axis=(-2, -1))
    has_region = jnp.any(masks, axis=(-2, -1))
    return jnp.where(has_region, hit.astype(jnp.float32), jnp.nan)


def pointing_game(saliency, masks, *, tolerance: float = 15):
    """Pointing game: does the map's maximum fall within `tolerance` pixels of the region?

    point = first argmax of the map in row-major order; hit as in `pointing_game_points`
    (distance <= tolerance counts as a hit). Images whose mask is empty give NaN (skipped by
    `pointing_game_summary`), never a hit. A constant map points at pixel (0, 0).

    Args:
      saliency: [..., H, W] maps (raw or normalised; only the argmax matters). A map holding
        NaN points at its first NaN, so sanitise maps first.
      masks: [..., H, W] boolean ground truth at the same resolution.
      tolerance: disk radius in pixels.
    Returns:
      [...] float32: 1.0 hit, 0.0 miss, NaN no ground truth.

    Example:
      >>> sal = jnp.zeros((1, 64, 64)).at[0, 10, 10].set(1.0)
      >>> mask = jnp.zeros((1, 64, 64), bool).at[0, 10, 25].set(True)
      >>> pointing_game(sal, mask, tolerance=15)   # distance 15: a hit
      Array([1.], dtype=float32)
    """
    saliency = jnp.asarray(saliency)
    masks = jnp.asarray(masks)
    _check_pair("saliency", saliency, "masks", masks)
    h, w = saliency.shape[-2:]
    idx = jnp.argmax(saliency.reshape(saliency.shape[:-2] + (h * w,)), axis=-1)
    points = jnp.stack([idx // w, idx % w], axis=-1)
    return pointing_game_points(points, masks, tolerance=tolerance)


def centre_point_saliency(shape: Sequence[int]):
    """A map whose (first) maximum is the image centre (H // 2, W // 2): the centre baseline.

    Args:
      shape: (..., H, W).
    Returns:
      float32 array of `shape`, 1 at the centre pixel and 0 elsewhere.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (..., H, W), got {shape}.")
    h, w = shape[-2:]
    return jnp.zeros(shape, jnp.float32).at[..., h // 2, w // 2].set(1.0)


def pointing_game_centre(masks, *, tolerance: float = 15):
    """Centre-point baseline: the pointing game of a method that always points at (H//2, W//2).

    Args:
      masks: [..., H, W] ground truth.
      tolerance: disk radius in pixels.
    Returns:
      [...] float32 of 1.0, 0.0, NaN (as `pointing_game`).
    """
    masks = jnp.asarray(masks)
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape [..., H, W], got {masks.shape}.")
    h, w = masks.shape[-2:]
    points = jnp.broadcast_to(jnp.array([h // 2, w // 2]), masks.shape[:-2] + (2,))
    return pointing_game_points(points, masks, tolerance=tolerance)


class PointingGameSummary(NamedTuple):
    """Aggregates of pointing-game hits.

    Attributes:
      per_class: [K] hit rate per class over images with ground truth (NaN if none).
      counts: [K] number of images with ground truth per class.
      accuracy: mean of `per_class` over classes that have any ground truth (TorchRay's
        "accuracy": each class weighs the same).
      pooled: all hits / all images with ground truth (each image weighs the same).
      names: class names when the hits came as a mapping, else None.
    """

    per_class: np.ndarray
    counts: np.ndarray
    accuracy: float
    pooled: float
    names: tuple[str, ...] | None


def pointing_game_summary(hits) -> PointingGameSummary:
    """Per-class hit rates, class-mean accuracy and pooled rate of pointing-game results.

    per_class_k = sum_i h_ik / n_k over the n_k non-NaN entries of class k;
    accuracy = mean_k per_class_k over classes with n_k > 0; pooled = sum h / sum n.

    Args:
      hits: [B, K] array of 1/0/NaN (one column per class), or a sequence of K 1-D arrays, or a
        mapping {class name: 1-D array} (classes may have different numbers of images).
    Returns:
      PointingGameSummary.
    """
    names = None
    if isinstance(hits, Mapping):
        names = tuple(hits.keys())
        columns = [np.asarray(v, np.float64).reshape(-1) for v in hits.values()]
    elif isinstance(hits, (list, tuple)):
        columns = [np.asarray(v, np.float64).reshape(-1) for v in hits]
    else:
        arr = np.asarray(hits, np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"hits must be [B, K], a list of 1-D arrays or a mapping; got an "
                             f"array of shape {arr.shape}.")
        columns = list(arr.T)
    for col in columns:
        ok = col[~np.isnan(col)]
        if not np.all((ok == 0) | (ok == 1)):
            raise ValueError("pointing-game hits must be 1, 0 or NaN.")
    counts = np.array([np.sum(~np.isnan(c)) for c in columns], np.int64)
    totals = np.array([np.nansum(c) for c in columns], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    have = counts > 0
    accuracy = float(per_class[have].mean()) if have.any() else float("nan")
    pooled = float(totals.sum() / counts.sum()) if counts.sum() > 0 else float("nan")
    return PointingGameSummary(per_class, counts, accuracy, pooled, names)


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


# --------------------------------------------------------------------------- effective heat
def effective_heat_ratio(saliency, region, *, base_threshold: float = 0.1,
                         quantiles=None, normalize: str | None = "minmax",
                         weight_by_heat: bool = True) -> np.ndarray:
    """Effective Heat Ratio (CheXplain-IBA): how concentrated the strongest heat is in the box.

    With h the map normalised to [0, 1] and heat below `base_threshold` set to zero, for each
    q in `quantiles` (default 0, 0.1, ..., 1):
      t_q = min(quantile_q(h over pixels with h >= base_threshold), 0.99 max h)
      ratio_q = sum_{h >= t_q, in region} h / #{h >= t_q}        (weight_by_heat=True)
              = #{h >= t_q, in region} / #{h >= t_q}              (weight_by_heat=False)
    EHR = trapezoid area of ratio_q over q. A map equal to a binary box mask scores exactly 1.
    This follows the reference's `EffectiveHeatRatios` (weight_by_heat=True is its default; the
    reference adds 1e-8 to the denominator, unnecessary here because the maximum pixel always
    passes the threshold). Maps with no heat left (constant maps after min-max, all-zero maps)
    score 0: none of their heat lies in the box.

    Args:
      saliency: [..., H, W] maps.
      region: [..., H, W] bool ground truth (e.g. `box_mask(box, (H, W))`).
      base_threshold: heat below it is ignored (0.1 in the reference).
      quantiles: 1-D increasing quantile levels in [0, 1]; default `np.linspace(0, 1, 11)`.
      normalize: "minmax" (per map, (s - min)/(max - min), constant -> 0), "max" (s / max for
        non-negative maps) or None (maps already in [0, 1]).
      weight_by_heat: weigh in-box pixels by their heat (reference default) or count them.
    Returns:
      [...] float64; NaN where the region is empty.
    """
    s = np.asarray(saliency, np.float64)
    reg = np.asarray(region) != 0
    _check_pair("saliency", s, "region", reg)
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or inf; clean the maps first.")
    qs = np.linspace(0.0, 1.0, 11) if quantiles is None else np.asarray(quantiles, np.float64)
    if qs.ndim != 1 or qs.size < 2 or np.any(np.diff(qs) <= 0) or qs[0] < 0 or qs[-1] > 1:
        raise ValueError("quantiles must be a 1-D increasing sequence of at least 2 levels in "
                         "[0, 1].")
    lead = s.shape[:-2]
    s = s.reshape(-1, s.shape[-2] * s.shape[-1])
    reg = reg.reshape(s.shape)
    lo = s.min(-1, keepdims=True)
    hi = s.max(-1, keepdims=True)
    if normalize == "minmax":
        span = hi - lo
        s = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)
    elif normalize == "max":
        if np.any(lo < 0):
            raise ValueError('normalize="max" needs non-negative maps; use "minmax".')
        s = np.where(hi > 0, s / np.where(hi > 0, hi, 1.0), 0.0)
    elif normalize is None:
        if np.any(lo < 0) or np.any(hi > 1):
            raise ValueError('with normalize=None maps must lie in [0, 1]; pass '
                             'normalize="minmax".')
    else:
        raise ValueError(f'normalize must be "minmax", "max" or None, got {normalize!r}.')

    passing = s >= base_threshold
    heat = np.where(passing, s, 0.0)
    has_heat = passing.any(-1)
    # Quantiles of the passing pixels of every map at once (numpy's default "linear" rule):
    # sort with the non-passing pixels last, interpolate at q * (n_valid - 1).
    ordered = np.sort(np.where(passing, s, np.inf), axis=-1)
    ordered[~has_heat] = 0.0  # maps without heat: placeholder values, scored 0 below
    n_valid = np.maximum(passing.sum(-1), 1)  # [N]
    pos = qs[:, None] * (n_valid - 1)  # [Q, N]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_valid - 1)
    rows = np.arange(len(s))[None, :]
    q_lo, q_hi = ordered[rows, lo], ordered[rows, hi]
    quant = np.where(hi > lo, q_lo + (pos - lo) * (q_hi - q_lo), q_lo)
    t = np.minimum(quant, 0.99 * heat.max(-1))  # [Q, N]
    selected = heat[None] >= t[..., None]  # [Q, N, HW]
    count = selected.sum(-1)
    weight = heat if weight_by_heat else np.ones_like(heat)
    in_box = np.where(selected & reg[None], weight[None], 0.0).sum(-1)
    ratio = in_box / np.maximum(count, 1)
    ehr = np.trapezoid(ratio, qs, axis=0)
    ehr = np.where(has_heat, ehr, 0.0)
    ehr = np.where(reg.any(-1), ehr, np.nan)
    return ehr.reshape(lead)
