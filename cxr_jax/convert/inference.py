"""Using a converted model: preparing its inputs and reading its outputs.

Owns the input conventions recorded in model.json (`input_convention`), scaling [0, 1] images to
them (`normalize_input`) and TorchXRayVision's operating-point calibration of the outputs
(`calibrate`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.convert.catalogue import IMAGENET_MEAN, IMAGENET_STD


def calibrate(logits: jax.Array, op_threshs: Any) -> jax.Array:
    """TorchXRayVision's operating-point calibration of multi-label outputs.

    With p = sigmoid(logit) and t the output's operating point (the threshold picked on
    validation data), p is mapped piecewise-linearly so that t lands on 0.5:

        p < t:  p / (2 t)          p >= t:  1 - (1 - p) / (2 (1 - t))

    and outputs with no threshold (t = NaN) become 0.5. Monotone in p for each output, so it
    ranks images as the logits do; use it to read predictions, not as the attribution target
    (explain the logits).

    Args:
      logits: [..., K] raw outputs.
      op_threshs: [K] thresholds in (0, 1), NaN where none.
    Returns:
      [..., K] calibrated scores in [0, 1].
    """
    logits = jnp.asarray(logits)
    t = jnp.asarray(np.asarray(op_threshs, dtype=np.float32), dtype=logits.dtype)
    if t.ndim != 1 or logits.shape[-1:] != t.shape:
        raise ValueError(f"op_threshs must have shape [K] matching the logits' last axis; got "
                         f"{t.shape} for logits {logits.shape}.")
    p = jax.nn.sigmoid(logits)
    valid = ~jnp.isnan(t)
    ts = jnp.where(valid, t, 0.5)  # keeps both branches finite, so gradients stay finite
    out = jnp.where(p < ts, p / (2 * ts), 1 - (1 - p) / (2 * (1 - ts)))
    return jnp.where(valid, out, 0.5)


def input_convention(source: str, in_channels: int, size: int = 224) -> dict[str, Any]:
    """How images must be scaled for the converted model (recorded in model.json).

    torchxrayvision: single channel in [-1024, 1024] (x01 * 2048 - 1024), centre-cropped and
    resized to `size`. torchvision: [0, 1] then (x - mean) / std with ImageNet statistics when the
    model has 3 channels.
    """
    if source == "torchxrayvision":
        return {"range": [-1024, 1024], "channels": in_channels, "size": size, "crop": "center"}
    conv = {"range": [0, 1], "channels": in_channels, "size": size}
    if in_channels == 3:
        conv.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return conv


def normalize_input(images: jax.Array, metadata: Mapping[str, Any]) -> jax.Array:
    """Scales images in [0, 1] to a converted model's input convention.

    [-1024, 1024] convention: y = x * 2048 - 1024. Otherwise y = (x - mean) / std per channel
    when mean/std are recorded, else x unchanged (resizing is the caller's: see
    metadata["input_convention"]["size"]).

    Args:
      images: [B, H, W, C] in [0, 1] with C = the model's channels.
      metadata: `load_metadata(dir)` or its "input_convention" entry.
    Returns:
      [B, H, W, C] ready for `model.apply`.
    """
    conv = metadata.get("input_convention", metadata)
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != conv["channels"]:
        raise ValueError(f"Expected images [B, H, W, {conv['channels']}] in [0, 1], got shape "
                         f"{images.shape}.")
    lo, hi = conv["range"]
    if "mean" in conv:
        mean = jnp.asarray(conv["mean"], images.dtype)
        std = jnp.asarray(conv["std"], images.dtype)
        return (images - mean) / std
    return images * (hi - lo) + lo
