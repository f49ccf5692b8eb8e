"""Scoring explanations against ground truth: the engine every study shares.

  engine    Spec (what to compute), Scorer (jitted explainers and metrics of one model), run
            (explain and score every positive image, rows written as they come, resumable)
  aggregate summarise: per-method tables, class-mean and pooled pointing game, agreement
  methods   which methods a study runs: defaults from the registry, selection by name
  study     evaluate (a model in memory) and evaluate_checkpoint (a training workdir): the
            evaluation study with its report
"""

from cxr_jax.evaluation.aggregate import METRICS, summarise
from cxr_jax.evaluation.engine import Scorer, Spec, run
from cxr_jax.evaluation.methods import default_methods, for_task, select
from cxr_jax.evaluation.study import (evaluate, evaluate_checkpoint, gallery, gallery_picks,
                                      report_sections, spec_from_config)

__all__ = ["METRICS", "Scorer", "Spec", "default_methods", "evaluate", "evaluate_checkpoint",
           "for_task", "gallery", "gallery_picks", "report_sections", "run", "select",
           "spec_from_config", "summarise"]
