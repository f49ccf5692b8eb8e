"""Several targets per image in one call: what multi-label chest X-ray explanation needs.

`explain_multi` vmaps a method over a K axis of targets. Only the target selection is batched
over K: the image (and everything computed from it alone, such as the forward pass, the prefix
of the network before a CAM layer, or Score-CAM's masked forward passes) is shared, so K
targets cost far less than K separate calls — Grad-CAM's K backward passes run as one batched
pass through the head, Score-CAM's masked scores are computed once for all K.

Example:
  >>> maps = explain_multi("gradcam", model, variables, x, jnp.array([[0, 3], [2, 5]]))
  >>> maps.shape  # [B, K, H, W]
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cxr_jax.attribution import registry
from cxr_jax.attribution.common import check_images
from cxr_jax.common.targets import check_classes

Array = jax.Array


def explain_multi(method: str | Callable, model, variables, x: Array, targets, **kw) -> Array:
    """Maps `method` over K target classes per image: targets [B, K] -> saliency [B, K, H, W].

    out[b, k] = method(model, variables, x, targets[:, k], **kw)[b], computed as one vmap over
    k (so one jit of the caller compiles one program for all K). A `key` in `kw` is shared by
    the K targets: a stochastic method (e.g. SmoothGrad) uses the same noise for every target
    of an image, which makes the K maps directly comparable.

    Args:
      method: a registered method name or a method function (contract signature).
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      targets: integer class indices [B, K] (K >= 1), each in [0, num_classes).
      **kw: passed to the method (layer=, key=, hyperparameters).
    Returns:
      [B, K, H, W] float32.
    Raises:
      ValueError: unknown method, targets not an integer [B, K] array, or a class out of range.
    """
    fn = registry.get(method) if isinstance(method, str) else method
    if not callable(fn):
        raise ValueError(f"method must be a registered name or a function, got {method!r}.")
    check_images(model, x)
    if callable(targets):
        raise ValueError(
            "explain_multi takes integer class indices [B, K]; for custom scores call the "
            "method once per callable target.")
    t = jnp.asarray(targets)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}.")
    if t.ndim != 2 or t.shape[0] != x.shape[0] or t.shape[1] < 1:
        raise ValueError(
            f"targets must have shape [B, K] = [{x.shape[0]}, K >= 1] (one row of classes per "
            f"image), got {t.shape}.")
    check_classes(t, model.num_classes, f"model {model.name!r}")

    def one(t_k):  # t_k: [B], one target per image
        return fn(model, variables, x, t_k, **kw).astype(jnp.float32)

    return jax.vmap(one, in_axes=1, out_axes=1)(t)
