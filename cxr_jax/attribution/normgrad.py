"""NormGrad: the norm of the gradient of a virtual layer's parameters, location by location.

Insert a virtual identity layer after the activation A [B, h, w, C] at a layer; the gradient of
its parameters at location u is a simple product of A_u and g_u = dy_c/dA_u, and its norm is
the saliency at u (Rebuffi et al. 2020). Variants, by the virtual layer:

  conv1x1:   ||A_u||_2 ||g_u||_2            (the weight gradient g_u A_u^T, Frobenius norm)
  scaling:   ||A_u * g_u||_2                (a per-channel scale)
  bias:      ||g_u||_2                      (a per-channel bias)
  conv3x3:   ||P_u||_2 ||g_u||_2            (P_u: A's 3x3 neighbourhood of u, zero-padded)
  selective: ||max(0, A_u * g_u)||_2

Several layers combine as in the CXR seed (Ozer & Oksuz 2021): each layer's map is upsampled to
the input size and min-max normalised, then the maps are multiplied (optionally a weighted
geometric product prod_l m_l^{w_l}, or a weighted sum sum_l w_l m_l). All layers' activations
and gradients come from one forward and one backward pass (`common.layers_and_grads`).

Example:
  >>> fn = cxr_jax.attribution.get("normgrad")
  >>> one = fn(model, variables, x, targets, layer="layer4", variant="scaling")
  >>> multi = fn(model, variables, x, targets,
  ...            layer=("layer2.0", "layer3.0", "layer4.0", "layer4.2"))
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cxr_jax.attribution.registry import register
from cxr_jax.attribution.common import (check_images, check_spatial, layers_and_grads,
                                        resolve_layer, score_fn)
from cxr_jax.attribution.postprocess import normalize_minmax, upsample

Array = jax.Array

VARIANTS = ("conv1x1", "scaling", "bias", "conv3x3", "selective")
COMBINES = ("product", "sum")


def _norm(v: Array, axis=-1) -> Array:
    """Euclidean norm with a zero-safe square root (value 0 and gradient 0 at v = 0)."""
    sq = jnp.sum(v * v, axis=axis)
    ok = sq > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def normgrad_map(a: Array, g: Array, variant: str = "conv1x1") -> Array:
    """Per-location NormGrad map of one layer: A, g [B, h, w, C] -> [B, h, w] (not upsampled).

    See the module docstring for the five formulas. conv3x3's neighbourhood norm is
    ||P_u||^2 = sum over the 3x3 window around u of ||A_v||^2, zero outside the map (the
    unfolding of a 3x3 convolution with padding 1).
    """
    a = a.astype(jnp.float32)
    g = g.astype(jnp.float32)
    if variant == "conv1x1":
        return _norm(a) * _norm(g)
    if variant == "scaling":
        return _norm(a * g)
    if variant == "bias":
        return _norm(g)
    if variant == "selective":
        return _norm(jax.nn.relu(a * g))
    if variant == "conv3x3":
        sq = jnp.sum(a * a, axis=-1)  # [B, h, w]
        window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 3, 3), (1, 1, 1),
                                       ((0, 0), (1, 1), (1, 1)))
        ok = window > 0
        patch = jnp.where(ok, jnp.sqrt(jnp.where(ok, window, 1.0)), 0.0)
        return patch * _norm(g)
    raise ValueError(f"Unknown NormGrad variant {variant!r}; use one of {', '.join(VARIANTS)}.")


def combine_maps(maps: Array, weights: Sequence[float] | None = None,
                 combine: str = "product") -> Array:
    """Combines per-layer maps already at input size: [L, B, H, W] -> [B, H, W].

    Each map is min-max normalised (guarded: a constant map becomes zeros), then
    "product": prod_l m_l^{w_l} (w_l = 1 by default: the plain product);
    "sum": sum_l w_l m_l (w_l = 1/L by default: the mean).

    Args:
      maps: [L, B, H, W] raw per-layer maps.
      weights: L non-negative weights, or None.
      combine: "product" | "sum".
    Returns:
      [B, H, W] float32 in [0, 1] (for weights summing to at most 1 with "sum").
    """
    n_layers = maps.shape[0]
    if combine not in COMBINES:
        raise ValueError(f"Unknown combination {combine!r}; use one of {', '.join(COMBINES)}.")
    if weights is None:
        w = jnp.full((n_layers,), 1.0 if combine == "product" else 1.0 / n_layers)
    else:
        w = jnp.asarray(weights, jnp.float32)
        if w.shape != (n_layers,):
            raise ValueError(f"Expected {n_layers} layer weights, got shape {w.shape}.")
    w = w[:, None, None, None]
    norm = normalize_minmax(maps)
    if combine == "sum":
        return jnp.sum(w * norm, axis=0)
    # m ** w with 0 ** 0 = 1 (a zero-weight layer is ignored) and no NaN at m = 0.
    pos = norm > 0
    powered = jnp.where(pos, jnp.exp(w * jnp.log(jnp.where(pos, norm, 1.0))),
                        jnp.where(w > 0, 0.0, 1.0))
    return jnp.prod(powered, axis=0)


@register("normgrad", layer="explain")
def normgrad(model, variables, x, targets, *, layer: str | Sequence[str] | None = None,
             key=None, variant: str = "conv1x1", weights: Sequence[float] | None = None,
             combine: str = "product"):
    """NormGrad saliency at one layer, or several layers combined.

    One layer: the per-location map of `variant` (see `normgrad_map`) upsampled bilinearly to
    the input size, raw. Several layers (a sequence of names): each upsampled map min-max
    normalised, then combined by `combine_maps` (product by default) — in [0, 1].

    Args:
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      targets: class per image [B] (or scalar), or a callable logits [B, K] -> scores [B].
      layer: a stage name, a sequence of distinct stage names, or None (the model's
        `layers.explain`: DenseNet relu5, ResNet layer4). The seed's multi-layer ResNet set
        is ("layer2.0", "layer3.0", "layer4.0", "layer4.2").
      key: unused.
      variant: "conv1x1" (default; TorchRay's form) | "scaling" | "bias" | "conv3x3" |
        "selective".
      weights: per-layer weights for the combination (multi-layer only).
      combine: "product" (weighted geometric product) | "sum" (weighted sum).
    Returns:
      [B, H, W] float32.
    """
    check_images(model, x)
    score = score_fn(model, targets, x.shape[0])
    if variant not in VARIANTS:
        raise ValueError(f"Unknown NormGrad variant {variant!r}; use one of {', '.join(VARIANTS)}.")
    single = layer is None or isinstance(layer, str)
    layers = (resolve_layer(model, layer),) if single else tuple(
        resolve_layer(model, name) for name in layer)
    if not layers:
        raise ValueError("layer must name at least one stage.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Layers must be distinct, got {layers}.")
    if single and weights is not None:
        raise ValueError("weights apply only when several layers are combined.")
    acts, grads, _ = layers_and_grads(model, variables, x, score, layers)
    size = x.shape[1:3]
    maps = []
    for name in layers:  # a handful of layers, not a hot loop
        check_spatial(acts[name], name)
        maps.append(upsample(normgrad_map(acts[name], grads[name], variant), size))
    if single:
        return maps[0]
    return combine_maps(jnp.stack(maps), weights, combine)
