"""Score-CAM and Faster Score-CAM: channels weighted by the score of the input they mask.

Gradient-free. For every channel k of the activation A [B, h, w, C] at a layer, the channel is
upsampled to the input size and min-max normalised into a mask M_k in [0, 1]; the model scores
the masked image x * M_k; the softmax of those scores over channels weights the channels.
The cost is one forward pass per channel and image (1024 for DenseNet-121's relu5), batched:
`lax.map(..., batch_size=chunk)` runs `chunk` channels (chunk * B masked images) per
vectorised forward pass, and no [B, C, H, W] mask tensor is ever built.

Example:
  >>> cams = cxr_jax.attribution.get("faster_scorecam")(model, variables, x, targets, max_n=10)

References:
  Wang et al. 2020 (Score-CAM); Faster Score-CAM as in pytorch-grad-cam / the seed comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cxr_jax.attribution.registry import register
from cxr_jax.attribution.cam import weighted_cam
from cxr_jax.attribution.common import (auto_chunk, check_images, check_spatial, resolve_layer,
                                        score_fn)
from cxr_jax.attribution.postprocess import normalize_minmax, upsample

Array = jax.Array


def channel_scores(model, variables, x: Array, score, acts: Array, chunk: int | None = None,
                   eps: float = 1e-6) -> Array:
    """Target score of the input masked by each channel: s[b, k] = y_c(x_b * M_bk).

    M_bk = minmax(Up(A_bk)) in [0, 1]; a constant channel (range <= eps relative) gives an
    all-zero mask, so its score is that of a black image, never NaN.

    Args:
      model, variables: the model.
      x: images [B, H, W, C_in].
      score: logits [B, K] -> [B].
      acts: the channels to use, [B, h, w, N].
      chunk: channels per vectorised forward pass (chunk * B images at once); None: about 16
        images per pass (`common.auto_chunk`), the fastest on CPU; on accelerators use e.g. 64.
      eps: relative range below which a channel counts as constant.
    Returns:
      [B, N] float32 scores.
    """
    chunk = auto_chunk(chunk, x.shape[0])
    size = x.shape[1:3]

    def one(a_k):  # one channel for every image: [B, h, w] -> [B]
        mask = normalize_minmax(upsample(a_k.astype(jnp.float32), size), eps=eps)
        logits = model.apply(variables, x * mask[..., None].astype(x.dtype))
        return score(logits).astype(jnp.float32)

    per_channel = jnp.moveaxis(acts, -1, 0)  # [N, B, h, w]
    n = per_channel.shape[0]
    s = jax.lax.map(one, per_channel, batch_size=min(chunk, n))  # [N, B]
    return s.T


def _activations(model, variables, x, targets, layer):
    check_images(model, x)
    layer = resolve_layer(model, layer)
    score = score_fn(model, targets, x.shape[0])
    _, acts = model.apply(variables, x, taps=(layer,))
    a = jax.lax.stop_gradient(acts[layer])
    check_spatial(a, layer)
    return a, score


@register("scorecam", layer="explain")
def scorecam(model, variables, x, targets, *, layer=None, key=None, chunk: int | None = None,
             eps: float = 1e-6):
    """Score-CAM over every channel of the layer.

    M_k = minmax(Up(A_k)) (eps-guarded); s_k = y_c(x * M_k); w = softmax_k(s);
    map = ReLU(sum_k w_k A_k), upsampled bilinearly to the input size (the softmax weighting
    of pytorch-grad-cam's ScoreCAM; no baseline score is subtracted).

    Args:
      model, variables: the model and its variables.
      x: images [B, H, W, C].
      targets: class per image [B] (or scalar), or a callable logits [B, K] -> scores [B].
      layer: stage to explain (default: the model's `layers.explain`, DenseNet relu5, ResNet
        layer4).
      key: unused.
      chunk: channels per vectorised forward pass (chunk * B masked images); None: about 16
        images per pass, best on CPU; raise it (e.g. 64) on accelerators. Memory is that of
        one pass.
      eps: relative range below which a channel's mask is all zeros.
    Returns:
      [B, H, W] float32, raw.
    """
    a, score = _activations(model, variables, x, targets, layer)
    w = jax.nn.softmax(channel_scores(model, variables, x, score, a, chunk, eps), axis=-1)
    return weighted_cam(a, w, x.shape[1:3])


@register("faster_scorecam", layer="explain")
def faster_scorecam(model, variables, x, targets, *, layer=None, key=None, max_n: int = 10,
                    chunk: int | None = None, eps: float = 1e-6):
    """Faster Score-CAM: Score-CAM over the max_n channels with the largest spatial std.

    For each image, keep the channels k with the max_n largest std_ij(A_ijk) (chosen per image),
    then as `scorecam` over only those: w = softmax(s), map = ReLU(sum_k w_k A_k), upsampled.

    Args:
      model, variables, x, targets, layer, key, chunk, eps: as `scorecam`.
      max_n: channels kept per image (10 in the seed's comparison; clipped to the layer's C).
    Returns:
      [B, H, W] float32, raw.
    """
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be a positive int, got {max_n!r}.")
    a, score = _activations(model, variables, x, targets, layer)
    n = min(max_n, a.shape[-1])
    _, idx = jax.lax.top_k(jnp.std(a.astype(jnp.float32), axis=(1, 2)), n)  # [B, n]
    kept = jnp.take_along_axis(a, idx[:, None, None, :], axis=-1)  # [B, h, w, n]
    w = jax.nn.softmax(channel_scores(model, variables, x, score, kept, chunk, eps), axis=-1)
    return weighted_cam(kept, w, x.shape[1:3])
