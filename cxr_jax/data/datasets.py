"""Datasets for training and evaluation, by name: phantoms (the default) or a real folder."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from cxr_jax.data import phantoms
from cxr_jax.data.loader import ArraySource

NAMES = ("phantoms", "nih", "chexpert", "object_cxr", "brixia")


@dataclasses.dataclass
class Dataset:
    """A training source, held-out arrays and what the labels mean.

    Attributes:
      train: Grain random-access source of {"image", "labels"} rows.
      eval: {"image": [N,H,W,1], "labels": [N,K]} held-out arrays (plus "masks" for phantoms).
      label_names: names of the K labels.
      loss: the natural loss ("bce" multi-label, "mse" severity regression).
      extra: dataset-specific arrays (phantom masks, concepts, severity) for evaluation.
    """

    train: Any
    eval: Mapping[str, np.ndarray]
    label_names: tuple[str, ...]
    loss: str
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def phantom_dataset(config) -> Dataset:
    """Train and held-out phantoms from disjoint seeds."""
    tr = phantoms.generate(config.num_train, image_size=config.image_size, seed=config.seed * 2 + 1)
    te = phantoms.generate(config.num_test, image_size=config.image_size, seed=config.seed * 2 + 2)
    return Dataset(train=ArraySource({"image": tr.images, "labels": tr.labels}),
                   eval={"image": te.images, "labels": te.labels},
                   label_names=tuple(tr.finding_names), loss="bce", extra={"test": te})


def build(config) -> Dataset:
    """The dataset `config.dataset` names (see NAMES)."""
    if config.dataset == "phantoms":
        return phantom_dataset(config)
    if config.dataset in NAMES:
        from cxr_jax.data import real  # readers and decoders load only for real data

        return real.build(config)
    raise ValueError(f"Unknown dataset {config.dataset!r}: use one of {', '.join(NAMES)}.")
