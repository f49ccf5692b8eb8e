"""Semantic attribution: one prediction explained by the concepts of the units that carry it.

Network dissection (`cxr_jax.semantics.dissect`) names what the units of a layer detect; an
attribution method says how much each unit contributed to one prediction. Put together, a
prediction reads as "62% lungs, 25% cardiomediastinum, 13% units no concept explains". The
published CXR work states only the idea (Khakzar et al. 2021); this module is our design.

For image b, target t and a layer with activations A [h, w, U] (U units, i.e. channels):

  1. a contribution c_k per unit (`unit_contributions`), by one of two estimators:

     "gradcam"  c_k = w_k * sum_ij A_k[ij],   w_k = (1/hw) sum_ij d y_t / d A_k[ij]
                (the Grad-CAM channel weight times the unit's activation mass). Signed: a
                positive c_k is evidence for the target, a negative one evidence against it.
                Identity: sum_k c_k = sum_ij sum_k w_k A_k[ij], the total of the Grad-CAM map
                before its ReLU at the layer's resolution (bilinear upsampling by an integer
                factor s keeps totals times s^2, so the upsampled map's total is
                (H W)/(h w) sum_k c_k). Behind a global average pool and a linear head,
                y_t = sum_k c_k + bias exactly (CAM's decomposition).
     "capacity" c_k = sum_ij capacity[ij, k], the information (nats) an optimised IBA
                bottleneck at the layer lets through unit k (`iba_capacity`). Non-negative;
                sum_k c_k is the bottleneck's total capacity, i.e. ln 2 times the total of the
                IBA map in bits. Needs the IBA statistics of the layer and a PRNG key.

  2. the sum over the units carrying each label (`semantic_attribution`):

       S_c = sum_{k : label_k = c} c_k  for c = 0..C-1,   S_C = sum_{k : label_k = -1} c_k,

     the last entry, "unlabelled", collecting every unit the dissection gave no concept (no IoU
     above its threshold). The C + 1 entries add up to sum_k c_k: nothing is dropped, so a large
     "unlabelled" share says the prediction rests on units dissection cannot name.

  3. optionally, shares (`normalise`):
       None    the raw sums (Grad-CAM: units of the target score; IBA: nats);
       "sum"   S / sum_c S_c, shares adding up to 1 (signed for Grad-CAM: a share may be
               negative or exceed 1 when evidence cancels; NaN when the total is 0);
       "abs"   S / sum_c |S_c|, so the |shares| add up to 1 (NaN when every S_c is 0). Equal
               to "sum" whenever no concept's sum is negative (always for IBA). The default of
               `explain_concepts`.

Labels are one concept per unit (the dissection's argmax over IoU); a unit whose IoU exceeds
the threshold for several concepts counts for its best one only.

Everything array-valued is batched (no Python loop over images or units) and pure:
`unit_contributions` and `semantic_attribution` are jittable, the caller jits them.
`explain_concepts` is a driver in the manner of `dissect`: it validates against a `Dissection`,
runs one jitted program and returns host arrays and names for reports
(`cxr_jax.report.semantics.save_semantic_attribution` draws one image).

Example:
  >>> d = dissect(model, variables, batches, layer="denseblock4", concept_names=names)
  >>> e = explain_concepts(model, variables, x, targets, d)       # Grad-CAM estimator
  >>> dict(zip(e.names, e.concepts[0].round(2)))
  >>> save_semantic_attribution("b0.png", x[0], e.concepts[0], e.names, e.top_maps[0],
  ...                           e.top_labels[0], unit_thresholds=e.top_thresholds[0])

References:
  Khakzar et al. Towards Semantic Interpretation of Thoracic Disease and COVID-19 Diagnosis
  Models. MICCAI 2021.
  Bau, Zhou, Khosla, Oliva, Torralba. Network Dissection. CVPR 2017.
  Selvaraju et al. Grad-CAM. ICCV 2017.
  Schulz, Sixt, Tombari, Landgraf. Restricting the Flow: Information Bottlenecks for
  Attribution. ICLR 2020.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.attribution.cam import gradcam_weights
from cxr_jax.attribution.common import (check_images, check_spatial, layer_and_grad,
                                        resolve_layer, score_fn)
from cxr_jax.common.targets import concrete

__all__ = ["ConceptExplanation", "ESTIMATORS", "NORMALISATIONS", "UNLABELLED",
           "explain_concepts", "gradcam_contributions", "semantic_attribution",
           "unit_contributions"]

Array = jax.Array

ESTIMATORS = ("gradcam", "capacity")
NORMALISATIONS = (None, "sum", "abs")
UNLABELLED = "unlabelled"


# =========================================================================== per-unit estimates
def _check_estimator(estimator: Any) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; use one of {ESTIMATORS} "
                         f"('gradcam': channel weight x activation mass, signed; 'iba': "
                         f"per-unit capacity of an IBA bottleneck, needs stats=).")


def _check_iba_stats(stats: Any) -> None:
    if stats is None:
        raise ValueError("estimator='iba' needs the IBA feature statistics of the explained "
                         "layer: stats = cxr_jax.attribution.iba_stats(model, variables, "
                         "batches, layer=...), then pass stats=stats.")


def _layer(model, layer, estimator, stats) -> str:
    """The stage to explain: the caller's, else IBA's statistics' layer, else the model's."""
    if layer is None and estimator == "capacity" and stats is not None:
        layer = getattr(stats, "layer", None)
    return resolve_layer(model, layer)


def gradcam_contributions(a: Array, g: Array) -> Array:
    """c_k = w_k sum_ij A_k[ij] with w_k = mean_ij g_ijk: A, g [B, h, w, U] -> [B, U] (signed).

    sum_k c_k equals the total of the Grad-CAM map before its ReLU, sum_ij sum_k w_k A_k[ij].
    """
    return gradcam_weights(g) * jnp.sum(a.astype(jnp.float32), axis=(1, 2))


def unit_contributions(model, variables, x: Array, targets: Any, *, layer: str | None = None,
                       estimator: str = "gradcam", stats: Any = None, key: Any = None,
                       **iba_settings) -> Array:
    """Each unit's contribution to each image's target score at `layer`: [B, U].

        "gradcam":  c_k = (1/hw) sum_ij dy_t/dA_k[ij]  *  sum_ij A_k[ij]       (signed)
        "capacity":      c_k = sum_ij capacity_k[ij]  (nats, >= 0; `iba_capacity`)

    With "gradcam", sum_k c_k is the total of the Grad-CAM map before its ReLU at the layer's
    resolution (module docstring). Pure and jittable; the prefix of the network runs once.

    Args:
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      targets: class index per image [B] (a scalar broadcasts), or a callable
        logits [B, K] -> scores [B] (for "capacity", applied row-wise as `iba` does).
      layer: the stage whose units are explained (a stage or a model alias); None: for "capacity"
        the layer of `stats`, otherwise the model's declared explain layer. It must be the
        dissected layer for the labels to apply.
      estimator: "gradcam" or "capacity".
      stats: `IBAStats` of `layer` (required for "capacity"; ignored by "gradcam").
      key: PRNG key of the IBA noise (one key, or one per image; None: jax.random.key(0));
        ignored by "gradcam".
      **iba_settings: passed to `iba_capacity` ("capacity" only): beta, steps, lr, samples, alpha0,
        sigma, active_threshold, unroll, chunk, loss, inverse, target_score.
    Returns:
      [B, U] float32.
    Raises:
      ValueError: an unknown estimator, "capacity" without stats, IBA settings given to "gradcam",
        an unknown or non-spatial layer, bad images or targets.
    """
    _check_estimator(estimator)
    if estimator == "gradcam":
        if iba_settings:
            raise ValueError(f"estimator='gradcam' takes no IBA settings, got "
                             f"{sorted(iba_settings)}; pass them with estimator='iba'.")
        check_images(model, x)
        layer = _layer(model, layer, estimator, stats)
        score = score_fn(model, targets, x.shape[0])
        a, g, _ = layer_and_grad(model, variables, x, score, layer)
        check_spatial(a, layer)
        return gradcam_contributions(a, g)
    _check_iba_stats(stats)
    from cxr_jax.attribution.iba import iba_capacity  # the IBA package is only needed here
    layer = _layer(model, layer, estimator, stats)
    cap = iba_capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                       **iba_settings)
    return jnp.sum(cap.astype(jnp.float32), axis=(1, 2))


# =========================================================================== concept sums
def _check_labels(labels: Any, units: int | None, num_concepts: int) -> Array:
    """Labels as an int32 array [U], checked (values when concrete)."""
    if not isinstance(num_concepts, (int, np.integer)) or num_concepts < 0:
        raise ValueError(f"num_concepts must be an int >= 0, got {num_concepts!r}.")
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one concept index per unit, shape [U], got shape "
                         f"{labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer concept indices (-1 = unlabelled), got "
                         f"dtype {labels.dtype}.")
    if units is not None and labels.shape[0] != units:
        raise ValueError(f"{labels.shape[0]} labels for {units} units; give one label per unit "
                         f"of the explained layer (Dissection.labels of that same layer).")
    value = concrete(labels)
    if value is not None and value.size:
        bad = (value < -1) | (value >= num_concepts)
        if bad.any():
            raise ValueError(f"labels must be -1 (unlabelled) or concept indices in "
                             f"[0, {num_concepts}); got {sorted(set(value[bad].tolist()))[:10]}.")
    return labels.astype(jnp.int32)


def _normalise(sums: Array, normalise: str | None) -> Array:
    if normalise is None:
        return sums
    total = (jnp.sum(sums, axis=-1, keepdims=True) if normalise == "sum"
             else jnp.sum(jnp.abs(sums), axis=-1, keepdims=True))
    return jnp.where(total != 0, sums / jnp.where(total != 0, total, 1.0), jnp.nan)


def semantic_attribution(contributions: Array, labels: Any, num_concepts: int, *,
                         normalise: str | None = None) -> Array:
    """Per-unit contributions summed by unit label: [B, U] -> [B, C + 1] (last: unlabelled).

        S_c = sum_{k : labels_k = c} c_k,   S_C = sum_{k : labels_k = -1} c_k

    An exact segment sum (no matrix product, so no reduced-precision matmul on accelerators);
    the entries add up to sum_k c_k. Pure and jittable.

    Args:
      contributions: [B, U] (or [U] for one image), e.g. from `unit_contributions`.
      labels: [U] int concept index per unit, -1 = unlabelled (`Dissection.labels`).
      num_concepts: C, the number of concepts the labels index (`Dissection.iou.shape[1]`).
      normalise: None (raw sums), "sum" (divide by sum_c S_c) or "abs" (divide by
        sum_c |S_c|); NaN where the divisor is 0.
    Returns:
      [B, C + 1] float32 ([C + 1] for a [U] input).
    Raises:
      ValueError: labels not one integer per unit, outside [-1, C) (when concrete), or an
        unknown normalisation.
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}.")
    c = jnp.asarray(contributions, jnp.float32)
    if c.ndim not in (1, 2):
        raise ValueError(f"contributions must be [B, U] (or [U]), got shape {c.shape}.")
    labels = _check_labels(labels, c.shape[-1], num_concepts)
    segments = jnp.where(labels < 0, num_concepts, labels)
    sums = jax.ops.segment_sum(jnp.moveaxis(c, -1, 0), segments,
                               num_segments=num_concepts + 1)  # [C + 1(, B)]
    return _normalise(jnp.moveaxis(sums, 0, -1), normalise)


# =========================================================================== the driver
class ConceptExplanation(NamedTuple):
    """Semantic attribution of a batch of predictions (host arrays).

    Attributes:
      concepts: [B, C + 1] float32 concept vector per image, normalised as `normalise` says;
        the last entry is "unlabelled".
      names: the C concept names then "unlabelled".
      contributions: [B, U] float32 raw per-unit contributions.
      top_units: [B, k] int32 the k units of largest |contribution| per image, largest first.
      top_labels: [B, k] int32 their labels (-1 = unlabelled; index `names` with it, -1 being
        "unlabelled").
      top_contributions: [B, k] float32 their raw contributions.
      top_maps: [B, k, h, w] float32 their activations at the layer.
      top_thresholds: [B, k] float32 their dissection thresholds T_k (mask = Up(map) > T_k).
      layer: the explained stage.
      estimator: "gradcam" or "capacity".
      normalise: the normalisation of `concepts`.
    """

    concepts: np.ndarray
    names: tuple[str, ...]
    contributions: np.ndarray
    top_units: np.ndarray
    top_labels: np.ndarray
    top_contributions: np.ndarray
    top_maps: np.ndarray
    top_thresholds: np.ndarray
    layer: str
    estimator: str
    normalise: str | None

    def unit_names(self, b: int) -> tuple[str, ...]:
        """The concept name of each top unit of image b ("unlabelled" where -1)."""
        return tuple(self.names[int(k)] for k in self.top_labels[b])


@functools.partial(jax.jit, static_argnames=("model", "layer", "estimator", "num_concepts",
                                             "normalise", "top_k", "score", "settings"))
def _explain_arrays(variables, x, targets, labels, thresholds, stats, key, *, model, layer,
                    estimator, num_concepts, normalise, top_k, score, settings):
    contrib = unit_contributions(model, variables, x, score if score is not None else targets,
                                 layer=layer, estimator=estimator, stats=stats, key=key,
                                 **dict(settings))
    concepts = semantic_attribution(contrib, labels, num_concepts, normalise=normalise)
    _, acts = model.apply(variables, x, taps=(layer,))  # shared with the estimator under jit
    a = acts[layer].astype(jnp.float32)
    _, top = jax.lax.top_k(jnp.abs(contrib), top_k)  # [B, k]
    maps = jnp.take_along_axis(a, top[:, None, None, :], axis=-1)  # [B, h, w, k]
    return (concepts, contrib, top, labels[top], jnp.take_along_axis(contrib, top, axis=-1),
            jnp.moveaxis(maps, -1, 1), thresholds[top])


def explain_concepts(model, variables, x: Array, targets: Any, dissection, *,
                     estimator: str = "gradcam", layer: str | None = None,
                     normalise: str | None = "abs", top_k: int = 3, stats: Any = None,
                     key: Any = None, **iba_settings) -> ConceptExplanation:
    """Explains each image's prediction by concept: concept vector, per-unit contributions and
    the top units (for `cxr_jax.report.semantics.save_semantic_attribution`).

    Runs `unit_contributions` and `semantic_attribution` with the dissection's labels as one
    jitted program (compiled once per model, layer, estimator and batch shape).

    Args:
      model, variables, x, targets: as `unit_contributions`.
      dissection: a `Dissection` of `layer` (its labels, thresholds and concept names are used).
      estimator: "gradcam" (default) or "capacity".
      layer: the explained stage; None: the dissection's layer (or, when it recorded none, as
        `unit_contributions`). It must be the dissected layer.
      normalise: None, "sum" or "abs" (default; see `semantic_attribution`).
      top_k: units kept per image for the figure (clipped to U).
      stats, key, **iba_settings: for estimator="capacity", as `unit_contributions`; the settings
        are static under the jit, so give them as Python numbers.
    Returns:
      A `ConceptExplanation`.
    Raises:
      ValueError: a layer other than the dissected one, a dissection whose number of units
        differs from the layer's, and everything `unit_contributions` and
        `semantic_attribution` raise.
    """
    _check_estimator(estimator)
    if estimator == "capacity":
        _check_iba_stats(stats)
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}.")
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    dissected = getattr(dissection, "layer", None)
    if layer is None:
        layer = dissected
    layer = _layer(model, layer, estimator, stats)
    if dissected is not None and resolve_layer(model, dissected) != layer:
        raise ValueError(f"the dissection is of layer {dissected!r} but layer={layer!r} is "
                         f"explained; unit labels only apply to the layer they were found at.")
    labels = np.asarray(dissection.labels)
    num_concepts = int(np.asarray(dissection.iou).shape[1])
    check_images(model, x)
    shape = jax.eval_shape(lambda v, x: model.apply(v, x, taps=(layer,))[1][layer],
                           variables, x).shape
    check_spatial(jax.ShapeDtypeStruct(shape, jnp.float32), layer)
    _check_labels(labels, shape[-1], num_concepts)
    thresholds = np.asarray(dissection.thresholds, np.float32)
    if thresholds.shape != labels.shape:
        raise ValueError(f"the dissection has {thresholds.shape[0]} thresholds for "
                         f"{labels.shape[0]} labels.")
    if estimator == "gradcam" and iba_settings:
        raise ValueError(f"estimator='gradcam' takes no IBA settings, got "
                         f"{sorted(iba_settings)}; pass them with estimator='iba'.")
    names = dissection.concept_names
    names = (tuple(str(n) for n in names) if names is not None
             else tuple(f"concept {c}" for c in range(num_concepts)))
    score = targets if callable(targets) else None
    out = _explain_arrays(
        variables, jnp.asarray(x), None if score is not None else jnp.asarray(targets),
        jnp.asarray(labels, jnp.int32), jnp.asarray(thresholds),
        stats if estimator == "capacity" else None, key if estimator == "capacity" else None,
        model=model, layer=layer, estimator=estimator, num_concepts=num_concepts,
        normalise=normalise, top_k=int(min(top_k, shape[-1])), score=score,
        settings=tuple(sorted(iba_settings.items())))
    concepts, contrib, top, top_labels, top_c, maps, top_t = (np.asarray(o) for o in out)
    return ConceptExplanation(
        concepts=concepts, names=names + (UNLABELLED,), contributions=contrib,
        top_units=top.astype(np.int32), top_labels=top_labels.astype(np.int32),
        top_contributions=top_c, top_maps=maps, top_thresholds=top_t, layer=layer,
        estimator=estimator, normalise=normalise)
