"""Concept sources for network dissection: the COVID-19 segmentation table (``structure.csv``,
written here in the published column layout and quoting), composed masks checked pixel by pixel
against hand computations, NIH boxes as filled masks, the batch source, and one dissection."""
from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from analytic import numpy_init
from cxr_jax import models
from cxr_jax.data import read_covid_segmentation, read_nih
from cxr_jax.data.images import load_image, preprocess
from cxr_jax.data.records import (COVID_SEG_CONCEPTS, Box, Record, SegmentationEntry,
                                  covid_concept)
from cxr_jax.semantics import dissect
from cxr_jax.semantics.concepts import (ConceptBatch, box_concept_masks, concept_batches,
                                        concept_masks, read_mask)

# --------------------------------------------------------------------------------------------
# The published structure.csv layout (21 columns; only some are read).
# --------------------------------------------------------------------------------------------
HEADER = ("#,Taxonomy,Class,Template Name,File Folder,Filename,Image,Tag,Mask,Resolution,Top,"
          "Left,Width,Height,Points,Text Annotation,Minimal Top,Minimal Left,Minimal Width,"
          "Minimal Height,Attributes")


def row(n, concept, filename, mask, res, left, top, w, h):
    """One published-style row; `mask=None` gives a row without a mask, as some published rows
    are (empty Tag, Mask and Minimal columns, the whole image as the rectangle)."""
    tax = '"Class:Left Lung"' if concept == "Left Lung" else ""
    if mask is None:
        W, H = res.split("x")
        return (f'{n},,"COVID-19 {concept}","{concept}",,"{filename}",images/{n:040x}.jpg,,,'
                f'{res},0,0,{W},{H},,"undefined",,,,,')
    return (f'{n},{tax},"COVID-19 {concept}","{concept}",,"{filename}",images/{n:040x}.jpg,'
            f'tags/{n:040x}_t.png,{mask},{res},{top},{left},{w},{h},,"undefined",{top},{left},'
            f'{w},{h},')


def save_rgba(path, inside):
    """A published-style mask: opaque black outside, a class colour inside."""
    a = np.zeros(inside.shape + (4,), np.uint8)
    a[..., 3] = 255
    a[inside] = (255, 134, 134, 255)
    Image.fromarray(a, "RGBA").save(path)


# Image A: 40 wide x 32 high (centre crop: columns 4..35); image B: 48 x 48.
# Each mask: (concept, file, left, top, inside [h, w] bool, how it is saved)
STRIPES = np.zeros((9, 9), bool)
STRIPES[:, ::2] = True          # 5 of every 9 columns...
STRIPES[::3, :] = True          # ...plus every third row
L_SHAPE = np.ones((10, 12), bool)
L_SHAPE[:, :2] = False          # the first two columns are outside
MASKS_A = [
    ("Left Lung", "a_ll.png", 20, 6, L_SHAPE, "rgba"),
    ("Cardiomediastinum", "a_cm.png", 26, 10, np.ones((8, 8), bool), "L"),  # overlaps the lung
    ("Right Lung", "a_rl1.png", 8, 8, np.ones((4, 4), bool), "rgba"),
    ("Right Lung", "a_rl2.png", 11, 13, np.ones((4, 4), bool), "rgba"),      # same concept again
    ("Monitoring Probes", "a_mp.png", 34, 26, np.ones((10, 10), bool), "rgba"),  # past the corner
    ("Airways", "a_aw.png", 2, -3, np.ones((6, 6), bool), "rgba"),            # above the top
]
MASKS_B = [
    ("Ground Glass Opacities", "b_ggo.png", 3, 6, STRIPES, "L"),
    ("Nosogastric Tube", "b_ng.png", 22, 20, np.ones((20, 2), bool), "1"),  # published spelling
]


def make_dataset(root, *, extra_rows=(), broken=False):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)).save(root / "images/a.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / "images/b.png")
    lines, n = [HEADER], 0
    for fname, res, masks in (("a.png", "40x32", MASKS_A), ("b.png", "48x48", MASKS_B)):
        for concept, mfile, left, top, inside, kind in masks:
            if kind == "rgba":
                save_rgba(root / "masks" / mfile, inside)
            else:
                Image.fromarray(inside.astype(np.uint8) * 255).convert(kind).save(
                    root / "masks" / mfile)
            n += 1
            h, w = inside.shape
            lines.append(row(n, concept, fname, f"masks/{mfile}", res, left, top, w, h))
        if fname == "a.png":
            n += 1
            lines.append(row(n, "Monitoring Probes", fname, None, res, 0, 0, 0, 0))
    if broken:
        (root / "images/c.png").write_bytes(b"not a png at all")
        save_rgba(root / "masks/c.png", np.ones((4, 4), bool))
        lines.append(row(n + 1, "Airways", "c.png", "masks/c.png", "10x10", 0, 0, 4, 4))
    lines.extend(extra_rows)
    path = root / "structure.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def frame_of(masks, concept, width, height):
    """Hand composition: each mask pasted at (left, top) by slicing, clipped to the image."""
    frame = np.zeros((height, width), bool)
    for c, _, left, top, inside, _ in masks:
        if c != concept:
            continue
        for i, j in zip(*np.nonzero(inside)):
            y, x = top + i, left + j
            if 0 <= y < height and 0 <= x < width:
                frame[y, x] = True
    return frame


def area_half(frame, k):
    """Block means over k x k blocks, kept where at least half the block is inside."""
    h, w = frame.shape
    return frame.reshape(h // k, k, w // k, k).mean((1, 3)) >= 0.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("covid") / "covid-19-chest-xray-segmentations-dataset"
    return make_dataset(root, broken=True)


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------
def test_reader_groups_rows_per_image(dataset):
    entries = read_covid_segmentation(dataset)
    assert [e.path for e in entries] == [str(dataset.parent / "images" / n)
                                         for n in ("a.png", "b.png", "c.png")]
    a, b, _ = entries
    assert isinstance(a, SegmentationEntry) and a.size == (40, 32) and b.size == (48, 48)
    assert [(m.concept, m.left, m.top, m.size) for m in a.masks] == [
        (c, left, top, inside.shape[::-1]) for c, _, left, top, inside, _ in MASKS_A]
    assert a.masks[0].path == str(dataset.parent / "masks" / "a_ll.png")
    assert a.masks[0].line == 2 and a.line == 2 and b.line == 9 and a.source == str(dataset)
    assert a.unmasked == ("Monitoring Probes",)  # the row without a mask
    assert a.concepts == ("Left Lung", "Cardiomediastinum", "Right Lung", "Monitoring Probes",
                          "Airways")
    assert b.concepts == ("Ground Glass Opacities", "Nasogastric Tube")  # the typo is read


def test_concept_names_are_matched_loosely():
    assert len(COVID_SEG_CONCEPTS) == 14
    for spelling, name in [("left_lung", "Left Lung"), ("GROUND-GLASS  opacities",
                                                        "Ground Glass Opacities"),
                           ("Nosogastric Tube", "Nasogastric Tube"), ("ET tube",
                                                                      "Endotracheal Tube"),
                           ("chest tube", "Chest Tube"), ("Tubings", "Tubings")]:
        assert covid_concept(spelling) == name
    with pytest.raises(ValueError, match="unknown Template Name 'Spleen'"):
        covid_concept("Spleen")


@pytest.mark.parametrize("old, new, fragment", [
    ('"Cardiomediastinum",,"a.png"', '"Spleen",,"a.png"', "unknown Template Name 'Spleen'"),
    (",26,8,8,,", ",26.5,8,8,,", "Left '26.5' is not an integer"),
    ('"Cardiomediastinum",,"a.png"', '"Cardiomediastinum",,""', "empty Filename"),
    ("40x32,10,26", "40by32,10,26", "Resolution '40by32' is not like"),
])
def test_bad_rows_name_file_line_and_lenient_skips_them(tmp_path, old, new, fragment):
    path = make_dataset(tmp_path / "ds")
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=rf"structure\.csv, line 3: {fragment}"):
        read_covid_segmentation(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = read_covid_segmentation(path, lenient=True)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 1 bad row" in msg and "line 3" in msg and fragment in msg
    # the bad row's image is left out whole (its masks would be incomplete); B is intact
    kept = [e.path.rsplit("/", 1)[-1] for e in entries]
    assert kept == (["b.png"] if "empty Filename" not in fragment else ["a.png", "b.png"])


def test_missing_column_and_wholly_outside_rectangle(tmp_path):
    path = make_dataset(tmp_path / "ds")
    text = path.read_text()
    path.write_text(text.replace(",Mask,", ",Maske,", 1))
    for lenient in (False, True):
        with pytest.raises(ValueError, match=r"structure\.csv: missing column 'Mask'"):
            read_covid_segmentation(path, lenient=lenient)
    path.write_text(text.replace("40x32,26,34,10,10", "40x32,32,40,10,10"))
    with pytest.raises(ValueError, match=r"line 6: mask rectangle at Left=40, Top=32 of 10x10 "
                                         r"lies wholly outside the 40x32 image"):
        read_covid_segmentation(path)


# --------------------------------------------------------------------------------------------
# Composed masks
# --------------------------------------------------------------------------------------------
def test_concept_masks_match_hand_composition(dataset):
    a, b, _ = read_covid_segmentation(dataset)
    names = ("Left Lung", "Cardiomediastinum", "Right Lung", "Monitoring Probes", "Airways")
    got = concept_masks(a, 16, concepts=names)
    assert got.shape == (5, 16, 16) and got.dtype == bool
    for k, name in enumerate(names):
        full = frame_of(MASKS_A, name, 40, 32)[:, 4:36]  # the centred 32 x 32 square
        np.testing.assert_array_equal(got[k], area_half(full, 2), err_msg=name)
    # The same by hand, in output pixels (2 x 2 blocks of the crop, which starts at column 4).
    expect = np.zeros((16, 16), bool)
    expect[3:8, 9:14] = True                     # lung: columns 22..31, rows 6..15
    np.testing.assert_array_equal(got[0], expect)
    expect = np.zeros((16, 16), bool)
    expect[5:9, 11:15] = True                    # heart: columns 26..33, rows 10..17
    np.testing.assert_array_equal(got[1], expect)
    assert (got[0] & got[1]).sum() == 9          # the overlap stays in both channels
    expect = np.zeros((16, 16), bool)
    expect[4:6, 2:4] = True                      # first right-lung mask: 4 whole blocks
    expect[6:9, 4] = True                        # second (crop columns 7..10, rows 13..16):
    expect[7, 3] = expect[7, 5] = True           # blocks with at least 2 of their 4 pixels
    np.testing.assert_array_equal(got[2], expect)
    expect = np.zeros((16, 16), bool)
    expect[13:16, 15] = True                     # probes: clipped at the image's corner
    np.testing.assert_array_equal(got[3], expect)
    expect = np.zeros((16, 16), bool)
    expect[0:2, 0:2] = True                      # airways: row 2 covers exactly half a block
    np.testing.assert_array_equal(got[4], expect)

    all_b = concept_masks(b, 16)                 # default: all 14, in COVID_SEG_CONCEPTS order
    assert all_b.shape == (14, 16, 16)
    ggo, ng = COVID_SEG_CONCEPTS.index("Ground Glass Opacities"), COVID_SEG_CONCEPTS.index(
        "Nasogastric Tube")
    np.testing.assert_array_equal(
        all_b[ggo], area_half(frame_of(MASKS_B, "Ground Glass Opacities", 48, 48), 3))
    expect = np.zeros((16, 16), bool)
    expect[7:13, 7] = True                       # tube: 2 of 3 columns, rows 21..38 whole
    np.testing.assert_array_equal(all_b[ng], expect)
    assert all_b.sum(axis=(1, 2))[[k for k in range(14) if k not in (ggo, ng)]].sum() == 0


def test_concept_masks_minimal_table_reads_the_image_size(dataset, tmp_path):
    """The five columns alone (no Resolution): the size comes from the image file."""
    lines = ["Filename,Template Name,Mask,Left,Top",
             "a.png,left_lung,masks/a_ll.png,20,6",
             "a.png,CARDIOMEDIASTINUM,masks/a_cm.png,26,10"]
    path = tmp_path / "structure.csv"
    path.write_text("\n".join(lines) + "\n")
    (entry,) = read_covid_segmentation(path, root=dataset.parent)
    assert entry.size is None and entry.masks[0].size is None
    full = read_covid_segmentation(dataset)[0]
    names = ("Left Lung", "Cardiomediastinum")
    np.testing.assert_array_equal(concept_masks(entry, 16, concepts=names),
                                  concept_masks(full, 16, concepts=names))
    # no crop: the whole 40 x 32 frame squeezed to 16 x 16
    assert concept_masks(entry, 16, concepts=names, crop=None).shape == (2, 16, 16)


def test_mask_size_must_match_its_row(dataset):
    a = read_covid_segmentation(dataset)[0]
    m = a.masks[0]
    bad = a._replace(masks=(m._replace(size=(11, 10)),))
    with pytest.raises(ValueError, match=r"structure\.csv, line 2: mask .*a_ll\.png' is 12x10 "
                                         r"but the row gives Width x Height 11x10"):
        concept_masks(bad, 16)
    assert read_mask(m.path).sum() == L_SHAPE.sum()


# --------------------------------------------------------------------------------------------
# NIH boxes
# --------------------------------------------------------------------------------------------
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS = ["00000001_000.png,Mass|Nodule,0,1,57,M,PA,2682,2749,0.143,0.143",
            "00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171"]
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_ROWS = ["00000001_000.png,Nodule,10,20,30,40",
             "00000001_000.png,Mass,100,200,150,50",
             "00000001_000.png,Nodule,1000,1000,24,24"]


def test_nih_boxes_become_filled_masks(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([NIH_HEADER] + NIH_ROWS) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join([BBOX_HEADER] + BBOX_ROWS) + "\n")
    rec, empty = read_nih(root)
    got = box_concept_masks(rec, 64, findings=("Mass", "Nodule", "Effusion"))
    assert got.shape == (3, 64, 64) and got.dtype == bool
    # 1024 -> 64: 16 x 16 blocks. A box fills the pixels whose centres it holds; an output
    # pixel is in when (rows covered / 16) x (columns covered / 16) >= 1/2.
    mass = np.zeros((64, 64), bool)   # columns 100..249: blocks 6 (12/16), 7..14, 15 (10/16)
    mass[13:15, 6:16] = True          # rows 200..249: blocks 12 (8/16), 13..14, 15 (10/16)
    mass[12, 7:15] = mass[15, 7:15] = True  # edge rows with whole columns; corners < 1/2
    nodule = np.zeros((64, 64), bool)  # columns 10..39: blocks 0 (6/16), 1, 2 (8/16)
    nodule[1:4, 1] = True              # rows 20..59: blocks 1 (12/16), 2, 3 (12/16)
    nodule[2, 2] = True                # 8/16 of columns x whole rows; (1, 2): 12/16 x 8/16 < 1/2
    nodule[62:64, 62:64] = True        # second nodule, 1000..1023: blocks 62 (8/16) and 63
    nodule[62, 62] = False             # 8/16 x 8/16
    np.testing.assert_array_equal(got[0], mass)
    np.testing.assert_array_equal(got[1], nodule)
    assert not got[2].any() and not box_concept_masks(empty, 64).any()
    # a box reaching past the image is clipped to it
    rec2 = Record(path="x.png", labels={"Mass": 1.0}, boxes=(Box("Mass", -8.0, -8.0, 8.0, 8.0),),
                  frame_size=(64, 64))
    expect = np.zeros((16, 16), bool)
    expect[:2, :2] = True
    np.testing.assert_array_equal(box_concept_masks(rec2, 16, findings=["Mass"])[0], expect)


# --------------------------------------------------------------------------------------------
# Batches and dissection
# --------------------------------------------------------------------------------------------
def test_batches_skip_an_unreadable_image_with_one_warning(dataset):
    entries = read_covid_segmentation(dataset)
    names = ("Left Lung", "Right Lung", "Airways")
    batches = concept_batches(entries, image_size=16, batch_size=2, concepts=names)
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 images .*c\.png") as caught:
        first = list(batches)
    assert len([w for w in caught if "concept_batches" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second pass neither warns nor retries
        second = list(batches)
    assert len(first) == len(second) == 1
    (batch,) = first
    assert isinstance(batch, ConceptBatch) and batch.concept_names == names
    images, masks = batch
    assert images.shape == (2, 16, 16, 1) and images.dtype == np.float32
    assert masks.shape == (2, 3, 16, 16) and masks.dtype == bool
    assert len(batches.skipped) == 1 and batches.skipped[0][0].endswith("c.png")
    for i, e in enumerate(entries[:2]):
        x, _, _ = preprocess(load_image(e.path), size=16)
        np.testing.assert_array_equal(images[i], x)
        np.testing.assert_array_equal(masks[i], concept_masks(e, 16, concepts=names))
    np.testing.assert_array_equal(second[0].images, images)
    assert -1024 <= images.min() and images.max() <= 1024
    with pytest.raises(ValueError, match="unknown Template Name 'Spleen'"):
        concept_batches(entries, image_size=16, batch_size=2, concepts=["Spleen"])


def test_dissect_runs_on_concept_batches(dataset):
    entries = read_covid_segmentation(dataset)
    names = ("Left Lung", "Cardiomediastinum", "Right Lung")
    batches = concept_batches(entries, image_size=32, batch_size=2, concepts=names)
    model = models.get("resnet_tiny", num_classes=2)
    variables = numpy_init(model, jnp.zeros((1, 32, 32, 1)), seed=0)
    with pytest.warns(UserWarning, match="concept_batches: skipped 1 of 3"):
        d = dissect(model, variables, batches, layer="layer2", quantile=0.05, resolution=8)
    assert d.concept_names == names and d.num_images == 2
    assert d.iou.shape == (d.thresholds.shape[0], 3) and d.labels.shape == d.thresholds.shape
    assert np.all((d.iou >= 0) & (d.iou <= 1))
    assert (d.concept_areas > 0).all()
