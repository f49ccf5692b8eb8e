"""IBA's feature statistics: mean, std and active rate of one layer over a data set.

The bottleneck replaces features by noise drawn from their distribution over data, so it needs
that distribution's first two moments per feature (and how often each feature is non-zero).
They are estimated once per (model, layer, input size), saved and loaded as .npz, and supplied
to the methods by `cxr_jax.attribution.prepare` (this module's `NEED` says how).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.attribution.registry import Need
from cxr_jax.common.files import atomic_path
from cxr_jax.models import Model, check_stage

Array = jax.Array

MIN_STD = 0.01  # the reference's floor on the feature std
RECOMMENDED_SAMPLES = 1000  # fewer samples than this draws a warning (the reference: 10,000 ideal)
_FORMAT = "cxr_jax.iba_stats/1"


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
    check_stage(model, layer)
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
        total = merge_moments(total, _moments_of(model, layer, variables, x, i))
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


def _moments_of(model: Model, layer: str, variables: Any, x: Array, i: int) -> Moments:
    """One batch's moments on the host in float64, checked for a spatial, finite activation."""
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
    return batch


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
    """Writes `stats` to `path` as a numpy .npz archive (exactly at `path`, no suffix added),
    atomically."""
    if not isinstance(stats, IBAStats):
        raise ValueError(f"save_iba_stats expects IBAStats, got {type(stats).__name__}.")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
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


def check_stats(stats: Any, layer: str, feature_shape: tuple, method: str) -> IBAStats:
    """`stats` if they are `IBAStats` of `layer` with this feature shape, else a ValueError
    that says how to get the right ones."""
    if stats is None:
        raise ValueError(
            f"{method} needs the feature statistics of its bottleneck layer: estimate them once "
            f"with cxr_jax.attribution.iba_stats(model, variables, batches, layer=...) and pass "
            f"stats=..., or get a ready method from cxr_jax.attribution.prepare.")
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


def _estimate(model: Model, variables: Any, batches: Iterable[Any], layer: str) -> IBAStats:
    return iba_stats(model, variables, batches, layer=layer)


# What the IBA family declares it needs (see cxr_jax.attribution.registry.Need).
NEED = Need(keyword="stats", what="IBA feature statistics", estimate=_estimate,
            save=save_iba_stats, load=load_iba_stats, file="iba_stats_{layer}.npz")
