"""What the film and the department add to the patient: exposure, burned-in letters, noise.

Owns per-patient contrast and brightness, the smooth illumination field and the film shoulder
(`expose`), the burned-in laterality marker or shortcut tag (`burn_marker`, with its bitmap font)
and quantum noise taken as a window of the seed's noise bank (`add_noise`). All work in unit
intensities; the conversion to the TorchXRayVision scale happens in `generate`.
"""

from __future__ import annotations

import functools

import numpy as np

from cxr_jax.data.phantoms._fields import _b, _Draws, _smooth, noise_window

# Bitmap font for the laterality markers (5 wide, 7 high).
_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@functools.lru_cache(maxsize=8)
def _glyph(letter: str, size: int) -> np.ndarray:
    """Letter bitmap scaled (nearest) to about 9% of the image height, bool [h, w]."""
    bits = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    h = max(7, int(round(0.09 * size)))
    w = max(5, int(round(h * 5 / 7)))
    return bits[(np.arange(h) * 7) // h][:, (np.arange(w) * 5) // w]


def expose(d: _Draws, S: int, contrast, bright, img: np.ndarray) -> None:
    """Applies contrast [B] around 0.45, brightness [B] and a smooth illumination field, then a
    film shoulder: dense anatomy saturates softly below 0.86, so metal (0.96-1) drawn afterwards
    stands out (in place)."""
    img -= 0.45
    img *= _b(contrast)
    img += _b(bright + 0.45)
    img += 0.02 * _smooth(d.field(4), S)
    over = np.maximum(img - 0.72, 0.0)
    np.minimum(img, 0.72, out=img)
    img += over / (1.0 + over * (1 / 0.14))


def burn_marker(d: _Draws, S: int, img: np.ndarray, masks: np.ndarray,
                shortcut: tuple[int, float] | None):
    """Burns a printed letter (0.80-0.90, below metal) into the top corners of the images.

    Without a shortcut, half the images get an "L" or "R" in the left or right corner,
    independent of everything else. With shortcut (k, rate), an "R" goes into the top-left corner
    of an image whose finding k has a non-empty mask with probability rate, of the others with
    probability 1 - rate. Returns (img, marker mask, shortcut mask).
    """
    marker_on = d.bern(0.5)
    marker_right = d.bern(0.5)
    letter_l = d.bern(0.5)
    tag_value = d.u(0.80, 0.90)
    tag_u = d.u()
    margin = max(1, int(round(0.04 * S)))
    gl, gr = _glyph("L", S), _glyph("R", S)
    gh, gw = gl.shape
    marker = np.zeros((d.n, S, S), bool)
    if shortcut is None:
        for right in (False, True):
            sub = np.nonzero(marker_on & (marker_right == right))[0]
            c0 = S - margin - gw if right else margin
            marker[sub, margin:margin + gh, c0:c0 + gw] = np.where(
                letter_l[sub, None, None], gl, gr)
        shortcut_bin = np.zeros((d.n, S, S), bool)
    else:
        k_idx, rate = shortcut
        pos = masks[:, k_idx].any(axis=(1, 2))
        on = np.where(pos, tag_u < rate, tag_u < 1.0 - rate)
        marker[on, margin:margin + gh, margin:margin + gw] = gr
        shortcut_bin = marker
    return np.where(marker, _b(tag_value), img), marker, shortcut_bin


def add_noise(d: _Draws, seed: int, S: int, noise_sd, img: np.ndarray) -> None:
    """Adds Gaussian noise of sd noise_sd [B], a random window of the seed's noise bank, and
    clips to [0, 1] (in place)."""
    noise = noise_window(d, seed, S)
    noise *= _b(noise_sd)
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
