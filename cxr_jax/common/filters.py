"""Separable filters written as matrices: y = M_h x M_w^T along two axes.

A separable 2-D filter (Gaussian blur, a box window, a smoothing kernel) is the same 1-D filter
along each axis. Along an axis of n samples it is a linear map, an [n, n] matrix M, so the 2-D
filter is two small matrix products. That is exact for every boundary mode and kernel width
(kernels wider than the image included), runs as dense matmuls on any accelerator and
differentiates for free. The matrices are built once per size, in float64, by filtering the
identity with scipy.ndimage, so they equal scipy's filters by construction.

  gaussian_matrix(n, sigma, ...)  scipy.ndimage.gaussian_filter1d as a matrix
  uniform_matrix(n, size, ...)    scipy.ndimage.uniform_filter1d as a matrix
  separable(x, mh, mw, axes)      applies the two matrices along two axes (jax)
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=64)
def _gaussian(n: int, sigma: float, mode: str, radius: int) -> np.ndarray:
    m = ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode, radius=radius)
    m.setflags(write=False)
    return m


def gaussian_matrix(n: int, sigma: float, *, mode: str = "reflect", truncate: float = 4.0,
                    radius: int | None = None) -> np.ndarray:
    """[n, n] float64 matrix G with G @ v = scipy.ndimage.gaussian_filter1d(v, sigma, mode=mode).

    Args:
      n: samples along the axis.
      sigma: the Gaussian's standard deviation in samples (> 0).
      mode: scipy's boundary mode: "reflect" (d c b a | a b c d, the edge sample repeated),
        "mirror" (d c b | a b c d, not repeated: torch's ReflectionPad), "nearest", ...
      truncate: kernel radius in standard deviations, int(truncate * sigma + 0.5) samples.
      radius: the kernel radius in samples, overriding `truncate`.
    Returns:
      A read-only matrix (cached per arguments).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")
    r = int(truncate * float(sigma) + 0.5) if radius is None else int(radius)
    return _gaussian(int(n), float(sigma), mode, r)


@functools.lru_cache(maxsize=64)
def uniform_matrix(n: int, size: int, mode: str = "reflect") -> np.ndarray:
    """[n, n] float64 matrix U with U @ v = scipy.ndimage.uniform_filter1d(v, size, mode=mode)."""
    m = ndimage.uniform_filter1d(np.eye(n), size, axis=0, mode=mode)
    m.setflags(write=False)
    return m


def separable(x, mh: np.ndarray, mw: np.ndarray, axes: tuple[int, int] = (-2, -1), *,
              dtype=None):
    """y = M_h x M_w^T along `axes` (rows, columns) of x, every other axis carried along.

    Args:
      x: an array with the two filtered axes at `axes` (e.g. (1, 2) for [B, H, W, C] images,
        (-3, -2) for [..., h, w, C] feature maps, (-2, -1) for [..., H, W] maps).
      mh, mw: [H', H] and [W', W] matrices (square for a filter; any shape resamples).
      dtype: the dtype to compute in (default: x's floating dtype, float32 for integers).
    Returns:
      The filtered array, in the compute dtype.
    """
    x = jnp.asarray(x)
    if dtype is None:
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    ah, aw = (a % x.ndim for a in axes)
    # Two einsums, one per axis (the contraction order XLA is given decides the last bits of
    # float32 results, so this stays the formulation the library's filters always used).
    letters = "abcdefghmnopqrstuvwxyz"[:x.ndim]
    y = jnp.einsum(f"Y{letters[ah]},{letters}->{letters.replace(letters[ah], 'Y')}",
                   jnp.asarray(mh, dtype), x.astype(dtype))
    return jnp.einsum(f"Z{letters[aw]},{letters}->{letters.replace(letters[aw], 'Z')}",
                      jnp.asarray(mw, dtype), y)
