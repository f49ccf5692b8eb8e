"""The gradient-weighted CAM family: Grad-CAM, Grad-CAM++, Guided Grad-CAM.

Each needs the activation A [B, h, w, C] at a layer and its gradient g = dy_c/dA. The prefix of
the network up to the layer runs forward once; only the suffix after it is differentiated
(`common.layer_and_grad`), so a CAM costs about one forward pass plus a backward pass through
the (small) head. Maps are upsampled bilinearly to the input size and returned raw (not
normalised). Default layer: the one the model declares for explanation (`model.layers.explain`:
DenseNet `relu5`, the rectified final feature map; ResNet `layer4`); any stage can be named.

Example:
  >>> cams = cxr_jax.attribution.get("gradcam")(model, variables, x, targets, layer="denseblock4")

References:
  Selvaraju et al. 2017 (Grad-CAM, Guided Grad-CAM); Chattopadhay et al. 2018 (Grad-CAM++).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cxr_jax.attribution.registry import register
from cxr_jax.attribution.common import (check_images, check_spatial, layer_and_grad,
                                        resolve_layer, score_fn)
from cxr_jax.attribution.gradients import guided_model, reduce_channels
from cxr_jax.attribution.postprocess import upsample

Array = jax.Array


def _layer_inputs(model, variables, x, targets, layer):
    check_images(model, x)
    layer = resolve_layer(model, layer)
    score = score_fn(model, targets, x.shape[0])
    return layer, score


def gradcam_weights(g: Array) -> Array:
    """Grad-CAM channel weights w_k = mean_ij g_ijk: [B, h, w, C] -> [B, C]."""
    return jnp.mean(g.astype(jnp.float32), axis=(1, 2))


def gradcam_plus_plus_weights(a: Array, g: Array, eps: float = 1e-6) -> Array:
    """Grad-CAM++ channel weights, in pytorch-grad-cam's form: [B, h, w, C] x2 -> [B, C].

    alpha_ijk = g^2 / (2 g^2 + (sum_ij A_ijk) g^3 + eps), set to 0 where g = 0 (and where the
    denominator vanishes); w_k = sum_ij alpha_ijk ReLU(g_ijk). The exp(score) factor of the
    paper cancels; alpha is not renormalised by its spatial sum (tf-keras-vis does that).
    """
    a = a.astype(jnp.float32)
    g = g.astype(jnp.float32)
    g2 = g * g
    denom = 2.0 * g2 + jnp.sum(a, axis=(1, 2), keepdims=True) * g2 * g + eps
    ok = (g != 0) & (denom != 0) & jnp.isfinite(denom)
    alpha = jnp.where(ok, g2 / jnp.where(ok, denom, 1.0), 0.0)
    return jnp.sum(alpha * jax.nn.relu(g), axis=(1, 2))


def weighted_cam(a: Array, w: Array, size, relu: bool = True) -> Array:
    """map = ReLU(sum_k w_k A_k) upsampled to `size`: A [B, h, w, C], w [B, C] -> [B, H, W]."""
    cam = jnp.einsum("bhwc,bc->bhw", a.astype(jnp.float32), w.astype(jnp.float32))
    if relu:
        cam = jax.nn.relu(cam)
    return upsample(cam, size)


@register("gradcam", layer="explain")
def gradcam(model, variables, x, targets, *, layer=None, key=None, relu: bool = True):
    """Grad-CAM: activations weighted by their spatially averaged gradients.

    w_k = (1/hw) sum_ij dy_c/dA_ijk;  map = ReLU(sum_k w_k A_k), bilinearly upsampled to
    the input size. Cost: one forward pass plus the backward pass of the stages after `layer`.

    Args:
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      targets: class per image [B] (or scalar), or a callable logits [B, K] -> scores [B].
      layer: stage to explain (default: the model's `layers.explain`, DenseNet relu5, ResNet
        layer4; aliases such as "stride16" are resolved by the model).
      key: unused.
      relu: apply the final ReLU (False keeps negative evidence, as Captum's default).
    Returns:
      [B, H, W] float32, raw.
    """
    layer, score = _layer_inputs(model, variables, x, targets, layer)
    a, g, _ = layer_and_grad(model, variables, x, score, layer)
    check_spatial(a, layer)
    return weighted_cam(a, gradcam_weights(g), x.shape[1:3], relu)


@register("gradcam_plus_plus", layer="explain")
def gradcam_plus_plus(model, variables, x, targets, *, layer=None, key=None,
                      eps: float = 1e-6):
    """Grad-CAM++ in pytorch-grad-cam's form (see `gradcam_plus_plus_weights`).

    alpha = g^2 / (2 g^2 + sum_ij(A) g^3 + eps), 0 where g = 0; w_k = sum_ij alpha ReLU(g);
    map = ReLU(sum_k w_k A_k), upsampled bilinearly. A zero gradient gives a zero map, never
    NaN. Cost as Grad-CAM.

    Args:
      model, variables, x, targets, layer, key: as `gradcam`.
      eps: the denominator's stabiliser (1e-6, as pytorch-grad-cam).
    Returns:
      [B, H, W] float32, raw.
    """
    layer, score = _layer_inputs(model, variables, x, targets, layer)
    a, g, _ = layer_and_grad(model, variables, x, score, layer)
    check_spatial(a, layer)
    return weighted_cam(a, gradcam_plus_plus_weights(a, g, eps), x.shape[1:3])


@register("guided_gradcam", layer="explain")
def guided_gradcam(model, variables, x, targets, *, layer=None, key=None,
                   reduce: str = "max_abs"):
    """Guided Grad-CAM: the upsampled Grad-CAM map times the guided-backprop map.

    map = Up(ReLU(sum_k w_k A_k)) * R_c(dy_c/dx through guided ReLUs), with R_c the channel
    reduction (default max_c |.|; the CAM is non-negative, so this equals reducing
    cam * guided-gradient). One shared forward pass of the prefix: its activation feeds both the
    plain suffix (for the CAM gradient) and the guided suffix, whose layer gradient is pulled
    back through the guided prefix.

    Args:
      model: a model with `with_guided_relu()`.
      variables, x, targets, layer, key: as `gradcam`.
      reduce: channel reduction of the guided gradient.
    Returns:
      [B, H, W] float32, raw.
    """
    layer, score = _layer_inputs(model, variables, x, targets, layer)
    gm = guided_model(model)

    def prefix(x):
        return gm.apply(variables, x, taps=(layer,))[1][layer]

    def head_grad(m, a):
        return jax.grad(lambda a: jnp.sum(score(m.apply(variables, a, start=layer))
                                          .astype(jnp.float32)))(a)

    a, pull_back = jax.vjp(prefix, x)  # guided ReLUs compute plain ReLUs forward
    check_spatial(a, layer)
    cam = weighted_cam(a, gradcam_weights(head_grad(model, a)), x.shape[1:3])
    (gx,) = pull_back(head_grad(gm, a).astype(a.dtype))
    return cam * reduce_channels(gx, reduce)
