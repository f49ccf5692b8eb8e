"""Network dissection: which units of a layer detect which concepts (Bau et al. 2017).

What it computes. For a layer with activations A [B, h, w, U] (U units, i.e. channels):

  T_k       = the level exceeded by a fraction `quantile` (default 0.005) of A_k over all
              positions of all images (the threshold is taken on the raw h x w maps, before any
              upsampling, as NetDissect does);
  M_k       = Up(A_k) > T_k, Up = bilinear resize to `resolution` x `resolution` (half-pixel
              centres, edges clamped: PyTorch's `interpolate(align_corners=False)`, the same
              convention as `cxr_jax.attribution.postprocess.upsample`);
  L_c       = concept mask c resized to `resolution` x `resolution` (default "area": a pixel is
              in the concept when at least half of its footprint in the original mask is;
              "any" and "nearest" are options);
  IoU_{k,c} = sum over images |M_k & L_c| / sum over images |M_k | L_c|   (0 where the union is
              empty);
  label_k   = argmax_c IoU_{k,c} if that IoU > `iou_threshold` (default 0.04), else -1;
  score_k   = max_c IoU_{k,c}.

Concepts may overlap (a pixel can be lung and opacity); each concept is scored on its own mask.

Resolution. Masks and unit maps are compared at `resolution` x `resolution` (default 56, the
resolution of the CXR reference), whatever the image and layer sizes.

Two streaming passes, memory independent of the dataset size:
  pass 1 runs the network up to the layer on every batch and updates a per-unit histogram
    sketch (below) from which the thresholds are read;
  pass 2 runs it again, builds the unit masks with those thresholds and adds up, per batch, the
    intersections |M_k & L_c| [U, C] and the areas |M_k| [U] and |L_c| [C] (unions follow:
    |M_k| + |L_c| - |M_k & L_c|).
Both per-batch steps are jitted once (a ragged batch is padded to the first batch's size and its
padding masked out). Every count is a sum, so a batch sharded over the devices of a `mesh`
reduces inside the jitted step, and separate runs with equal thresholds add up (`merge`).
Device counters are int32 per batch (pass 2) or flushed to host int64 before they could overflow
(pass 1); the host totals are int64.

Memory: the sketch holds U x `bins` int32 counts (U = 1024, bins = 2048: 8 MiB); one batch of
pass 2 holds its upsampled maps and unit masks, up to 2 x B x resolution^2 x U float32 (B = 32,
56^2, U = 1024: 822 MiB, split over the devices of the mesh), plus the network's activations.
Nothing grows with the number of batches.

The threshold sketch (exact thresholds need every activation, so we bound the error instead).
Per unit, a histogram of `bins` bins of width w = 2^e on the dyadic grid: bin i holds the values
v with floor(v / w) = s + i. The running minimum and maximum decide (e, s): e is the smallest
exponent >= the previous one for which [min, max] spans at most `bins` grid bins and for which
w > 2^-23 max(|min|, |max|), so that grid indices stay below 2^23 in magnitude and floor(v / w)
is exact in float32 (w is a power of two, and the grid edges are float32 numbers). When a batch
widens the range, the existing counts are re-binned exactly: a bin of width w lies inside one
bin of width 2^d w (floor(floor(x) / 2^d) = floor(x / 2^d)). Hence the final histogram is the
exact histogram of all values on the grid the final range implies, whatever the batching, order
or sharding, and

  w < max(2 (max - min) / (bins - 2), 2^-22 max(|min|, |max|))      (and w >= 2^-100).

Reading the threshold: with n values per unit, the target is np.quantile(A_k, 1 - q) (linear
interpolation) at 0-based sorted position p = (1 - q)(n - 1); the bin b holding the value x_j of
sorted position j = floor(p) is found from the cumulative counts, and T_k is interpolated by rank
inside it (values taken as spread evenly over the bin), then clipped to [min, max]. Bound: T_k
and x_j lie in the same bin, so

  |T_k - x_j| <= w   and  at most (count of bin b) values lie between x_j and T_k;

np.quantile's value lies in [x_j, x_{j+1}], so |T_k - np.quantile| <= w + (x_{j+1} - x_j). The
bin width of every unit is returned as `threshold_errors`. A unit whose top values are one
repeated value (e.g. a ReLU unit that is zero at more than 1 - q of the positions) has its exact
threshold at that value; ours then lies within w above it, leaving out of M_k at most the values
of that one bin.

Baselines (`dissect_baseline`): the same IoUs for (a) the units of the same layer after
re-initialising every stage up to and including it with the model's own initialisers and another
key (parameters and batch-norm statistics: what a freshly initialised network computes), and (b)
the real units against spatially shuffled concept masks: each image's masks rolled circularly by
a random offset of between a quarter and three quarters of the side along each axis ("roll",
image i uses key fold_in(key, i), so the result does not depend on the batching), or the masks of
the next image of the batch ("permute"; CXRs are roughly registered, so this tests whether a unit
follows this image's concept rather than its usual place). They show what an IoU of 0.04 means
for this layer and data.

Differences from other implementations:
  * NetDissect-Lite (Zhou et al.) keeps the feature maps of the whole dataset, in memory or in a
    memory-mapped file, to take exact quantiles; the CXR code (CheXplain-Dissection) likewise
    keeps the maps, in a float64 memmap, and takes the top 1% threshold from 100 images. We
    stream twice with a bounded-error sketch over all images, in bounded memory.
  * The CXR code merges overlapping concept masks with a maximum, so each pixel keeps one label;
    we keep overlapping concepts separate, each with its own mask and IoU.

Example:
  >>> ph = phantoms.generate(64, image_size=224)
  >>> batches = [(ph.images[i:i + 16], ph.concepts[i:i + 16]) for i in range(0, 64, 16)]
  >>> d = dissect(model, variables, batches, layer="layer4", concept_names=ph.concept_names)
  >>> d.label_names[:4], d.concept_counts()

References:
  Bau, Zhou, Khosla, Oliva, Torralba. Network Dissection: Quantifying Interpretability of Deep
  Visual Representations. CVPR 2017.
  Khakzar et al. Towards Semantic Interpretation of Thoracic Disease and COVID-19 Diagnosis
  Models. MICCAI 2021.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "Baselines",
    "Counts",
    "Dissection",
    "MASK_RESIZES",
    "SHUFFLES",
    "Sketch",
    "count",
    "dissect",
    "dissect_baseline",
    "dissect_features",
    "iou_from_counts",
    "merge",
    "reinitialize",
    "resize_masks",
    "shuffle_masks",
    "sketch_init",
    "sketch_threshold",
    "sketch_update",
    "unit_masks",
]

Array = jax.Array

MASK_RESIZES = ("area", "any", "nearest")
SHUFFLES = ("roll", "permute")

# Device counters are int32: pass 1 moves its histogram to the host (int64) before the values
# counted since the last move could exceed this (tests lower it to exercise the move).
_MAX_COUNT = 2**31 - 1
# Bin-width exponents are kept in [_E_MIN, _E_MAX] so that 2^-e is a normal float32.
_E_MIN, _E_MAX = -100, 100
# float32 sums of 0/1 values are exact below 2^24.
_EXACT_F32 = 2**24


# =========================================================================== quantile sketch
class Sketch(NamedTuple):
    """Per-unit histograms on a dyadic grid (see the module docstring).

    Attributes:
      counts: [U, bins] int (int32 on the device, int64 once merged on the host).
      exponent: [U] int32; the bin width is 2**exponent.
      start: [U] int32; bin i of unit k covers [(start_k + i) w_k, (start_k + i + 1) w_k).
      lo, hi: [U] float32 running minimum and maximum (+inf / -inf before any value).
    """

    counts: Any
    exponent: Any
    start: Any
    lo: Any
    hi: Any


def sketch_init(units: int, bins: int = 2048) -> Sketch:
    """An empty sketch for `units` units with `bins` bins each (bins >= 8)."""
    if not isinstance(bins, (int, np.integer)) or bins < 8:
        raise ValueError(f"bins must be an int >= 8, got {bins!r}.")
    units = int(units)
    return Sketch(counts=jnp.zeros((units, int(bins)), jnp.int32),
                  exponent=jnp.full((units,), _E_MIN, jnp.int32),
                  start=jnp.zeros((units,), jnp.int32),
                  lo=jnp.full((units,), jnp.inf, jnp.float32),
                  hi=jnp.full((units,), -jnp.inf, jnp.float32))


def _pow2(k: Array) -> Array:
    """2.0 ** k as float32, exactly, for int32 k in [-126, 127] (built from the exponent bits)."""
    bits = (k.astype(jnp.int32) + 127) << 23
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _grid_index(v: Array, e: Array) -> Array:
    """floor(v / 2^e), exact (a power-of-two scaling, then floor)."""
    return jnp.floor(v * _pow2(-e))


def _exponent(lo: Array, hi: Array, e_old: Array, bins: int) -> Array:
    """The smallest e >= e_old (and >= the float32 floor) whose grid puts [lo, hi] in `bins`."""
    _, ex = jnp.frexp(jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    base = jnp.maximum(e_old, ex.astype(jnp.int32) - 23)
    span = hi - lo
    # A width >= span / (bins - 2) always fits; guess the smallest power of two near it and let
    # an exact test choose among neighbours (log2 may round either way).
    guess = jnp.ceil(jnp.log2(jnp.where(span > 0, span, 1.0) / (bins - 2)))
    guess = jnp.where(span > 0, jnp.clip(guess, _E_MIN - 4, _E_MAX + 4), _E_MIN).astype(jnp.int32)

    def fits(e):
        return _grid_index(hi, e) - _grid_index(lo, e) <= bins - 1

    cands = [jnp.clip(jnp.maximum(guess + k, base), _E_MIN, _E_MAX) for k in (-2, -1, 0, 1, 2)]
    e = cands[-1]
    for c in reversed(cands[:-1]):
        e = jnp.where(fits(c), c, e)
    return e


def _rebin_index(xp, e_old, s_old, e_new, s_new, bins):
    """[U, bins] index of each old bin in the new grid: floor division by 2^(e_new - e_old)."""
    d = xp.clip(e_new - e_old, 0, 30)[:, None]
    g = s_old[:, None] + xp.arange(bins, dtype=s_old.dtype)[None, :]
    if xp is jnp:
        g = jax.lax.shift_right_arithmetic(g, d.astype(g.dtype))
    else:
        g = np.right_shift(g, d.astype(g.dtype))
    return g - s_new[:, None]


def sketch_update(sketch: Sketch, values: Array, valid: Array | None = None) -> Sketch:
    """Adds values [N, U] (row n counted where valid[n]) to the sketch; pure and jittable.

    The range, bin width and grid start of each unit are updated first (see the module
    docstring), the counts re-binned exactly, then the new values counted. An update without
    valid values returns the sketch unchanged.
    """
    values = jnp.asarray(values, jnp.float32)
    if values.ndim != 2 or values.shape[1] != sketch.counts.shape[0]:
        raise ValueError(f"values must be [N, U={sketch.counts.shape[0]}], got {values.shape}.")
    units, bins = sketch.counts.shape
    ok = (jnp.ones(values.shape[:1], bool) if valid is None
          else jnp.asarray(valid).astype(bool).reshape(-1))
    lo = jnp.minimum(sketch.lo, jnp.min(jnp.where(ok[:, None], values, jnp.inf), axis=0))
    hi = jnp.maximum(sketch.hi, jnp.max(jnp.where(ok[:, None], values, -jnp.inf), axis=0))
    e = _exponent(lo, hi, sketch.exponent, bins)
    s = _grid_index(lo, e).astype(jnp.int32)
    # Re-bin the old counts onto the new grid (identity when the grid did not change).
    idx = _rebin_index(jnp, sketch.exponent, sketch.start, e, s, bins)
    flat = jnp.where((idx >= 0) & (idx < bins), idx + jnp.arange(units)[:, None] * bins,
                     units * bins)  # out-of-range only for an empty sketch: dropped
    counts = jnp.zeros((units * bins,), jnp.int32).at[flat.reshape(-1)].add(
        sketch.counts.reshape(-1), mode="drop")
    # Count the new values.
    g = jnp.clip(_grid_index(values, e[None, :]) - s[None, :], 0, bins - 1).astype(jnp.int32)
    flat = g + jnp.arange(units, dtype=jnp.int32)[None, :] * bins
    weight = jnp.broadcast_to(ok[:, None], values.shape).astype(jnp.int32)
    counts = counts.at[flat.reshape(-1)].add(weight.reshape(-1), mode="drop")
    new = Sketch(counts.reshape(units, bins), e, s, lo, hi)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok.any(), a, b), new, sketch)


class _HostSketch:
    """Sums device sketches into int64 host counts, re-binning to the newest grid."""

    def __init__(self):
        self.sketch: Sketch | None = None

    def add(self, device: Sketch) -> None:
        part = Sketch(*(np.asarray(_host(a)) for a in device))
        counts = part.counts.astype(np.int64)
        if self.sketch is not None:
            old = self.sketch
            units, bins = counts.shape
            idx = _rebin_index(np, old.exponent.astype(np.int64), old.start.astype(np.int64),
                               part.exponent.astype(np.int64), part.start.astype(np.int64),
                               bins)
            nz = old.counts > 0
            if np.any((idx[nz] < 0) | (idx[nz] >= bins)):
                raise AssertionError("sketch grids do not nest; this is a bug.")
            flat = idx + np.arange(units)[:, None] * bins
            np.add.at(counts.reshape(-1), flat[nz], old.counts[nz])
        self.sketch = part._replace(counts=counts)


def sketch_threshold(sketch: Sketch, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit thresholds exceeded by a fraction `top` of the values, with their error bound.

    Args:
      sketch: a sketch (device or host counts).
      top: the upper-tail fraction q in (0, 1); the target is np.quantile(values, 1 - q).
    Returns:
      (thresholds [U] float32, bin widths [U] float64): each threshold lies within one bin width
      of the sorted value at position floor((1 - q)(n - 1)) (module docstring).
    """
    counts = np.asarray(_host(sketch.counts)).astype(np.int64)
    exponent = np.asarray(_host(sketch.exponent)).astype(np.int64)
    start = np.asarray(_host(sketch.start)).astype(np.float64)
    lo = np.asarray(_host(sketch.lo), np.float32)
    hi = np.asarray(_host(sketch.hi), np.float32)
    total = counts.sum(axis=1)
    if np.any(total == 0):
        raise ValueError("the sketch holds no values; add data before reading thresholds.")
    p = (1.0 - float(top)) * (total - 1)
    j = np.floor(p)
    cum = np.cumsum(counts, axis=1)
    b = np.argmax(cum > j[:, None], axis=1)
    rows = np.arange(len(b))
    c = counts[rows, b]
    before = cum[rows, b] - c
    width = np.ldexp(1.0, exponent)
    left = (start + b) * width
    frac = np.clip((p - before + 0.5) / c, 0.0, 1.0)
    t = (left + width * frac).astype(np.float32)
    return np.clip(t, lo, hi).astype(np.float32), width


# =========================================================================== counting core
class Counts(NamedTuple):
    """Per-batch sums: intersections [U, C] |M_k & L_c|, unit_areas [U] |M_k|, concept_areas [C]
    |L_c| (int32 on the device per batch)."""

    intersections: Any
    unit_areas: Any
    concept_areas: Any


def unit_masks(acts: Array, thresholds: Array, resolution: int) -> Array:
    """M = bilinear Up(acts) > thresholds: acts [B, h, w, U] -> [B, R, R, U] bool."""
    acts = jnp.asarray(acts, jnp.float32)
    b, h, w, u = acts.shape
    r = int(resolution)
    if (h, w) != (r, r):
        acts = jax.image.resize(acts, (b, r, r, u), method="bilinear", antialias=False)
    return acts > jnp.asarray(thresholds, jnp.float32)


@functools.lru_cache(maxsize=32)
def _overlap(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] fraction of output cell i's footprint [i, i+1) n_in / n_out that input
    pixel j covers (rows sum to 1)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out
    j = np.arange(n_in, dtype=np.float64)[None, :]
    length = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)
    m = np.clip(length, 0.0, None) / (n_in / n_out)
    m[m < 1e-9] = 0.0
    m.setflags(write=False)
    return m


def resize_masks(masks: Array, resolution: int, method: str = "area") -> Array:
    """Concept masks [B, C, H, W] bool -> [B, C, R, R] bool.

    Methods: "area" (a pixel is in the concept when at least half of its footprint is; exact
    box overlaps, any size ratio), "any" (when any of its footprint is), "nearest" (the mask
    pixel under its centre). Masks already at R x R are returned unchanged.
    """
    if method not in MASK_RESIZES:
        raise ValueError(f"mask_resize must be one of {MASK_RESIZES}, got {method!r}.")
    masks = jnp.asarray(masks)
    hh, ww = masks.shape[-2:]
    r = int(resolution)
    if (hh, ww) == (r, r):
        return masks.astype(bool)
    if method == "nearest":
        iy = np.minimum(((np.arange(r) + 0.5) * hh / r).astype(int), hh - 1)
        ix = np.minimum(((np.arange(r) + 0.5) * ww / r).astype(int), ww - 1)
        return masks[..., iy[:, None], ix[None, :]].astype(bool)
    my, mx = _overlap(hh, r), _overlap(ww, r)
    if method == "any":
        my, mx = (my > 0).astype(np.float32), (mx > 0).astype(np.float32)
    f = jnp.einsum("yY,...YX,xX->...yx", jnp.asarray(my, jnp.float32), masks.astype(jnp.float32),
                   jnp.asarray(mx, jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return f >= 0.5 - 1e-4 if method == "area" else f > 0.5


def count(units: Array, concepts: Array, valid: Array | None = None) -> Counts:
    """Intersections and areas of unit masks [B, R, R, U] and concept masks [B, C, R, R] (bool),
    over the images where valid [B] (all by default). Exact: float32 sums of 0/1 values, checked
    to stay below 2^24 per batch."""
    b, r1, r2, _ = units.shape
    if b * r1 * r2 >= _EXACT_F32:
        raise ValueError(f"A batch of {b} images at {r1}x{r2} has too many pixels to count "
                         f"exactly in float32; use batches of fewer than "
                         f"{_EXACT_F32 // (r1 * r2)} images.")
    m = units.astype(jnp.float32)
    if valid is not None:
        m = m * jnp.asarray(valid, jnp.float32)[:, None, None, None]
    lab = concepts.astype(jnp.float32)
    if valid is not None:
        lab = lab * jnp.asarray(valid, jnp.float32)[:, None, None, None]
    inter = jnp.einsum("byxu,bcyx->uc", m, lab, preferred_element_type=jnp.float32)
    return Counts(inter.astype(jnp.int32), m.sum((0, 1, 2)).astype(jnp.int32),
                  lab.sum((0, 2, 3)).astype(jnp.int32))


def shuffle_masks(masks: Array, key: Array, offset: Array, valid: Array | None = None,
                  kind: str = "roll") -> Array:
    """Spatially shuffled concept masks [B, C, R, R] for the chance baseline.

    "roll": image offset + i is rolled circularly by (dy, dx), each drawn uniformly from
    [R // 4, R - R // 4] with key fold_in(key, offset + i): the same for any batching.
    "permute": image i takes the masks of the next valid image of the batch (cyclically; an
    image alone in its batch keeps its own masks).
    """
    if kind not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {kind!r}.")
    b, _, r1, r2 = masks.shape
    if kind == "permute":
        n = jnp.sum(jnp.ones((b,), jnp.int32) if valid is None else
                    jnp.asarray(valid).astype(jnp.int32))
        i = jnp.arange(b)
        src = jnp.where(i < n, (i + 1) % jnp.maximum(n, 1), i)
        return masks[src]

    def one(m, i):
        ky, kx = jax.random.split(jax.random.fold_in(key, i))
        dy = jax.random.randint(ky, (), r1 // 4, r1 - r1 // 4 + 1)
        dx = jax.random.randint(kx, (), r2 // 4, r2 - r2 // 4 + 1)
        return jnp.roll(m, (dy, dx), axis=(1, 2))

    return jax.vmap(one)(masks, jnp.asarray(offset, jnp.int32) + jnp.arange(b, dtype=jnp.int32))


def iou_from_counts(intersections, unit_areas, concept_areas, iou_threshold: float = 0.04):
    """(iou [U, C] float64, labels [U] int64 (-1 unlabelled), scores [U] float64) from counts."""
    inter = np.asarray(intersections, np.int64)
    union = np.asarray(unit_areas, np.int64)[:, None] + np.asarray(concept_areas, np.int64)[None]
    union = union - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    if iou.shape[1] == 0:
        return iou, np.full(iou.shape[0], -1, np.int64), np.zeros(iou.shape[0])
    best = np.argmax(iou, axis=1)
    scores = iou[np.arange(len(best)), best]
    labels = np.where(scores > iou_threshold, best, -1).astype(np.int64)
    return iou, labels, scores


# =========================================================================== results
class Dissection(NamedTuple):
    """The dissection of one layer.

    Attributes:
      thresholds: [U] float32 T_k (the values the masks were built with).
      iou: [U, C] float64 IoU_{k,c}.
      labels: [U] int64 concept index of each unit, -1 where no IoU exceeds the threshold.
      scores: [U] float64 max_c IoU_{k,c}.
      intersections: [U, C] int64 sum of |M_k & L_c|.
      unions: [U, C] int64 sum of |M_k | L_c|.
      unit_areas: [U] int64 sum of |M_k|; concept_areas: [C] int64 sum of |L_c|.
      threshold_errors: [U] float64 bin width w_k: |T_k - x_j| <= w_k (module docstring); 0 for
        thresholds given by the caller.
      num_images: images counted.
      concept_names: names of the C concepts, or None.
      layer: the dissected stage, or None.
      settings: quantile, iou_threshold, resolution, mask_resize, bins.
    """

    thresholds: np.ndarray
    iou: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    intersections: np.ndarray
    unions: np.ndarray
    unit_areas: np.ndarray
    concept_areas: np.ndarray
    threshold_errors: np.ndarray
    num_images: int
    concept_names: tuple[str, ...] | None
    layer: str | None
    settings: dict

    @property
    def label_names(self) -> tuple[str | None, ...]:
        """The concept name of each unit's label (None where unlabelled)."""
        if self.concept_names is None:
            raise ValueError("this dissection has no concept names; pass concept_names=.")
        return tuple(None if k < 0 else self.concept_names[k] for k in self.labels)

    def concept_counts(self) -> np.ndarray:
        """[C] int64 number of units labelled with each concept."""
        lab = self.labels[self.labels >= 0]
        return np.bincount(lab, minlength=self.iou.shape[1]).astype(np.int64)

    def units_above(self) -> np.ndarray:
        """[C] int64 number of units whose IoU with each concept exceeds iou_threshold (a unit
        may count for several concepts)."""
        return (self.iou > self.settings["iou_threshold"]).sum(axis=0).astype(np.int64)


def _finish(thresholds, errors, inter, ua, ca, num_images, names, layer, settings) -> Dissection:
    iou, labels, scores = iou_from_counts(inter, ua, ca, settings["iou_threshold"])
    inter = np.asarray(inter, np.int64)
    ua, ca = np.asarray(ua, np.int64), np.asarray(ca, np.int64)
    return Dissection(
        thresholds=np.asarray(thresholds, np.float32), iou=iou, labels=labels, scores=scores,
        intersections=inter, unions=ua[:, None] + ca[None, :] - inter, unit_areas=ua,
        concept_areas=ca, threshold_errors=np.asarray(errors, np.float64),
        num_images=int(num_images), concept_names=names, layer=layer, settings=dict(settings))


def merge(*parts: Dissection) -> Dissection:
    """Adds the counts of dissections made with the same thresholds (e.g. of disjoint data
    shards, each run with `thresholds=` of a shared first pass) and rescores them."""
    if not parts:
        raise ValueError("merge needs at least one Dissection.")
    first = parts[0]
    for d in parts[1:]:
        if not np.array_equal(d.thresholds, first.thresholds):
            raise ValueError("merge needs dissections made with the same thresholds; run each "
                             "shard with thresholds= from one first pass.")
        if d.intersections.shape != first.intersections.shape:
            raise ValueError(f"cannot merge dissections of shapes {first.intersections.shape} "
                             f"and {d.intersections.shape} (units x concepts).")
        if d.settings != first.settings:
            raise ValueError(f"cannot merge dissections with different settings: "
                             f"{first.settings} and {d.settings}.")
    return _finish(first.thresholds, np.max([d.threshold_errors for d in parts], axis=0),
                   sum(d.intersections for d in parts), sum(d.unit_areas for d in parts),
                   sum(d.concept_areas for d in parts), sum(d.num_images for d in parts),
                   first.concept_names, first.layer, first.settings)


class Baselines(NamedTuple):
    """A dissection beside its two chance baselines.

    Attributes:
      real: the trained units against the true masks.
      random_weights: the units of the same layer with every stage up to it re-initialised.
      shuffled_masks: the trained units (same thresholds) against spatially shuffled masks.
      units_above: {"real", "random_weights", "shuffled_masks"}: [C] int64 number of units whose
        IoU with each concept exceeds iou_threshold.
    """

    real: Dissection
    random_weights: Dissection
    shuffled_masks: Dissection
    units_above: dict


# =========================================================================== data plumbing
def _host(a):
    """A numpy copy of a (possibly replicated, multi-process) array."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(a.addressable_data(0))
    return np.asarray(a)


def _source(batches) -> Callable[[], Iterable]:
    """A function giving a fresh iterable of batches on each call."""
    if hasattr(batches, "images") and hasattr(batches, "concepts"):
        return lambda: [batches]  # one PhantomBatch-like object
    if callable(batches):
        return batches
    if iter(batches) is batches:
        raise ValueError("batches is a one-shot iterator, but dissection reads the data twice "
                         "(thresholds, then counts); pass a list of batches or a function that "
                         "returns a fresh iterable.")
    return lambda: batches


def _parse(batch, i: int):
    names = None
    if hasattr(batch, "images") and hasattr(batch, "concepts"):
        images, masks = batch.images, batch.concepts
        names = getattr(batch, "concept_names", None)
    else:
        try:
            images, masks = batch
        except (TypeError, ValueError):
            raise ValueError(f"batch {i}: expected a pair (images [B, H, W, ch], concept masks "
                             f"[B, C, H, W] bool) or an object with .images and .concepts, got "
                             f"{type(batch).__name__}.") from None
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4:
        raise ValueError(f"batch {i}: images must be [B, H, W, channels], got shape "
                         f"{images.shape}.")
    if masks.ndim != 4:
        raise ValueError(f"batch {i}: concept masks must be [B, C, H, W] bool, got shape "
                         f"{masks.shape}.")
    if masks.dtype != np.bool_:
        raise ValueError(f"batch {i}: concept masks must be boolean, got dtype {masks.dtype}; "
                         f"binarise them first, e.g. masks > 0.5.")
    if masks.shape[0] != images.shape[0]:
        raise ValueError(f"batch {i}: {images.shape[0]} images but {masks.shape[0]} sets of "
                         f"concept masks; give one [C, H, W] set per image.")
    if masks.shape[2:] != images.shape[1:3]:
        raise ValueError(f"batch {i}: concept masks are {masks.shape[2]}x{masks.shape[3]} but "
                         f"the images are {images.shape[1]}x{images.shape[2]}; give the masks "
                         f"at the images' resolution (resize them with the images).")
    return images.astype(np.float32, copy=False), masks, names


class _Data:
    """Validated, padded, placed batches of a fixed size: one compiled shape per pass."""

    def __init__(self, batches, mesh: Mesh | None):
        self.source = _source(batches)
        self.mesh = mesh
        n_local = 1 if mesh is None else len(mesh.local_devices)
        self.n_local = n_local
        self.scale = 1 if mesh is None else mesh.size // n_local  # processes in the mesh
        it = iter(self.source())
        first = None
        for i, batch in enumerate(it):
            images, masks, names = _parse(batch, i)
            if len(images):
                first = (images, masks, names)
                break
        if first is None:
            raise ValueError("no images: batches yielded no batch with at least one image.")
        images, masks, names = first
        self.image_shape = images.shape[1:]
        self.num_concepts = masks.shape[1]
        self.names = names
        self.batch = -(-len(images) // n_local) * n_local  # rows per step on this process
        if mesh is None:
            self._data = self.rep = None
        else:
            self._data = NamedSharding(mesh, P(tuple(mesh.axis_names)))
            self.rep = NamedSharding(mesh, P())

    def example(self) -> np.ndarray:
        return np.zeros((self.batch,) + self.image_shape, np.float32)

    def abstract(self):
        return jax.ShapeDtypeStruct((self.batch * self.scale,) + self.image_shape, jnp.float32)

    def replicate(self, tree):
        return tree if self.mesh is None else jax.device_put(tree, self.rep)

    def _put(self, a: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(a)
        return jax.make_array_from_process_local_data(self._data, a)

    def chunks(self, with_masks: bool) -> Iterator[tuple]:
        """(images, masks or None, valid, n_valid) per step, padded to `self.batch` rows."""
        for i, batch in enumerate(self.source()):
            images, masks, _ = _parse(batch, i)
            if images.shape[1:] != self.image_shape:
                raise ValueError(f"batch {i}: images are {'x'.join(map(str, images.shape[1:]))}"
                                 f" but the first batch's were "
                                 f"{'x'.join(map(str, self.image_shape))}; use one image size "
                                 f"and channel count throughout.")
            if masks.shape[1] != self.num_concepts:
                raise ValueError(f"batch {i} has {masks.shape[1]} concepts but the first batch "
                                 f"had {self.num_concepts}; every batch must carry the same "
                                 f"concepts in the same order.")
            for lo in range(0, len(images), self.batch):
                x, m = images[lo:lo + self.batch], masks[lo:lo + self.batch]
                n = len(x)
                pad = self.batch - n
                valid = np.arange(self.batch) < n
                if pad:
                    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                    m = np.concatenate([m, np.zeros((pad,) + m.shape[1:], bool)])
                yield (self._put(x), self._put(m) if with_masks else None, self._put(valid), n)


# =========================================================================== driver
def _check_settings(quantile, iou_threshold, resolution, bins, mask_resize):
    if not (isinstance(quantile, (float, int, np.floating)) and 0.0 < float(quantile) < 1.0):
        raise ValueError(f"quantile must be in (0, 1) (the top fraction of activations that "
                         f"defines a unit's mask, e.g. 0.005), got {quantile!r}.")
    if not (isinstance(iou_threshold, (float, int, np.floating))
            and 0.0 <= float(iou_threshold) < 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}.")
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive int (pixels per side), got "
                         f"{resolution!r}.")
    if not isinstance(bins, (int, np.integer)) or bins < 8:
        raise ValueError(f"bins must be an int >= 8, got {bins!r}.")
    if mask_resize not in MASK_RESIZES:
        raise ValueError(f"mask_resize must be one of {MASK_RESIZES}, got {mask_resize!r}.")


def _dissect(features, params, data: _Data, *, quantile, iou_threshold, resolution,
             concept_names, bins, mask_resize, thresholds, layer, shuffle=None,
             shuffle_key=None, spatial_hint=None):
    """Both passes over `data`; returns (Dissection, shuffled-mask Dissection or None)."""
    names = concept_names if concept_names is not None else data.names
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != data.num_concepts:
            raise ValueError(f"{len(names)} concept names for masks with {data.num_concepts} "
                             f"concepts.")
    shape = jax.eval_shape(features, params, data.abstract()).shape
    if len(shape) != 4:
        hint = spatial_hint(data.image_shape) if spatial_hint is not None else ""
        raise ValueError(f"layer {layer!r} gives activations of shape {tuple(shape)}, not a "
                         f"spatial map [B, h, w, units]; dissect a convolutional stage{hint}.")
    _, h, w, units = shape
    settings = dict(quantile=float(quantile), iou_threshold=float(iou_threshold),
                    resolution=int(resolution), mask_resize=mask_resize, bins=int(bins))
    params = data.replicate(params)

    # ---- pass 1: thresholds
    if thresholds is None:
        def step1(sketch, params, x, valid):
            a = features(params, x).astype(jnp.float32)
            return sketch_update(sketch, a.reshape(-1, units), jnp.repeat(valid, h * w))

        # The sketch stays replicated, so every step sees the same input shardings (no retrace).
        step1 = jax.jit(step1) if data.mesh is None else jax.jit(step1, out_shardings=data.rep)

        sketch = data.replicate(sketch_init(units, bins))
        host, since, seen = _HostSketch(), 0, 0
        per_step = data.batch * data.scale * h * w
        for x, _, valid, n in data.chunks(with_masks=False):
            if since + per_step > _MAX_COUNT:
                host.add(sketch)
                sketch = sketch._replace(counts=data.replicate(jnp.zeros_like(sketch.counts)))
                since = 0
            new = step1(sketch, params, x, valid)
            # Wait for the previous step: one batch in flight, so the images of a long
            # dataset do not pile up on the device behind the dispatch queue.
            jax.block_until_ready(sketch)
            sketch = new
            since += per_step
            seen += n
        host.add(sketch)
        final = host.sketch
        if not (np.all(np.isfinite(final.lo)) and np.all(np.isfinite(final.hi))):
            bad = np.flatnonzero(~(np.isfinite(final.lo) & np.isfinite(final.hi)))
            raise ValueError(f"activations of units {bad[:10].tolist()} are not finite "
                             f"(NaN or inf); check the model and its inputs.")
        thresholds, errors = sketch_threshold(final, quantile)
    else:
        thresholds = np.asarray(thresholds, np.float32)
        if thresholds.shape != (units,):
            raise ValueError(f"thresholds must be [{units}] (one per unit of layer {layer!r}), "
                             f"got shape {thresholds.shape}.")
        errors, seen = np.zeros(units), None

    # ---- pass 2: counts
    @jax.jit
    def step2(params, x, masks, valid, t, offset):
        a = features(params, x)
        mu = unit_masks(a, t, resolution)
        lab = resize_masks(masks, resolution, mask_resize)
        real = count(mu, lab, valid)
        if shuffle is None:
            return real, None
        moved = shuffle_masks(lab, shuffle_key, offset, valid, shuffle)
        return real, count(mu, moved, valid)

    t_dev = data.replicate(jnp.asarray(thresholds))
    totals = [np.zeros((units, data.num_concepts), np.int64), np.zeros(units, np.int64),
              np.zeros(data.num_concepts, np.int64)]
    shuffled = [np.zeros_like(a) for a in totals]
    pending, num, steps = None, 0, 0

    def drain(out):
        real, moved = out
        for acc, part in zip(totals, real):
            acc += _host(part)
        if moved is not None:
            for acc, part in zip(shuffled, moved):
                acc += _host(part)

    for x, m, valid, n in data.chunks(with_masks=True):
        offset = num if data.scale == 1 else steps * data.batch * data.scale
        out = step2(params, x, m, valid, t_dev, jnp.int32(offset))
        if pending is not None:  # fetch the previous batch while this one runs
            drain(pending)
        pending, num, steps = out, num + n, steps + 1
    drain(pending)
    if seen is not None and seen != num:
        raise ValueError(f"batches yielded {seen} images in the first pass and {num} in the "
                         f"second; pass a list or a function returning the same data each time.")
    real = _finish(thresholds, errors, *totals, num, names, layer, settings)
    moved = None if shuffle is None else _finish(thresholds, errors, *shuffled, num, names,
                                                 layer, dict(settings, shuffle=shuffle))
    return real, moved


def _model_features(model, layer: str):
    def features(variables, x):
        _, acts = model.apply(variables, x, taps=(layer,))
        return acts[layer]

    return features


def _spatial_hint(model):
    """A function naming the model's spatial stages (for the non-spatial-layer error)."""
    def hint(image_shape):
        from cxr_jax.models import stage_shapes
        shapes = stage_shapes(model, (1,) + tuple(image_shape))
        spatial = [s for s in model.stages if len(shapes[s]) == 4]
        return f" (spatial stages of {model.name}: {', '.join(spatial)})"

    return hint


def _resolve(model, layer) -> str:
    return model.layer(layer) if hasattr(model, "layer") else layer


def _prepare(quantile, iou_threshold, resolution, bins, mask_resize, batches, mesh) -> _Data:
    _check_settings(quantile, iou_threshold, resolution, bins, mask_resize)
    return _Data(batches, mesh)


def dissect(model, variables, batches, *, layer: str | None, quantile: float = 0.005,
            iou_threshold: float = 0.04, resolution: int = 56,
            concept_names: Sequence[str] | None = None, mesh: Mesh | None = None,
            bins: int = 2048, mask_resize: str = "area",
            thresholds: np.ndarray | None = None) -> Dissection:
    """Dissects one layer of a model: thresholds, IoU per unit and concept, labels, scores.

    IoU_{k,c} = sum_images |Up(A_k) > T_k & L_c| / sum_images |Up(A_k) > T_k | L_c| with T_k the
    top-`quantile` level of unit k over the data (module docstring: resolution, threshold sketch
    and its error bound, memory).

    Args:
      model: a `cxr_jax.models` Model.
      variables: its variables.
      batches: a list (or other re-iterable) of (images [B, H, W, ch] float, concept masks
        [B, C, H, W] bool) pairs, or of objects with .images and .concepts (a PhantomBatch), or
        a function returning a fresh iterable of them; read twice. Overlapping concepts are fine.
      layer: a stage name or an alias the model declares ("stride16", "layer4.last"); None
        means the model's declared explain layer. Must give a spatial map [B, h, w, U].
      quantile: the top fraction of each unit's activations that defines its mask, in (0, 1).
      iou_threshold: a unit is labelled when its best IoU exceeds this.
      resolution: side of the grid where unit maps (bilinear) and masks are compared.
      concept_names: C names (default: the batches' .concept_names, if any).
      mesh: shard each batch over this mesh's devices (parameters replicated); None = one device.
        Each process passes its own rows; every process must yield the same number of batches.
      bins: histogram bins per unit of the threshold sketch (error bound ~ 2 range / bins).
      mask_resize: "area" (default), "any" or "nearest" (see `resize_masks`).
      thresholds: [U] thresholds to use instead of pass 1 (e.g. shared between data shards).
    Returns:
      A `Dissection` (thresholds, iou, labels, scores, counts, error bounds, names).
    Raises:
      ValueError: an unknown or non-spatial layer, a quantile outside (0, 1), masks that are not
        boolean, not at the images' size or with a changing number of concepts, no data.
    """
    layer = _resolve(model, layer)
    data = _prepare(quantile, iou_threshold, resolution, bins, mask_resize, batches, mesh)
    real, _ = _dissect(_model_features(model, layer), variables, data, quantile=quantile,
                       iou_threshold=iou_threshold, resolution=resolution,
                       concept_names=concept_names, bins=bins, mask_resize=mask_resize,
                       thresholds=thresholds, layer=layer, spatial_hint=_spatial_hint(model))
    return real


def dissect_features(features: Callable[[Any, Array], Array], params, batches, *,
                     quantile: float = 0.005, iou_threshold: float = 0.04, resolution: int = 56,
                     concept_names: Sequence[str] | None = None, mesh: Mesh | None = None,
                     bins: int = 2048, mask_resize: str = "area",
                     thresholds: np.ndarray | None = None, layer: str | None = None
                     ) -> Dissection:
    """`dissect` for any feature function `features(params, images) -> [B, h, w, U]` (jittable;
    e.g. an identity on precomputed activations, or another framework's network). Arguments
    and result as `dissect`; `layer` is only recorded."""
    data = _prepare(quantile, iou_threshold, resolution, bins, mask_resize, batches, mesh)
    real, _ = _dissect(features, params, data, quantile=quantile, iou_threshold=iou_threshold,
                       resolution=resolution, concept_names=concept_names, bins=bins,
                       mask_resize=mask_resize, thresholds=thresholds, layer=layer)
    return real


def reinitialize(model, variables, layer: str, key: Array, example: Array, *,
                 init_variables=None) -> dict:
    """`variables` with every stage up to and including `layer` re-initialised.

    The new values come from `init_variables` (freshly initialised variables of the same model)
    or, by default, from `model.init(key, example)`: the model's own initialisers, for parameters
    and batch-norm statistics alike. Later stages keep their weights. Built on
    `cxr_jax.metrics.randomization.randomize_layers`.
    """
    from cxr_jax.metrics.randomization import randomize_layers
    layer = _resolve(model, layer)
    upto = model.stage_list[: model.stages.index(layer) + 1]
    paths = list(dict.fromkeys(s.path for s in upto if s.path))
    if not paths:
        return variables
    if init_variables is None:
        init_variables = model.init(key, jnp.asarray(example, jnp.float32))
    return randomize_layers(variables, key, paths, init_variables=init_variables,
                            collections=("params", "batch_stats"))


def dissect_baseline(model, variables, batches, *, layer: str | None, key: Array,
                     quantile: float = 0.005, iou_threshold: float = 0.04,
                     resolution: int = 56, concept_names: Sequence[str] | None = None,
                     mesh: Mesh | None = None, bins: int = 2048, mask_resize: str = "area",
                     shuffle: str = "roll", init_variables=None) -> Baselines:
    """A dissection and its chance baselines: re-initialised weights and shuffled masks.

    Runs the real network twice (its thresholds, then its counts against the true and the
    shuffled masks together) and the re-initialised one twice (its own thresholds and counts).

    Args:
      model, variables, batches, layer, quantile, iou_threshold, resolution, concept_names,
        mesh, bins, mask_resize: as `dissect`.
      key: PRNG key; fold_in(key, 0) re-initialises the weights, fold_in(key, 1) shuffles.
      shuffle: "roll" (random circular shift per image) or "permute" (the next image's masks).
      init_variables: freshly initialised variables of the same model to re-initialise from
        (default: model.init(fold_in(key, 0), one image); see `reinitialize`).
    Returns:
      `Baselines(real, random_weights, shuffled_masks, units_above)`.
    """
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}.")
    layer = _resolve(model, layer)
    data = _prepare(quantile, iou_threshold, resolution, bins, mask_resize, batches, mesh)
    common = dict(quantile=quantile, iou_threshold=iou_threshold, resolution=resolution,
                  concept_names=concept_names, bins=bins, mask_resize=mask_resize,
                  thresholds=None, layer=layer, spatial_hint=_spatial_hint(model))
    feats = _model_features(model, layer)
    real, moved = _dissect(feats, variables, data, shuffle=shuffle,
                           shuffle_key=jax.random.fold_in(key, 1), **common)
    random_vars = reinitialize(model, variables, layer, jax.random.fold_in(key, 0),
                               data.example()[:1], init_variables=init_variables)
    rand, _ = _dissect(feats, random_vars, data, **common)
    above = {"real": real.units_above(), "random_weights": rand.units_above(),
             "shuffled_masks": moved.units_above()}
    return Baselines(real=real, random_weights=rand, shuffled_masks=moved, units_above=above)
