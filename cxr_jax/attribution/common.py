"""What every attribution method shares: input checks, targets, layers, stage gradients,
and chunked evaluation of many path points / samples / channels."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.common import targets as targets_lib
from cxr_jax.common.targets import Targets, concrete
from cxr_jax.models import Model, default_layer
from cxr_jax.models import resolve_layer as model_layer

Array = jax.Array


def check_images(model: Model, x: Array) -> None:
    """Raises ValueError for a batch the model cannot take, or NaN/Inf pixels (when concrete)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != model.in_channels:
        raise ValueError(
            f"Expected images [B, H, W, {model.in_channels}] for {model.name!r}, got shape "
            f"{shape}. Add a batch axis (x[None]) or a channel axis (x[..., None])."
        )
    value = concrete(x)
    if value is not None and not np.all(np.isfinite(value)):
        bad = sorted(set(np.nonzero(~np.isfinite(value).reshape(shape[0], -1).all(1))[0]))
        raise ValueError(f"Images {bad} contain NaN or Inf pixels; clean or drop them first.")


def score_fn(model: Model, targets: Targets, batch: int) -> Callable[[Array], Array]:
    """A function logits [B, K] -> per-image target score [B] (`cxr_jax.common.targets`).

    Args:
      model: the model (for num_classes).
      targets: class index per image [B] (a scalar broadcasts), or a callable from logits [B, K]
        to scores [B] (regression heads, custom targets).
      batch: B, to check the number of targets.
    Raises:
      ValueError: wrong number of targets, non-integer or out-of-range class indices.
    """
    return targets_lib.score_fn(targets, batch, num_classes=model.num_classes,
                                owner=f"model {model.name!r}")


def resolve_layer(model: Model, layer: str | None, role: str = "explain") -> str:
    """The layer to explain: the caller's (a stage or a model alias such as "stride16"),
    validated, or the layer the model declares for `role` when None."""
    if layer is None:
        return default_layer(model, role)
    return model_layer(model, layer)


def layer_and_grad(model: Model, variables: Any, x: Array, score: Callable[[Array], Array],
                   layer: str) -> tuple[Array, Array, Array]:
    """Activation A at `layer`, dScore/dA, and the logits, running the prefix only once.

    The prefix runs forward once (tapping `layer`); the suffix is differentiated with
    `apply(start=layer)`. Scores are summed over the batch: images are independent, so the
    gradient of the sum is each image's own gradient.
    """
    _, acts = model.apply(variables, x, taps=(layer,))
    a = acts[layer]

    def total(a):
        logits = model.apply(variables, a, start=layer)
        return jnp.sum(score(logits).astype(jnp.float32)), logits

    g, logits = jax.grad(total, has_aux=True)(a)
    return a, g, logits


def input_grad(model: Model, variables: Any, x: Array, score: Callable[[Array], Array]) -> Array:
    """dScore/dx for every image: [B, H, W, C]."""
    return jax.grad(lambda x: jnp.sum(score(model.apply(variables, x)).astype(jnp.float32)))(x)


def weighted_input_grad(model: Model, variables: Any, xs: Array, weights: Array,
                        score: Callable[[Array], Array]) -> Array:
    """sum_k w_k dScore/dx at xs[k] for c versions xs [c, B, H, W, C] of one batch, float32
    [B, H, W, C].

    The c versions are folded into the batch axis of one model call (c * B images) and the
    scores unfolded after it, rather than vmapped over c: on XLA:CPU a vmapped network call
    turns its 1x1 convolutions into batched matrix products and runs about 20% slower
    (DenseNet-121, 224 px, c = 2, B = 8: 2.37 F per version vmapped, 1.94 F folded).
    """
    c, b = xs.shape[:2]

    def total(flat):
        logits = model.apply(variables, flat)
        per = jax.vmap(score)(logits.reshape((c, b) + logits.shape[1:]))  # [c, B]
        return jnp.sum(per.astype(jnp.float32) * weights[:, None].astype(jnp.float32))

    g = jax.grad(total)(xs.reshape((c * b,) + xs.shape[2:]))
    return jnp.sum(g.reshape(xs.shape).astype(jnp.float32), axis=0)


def check_spatial(a: Array, layer: str) -> None:
    """Raises ValueError unless the activation at `layer` is a spatial map [B, h, w, C]."""
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"Layer {layer!r} gives an activation of shape {shape}, not a spatial map "
            f"[B, h, w, C]; pick a convolutional stage (before global pooling)."
        )


def layers_and_grads(model: Model, variables: Any, x: Array, score: Callable[[Array], Array],
                     layers: tuple[str, ...], inputs: tuple[str, ...] = ()
                     ) -> tuple[dict, dict, Array]:
    """Activations and dScore/dA at several layers from one forward and one backward pass.

    The prefix runs forward once up to the latest stage that every layer lies after (tapping
    it; a stage layer can be that start itself, a point cannot: its unit must run); the rest
    runs once with `apply(start=...)` where every other layer gets an additive edit `a + d`
    with d = 0, so the gradient with respect to d is the gradient at that layer.

    Args:
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      score: logits [B, K] -> per-image scores [B].
      layers: distinct stage names or points (`Model.points`; any order; validated by the
        caller).
      inputs: points whose convolution inputs ("<point>.input") are wanted too.
    Returns:
      ({layer or "<point>.input": activation}, {layer: gradient}, logits).
    """
    points = set(getattr(model, "points", ()))

    def stage_index(name):
        return model.stages.index(model.point(name)[0].name if name in points else name)

    at = min(stage_index(n) - (n in points) for n in layers)
    start = model.stages[at] if at >= 0 else None
    a0 = x if start is None else model.apply(variables, x, taps=(start,))[1][start]
    edited = tuple(n for n in layers if n != start)
    taps = edited + tuple(f"{p}.input" for p in inputs)
    if edited:
        # Shapes of the edited activations, to build the zero edits (no computation).
        shapes = jax.eval_shape(
            lambda a: model.apply(variables, a, start=start, taps=edited)[1], a0)
        zeros = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}
    else:
        zeros = {}

    def total(a0, deltas):
        edits = {name: (lambda d: lambda a: a + d)(deltas[name]) for name in edited}
        out = model.apply(variables, a0, start=start, edits=edits, taps=taps)
        logits, acts = out if taps else (out, {})
        return jnp.sum(score(logits).astype(jnp.float32)), (logits, acts)

    (g0, grads), (logits, acts) = jax.grad(total, argnums=(0, 1), has_aux=True)(a0, zeros)
    if start in layers:
        acts, grads = {start: a0, **acts}, {start: g0, **grads}
    return acts, grads, logits


def chunked_reduce(part_sum: Callable[[Any], Any], xs: Any, chunk: int) -> Any:
    """The sum of `part_sum(xs[i:i + c])` over consecutive chunks of the leading axis.

    `part_sum` takes a chunk (leading axis c <= chunk) and returns the sum over its items
    itself, e.g. with the items folded into one batch (`weighted_input_grad`, SmoothGrad)
    rather than vmapped: no Python loop over items, and memory is that of one chunk however
    many items there are. A `lax.scan` over the full chunks keeps one running sum; a last,
    smaller call takes the remainder.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
    c = int(min(chunk, n))
    full, rem = divmod(n, c)
    out_shape = jax.eval_shape(part_sum, jax.tree_util.tree_map(lambda a: a[:c], xs))
    acc = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
    if full:
        head = jax.tree_util.tree_map(
            lambda a: a[: full * c].reshape((full, c) + a.shape[1:]), xs)
        if full == 1:
            acc = part_sum(jax.tree_util.tree_map(lambda a: a[0], head))
        else:
            acc, _ = jax.lax.scan(
                lambda acc, xc: (jax.tree_util.tree_map(jnp.add, acc, part_sum(xc)), None),
                acc, head)
    if rem:
        tail = jax.tree_util.tree_map(lambda a: a[full * c:], xs)
        acc = jax.tree_util.tree_map(jnp.add, acc, part_sum(tail))
    return acc


# Images per vectorised pass when a method's `chunk` is left to None. On CPU a network's
# per-image cost is lowest at small batches (DenseNet-121, 224 px: batch 4-16 about equal, batch
# 128 about 1.7x slower per image); on accelerators pass a larger `chunk`.
IMAGES_PER_PASS = 16


def auto_chunk(chunk: int | None, batch: int, target: int = IMAGES_PER_PASS) -> int:
    """Items (path points, noise samples, channels) per vectorised pass: `chunk`, validated, or
    about `target // batch` (at least 1) when None, so a pass holds about `target` images."""
    if chunk is None:
        return max(1, target // max(1, int(batch)))
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}.")
    return int(chunk)
