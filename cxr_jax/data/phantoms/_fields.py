"""Randomness and pixel-field primitives shared by every drawing step.

Owns the counter-based draws (`_Draws`: every value a hash of seed, image index and slot), the
pixel grids, smooth random fields built from control points, the per-seed noise bank, the
anti-aliased soft edge and the broadcasting helper `_b`. Nothing here knows about anatomy.
"""

from __future__ import annotations

import functools
import math

import numpy as np

NOISE_BANK = 16          # images of standard-normal noise kept per (seed, size)

_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class _Draws:
    """Uniform draws per image; the k-th call of a kind uses the same slots for every chunking.

    Slot j of image i is the uniform hash(base_i + j C). Small requests are served from a block
    of the next BLOCK slots hashed at once (the same values, fewer numpy calls: a chunk makes a
    few hundred of them)."""

    BLOCK = 256

    def __init__(self, seed: int, index: np.ndarray):
        key = _mix(np.array([seed % 2**64], np.uint64))
        golden = np.array([0x9E3779B97F4A7C15], np.uint64)
        self._base = _mix(key ^ _mix(index.astype(np.uint64) * golden + key))
        self._slot = 0
        self.n = index.shape[0]
        self._block = np.empty((self.n, 0))   # uniforms of slots _block_at.._block_at + width
        self._block_at = 0

    def _hash(self, start: int, k: int) -> np.ndarray:
        """[B, k] float64 uniforms in [0, 1) of slots start..start+k-1."""
        slots = np.arange(start, start + k, dtype=np.uint64)
        x = _mix(self._base[:, None] + slots[None, :] * np.array([0xD1B54A32D192ED03], np.uint64))
        return (x >> _U64(11)).astype(np.float64) * (1.0 / 2**53)

    def uniform01(self, k: int) -> np.ndarray:
        """[B, k] float64 uniforms in [0, 1) (the next k slots)."""
        start, self._slot = self._slot, self._slot + k
        if k > self.BLOCK:
            return self._hash(start, k)
        at = start - self._block_at
        if at + k > self._block.shape[1]:
            self._block, self._block_at, at = self._hash(start, self.BLOCK), start, 0
        return self._block[:, at:at + k].copy()

    def skip(self, k: int) -> None:
        """Passes over the next k slots (a draw whose values are not needed), so that every later
        draw keeps its slots."""
        self._slot += k

    def u(self, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        """[B] uniforms in [lo, hi)."""
        return lo + (hi - lo) * self.uniform01(1)[:, 0]

    def bern(self, p: float | np.ndarray) -> np.ndarray:
        """[B] bool, True with probability p."""
        return self.uniform01(1)[:, 0] < p

    def choice(self, probs: tuple[float, ...]) -> np.ndarray:
        """[B] int category drawn with the given probabilities."""
        cdf = np.cumsum(np.asarray(probs, np.float64))
        return np.searchsorted(cdf / cdf[-1], self.uniform01(1)[:, 0], side="right")

    def field(self, g: int, gx: int | None = None) -> np.ndarray:
        """[B, g, gx] float32 iid zero-mean, unit-variance coefficients for a smooth field."""
        gx = g if gx is None else gx
        z = self.uniform01(g * gx).reshape(self.n, g, gx) - 0.5
        return (z * math.sqrt(12.0)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _axis(size: int) -> np.ndarray:
    """Pixel-centre coordinates in [-1, 1] along one axis, float32 [size]."""
    return ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _interp(size: int, g: int) -> np.ndarray:
    """Gaussian-kernel upsampling matrix [size, g] (float64) whose rows have unit L2 norm.

    With z iid unit-variance, (R z R^T)[i, j] has unit variance everywhere, and the field is
    smooth on the scale of the control-point spacing 2.4 / (g - 1).
    """
    centres = np.linspace(-1.2, 1.2, g)
    sigma = 0.8 * (centres[1] - centres[0])
    r = np.exp(-0.5 * ((_axis(size)[:, None].astype(np.float64) - centres[None, :]) / sigma) ** 2)
    r /= np.sqrt((r ** 2).sum(axis=1, keepdims=True))
    r.setflags(write=False)
    return r


def _matmul_1thread(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in row blocks small enough (m n k < 2^18) that BLAS runs them on one thread.

    Threaded BLAS on many small products spends its time waking and spinning threads, and
    `generate` already runs chunks in parallel threads; this keeps each product single-threaded
    (OpenBLAS' rule) without touching global BLAS settings. The result is the same product.
    """
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    rows = max(1, (1 << 18) // max(1, b.shape[0] * b.shape[1]) - 1)
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])
    return out


def _smooth(coeffs: np.ndarray, size: int) -> np.ndarray:
    """Smooth unit-variance random field [B, size, size] (float32) from coefficients [B, gy, gx].

    field_b = R_y z_b R_x^T, computed as 2-D GEMMs (a batched matmul with a broadcast operand
    falls off numpy's BLAS path). gy > gx gives features elongated horizontally. The GEMMs run in
    float64 and round to float32, so the result does not depend on how many images share the
    call (BLAS blocking changes the float64 rounding only, far below float32 ulp).
    """
    n, gy, gx = coeffs.shape
    ry, rx = _interp(size, gy), _interp(size, gx)
    z = np.ascontiguousarray(coeffs.transpose(0, 2, 1), dtype=np.float64)
    t = _matmul_1thread(z.reshape(n * gx, gy), ry.T).reshape(n, gx, size).transpose(0, 2, 1)
    t = np.ascontiguousarray(t).reshape(n * size, gx)
    return _matmul_1thread(t, rx.T).reshape(n, size, size).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise_bank(seed: int, size: int) -> np.ndarray:
    """Read-only [NB, size + pad, size + pad] float32 standard-normal noise for one seed."""
    rng = np.random.default_rng([seed % 2**32, (seed // 2**32) % 2**32, size, 0x5EED])
    pad = max(size // 2, 8)
    bank = rng.standard_normal((NOISE_BANK, size + pad, size + pad), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def noise_window(d: _Draws, seed: int, S: int) -> np.ndarray:
    """[B, S, S] standard-normal noise: for each image a random window of the seed's noise bank
    (three draws per image)."""
    bank = _noise_bank(seed, S)
    pad = bank.shape[-1] - S
    windows = np.lib.stride_tricks.sliding_window_view(bank, (S, S), axis=(1, 2))
    pick = np.floor(d.uniform01(3) * np.array([NOISE_BANK, pad + 1, pad + 1])).astype(np.int64)
    return windows[pick[:, 0], pick[:, 1], pick[:, 2]]


def _soft(d: np.ndarray, width) -> np.ndarray:
    """Anti-aliased indicator of d > 0: clip(d / width + 1/2, 0, 1) (in place on d); width a
    number or an array broadcasting against d."""
    if np.ndim(width):
        d /= width
    else:
        d *= 1.0 / width
    d += 0.5
    return np.clip(d, 0.0, 1.0, out=d)


def _b(x: np.ndarray) -> np.ndarray:
    """[B] parameter -> [B, 1, 1] float32 for broadcasting against images."""
    return np.asarray(x, np.float32)[:, None, None]
