"""Resizing image stacks with separable sparse weights.

Shrinking averages areas: each output pixel is the mean of the input area it covers, exact for
fractional factors. Enlarging interpolates bilinearly between pixel centres. Weight rows sum to 1.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["resize"]


def _resize_matrix(n_in: int, n_out: int) -> sp.csr_matrix:
    """Sparse [n_out, n_in] weights: area averaging when shrinking, bilinear when enlarging."""
    if n_out <= n_in:
        s = n_in / n_out
        lo = np.arange(n_out) * s                           # output cell i covers [lo_i, hi_i)
        hi = lo + s
        k = int(np.ceil(s)) + 1
        j = np.floor(lo).astype(np.int64)[:, None] + np.arange(k)[None, :]
        w = np.minimum(j + 1, hi[:, None]) - np.maximum(j, lo[:, None])
        w = np.where((j < n_in) & (w > 0), w, 0.0) / s
    else:
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        j0 = np.floor(c).astype(np.int64)
        f = c - j0
        j = np.stack([j0, np.minimum(j0 + 1, n_in - 1)], axis=1)
        w = np.stack([1 - f, f], axis=1)
    rows = np.repeat(np.arange(n_out), j.shape[1])
    m = sp.csr_matrix((w.ravel(), (rows, np.minimum(j, n_in - 1).ravel())), shape=(n_out, n_in))
    return m.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes; area averaging when shrinking, bilinear when enlarging.

    ``y = R_h x R_w^T`` with separable weight matrices whose rows sum to 1, so constants are kept
    exactly and an integer shrink factor gives block means.

    Args:
      x: float array [..., H, W].
      size: (out_height, out_width).

    Returns:
      float32 array [..., out_height, out_width].
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize needs an array [..., H, W], got shape {x.shape}")
    (h, w), (oh, ow) = x.shape[-2:], (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1 or h < 1 or w < 1:
        raise ValueError(f"cannot resize {x.shape[-2:]} to {(oh, ow)}: sizes must be positive")
    lead = x.shape[:-2]
    n = int(np.prod(lead, dtype=np.int64))
    y = x.reshape(n, h, w)
    if oh != h:
        t = np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(h, n * w)
        y = np.asarray(_resize_matrix(h, oh) @ t).reshape(oh, n, w).transpose(1, 0, 2)
    if ow != w:
        t = np.ascontiguousarray(y).reshape(n * oh, w)
        y = np.asarray(_resize_matrix(w, ow) @ t.T).T.reshape(n, oh, ow)
    return np.ascontiguousarray(y, np.float32).reshape(*lead, oh, ow)
