"""`generate`: argument checks, the output batch, its chunks and the threads that render them.

Owns the public entry point and the order of the drawing steps for one chunk (`_render`): pose,
patient, anatomy, findings, exposure, foreign objects, marker, noise, intensity scale. Each
step draws from the chunk's `_Draws` in turn, so this order is what fixes every pixel.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Any, Mapping

import numpy as np

from cxr_jax.data.phantoms import anatomy, blend, film, findings, texture, tubes
from cxr_jax.data.phantoms._fields import _Draws
from cxr_jax.data.phantoms.geometry import draw_frame
from cxr_jax.data.phantoms.schema import (CONCEPTS, DEFAULT_PREVALENCE, FINDINGS, INTENSITIES,
                                          OPACITY_FINDINGS, PhantomBatch)

_MIN_SIZE = 32
STYLES = ("v1", "v2")
_CHUNK = 6
BORDER_BLUR = (1.0, 2.2)   # v2: range of the per-image blur of the lung borders (x anti-aliasing)
_OPACITY_SOURCES = [FINDINGS.index(k) for k in OPACITY_FINDINGS]


def _render(seed: int, out: PhantomBatch, lo: int, hi: int, prev: np.ndarray,
            shortcut: tuple[int, float] | None, xrv: bool, style: str = "v2",
            contrast: float = 1.0) -> None:
    """Renders images lo..hi-1 of `out` in place (images, masks, concepts, labels, ...)."""
    d = _Draws(seed, out.index[lo:hi])
    fr = draw_frame(d, out.images.shape[1])
    pt = anatomy.draw_patient(d, prev)
    d2 = texture.draws(seed, out.index[lo:hi]) if style == "v2" else None
    blur = d2.u(*BORDER_BLUR) if d2 is not None else None
    an = anatomy.render(d, fr, pt, style, blur)
    if d2 is not None:
        an.marks = texture.vessels(d2, seed, fr, pt, an.lung)
        texture.soft_tissue(d2, fr, pt, an.body, an.lung, an.img)
    masks = out.masks[lo:hi]
    masks[...] = False
    healthy = an.img + an.marks if contrast != 1.0 else None
    severity = findings.render(d, fr, pt, an, masks, blend.draw(d2) if d2 is not None else None)
    img = an.img
    if healthy is not None:  # scale what the findings changed
        img -= healthy
        img *= np.float32(contrast)
        img += healthy
    film.expose(d, fr.S, pt.contrast, pt.bright, img)
    lines = tubes.draw(d2, fr, pt, img) if d2 is not None else (fr.zeros(bool),) * 3
    fo_bin = findings.foreign_objects(d, fr, pt.has["foreign_object"], img, masks)
    img, marker, shortcut_bin = film.burn_marker(d, fr.S, img, masks, shortcut)
    if d2 is None:
        film.add_noise(d, seed, fr.S, pt.noise_sd, img)
    else:
        texture.exposure(d2, seed, fr.S, img)
    if xrv:
        img *= 2048.0
        img -= 1024.0
    out.images[lo:hi, ..., 0] = img
    out.labels[lo:hi] = masks.any(axis=(2, 3))
    concepts = out.concepts[lo:hi]
    for j, m in enumerate(an.concept_masks() + (fo_bin,)):
        concepts[:, j] = m
    for name, m in zip(tubes.NAMES, lines):
        concepts[:, CONCEPTS.index(name)] = m
    concepts[:, CONCEPTS.index("trachea")] = an.trachea_bin
    np.logical_or(an.heart_bin, an.med_bin, out=concepts[:, CONCEPTS.index("cardiomediastinum")])
    np.any(masks[:, _OPACITY_SOURCES], axis=1, out=concepts[:, CONCEPTS.index("opacity")])
    out.severity[lo:hi] = severity
    out.shortcut_mask[lo:hi] = shortcut_bin
    out.marker_mask[lo:hi] = marker
    out.ctr[lo:hi] = pt.ctr


def _check_prevalence(prevalence: Any) -> np.ndarray:
    """[K] prevalences from None, one probability or {finding: probability}."""
    if prevalence is None:
        return np.full(len(FINDINGS), DEFAULT_PREVALENCE)
    if isinstance(prevalence, Mapping):
        unknown = set(prevalence) - set(FINDINGS)
        if unknown:
            raise ValueError(f"prevalence names unknown findings {sorted(unknown)}; "
                             f"use names from {FINDINGS}.")
        out = np.array([float(prevalence.get(k, DEFAULT_PREVALENCE)) for k in FINDINGS])
    else:
        out = np.full(len(FINDINGS), float(prevalence))
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"prevalence must lie in [0, 1], got {prevalence!r}.")
    return out


def _check_shortcut(shortcut: Any) -> tuple[int, float] | None:
    """(finding index, rate) from None or {"label": finding, "rate": r}."""
    if shortcut is None:
        return None
    if not isinstance(shortcut, Mapping) or set(shortcut) - {"label", "rate"} \
            or "label" not in shortcut:
        raise ValueError("shortcut must be a dict like {'label': 'cardiomegaly', 'rate': 0.9}, "
                         f"got {shortcut!r}.")
    label = shortcut["label"]
    if label not in FINDINGS:
        raise ValueError(f"shortcut label {label!r} is not a finding; use one of {FINDINGS}.")
    rate = float(shortcut.get("rate", 0.9))
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"shortcut rate must lie in [0, 1], got {rate!r}.")
    return FINDINGS.index(label), rate


def _is_int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def _check_scalars(n, image_size, seed, intensity, start) -> None:
    """Raises ValueError naming the first argument of `generate` outside its domain."""
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    if not _is_int(image_size) or image_size < _MIN_SIZE:
        raise ValueError(f"image_size must be an int >= {_MIN_SIZE}, got {image_size!r}.")
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}.")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    if not _is_int(start) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}.")


def _empty_batch(n: int, S: int, start: int) -> PhantomBatch:
    """An uninitialised batch of n images of S x S for stream indices start..start+n-1."""
    K, C = len(FINDINGS), len(CONCEPTS)
    return PhantomBatch(
        images=np.empty((n, S, S, 1), np.float32),
        labels=np.empty((n, K), np.float32),
        finding_names=FINDINGS,
        masks=np.empty((n, K, S, S), bool),
        concepts=np.empty((n, C, S, S), bool),
        concept_names=CONCEPTS,
        severity=np.empty((n, 6), np.int32),
        shortcut_mask=np.empty((n, S, S), bool),
        marker_mask=np.empty((n, S, S), bool),
        ctr=np.empty((n,), np.float32),
        index=np.arange(start, start + n, dtype=np.int64),
    )


def _settle_allocator() -> None:
    """Allocates and frees one 30 MiB block. glibc's malloc serves it by mmap, and freeing it
    raises malloc's dynamic mmap threshold to 30 MiB and its trim threshold to 60 MiB, as any
    program that frees a block of that size does. Otherwise the 1-2 MiB temporaries of every
    chunk are handed back to the kernel on free and faulted in (zeroed) again when the next
    chunk allocates them: 500-1500 page faults per 224-pixel image (measured), up to a fifth
    of the time. Only allocation changes, never a value; other allocators just allocate and
    free a block."""
    np.empty(30 << 20, np.uint8)


def _render_all(render, n: int, S: int, num_threads: int | None) -> None:
    """Calls render(lo, hi) on chunks covering 0..n-1, in parallel threads where there are
    several chunks. Small chunks keep the ~60 temporaries of a chunk in cache (measured fastest
    at ~6 images of 224 x 224); chunks are independent, and numpy releases the GIL."""
    chunk = max(1, (_CHUNK * 224 * 224) // (S * S))
    spans = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    threads = num_threads if num_threads is not None else min(2, os.cpu_count() or 1)
    if threads <= 1 or len(spans) <= 1:
        for lo, hi in spans:
            render(lo, hi)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(render, lo, hi) for lo, hi in spans]:
                f.result()


def generate(n: int, *, image_size: int = 224, seed: int = 0,
             shortcut: Mapping[str, Any] | None = None, intensity: str = "xrv",
             start: int = 0, prevalence: float | Mapping[str, float] | None = None,
             num_threads: int | None = None, style: str = "v2",
             contrast: float = 1.0) -> PhantomBatch:
    """Generates n chest radiograph phantoms with exact finding masks and concept masks.

    Each finding k is present independently with probability `prevalence` (0.4 by default);
    labels[i, k] = 1 iff masks[i, k] is non-empty, by construction. Geometry (normalised
    coordinates, image = [-1, 1]^2): the patient frame (X, Y) is the image frame scaled by
    s in [0.9, 1], rotated by up to 3.4 degrees and shifted by up to 0.05. Lungs are skewed
    half-ellipses above the diaphragm domes, lateral margins at |X| in [0.68, 0.76]; the heart is
    a tilted ellipse whose horizontal extent is ctr x (thorax width), ctr in [0.38, 0.46] for
    normal hearts and [0.56, 0.66] with cardiomegaly (thorax width = distance between the lungs'
    lateral margins), so the mask measure "heart wider than half the thorax" agrees with the
    label. Lung findings (nodule, mass, consolidation, effusion, pneumothorax, opacity) lie inside
    the lung masks. BrixIA zones split each lung into thirds of its apex-to-base height; a
    zone's haze adds 0.08 / 0.14 / 0.20 (unit intensities) for scores 1 / 2 / 3.

    The shapes and intensities below are v1's; v2 (the default) draws the same patients,
    sites, sizes and brightnesses, and changes how they look (soft lesion margins, vessels,
    soft tissue, scatter, blur, signal-dependent noise, lines and tubes; see the package
    docstring), with finding masks that keep their meaning (v2's spicules and consolidation
    outlines differ from v1's).

    Intensities are built in unit scale (0 = air outside the body, lungs ~0.2-0.35, soft tissue
    ~0.5, heart / mediastinum / abdomen ~0.75), then per-patient contrast and a smooth
    illumination field are applied and dense anatomy is softly compressed below 0.86 (a film
    shoulder); metal objects (0.96-1) and burned-in markers (0.8-0.9) are drawn after it, then
    Gaussian noise (sd 0.012-0.025); the result is clipped to [0, 1] and, for intensity="xrv",
    mapped by x -> 2048 x - 1024 (TorchXRayVision convention). Finding sizes (radius, normalised
    units) and added brightness: nodule 0.07-0.095 / +0.38-0.48, mass 0.11-0.16 lobulated /
    +0.24-0.34, consolidation 0.15-0.28 irregular and mottled / up to +0.30-0.40, effusion
    fills the lung's air (~+0.3), pneumothorax -0.08-0.12 and no markings, pleural line
    +0.10-0.15.

    Args:
      n: number of images (>= 0).
      image_size: H = W in pixels, >= 32.
      seed: any int; the same (seed, index) always gives the same image.
      shortcut: None, or {"label": finding, "rate": r}: an "R" tag burned into the top-left
        corner of a positive image with probability r and of a negative one with probability
        1 - r (and no other marker). Without it, half the images carry an uncorrelated "L"/"R"
        film marker in a top corner.
      intensity: "xrv" ([-1024, 1024]) or "unit" ([0, 1]).
      start: index of the first image in the seed's stream (random access).
      prevalence: one probability for every finding, or {finding: probability}.
      num_threads: threads rendering chunks in parallel (default min(2, CPUs)); results do not
        depend on it.
      style: "v2" (the default: textured, findings that blend in, lines and tubes) or "v1"
        (the shapes above, bit-identical to earlier releases, for reproducing their numbers).
      contrast: scales every pixel change the lung findings make (not cardiomegaly's larger
        heart, foreign objects or markers): 1 as drawn, below 1 subtler (the difficulty
        dial), 0 invisible while the labels and masks stay.
    Returns:
      A `PhantomBatch`. Memory: about 27 bytes per pixel per image (1.4 MB at 224 x 224, mostly
      the bool masks and concepts), so stream large sets with `start` instead of one call.
    """
    _check_scalars(n, image_size, seed, intensity, start)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}.")
    if not 0.0 <= float(contrast) <= 4.0:
        raise ValueError(f"contrast must lie in [0, 4], got {contrast!r}.")
    prev = _check_prevalence(prevalence)
    sc = _check_shortcut(shortcut)
    n, S, seed = int(n), int(image_size), int(seed)
    out = _empty_batch(n, S, start)
    render = functools.partial(_render, seed, out, prev=prev, shortcut=sc,
                               xrv=intensity == "xrv", style=style, contrast=float(contrast))
    _settle_allocator()
    _render_all(render, n, S, num_threads)
    return out
