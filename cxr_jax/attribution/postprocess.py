"""Post-processing of raw saliency maps: upsampling, normalisation, overlays for figures.

Attribution methods return raw maps; these functions are the separate, explicit step that turns
them into something comparable or displayable. Every normaliser is guarded: a constant map (or an
all-zero one) becomes all zeros, never NaN or Inf.

Example:
  >>> maps = cxr_jax.attribution.get("gradcam")(model, variables, x, targets)  # raw [B, H, W]
  >>> shown = normalize_minmax(maps)                                           # [B, H, W] in [0, 1]
  >>> rgb = overlay(x[0], shown[0])                                             # [H, W, 3] float
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_TINY = 1e-30


def upsample(maps: Array, size: Sequence[int]) -> Array:
    """Bilinear resize of maps [..., h, w] to [..., H, W] (half-pixel centres, edges clamped).

    This is the convention of OpenCV's `cv2.resize` and PyTorch's
    `interpolate(mode="bilinear", align_corners=False)`, which the CAM literature uses: output
    pixel i samples the input at (i + 0.5) h / H - 0.5. No anti-aliasing is applied, so
    shrinking a map is plain bilinear sampling as well.

    Args:
      maps: [..., h, w] (any leading axes, e.g. [B, h, w] or [B, K, h, w]).
      size: (H, W).
    Returns:
      [..., H, W] in the dtype of `maps` (float32 for integer input).
    """
    maps = jnp.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"upsample expects maps [..., h, w], got shape {maps.shape}.")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}.")
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        maps = maps.astype(jnp.float32)
    if maps.shape[-2:] == size:
        return maps
    return jax.image.resize(maps, maps.shape[:-2] + size, method="bilinear", antialias=False)


def _guarded_scale(maps: Array, lo: Array, hi: Array, eps: float) -> Array:
    """(maps - lo) / (hi - lo), or 0 where the range is negligible relative to the values."""
    span = hi - lo
    scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    ok = span > eps * scale + _TINY
    safe = jnp.where(ok, span, 1.0)
    return jnp.where(ok, (maps - lo) / safe, jnp.zeros_like(maps))


def normalize_minmax(maps: Array, *, eps: float = 1e-6) -> Array:
    """Per-map min-max normalisation to [0, 1] over the last two (spatial) axes.

    out = (m - min m) / (max m - min m). The guard: where max - min <= eps * max(|min|, |max|)
    (a constant map, up to float rounding, including an all-zero map) the output is all zeros.

    Args:
      maps: [..., H, W] (e.g. [B, H, W] or [B, K, H, W]); each trailing HxW map is normalised
        on its own.
      eps: relative range below which a map counts as constant.
    Returns:
      [..., H, W] float in [0, 1], NaN-free for finite input.
    """
    maps = jnp.asarray(maps, dtype=jnp.result_type(maps, jnp.float32))
    if maps.ndim < 2:
        raise ValueError(f"normalize_minmax expects maps [..., H, W], got shape {maps.shape}.")
    lo = jnp.min(maps, axis=(-2, -1), keepdims=True)
    hi = jnp.max(maps, axis=(-2, -1), keepdims=True)
    return _guarded_scale(maps, lo, hi, eps)


def normalize_percentile(maps: Array, *, low: float = 1.0, high: float = 99.0,
                         absolute: bool = False, eps: float = 1e-6) -> Array:
    """Per-map percentile normalisation: clip to [p_low, p_high], then scale to [0, 1].

    out = clip((m - p_low) / (p_high - p_low), 0, 1), percentiles per map over the last two axes
    (linear interpolation, as numpy). With `absolute=True` the map is |m| first (the usual
    display of signed gradient maps, e.g. low=0, high=99). A map whose percentile range is
    negligible (constant up to rounding) becomes all zeros.

    Args:
      maps: [..., H, W].
      low, high: percentiles in [0, 100], low < high.
      absolute: take |m| before normalising.
      eps: relative range below which a map counts as constant.
    Returns:
      [..., H, W] float in [0, 1].
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"Need 0 <= low < high <= 100, got low={low}, high={high}.")
    maps = jnp.asarray(maps, dtype=jnp.result_type(maps, jnp.float32))
    if maps.ndim < 2:
        raise ValueError(f"normalize_percentile expects maps [..., H, W], got {maps.shape}.")
    if absolute:
        maps = jnp.abs(maps)
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    q = jnp.percentile(flat, jnp.asarray([low, high], maps.dtype), axis=-1)  # [2, ...]
    lo = q[0][..., None, None]
    hi = q[1][..., None, None]
    return jnp.clip(_guarded_scale(maps, lo, hi, eps), 0.0, 1.0)


def normalize(maps: Array, how: str = "minmax", **kwargs) -> Array:
    """Normalises maps by name: "minmax" (`normalize_minmax`) or "percentile"."""
    if how == "minmax":
        return normalize_minmax(maps, **kwargs)
    if how == "percentile":
        return normalize_percentile(maps, **kwargs)
    raise ValueError(f"Unknown normalisation {how!r}; use 'minmax' or 'percentile'.")


def overlay(image, saliency, *, alpha: float = 0.5, cmap: str = "jet",
            normalize_map: bool = True, dtype=np.float32) -> np.ndarray:
    """Blends a colour-mapped saliency map over a greyscale or RGB image, for figures.

    out = (1 - alpha) * image_rgb + alpha * cmap(s), with the image min-max scaled to [0, 1]
    (guarded) and s the saliency (min-max normalised unless `normalize_map=False`, in which
    case it is clipped to [0, 1]). Runs in numpy: it is for display, not for jit.

    Args:
      image: [..., H, W], [..., H, W, 1] or [..., H, W, 3] (any intensity range).
      saliency: [..., H, W] with the same leading axes and spatial size as the image.
      alpha: weight of the heat map, in [0, 1].
      cmap: a matplotlib colormap name.
      normalize_map: min-max normalise the saliency first.
      dtype: np.float32 (values in [0, 1]) or np.uint8 (values in 0..255).
    Returns:
      RGB array [..., H, W, 3] of `dtype`.
    """
    import matplotlib  # display-only dependency, imported lazily

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    img = np.asarray(image, dtype=np.float32)
    sal = np.asarray(saliency, dtype=np.float32)
    if img.ndim >= 3 and img.shape[-1] in (1, 3) and img.shape[:-1] == sal.shape:
        pass
    elif img.shape == sal.shape:
        img = img[..., None]
    else:
        raise ValueError(
            f"Image shape {img.shape} does not match saliency shape {sal.shape}: expected the "
            f"image as [..., H, W], [..., H, W, 1] or [..., H, W, 3] with saliency [..., H, W]."
        )
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    # One range per image (over H, W and colour), so an RGB image keeps its colours.
    lo = img.min(axis=(-3, -2, -1), keepdims=True)
    hi = img.max(axis=(-3, -2, -1), keepdims=True)
    img = np.asarray(_guarded_scale(jnp.asarray(img), jnp.asarray(lo), jnp.asarray(hi), 1e-6))
    sal = np.asarray(normalize_minmax(sal)) if normalize_map else np.clip(sal, 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](sal)[..., :3].astype(np.float32)
    out = (1.0 - alpha) * img + alpha * heat
    if np.dtype(dtype) == np.uint8:
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    return out.astype(dtype)
