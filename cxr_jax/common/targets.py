"""What is being explained or measured: targets -> one score per image.

A target is either the class index of each image (an int array [B], or one int for all) or a
callable `logits [B, K] -> scores [B]` (a regression head's raw output, a custom score). Every
method and every metric that asks "how much does the model believe the target" goes through
`score_fn`, so indices are checked once, the same way, with one set of messages.
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Targets = Union[Array, np.ndarray, int, Callable[[Array], Array]]


def concrete(a) -> np.ndarray | None:
    """`a` as a numpy array when its value is known at trace time, else None (a tracer)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_classes(indices, num_classes: int | None, owner: str = "the model") -> None:
    """Raises ValueError when concrete class indices fall outside [0, num_classes)."""
    value = concrete(indices)
    if num_classes is None or value is None or not value.size:
        return
    if value.min() < 0 or value.max() >= num_classes:
        raise ValueError(
            f"Target class out of range: got {value.tolist()}, {owner} has {num_classes} "
            f"outputs (valid 0..{num_classes - 1}).")


def class_indices(targets, batch: int, *, num_classes: int | None = None,
                  owner: str = "the model") -> Array:
    """Checked per-image class indices [B] (a scalar broadcasts to every image).

    Raises:
      ValueError: non-integer indices, not one per image, or out of range (when concrete).
    """
    t = jnp.asarray(targets)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"Targets must be integer class indices (or a callable), got {t.dtype}.")
    if t.ndim == 0:
        t = jnp.full((batch,), t)
    if t.shape != (batch,):
        raise ValueError(f"Expected one target per image, shape ({batch},), got {t.shape}.")
    check_classes(t, num_classes, owner)
    return t


def pick(logits: Array, indices: Array) -> Array:
    """logits[..., b, indices[b]]: the target's logit of each image, [..., B, K] -> [..., B]."""
    idx = jnp.broadcast_to(indices[:, None], logits.shape[:-1] + (1,))
    return jnp.take_along_axis(logits, idx, axis=-1)[..., 0]


def score_fn(targets: Targets, batch: int, *, num_classes: int | None = None,
             probability: bool = False, owner: str = "the model") -> Callable[[Array], Array]:
    """A function logits [..., B, K] -> per-image target score [..., B].

    Args:
      targets: class index per image [B] (a scalar broadcasts), or a callable from logits to
        scores (returned unchanged: it defines the score itself).
      batch: B, to check the number of targets.
      num_classes: K, to check the range of concrete indices (None: unchecked).
      probability: return sigmoid(logit) instead of the logit for class indices.
      owner: how error messages name the model.
    Raises:
      ValueError: wrong number of targets, non-integer or out-of-range class indices.
    """
    if callable(targets):
        return targets
    t = class_indices(targets, batch, num_classes=num_classes, owner=owner)
    if probability:
        return lambda logits: jax.nn.sigmoid(pick(logits, t))
    return lambda logits: pick(logits, t)


def tile(targets: Targets, batch: int, copies: int) -> Targets:
    """The targets of `copies` versions of a batch folded into one batch of copies * batch rows
    (version-major, as `x.reshape((copies * batch,) + ...)` of a [copies, batch, ...] stack).

    Class indices are tiled; a callable is applied to each version's [batch, K] logits
    separately, so a score written for `batch` rows still sees `batch` rows.
    """
    if callable(targets):
        def folded(logits):
            per = jax.vmap(targets)(logits.reshape((copies, batch) + logits.shape[1:]))
            return per.reshape((copies * batch,) + per.shape[2:])
        return folded
    return jnp.tile(class_indices(targets, batch), copies)
