"""`read_chexphoto` and the photo/original pairing on a tiny release written in the real layout.

The fixture is ``CheXphoto-v1.0/valid/valid.csv`` with photos from three subsets (natural/oneplus,
synthetic/digital, synthetic/photographic) and ``CheXpert-v1.0/valid/valid.csv`` with originals
for some of them, plus small grayscale JPEGs at every listed path.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import read_chexphoto as data_read_chexphoto
from cxr_jax.data.images import load_image, load_record
from cxr_jax.data.records import (CHEXPERT_OBSERVATIONS, chexphoto_subset, label_matrix,
                                  original_key, pair_with_originals, read_chexpert,
                                  read_chexphoto)

HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)
PHOTO = "CheXphoto-v1.0/valid/"
#           NoF  EnlC Card LOp  LLes Edem Cons Pneu Atel Ptx  PlEf PlO  Frac SupD
PHOTO_ROWS = [
    PHOTO + "natural/oneplus/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    "0.0,1.0,-1.0,,,,,,,0.0,,,,1.0",
    PHOTO + "synthetic/digital/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    "0.0,1.0,-1.0,,,,,,,0.0,,,,1.0",
    PHOTO + "synthetic/photographic/patient64542/study1/view1_frontal.jpg,Female,70,Frontal,PA,"
    "1.0,,,,,,,,,,,,,",
    PHOTO + "natural/oneplus/patient64543/study1/view1_frontal.jpg,Female,55,Frontal,AP,"
    ",,,1.0,,-1.0,,-1.0,,,1.0,,,",
    PHOTO + "synthetic/digital/patient64544/study1/view2_lateral.jpg,Male,81,Lateral,,"
    ",,1.0,,,,-1.0,,,,0.0,,,",
    PHOTO + "synthetic/photographic/patient64545/study1/view1_frontal.jpg,Unknown,60,Frontal,AP,"
    "0.0,,,,1.0,,,,-1.0,,,,1.0,",
]
ORIGINAL = "CheXpert-v1.0/valid/"
ORIGINAL_ROWS = [
    ORIGINAL + "patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    "0.0,1.0,-1.0,,,,,,,0.0,,,,1.0",
    ORIGINAL + "patient64542/study1/view1_frontal.jpg,Female,70,Frontal,PA,1.0,,,,,,,,,,,,,",
    # Same patient as a photo but another study: must not pair with it.
    ORIGINAL + "patient64543/study2/view1_frontal.jpg,Female,55,Frontal,AP,,,,1.0,,,,,,,,,,",
    ORIGINAL + "patient64544/study1/view2_lateral.jpg,Male,81,Lateral,,,,1.0,,,,-1.0,,,,0.0,,,",
    # An original without a photo.
    ORIGINAL + "patient64546/study1/view1_frontal.jpg,Male,40,Frontal,AP,1.0,,,,,,,,,,,,,",
]
SUBSETS = ["natural/oneplus", "synthetic/digital", "synthetic/photographic", "natural/oneplus",
           "synthetic/digital", "synthetic/photographic"]
KEYS = ["patient64541/study1/view1_frontal", "patient64541/study1/view1_frontal",
        "patient64542/study1/view1_frontal", "patient64543/study1/view1_frontal",
        "patient64544/study1/view2_lateral", "patient64545/study1/view1_frontal"]


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER] + rows) + "\n")
    return path


def _write_jpegs(root, rows, seed):
    rng = np.random.default_rng(seed)
    for row in rows:
        rel = row.split(",", 1)[0]
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(48, 40), dtype=np.uint8)
        Image.fromarray(pixels).save(target, quality=90)


@pytest.fixture
def release(tmp_path):
    """(root, photo CSV, original CSV) of the tiny release under ``tmp_path``."""
    photos = _write_csv(tmp_path / "CheXphoto-v1.0" / "valid" / "valid.csv", PHOTO_ROWS)
    originals = _write_csv(tmp_path / "CheXpert-v1.0" / "valid" / "valid.csv", ORIGINAL_ROWS)
    _write_jpegs(tmp_path, PHOTO_ROWS, 0)
    _write_jpegs(tmp_path, ORIGINAL_ROWS, 1)
    return tmp_path, photos, originals


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
@pytest.mark.parametrize("blank", ["zeros", "nan", "xrv"])
def test_labels_and_fields_equal_read_chexpert(release, policy, blank):
    _, photos, _ = release
    got = read_chexphoto(photos, policy=policy, blank=blank)
    want = read_chexpert(photos, policy=policy, blank=blank)
    np.testing.assert_array_equal(label_matrix(got, CHEXPERT_OBSERVATIONS),
                                  label_matrix(want, CHEXPERT_OBSERVATIONS))
    for g, w in zip(got, want, strict=True):
        assert (g.sex, g.age, g.view, g.patient_id, g.split, g.line, g.source) == \
               (w.sex, w.age, w.view, w.patient_id, w.split, w.line, w.source)
        assert g.path.endswith(w.path)


def test_label_cells_by_policy(release):
    _, photos, _ = release
    by = {p: read_chexphoto(photos, policy=p) for p in ("ignore", "zeros", "ones")}
    assert math.isnan(by["ignore"][0].labels["Cardiomegaly"])             # -1.0
    assert by["zeros"][0].labels["Cardiomegaly"] == 0.0
    assert by["ones"][0].labels["Cardiomegaly"] == 1.0
    assert by["ones"][0].labels["Enlarged Cardiomediastinum"] == 1.0      # 1.0
    assert by["ones"][0].labels["Pneumothorax"] == 0.0                    # 0.0
    assert by["ones"][0].labels["Edema"] == 0.0                           # blank
    assert read_chexphoto(photos, blank="nan")[0].labels["Edema"] != 0.0  # NaN


def test_subsets_keys_and_paths(release):
    root, photos, _ = release
    recs = read_chexphoto(photos)
    assert [r.meta["subset"] for r in recs] == SUBSETS
    assert [r.meta["key"] for r in recs] == KEYS
    assert [r.split for r in recs] == ["valid"] * 6
    assert [r.view for r in recs] == ["AP", "AP", "PA", "AP", "LATERAL", "AP"]
    # Default root: the folder holding CheXphoto-v1.0/.
    for r, row in zip(recs, PHOTO_ROWS):
        assert r.path == os.path.join(str(root), row.split(",", 1)[0])
        assert os.path.isfile(r.path)
    other = read_chexphoto(photos, root="/data")
    assert other[0].path == "/data/" + PHOTO_ROWS[0].split(",", 1)[0]
    assert [r.meta["key"] for r in other] == KEYS
    assert data_read_chexphoto is read_chexphoto


def test_default_root_with_csv_in_release_folder(tmp_path):
    csv = _write_csv(tmp_path / "CheXphoto-v1.0" / "valid.csv", PHOTO_ROWS[:1])
    assert read_chexphoto(csv)[0].path == str(tmp_path / PHOTO_ROWS[0].split(",", 1)[0])
    outside = _write_csv(tmp_path / "elsewhere" / "valid.csv", PHOTO_ROWS[:1])
    assert read_chexphoto(outside)[0].path == PHOTO_ROWS[0].split(",", 1)[0]  # as published


@pytest.mark.parametrize("path, subset", [
    ("CheXphoto-v1.0/valid/natural/oneplus/patient64541/study1/view1_frontal.jpg",
     "natural/oneplus"),
    ("CheXphoto-v1.0/train/synthetic/digital/patient00001/study1/view1_frontal.jpg",
     "synthetic/digital"),
    ("CheXphoto-v1.0/valid/natural/patient64541/study1/view1_frontal.jpg", "natural"),
    ("CheXphoto-v1.0/valid/film/nokia/patient64541/study1/view2_lateral.jpg", "film/nokia"),
    ("/mnt/train/CheXphoto-v1.0/valid/synthetic/photographic/patient1/study2/view1_frontal.jpg",
     "synthetic/photographic"),
    ("CheXphoto-v1.0\\valid\\natural\\iphone\\patient64541\\study1\\view1_frontal.jpg",
     "natural/iphone"),
])
def test_chexphoto_subset(path, subset):
    assert chexphoto_subset(path) == subset


def test_original_key_for_photos_and_originals():
    want = "patient64541/study1/view1_frontal"
    for path in ["CheXphoto-v1.0/valid/natural/oneplus/patient64541/study1/view1_frontal.jpg",
                 "CheXphoto-v1.0/valid/synthetic/digital/patient64541/study1/view1_frontal.jpg",
                 "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg",
                 "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
                 "/data/CheXpert-v1.0/valid/patient64541/study1/view1_frontal.png"]:
        assert original_key(path) == want


@pytest.mark.parametrize("path, fragment", [
    ("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", "no <kind>/<device"),
    ("CheXphoto-v1.0/natural/oneplus/patient64541/study1/view1_frontal.jpg", "no split folder"),
    ("CheXphoto-v1.0/valid/natural/oneplus/view1_frontal.jpg", "does not end in"),
    ("view1_frontal.jpg", "fewer than three"),
])
def test_bad_paths_raise_naming_the_path(path, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        chexphoto_subset(path)
    assert repr(path) in str(err.value)
    if "kind" not in fragment and "split" not in fragment:
        with pytest.raises(ValueError, match=fragment):
            original_key(path)


def test_pairing_matches_exactly_the_rows_with_an_original(release):
    _, photos, originals = release
    ph, orig = read_chexphoto(photos), read_chexpert(originals)
    pairs = pair_with_originals(ph, orig)
    assert [(p.line, o.line) for p, o in pairs] == [(2, 2), (3, 2), (4, 3), (6, 5)]
    for p, o in pairs:
        assert p.meta["key"] == original_key(o.path)
        assert p.labels == o.labels and p.view == o.view
    # Plain paths pair the same way.
    by_path = pair_with_originals([r.path for r in ph], [r.path for r in orig])
    assert [(p, o) for p, o in by_path] == [(p.path, o.path) for p, o in pairs]
    assert pair_with_originals(ph, []) == []


def test_pairing_rejects_two_originals_with_one_key():
    with pytest.raises(ValueError, match="two originals share the key"):
        pair_with_originals([], ["CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg",
                                 "CheXpert-v1.0-small/valid/patient1/study1/view1_frontal.jpg"])


def test_malformed_row_names_the_row(tmp_path):
    bad = PHOTO_ROWS[2].replace(",PA,1.0,", ",PA,2.0,")
    csv = _write_csv(tmp_path / "CheXphoto-v1.0" / "valid" / "valid.csv",
                     PHOTO_ROWS[:2] + [bad] + PHOTO_ROWS[3:])
    with pytest.raises(ValueError, match=r"valid\.csv, line 4: No Finding value '2\.0'"):
        read_chexphoto(csv)
    with pytest.warns(UserWarning, match="read_chexphoto: skipped 1 bad row"):
        assert [r.line for r in read_chexphoto(csv, lenient=True)] == [2, 3, 5, 6, 7]
    short = _write_csv(tmp_path / "short.csv", [PHOTO_ROWS[0].rsplit(",", 2)[0]])
    with pytest.raises(ValueError, match="short.csv, line 2: row has 17 fields"):
        read_chexphoto(short)


def test_non_photo_path_in_csv_names_row_and_path(tmp_path):
    csv = _write_csv(tmp_path / "CheXphoto-v1.0" / "valid" / "valid.csv",
                     PHOTO_ROWS[:1] + ORIGINAL_ROWS[:1])
    with pytest.raises(ValueError, match=r"valid\.csv, line 3: image path "
                                         r"'CheXpert-v1\.0/valid/patient64541/.*CheXpert original"):
        read_chexphoto(csv)


def test_bad_options(release):
    _, photos, _ = release
    with pytest.raises(ValueError, match="policy='U-Ones'"):
        read_chexphoto(photos, policy="U-Ones")
    with pytest.raises(ValueError, match="blank='ignore'"):
        read_chexphoto(photos, blank="ignore")


def test_images_load_at_64_px(release):
    _, photos, originals = release
    for rec in read_chexphoto(photos) + read_chexpert(originals, root=release[0]):
        image = load_image(rec.path)
        assert image.shape == (48, 40) and image.dtype == np.float32
        x, boxes, masks = load_record(rec, size=64)
        assert x.shape == (64, 64, 1) and np.isfinite(x).all()
        assert boxes == () and masks is None


def test_chexphoto_as_a_training_dataset_prepares_into_shards(release, tmp_path):
    """`--config.dataset=chexphoto` names the release folder: its train and valid CSVs become
    the splits (with the photo subsets kept), and the prepare command's shards hold the rows a
    decoding source gives."""
    import ml_collections

    from cxr_jax.data import real, shards
    from cxr_jax.data.loader import RecordSource
    root, _, _ = release
    train_rows = [r.replace("/valid/", "/train/") for r in PHOTO_ROWS[:4]]
    _write_csv(root / "CheXphoto-v1.0" / "train" / "train.csv", train_rows)
    _write_jpegs(root, train_rows, 2)
    config = ml_collections.ConfigDict(dict(dataset="chexphoto", policy="zeros", image_size=32,
                                            num_test=6, data_dir=str(root / "CheXphoto-v1.0")))
    train, test, names, loss = real.splits(config)
    assert (len(train), len(test), names, loss) == (4, 6, CHEXPERT_OBSERVATIONS, "bce")
    assert [r.meta["subset"] for r in test] == SUBSETS
    assert all(os.path.exists(r.path) for r in train + test)
    out = str(tmp_path / "shards")
    shards.write_shards(train, names, out, image_size=32, num_shards=2)
    src, ref = shards.ShardSource(out), RecordSource(train, names, image_size=32)
    for i in range(4):
        np.testing.assert_array_equal(src[i]["image"], ref[i]["image"])
        np.testing.assert_array_equal(src[i]["labels"], ref[i]["labels"])
    config.data_dir = str(root / "nowhere")
    with pytest.raises(ValueError, match="data_dir"):
        real.splits(config)
