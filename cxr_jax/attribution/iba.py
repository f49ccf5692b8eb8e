"""Information Bottleneck Attribution: IBA, Inverse IBA, Regression IBA and Multi-layer IBA.

A bottleneck at stage `layer` replaces its activation R [h, w, C] by a noisy mix

    lambda = smooth(sigmoid(alpha)),   eps ~ N(mu, sigma^2)   (per feature, over data)
    IBA:          z = lambda * R + (1 - lambda) * eps
    Inverse IBA:  z = lambda * eps + (1 - lambda) * R

and learns alpha [h, w, C] for one image so that the model still predicts (IBA: minimise the
model loss; Inverse IBA: maximise it) while the information that passes, the capacity

    r = (R - mu) / sigma
    capacity = KL( N(lambda r, (1 - lambda)^2) || N(0, 1) )
             = -1/2 [1 + log (1 - lambda)^2 - (lambda r)^2 - (1 - lambda)^2]   (nats per feature),

is as small as possible: loss = (+/-) model_loss + beta * mean_{h,w,C} capacity. The saliency is
the capacity summed over channels in bits, scaled by (h w)/(H W) so the total number of bits is
kept when the map is bilinearly resized to the input.

How this module runs it (DESIGN.md): the network up to the bottleneck runs once per batch; each
image's optimisation (its own alpha and optax Adam state, vmapped over the batch) is a `lax.scan`
over the steps; a step reruns only the stages after the bottleneck (`model.apply(v, z,
start=layer)`), on the B x samples noisy activations folded into one batch. The explanation of
a batch is one program with no host round trips, and keys are explicit (`fold_in` per image and
per step). Feature statistics mu, sigma and the active rate come from `iba_stats`, a pure
reduction that also runs with the batch sharded over devices.

References:
  Schulz, Sixt, Tombari, Landgraf. "Restricting the Flow: Information Bottlenecks for
  Attribution", ICLR 2020 (BioroboticsLab/IBA).
  Khakzar, Zhang, Mansour, et al. "Explaining COVID-19 and Thoracic Pathology Model Predictions
  by Identifying Informative Input Features", MICCAI 2021 (CAMP-eXplain-AI/CheXplain-IBA):
  Inverse IBA, Regression IBA, Multi-layer IBA.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxr_jax.attribution._registry import register
from cxr_jax.attribution.common import auto_chunk, check_images, score_fn
from cxr_jax.models import Model

Array = jax.Array

MIN_STD = 0.01  # the reference's floor on the feature std
RECOMMENDED_SAMPLES = 1000  # fewer samples than this draws a warning (the reference: 10,000 ideal)
_FORMAT = "cxr_jax.iba_stats/1"
# Optimisations of up to this many steps are unrolled by default (see `iba`, `unroll`).
MAX_UNROLL = 32


# ------------------------------------------------------------------------------------ statistics
@dataclasses.dataclass(frozen=True, eq=False)
class IBAStats:
    """Per-feature statistics of one layer's activations over a data set (a pytree).

    The arrays are pytree leaves; `n`, `layer`, `shape` and `min_std` are static metadata, so a
    stats object can be passed through `jax.jit` as an argument or saved with any checkpointer.

    Attributes:
      mean: mu, the mean activation [h, w, C] (float32).
      std: sigma, the unbiased standard deviation [h, w, C], clamped at `min_std`.
      active_rate: fraction of samples in which the feature is non-zero [h, w, C]. Features
        active in no more than `active_threshold` (default 1%) of samples are masked out of the
        bottleneck, as in the reference.
      n: number of samples the statistics were estimated from.
      layer: the stage the statistics belong to.
      shape: the feature shape (h, w, C).
      min_std: the floor applied to `std`.
    """

    mean: Array
    std: Array
    active_rate: Array
    n: int
    layer: str
    shape: tuple[int, int, int]
    min_std: float = MIN_STD


jax.tree_util.register_dataclass(
    IBAStats, data_fields=["mean", "std", "active_rate"],
    meta_fields=["n", "layer", "shape", "min_std"])


@dataclasses.dataclass(frozen=True, eq=False)
class Moments:
    """Sufficient statistics of a set of samples, mergeable in any order (Chan et al. 1979).

    Attributes:
      n: number of samples.
      mean: their mean [h, w, C] (float64).
      m2: sum of squared deviations from that mean [h, w, C] (float64).
      nonzero: number of samples in which each feature is non-zero [h, w, C] (int64).
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray
    nonzero: np.ndarray


def merge_moments(a: Moments | None, b: Moments) -> Moments:
    """Chan's parallel merge of two sets of moments (exact, order-independent up to rounding).

        n = n_a + n_b,  d = mean_b - mean_a
        mean = mean_a + d n_b / n,  M2 = M2_a + M2_b + d^2 n_a n_b / n

    Why this and not running sums of x and x^2: Var = (sum x^2 - (sum x)^2 / n) / (n - 1) cancels
    catastrophically when |mean| >> std (float32 activations of mean 100 and std 0.01 lose every
    digit), while the merge only ever adds centred quantities. Each batch's (mean, M2) is
    computed in two passes on the device (so a sharded batch reduces across devices there), and
    batches are merged here on the host in float64.

    Args:
      a: the running moments, or None for none yet.
      b: one batch's moments.
    Returns:
      The moments of the union.
    """
    if a is None or a.n == 0:
        return b
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n)
    return Moments(n, mean, m2, a.nonzero + b.nonzero)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _batch_moments(model: Model, layer: str, variables: Any, x: Array):
    """One batch's (mean, M2, non-zero count) of the activation at `layer`, two-pass."""
    _, acts = model.apply(variables, x, taps=(layer,))
    a = acts[layer].astype(jnp.float32)
    mean = jnp.mean(a, axis=0)
    m2 = jnp.sum(jnp.square(a - mean), axis=0)
    nonzero = jnp.sum(a != 0, axis=0, dtype=jnp.int32)
    return mean, m2, nonzero


def _images_of(batch: Any, i: int) -> Any:
    if isinstance(batch, (tuple, list)) and batch and not hasattr(batch, "shape"):
        batch = batch[0]
    shape = getattr(batch, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"iba_stats: batch {i} is not an image array [B, H, W, C] (got shape {shape}). "
            f"`batches` must yield image arrays, or tuples whose first element is one.")
    return batch


def iba_stats(model: Model, variables: Any, batches: Iterable[Any], *, layer: str,
              min_std: float = MIN_STD, max_samples: int | None = None) -> IBAStats:
    """Estimates the feature distribution at `layer` for the bottleneck: mean, std, active rate.

        mu = mean_n R_n,  sigma = max(sqrt(sum_n (R_n - mu)^2 / (N - 1)), min_std),
        active_rate = #{n : R_n != 0} / N        (per feature of [h, w, C])

    Each batch runs the network up to `layer` only (the rest is pruned by `jit`) and is reduced to
    (mean, M2, non-zero count) on the device; batches are merged on the host with `merge_moments`
    (see there why not running sums of x and x^2). A batch sharded over devices (NamedSharding
    on its batch axis, variables replicated) reduces across the devices inside the same program
    and gives the same statistics.

    Args:
      model: the model.
      variables: its variables.
      batches: an iterable of image arrays [B, H, W, C] (or tuples whose first element is one),
        all of the same H, W.
      layer: the stage to estimate at (the bottleneck layer).
      min_std: floor on the std (the reference: 0.01).
      max_samples: stop after this many samples (the reference uses 10,000); None: use all.
    Returns:
      `IBAStats`. Warns when fewer than 1,000 samples were seen.
    Raises:
      ValueError: unknown layer, a layer that is not a spatial map, fewer than 2 samples,
        batches of different image sizes, or non-finite activations.
    """
    if layer not in model.stages:
        raise ValueError(f"Unknown layer {layer!r} for {model.name!r}. Valid stage names: "
                         f"{', '.join(model.stages)}.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 2):
        raise ValueError(f"max_samples must be an int >= 2 or None, got {max_samples!r}.")
    total: Moments | None = None
    image_shape = None
    for i, batch in enumerate(batches):
        x = _images_of(batch, i)
        if image_shape is None:
            image_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != image_shape:
            raise ValueError(
                f"iba_stats: batch {i} has images of shape {tuple(x.shape[1:])}, earlier batches "
                f"{image_shape}. Statistics hold for one input size: resize the images.")
        if max_samples is not None:
            room = max_samples - (total.n if total else 0)
            if room <= 0:
                break
            if x.shape[0] > room:
                x = x[:room]
        if x.shape[0] == 0:
            continue
        mean, m2, nonzero = _batch_moments(model, layer, variables, x)
        if mean.ndim != 3:
            raise ValueError(
                f"Layer {layer!r} gives activations of shape {(x.shape[0],) + mean.shape}; the "
                f"bottleneck needs a spatial feature map [B, h, w, C]. Pick a convolutional stage.")
        batch = Moments(int(x.shape[0]), np.asarray(mean, np.float64), np.asarray(m2, np.float64),
                        np.asarray(nonzero, np.int64))
        if not (np.all(np.isfinite(batch.mean)) and np.all(np.isfinite(batch.m2))):
            raise ValueError(f"iba_stats: batch {i} gives NaN or Inf activations at {layer!r}; "
                             f"clean the images (or the weights) first.")
        total = merge_moments(total, batch)
    if total is None or total.n < 2:
        raise ValueError(
            f"iba_stats needs at least 2 samples to estimate a std, got "
            f"{0 if total is None else total.n}. Pass more batches.")
    if total.n < RECOMMENDED_SAMPLES:
        warnings.warn(
            f"IBA statistics at {layer!r} were estimated from only {total.n} samples; "
            f"{RECOMMENDED_SAMPLES:,} is the minimum recommended (10,000 in the reference).",
            stacklevel=2)
    return stats_from_moments(total, layer=layer, min_std=min_std)


def stats_from_moments(moments: Moments, *, layer: str, min_std: float = MIN_STD) -> IBAStats:
    """`IBAStats` from merged moments: unbiased std clamped at `min_std`, active rate."""
    if moments.n < 2:
        raise ValueError(f"Need at least 2 samples to estimate a std, got {moments.n}.")
    std = np.sqrt(moments.m2 / (moments.n - 1))
    return IBAStats(
        mean=jnp.asarray(moments.mean, jnp.float32),
        std=jnp.asarray(np.maximum(std, min_std), jnp.float32),
        active_rate=jnp.asarray(moments.nonzero / moments.n, jnp.float32),
        n=int(moments.n), layer=layer, shape=tuple(int(s) for s in moments.mean.shape),
        min_std=float(min_std))


def save_iba_stats(path: str | os.PathLike, stats: IBAStats) -> None:
    """Writes `stats` to `path` as a numpy .npz archive (exactly at `path`, no suffix added)."""
    if not isinstance(stats, IBAStats):
        raise ValueError(f"save_iba_stats expects IBAStats, got {type(stats).__name__}.")
    with open(os.fspath(path), "wb") as f:
        np.savez(f, format=np.asarray(_FORMAT), mean=np.asarray(stats.mean),
                 std=np.asarray(stats.std), active_rate=np.asarray(stats.active_rate),
                 n=np.asarray(stats.n, np.int64), layer=np.asarray(stats.layer),
                 shape=np.asarray(stats.shape, np.int64),
                 min_std=np.asarray(stats.min_std, np.float64))


def load_iba_stats(path: str | os.PathLike) -> IBAStats:
    """Reads statistics written by `save_iba_stats`."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        if "format" not in f or str(f["format"]) != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not an IBA statistics file written by "
                             f"save_iba_stats ({_FORMAT}).")
        return IBAStats(
            mean=jnp.asarray(f["mean"]), std=jnp.asarray(f["std"]),
            active_rate=jnp.asarray(f["active_rate"]), n=int(f["n"]), layer=str(f["layer"]),
            shape=tuple(int(s) for s in f["shape"]), min_std=float(f["min_std"]))


# ------------------------------------------------------------------------------ building blocks
def kl_capacity(r: Array, lam: Array, one_minus_lam: Array | None = None) -> Array:
    """Per-feature capacity KL(N(lam r, (1 - lam)^2) || N(0, 1)) in nats.

        KL = -1/2 [1 + log (1 - lam)^2 - (lam r)^2 - (1 - lam)^2]

    Args:
      r: standardised activation (R - mu) / sigma, any shape.
      lam: lambda in [0, 1], broadcastable to r.
      one_minus_lam: 1 - lam when known more precisely than by subtraction (e.g. smoothed
        sigmoid(-alpha)); it is floored at 1e-12 so lam -> 1 gives a large, finite capacity.
    Returns:
      Capacity, the broadcast shape of r and lam.
    """
    if one_minus_lam is None:
        one_minus_lam = 1.0 - lam
    one_minus_lam = jnp.maximum(one_minus_lam, 1e-12)
    return -0.5 * (1.0 + 2.0 * jnp.log(one_minus_lam) - jnp.square(lam * r)
                   - jnp.square(one_minus_lam))


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """The reference's smoothing kernel along one axis: size 2 round(2 sigma) + 1, sums to 1.

    The reference's 2-D kernel exp(-(dx^2 + dy^2) / (2 sigma^2)), normalised, is the outer
    product of this one with itself.
    """
    size = 2 * int(round(2 * sigma)) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-x * x / (2.0 * sigma * sigma))
    return k / k.sum()


def reflect_smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """The 1-D smoothing along an axis of length n as a matrix M [n, n]: out = M @ a.

    M[i, reflect(i + t - p)] += k[t] for the kernel k of `gaussian_kernel_1d` (length 2p + 1),
    with reflect padding (the edge sample is not repeated, as torch's ReflectionPad2d).
    """
    k = gaussian_kernel_1d(sigma)
    p = len(k) // 2
    if n <= p:
        raise ValueError(
            f"Smoothing with sigma={sigma} reflect-pads {p} pixels, which needs a feature map of "
            f"at least {p + 1}x{p + 1}; the bottleneck layer's map has a side of {n}. Use a "
            f"larger input, an earlier layer, or sigma=0.")
    m = np.zeros((n, n))
    for i in range(n):
        for t in range(len(k)):
            j = i + t - p
            j = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)
            m[i, j] += k[t]
    return m


def smooth(a: Array, sigma: float) -> Array:
    """Gaussian smoothing of maps [..., h, w, C] over (h, w) per channel, reflect padding.

    The reference's depthwise 2-D convolution (kernel 2 round(2 sigma) + 1, ReflectionPad2d) is
    separable, so it is done as two small matrix products, a_s = M_h a M_w^T per channel, which
    is exact and cheaper than the convolution. sigma 0 or None returns `a` unchanged.
    """
    if not sigma:
        return a
    h, w = a.shape[-3], a.shape[-2]
    mh = jnp.asarray(reflect_smoothing_matrix(h, sigma), a.dtype)
    mw = jnp.asarray(reflect_smoothing_matrix(w, sigma), a.dtype)
    a = jnp.einsum("ik,...kwc->...iwc", mh, a)
    return jnp.einsum("jl,...ilc->...ijc", mw, a)


def capacity_to_saliency(capacity: Array, size: tuple[int, int]) -> Array:
    """Capacity [B, h, w, C] in nats -> saliency [B, H, W] in bits per input pixel.

        s = sum_C capacity / ln 2 * (h w) / (H w_in),  then bilinear resize to (H, W)

    Bilinear with half-pixel centres, as skimage's `resize(order=1)` that the reference uses; at
    the border values clamp to the edge (skimage mode="edge") where the reference's default
    mirrors: that changes only the outer half feature pixel, and it keeps the map's total equal
    to the total capacity in bits (exactly for integer upsampling factors).
    """
    b, h, w, _ = capacity.shape
    big_h, big_w = size
    bits = jnp.sum(capacity, axis=-1) / math.log(2.0) * ((h * w) / (big_h * big_w))
    return jax.image.resize(bits, (b, big_h, big_w), method="bilinear")


REFERENCE_THRESHOLD = 0.006  # Multi-layer IBA's gate on unit-norm maps at 224x224


def reference_threshold(size: tuple[int, int]) -> float:
    """The reference's gate (0.006 on unit-norm 224x224 maps) carried to maps of `size`.

    A unit-norm map that is uniform over H x W pixels has value 1 / sqrt(H W) (1/224 at 224 px),
    so 0.006 means "1.34 times the uniform level". Keeping that ratio gives
    0.006 * 224 / sqrt(H W): 0.006 at 224 px, 0.0105 at 128 px, 0.0056 at 240 px.
    """
    h, w = size
    return REFERENCE_THRESHOLD * 224.0 / math.sqrt(h * w)


def combine_multilayer(maps: Sequence[Array], *, combine: str = "gated",
                       thresholds: float | Sequence[float] | None = None,
                       weights: Sequence[float] | None = None) -> Array:
    """Multi-layer IBA's combination of per-layer maps (Khakzar et al. 2021).

    Each map is divided by its Frobenius norm over (H, W) (maps that are all zero stay zero);
    then with n_i the normalised maps:

        gated:  n_1 * [n_2 > t_2] * [n_3 > t_3] * ...   (the first map, kept where all others pass)
        sum:    sum_i w_i n_i                            (w_i = 1 by default)

    Thresholds are absolute on unit-norm maps, so they depend on the map size: the reference's
    0.006 (swept 0.002-0.006) is for 224x224, where a uniform unit-norm map is 1/224 = 0.0045.
    The default (None) is that threshold carried to the maps' size, `reference_threshold`
    (0.006 * 224 / sqrt(H W)), so "gated" means the same at every resolution.

    Args:
      maps: per-layer maps, each [..., H, W] (same shape), the first the one kept by "gated"
        (in Multi-layer IBA: the shallowest, highest-resolution layer).
      combine: "gated" or "sum".
      thresholds: t_2, t_3, ... for "gated": one value for all, or one per map after the first;
        None: `reference_threshold` of the map size for all.
      weights: w_i for "sum", one per map.
    Returns:
      The combined map, the shape of one map.
    """
    if len(maps) == 0:
        raise ValueError("combine_multilayer needs at least one map.")
    maps = [jnp.asarray(m) for m in maps]
    if any(m.shape != maps[0].shape for m in maps) or maps[0].ndim < 2:
        raise ValueError(f"combine_multilayer needs maps of one shape [..., H, W], got "
                         f"{[m.shape for m in maps]}.")
    normed = []
    for m in maps:
        norm = jnp.sqrt(jnp.sum(jnp.square(m), axis=(-2, -1), keepdims=True))
        normed.append(jnp.where(norm > 0, m / jnp.where(norm > 0, norm, 1.0), 0.0))
    if combine == "gated":
        if thresholds is None:
            thresholds = reference_threshold(maps[0].shape[-2:])
        t = (list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray))
             else [thresholds] * (len(maps) - 1))
        if len(t) != len(maps) - 1:
            raise ValueError(f"gated combination needs {len(maps) - 1} thresholds (one per map "
                             f"after the first), got {len(t)}.")
        out = normed[0]
        for n, ti in zip(normed[1:], t):
            out = out * (n > ti).astype(out.dtype)
        return out
    if combine == "sum":
        w = [1.0] * len(maps) if weights is None else list(weights)
        if len(w) != len(maps):
            raise ValueError(f"sum combination needs {len(maps)} weights, got {len(w)}.")
        return sum(wi * n for wi, n in zip(w, normed))
    raise ValueError(f"combine must be 'gated' or 'sum', got {combine!r}.")


# ----------------------------------------------------------------------------- the optimisation
_CLASSIFIER_LOSSES = ("bce", "ce")
_REGRESSION_LOSSES = ("mse", "push_up")


def _check_stats(stats: Any, layer: str, feature_shape: tuple, method: str) -> IBAStats:
    if stats is None:
        raise ValueError(
            f"{method} needs the feature statistics of its bottleneck layer: estimate them once "
            f"with cxr_jax.attribution.iba_stats(model, variables, batches, layer=...) and pass "
            f"stats=...")
    if not isinstance(stats, IBAStats):
        raise ValueError(f"{method}: stats must be IBAStats (from iba_stats or load_iba_stats), "
                         f"got {type(stats).__name__}.")
    if stats.layer != layer:
        raise ValueError(
            f"{method}: the statistics were estimated at layer {stats.layer!r} but the bottleneck "
            f"is at {layer!r}. Estimate stats at {layer!r} (or pass layer={stats.layer!r}).")
    if tuple(stats.shape) != tuple(feature_shape) or tuple(stats.mean.shape) != tuple(stats.shape):
        raise ValueError(
            f"{method}: the statistics at {layer!r} have feature shape {tuple(stats.shape)}, but "
            f"these images give {tuple(feature_shape)} there. Estimate the statistics on images "
            f"of the size you explain (and with the same model).")
    return stats


def _check_hparams(method: str, *, steps: Any, samples: Any, sigma: Any, beta: Any) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{method}: steps must be an int >= 1, got {steps!r}.")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{method}: samples must be an int >= 1, got {samples!r}.")
    if sigma is not None and (not isinstance(sigma, (int, float)) or sigma < 0):
        raise ValueError(f"{method}: sigma must be a number >= 0 (0 or None: no smoothing), "
                         f"got {sigma!r}.")
    if isinstance(beta, (int, float)) and beta < 0:
        raise ValueError(f"{method}: beta must be >= 0, got {beta!r}.")


def _image_keys(key: Any, batch: int) -> Array:
    """One key per image: `fold_in(key, i)` for a single key, or the caller's B keys."""
    if key is None:
        key = jax.random.key(0)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2):
            raise ValueError(f"key must be a PRNG key (jax.random.key), one per image, or raw "
                             f"uint32 key data; got dtype {key.dtype}, shape {key.shape}.")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if key.shape != (batch,):
        raise ValueError(f"Expected a single key or one key per image ({batch},), got key "
                         f"shape {key.shape}.")
    return key


def _per_image_targets(model: Model, targets: Any, batch: int, method: str):
    """(index [B] or None, callable or None) after checking targets like `score_fn` does."""
    if callable(targets):
        return None, targets
    score_fn(model, targets, batch)  # validates count, dtype and range
    t = jnp.asarray(targets)
    return jnp.broadcast_to(t, (batch,)), None


def _optimise(suffix: Callable[[Array], Array], R: Array, aux: Any, keys: Array,
              stats: IBAStats, model_loss: Callable[[Array, Any], Array], *,
              chunk: int | None = None, **kw) -> Array:
    """`_optimise_images` on `chunk` images at a time (None: `auto_chunk` for `samples`).

    The optimisations of different images are independent, so a `lax.map` over chunks gives
    the same capacities with memory for chunk x samples suffix passes instead of B x samples
    (a DenseNet-121 multi-layer IBA at 224 px, batch 8, needed 26 GB in one piece). The batch is
    padded to a multiple of the chunk by repeating its last image, so one program is compiled.
    """
    batch = R.shape[0]
    c = min(auto_chunk(chunk, kw["samples"]), batch)
    if c == batch:
        return _optimise_images(suffix, R, aux, keys, stats, model_loss, **kw)
    n = -(-batch // c)
    idx = jnp.minimum(jnp.arange(n * c), batch - 1)
    split = lambda a: a[idx].reshape((n, c) + a.shape[1:])
    cap = jax.lax.map(
        lambda args: _optimise_images(suffix, *args[:3], stats, model_loss, **kw),
        jax.tree_util.tree_map(split, (R, aux, keys)))
    return cap.reshape((n * c,) + cap.shape[2:])[:batch]


def _optimise_images(suffix: Callable[[Array], Array], R: Array, aux: Any, keys: Array,
                     stats: IBAStats, model_loss: Callable[[Array, Any], Array], *,
                     inverse: bool, beta: Any, steps: int, lr: Any, samples: int, alpha0: Any,
                     sigma: Any, active_threshold: Any,
                     unroll: int | bool | None = None) -> Array:
    """Per-image bottleneck optimisation for a batch: capacity [B, h, w, C] (nats).

    Each image has its own alpha and its own Adam state (`opt.init`/`opt.update` vmapped over
    the batch); a `lax.scan` runs the steps. In a step the bottleneck is vmapped over images
    (noise from the image's key folded with the step), the B x S noisy activations go through
    the suffix as one batch, and the loss is the sum of the per-image losses: images do not
    interact (eval-mode batch norm), so its gradient with respect to alpha_i is image i's own.

    Args:
      suffix: z [N, h, w, C] -> logits [N, K], the stages after the bottleneck.
      R: activations at the bottleneck [B, h, w, C].
      aux: per-image data for the model loss (pytree with leading B).
      keys: one PRNG key per image [B].
      stats: the layer's statistics.
      model_loss: (logits [S, K], aux_i) -> scalar model loss of one image.
    Returns:
      The capacity the last step evaluated (as the reference reports it), [B, h, w, C].
    """
    R = R.astype(jnp.float32)
    batch, shape = R.shape[0], R.shape[1:]
    active = (stats.active_rate > active_threshold).astype(jnp.float32)
    # Inactive features are zero in z: fold the mask into signal and noise once.
    r_std = (R - stats.mean) / stats.std
    signal, mu, sd = R * active, stats.mean * active, stats.std * active
    opt = optax.adam(lr)
    sign = -1.0 if inverse else 1.0

    def bottleneck(alpha, r_std_i, signal_i, key):  # one image
        lam = smooth(jax.nn.sigmoid(alpha), sigma)
        lam_c = smooth(jax.nn.sigmoid(-alpha), sigma)  # 1 - lam, without cancellation
        cap = kl_capacity(r_std_i, lam, lam_c) * active
        noise = mu + sd * jax.random.normal(key, (samples,) + shape, jnp.float32)
        z = lam * noise + lam_c * signal_i if inverse else lam * signal_i + lam_c * noise
        return z, cap

    def total_loss(alpha, step_keys):
        z, cap = jax.vmap(bottleneck)(alpha, r_std, signal, step_keys)  # [B, S, ...], [B, ...]
        logits = suffix(z.reshape((batch * samples,) + shape))
        logits = logits.reshape((batch, samples) + logits.shape[1:])
        per_image = (sign * jax.vmap(model_loss)(logits, aux)
                     + beta * jnp.mean(cap, axis=(1, 2, 3)))
        return jnp.sum(per_image), cap

    def step(carry, i):
        alpha, state, _ = carry
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        (_, cap), grad = jax.value_and_grad(total_loss, has_aux=True)(alpha, step_keys)
        updates, state = jax.vmap(opt.update)(grad, state, alpha)
        return (optax.apply_updates(alpha, updates), state, cap), None

    alpha = jnp.full(R.shape, alpha0, jnp.float32)
    carry = (alpha, jax.vmap(opt.init)(alpha), jnp.zeros(R.shape, jnp.float32))
    if unroll is None:
        unroll = True if steps <= MAX_UNROLL else 1
    (_, _, cap), _ = jax.lax.scan(step, carry, jnp.arange(steps), unroll=unroll)
    return cap


def _classifier_loss(model: Model, targets: Any, loss: str, batch: int, method: str):
    """(model_loss(logits [S, K], t_i), per-image aux [B]) for the explained finding."""
    if loss not in _CLASSIFIER_LOSSES:
        raise ValueError(f"{method}: loss must be one of {_CLASSIFIER_LOSSES} ('bce': sigmoid "
                         f"cross-entropy of the finding with label 1, multi-label models; 'ce': "
                         f"softmax cross-entropy, single-label models), got {loss!r}.")
    index, fn = _per_image_targets(model, targets, batch, method)
    if loss == "ce" and fn is not None:
        raise ValueError(f"{method}: loss='ce' needs class indices as targets; with a callable "
                         f"target use loss='bce'.")

    def score(logits, t):
        return fn(logits) if fn is not None else jnp.take(logits, t, axis=-1)

    if loss == "bce":
        def model_loss(logits, t):  # BCE with logits against label 1 = softplus(-score)
            return jnp.mean(jax.nn.softplus(-score(logits.astype(jnp.float32), t)))
    else:
        def model_loss(logits, t):
            return -jnp.mean(jnp.take(jax.nn.log_softmax(logits.astype(jnp.float32), -1), t,
                                      axis=-1))
    aux = index if index is not None else jnp.zeros((batch,), jnp.int32)
    return model_loss, aux


def _prepare(model: Model, variables: Any, x: Array, layers: Sequence[str], stats: Mapping,
             method: str):
    check_images(model, x)
    for layer in layers:
        if layer not in model.stages:
            raise ValueError(f"Unknown layer {layer!r} for {model.name!r}. Valid stage names: "
                             f"{', '.join(model.stages)}.")
    logits, acts = model.apply(variables, x, taps=tuple(layers))
    for layer in layers:
        if acts[layer].ndim != 4:
            raise ValueError(f"{method}: layer {layer!r} gives activations of shape "
                             f"{acts[layer].shape}; the bottleneck needs a spatial map "
                             f"[B, h, w, C].")
        _check_stats(stats.get(layer), layer, acts[layer].shape[1:], method)
    return logits, acts


def iba_capacity(model: Model, variables: Any, x: Array, targets: Any, *,
                 layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                 inverse: bool = False, loss: str = "bce", target_score: Any = None,
                 beta: float = 10.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
                 alpha0: float = 5.0, sigma: float = 1.0, active_threshold: float = 0.01,
                 unroll: int | bool | None = None,
                 chunk: int | None = None) -> Array:
    """The per-feature capacity [B, h, w, C] (nats) of an optimised bottleneck at `layer`.

    `iba`, `inverse_iba` and `regression_iba` are this, summed over channels and resized
    (`capacity_to_saliency`); the per-channel capacity is what semantic attribution aggregates.
    Arguments as `iba`; `inverse` swaps signal and noise and maximises the model loss; `loss`
    may also be a regression loss ("mse" with `target_score`, or "push_up"; see
    `regression_iba`).
    """
    return _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                     inverse=inverse, loss=loss, target_score=target_score, beta=beta,
                     steps=steps, lr=lr, samples=samples, alpha0=alpha0, sigma=sigma,
                     active_threshold=active_threshold, unroll=unroll, chunk=chunk,
                     method="inverse_iba" if inverse else "iba")


def _capacity(model, variables, x, targets, *, layer, key, stats, inverse, loss, target_score,
              beta, steps, lr, samples, alpha0, sigma, active_threshold, unroll, chunk,
              method):
    if not isinstance(stats, IBAStats):
        _check_stats(stats, layer or "", (), method)  # raises the right error
    layer = stats.layer if layer is None else layer
    _check_hparams(method, steps=steps, samples=samples, sigma=sigma, beta=beta)
    batch = x.shape[0]
    logits, acts = _prepare(model, variables, x, (layer,), {layer: stats}, method)
    if loss in _REGRESSION_LOSSES:
        model_loss, aux = _regression_loss(model, logits, targets, loss, target_score, batch,
                                           method)
    else:
        if target_score is not None:
            raise ValueError(f"{method}: target_score is for the regression losses "
                             f"{_REGRESSION_LOSSES}, not loss={loss!r}.")
        model_loss, aux = _classifier_loss(model, targets, loss, batch, method)
    suffix = lambda z: model.apply(variables, z, start=layer)
    return _optimise(suffix, acts[layer], aux, _image_keys(key, batch), stats, model_loss,
                     inverse=inverse, beta=beta, steps=steps, lr=lr, samples=samples,
                     alpha0=alpha0, sigma=sigma, active_threshold=active_threshold,
                     unroll=unroll, chunk=chunk)


def _regression_loss(model: Model, logits: Array, targets: Any, loss: str, target_score: Any,
                     batch: int, method: str):
    if loss not in _REGRESSION_LOSSES:
        raise ValueError(f"{method}: loss must be one of {_REGRESSION_LOSSES} ('mse': squared "
                         f"error to target_score; 'push_up': -MSE(f(z), 0), push the score's "
                         f"magnitude up), got {loss!r}.")
    if targets is None:
        if model.num_classes != 1:
            raise ValueError(f"{method}: targets=None picks the single output of a regression "
                             f"head, but {model.name!r} has {model.num_classes} outputs; pass "
                             f"the output index or a callable logits -> score.")
        targets = 0
    index, fn = _per_image_targets(model, targets, batch, method)

    def score(logits, t):
        return fn(logits) if fn is not None else jnp.take(logits, t, axis=-1)

    if index is None:
        index = jnp.zeros((batch,), jnp.int32)
    if loss == "push_up":
        if target_score is not None:
            raise ValueError(f"{method}: loss='push_up' takes no target_score (it maximises the "
                             f"squared score); use loss='mse' to fit a target.")
        return (lambda lg, aux: -jnp.mean(jnp.square(score(lg.astype(jnp.float32), aux)))), index
    if target_score is None:
        # Keep the prediction: the unperturbed model's own score for each image.
        goal = jax.vmap(lambda lg, t: score(lg[None], t)[0])(logits.astype(jnp.float32), index)
        goal = jax.lax.stop_gradient(goal)
    else:
        goal = jnp.broadcast_to(jnp.asarray(target_score, jnp.float32), (batch,))

    def model_loss(lg, aux):
        t, g = aux
        return jnp.mean(jnp.square(score(lg.astype(jnp.float32), t) - g))

    return model_loss, (index, goal)


# --------------------------------------------------------------------------------- the methods
@register("iba")
def iba(model: Model, variables: Any, x: Array, targets: Any, *, layer: str | None = None,
        key: Any = None, stats: IBAStats | None = None, beta: float = 10.0, steps: int = 10,
        lr: float = 1.0, samples: int = 10, alpha0: float = 5.0, sigma: float = 1.0,
        loss: str = "bce", active_threshold: float = 0.01,
        unroll: int | bool | None = None,
        chunk: int | None = None) -> Array:
    """Information Bottleneck Attribution (Schulz et al. 2020), a batch in one program.

        lambda = smooth(sigmoid(alpha)),  z = lambda R + (1 - lambda) eps,  eps ~ N(mu, sigma^2)
        minimise over alpha (per image, Adam):  model_loss(f(z)) + beta mean_{h,w,C} capacity
        saliency = sum_C capacity / ln 2 * (h w)/(H W), bilinearly resized to (H, W)

    As in the reference, the map is the capacity of the last step's lambda (the one the last
    gradient was taken at). Defaults are the reference's: beta 10, 10 Adam steps at lr 1,
    10 noise samples per step, alpha0 5, smoothing sigma 1.

    Args:
      model: the model (a stage pipeline).
      variables: its variables.
      x: images [B, H, W, C].
      targets: the finding to explain per image, class indices [B] (a scalar broadcasts), or a
        callable logits [S, K] -> scores [S] applied row-wise.
      layer: the bottleneck stage; default `stats.layer`.
      key: PRNG key for the noise: one key (image i uses fold_in(key, i), step t then
        fold_in(., t)) or one key per image [B]; None uses jax.random.key(0).
      stats: `IBAStats` of `layer` (required), from `iba_stats` on images of this size.
      beta: weight of the mean capacity against the model loss.
      steps: Adam steps per image.
      lr: Adam learning rate.
      samples: noise draws per step (the suffix runs on B * samples activations per step).
      alpha0: initial alpha (lambda = sigmoid(alpha0), 0.993 for 5).
      sigma: std of the Gaussian smoothing of lambda (kernel 2 round(2 sigma) + 1, reflect
        padding); 0 disables it.
      loss: the model loss. "bce" (default): sigmoid cross-entropy of the explained finding
        with label 1 - the CXR reference's choice for multi-label classifiers, which is what
        this library trains, and well defined for a single-logit head. "ce": softmax
        cross-entropy of the target class, the original IBA's choice for single-label
        (ImageNet-style) classifiers.
      active_threshold: features non-zero in at most this fraction of the data are masked out
        of z and of the capacity.
      unroll: `lax.scan`'s unroll for the steps; None unrolls up to 32 steps fully. XLA:CPU runs
        convolution gradients inside a loop with a slow kernel layout (2-3x slower), and the
        unrolled program also drops the last step's unused gradient; pass 1 for a rolled loop
        (faster to compile, the same maps).
      chunk: images optimised together (their chunk x samples noisy activations go through
        the suffix as one batch); chunks run one after another, so memory stays bounded. None:
        about 16 suffix images per pass (1 image at 10 samples), best on CPU; raise it on
        accelerators. The maps do not depend on it.
    Returns:
      Saliency [B, H, W] in bits per pixel (raw, not normalised); its sum over pixels is the
      bottleneck's total capacity in bits.
    Raises:
      ValueError: missing stats, stats of another layer or feature shape, bad targets, images or
        hyperparameters.

    Example:
      stats = iba_stats(model, variables, batches, layer="denseblock3")
      explain = jax.jit(functools.partial(iba, model, stats=stats))
      saliency = explain(variables, images, findings, key=jax.random.key(0))
    """
    cap = _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                    inverse=False, loss=loss, target_score=None, beta=beta, steps=steps, lr=lr,
                    samples=samples, alpha0=alpha0, sigma=sigma,
                    active_threshold=active_threshold, unroll=unroll, chunk=chunk,
                    method="iba")
    return capacity_to_saliency(cap, x.shape[1:3])


@register("inverse_iba")
def inverse_iba(model: Model, variables: Any, x: Array, targets: Any, *,
                layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                beta: float = 30.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
                alpha0: float = 5.0, sigma: float = 1.0, loss: str = "bce",
                active_threshold: float = 0.01, unroll: int | bool | None = None,
                chunk: int | None = None) -> Array:
    """Inverse IBA (Khakzar et al. 2021): finds *any* region with predictive information.

        z = lambda eps + (1 - lambda) R     (signal and noise swapped)
        minimise over alpha:  -model_loss(f(z)) + beta mean_{h,w,C} capacity

    Lambda now marks where noise replaces the signal, and the model term is maximised: the
    optimisation learns where destroying the features destroys the prediction. Capacity (the
    same formula) and saliency are as in `iba`, so the map is large where lambda is.

    Args:
      beta: default 30, the reference's evaluation setting (a reference notebook uses 6).
      Others: as `iba`.
    Returns:
      Saliency [B, H, W] in bits per pixel.
    """
    cap = _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                    inverse=True, loss=loss, target_score=None, beta=beta, steps=steps, lr=lr,
                    samples=samples, alpha0=alpha0, sigma=sigma,
                    active_threshold=active_threshold, unroll=unroll, chunk=chunk,
                    method="inverse_iba")
    return capacity_to_saliency(cap, x.shape[1:3])


@register("regression_iba")
def regression_iba(model: Model, variables: Any, x: Array, targets: Any = None, *,
                   layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                   loss: str = "mse", target_score: Any = None, inverse: bool = False,
                   beta: float = 10.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
                   alpha0: float = 5.0, sigma: float = 1.0, active_threshold: float = 0.01,
                   unroll: int | bool | None = None,
                   chunk: int | None = None) -> Array:
    """Regression IBA (Khakzar et al. 2021): IBA for score regressors (e.g. severity scores).

    The model loss is a regression loss on the score s = f(z)[target] (or `targets(logits)`):

        loss="mse":      mean_S (s - target_score)^2; target_score None = the unperturbed
                         model's own score for the image (keep the prediction)
        loss="push_up":  -mean_S s^2  (= -MSE(s, 0): keep what makes the score large)

    then as `iba` (or `inverse_iba` with inverse=True). The reference ships both losses.

    Args:
      targets: output index per image (None: the single output of a num_classes=1 head) or a
        callable logits [S, K] -> scores [S].
      loss: "mse" (default) or "push_up".
      target_score: the score to fit with "mse", scalar or [B]; None: the model's own score.
      inverse: Inverse IBA's bottleneck and sign (maximise the regression loss).
      Others: as `iba`.
    Returns:
      Saliency [B, H, W] in bits per pixel.
    """
    if loss not in _REGRESSION_LOSSES:
        raise ValueError(f"regression_iba: loss must be one of {_REGRESSION_LOSSES}, got "
                         f"{loss!r} (for classifiers use iba with loss='bce' or 'ce').")
    cap = _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                    inverse=inverse, loss=loss, target_score=target_score, beta=beta,
                    steps=steps, lr=lr, samples=samples, alpha0=alpha0, sigma=sigma,
                    active_threshold=active_threshold, unroll=unroll, chunk=chunk,
                    method="regression_iba")
    return capacity_to_saliency(cap, x.shape[1:3])


def noise_logits(model: Model, variables: Any, stats: IBAStats, *, key: Any = None,
                 samples: int = 64, active_threshold: float = 0.01) -> Array:
    """The model's outputs when the bottleneck at `stats.layer` passes no signal at all.

    That is z = eps ~ N(mu, sigma^2) (inactive features zero), the bottleneck of `iba` at
    lambda = 0 everywhere, pushed through the stages after the layer. IBA asks which features
    must pass for the target's score to stay high; it presumes that noise alone scores low.
    Where the noise already scores the target high, the bottleneck can close at little cost to
    the model loss, so the map may reflect little more than the capacity penalty (flat or off
    the finding). Check this before trusting IBA for a finding at a layer: CNNs often answer
    noise at a shallow layer with texture-like findings (consolidation), and at a deep one with
    whatever their most extreme activations mean (a foreign object).

    Args:
      stats: the layer's statistics (`iba_stats`).
      key: PRNG key for the noise (default key 0); samples: how many noise draws.
      active_threshold: as in `iba`.
    Returns:
      [samples, K] outputs (logits) of the model for the noise draws.
    """
    if not isinstance(stats, IBAStats):
        raise ValueError(f"noise_logits needs IBAStats (from iba_stats), got "
                         f"{type(stats).__name__}.")
    if stats.layer not in model.stages:
        raise ValueError(f"Unknown layer {stats.layer!r} for {model.name!r}. Valid stage names: "
                         f"{', '.join(model.stages)}.")
    if int(samples) < 1:
        raise ValueError(f"samples must be >= 1, got {samples}.")
    key = jax.random.key(0) if key is None else key
    active = (stats.active_rate > active_threshold).astype(jnp.float32)
    eps = stats.mean + stats.std * jax.random.normal(key, (int(samples),) + tuple(stats.shape))
    return model.apply(variables, eps * active, start=stats.layer)


def multilayer_default_layers(model: Model) -> tuple[str, ...]:
    """The reference's Multi-layer IBA layers: denseblock1-3 (DenseNet), layer1-3 (ResNet)."""
    if model.name.startswith("densenet"):
        return ("denseblock1", "denseblock2", "denseblock3")
    if model.name.startswith("resnet"):
        return ("layer1", "layer2", "layer3")
    raise ValueError(f"No default Multi-layer IBA layers for {model.name!r}; pass layer=(...).")


@register("multilayer_iba")
def multilayer_iba(model: Model, variables: Any, x: Array, targets: Any, *,
                   layer: Sequence[str] | None = None, key: Any = None,
                   stats: Mapping[str, IBAStats] | None = None, combine: str = "gated",
                   thresholds: float | Sequence[float] | None = None,
                   weights: Sequence[float] | None = None, inverse: bool = False,
                   beta: float = 10.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
                   alpha0: float = 5.0, sigma: float = 1.0, loss: str = "bce",
                   active_threshold: float = 0.01, unroll: int | bool | None = None,
                   chunk: int | None = None) -> Array:
    """Multi-layer IBA (Khakzar et al. 2021): bottlenecks at several depths, maps combined.

    Each layer l gets its own bottleneck, statistics and optimisation, exactly `iba` (or
    `inverse_iba`) at that layer alone: the reference (CheXplain-IBA) builds one IBA per
    denseblock, each estimated and optimised separately, and combines the resulting maps. So
    the bottlenecks are optimised separately here too, not jointly under one loss. The network
    prefix runs once for all layers (one pass tapping every layer); each layer's optimisation
    reruns only the stages after it. The per-layer maps (input size, bits) are combined by
    `combine_multilayer`:

        gated:  n_1 * [n_2 > t_2] * [n_3 > t_3]      n_i = map_i / ||map_i||_F
        sum:    sum_i w_i n_i

    Args:
      layer: the bottleneck stages, shallowest first (the first is the map "gated" keeps);
        default: the layers `stats` holds, in network order. The reference uses denseblock1,
        denseblock2, denseblock3 (`multilayer_default_layers`).
      stats: {layer: IBAStats}, one entry per layer.
      combine, thresholds, weights: see `combine_multilayer` (thresholds are for unit-norm
        maps of the input size; the default, None, is the reference's 0.006 at 224x224 carried
        to the input size: 0.006 * 224 / sqrt(H W)).
      inverse: use Inverse IBA's bottleneck at every layer.
      Others: as `iba` (beta, steps, ... apply to every layer).
    Returns:
      The combined map [B, H, W].
    """
    method = "multilayer_iba"
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError(f"{method} needs stats={{layer: IBAStats}}, one per bottleneck layer "
                         f"(e.g. denseblock1, denseblock2, denseblock3), each from iba_stats.")
    if isinstance(layer, str):
        raise ValueError(f"{method} takes several layers, e.g. layer=('denseblock1', "
                         f"'denseblock2', 'denseblock3'); for one layer use iba.")
    if layer is None:
        unknown = [name for name in stats if name not in model.stages]
        if unknown:
            raise ValueError(f"{method}: stats hold unknown layers {unknown} for {model.name!r}.")
        layers = tuple(sorted(stats, key=model.stages.index))
    else:
        layers = tuple(layer)
        missing = [name for name in layers if name not in stats]
        if missing:
            raise ValueError(f"{method}: no stats for layer(s) {missing}; stats has "
                             f"{sorted(stats)}. Estimate them with iba_stats(..., layer=...).")
    if len(set(layers)) != len(layers) or not layers:
        raise ValueError(f"{method}: layers must be distinct and non-empty, got {layers}.")
    _check_hparams(method, steps=steps, samples=samples, sigma=sigma, beta=beta)
    batch = x.shape[0]
    _, acts = _prepare(model, variables, x, layers, stats, method)
    model_loss, aux = _classifier_loss(model, targets, loss, batch, method)
    keys = _image_keys(key, batch)
    maps = []
    for j, name in enumerate(layers):
        suffix = functools.partial(lambda z, start: model.apply(variables, z, start=start),
                                   start=name)
        layer_keys = jax.vmap(lambda k: jax.random.fold_in(k, j))(keys)
        cap = _optimise(suffix, acts[name], aux, layer_keys, stats[name], model_loss,
                        inverse=inverse, beta=beta, steps=steps, lr=lr, samples=samples,
                        alpha0=alpha0, sigma=sigma, active_threshold=active_threshold,
                        unroll=unroll, chunk=chunk)
        maps.append(capacity_to_saliency(cap, x.shape[1:3]))
    return combine_multilayer(maps, combine=combine, thresholds=thresholds, weights=weights)
