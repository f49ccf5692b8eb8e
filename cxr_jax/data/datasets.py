"""Datasets for training and evaluation, by name: phantoms (the default) or a real folder."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from cxr_jax.data import phantoms
from cxr_jax.data.loader import ArraySource

NAMES = ("phantoms", "phantoms_severity", "nih", "chexpert", "object_cxr", "brixia")


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


_CHUNK = 2048


def _phantom_training_arrays(n: int, image_size: int, seed: int, labels) -> dict:
    """Images and labels of phantoms [0, n) of `seed`, rendered in chunks into preallocated
    arrays, so the masks and concept maps (needed for evaluation, not training; at 128 px ~20x
    the images' size) never exist for all n at once and the images are held once, not twice.
    Identical to one `phantoms.generate(n, ...)` call."""
    chunk = phantoms.generate(min(_CHUNK, n), image_size=image_size, seed=seed)
    y = labels(chunk)
    out = {"image": np.empty((n,) + chunk.images.shape[1:], chunk.images.dtype),
           "labels": np.empty((n,) + y.shape[1:], y.dtype)}
    for start in range(0, n, _CHUNK):
        if start:  # the first chunk is already rendered
            chunk = phantoms.generate(min(_CHUNK, n - start), image_size=image_size, seed=seed,
                                      start=start)
        out["image"][start:start + len(chunk.images)] = chunk.images
        out["labels"][start:start + len(chunk.images)] = labels(chunk)
        chunk = None  # free this chunk's masks before rendering the next
    return out


def phantom_dataset(config) -> Dataset:
    """Train and held-out phantoms from disjoint seeds."""
    tr = _phantom_training_arrays(config.num_train, config.image_size, config.seed * 2 + 1,
                                  lambda b: b.labels)
    te = phantoms.generate(config.num_test, image_size=config.image_size, seed=config.seed * 2 + 2)
    return Dataset(train=ArraySource(tr),
                   eval={"image": te.images, "labels": te.labels},
                   label_names=tuple(te.finding_names), loss="bce", extra={"test": te})


def phantom_severity_dataset(config) -> Dataset:
    """Phantoms labelled with their BrixIA-style global severity (sum of six zone scores, 0-18),
    for severity regressors (MSE); the opacity mask is the ground-truth region."""
    score = lambda b: b.severity.sum(axis=1, keepdims=True).astype(np.float32)
    tr = _phantom_training_arrays(config.num_train, config.image_size, config.seed * 2 + 1, score)
    te = phantoms.generate(config.num_test, image_size=config.image_size, seed=config.seed * 2 + 2)
    return Dataset(train=ArraySource(tr),
                   eval={"image": te.images, "labels": score(te)},
                   label_names=("global_severity",), loss="mse", extra={"test": te})


def build(config) -> Dataset:
    """The dataset `config.dataset` names (see NAMES)."""
    if config.dataset == "phantoms":
        return phantom_dataset(config)
    if config.dataset == "phantoms_severity":
        return phantom_severity_dataset(config)
    if config.dataset in NAMES:
        from cxr_jax.data import real  # readers and decoders load only for real data

        return real.build(config)
    raise ValueError(f"Unknown dataset {config.dataset!r}: use one of {', '.join(NAMES)}.")


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


def localisation_set(config, label_names) -> LocalisationSet:
    """Held-out images with ground truth: phantom masks, NIH boxes, Object-CXR shapes, or
    BrixIA images (no regions: faithfulness metrics only)."""
    if config.dataset == "phantoms":
        te = phantoms.generate(config.num_test, image_size=config.image_size,
                               seed=config.seed * 2 + 2)
        if tuple(te.finding_names) != tuple(label_names):
            raise ValueError(f"Model labels {label_names} do not match phantom findings "
                             f"{te.finding_names}.")
        return LocalisationSet(te.images, te.masks, te.labels, tuple(te.finding_names),
                               list(range(len(te.images))))
    if config.dataset == "phantoms_severity":
        te = phantoms.generate(config.num_test, image_size=config.image_size,
                               seed=config.seed * 2 + 2)
        k = list(te.finding_names).index("opacity")
        return LocalisationSet(te.images, te.masks[:, k:k + 1], te.labels[:, k:k + 1],
                               tuple(label_names), list(range(len(te.images))))
    from cxr_jax.data import images as imaging, records

    root, size = config.data_dir, config.image_size
    if config.dataset == "nih":
        recs = [r for r in records.read_nih(root) if r.boxes]
    elif config.dataset == "object_cxr":
        recs = [r for r in records.read_object_cxr(
            os.path.join(root, "dev.csv"), root=os.path.join(root, "dev"), masks=True)]
    elif config.dataset == "brixia":
        recs = [r for r in records.read_brixia(os.path.join(root, "metadata_global_v2.csv"),
                                               root=os.path.join(root, "dicom_clean"))
                if r.split == "consensus_test"]
    else:
        raise ValueError(f"No localisation ground truth for dataset {config.dataset!r}: use "
                         "phantoms, nih, object_cxr or brixia.")
    recs = recs[: config.num_test]
    names = tuple(label_names)
    xs, ms, ls, ids, skipped = [], [], [], [], []
    for rec in recs:
        try:
            x, boxes, box_m = imaging.load_record(rec, size=size, masks=bool(rec.boxes))
        except Exception as err:  # one unreadable image is reported and skipped
            skipped.append((rec.path, str(err)))
            continue
        m = np.zeros((len(names), size, size), bool)
        lab = np.zeros(len(names), np.float32)
        for b, bm in zip(boxes, box_m if box_m is not None else []):
            if b.label in names:
                k = names.index(b.label)
                m[k] |= bm
                lab[k] = 1.0
        if config.dataset == "brixia":
            lab[:] = 1.0
        xs.append(x), ms.append(m), ls.append(lab), ids.append(os.path.basename(rec.path))
    if not xs:
        raise ValueError(f"No readable images with ground truth under {root!r}.")
    return LocalisationSet(np.stack(xs), np.stack(ms), np.stack(ls), names, ids,
                           require_mask=config.dataset != "brixia", skipped=skipped)
