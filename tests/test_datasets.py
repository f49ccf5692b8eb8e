"""Datasets by name: a tiny NIH-format folder trains and evaluates through the same code path as
phantoms; an unreadable image is skipped, not fatal."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import datasets, phantoms
from cxr_jax.data.records import NIH_FINDINGS


def _nih_folder(root, n=6, size=64):
    """NIH ChestX-ray14 layout with phantom PNGs; image 5 is listed but missing on disk."""
    os.makedirs(root / "images")
    b = phantoms.generate(n, image_size=size, seed=3, intensity="unit")
    names = [f"{i:08d}_000.png" for i in range(n)]
    rows = []
    for i, name in enumerate(names):
        if i != n - 1:
            Image.fromarray((b.images[i, ..., 0] * 255).astype(np.uint8)).save(
                root / "images" / name)
        labels = "Nodule|Mass" if i % 2 else "No Finding"
        rows.append(f"{name},{labels},0,{i},50,M,PA,{size},{size},0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        + "\n".join(rows) + "\n")
    # Boxes in the 1024 frame: the reader scales them to the real image size.
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        f"{names[1]},Nodule,256.0,256.0,128.0,128.0\n"
        f"{names[3]},Mass,512.0,128.0,256.0,256.0\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:3]))
    (root / "test_list.txt").write_text("\n".join(names[3:]))
    return names


def _config(root, dataset="nih"):
    c = ml_collections.ConfigDict({"dataset": dataset, "data_dir": str(root), "image_size": 32,
                                   "num_test": 10, "policy": "zeros", "seed": 0})
    return c


def test_nih_folder_builds_sources_and_skips_missing_image(tmp_path):
    _nih_folder(tmp_path)
    data = datasets.build(_config(tmp_path))
    assert data.label_names == NIH_FINDINGS and data.loss == "bce"
    assert len(data.train) == 3
    item = data.train[1]
    assert item["image"].shape == (32, 32, 1) and item["valid"]
    assert -1024 <= item["image"].min() and item["image"].max() <= 1024
    k = NIH_FINDINGS.index("Nodule")
    assert item["labels"][k] == 1.0
    # test split: images 3, 4 and the missing 5 -> 2 held out, the missing one left out
    assert data.eval["image"].shape == (2, 32, 32, 1)


def test_nih_localisation_set_scales_boxes(tmp_path):
    _nih_folder(tmp_path)
    loc = datasets.localisation_set(_config(tmp_path), NIH_FINDINGS)
    assert loc.images.shape == (2, 32, 32, 1)
    k = NIH_FINDINGS.index("Nodule")
    m = loc.masks[0, k]
    # 256..384 of 1024 -> 8..12 of 32
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 8, 11)
    assert loc.labels[0, k] == 1.0
    assert loc.labels[1, NIH_FINDINGS.index("Mass")] == 1.0


def test_unknown_dataset_and_missing_folder():
    c = ml_collections.ConfigDict({"dataset": "mimic"})
    with pytest.raises(ValueError, match="Unknown dataset 'mimic'"):
        datasets.build(c)
    with pytest.raises(ValueError, match="not a folder"):
        datasets.build(_config("/nonexistent/folder"))


@pytest.mark.parametrize("name", ["phantoms", "phantoms_severity"])
def test_phantom_training_set_is_rendered_in_chunks_without_changing_it(monkeypatch, name):
    """Chunked rendering (masks never held for the whole training set) gives the very images and
    labels one generate() call gives, across chunk boundaries and a short last chunk."""
    monkeypatch.setattr(datasets, "_CHUNK", 5)
    c = ml_collections.ConfigDict({"dataset": name, "num_train": 12, "num_test": 2,
                                   "image_size": 32, "seed": 4})
    d = datasets.build(c)
    whole = phantoms.generate(12, image_size=32, seed=9)
    rows = [d.train[i] for i in range(len(d.train))]
    assert len(rows) == 12
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), whole.images)
    want = whole.labels if name == "phantoms" else whole.severity.sum(1, keepdims=True)
    np.testing.assert_array_equal(np.stack([r["labels"] for r in rows]), want)
