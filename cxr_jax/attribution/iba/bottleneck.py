"""The bottleneck's maths: capacity, the smoothing of lambda, capacity -> saliency in bits.

A bottleneck at a layer mixes the activation R with noise eps ~ N(mu, sigma^2) by a mask
lambda = smooth(sigmoid(alpha)) in [0, 1]; the information that passes is measured by

    r = (R - mu) / sigma
    capacity = KL( N(lambda r, (1 - lambda)^2) || N(0, 1) )
             = -1/2 [1 + log (1 - lambda)^2 - (lambda r)^2 - (1 - lambda)^2]   (nats per feature)

The noise is drawn by `standard_normal`, which needs a quarter of the threefry words
`jax.random.normal` does: on CPU the words are most of the cost of an IBA step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.common.filters import gaussian_matrix, separable

Array = jax.Array


def kl_capacity(r: Array, lam: Array, one_minus_lam: Array | None = None) -> Array:
    """Per-feature capacity KL(N(lam r, (1 - lam)^2) || N(0, 1)) in nats.

        KL = -1/2 [1 + log (1 - lam)^2 - (lam r)^2 - (1 - lam)^2]

    Args:
      r: standardised activation (R - mu) / sigma, any shape.
      lam: lambda in [0, 1], broadcastable to r.
      one_minus_lam: 1 - lam when known more precisely than by subtraction (e.g. smoothed
        sigmoid(-alpha)); it is floored at 1e-12 so lam -> 1 gives a large, finite capacity.
    Returns:
      Capacity, the broadcast shape of r and lam.
    """
    if one_minus_lam is None:
        one_minus_lam = 1.0 - lam
    one_minus_lam = jnp.maximum(one_minus_lam, 1e-12)
    return -0.5 * (1.0 + 2.0 * jnp.log(one_minus_lam) - jnp.square(lam * r)
                   - jnp.square(one_minus_lam))


# Odd constants of the murmur3 32-bit finaliser and the golden-ratio step between lanes.
_MIX1, _MIX2, _LANE = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9


def _mix32(h: Array) -> Array:
    """murmur3's finaliser: a bijection of uint32 in which every input bit flips each output bit
    with probability about 1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_MIX1)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(_MIX2)
    return h ^ (h >> 16)


def standard_normal(key: Array, shape: tuple[int, ...]) -> Array:
    """N(0, 1) float32 draws of `shape`, deterministic by key, for the bottleneck's noise.

    `jax.random.normal` spends most of its time on CPU making one threefry word per value (about
    10 ns each on our 2-core machine; an IBA step at DenseNet-121's denseblock3 draws 16 million
    values for a batch of 8). Here threefry makes one word per four values and each word w
    becomes four by mix(w + j * 0x9E3779B9), j = 0..3, with murmur3's finaliser as mix. mix is
    a bijection, so each value alone is exactly as uniform as threefry's word; the four of a
    word are decorrelated by mix's avalanche (the test checks moments, a Kolmogorov-Smirnov
    distance and the correlation between lanes). The top 23 bits give u in the open interval
    (0, 1) and sqrt(2) erfinv(2u - 1) the normal value (|z| < 5.3). 2.5x faster than
    `jax.random.normal` at that size; the draws differ from it, their distribution does not.
    """
    n = math.prod(shape)
    words = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
    lanes = jnp.arange(4, dtype=jnp.uint32)[:, None] * jnp.uint32(_LANE)
    bits = _mix32(words[None, :] + lanes).reshape(-1)[:n]
    u = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))
    return (math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)).reshape(shape)


def _radius(sigma: float) -> int:
    """The reference's kernel radius, round(2 sigma) (its kernel has 2 round(2 sigma) + 1 taps)."""
    return int(round(2 * sigma))


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """The reference's smoothing kernel along one axis: size 2 round(2 sigma) + 1, sums to 1.

    The reference's 2-D kernel exp(-(dx^2 + dy^2) / (2 sigma^2)), normalised, is the outer
    product of this one with itself.
    """
    size = 2 * _radius(sigma) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-x * x / (2.0 * sigma * sigma))
    return k / k.sum()


def reflect_smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """The 1-D smoothing along an axis of length n as a matrix M [n, n]: out = M @ a.

    The kernel of `gaussian_kernel_1d` with reflect padding that does not repeat the edge
    sample (torch's ReflectionPad2d, scipy's "mirror" mode).
    """
    p = _radius(sigma)
    if n <= p:
        raise ValueError(
            f"Smoothing with sigma={sigma} reflect-pads {p} pixels, which needs a feature map of "
            f"at least {p + 1}x{p + 1}; the bottleneck layer's map has a side of {n}. Use a "
            f"larger input, an earlier layer, or sigma=0.")
    return gaussian_matrix(n, sigma, mode="mirror", radius=p)


def smooth(a: Array, sigma: float) -> Array:
    """Gaussian smoothing of maps [..., h, w, C] over (h, w) per channel, reflect padding.

    The reference's depthwise 2-D convolution (kernel 2 round(2 sigma) + 1, ReflectionPad2d) is
    separable, so it is done as two small matrix products, a_s = M_h a M_w^T per channel, which
    is exact and cheaper than the convolution. sigma 0 or None returns `a` unchanged.
    """
    if not sigma:
        return a
    h, w = a.shape[-3], a.shape[-2]
    return separable(a, reflect_smoothing_matrix(h, sigma), reflect_smoothing_matrix(w, sigma),
                     axes=(-3, -2))


def capacity_to_saliency(capacity: Array, size: tuple[int, int]) -> Array:
    """Capacity [B, h, w, C] in nats -> saliency [B, H, W] in bits per input pixel.

        s = sum_C capacity / ln 2 * (h w) / (H W),  then bilinear resize to (H, W)

    Bilinear with half-pixel centres, as skimage's `resize(order=1)` that the reference uses; at
    the border values clamp to the edge (skimage mode="edge") where the reference's default
    mirrors: that changes only the outer half feature pixel, and it keeps the map's total equal
    to the total capacity in bits (exactly for integer upsampling factors).
    """
    b, h, w, _ = capacity.shape
    big_h, big_w = size
    bits = jnp.sum(capacity, axis=-1) / math.log(2.0) * ((h * w) / (big_h * big_w))
    return jax.image.resize(bits, (b, big_h, big_w), method="bilinear")
