"""Real datasets for training and evaluation, read from a folder the user names.

`build(config)` returns a `Dataset` whose training source decodes images on access (Grain) and
whose held-out set (at most `config.num_test` images) is decoded once into memory:
  * nih: `data_dir` holds Data_Entry_2017*.csv(.gz), BBox_List_2017.csv, the split lists and
    images/; the official train_val / test split; 14 findings, BCE.
  * chexpert: `data_dir` holds train.csv and valid.csv next to the image folders;
    `config.policy` for uncertain labels; 14 observations, BCE.
  * chexphoto: `data_dir` is the CheXphoto release folder (CheXphoto-v1.0/) with train.csv and
    valid.csv (or train/train.csv, valid/valid.csv); read with `records.read_chexphoto`, so each
    record keeps its photo subset in `meta`; CheXpert's 14 observations and policies, BCE.
  * object_cxr: `data_dir` holds train.csv and dev.csv with train/ and dev/ image folders;
    one label ("Foreign Object"), BCE.
  * brixia: `data_dir` holds metadata_global_v2.csv and the DICOMs (dicom_clean/); the global
    severity score (0-18) is regressed with MSE; the consensus test rows are held out.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from cxr_jax.data import records
from cxr_jax.data.loader import RecordSource
from cxr_jax.data.types import Dataset


def _first_existing(folder: str, names) -> str:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise ValueError(f"None of {list(names)} found in {folder!r}: point --config.data_dir at "
                     "the dataset's folder.")


def _held_out(source: RecordSource, limit: int) -> dict[str, np.ndarray]:
    """Decodes up to `limit` held-out items, dropping (and counting) unreadable ones."""
    items = [source[i] for i in range(min(limit, len(source)))]
    good = [it for it in items if it["valid"]]
    if len(good) < len(items):
        logging.warning("%d of %d held-out images could not be read and are left out.",
                        len(items) - len(good), len(items))
    if not good:
        raise ValueError("No readable held-out images: check --config.data_dir.")
    return {"image": np.stack([g["image"] for g in good]),
            "labels": np.stack([g["labels"] for g in good])}


def splits(config) -> tuple[list, list, tuple[str, ...], str]:
    """(training records, held-out records, label names, natural loss) of the real dataset
    `config.dataset` in `config.data_dir`."""
    root = config.data_dir
    if not root or not os.path.isdir(root):
        raise ValueError(f"--config.data_dir={root!r} is not a folder; real datasets are read "
                         "from a local folder (nothing is downloaded).")
    kind = config.dataset
    loss = "bce"
    if kind == "nih":
        recs = records.read_nih(root)
        names = records.NIH_FINDINGS
        train = [r for r in recs if r.split != "test"]
        test = [r for r in recs if r.split == "test"]
    elif kind == "chexpert":
        train = records.read_chexpert(_first_existing(root, ["train.csv", "train.csv.gz"]),
                                      root=os.path.dirname(root.rstrip("/")), policy=config.policy)
        test = records.read_chexpert(_first_existing(root, ["valid.csv", "valid.csv.gz"]),
                                     root=os.path.dirname(root.rstrip("/")), policy=config.policy)
        names = records.CHEXPERT_OBSERVATIONS
    elif kind == "chexphoto":  # the release folder: train.csv and valid.csv, or split/split.csv
        parent = os.path.dirname(root.rstrip("/"))
        train = records.read_chexphoto(_first_existing(root, ["train.csv", "train/train.csv"]),
                                       root=parent, policy=config.policy)
        test = records.read_chexphoto(_first_existing(root, ["valid.csv", "valid/valid.csv"]),
                                      root=parent, policy=config.policy)
        names = records.CHEXPERT_OBSERVATIONS
    elif kind == "object_cxr":
        train = records.read_object_cxr(os.path.join(root, "train.csv"),
                                        root=os.path.join(root, "train"))
        test = records.read_object_cxr(os.path.join(root, "dev.csv"),
                                       root=os.path.join(root, "dev"))
        names = (records.OBJECT_CXR_LABEL,)
    elif kind == "brixia":
        recs = records.read_brixia(_first_existing(root, ["metadata_global_v2.csv"]),
                                   root=os.path.join(root, "dicom_clean"))
        recs = [dataclasses.replace(r, labels={"global_score": float(sum(r.severity))})
                for r in recs]
        names = ("global_score",)
        train = [r for r in recs if r.split != "consensus_test"]
        test = [r for r in recs if r.split == "consensus_test"]
        loss = "mse"
    else:
        raise ValueError(f"Unknown real dataset {kind!r}.")
    return list(train), list(test), tuple(names), loss


def build(config) -> Dataset:
    """The real dataset named by `config.dataset`, read from `config.data_dir` (training rows
    from `config.shards_dir` when given: the same rows, decoded once)."""
    train, test, names, loss = splits(config)
    size = config.image_size
    train_src = RecordSource(train, names, image_size=size)
    if config.get("shards_dir", ""):  # the same rows, decoded once (experiments.prepare)
        from cxr_jax.data.shards import ShardSource

        shard_src = ShardSource(config.shards_dir)
        want = {"label_names": list(names), "image_size": size, "num_rows": len(train)}
        got = {k: shard_src.meta[k] for k in want}
        if got != want:
            raise ValueError(f"--config.shards_dir={config.shards_dir!r} holds {got}, but this "
                             f"config's training set is {want}; prepare shards for it.")
        train_src = shard_src
    test_src = RecordSource(test, names, image_size=size)
    return Dataset(train=train_src, eval=_held_out(test_src, config.num_test),
                   label_names=tuple(names), loss=loss, extra={"test_records": test})

