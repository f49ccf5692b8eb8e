"""The gradient family: Gradient, Input x Gradient, SmoothGrad, Integrated Gradients, Guided
Backprop.

All need only the gradient of the target score with respect to the input, dy_c/dx, which
`jax.grad` gives through the whole model in one forward and one backward pass. Maps come back
raw, [B, H, W]: the input's channel axis is reduced as each method documents.

Example:
  >>> fn = cxr_jax.attribution.get("integrated_gradients")
  >>> maps = jax.jit(lambda v, x, t: fn(model, v, x, t, steps=32))(variables, x, targets)

References:
  Simonyan et al. 2014 (gradient); Shrikumar et al. 2016 (input x gradient); Smilkov et al. 2017
  (SmoothGrad); Sundararajan et al. 2017 (integrated gradients); Springenberg et al. 2015
  (guided backprop).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.attribution import registry
from cxr_jax.common import targets as targets_lib
from cxr_jax.attribution.registry import register
from cxr_jax.attribution.common import (auto_chunk, check_images, chunked_reduce,
                                        input_grad, score_fn, weighted_input_grad)

Array = jax.Array

_REDUCTIONS = ("max_abs", "sum_abs", "sum")


def reduce_channels(g: Array, how: str = "max_abs") -> Array:
    """Reduces the input-channel axis of a per-pixel attribution [B, H, W, C] to [B, H, W].

    "max_abs": max_c |g| (Simonyan et al.'s saliency); "sum_abs": sum_c |g|; "sum": sum_c g
    (signed; what completeness-style methods need). With one channel (radiographs) "max_abs" and
    "sum_abs" agree.
    """
    if how == "max_abs":
        return jnp.max(jnp.abs(g), axis=-1)
    if how == "sum_abs":
        return jnp.sum(jnp.abs(g), axis=-1)
    if how == "sum":
        return jnp.sum(g, axis=-1)
    raise ValueError(f"Unknown channel reduction {how!r}; use one of {', '.join(_REDUCTIONS)}.")


def _prepare(model, x, targets):
    check_images(model, x)
    return score_fn(model, targets, x.shape[0])


@register("gradient")
def gradient(model, variables, x, targets, *, layer=None, key=None, reduce: str = "max_abs"):
    """Gradient saliency: the magnitude of dy_c/dx, reduced over input channels.

    map[b, i, j] = max_c |dy_c(x_b) / dx_b[i, j, c]| (reduce="max_abs", the default).
    Cost: one forward and one backward pass.

    Args:
      model, variables: a stage-pipeline model and its variables.
      x: images [B, H, W, C].
      targets: class per image [B] (or scalar), or a callable logits [B, K] -> scores [B].
      layer, key: unused (uniform signature).
      reduce: channel reduction, "max_abs" | "sum_abs" | "sum" (see `reduce_channels`).
    Returns:
      [B, H, W] float32, raw.
    """
    score = _prepare(model, x, targets)
    return reduce_channels(input_grad(model, variables, x, score), reduce)


@register("input_x_gradient")
def input_x_gradient(model, variables, x, targets, *, layer=None, key=None,
                     reduce: str = "sum"):
    """Input x Gradient: x * dy_c/dx, summed over input channels (signed).

    map[b, i, j] = sum_c x[b, i, j, c] * dy_c/dx[b, i, j, c] (reduce="sum", the default; for a
    linear model y = w.x + b_0 the map sums to y - b_0).

    Args:
      model, variables, x, targets: as `gradient`.
      layer, key: unused.
      reduce: channel reduction of x * g (default "sum", signed).
    Returns:
      [B, H, W] float32, raw (signed).
    """
    score = _prepare(model, x, targets)
    return reduce_channels(x * input_grad(model, variables, x, score), reduce)


# ----------------------------------------------------------------------------- SmoothGrad
def make_smoothgrad(fn: Callable, *, n: int = 50, sigma: float = 0.15,
                    chunk: int | None = None) -> Callable:
    """Turns an attribution method into its SmoothGrad version, with a leading PRNG key.

    smoothed(key, model, variables, x, targets, **hp) = (1/n) sum_i fn(model, variables,
    x + eps_i, targets, **hp), eps_i ~ N(0, (sigma (max x_b - min x_b))^2) with the range taken
    per image; sample i draws its noise from the i-th key split from `key`. The n samples run
    `chunk` at a time, folded into the batch axis of one call of `fn` (chunk * B images, targets
    tiled), inside a scan that keeps one running sum. Folding rather than vmapping over the
    samples keeps the network's 1x1 convolutions as plain matrix products on XLA:CPU (as
    `common.weighted_input_grad`; DenseNet-121 at 224 px: 110 F vmapped vs 100 F folded for 50
    samples). `fn` must treat images independently, as every registered method does. A
    stochastic `fn` gets one key per pass (split from the pass's first sample key), so its own
    draws, unlike the input noise, depend on `chunk`.

    Args:
      fn: a method with the contract signature `fn(model, variables, x, targets, *, layer,
        key, **hp) -> [B, H, W]`.
      n: number of noisy samples.
      sigma: noise level relative to each image's intensity range.
      chunk: noise samples per pass (chunk * B images); None: about 16 images per pass
        (`common.auto_chunk`).
    Returns:
      smoothed(key, model, variables, x, targets, *, layer=None, **hp) -> [B, H, W].
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of noise samples) must be a positive int, got {n!r}.")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}.")
    auto_chunk(chunk, 1)  # validate early

    def smoothed(key, model, variables, x, targets, *, layer=None, **hp):
        if key is None:
            raise ValueError("SmoothGrad needs a PRNG key: pass key=jax.random.key(seed).")
        check_images(model, x)
        b = x.shape[0]
        score_fn(model, targets, b)  # validate targets once, outside the loop
        span = jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3),
                                                                    keepdims=True)
        std = sigma * span

        def part(keys):  # keys [c] -> the sum of the c samples' maps, [B, H, W]
            c = keys.shape[0]
            pairs = jax.vmap(jax.random.split)(keys)  # [c, 2]: noise key, method key
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape, x.dtype))(pairs[:, 0])
            noisy = (x + std * noise).reshape((c * b,) + x.shape[1:])
            out = fn(model, variables, noisy, targets_lib.tile(targets, b, c), layer=layer,
                     key=pairs[0, 1], **hp)
            return jnp.sum(out.astype(jnp.float32).reshape((c, b) + out.shape[1:]), axis=0)

        return chunked_reduce(part, jax.random.split(key, n), auto_chunk(chunk, b)) / n

    smoothed.__name__ = f"smoothgrad_{getattr(fn, '__name__', 'method')}"
    smoothed.__doc__ = f"SmoothGrad (n={n}, sigma={sigma}) of {getattr(fn, '__name__', fn)}."
    return smoothed


@register("smoothgrad", defaults={"method": "gradient", "n": 50}, fast={"n": 10})
def smoothgrad(model, variables, x, targets, *, layer=None, key=None,
               method: str | Callable = "gradient", n: int = 50, sigma: float = 0.15,
               chunk: int | None = None, **method_hp):
    """SmoothGrad of any registered method: the mean map over n noisy copies of the input.

    map = (1/n) sum_i method(x + eps_i), eps_i ~ N(0, (sigma (max x - min x))^2) per image
    (Smilkov et al. 2017; n=50, sigma=0.15 by default). Deterministic given `key`.

    Args:
      model, variables, x, targets: as `gradient`.
      layer: passed to the inner method.
      key: PRNG key (required).
      method: registered method name (default "gradient") or a method function.
      n, sigma, chunk: see `make_smoothgrad`.
      **method_hp: hyperparameters of the inner method.
    Returns:
      [B, H, W] float32, raw.
    """
    fn = registry.get(method) if isinstance(method, str) else method
    if not callable(fn):
        raise ValueError(f"method must be a registered name or a function, got {method!r}.")
    smoothed = make_smoothgrad(fn, n=n, sigma=sigma, chunk=chunk)
    return smoothed(key, model, variables, x, targets, layer=layer, **method_hp)


# --------------------------------------------------------------------- integrated gradients
_RULES = ("left", "right", "midpoint", "trapezoid")


def riemann_nodes(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path positions alpha_k in [0, 1] and weights w_k (sum 1) of a Riemann rule.

    left: alpha = k/m, k = 0..m-1; right: k/m, k = 1..m (METHODS.md's formula); midpoint:
    (k + 1/2)/m, k = 0..m-1 (all with w = 1/m; midpoint is second-order accurate for the same
    m gradients); trapezoid: k/m, k = 0..m with w = 1/(2m) at the ends and 1/m inside (m + 1
    gradients).
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    m = int(steps)
    if rule == "left":
        a = np.arange(m) / m
    elif rule == "right":
        a = np.arange(1, m + 1) / m
    elif rule == "midpoint":
        a = (np.arange(m) + 0.5) / m
    elif rule == "trapezoid":
        a = np.arange(m + 1) / m
        w = np.full(m + 1, 1.0 / m)
        w[[0, -1]] = 0.5 / m
        return a.astype(np.float32), w.astype(np.float32)
    else:
        raise ValueError(f"Unknown Riemann rule {rule!r}; use one of {', '.join(_RULES)}.")
    return a.astype(np.float32), np.full(m, 1.0 / m, np.float32)


@register("integrated_gradients", defaults={"steps": 50}, fast={"steps": 16})
def integrated_gradients(model, variables, x, targets, *, layer=None, key=None,
                         steps: int = 50, baseline: Any = None, rule: str = "midpoint",
                         chunk: int | None = None):
    """Integrated Gradients along the straight path from a baseline b to x.

    map = sum_c (x - b) * sum_k w_k dy_c/dx (b + alpha_k (x - b)), a Riemann sum of the path
    integral; by default the midpoint rule alpha_k = (k + 1/2)/m, w_k = 1/m, k = 0..m-1
    (METHODS.md's alpha_k = k/m is rule="right"). Completeness: the map sums to
    y_c(x) - y_c(b) up to the quadrature error (O(1/m^2) for midpoint and trapezoid).

    The m path points are evaluated `chunk` at a time (folded into one batch of chunk * B
    images, `common.weighted_input_grad`) inside a `lax.scan` that keeps one running sum, so
    memory does not grow with m.
    Performance note: XLA:CPU runs the input-gradient convolutions of jax's transpose rule on
    a slow generic path when they sit inside a loop body (jax issue #12868); models whose
    convolutions use an explicit-transpose VJP avoid it (about 2 F per path point instead of
    about 25 F on DenseNet-121).

    Args:
      model, variables, x, targets: as `gradient`.
      layer, key: unused.
      steps: m, the number of path points (default 50; trapezoid uses m + 1).
      baseline: b, broadcastable to x (None: zeros, METHODS.md's b = 0). For radiographs in
        [-1024, 1024] zero is mid-grey, and a finding that brightens the dark lung then scores
        negative; the studies' configs and the explain command pass the black image, -1024
        (experiments/configs/evaluate.py says why; `cxr_jax.explain.named_baseline`).
      rule: "midpoint" (default) | "left" | "right" | "trapezoid".
      chunk: path points per vectorised pass (chunk * B images at once); None: about 16
        images per pass (`common.auto_chunk`), best on CPU; raise it on accelerators.
    Returns:
      [B, H, W] float32, raw (signed), summed over input channels.
    """
    score = _prepare(model, x, targets)
    b = jnp.zeros_like(x) if baseline is None else jnp.asarray(baseline, x.dtype)
    try:
        b = jnp.broadcast_to(b, x.shape)
    except ValueError as err:
        raise ValueError(
            f"baseline of shape {b.shape} does not broadcast to the images {x.shape}.") from err
    alphas, weights = riemann_nodes(rule, steps)
    delta = x - b

    def weighted_grads(aw):  # a chunk of path points, folded into one batch
        alpha, w = aw
        points = b[None] + alpha[:, None, None, None, None] * delta[None]
        return weighted_input_grad(model, variables, points, w, score)

    avg = chunked_reduce(weighted_grads, (jnp.asarray(alphas), jnp.asarray(weights)),
                         auto_chunk(chunk, x.shape[0]))
    return jnp.sum(delta * avg, axis=-1)


# ------------------------------------------------------------------------- guided backprop
@register("guided_backprop")
def guided_backprop(model, variables, x, targets, *, layer=None, key=None,
                    reduce: str = "max_abs"):
    """Guided backpropagation: the input gradient through guided ReLUs.

    Every ReLU's backward pass lets the incoming gradient through only where the forward input
    was positive and the gradient itself is positive: dx = g [x > 0] [g > 0]. The model provides
    this as `model.with_guided_relu()` (a custom_vjp ReLU selected by a model flag, no hooks).

    Args:
      model: a model with `with_guided_relu()`.
      variables, x, targets: as `gradient`.
      layer, key: unused.
      reduce: channel reduction (default "max_abs").
    Returns:
      [B, H, W] float32, raw.
    """
    score = _prepare(model, x, targets)
    return reduce_channels(input_grad(guided_model(model), variables, x, score), reduce)


def guided_model(model):
    """The model's guided-ReLU variant, or a ValueError saying the model has none."""
    make = getattr(model, "with_guided_relu", None)
    if make is None:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no guided-ReLU variant "
            f"(with_guided_relu); guided backprop needs one."
        )
    return make()
