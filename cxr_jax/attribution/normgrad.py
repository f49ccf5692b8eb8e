"""NormGrad: the norm of the gradient of a virtual layer's parameters, location by location.

Insert a virtual identity layer after the activation A [B, h, w, C] at a layer; the gradient of
its parameters at location u is a simple product of A_u and g_u = dy_c/dA_u, and its norm is
the saliency at u (Rebuffi et al. 2020). Variants, by the virtual layer:

  conv1x1:   ||A_u||_2 ||g_u||_2            (the weight gradient g_u A_u^T, Frobenius norm)
  scaling:   ||A_u * g_u||_2                (a per-channel scale)
  bias:      ||g_u||_2                      (a per-channel bias)
  conv3x3:   ||P_u||_2 ||g_u||_2            (P_u: A's 3x3 neighbourhood of u, zero-padded)
  selective: ||max(0, A_u * g_u)||_2

Where the virtual layer sits. `layer` names a stage (a ResNet unit such as "layer4.1": the
unit's output, after the residual add and the ReLU) or a point inside a unit
(`Model.points`, e.g. "layer4.1.conv2": the convolution's output before its batch norm, hence
before the add and the ReLU). At a point, A and g are the convolution module's output and its
gradient, what a PyTorch hook on the `nn.Conv2d` sees (TorchRay's `norm_grad` with
`saliency_layer="layer4.1.conv2"`), so all five variants are defined there; the bias variant
||g_u|| is then the gradient of that convolution's bias (had it one), and it is not flat even in
the last unit, where the stage output's is (only global pooling follows it, so g is the same at
every location). Pre-BN rather than post-BN because that is the hook point; in eval mode the two
differ by a per-channel factor (BN's scale / sqrt(var + eps)) in A and its inverse in g.

One more variant exists only at a point, the convolution's own weight gradient (TorchRay's
`norm_grad_proper`), with no virtual layer:

  weight:    ||P_u||_2 ||g_u||_2            (||g_u P_u^T||_F; P_u: the convolution's input
                                             unfolded as it unfolds it: its kernel, stride and
                                             padding; a 1x1 convolution's P_u is its input at u)

Summed over locations, g_u P_u^T is exactly the gradient of the convolution's kernel.

Several layers combine as in the CXR seed (Ozer & Oksuz 2021): each layer's map is upsampled to
the input size and min-max normalised, then the maps are multiplied (optionally a weighted
geometric product prod_l m_l^{w_l}, or a weighted sum sum_l w_l m_l). All layers' activations
and gradients come from one forward and one backward pass (`common.layers_and_grads`, which
puts additive zero edits at stages and points alike). The layers the reference combines are unit outputs,
not convolutions: Rebuffi et al.'s ResNet-50 code hooks the modules layer2.0, layer3.0, layer4.0
and layer4 (after the first, second and third downsampling and before the pooling), the CXR seed
uses layer2.0, layer3.0, layer4.0, layer4.2 on ResNet-34 — pass those stage names. No published
combination of convolutions is known; `layer="convs"` combines every convolution of the model's
`layers.explain` stage (ResNet layer4: each unit's conv1, conv2 [, conv3] and downsample.0) and
`layer="<stage>.convs"` those of another stage ("layer3.convs").

Example:
  >>> fn = cxr_jax.attribution.get("normgrad")
  >>> one = fn(model, variables, x, targets, layer="layer4", variant="scaling")
  >>> multi = fn(model, variables, x, targets,
  ...            layer=("layer2.0", "layer3.0", "layer4.0", "layer4.2"))
  >>> inner = fn(model, variables, x, targets, layer="layer4.1.conv2", variant="bias")
  >>> exact = fn(model, variables, x, targets, layer="layer4.1.conv2", variant="weight")
  >>> convs = fn(model, variables, x, targets, layer="convs")
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
POINT_VARIANTS = ("weight",)  # defined only at a point (a convolution inside a unit)
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


def weight_map(a_in: Array, g: Array, kernel: int = 1, stride: int = 1,
               padding: int = 0) -> Array:
    """A convolution's per-location weight-gradient norm: input [B, H, W, Cin] and output
    gradient [B, h, w, Cout] -> [B, h, w].

    ||g_u P_u^T||_F = ||P_u||_2 ||g_u||_2, where P_u is the kernel x kernel x Cin patch of the
    (zero-padded) input that the convolution reads for output location u (im2col), so
    ||P_u||^2 is a strided window sum of ||A_v||^2. Summed over u, g_u P_u^T is the kernel's
    gradient.
    """
    a_in = a_in.astype(jnp.float32)
    g = g.astype(jnp.float32)
    sq = jnp.sum(a_in * a_in, axis=-1)
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, kernel, kernel),
                                   (1, stride, stride), ((0, 0), (padding, padding),
                                                         (padding, padding)))
    if window.shape != g.shape[:3]:
        raise ValueError(f"Input {a_in.shape} unfolded by a {kernel}x{kernel} window (stride "
                         f"{stride}, padding {padding}) gives {window.shape}, not the output "
                         f"gradient's {g.shape[:3]}.")
    ok = window > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, window, 1.0)), 0.0) * _norm(g)


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


def _points(model) -> tuple[str, ...]:
    return tuple(getattr(model, "points", ()))


def _stage_points(model, stage: str) -> tuple[str, ...]:
    """The points inside the units of `stage` (e.g. "layer4"), in forward order."""
    layers = getattr(model, "layers", None)
    units = dict(layers.units) if layers is not None else {}
    if stage not in units:
        raise ValueError(
            f"'{stage}.convs' names no stage made of units of model "
            f"{getattr(model, 'name', model)!r}; stages with units: {', '.join(units) or 'none'}.")
    inside = tuple(p for u in units[stage] for p in _points(model) if p.startswith(u + "."))
    if not inside:
        raise ValueError(f"The units of {stage!r} declare no convolutions (points).")
    return inside


def _expand(model, layer) -> tuple[tuple[str, ...], bool]:
    """(layer names, single?) for a layer argument: None, a name, "convs", "<stage>.convs" or
    a sequence of names. Stage names and aliases are resolved; points are kept."""
    if isinstance(layer, str) and (layer == "convs" or layer.endswith(".convs")):
        stage = (resolve_layer(model, None) if layer == "convs" else layer[: -len(".convs")])
        return _stage_points(model, stage), False
    single = layer is None or isinstance(layer, str)
    names = (layer,) if single else tuple(layer)
    return tuple(_resolve(model, name) for name in names), single


def _resolve(model, name) -> str:
    """A point name as is; else a stage (or alias) validated, the error naming the points."""
    points = _points(model)
    if name is None or not points:
        return resolve_layer(model, name)
    if isinstance(name, str) and name in points:
        return name
    if isinstance(name, str) and name in model.stages:
        return name
    try:
        return resolve_layer(model, name)
    except ValueError:
        model.point(name, "layer")  # raises a message naming the stages and valid points
        raise


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
      layer: a stage name; a point, i.e. a convolution inside a ResNet unit
        ("layer4.1.conv2", "layer4.0.downsample.0"; `model.points` lists them), read at its
        output before batch norm; a sequence of distinct stage and point names; "convs" (every
        convolution of the model's `layers.explain` stage, combined) or "<stage>.convs"; or
        None (the model's `layers.explain`: DenseNet relu5, ResNet layer4). The seed's
        multi-layer ResNet set is ("layer2.0", "layer3.0", "layer4.0", "layer4.2").
      key: unused.
      variant: "conv1x1" (default; TorchRay's form) | "scaling" | "bias" | "conv3x3" |
        "selective" (virtual layers, at a stage or a point) | "weight" (points only: the
        convolution's own weight-gradient norm, TorchRay's `norm_grad_proper`).
      weights: per-layer weights for the combination (multi-layer only).
      combine: "product" (weighted geometric product) | "sum" (weighted sum).
    Returns:
      [B, H, W] float32.
    """
    check_images(model, x)
    score = score_fn(model, targets, x.shape[0])
    if variant not in VARIANTS + POINT_VARIANTS:
        raise ValueError(f"Unknown NormGrad variant {variant!r}; use one of "
                         f"{', '.join(VARIANTS + POINT_VARIANTS)}.")
    layers, single = _expand(model, layer)
    if not layers:
        raise ValueError("layer must name at least one stage.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Layers must be distinct, got {layers}.")
    if single and weights is not None:
        raise ValueError("weights apply only when several layers are combined.")
    points = set(_points(model))
    if variant in POINT_VARIANTS and not points.issuperset(layers):
        stages = [n for n in layers if n not in points]
        raise ValueError(
            f"variant {variant!r} is a convolution's own weight gradient: name convolutions "
            f"inside units (e.g. {(_points(model) or ('layer4.1.conv2',))[-1]!r}; "
            f"model.points lists them), not the stage(s) {stages}.")
    inputs = layers if variant in POINT_VARIANTS else ()
    acts, grads, _ = layers_and_grads(model, variables, x, score, layers, inputs)
    size = x.shape[1:3]
    maps = []
    for name in layers:  # a handful of layers, not a hot loop
        check_spatial(grads[name], name)
        if variant in POINT_VARIANTS:
            p = model.point(name)[1]
            m = weight_map(acts[f"{name}.input"], grads[name], p.kernel, p.stride, p.padding)
        else:
            m = normgrad_map(acts[name], grads[name], variant)
        maps.append(upsample(m, size))
    if single:
        return maps[0]
    return combine_maps(jnp.stack(maps), weights, combine)
