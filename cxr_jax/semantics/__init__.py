"""Semantics: which concepts the units of a network detect, and which concepts carry a prediction.

  dissection   network dissection (Bau et al. 2017) in two streaming passes: per-unit
               thresholds from a bounded-error histogram sketch, then IoU of each unit's
               thresholded, upsampled map with each concept mask, summed over the data; labels
               and scores per unit; chance baselines (re-initialised weights, spatially shuffled
               masks); sharded over a device mesh
  attribution  semantic attribution: each unit's contribution to one prediction (Grad-CAM
               channel weight x activation mass, or IBA capacity per channel), summed over the
               units carrying each concept label, plus "unlabelled"
  concepts     concept masks for dissection from real data: the COVID-19 CXR segmentation
               set (masks pasted at their offsets) and NIH boxes as filled rectangles, and a
               re-iterable batch source that skips unreadable images
  study        the semantics study (experiments.semantics): five phantom models trained,
               dissected beside the baselines, explained by concept, reported (not imported
               here; `from cxr_jax.semantics import study`)

The public contract: `dissect(model, variables, batches, *, layer, quantile=0.005,
iou_threshold=0.04) -> Dissection` with fields thresholds [U], iou [U, C], labels [U], scores [U].
"""

from cxr_jax.semantics.attribution import (ESTIMATORS, NORMALISATIONS, UNLABELLED,
                                           ConceptExplanation, explain_concepts,
                                           gradcam_contributions, semantic_attribution,
                                           unit_contributions)
from cxr_jax.semantics.concepts import (ConceptBatch, ConceptBatches, box_concept_masks,
                                        concept_batches, concept_masks, read_mask)
from cxr_jax.semantics.dissection import (MASK_RESIZES, SHUFFLES, Baselines, Counts,
                                          Dissection, Sketch, count, dissect, dissect_baseline,
                                          dissect_features, iou_from_counts, merge,
                                          reinitialize, resize_masks, shuffle_masks,
                                          sketch_init, sketch_threshold, sketch_update,
                                          unit_masks)

__all__ = ["ESTIMATORS", "MASK_RESIZES", "NORMALISATIONS", "SHUFFLES", "UNLABELLED", "Baselines",
           "ConceptBatch", "ConceptBatches", "ConceptExplanation", "Counts", "Dissection",
           "Sketch", "box_concept_masks", "concept_batches", "concept_masks", "count", "dissect",
           "dissect_baseline", "dissect_features", "explain_concepts", "gradcam_contributions",
           "iou_from_counts", "merge", "read_mask", "reinitialize", "resize_masks",
           "semantic_attribution", "shuffle_masks", "sketch_init", "sketch_threshold",
           "sketch_update", "unit_contributions", "unit_masks"]
