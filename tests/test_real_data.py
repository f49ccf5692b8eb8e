"""Readers and preprocessing on the real published files (issue 9).

Runs when the environment variable CXR_JAX_REAL_DATA names the folder described in
``../shared/data/README.md`` (``.ci/run`` sets it to ``../shared/data``); skipped otherwise.
Expected values are recomputed here from the raw files with the plain csv module, independently
of the readers, and the published totals are also checked as constants.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import os
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data.images import load_image, load_record, preprocess
from cxr_jax.data.records import (
    CHEXPERT_OBSERVATIONS, NIH_FINDINGS, Box, label_matrix, read_brixia, read_chexpert, read_nih,
)

_ROOT = os.environ.get("CXR_JAX_REAL_DATA")
pytestmark = pytest.mark.skipif(not _ROOT, reason="set CXR_JAX_REAL_DATA to the real-data folder")
DATA = os.path.abspath(_ROOT) if _ROOT else ""
NIH = os.path.join(DATA, "nih")
CHEXPERT = os.path.join(DATA, "chexpert", "chexpert_train.csv.gz")
BRIXIA = os.path.join(DATA, "brixia", "metadata_global_v2.csv")
TIMINGS: dict[str, tuple[float, float]] = {}  # name -> (wall s, CPU s of this process)


def timed(name, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    TIMINGS[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    print(f"\n[timing] {name}: wall {TIMINGS[name][0]:.2f} s, CPU {TIMINGS[name][1]:.2f} s")
    return out


@pytest.fixture(scope="module")
def nih():
    return timed("read_nih", lambda: read_nih(NIH))


@pytest.fixture(scope="module")
def chexpert_zeros():
    return timed("read_chexpert[zeros]", lambda: read_chexpert(CHEXPERT, policy="zeros"))


@pytest.fixture(scope="module")
def nih_raw():
    with gzip.open(os.path.join(NIH, "Data_Entry_2017_v2020.csv.gz"), "rt", newline="") as f:
        rows = list(csv.reader(f))
    with open(os.path.join(NIH, "BBox_List_2017.csv"), newline="") as f:
        boxes = list(csv.reader(f))
    return rows, boxes


@pytest.fixture(scope="module")
def chexpert_raw():
    with gzip.open(CHEXPERT, "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][5:] == list(CHEXPERT_OBSERVATIONS)
    return np.array([r[5:] for r in rows[1:]])  # [N, 14] raw cells


# --------------------------------------------------------------------------------------------
# NIH
# --------------------------------------------------------------------------------------------

def test_nih_every_row_is_a_record_with_published_labels(nih, nih_raw):
    rows, _ = nih_raw
    header, body = rows[0], rows[1:]
    # The published quirk the reader must survive: bracketed groups split into two columns.
    assert "OriginalImage[Width" in header and "Height]" in header
    assert len(nih) == len(body) == 112_120
    assert [os.path.basename(r.path) for r in nih] == [r[0] for r in body]
    assert all(r.path == os.path.join(NIH, "images", b[0]) for r, b in zip(nih[:100], body))
    want = np.zeros((len(body), len(NIH_FINDINGS)), np.float32)
    col = {n: i for i, n in enumerate(NIH_FINDINGS)}
    for i, r in enumerate(body):
        for name in r[1].split("|"):
            if name != "No Finding":
                want[i, col[name]] = 1.0
    np.testing.assert_array_equal(label_matrix(nih, NIH_FINDINGS), want)
    assert int(want.sum(0)[col["Infiltration"]]) == 19_894 and int(want.sum(0)[col["Hernia"]]) == 227
    assert sum(1 for r in body if r[1] == "No Finding") == 60_361
    # Views, ages, sizes as published.
    views = collections.Counter(r.view for r in nih)
    assert views == {"PA": 67_310, "AP": 44_810}
    assert [r.age for r in nih[:3]] == [57, 58, 58]
    assert nih[0].meta["original_size"] == (2682, 2749) and nih[2].meta["original_size"] == (2500, 2048)
    assert nih[0].meta["pixel_spacing"] == (0.14300000000000002, 0.14300000000000002)
    assert all(r.patient_id == str(int(b[3])) for r, b in zip(nih, body))


def test_nih_boxes_attached_with_classes_and_coordinates(nih, nih_raw):
    _, boxes = nih_raw
    header, body = boxes[0], boxes[1:]
    assert header[-3:] == ["", "", ""] and all(len(r) == 6 for r in body)  # the quirk
    by_image = {os.path.basename(r.path): r for r in nih}
    want = collections.defaultdict(list)
    for name, label, x, y, w, h in body:
        label = "Infiltration" if label == "Infiltrate" else label
        want[name].append((label, float(x), float(y), float(x) + float(w), float(y) + float(h)))
    got = {n: [tuple(b) for b in r.boxes] for n, r in by_image.items() if r.boxes}
    assert got == dict(want)
    # Per-class counts against the list, and the published totals.
    counts = collections.Counter(b.label for r in nih for b in r.boxes)
    assert counts == collections.Counter(
        "Infiltration" if r[1] == "Infiltrate" else r[1] for r in body)
    assert sum(counts.values()) == 984 and len(got) == 880 and len(counts) == 8
    assert counts == {"Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153,
                      "Infiltration": 123, "Mass": 85, "Nodule": 79, "Pneumonia": 120,
                      "Pneumothorax": 98}
    for r in nih:
        for b in r.boxes:
            assert r.labels[b.label] == 1.0
            assert 0 <= b.x0 < b.x1 <= 1024 and 0 <= b.y0 < b.y1 <= 1024
    first = by_image["00013118_008.png"].boxes[0]
    assert first == Box("Atelectasis", 225.084745762712, 547.019216763771,
                        225.084745762712 + 86.7796610169491, 547.019216763771 + 79.1864406779661)


def test_nih_official_split(nih):
    splits = collections.Counter(r.split for r in nih)
    assert splits == {"train_val": 86_524, "test": 25_596}
    with open(os.path.join(NIH, "test_list.txt")) as f:
        test = set(f.read().split())
    assert {os.path.basename(r.path) for r in nih if r.split == "test"} == test
    # All 880 boxed images are in the official test split.
    assert all(r.split == "test" for r in nih if r.boxes)


# --------------------------------------------------------------------------------------------
# CheXpert
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy, uncertain", [("ignore", np.nan), ("zeros", 0.0), ("ones", 1.0)])
def test_chexpert_policies_on_the_real_csv(request, chexpert_raw, policy, uncertain):
    recs = (request.getfixturevalue("chexpert_zeros") if policy == "zeros"
            else timed(f"read_chexpert[{policy}]", lambda: read_chexpert(CHEXPERT, policy=policy)))
    assert len(recs) == len(chexpert_raw) == 223_414
    got = label_matrix(recs, CHEXPERT_OBSERVATIONS)
    raw = chexpert_raw
    want = np.where(raw == "1.0", 1.0, np.where(raw == "-1.0", uncertain, 0.0)).astype(np.float32)
    assert set(np.unique(raw)) == {"", "0.0", "1.0", "-1.0"}
    np.testing.assert_array_equal(got, want)
    card = got[:, CHEXPERT_OBSERVATIONS.index("Cardiomegaly")]
    assert (raw[:, 2] == "-1.0").sum() == 8_087
    if policy == "ignore":
        assert np.isnan(card).sum() == 8_087
    else:
        assert (card == uncertain).sum() == 8_087 + (11_116 + 177_211 if uncertain == 0 else 27_000)
    assert recs[0].path.startswith("CheXpert-v1.0-small/train/patient00001/")
    assert collections.Counter(r.view for r in recs) == {
        "AP": 161_590, "PA": 29_420, "LATERAL": 32_387, "LL": 16, "RL": 1}
    assert sum(r.age is None for r in recs) == 3  # the three age-0 placeholder rows
    assert all(r.split == "train" for r in recs)


def test_chexpert_blank_nan_keeps_blanks_unknown(chexpert_raw):
    recs = read_chexpert(CHEXPERT, policy="ignore", blank="nan")
    got = label_matrix(recs, CHEXPERT_OBSERVATIONS)
    np.testing.assert_array_equal(np.isnan(got), (chexpert_raw == "") | (chexpert_raw == "-1.0"))


# --------------------------------------------------------------------------------------------
# BrixIA
# --------------------------------------------------------------------------------------------

def test_brixia_metadata():
    with open(BRIXIA, "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"  # the byte-order mark is there
    with open(BRIXIA, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    recs = timed("read_brixia", lambda: read_brixia(BRIXIA, root="/brixia"))
    assert len(recs) == len(rows) == 4_695
    assert [r.path for r in recs] == ["/brixia/" + r["Filename"] for r in rows]
    assert [r.severity for r in recs] == [tuple(int(c) for c in r["BrixiaScore"]) for r in rows]
    assert all(sum(r.severity) == int(raw["BrixiaScoreGlobal"]) == r.meta["global_score"]
               for r, raw in zip(recs, rows))
    assert sum(r.split == "consensus_test" for r in recs) == 150
    assert sum(r.meta["consensus_test"] for r in recs) == 150
    assert sum(r.photometric == "MONOCHROME1" for r in recs) == 2_275
    assert [r.photometric for r in recs] == [r["PhotometricInterpretation"] for r in rows]
    assert [r.frame_size for r in recs[:2]] == [(2802, 2801), (2868, 2320)]
    assert recs[0].severity == (0, 0, 0, 0, 0, 1)  # '000001': leading zeros kept


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_nih_pngs_to_model_input_with_boxes_scaled_by_actual_size(nih, name):
    (rec,) = [r for r in nih if r.path.endswith(name)]
    image = load_image(rec.path)
    assert image.shape == (512, 512) and 0 <= image.min() and image.max() <= 1
    with Image.open(rec.path) as im:
        assert im.mode == "L" and im.size == (512, 512)  # 8-bit at 512, not 1024
        np.testing.assert_allclose(image, np.asarray(im) / 255.0, atol=1e-7)
    # Give the record a real published box (1024 frame); it must land at box * 224 / 1024.
    box = Box("Atelectasis", 225.084745762712, 547.019216763771, 311.864406779661, 626.205657204437)
    x, boxes, masks = load_record(dataclasses.replace(rec, boxes=(box,)), size=224, masks=True)
    assert x.shape == (224, 224, 1) and x.dtype == np.float32
    assert -1024 <= x.min() < x.max() <= 1024
    np.testing.assert_allclose(boxes[0][1:], np.array(box[1:]) * 224 / 1024, rtol=1e-9)
    w, h = box.width * 224 / 1024, box.height * 224 / 1024
    assert masks.shape == (1, 224, 224) and abs(masks[0].sum() - w * h) <= 2 * (w + h)
    np.testing.assert_allclose(x[..., 0], preprocess(image, size=224)[0][..., 0])


def test_covid_jpeg_three_identical_channels():
    path = os.path.join(DATA, "covid", "covid-19-pneumonia-58-prior.jpg")
    with Image.open(path) as im:
        rgb = np.asarray(im)
    assert rgb.shape == (2373, 2373, 3) and (rgb[..., 0] == rgb[..., 1]).all()
    image = load_image(path)
    assert image.shape == (2373, 2373)
    np.testing.assert_allclose(image, rgb[..., 0] / 255.0, atol=1e-7)
    x, _, _ = preprocess(image, size=224)
    assert x.shape == (224, 224, 1) and x.min() >= -1024 and x.max() <= 1024
    # 2373 is not a multiple of 224: area averaging keeps the mean intensity.
    assert abs(float(x.mean()) - float(image.mean() * 2048 - 1024)) < 1.0


def _regions(x):
    """Mean of the two lung windows and of the mediastinum in a 224 image."""
    lungs = (x[70:140, 40:90].mean() + x[70:140, 134:184].mean()) / 2
    return lungs, x[70:140, 100:124].mean()


def test_dicoms_decode_and_monochrome1_is_inverted():
    siim = load_image(os.path.join(DATA, "dicom", "siim_sample.dcm"))
    fake = load_image(os.path.join(DATA, "dicom", "fake_monochrome1.dcm"))
    assert siim.shape == fake.shape == (1024, 1024)
    # MONOCHROME2: as displayed, lungs (air) dark, mediastinum bright.
    lungs, mediastinum = _regions(preprocess(siim, size=224, intensity="unit")[0][..., 0])
    assert lungs < mediastinum - 0.15
    # fake_monochrome1.dcm holds the very same stored pixels with the header flipped to
    # MONOCHROME1, so the correct decode is the exact negative of the sample: its "lungs" come
    # out bright. (A decoder that ignored the flag would return the sample unchanged.)
    np.testing.assert_allclose(fake, 1.0 - siim, atol=1e-6)
    lungs1, mediastinum1 = _regions(preprocess(fake, size=224, intensity="unit")[0][..., 0])
    assert lungs1 > mediastinum1 + 0.15


def test_dicom_decoder_missing_messages(monkeypatch):
    path = os.path.join(DATA, "dicom", "siim_sample.dcm")
    # JPEG baseline pixel data with no plugin able to decode it (Pillow absent).
    from pydicom.pixels.decoders import JPEGBaseline8BitDecoder
    monkeypatch.setattr(JPEGBaseline8BitDecoder, "_available", {})
    with pytest.raises(ImportError, match=r"JPEG Baseline.*Pillow.*cxr_jax\[dicom\]"):
        load_image(path)
    monkeypatch.undo()
    # pydicom itself absent.
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"needs the optional decoder pydicom.*cxr_jax\[dicom\]"):
        load_image(path)


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------

def test_full_csv_reads_are_fast(nih, chexpert_zeros):
    """Issue 9: each full read under 5 s. The CPU time of the read (immune to other processes
    on a shared box) must meet that; the wall time is asserted loosely (10 s) against flakes."""
    assert len(nih) == 112_120 and len(chexpert_zeros) == 223_414
    for name in ("read_nih", "read_chexpert[zeros]"):
        wall, cpu = TIMINGS[name]
        assert cpu < 5.0, (name, cpu)
        assert wall < 10.0, (name, wall)

