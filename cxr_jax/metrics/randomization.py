"""Parameter-randomisation sanity checks (Adebayo et al. 2018) and map similarity.

A faithful attribution method depends on the weights: re-initialise the network's layers and its
maps must change. This module builds the randomised variable trees and compares maps:

* `randomize_layers` replaces named parameter subtrees; `cascading_randomization` does it
  cumulatively from the top of the network down, `independent_randomization` one layer at a
  time. Each returns `[(path, variables), ...]`: explain with each tree and compare.
* `spearman` (rank correlation, ties averaged, optionally of absolute values) and `ssim`
  (structural similarity of per-image normalised maps) measure how much the maps changed.
* `consistency_summary` summarises paired scores of two conditions (smoothing, randomisation,
  training seeds, architectures; Ozer et al.) as a difference of means.

Re-initialisation, two ways:
  1. `init_variables=model.init(other_key, x)`: the subtree is taken from a freshly initialised
     tree (the model's own initialisers, as in the paper). Recommended.
  2. Without it, every leaf w of the subtree becomes mean(w) + std(w) * N(0, 1) (a Gaussian
     matching the leaf's first two moments; `fallback_std` where std(w) = 0, e.g. zero biases).
Layer i of `layer_order` always draws from `fold_in(key, i)`, so its random weights are the same
in every cascading step and in the independent variant. Only the collections named in
`collections` (default "params") change; batch-norm running statistics are kept, as in the
paper's setup.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from cxr_jax.common.filters import separable, uniform_matrix
from cxr_jax.common.trees import as_path, get_path, replace_path

__all__ = [
    "randomize_layers",
    "cascading_randomization",
    "independent_randomization",
    "model_layer_paths",
    "spearman",
    "ssim",
    "ConsistencySummary",
    "consistency_summary",
]


# --------------------------------------------------------------------------- trees
def _moment_matched(subtree, key, fallback_std: float):
    leaves, treedef = jax.tree_util.tree_flatten(subtree)
    keys = jax.random.split(key, max(len(leaves), 1))
    new = []
    for leaf, k in zip(leaves, keys):
        leaf = jnp.asarray(leaf)
        mean = jnp.mean(leaf)
        std = jnp.std(leaf)
        std = jnp.where(std > 0, std, fallback_std)
        new.append((mean + std * jax.random.normal(k, leaf.shape)).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def _randomized_subtree(variables, init_variables, col, path, key, fallback_std):
    old = get_path(variables.get(col, {}), path)
    if init_variables is None:
        return _moment_matched(old, key, fallback_std)
    fresh = get_path(init_variables.get(col, {}), path)
    if fresh is None:
        raise ValueError(f"init_variables has no {col}/{'.'.join(path)}; build it with the same "
                         f"model's init.")
    same = jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(old) and all(
        jnp.shape(a) == jnp.shape(b)
        for a, b in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(old)))
    if not same:
        raise ValueError(f"init_variables {col}/{'.'.join(path)} differs in structure or shape "
                         f"from variables; use the same model configuration.")
    return fresh


def randomize_layers(variables, key, paths: Sequence, *, init_variables=None,
                     fallback_std: float = 0.01, collections: Sequence[str] = ("params",),
                     key_offsets: Sequence[int] | None = None):
    """Re-initialise the parameter subtrees at `paths` (see the module docstring for how).

    Args:
      variables: Flax variables {"params": ..., "batch_stats": ...}.
      key: PRNG key; path i uses fold_in(key, key_offsets[i]) (default offset i).
      paths: dotted strings ("features.denseblock4", "classifier") or key tuples into each
        collection; a path must exist in at least one of `collections`.
      init_variables: optional freshly initialised variables of the same model to copy from.
      fallback_std: std of the Gaussian for leaves with zero spread (moment-matched mode).
      collections: which collections to randomise.
      key_offsets: per-path integers folded into `key`.
    Returns:
      A new variables tree (the input is not modified).
    """
    paths = [as_path(p) for p in paths]
    offsets = list(range(len(paths))) if key_offsets is None else list(key_offsets)
    if len(offsets) != len(paths):
        raise ValueError("key_offsets must have one entry per path.")
    out = dict(variables)
    for path, off in zip(paths, offsets):
        found = False
        for col in collections:
            if get_path(variables.get(col, {}), path) is None:
                continue
            found = True
            sub = _randomized_subtree(variables, init_variables, col, path,
                                      jax.random.fold_in(key, off), fallback_std)
            out[col] = replace_path(out[col], path, sub)
        if not found:
            tops = sorted({k for c in collections for k in variables.get(c, {})})
            raise ValueError(f"no parameters at {'.'.join(path)!r} in {list(collections)}; "
                             f"top-level keys are {tops}. Use dotted paths into the tree.")
    return out


def cascading_randomization(variables, key, layer_order: Sequence, **kwargs):
    """Cumulative re-initialisation, top layer first (Adebayo et al.'s cascading test).

    Step i re-initialises layer_order[0..i]; layer j's random weights are identical in every
    step that includes it.

    Args:
      variables: trained variables.
      key: PRNG key.
      layer_order: paths from the output towards the input, e.g.
        ["classifier", "features.norm5", "features.denseblock4", ...]
        (`model_layer_paths(model)` gives them for a cxr_jax model).
      **kwargs: as `randomize_layers` (init_variables, fallback_std, collections).
    Returns:
      [(dotted path of the last layer randomised, variables)] of length len(layer_order).
    """
    out = []
    for i, p in enumerate(layer_order):
        v = randomize_layers(variables, key, layer_order[: i + 1], **kwargs)
        out.append((".".join(as_path(p)), v))
    return out


def independent_randomization(variables, key, layer_order: Sequence, **kwargs):
    """One layer at a time re-initialised, the rest trained (Adebayo et al.'s independent test).

    Returns:
      [(dotted path, variables with only that layer re-initialised)]; layer i uses the same
      random weights as in `cascading_randomization` with the same key and order.
    """
    return [(".".join(as_path(p)),
             randomize_layers(variables, key, [p], key_offsets=[i], **kwargs))
            for i, p in enumerate(layer_order)]


def model_layer_paths(model, *, top_down: bool = True) -> list[str]:
    """Dotted variable paths of a cxr_jax model's parameterised stages, in cascading order.

    Args:
      model: a `cxr_jax.models` Model (uses its stages' variable paths).
      top_down: output stage first (the cascading order) or input first.
    Returns:
      list of dotted paths, e.g. ["classifier", "features.norm5", ...].
    """
    stages = getattr(model, "stage_list", None)
    if stages is None:
        raise ValueError("model has no stage_list; pass the layer paths explicitly.")
    paths = [".".join(s.path) for s in stages if getattr(s, "path", ())]
    return paths[::-1] if top_down else paths


# --------------------------------------------------------------------------- similarity
def _flat_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"maps must have the same shape [B, ...], got {a.shape} and {b.shape}.")
    return a.reshape(len(a), -1), b.reshape(len(b), -1)


def spearman(a, b, *, absolute: bool = False, mask=None) -> np.ndarray:
    """Spearman rank correlation per image: Pearson correlation of tie-averaged ranks.

    rho_i = corr(rank(a_i), rank(b_i)) over all pixels (with `mask`, over the pixels where
    mask_i is True, ranked among themselves: e.g. the part of an original image that a rotated
    photo still shows); with `absolute`, ranks of |a| and |b| (Adebayo et al. report both). NaN
    when a map is constant (no ranking) or fewer than two pixels are kept.

    Args:
      a, b: [B, H, W] (or [B, ...]) maps.
      mask: optional [B, H, W] bool, the pixels compared.
    Returns:
      [B] float64 in [-1, 1].
    """
    a, b = _flat_pair(a, b)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    keep = None
    if mask is not None:
        keep = np.asarray(mask, bool).reshape(a.shape)
        a, b = np.where(keep, a, np.nan), np.where(keep, b, np.nan)
        ra = rankdata(a, axis=-1, method="average", nan_policy="omit")
        rb = rankdata(b, axis=-1, method="average", nan_policy="omit")
        count = np.maximum(keep.sum(-1, keepdims=True), 1)
        ra = np.where(keep, ra - np.nansum(ra, -1, keepdims=True) / count, 0.0)
        rb = np.where(keep, rb - np.nansum(rb, -1, keepdims=True) / count, 0.0)
    else:
        ra = rankdata(a, axis=-1, method="average")
        rb = rankdata(b, axis=-1, method="average")
        ra -= ra.mean(-1, keepdims=True)
        rb -= rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _minmax(x: jax.Array) -> jax.Array:
    lo = x.min(axis=(-2, -1), keepdims=True)
    hi = x.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def ssim(a, b, *, win_size: int = 7, normalize: bool = True, data_range: float | None = None,
         k1: float = 0.01, k2: float = 0.03, mask=None):
    """Mean structural similarity per image, equal to skimage's `structural_similarity`.

    Each map is first min-max normalised to [0, 1] (constant map -> 0), so `data_range` = 1;
    with normalize=False pass the data range of your maps. With local means mu, sample
    variances s^2 and covariance s_ab over a win_size x win_size uniform window (reflect
    boundaries, sample-covariance factor N/(N-1), N = win_size^2), C1 = (k1 R)^2,
    C2 = (k2 R)^2:
      SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
    averaged over pixels at least (win_size - 1) / 2 from the border (skimage's defaults:
    gaussian_weights=False, use_sample_covariance=True). Vectorised over the batch in jax.
    With `mask`, normalisation and the average use only the windows lying wholly inside the
    mask (NaN for an image with none).

    Args:
      a, b: [B, H, W] maps.
      win_size: odd window side (7).
      normalize: per-image min-max normalisation first.
      data_range: R; required when normalize=False.
      mask: optional [B, H, W] bool: the region compared (e.g. what a rotated photo still shows).
    Returns:
      [B] float32.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim expects two [B, H, W] batches of the same shape, got {a.shape} "
                         f"and {b.shape}.")
    h, w = a.shape[1:]
    if win_size % 2 != 1 or win_size > min(h, w):
        raise ValueError(f"win_size must be odd and <= min(H, W) = {min(h, w)}, got {win_size}.")
    inside = None
    if mask is not None:
        inside = jnp.asarray(mask, bool)
        if inside.shape != a.shape:
            raise ValueError(f"mask must be {a.shape}, got {inside.shape}.")
        big, small = jnp.finfo(jnp.float32).max, jnp.finfo(jnp.float32).min
        lo = lambda x: jnp.where(inside, x, big).min(axis=(-2, -1), keepdims=True)
        hi = lambda x: jnp.where(inside, x, small).max(axis=(-2, -1), keepdims=True)
        if normalize:   # min-max over the region, zero outside it
            a = jnp.where(inside, (a - lo(a)) / jnp.maximum(hi(a) - lo(a), 1e-30), 0.0)
            b = jnp.where(inside, (b - lo(b)) / jnp.maximum(hi(b) - lo(b), 1e-30), 0.0)
            data_range = 1.0
    if normalize and inside is None:
        a, b = _minmax(a), _minmax(b)
        data_range = 1.0
    elif data_range is None or data_range <= 0:
        raise ValueError("with normalize=False pass data_range > 0 (the maps' value range).")
    uh, uw = uniform_matrix(h, win_size), uniform_matrix(w, win_size)

    def filt(x):
        return separable(x, uh, uw, dtype=jnp.float32)

    npix = win_size ** 2
    cov_norm = npix / (npix - 1.0)
    ua, ub = filt(a), filt(b)
    vaa = cov_norm * (filt(a * a) - ua * ua)
    vbb = cov_norm * (filt(b * b) - ub * ub)
    vab = cov_norm * (filt(a * b) - ua * ub)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    pad = (win_size - 1) // 2
    if inside is not None:   # windows wholly inside the region
        whole = filt(inside.astype(jnp.float32)) > 1.0 - 1e-4
        whole = whole[:, pad: h - pad, pad: w - pad]
        total = jnp.where(whole, s[:, pad: h - pad, pad: w - pad], 0.0).sum(axis=(-2, -1))
        count = whole.sum(axis=(-2, -1))
        return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
    return s[:, pad: h - pad, pad: w - pad].mean(axis=(-2, -1))


# --------------------------------------------------------------------------- consistency
class ConsistencySummary(NamedTuple):
    """Difference of means of two conditions' per-image scores.

    Attributes:
      difference: mean_a - mean_b (NaN-skipping means).
      mean_a, mean_b: the two means.
      per_image: a_i - b_i when the scores are paired (same shape), else None.
      a, b: the per-image scores as given (float64 arrays).
    """

    difference: float
    mean_a: float
    mean_b: float
    per_image: np.ndarray | None
    a: np.ndarray
    b: np.ndarray


def consistency_summary(a_scores, b_scores) -> ConsistencySummary:
    """Summarise two conditions (e.g. original vs smoothed maps, seed 0 vs seed 1) by the
    difference of their mean per-image scores (Ozer et al.'s consistency summary).

    Args:
      a_scores: [N] per-image scores of condition a (NaN = undefined, skipped).
      b_scores: [M] per-image scores of condition b; paired with a when M == N.
    Returns:
      ConsistencySummary.
    """
    a = np.asarray(a_scores, np.float64).reshape(-1)
    b = np.asarray(b_scores, np.float64).reshape(-1)
    if np.all(np.isnan(a)) or np.all(np.isnan(b)):
        raise ValueError("each condition needs at least one non-NaN score.")
    mean_a, mean_b = float(np.nanmean(a)), float(np.nanmean(b))
    per_image = a - b if a.shape == b.shape else None
    return ConsistencySummary(mean_a - mean_b, mean_a, mean_b, per_image, a, b)
