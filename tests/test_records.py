"""Dataset readers on tiny fixtures written in the exact published formats, quirks included.

Each fixture reproduces a format detail of the real files: NIH's header groups split by the CSV
comma (``OriginalImage[Width`` / ``Height]``), the box list's three empty trailing header columns,
"Infiltrate", split lists without a final newline, the 2017 CSV's trailing commas and '058Y'
ages; CheXpert's blank cells and frontal 'LL' views; BrixIA's byte-order mark, CRLF and
semicolons; Object-CXR's rows without a trailing comma. Hypothesis checks the annotation parsers.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cxr_jax.data.records import (
    BRIXIA_ZONES, CHEXPERT_OBSERVATIONS, NIH_FINDINGS, Box, Labels, Record, Shape,
    format_object_cxr_annotation, label_matrix, parse_brixia_score, parse_nih_box,
    parse_object_cxr_annotation, read_brixia, read_chexpert, read_nih, read_object_cxr,
)

NAN = float("nan")

# --------------------------------------------------------------------------------------------
# Fixture writers (the published formats)
# --------------------------------------------------------------------------------------------

NIH_HEADER_2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                   "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS_2020 = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Infiltration,0,3,81,F,AP,2048,2500,0.168,0.168",
    "00000004_000.png,Mass|Nodule,0,4,82,M,AP,2500,2048,0.168,0.168",
]
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_ROWS = [
    "00000003_000.png,Infiltrate,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661",
    "00000004_000.png,Mass,686.101694915254,131.543498411017,185.491525423729,313.491525423729",
    "00000004_000.png,Nodule,10,20,30,40",
]


def write(path, text: str, *, gz: bool = False, encoding: str = "utf-8", newline: str = "\n"):
    data = text.replace("\n", newline).encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def nih_folder(tmp_path, *, entries=None, boxes=None, train=None, test=None, gz=True):
    root = tmp_path / "nih"
    name = "Data_Entry_2017_v2020.csv" + (".gz" if gz else "")
    write(root / name, "\n".join([NIH_HEADER_2020] + (entries or NIH_ROWS_2020)) + "\n", gz=gz)
    if boxes is not False:
        write(root / "BBox_List_2017.csv", "\n".join([BBOX_HEADER] + (boxes or BBOX_ROWS)) + "\n")
    # The published lists have no newline after their last name.
    write(root / "train_val_list.txt", "\n".join(train or ["00000001_000.png", "00000001_001.png",
                                                          "00000002_000.png"]))
    write(root / "test_list.txt", "\n".join(test or ["00000003_000.png", "00000004_000.png"]))
    return root


def assert_labels(labels, positives, names=NIH_FINDINGS):
    assert tuple(labels) == tuple(names)
    assert {k for k, v in labels.items() if v == 1.0} == set(positives)
    assert all(v in (0.0, 1.0) for v in labels.values())


# --------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# --------------------------------------------------------------------------------------------

def test_read_nih_v2020_gzip_labels_boxes_split_views(tmp_path):
    root = nih_folder(tmp_path)
    recs = read_nih(root)
    assert [os.path.basename(r.path) for r in recs] == [r.split(",")[0] for r in NIH_ROWS_2020]
    assert recs[0].path == os.path.join(str(root), "images", "00000001_000.png")
    assert_labels(recs[0].labels, {"Cardiomegaly"})
    assert_labels(recs[1].labels, {"Cardiomegaly", "Emphysema"})
    assert_labels(recs[2].labels, set())  # "No Finding"
    assert_labels(recs[3].labels, {"Hernia", "Infiltration"})
    assert [r.view for r in recs] == ["PA", "PA", "PA", "AP", "AP"]
    assert [r.split for r in recs] == ["train_val"] * 3 + ["test"] * 2
    assert [r.patient_id for r in recs] == ["1", "1", "2", "3", "4"]
    assert [r.age for r in recs] == [57, 58, 80, 81, 82]
    assert [r.sex for r in recs] == ["M", "M", "M", "F", "M"]
    # The bracketed header groups split by the comma still give two columns each.
    assert recs[0].meta["original_size"] == (2682, 2749)
    assert recs[0].meta["pixel_spacing"] == (0.14300000000000002, 0.14300000000000002)
    assert recs[1].meta["follow_up"] == 1
    assert all(r.frame_size == (1024, 1024) for r in recs)
    # Boxes: "Infiltrate" -> "Infiltration", (x, y, w, h) -> (x0, y0, x1, y1), right images only.
    assert [r.boxes for r in recs[:3]] == [(), (), ()]
    (b,) = recs[3].boxes
    assert b.label == "Infiltration"
    assert (b.x0, b.y0) == (225.084745762712, 547.019216763771)
    assert b.x1 == pytest.approx(225.084745762712 + 86.7796610169491)
    assert b.y1 == pytest.approx(547.019216763771 + 79.1864406779661)
    assert [bx.label for bx in recs[4].boxes] == ["Mass", "Nodule"]
    assert recs[4].boxes[1] == Box("Nodule", 10.0, 20.0, 40.0, 60.0)
    assert recs[4].line == 6 and recs[4].source.endswith(".csv.gz")


def test_read_nih_original_2017_format(tmp_path):
    """The 2017 CSV: trailing comma on header and rows, 'Patient Sex' in some copies, '058Y'
    ages, CRLF line ends, not gzipped, no box list, no split lists."""
    root = tmp_path / "nih2017"
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    rows = ["00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,",
            "00000005_000.png,Pneumothorax,0,5,006M,F,AP,2500,2048,0.168,0.168,",
            "00000006_000.png,No Finding,0,6,020D,F,PA,2500,2048,0.168,0.168,"]
    write(root / "Data_Entry_2017.csv", "\n".join([header] + rows) + "\n", newline="\r\n")
    recs = read_nih(root)
    assert [r.age for r in recs] == [58.0, 0.5, pytest.approx(20 / 365.25)]
    assert [r.sex for r in recs] == ["M", "F", "F"]
    assert all(r.split is None and r.boxes == () for r in recs)
    assert recs[1].meta["original_size"] == (2500, 2048)
    assert_labels(recs[1].labels, {"Pneumothorax"})


def test_read_nih_quoted_bracket_header_is_the_same_table(tmp_path):
    """A re-saved CSV may quote the group header as one field; the columns must still align."""
    root = tmp_path / "quoted"
    header = NIH_HEADER_2020.replace("OriginalImage[Width,Height]", '"OriginalImage[Width,Height]"'
                                     ).replace("OriginalImagePixelSpacing[x,y]",
                                               '"OriginalImagePixelSpacing[x,y]"')
    write(root / "Data_Entry_2017_v2020.csv", "\n".join([header] + NIH_ROWS_2020) + "\n")
    recs = read_nih(root)
    assert recs[3].meta["original_size"] == (2048, 2500)
    assert recs[3].meta["pixel_spacing"] == (0.168, 0.168)


def test_read_nih_prefers_v2020_and_missing_folder(tmp_path):
    root = nih_folder(tmp_path, gz=False)
    write(root / "Data_Entry_2017.csv", NIH_HEADER_2020 + "\n" + NIH_ROWS_2020[0] + "\n")
    assert len(read_nih(root)) == len(NIH_ROWS_2020)
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017"):
        read_nih(tmp_path / "nowhere")


BAD_NIH = [
    # (what, kwargs for nih_folder, file with the bad row, line, message fragment)
    ("unknown label", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Flu,0,9,50,M,PA,1,1,1,1"]),
     "Data_Entry", 7, "unknown finding 'Flu'"),
    ("short row", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Mass,0,9"]),
     "Data_Entry", 7, "row has 4 fields"),
    ("extra field", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Mass,0,9,50,M,PA,1,1,1,1,x"]),
     "Data_Entry", 7, "non-empty fields"),
    ("bad follow-up", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Mass,one,9,50,M,PA,1,1,1,1"]),
     "Data_Entry", 7, "Follow-up # 'one'"),
    ("bad age", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Mass,0,9,old,M,PA,1,1,1,1"]),
     "Data_Entry", 7, "Patient Age 'old'"),
    ("bad size", dict(entries=NIH_ROWS_2020 + ["00000009_000.png,Mass,0,9,5,M,PA,2.5k,1,1,1"]),
     "Data_Entry", 7, "OriginalImage '2.5k'"),
    ("no finding plus finding",
     dict(entries=NIH_ROWS_2020 + ["00000009_000.png,No Finding|Mass,0,9,5,M,PA,1,1,1,1"]),
     "Data_Entry", 7, "'No Finding' combined"),
    ("duplicate image", dict(entries=NIH_ROWS_2020 + [NIH_ROWS_2020[0]]),
     "Data_Entry", 7, "appears twice"),
    ("box outside", dict(boxes=BBOX_ROWS[:1] + ["00000004_000.png,Mass,1000,10,30,40"]),
     "BBox_List", 3, "outside the 1024x1024 image"),
    ("box unknown label", dict(boxes=["00000004_000.png,Tumour,10,10,30,40"]),
     "BBox_List", 2, "unknown box label 'Tumour'"),
    ("box zero size", dict(boxes=["00000004_000.png,Mass,10,10,0,40"]),
     "BBox_List", 2, "not positive"),
    ("box for unknown image", dict(boxes=BBOX_ROWS + ["00099999_000.png,Mass,10,10,30,40"]),
     "BBox_List", 5, "not in"),
    ("box class not in labels", dict(boxes=["00000004_000.png,Effusion,10,10,30,40"]),
     "BBox_List", 2, "do not include it"),
    ("split name unknown", dict(test=["00000003_000.png", "00000004_000.png", "00000077_000.png"]),
     "test_list", 3, "not in"),
    ("image in both splits", dict(test=["00000003_000.png", "00000001_000.png"]),
     "test_list", 2, "already listed"),
]


@pytest.mark.parametrize("what, kwargs, fname, line, fragment", BAD_NIH, ids=[b[0] for b in BAD_NIH])
def test_read_nih_bad_rows_name_file_line_problem(tmp_path, what, kwargs, fname, line, fragment):
    root = nih_folder(tmp_path, **kwargs)
    with pytest.raises(ValueError) as info:
        read_nih(root)
    msg = str(info.value)
    assert fname in msg and f"line {line}:" in msg and fragment in msg, msg
    assert "lenient=True" in msg  # says what fixes it
    # Lenient: the row is skipped, counted in exactly one warning, the rest read correctly.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_nih(root, lenient=True)
    assert len(caught) == 1 and "skipped 1 bad row" in str(caught[0].message)
    assert fragment in str(caught[0].message)
    assert recs and all(isinstance(r, Record) for r in recs)


def test_read_nih_lenient_counts_all_bad_rows_in_one_warning(tmp_path):
    entries = NIH_ROWS_2020 + ["00000009_000.png,Flu,0,9,50,M,PA,1,1,1,1", "garbage"]
    boxes = BBOX_ROWS + ["00000009_000.png,Mass,10,10,30,40"]  # refers to the skipped image
    root = nih_folder(tmp_path, entries=entries, boxes=boxes)
    with pytest.warns(UserWarning, match="skipped 3 bad row") as caught:
        recs = read_nih(root, lenient=True)
    assert len(caught) == 1
    assert "image '00000009_000.png' was skipped as a bad row (line 7" in str(caught[0].message)
    assert len(recs) == len(NIH_ROWS_2020)
    assert [len(r.boxes) for r in recs] == [0, 0, 0, 1, 2]


def test_read_nih_missing_column_is_always_an_error(tmp_path):
    root = tmp_path / "nocol"
    header = NIH_HEADER_2020.replace("Finding Labels,", "")
    rows = [",".join(r.split(",")[:1] + r.split(",")[2:]) for r in NIH_ROWS_2020]
    write(root / "Data_Entry_2017_v2020.csv", "\n".join([header] + rows) + "\n")
    for lenient in (False, True):
        with pytest.raises(ValueError, match="Data_Entry_2017_v2020.csv: missing column "
                                             "'Finding Labels'"):
            read_nih(root, lenient=lenient)


def test_read_nih_split_header_group_with_wrong_width_fails(tmp_path):
    root = tmp_path / "w"
    header = NIH_HEADER_2020.replace("OriginalImage[Width,Height]", "OriginalImage[Width,Height,Depth]")
    write(root / "Data_Entry_2017_v2020.csv", header + "\n")
    with pytest.raises(ValueError, match="has 3 columns, not 2"):
        read_nih(root)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(0, 1000), y=st.floats(0, 1000), w=st.floats(0.01, 1024),
       h=st.floats(0.01, 1024), label=st.sampled_from(NIH_FINDINGS + ("Infiltrate",)))
def test_parse_nih_box_property(x, y, w, h, label):
    """A box row parses to (x, y, x+w, y+h) exactly when it lies in the 1024 frame."""
    cells = [repr(v) for v in (x, y, w, h)]  # as written in the CSV
    inside = x + w <= 1024 and y + h <= 1024
    if inside:
        b = parse_nih_box(label, *cells)
        assert b == Box("Infiltration" if label == "Infiltrate" else label, x, y, x + w, y + h)
        assert b.x0 < b.x1 and b.y0 < b.y1
    else:
        with pytest.raises(ValueError, match="outside the 1024x1024"):
            parse_nih_box(label, *cells)


@pytest.mark.parametrize("cells, fragment", [
    (("1", "2", "", "4"), "w '' is not a number"),
    (("1", "2", "abc", "4"), "w 'abc' is not a number"),
    (("1", "nan", "3", "4"), "y 'nan' is not a finite number"),
    (("1", "2", "3", "1e999"), "h '1e999' is not a finite number"),
    (("-1", "2", "3", "4"), "outside the 1024x1024 image"),
])
def test_parse_nih_box_rejects_bad_numbers(cells, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_nih_box("Mass", *cells)


# --------------------------------------------------------------------------------------------
# CheXpert / CheXphoto
# --------------------------------------------------------------------------------------------

CHEX_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)
#            NoF  EnlC Card LOp  LLes Edem Cons Pneu Atel Ptx  PlEf PlO  Frac SupD
CHEX_ROWS = [
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
    "1.0,,,,,,,,,0.0,,,,1.0",
    "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,"
    ",,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,"
    ",,,1.0,,,-1.0,,,,,,1.0,",
    # Quirks of the real CSV: 'Unknown' sex, age 0, a frontal image with view 'LL', and a
    # 'No Finding' row that also carries an uncertain finding.
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Unknown,0,Frontal,LL,"
    "1.0,,-1.0,,,,,,,,,,,1.0",
]


def chex_matrix(policy, blank):
    u = {"ignore": NAN, "zeros": 0.0, "ones": 1.0}[policy]
    b = {"zeros": 0.0, "nan": NAN, "xrv": NAN}[blank]
    raw = [r.split(",")[5:] for r in CHEX_ROWS]
    m = [[b if c == "" else u if c == "-1.0" else float(c) for c in row] for row in raw]
    if blank == "xrv":  # 'No Finding' rows: everything but No Finding / Support Devices -> 0
        for row, cells in zip(m, raw):
            if cells[0] == "1.0":
                row[1:13] = [0.0] * 12
    return np.array(m, np.float32)


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
@pytest.mark.parametrize("blank", ["zeros", "nan", "xrv"])
def test_read_chexpert_policies(tmp_path, policy, blank):
    path = write(tmp_path / "train.csv", "\n".join([CHEX_HEADER] + CHEX_ROWS) + "\n")
    recs = read_chexpert(path, policy=policy, blank=blank)
    got = label_matrix(recs, CHEXPERT_OBSERVATIONS)
    np.testing.assert_array_equal(got, chex_matrix(policy, blank))


def test_read_chexpert_hand_checked_cells_and_metadata(tmp_path):
    path = write(tmp_path / "train.csv.gz", "\n".join([CHEX_HEADER] + CHEX_ROWS) + "\n", gz=True)
    ign = read_chexpert(path, policy="ignore", root="/data")
    ones = read_chexpert(path, policy="ones")
    zeros = read_chexpert(path, policy="zeros")
    assert math.isnan(ign[1].labels["Cardiomegaly"])
    assert ones[1].labels["Cardiomegaly"] == 1.0 and zeros[1].labels["Cardiomegaly"] == 0.0
    assert ign[1].labels["Enlarged Cardiomediastinum"] == 0.0  # blank -> 0 by default
    assert ign[0].labels["Pneumothorax"] == 0.0 and ign[0].labels["Support Devices"] == 1.0
    assert ign[0].path == "/data/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert ones[0].path.startswith("CheXpert-v1.0-small/")  # kept as published without root
    assert [r.view for r in ign] == ["AP", "AP", "LATERAL", "LL"]
    assert [r.sex for r in ign] == ["F", "F", "F", None]
    assert [r.age for r in ign] == [68, 87, 83, None]  # age 0 is the placeholder for unknown
    assert [r.patient_id for r in ign] == ["patient00001", "patient00002", "patient00002",
                                           "patient00003"]
    assert all(r.split == "train" for r in ign)
    assert [r.line for r in ign] == [2, 3, 4, 5]


def test_read_chexphoto_paths(tmp_path):
    rows = ["CheXphoto-v1.0/valid/natural/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,"
            "AP,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0",
            "CheXphoto-v1.0/train/synthetic/digital/patient00001/study1/view1_frontal.jpg,Female,"
            "68,Frontal,AP,1,,,,,,,,,0,,,,1"]
    path = write(tmp_path / "valid.csv", "\n".join([CHEX_HEADER] + rows) + "\n")
    recs = read_chexpert(path)
    assert [r.split for r in recs] == ["valid", "train"]
    assert [r.patient_id for r in recs] == ["patient64541", "patient00001"]
    assert recs[1].labels["No Finding"] == 1.0 and recs[1].labels["Support Devices"] == 1.0


@pytest.mark.parametrize("row, line, fragment", [
    (CHEX_ROWS[0].replace(",0.0,", ",2.0,"), 3, "Pneumothorax value '2.0'"),
    (CHEX_ROWS[0].replace(",Frontal,", ",Oblique,"), 3, "Frontal/Lateral value 'Oblique'"),
    (CHEX_ROWS[0].replace(",68,", ",sixty,"), 3, "Age 'sixty'"),
    (",Female,68,Frontal,AP," + ",".join([""] * 14), 3, "empty Path"),
    (CHEX_ROWS[0].rsplit(",", 3)[0], 3, "row has 16 fields"),
])
def test_read_chexpert_bad_rows(tmp_path, row, line, fragment):
    path = write(tmp_path / "train.csv", "\n".join([CHEX_HEADER, CHEX_ROWS[1], row]) + "\n")
    with pytest.raises(ValueError, match=f"train.csv, line {line}: .*{fragment}"):
        read_chexpert(path)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        assert len(read_chexpert(path, lenient=True)) == 1


def test_read_chexpert_missing_column_and_bad_options(tmp_path):
    path = write(tmp_path / "t.csv", CHEX_HEADER.replace(",Edema", "") + "\n")
    with pytest.raises(ValueError, match="missing column 'Edema'"):
        read_chexpert(path)
    good = write(tmp_path / "g.csv", CHEX_HEADER + "\n")
    with pytest.raises(ValueError, match="policy='U-Ones'"):
        read_chexpert(good, policy="U-Ones")
    with pytest.raises(ValueError, match="blank='ignore'"):
        read_chexpert(good, blank="ignore")
    empty = write(tmp_path / "e.csv", "")
    with pytest.raises(ValueError, match="empty"):
        read_chexpert(empty)
    notgz = tmp_path / "broken.csv.gz"
    notgz.write_bytes(gzip.compress((CHEX_HEADER + "\n" + CHEX_ROWS[0] + "\n").encode())[:40])
    with pytest.raises(ValueError, match="broken.csv.gz"):
        read_chexpert(notgz)


# --------------------------------------------------------------------------------------------
# Object-CXR
# --------------------------------------------------------------------------------------------

OBJ_ROWS = [
    "image_name,annotation",
    "08001.jpg,0 1066 1147 1125 1189",
    "08002.jpg,",
    "08003.jpg,1 100 200 150 260;2 500 500 520 480 540 530 510 560",
    "08004.jpg,2 10 10 40 10 25 30;",  # trailing ';' as some rows have
    "08005.jpg",                        # no trailing comma on an image without objects
]


def test_read_object_cxr(tmp_path):
    path = write(tmp_path / "dev.csv", "\n".join(OBJ_ROWS) + "\n")
    recs = read_object_cxr(path, root="/imgs")
    assert [r.path for r in recs] == [f"/imgs/0800{i}.jpg" for i in range(1, 6)]
    assert [r.labels["Foreign Object"] for r in recs] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert recs[0].boxes == (Box("Foreign Object", 1066.0, 1147.0, 1125.0, 1189.0),)
    assert recs[1].boxes == () and recs[4].boxes == ()
    assert recs[2].boxes == (Box("Foreign Object", 100.0, 200.0, 150.0, 260.0),
                             Box("Foreign Object", 500.0, 480.0, 540.0, 560.0))
    assert recs[3].boxes == (Box("Foreign Object", 10.0, 10.0, 40.0, 30.0),)
    assert all(r.frame_size is None for r in recs)  # the image's own pixels
    assert "shapes" not in recs[2].meta
    with_shapes = read_object_cxr(path, masks=True)
    assert [s.kind for s in with_shapes[2].meta["shapes"]] == ["ellipse", "polygon"]
    assert with_shapes[2].meta["shapes"][1].points == (500.0, 500.0, 520.0, 480.0, 540.0, 530.0,
                                                       510.0, 560.0)


@pytest.mark.parametrize("ann, fragment", [
    ("3 1 2 3 4", "type '3'"),
    ("0 1 2 3", "odd number"),
    ("0 5 5 5 9", "x1 < x2"),
    ("1 1 2 3 4 5 6", "needs 4 coordinates"),
    ("2 1 1 5 5", "at least 3 vertices"),
    ("2 1 1 5 1 9 1", "zero width or height"),
    ("0 -4 2 3 4", "outside the image"),
    ("0 a 2 3 4", "non-numeric"),
])
def test_read_object_cxr_bad_annotation(tmp_path, ann, fragment):
    path = write(tmp_path / "train.csv", "\n".join(OBJ_ROWS[:3] + [f"08009.jpg,{ann}"]) + "\n")
    with pytest.raises(ValueError, match=f"train.csv, line 4: .*{fragment}"):
        read_object_cxr(path)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        assert len(read_object_cxr(path, lenient=True)) == 2


def test_read_object_cxr_missing_column(tmp_path):
    path = write(tmp_path / "train.csv", "image_name,label\n1.jpg,1\n")
    with pytest.raises(ValueError, match="missing column 'annotation'"):
        read_object_cxr(path)


coord = st.integers(0, 4000)


@st.composite
def shapes(draw):
    kind = draw(st.sampled_from(["rectangle", "ellipse", "polygon"]))
    if kind != "polygon":
        x0, y0 = draw(coord), draw(coord)
        x1, y1 = x0 + draw(st.integers(1, 500)), y0 + draw(st.integers(1, 500))
        return Shape(kind, (float(x0), float(y0), float(x1), float(y1)))
    pts = draw(st.lists(st.tuples(coord, coord), min_size=3, max_size=12))
    xs, ys = {p[0] for p in pts}, {p[1] for p in pts}
    assume(len(xs) > 1 and len(ys) > 1)
    return Shape(kind, tuple(float(v) for p in pts for v in p))


@settings(max_examples=200, deadline=None)
@given(st.lists(shapes(), max_size=6), st.sampled_from([" ", "  ", "\t"]),
       st.booleans())
def test_object_cxr_annotation_round_trip(shape_list, sep, trailing):
    text = format_object_cxr_annotation(shape_list).replace(" ", sep) + (";" if trailing else "")
    parsed = parse_object_cxr_annotation(text)
    assert parsed == tuple(shape_list)
    for s in parsed:
        x0, y0, x1, y1 = s.box
        assert x0 < x1 and y0 < y1
        xs, ys = s.points[0::2], s.points[1::2]
        assert (x0, y0, x1, y1) == (min(xs), min(ys), max(xs), max(ys))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123 .;-e\t", max_size=40))
def test_object_cxr_parser_never_silently_wrong(text):
    """Arbitrary text either raises ValueError or yields only well-formed shapes."""
    try:
        parsed = parse_object_cxr_annotation(text)
    except ValueError:
        return
    for s in parsed:
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 and 0 <= y0 < y1
        assert s.kind in ("rectangle", "ellipse", "polygon")
        assert len(s.points) == 4 if s.kind != "polygon" else len(s.points) >= 6


# --------------------------------------------------------------------------------------------
# BrixIA
# --------------------------------------------------------------------------------------------

BRIXIA_HEADER = ("Filename;StudyDate;Modality;Columns;Rows;Manufacturer;PhotometricInterpretation;"
                 "BrixiaScore;BrixiaScoreGlobal;ConsensusTestset;Subject;StudyId;Sex;"
                 "AgeAtStudyDateFiveYear")
BRIXIA_ROWS = [
    "15626316918619298757.dcm;20200403;CR;2802;2801;SIEMENS;MONOCHROME2;000001;1;1;P2255;A0000;M;11",
    "14564261561865340756.dcm;20200406;CR;2868;2320;Agfa;MONOCHROME1;000002;2;0;P2291;A0001;F;8",
    "3030367955559789319.dcm;20200405;DX;2866;2350;SIEMENS;MONOCHROME2;123321;12;0;P2272;A0002;M;11",
]


def brixia_file(tmp_path, rows=BRIXIA_ROWS, header=BRIXIA_HEADER):
    # As published: UTF-8 with a byte-order mark and CRLF line ends.
    return write(tmp_path / "metadata_global_v2.csv", "\n".join([header] + rows) + "\n",
                 encoding="utf-8-sig", newline="\r\n")


def test_read_brixia(tmp_path):
    path = brixia_file(tmp_path)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    recs = read_brixia(path, root="/dcm")
    assert [r.path for r in recs] == ["/dcm/" + r.split(";")[0] for r in BRIXIA_ROWS]
    assert [r.severity for r in recs] == [(0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 2),
                                          (1, 2, 3, 3, 2, 1)]
    assert [r.photometric for r in recs] == ["MONOCHROME2", "MONOCHROME1", "MONOCHROME2"]
    assert [r.split for r in recs] == ["consensus_test", None, None]
    assert [r.meta["consensus_test"] for r in recs] == [True, False, False]
    assert [r.meta["global_score"] for r in recs] == [1, 2, 12]
    assert recs[0].frame_size == (2802, 2801)
    assert recs[1].patient_id == "P2291" and recs[1].sex == "F"
    assert recs[2].meta["modality"] == "DX" and recs[2].meta["age_group_5y"] == 11
    assert len(recs[0].labels) == 0


def test_read_brixia_score_saved_as_integer(tmp_path):
    """A spreadsheet round trip turns '000102' into 102; zfill(6) restores the zones."""
    rows = [BRIXIA_ROWS[0].replace(";000001;", ";1;"),
            BRIXIA_ROWS[1].replace(";000002;2;", ";102;3;")]
    recs = read_brixia(brixia_file(tmp_path, rows))
    assert [r.severity for r in recs] == [(0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 2)]


@pytest.mark.parametrize("old, new, fragment", [
    (";000001;1;", ";000001;2;", "BrixiaScoreGlobal 2 is not the digit sum 1"),
    (";000001;1;", ";000004;4;", "zone score above 3"),
    (";000001;1;", ";1000001;2;", "7 digits"),
    (";000001;1;", ";0000x1;1;", "not a string of digits"),
    (";MONOCHROME2;", ";RGB;", "PhotometricInterpretation 'RGB'"),
    (";1;P2255;", ";yes;P2255;", "ConsensusTestset 'yes'"),
    (";2802;2801;", ";wide;2801;", "Columns 'wide'"),
])
def test_read_brixia_bad_rows(tmp_path, old, new, fragment):
    path = brixia_file(tmp_path, [BRIXIA_ROWS[1], BRIXIA_ROWS[0].replace(old, new)])
    with pytest.raises(ValueError, match=f"metadata_global_v2.csv, line 3: .*{fragment}"):
        read_brixia(path)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        assert len(read_brixia(path, lenient=True)) == 1


def test_read_brixia_wrong_delimiter_and_missing_column(tmp_path):
    comma = write(tmp_path / "c.csv", BRIXIA_HEADER.replace(";", ",") + "\n")
    with pytest.raises(ValueError, match="semicolon-separated"):
        read_brixia(comma)
    nocol = brixia_file(tmp_path, [], header=BRIXIA_HEADER.replace(";BrixiaScoreGlobal", ""))
    with pytest.raises(ValueError, match="missing column 'BrixiaScoreGlobal'"):
        read_brixia(nocol)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=6, max_size=6), st.integers(-18, 18))
def test_parse_brixia_score_property(zones, delta):
    text = "".join(map(str, zones))
    assert parse_brixia_score(text) == tuple(zones)
    assert parse_brixia_score(int(text)) == tuple(zones)         # leading zeros lost and restored
    assert parse_brixia_score(text, str(sum(zones))) == tuple(zones)
    if delta:
        with pytest.raises(ValueError, match="digit sum"):
            parse_brixia_score(text, sum(zones) + delta)
    assert len(BRIXIA_ZONES) == len(zones)


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------

def test_labels_mapping_behaves_like_the_contract_dict():
    lab = Labels({"A": 1.0, "B": 0.0, "C": NAN})
    assert dict(lab) == {"A": 1.0, "B": 0.0, "C": lab["C"]} and list(lab) == ["A", "B", "C"]
    assert lab == Labels([("A", 1), ("B", 0), ("C", float("nan"))])  # NaN equals NaN here
    assert lab != {"A": 1.0, "B": 0.0, "C": 0.0}
    assert hash(lab) == hash(Labels({"A": 1.0, "B": 0.0, "C": float("nan")}))
    with pytest.raises(ValueError, match="must be 1.0, 0.0 or NaN"):
        Labels({"A": 0.5})
    m = label_matrix([Record("a", lab), Record("b", {"B": 1.0})], ["C", "B", "Z"])
    np.testing.assert_array_equal(m, np.array([[NAN, 0, NAN], [NAN, 1, NAN]], np.float32))


def test_record_invariants():
    r = Record("x.png", {}, boxes=[Box("Mass", 0, 0, 1, 1)], severity=[0, 1, 2, 3, 0, 1])
    assert r.boxes == (Box("Mass", 0, 0, 1, 1),) and r.severity == (0, 1, 2, 3, 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.path = "y"  # type: ignore[misc]
    with pytest.raises(ValueError, match="x0 < x1"):
        Record("x.png", {}, boxes=(Box("Mass", 2, 0, 1, 1),))
    with pytest.raises(ValueError, match="6 zone scores"):
        Record("x.png", {}, severity=(1, 2))
