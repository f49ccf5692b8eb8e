"""How much a batch of images looks like radiographs, in three numbers and a histogram.

`realism(images)` measures, per image (grey, [N, H, W] or [N, H, W, 1], any intensity scale:
each image is min-max scaled to [0, 1] first):

  spectral_slope   the slope of log radial power against log spatial frequency, fitted over
                   frequencies 2 .. N/2 cycles per image (mean removed, Hann window against
                   edge leakage). Real radiographs fall steeply (about -3.7 at 224 px): most
                   of their contrast is in large, smooth structures.
  hf_fraction      the fraction of the (mean-removed, windowed) power in the top eighth of the
                   frequency band (above 7/8 of the Nyquist frequency): pixel-scale detail
                   and noise. Real radiographs hold about 3e-4 of their power there.
  gradient_ratio   the 99th over the 50th percentile of the gradient magnitude (central
                   differences): how much of the image is edge. Cartoons with hard edges and
                   flat regions score high.
  histogram        the intensity histogram (32 bins over [0, 1]), for distances between sets
                   (`histogram_distance`).

`summary(stats)` gives the mean and standard deviation of each statistic over the batch.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

STATISTICS = ("spectral_slope", "hf_fraction", "gradient_ratio")
BINS = 32


def _unit(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or min(x.shape[1:]) < 16:
        raise ValueError(f"realism expects grey images [N, H, W] or [N, H, W, 1] of at least "
                         f"16 x 16 pixels, got shape {np.shape(images)}.")
    if not np.isfinite(x).all():
        raise ValueError("realism: the images contain NaN or infinite values.")
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def _radial_power(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(frequencies 1..n/2 in cycles per image, power summed over each ring [N, n/2], total
    power [N]) of the mean-removed, Hann-windowed images."""
    n, h, w = x.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    centred = (x - x.mean(axis=(1, 2), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(centred)) ** 2).reshape(n, -1)
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    radius = np.rint(np.hypot(fy[:, None], fx[None, :])).astype(int).ravel()
    top = min(h, w) // 2
    rings = np.zeros((n, top + 1))
    keep = radius <= top
    for i in range(n):
        rings[i] = np.bincount(radius[keep], weights=power[i, keep], minlength=top + 1)
    counts = np.bincount(radius[keep], minlength=top + 1)
    freqs = np.arange(1, top + 1, dtype=np.float64)
    return freqs, rings[:, 1:] / counts[1:], rings[:, 1:], power.sum(axis=1)


def realism(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics (see the module docstring): {"spectral_slope": [N],
    "hf_fraction": [N], "gradient_ratio": [N], "histogram": [N, 32]}."""
    x = _unit(images)
    freqs, mean_power, ring_power, total = _radial_power(x)
    fit = freqs >= 2
    logp = np.log(np.maximum(mean_power[:, fit], 1e-300))
    slope = np.polyfit(np.log(freqs[fit]), logp.T, 1)[0]
    high = ring_power[:, freqs > freqs[-1] * 7 / 8].sum(axis=1)
    gy, gx = np.gradient(x, axis=(1, 2))
    mag = np.hypot(gx, gy).reshape(len(x), -1)
    p50, p99 = np.percentile(mag, [50, 99], axis=1)
    hist = np.stack([np.histogram(im, bins=BINS, range=(0.0, 1.0))[0] for im in x])
    return {"spectral_slope": slope, "hf_fraction": high / np.maximum(total, 1e-300),
            "gradient_ratio": p99 / np.maximum(p50, 1e-12),
            "histogram": hist / hist.sum(axis=1, keepdims=True)}


def summary(stats: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """{statistic: (mean, standard deviation)} over the images."""
    return {k: (float(np.mean(stats[k])), float(np.std(stats[k]))) for k in STATISTICS}


def histogram_distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Total-variation distance (0 same, 1 disjoint) between the mean intensity histograms of
    two sets of `realism` statistics."""
    ha, hb = a["histogram"].mean(axis=0), b["histogram"].mean(axis=0)
    return float(0.5 * np.abs(ha - hb).sum())
