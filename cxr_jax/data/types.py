"""The data types studies exchange: a training `Dataset` and a `LocalisationSet` to score
explanations on. Readers (`real`) and builders (`datasets`) both produce them."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass
class Dataset:
    """A training source, held-out arrays and what the labels mean.

    Attributes:
      train: Grain random-access source of {"image", "labels"} rows.
      eval: {"image": [N,H,W,1], "labels": [N,K]} held-out arrays (plus "masks" for phantoms).
      label_names: names of the K labels.
      loss: the natural loss ("bce" multi-label, "mse" severity regression).
      extra: dataset-specific data for evaluation ("test": the held-out `PhantomBatch` with its
        masks; "test_records": the held-out records of a real dataset).
    """

    train: Any
    eval: Mapping[str, np.ndarray]
    label_names: tuple[str, ...]
    loss: str
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LocalisationSet:
    """Images with per-finding ground-truth regions, for scoring explanations.

    Attributes:
      images: [N, H, W, 1] float32 (model input convention).
      masks: [N, K, H, W] bool regions (all False where a dataset has none, e.g. BrixIA).
      labels: [N, K]; an image is explained for finding k where labels[n, k] == 1.
      names: the K finding names (matching the model's outputs).
      ids: [N] identifiers (row numbers or file names) for the report.
      require_mask: only explain images whose mask for the finding is non-empty.
      skipped: [(id, reason)] images that could not be read.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    ids: list
    require_mask: bool = True
    skipped: list = dataclasses.field(default_factory=list)
