"""The names a phantom batch speaks in and the container that carries it.

Owns the finding, concept and BrixIA zone names, the groups of findings (inside the lungs,
radio-opaque), the default prevalence, the intensity conventions and `PhantomBatch`. Every other
phantom module imports its names from here, so this one imports none of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FINDINGS: tuple[str, ...] = (
    "nodule", "mass", "consolidation", "effusion", "pneumothorax", "cardiomegaly",
    "foreign_object", "opacity",
)
CONCEPTS: tuple[str, ...] = (
    "left_lung", "right_lung", "heart", "mediastinum", "spine", "ribs", "clavicles", "diaphragm",
    "foreign_object", "opacity", "et_tube", "central_line", "ng_tube", "trachea",
    "cardiomediastinum",
)
# BrixIA zones: A-C the patient's right lung (image left), D-F the left lung; upper, middle, lower.
ZONES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
DEFAULT_PREVALENCE = 0.4
INTENSITIES = ("xrv", "unit")
# Findings whose masks lie inside the lung fields (on the image).
LUNG_FINDINGS: tuple[str, ...] = (
    "nodule", "mass", "consolidation", "effusion", "pneumothorax", "opacity",
)
# Findings that make up the "opacity" concept (radio-opaque lung pathology).
OPACITY_FINDINGS: tuple[str, ...] = ("nodule", "mass", "consolidation", "effusion", "opacity")


class PhantomBatch(NamedTuple):
    """A batch of phantoms with their ground truth.

    Fields:
      images: [N, H, W, 1] float32, TorchXRayVision scale [-1024, 1024] (intensity="xrv") or [0, 1].
      labels: [N, K] float32 in {0, 1}, K = len(FINDINGS).
      finding_names: FINDINGS.
      masks: [N, K, H, W] bool; masks[i, k] is non-empty exactly when labels[i, k] == 1.
      concepts: [N, C, H, W] bool anatomy and pathology regions, C = len(CONCEPTS).
      concept_names: CONCEPTS.
      severity: [N, 6] int32 BrixIA scores 0-3 of zones A-F (A-C right lung, D-F left lung,
        upper / middle / lower); all zero exactly when labels[:, opacity] == 0.
      shortcut_mask: [N, H, W] bool, the burned-in shortcut tag (all False without a shortcut).
      marker_mask: [N, H, W] bool, the burned-in laterality letter ("L"/"R"), whether it is an
        uncorrelated film marker or the shortcut tag.
      ctr: [N] float32 cardiothoracic ratio the heart was drawn with (> 0.5 iff cardiomegaly).
      index: [N] int64 position of each image in the seed's stream.
    """

    images: np.ndarray
    labels: np.ndarray
    finding_names: tuple[str, ...]
    masks: np.ndarray
    concepts: np.ndarray
    concept_names: tuple[str, ...]
    severity: np.ndarray
    shortcut_mask: np.ndarray
    marker_mask: np.ndarray
    ctr: np.ndarray
    index: np.ndarray


def first(batch: PhantomBatch, n: int) -> PhantomBatch:
    """The first n phantoms of a batch (array fields sliced, name fields kept)."""
    return batch._replace(**{k: v[:n] for k, v in batch._asdict().items()
                             if isinstance(v, np.ndarray) and v.ndim > 0})
