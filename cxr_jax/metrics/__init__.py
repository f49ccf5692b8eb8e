"""Metrics: classification, localisation, faithfulness and randomisation sanity checks.

Modules: `classification` (accuracy, MAE, AUROC, MCC, paired bootstrap); localisation in `pointing` (pointing game and
its summary), `boxes` (multi-Otsu boxes, box IoU/IoBB/IoR, box <-> mask, method agreement) and
`heat` (effective heat ratio); `faithfulness` (deletion/insertion curves, sensitivity-n);
`randomization` (model-randomisation sanity checks, consistency).

Every metric is a pure function returning per-image values (NaN where undefined, e.g. an image
without ground truth) plus aggregate helpers. Metrics that query the model take
`(model, variables, x, saliency, targets)` with `model.apply(variables, x) -> logits`.
Definitions: docs/METHODS.md ("Localisation metrics", "Faithfulness metrics").
"""

from cxr_jax.metrics.boxes import (
    agreement_matrix,
    box_iou,
    box_mask,
    box_set_iou,
    boxes_from_saliency,
    iobb,
    box_recall,
    ior,
    mask_box,
    top_class_mask,
)
from cxr_jax.metrics.classification import (
    PairedDifference,
    Sums,
    accuracy,
    accuracy_sums,
    auroc,
    best_mcc_threshold,
    bootstrap_indices,
    mcc,
    paired_auroc_difference,
    weighted_auroc,
    mae,
    mae_sums,
    multilabel_accuracy,
    multilabel_accuracy_sums,
)
from cxr_jax.metrics.faithfulness import (
    PerturbationCurve,
    SensitivityN,
    deletion_auc,
    deletion_curve,
    gaussian_blur,
    insertion_auc,
    insertion_curve,
    insertion_deletion,
    sensitivity_n,
    sensitivity_n_values,
)
from cxr_jax.metrics.heat import effective_heat_ratio
from cxr_jax.metrics.pointing import (
    PointingGameSummary,
    centre_point_saliency,
    pointing_game,
    pointing_game_centre,
    pointing_game_points,
    pointing_game_interval,
    class_mean_interval,
    pointing_game_summary,
    saliency_peaks,
)
from cxr_jax.metrics.randomization import (
    ConsistencySummary,
    cascading_randomization,
    consistency_summary,
    independent_randomization,
    model_layer_paths,
    randomize_layers,
    spearman,
    ssim,
)

__all__ = [
    # classification
    "Sums",
    "accuracy",
    "accuracy_sums",
    "auroc",
    "mcc",
    "best_mcc_threshold",
    "bootstrap_indices",
    "weighted_auroc",
    "paired_auroc_difference",
    "PairedDifference",
    "mae",
    "mae_sums",
    "multilabel_accuracy",
    "multilabel_accuracy_sums",
    # localisation: pointing, boxes, heat
    "PointingGameSummary",
    "agreement_matrix",
    "box_iou",
    "box_mask",
    "box_set_iou",
    "boxes_from_saliency",
    "centre_point_saliency",
    "effective_heat_ratio",
    "iobb",
    "box_recall",
    "ior",
    "mask_box",
    "pointing_game",
    "pointing_game_centre",
    "pointing_game_points",
    "pointing_game_interval",
    "class_mean_interval",
    "pointing_game_summary",
    "saliency_peaks",
    "top_class_mask",
    # faithfulness
    "PerturbationCurve",
    "SensitivityN",
    "deletion_auc",
    "deletion_curve",
    "gaussian_blur",
    "insertion_auc",
    "insertion_curve",
    "insertion_deletion",
    "sensitivity_n",
    "sensitivity_n_values",
    # randomisation and consistency
    "ConsistencySummary",
    "cascading_randomization",
    "consistency_summary",
    "independent_randomization",
    "model_layer_paths",
    "randomize_layers",
    "spearman",
    "ssim",
]
