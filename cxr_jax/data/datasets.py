"""Datasets for training and evaluation, by name: phantoms (the default) or a real folder."""

from __future__ import annotations

import os

import numpy as np

from cxr_jax.data import phantoms
from cxr_jax.data.loader import ArraySource
from cxr_jax.data.types import Dataset, LocalisationSet

NAMES = ("phantoms", "phantoms_severity", "nih", "chexpert", "chexphoto", "object_cxr",
         "brixia")


_CHUNK = 2048


def phantom_options(config) -> dict:
    """The phantom generator's style, finding contrast and prevalence a config asks for (v2,
    1.0 and the generator's 0.4 when it names none)."""
    prevalence = config.get("phantom_prevalence", None)
    return {"style": config.get("phantom_style", "v2"),
            "contrast": float(config.get("phantom_contrast", 1.0)),
            "prevalence": None if prevalence is None else float(prevalence)}


def _phantom_training_arrays(n: int, image_size: int, seed: int, labels, **options) -> dict:
    """Images and labels of phantoms [0, n) of `seed`, rendered in chunks into preallocated
    arrays, so the masks and concept maps (needed for evaluation, not training; at 128 px ~20x
    the images' size) never exist for all n at once and the images are held once, not twice.
    Identical to one `phantoms.generate(n, ...)` call."""
    chunk = phantoms.generate(min(_CHUNK, n), image_size=image_size, seed=seed, **options)
    y = labels(chunk)
    out = {"image": np.empty((n,) + chunk.images.shape[1:], chunk.images.dtype),
           "labels": np.empty((n,) + y.shape[1:], y.dtype)}
    for start in range(0, n, _CHUNK):
        if start:  # the first chunk is already rendered
            chunk = phantoms.generate(min(_CHUNK, n - start), image_size=image_size, seed=seed,
                                      start=start, **options)
        out["image"][start:start + len(chunk.images)] = chunk.images
        out["labels"][start:start + len(chunk.images)] = labels(chunk)
        chunk = None  # free this chunk's masks before rendering the next
    return out


def phantom_dataset(config) -> Dataset:
    """Train and held-out phantoms from disjoint seeds."""
    opts = phantom_options(config)
    tr = _phantom_training_arrays(config.num_train, config.image_size, config.seed * 2 + 1,
                                  lambda b: b.labels, **opts)
    te = phantoms.generate(config.num_test, image_size=config.image_size, seed=config.seed * 2 + 2,
                           **opts)
    return Dataset(train=ArraySource(tr),
                   eval={"image": te.images, "labels": te.labels},
                   label_names=tuple(te.finding_names), loss="bce", extra={"test": te})


def phantom_severity_dataset(config) -> Dataset:
    """Phantoms labelled with their BrixIA-style global severity (sum of six zone scores, 0-18),
    for severity regressors (MSE); the opacity mask is the ground-truth region."""
    score = lambda b: b.severity.sum(axis=1, keepdims=True).astype(np.float32)
    opts = phantom_options(config)
    tr = _phantom_training_arrays(config.num_train, config.image_size, config.seed * 2 + 1, score,
                                  **opts)
    te = phantoms.generate(config.num_test, image_size=config.image_size, seed=config.seed * 2 + 2,
                           **opts)
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


def _held_out_phantoms(config, data: Dataset | None) -> phantoms.PhantomBatch:
    """The first `config.num_test` held-out phantoms: taken from those `data` already holds
    (the same pixels: phantoms are a function of seed and index), or rendered."""
    held = data.extra.get("test") if data is not None else None
    if held is not None and len(held.images) >= config.num_test:
        return phantoms.first(held, config.num_test)
    return phantoms.generate(config.num_test, image_size=config.image_size,
                             seed=config.seed * 2 + 2, **phantom_options(config))


def localisation_set(config, label_names, data: Dataset | None = None) -> LocalisationSet:
    """Held-out images with ground truth: phantom masks, NIH boxes, Object-CXR shapes, or
    BrixIA images (no regions: faithfulness metrics only).

    Args:
      config: a training config (dataset, data_dir, image_size, num_test, seed).
      label_names: the model's output names.
      data: the `Dataset` built from the same config, when at hand: its held-out phantoms are
        reused instead of rendered again.
    """
    if config.dataset == "phantoms":
        te = _held_out_phantoms(config, data)
        if tuple(te.finding_names) != tuple(label_names):
            raise ValueError(f"Model labels {label_names} do not match phantom findings "
                             f"{te.finding_names}.")
        return LocalisationSet(te.images, te.masks, te.labels, tuple(te.finding_names),
                               list(range(len(te.images))))
    if config.dataset == "phantoms_severity":
        te = _held_out_phantoms(config, data)
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


def estimation_images(config, n: int, data: Dataset | None = None) -> np.ndarray:
    """Up to `n` readable training images of `config`'s dataset, [n, H, W, 1]: what statistics
    of the training distribution (IBA's feature statistics) are estimated from.

    Phantoms are the first n of the training seed (rendered, or taken from `data` when given:
    the same pixels); a real dataset's are the first n readable items of its training source.
    """
    if data is not None:
        train = data.train
    elif config.dataset.startswith("phantoms"):
        return phantoms.generate(n, image_size=config.image_size, seed=config.seed * 2 + 1,
                                 **phantom_options(config)).images
    else:
        train = build(config).train
    items = (train[i] for i in range(min(n, len(train))))
    return np.stack([it["image"] for it in items if it.get("valid", True)])
