"""IBA, Inverse IBA and Regression IBA: one bottleneck, optimised per image, as a map in bits.

    lambda = smooth(sigmoid(alpha)),   eps ~ N(mu, sigma^2)   (per feature, over data)
    IBA:          z = lambda * R + (1 - lambda) * eps,   minimise  model_loss + beta capacity
    Inverse IBA:  z = lambda * eps + (1 - lambda) * R,   minimise -model_loss + beta capacity

The saliency is the capacity summed over channels in bits, scaled by (h w)/(H W) so the total
number of bits is kept when the map is bilinearly resized to the input. The network up to the
bottleneck runs once per batch; each optimisation step reruns only the stages after it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax

from cxr_jax.attribution.common import check_images
from cxr_jax.attribution.iba.bottleneck import capacity_to_saliency
from cxr_jax.attribution.iba.optimise import (REGRESSION_LOSSES, Settings, classifier_loss,
                                              image_keys, optimise, regression_loss)
from cxr_jax.attribution.iba.stats import NEED, IBAStats, check_stats
from cxr_jax.attribution.registry import register
from cxr_jax.models import Model, check_stage

Array = jax.Array


def bottleneck_inputs(model: Model, variables: Any, x: Array, layers: Sequence[str],
                      stats: Mapping, method: str):
    """(logits, {layer: activation}) from one forward pass, with images, layers and the
    statistics of every layer checked."""
    check_images(model, x)
    for layer in layers:
        check_stage(model, layer)
    logits, acts = model.apply(variables, x, taps=tuple(layers))
    for layer in layers:
        if acts[layer].ndim != 4:
            raise ValueError(f"{method}: layer {layer!r} gives activations of shape "
                             f"{acts[layer].shape}; the bottleneck needs a spatial map "
                             f"[B, h, w, C].")
        check_stats(stats.get(layer), layer, acts[layer].shape[1:], method)
    return logits, acts


def _capacity(model, variables, x, targets, *, layer, key, stats, inverse, loss, target_score,
              settings: Settings, method: str) -> Array:
    if not isinstance(stats, IBAStats):
        check_stats(stats, layer or "", (), method)  # raises the right error
    layer = stats.layer if layer is None else layer
    batch = x.shape[0]
    logits, acts = bottleneck_inputs(model, variables, x, (layer,), {layer: stats}, method)
    if loss in REGRESSION_LOSSES:
        model_loss, aux = regression_loss(model, logits, targets, loss, target_score, batch,
                                          method)
    else:
        if target_score is not None:
            raise ValueError(f"{method}: target_score is for the regression losses "
                             f"{REGRESSION_LOSSES}, not loss={loss!r}.")
        model_loss, aux = classifier_loss(model, targets, loss, batch, method)
    suffix = lambda zs: (model.apply(variables, zs[0], start=layer),)
    return optimise(suffix, (acts[layer],), aux, (image_keys(key, batch),), (stats,),
                    model_loss, settings, inverse=inverse)[0]


def iba_capacity(model: Model, variables: Any, x: Array, targets: Any, *,
                 layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                 inverse: bool = False, loss: str = "bce", target_score: Any = None,
                 **settings) -> Array:
    """The per-feature capacity [B, h, w, C] (nats) of an optimised bottleneck at `layer`.

    `iba`, `inverse_iba` and `regression_iba` are this, summed over channels and resized
    (`capacity_to_saliency`); the per-channel capacity is what semantic attribution aggregates.
    Arguments as `iba`; `inverse` swaps signal and noise and maximises the model loss; `loss`
    may also be a regression loss ("mse" with `target_score`, or "push_up"; see
    `regression_iba`).
    """
    method = "inverse_iba" if inverse else "iba"
    return _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                     inverse=inverse, loss=loss, target_score=target_score,
                     settings=Settings.of(method, settings), method=method)


@register("iba", layer="iba", needs=NEED, task="classification",
          params=Settings)
def iba(model: Model, variables: Any, x: Array, targets: Any, *, layer: str | None = None,
        key: Any = None, stats: IBAStats | None = None, loss: str = "bce",
        **settings) -> Array:
    """Information Bottleneck Attribution (Schulz et al. 2020), a batch in one program.

        lambda = smooth(sigmoid(alpha)),  z = lambda R + (1 - lambda) eps,  eps ~ N(mu, sigma^2)
        minimise over alpha (per image, Adam):  model_loss(f(z)) + beta mean_{h,w,C} capacity
        saliency = sum_C capacity / ln 2 * (h w)/(H W), bilinearly resized to (H, W)

    As in the reference, the map is the capacity of the last step's lambda (the one the last
    gradient was taken at).

    Args:
      model: the model (a stage pipeline).
      variables: its variables.
      x: images [B, H, W, C].
      targets: the finding to explain per image, class indices [B] (a scalar broadcasts), or a
        callable logits [S, K] -> scores [S] applied row-wise.
      layer: the bottleneck stage; default `stats.layer`.
      key: PRNG key for the noise: one key (image i uses fold_in(key, i), step t then
        fold_in(., t)) or one key per image [B]; None uses jax.random.key(0).
      stats: `IBAStats` of `layer` (required), from `iba_stats` on images of this size, or
        supplied by `cxr_jax.attribution.prepare`.
      loss: the model loss. "bce" (default): sigmoid cross-entropy of the explained finding
        with label 1 - the CXR reference's choice for multi-label classifiers, which is what
        this library trains, and well defined for a single-logit head. "ce": softmax
        cross-entropy of the target class, the original IBA's choice for single-label
        (ImageNet-style) classifiers.
      **settings: the optimisation's hyperparameters (`optimise.Settings`): beta (10), steps
        (10), lr (1), samples (10), alpha0 (5), sigma (1), active_threshold (0.01), unroll,
        chunk.
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
                    inverse=False, loss=loss, target_score=None,
                    settings=Settings.of("iba", settings), method="iba")
    return capacity_to_saliency(cap, x.shape[1:3])


@register("inverse_iba", layer="iba", needs=NEED, task="classification",
          params=Settings)
def inverse_iba(model: Model, variables: Any, x: Array, targets: Any, *,
                layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                loss: str = "bce", **settings) -> Array:
    """Inverse IBA (Khakzar et al. 2021): finds *any* region with predictive information.

        z = lambda eps + (1 - lambda) R     (signal and noise swapped)
        minimise over alpha:  -model_loss(f(z)) + beta mean_{h,w,C} capacity

    Lambda now marks where noise replaces the signal, and the model term is maximised: the
    optimisation learns where destroying the features destroys the prediction. Capacity (the
    same formula) and saliency are as in `iba`, so the map is large where lambda is.

    Args:
      **settings: as `iba`, but beta defaults to 30, the reference's evaluation setting (a
        reference notebook uses 6).
      Others: as `iba`.
    Returns:
      Saliency [B, H, W] in bits per pixel.
    """
    cap = _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                    inverse=True, loss=loss, target_score=None,
                    settings=Settings.of("inverse_iba", settings, beta=30.0),
                    method="inverse_iba")
    return capacity_to_saliency(cap, x.shape[1:3])


# Studies explain regressors with loss="push_up" (keep what makes the score large).
@register("regression_iba", layer="iba", needs=NEED, task="regression", params=Settings,
          defaults={"loss": "push_up"})
def regression_iba(model: Model, variables: Any, x: Array, targets: Any = None, *,
                   layer: str | None = None, key: Any = None, stats: IBAStats | None = None,
                   loss: str = "mse", target_score: Any = None, inverse: bool = False,
                   **settings) -> Array:
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
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_iba: loss must be one of {REGRESSION_LOSSES}, got "
                         f"{loss!r} (for classifiers use iba with loss='bce' or 'ce').")
    cap = _capacity(model, variables, x, targets, layer=layer, key=key, stats=stats,
                    inverse=inverse, loss=loss, target_score=target_score,
                    settings=Settings.of("regression_iba", settings), method="regression_iba")
    return capacity_to_saliency(cap, x.shape[1:3])
