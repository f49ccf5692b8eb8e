"""Faithfulness metrics that query the model: insertion / deletion AUC and sensitivity-N.

All functions take the pair every model-dependent metric takes,
`(model, variables, x [B, H, W, C], saliency [B, H, W], targets)`, where `model.apply(variables,
x)` returns logits [B, K] (DESIGN.md's contract) and `targets` is either per-image class
indices [B] or a callable `logits [B, K] -> score [B]` (regression, custom scores).

They are pure and contain no `jax.jit`: wrap them yourself, closing over the model and the
static keyword arguments, e.g.

    fn = jax.jit(functools.partial(deletion_curve, model, pixels_per_step=25))
    res = fn(variables, x, saliency, targets)

Every perturbed image is a function of a step (or mask) index, so all of them are evaluated by
one `jax.lax.map(..., batch_size=...)` over the indices: static shapes, one compiled model call
for `batch_size` steps of the whole image batch, no Python loop over steps, and memory bounded
by `batch_size * B` images.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.common.filters import gaussian_matrix, separable
from cxr_jax.common.targets import Targets, score_fn

__all__ = [
    "gaussian_blur",
    "PerturbationCurve",
    "deletion_curve",
    "insertion_curve",
    "deletion_auc",
    "insertion_auc",
    "insertion_deletion",
    "SensitivityN",
    "sensitivity_n",
    "sensitivity_n_values",
]


# --------------------------------------------------------------------------- helpers
def gaussian_blur(x, sigma: float, *, truncate: float = 4.0):
    """Separable Gaussian blur of images, identical to scipy's `gaussian_filter` (reflect mode).

    blur(x) = G_H x G_W^T per channel, where G_n is the 1-D Gaussian filter (std `sigma`
    pixels, kernel radius round(truncate * sigma)) with half-sample symmetric ("reflect")
    boundaries, written as an n x n matrix. Exact for any sigma, including kernels wider than
    the image, and two small matmuls on any accelerator.

    Args:
      x: [B, H, W, C] images.
      sigma: standard deviation in pixels (0 = no blur).
      truncate: kernel radius in standard deviations (scipy's default 4).
    Returns:
      [B, H, W, C], same dtype as x.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, C], got {x.shape}.")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    if sigma == 0:
        return x
    gh = gaussian_matrix(x.shape[1], sigma, truncate=truncate).astype(np.float32)
    gw = gaussian_matrix(x.shape[2], sigma, truncate=truncate).astype(np.float32)
    return separable(x, gh, gw, axes=(1, 2), dtype=jnp.float32).astype(x.dtype)


def _check_inputs(x, saliency):
    x = jnp.asarray(x)
    saliency = jnp.asarray(saliency)
    if x.ndim != 4:
        raise ValueError(f"x must be an image batch [B, H, W, C], got {x.shape}.")
    if saliency.shape != x.shape[:3]:
        raise ValueError(
            f"saliency must be [B, H, W] = {x.shape[:3]} to match x {x.shape}, got "
            f"{saliency.shape}; upsample the maps to the input size first.")
    return x, saliency


def _baseline(x, baseline, sigma: float):
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(x, sigma)
        if baseline == "zeros":
            return jnp.zeros_like(x)
        raise ValueError(f'baseline must be "blur", "zeros" or an array, got {baseline!r}.')
    b = jnp.asarray(baseline, x.dtype)
    try:
        return jnp.broadcast_to(b, x.shape)
    except ValueError:
        raise ValueError(f"baseline of shape {b.shape} does not broadcast to x {x.shape}.")


# --------------------------------------------------------------------------- insertion/deletion
class PerturbationCurve(NamedTuple):
    """An insertion or deletion curve.

    Attributes:
      auc: [B] trapezoid area under `scores` over `fractions`.
      scores: [B, S + 1] target score after 0, 1, ..., S steps.
      fractions: [S + 1] share of the perturbed budget done after each step (0 ... 1).
    """

    auc: jax.Array
    scores: jax.Array
    fractions: jax.Array


def _step_of(saliency, n_total: int, pixels_per_step: int, n_steps: int):
    """[B, H, W, 1] step at which each pixel is perturbed: the pixel of saliency rank r
    (descending, ties in row-major order) at step r // pixels_per_step + 1, none (n_steps + 1)
    beyond the budget. One sort; the ranks are scattered back, not sorted again."""
    b, h, w = saliency.shape
    order = jnp.argsort(-saliency.reshape(b, h * w), axis=-1, stable=True)
    ranks = jnp.broadcast_to(jnp.arange(h * w), (b, h * w))
    rank = jnp.zeros((b, h * w), jnp.int32).at[jnp.arange(b)[:, None], order].set(ranks)
    step_of = jnp.where(rank < n_total, rank // pixels_per_step + 1, n_steps + 1)
    return step_of.reshape(b, h, w, 1)


def _curves(modes, model, variables, x, saliency, targets, *, baseline, sigma,
            pixels_per_step, fraction, steps_per_batch) -> tuple[PerturbationCurve, ...]:
    """The curves of `modes` ("deletion" / "insertion") from one ranking and one lax.map over
    the steps of all of them."""
    x, saliency = _check_inputs(x, saliency)
    b, h, w, _ = x.shape
    if pixels_per_step < 1 or int(pixels_per_step) != pixels_per_step:
        raise ValueError(f"pixels_per_step must be a positive integer, got {pixels_per_step}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    pixels_per_step = int(pixels_per_step)
    n_total = max(1, int(round(fraction * h * w)))
    n_steps = math.ceil(n_total / pixels_per_step)
    score = score_fn(targets, b, probability=True)
    base = _baseline(x, baseline, sigma)
    step_of = _step_of(saliency, n_total, pixels_per_step, n_steps)
    # image_k of mode m: past step k the pixel is `end`, before it `start`
    ends = jnp.stack([base if m == "deletion" else x for m in modes])      # [M, B, H, W, C]
    starts = jnp.stack([x if m == "deletion" else base for m in modes])

    def at_step(mk):
        m, k = mk // (n_steps + 1), mk % (n_steps + 1)
        img = jnp.where(step_of <= k, ends[m], starts[m])
        return score(model.apply(variables, img))

    total = len(modes) * (n_steps + 1)
    scores = jax.lax.map(at_step, jnp.arange(total), batch_size=min(steps_per_batch, total))
    scores = scores.reshape(len(modes), n_steps + 1, b).transpose(0, 2, 1)   # [M, B, S + 1]
    fractions = jnp.minimum(jnp.arange(n_steps + 1) * pixels_per_step, n_total) / n_total
    auc = jnp.trapezoid(scores, fractions, axis=-1)
    fr = fractions.astype(scores.dtype)
    return tuple(PerturbationCurve(auc[i], scores[i], fr) for i in range(len(modes)))


_CURVE_DOC = """

    The pixels are ranked by saliency (descending, ties in row-major order); the top
    `fraction` of them (n = round(fraction * H * W)) are changed `pixels_per_step` at a time
    (S = ceil(n / pixels_per_step) steps, the last one possibly partial), all channels of a
    pixel together. score = sigmoid(logit of the target) for class targets, or `targets(logits)`
    for a callable. AUC = trapezoid rule over the share of the budget done, 0 ... 1, so it lies
    in [0, 1] for probabilities. Defaults follow the CXR reference in METHODS.md (blurred
    baseline with sigma 10, 25 pixels per step, top 50%).

    Args:
      model: object with `apply(variables, x) -> logits [B, K]`.
      variables: the model's variables.
      x: [B, H, W, C] images.
      saliency: [B, H, W] maps at the input resolution (raw; only the order matters).
      targets: [B] int class indices, or a callable logits [B, K] -> score [B].
      baseline: "blur" (Gaussian blur of x with `sigma`), "zeros", or an array broadcastable
        to x.
      sigma: blur standard deviation in pixels.
      pixels_per_step: pixels changed per step.
      fraction: share of the image's pixels changed in total.
      steps_per_batch: steps evaluated per model call (lax.map batch size); memory grows as
        steps_per_batch * B images.
    Returns:
      PerturbationCurve(auc [B], scores [B, S + 1], fractions [S + 1]).
    """


def deletion_curve(model, variables, x, saliency, targets: Targets, *, baseline="blur",
                   sigma: float = 10.0, pixels_per_step: int = 25, fraction: float = 0.5,
                   steps_per_batch: int = 16) -> PerturbationCurve:
    return _curves(("deletion",), model, variables, x, saliency, targets, baseline=baseline,
                   sigma=sigma, pixels_per_step=pixels_per_step, fraction=fraction,
                   steps_per_batch=steps_per_batch)[0]


deletion_curve.__doc__ = (
    "Deletion curve: replace the most salient pixels by the baseline, step by step; a faithful "
    "map makes the score fall fast (low AUC is good).\n\n"
    "    image_k = where(rank < k * pixels_per_step, baseline, x), k = 0 ... S." + _CURVE_DOC)


def insertion_curve(model, variables, x, saliency, targets: Targets, *, baseline="blur",
                    sigma: float = 10.0, pixels_per_step: int = 25, fraction: float = 0.5,
                    steps_per_batch: int = 16) -> PerturbationCurve:
    return _curves(("insertion",), model, variables, x, saliency, targets, baseline=baseline,
                   sigma=sigma, pixels_per_step=pixels_per_step, fraction=fraction,
                   steps_per_batch=steps_per_batch)[0]


insertion_curve.__doc__ = (
    "Insertion curve: restore the most salient pixels into the baseline, step by step; a "
    "faithful map makes the score rise fast (high AUC is good).\n\n"
    "    image_k = where(rank < k * pixels_per_step, x, baseline), k = 0 ... S." + _CURVE_DOC)


def insertion_deletion(model, variables, x, saliency, targets: Targets, *, baseline="blur",
                       sigma: float = 10.0, pixels_per_step: int = 25, fraction: float = 0.5,
                       steps_per_batch: int = 16) -> tuple[PerturbationCurve, PerturbationCurve]:
    """(insertion_curve, deletion_curve) of the same maps, equal to the two calls, from one
    ranking of the pixels and one lax.map over the steps of both curves (arguments as
    theirs). What evaluation runs: maps of several methods can share the call by stacking
    them along the batch axis."""
    return _curves(("insertion", "deletion"), model, variables, x, saliency, targets,
                   baseline=baseline, sigma=sigma, pixels_per_step=pixels_per_step,
                   fraction=fraction, steps_per_batch=steps_per_batch)


def deletion_auc(model, variables, x, saliency, targets: Targets, **kwargs):
    """Deletion AUC [B] (lower is better); keyword arguments as `deletion_curve`."""
    return deletion_curve(model, variables, x, saliency, targets, **kwargs).auc


def insertion_auc(model, variables, x, saliency, targets: Targets, **kwargs):
    """Insertion AUC [B] (higher is better); keyword arguments as `insertion_curve`."""
    return insertion_curve(model, variables, x, saliency, targets, **kwargs).auc


# --------------------------------------------------------------------------- sensitivity-N
class SensitivityN(NamedTuple):
    """Sensitivity-N results.

    Attributes:
      n_values: [N] numbers of masked pixels.
      correlation: [B, N] Pearson correlation per image and n (NaN replaced by 0).
    """

    n_values: np.ndarray
    correlation: jax.Array


def sensitivity_n_values(num_pixels: int, num: int = 50) -> np.ndarray:
    """The n grid: floor(logspace(0, log10(num_pixels), num)), as integers in [1, num_pixels].

    Small n repeat (1, 1, 1, 2, ...), as in the reference; each repeat draws its own masks.
    """
    v = np.floor(np.logspace(0.0, np.log10(num_pixels), num) + 1e-6).astype(np.int64)
    return np.clip(v, 1, num_pixels)


FLAT_RTOL = 1e-5  # spread at or below this share of a vector's magnitude is float rounding


def _pearson_last_axis(a, b):
    """Pearson correlation along the last axis; NaN where either input is constant up to float
    rounding (its standard deviation at most FLAT_RTOL times its largest magnitude). A
    spatially constant map gives mask sums that differ only in the order of their additions,
    and correlating those gives +-1 from rounding alone, differently on each device layout."""
    def centred(v):
        scale = jnp.max(jnp.abs(v), axis=-1)
        v = v - v[..., :1]  # shift first: a constant vector becomes exactly zero
        v = v - v.mean(-1, keepdims=True)
        return v, jnp.sqrt(jnp.mean(v * v, axis=-1)) <= FLAT_RTOL * scale

    a, flat_a = centred(a)
    b, flat_b = centred(b)
    num = (a * b).sum(-1)
    den = jnp.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    ok = (den > 0) & ~flat_a & ~flat_b
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)


def sensitivity_n(model, variables, x, saliency, targets: Targets, *, key, n_values=None,
                  num_n: int = 50, num_masks: int = 30, baseline="zeros", sigma: float = 10.0,
                  masks_per_batch: int = 16) -> SensitivityN:
    """Sensitivity-N (Ancona et al. 2018): do the map's sums predict the output drop?

    For each n and each of `num_masks` random masks M of exactly n pixels (shared by all
    images of the batch, all channels of a pixel together):
      attribution = sum_{hw} saliency * M,
      drop = f(x) - f(x * (1 - M) + baseline * M),
    with f = the target's logit (raw, as in the CheXplain-IBA reference) or `targets(logits)`
    for a callable. The result per image and n is the Pearson correlation of attribution and
    drop over the masks; an undefined correlation (e.g. n = H * W, where every mask is the same,
    or a spatially constant map, whose sums differ only by float rounding) counts as 0, as in
    the reference. For a linear model with saliency = gradient x input and a
    zero baseline the correlation is exactly 1.

    Args:
      model: object with `apply(variables, x) -> logits [B, K]`.
      variables: the model's variables.
      x: [B, H, W, C] images.
      saliency: [B, H, W] maps at the input resolution.
      targets: [B] int class indices, or a callable logits -> score [B].
      key: PRNG key for the masks (mask j uses fold_in(key, j)).
      n_values: explicit n grid (ints in [1, H*W]); default `sensitivity_n_values(H*W, num_n)`.
      num_n: size of the default grid (50).
      num_masks: random masks per n (30).
      baseline: "zeros" (the reference), "blur", or an array broadcastable to x.
      sigma: blur standard deviation when baseline="blur".
      masks_per_batch: masks evaluated per model call (lax.map batch size).
    Returns:
      SensitivityN(n_values [N], correlation [B, N]).
    """
    x, saliency = _check_inputs(x, saliency)
    b, h, w, _ = x.shape
    hw = h * w
    if n_values is None:
        n_values = sensitivity_n_values(hw, num_n)
    n_values = np.asarray(n_values, np.int64).reshape(-1)
    if n_values.size == 0 or n_values.min() < 1 or n_values.max() > hw:
        raise ValueError(f"n_values must be integers in [1, H*W = {hw}].")
    if num_masks < 2:
        raise ValueError(f"num_masks must be >= 2 to define a correlation, got {num_masks}.")
    f = score_fn(targets, b)
    base = _baseline(x, baseline, sigma)
    clean = f(model.apply(variables, x))  # [B]
    n_per_mask = jnp.asarray(np.repeat(n_values, num_masks))
    sal = saliency.astype(jnp.float32)

    def one_mask(args):
        j, n = args
        u = jax.random.uniform(jax.random.fold_in(key, j), (hw,))
        chosen = jnp.zeros((hw,), jnp.float32).at[jnp.argsort(u)].set(
            (jnp.arange(hw) < n).astype(jnp.float32))
        m = chosen.reshape(1, h, w, 1).astype(x.dtype)
        drop = clean - f(model.apply(variables, x * (1 - m) + base * m))
        attribution = jnp.einsum("bhw,hw->b", sal, chosen.reshape(h, w))
        return attribution, drop

    idx = jnp.arange(n_per_mask.shape[0])
    attribution, drop = jax.lax.map(one_mask, (idx, n_per_mask), batch_size=masks_per_batch)
    shape = (len(n_values), num_masks, b)
    attribution = attribution.reshape(shape).transpose(2, 0, 1)  # [B, N, M]
    drop = drop.reshape(shape).transpose(2, 0, 1).astype(jnp.float32)
    corr = jnp.nan_to_num(_pearson_last_axis(attribution, drop), nan=0.0)
    return SensitivityN(n_values, corr)
