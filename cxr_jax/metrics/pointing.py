"""Pointing game: does a map's maximum fall within a tolerance of the ground-truth region?

Maps and masks are `[..., H, W]` (any leading batch axes; `[B, H, W]` in the usual case).
Masks are boolean (any non-zero value counts as inside). `_check_pair`, which checks that a map
and a mask share one such shape, lives here and serves the box and heat metrics too
(`cxr_jax.metrics.boxes`, `cxr_jax.metrics.heat`).

Per-image hits are NaN where the game is undefined (no ground-truth region, or a map holding
NaN); `pointing_game_summary` skips NaN. The game and its helpers are pure `jax.numpy`
(jit/vmap/shard-friendly); the summary is numpy.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = [
    "pointing_game",
    "pointing_game_points",
    "saliency_peaks",
    "pointing_game_centre",
    "centre_point_saliency",
    "pointing_game_summary",
    "PointingGameSummary",
]


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


def saliency_peaks(saliency):
    """Where each map points: its first maximum in row-major order, (row, column).

    Args:
      saliency: [..., H, W] maps.
    Returns:
      [..., 2] int32 (row, column); a constant map points at (0, 0).
    """
    saliency = jnp.asarray(saliency)
    if saliency.ndim < 2:
        raise ValueError(f"saliency must have shape [..., H, W], got {saliency.shape}.")
    h, w = saliency.shape[-2:]
    idx = jnp.argmax(saliency.reshape(saliency.shape[:-2] + (h * w,)), axis=-1)
    return jnp.stack([idx // w, idx % w], axis=-1).astype(jnp.int32)


def pointing_game(saliency, masks, *, tolerance: float = 15):
    """Pointing game: does the map's maximum fall within `tolerance` pixels of the region?

    point = first argmax of the map in row-major order (`saliency_peaks`); hit as in
    `pointing_game_points` (distance <= tolerance counts as a hit). Images whose mask is empty
    give NaN (skipped by `pointing_game_summary`), never a hit. A constant map points at pixel
    (0, 0). A map holding NaN points nowhere: its result is NaN, never a hit or a miss.

    Args:
      saliency: [..., H, W] maps (raw or normalised; only the argmax matters).
      masks: [..., H, W] boolean ground truth at the same resolution.
      tolerance: disk radius in pixels.
    Returns:
      [...] float32: 1.0 hit, 0.0 miss, NaN no ground truth or a NaN map.

    Example:
      >>> sal = jnp.zeros((1, 64, 64)).at[0, 10, 10].set(1.0)
      >>> mask = jnp.zeros((1, 64, 64), bool).at[0, 10, 25].set(True)
      >>> pointing_game(sal, mask, tolerance=15)   # distance 15: a hit
      Array([1.], dtype=float32)
    """
    saliency = jnp.asarray(saliency)
    masks = jnp.asarray(masks)
    _check_pair("saliency", saliency, "masks", masks)
    hits = pointing_game_points(saliency_peaks(saliency), masks, tolerance=tolerance)
    return jnp.where(jnp.any(jnp.isnan(saliency), axis=(-2, -1)), jnp.nan, hits)


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


def _columns(hits, binary: bool = True) -> tuple[tuple[str, ...] | None, list[np.ndarray]]:
    """(class names or None, one float array per class) from any form of `hits`; with `binary`
    the values must be 1, 0 or NaN."""
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
    for col in columns if binary else ():
        ok = col[~np.isnan(col)]
        if not np.all((ok == 0) | (ok == 1)):
            raise ValueError("pointing-game hits must be 1, 0 or NaN.")
    return names, columns


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
    names, columns = _columns(hits)
    counts = np.array([np.sum(~np.isnan(c)) for c in columns], np.int64)
    totals = np.array([np.nansum(c) for c in columns], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    have = counts > 0
    accuracy = float(per_class[have].mean()) if have.any() else float("nan")
    pooled = float(totals.sum() / counts.sum()) if counts.sum() > 0 else float("nan")
    return PointingGameSummary(per_class, counts, accuracy, pooled, names)


def pointing_game_interval(hits, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
                           ) -> tuple[float, float]:
    """Bootstrap interval of the class-mean pointing game (`pointing_game_summary().accuracy`):
    `class_mean_interval` of the hits, which must be 1, 0 or NaN.

    Args:
      hits: as `pointing_game_summary`.
      level, n_boot, seed: as `class_mean_interval`.
    Returns:
      (low, high); (NaN, NaN) when no class has a scored image.
    """
    _columns(hits)  # validates the hits
    return class_mean_interval(hits, level=level, n_boot=n_boot, seed=seed)


def class_mean_interval(values, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
                        ) -> tuple[float, float]:
    """Bootstrap interval of a class mean: the mean over classes of each class's mean over its
    images (NaN entries are unscored and skipped), for any per-image value (pointing-game hits,
    box IoU, EHR, insertion AUC).

    Each replicate resamples, with replacement, the scored images of every class separately
    (a stratified bootstrap: the class sizes stay fixed) and takes the class mean of the
    per-class means; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of
    `n_boot` replicates. One generator draws the classes' resamples one class after
    another, so the interval depends on the order of the classes as well as on `seed`: pass
    them in one fixed order (the evaluation uses the model's) to reproduce an interval.

    Args:
      values: [B, K] array (one column per class, NaN where unscored), a sequence of K 1-D
        arrays, or a mapping {class name: 1-D array}.
      level: coverage of the interval.
      n_boot: bootstrap replicates.
      seed: seed of the resampling (the interval is a deterministic function of it).
    Returns:
      (low, high); (NaN, NaN) when no class has a scored image.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    _, columns = _columns(values, binary=False)
    rng = np.random.default_rng(seed)
    means = []
    for col in columns:
        ok = col[~np.isnan(col)]
        if len(ok):
            means.append(ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(axis=1))
    if not means:
        return float("nan"), float("nan")
    lo, hi = np.quantile(np.mean(means, axis=0), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
