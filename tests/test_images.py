"""Image decoding and preprocessing: exact intensities, geometry of crop/resize, boxes and masks."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr_jax.data.images import (
    box_masks, load_image, load_record, preprocess, resize, scale_boxes, shape_masks,
    to_intensity,
)
from cxr_jax.data.records import Box, Record, Shape, read_object_cxr

RNG = np.random.default_rng(0)


def write_dicom(path, arr, photometric="MONOCHROME2", bits_stored=12, signed=False):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = arr.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def test_load_png_8_and_16_bit_exact(tmp_path):
    a8 = RNG.integers(0, 256, (12, 17), dtype=np.uint8)
    a16 = RNG.integers(0, 65536, (9, 5), dtype=np.uint16)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(a16).save(tmp_path / "a16.png")
    x8, x16 = load_image(tmp_path / "a8.png"), load_image(tmp_path / "a16.png")
    assert x8.dtype == np.float32 and x8.shape == (12, 17)
    np.testing.assert_allclose(x8, a8 / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(x16, a16 / 65535.0, rtol=0, atol=1e-7)


def test_colour_with_identical_channels_is_that_channel(tmp_path):
    g = RNG.integers(0, 256, (10, 11), dtype=np.uint8)
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([g] * 3 + [np.full_like(g, 255)], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(g).convert("P").save(tmp_path / "pal.png")
    for name in ("rgb.png", "rgba.png", "pal.png"):
        np.testing.assert_allclose(load_image(tmp_path / name), g / 255.0, atol=1e-7)


def test_photometric_override_inverts(tmp_path):
    g = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    p = tmp_path / "g.png"
    Image.fromarray(g).save(p)
    np.testing.assert_allclose(load_image(p, photometric="MONOCHROME1"), 1 - g / 255.0, atol=1e-7)
    np.testing.assert_array_equal(load_image(p, photometric="monochrome2"), load_image(p))
    with pytest.raises(ValueError, match="photometric='RGB'"):
        load_image(p, photometric="RGB")


def test_unreadable_images_raise_clear_errors(tmp_path):
    g = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("Image Index,Finding Labels\n")
    with pytest.raises(ValueError, match=r"truncated\.png"):
        load_image(tmp_path / "truncated.png")
    with pytest.raises(ValueError, match=r"text\.png.*not an image format"):
        load_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_dicom_scaling_and_monochrome1_inversion(tmp_path):
    v = RNG.integers(0, 4096, (8, 6))
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", v, "MONOCHROME2"))
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", v, "MONOCHROME1"))
    np.testing.assert_allclose(m2, v / 4095.0, atol=1e-6)
    np.testing.assert_allclose(m1, 1 - v / 4095.0, atol=1e-6)
    # The caller's photometric overrides the header (e.g. a BrixIA record).
    np.testing.assert_allclose(load_image(tmp_path / "m2.dcm", photometric="MONOCHROME1"), m1,
                               atol=1e-6)
    s = RNG.integers(-2048, 2048, (5, 5))
    np.testing.assert_allclose(load_image(write_dicom(tmp_path / "s.dcm", s, signed=True)),
                               (s + 2048) / 4095.0, atol=1e-6)


def test_dicom_without_pydicom_names_the_missing_decoder(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4)))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(ImportError, match=r"pydicom.*pip install 'cxr_jax\[dicom\]'"):
        load_image(p)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while parsing the garbage
def test_corrupt_dicom_is_a_value_error(tmp_path):
    p = tmp_path / "bad.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(ValueError, match=r"bad\.dcm"):
        load_image(p)


# --------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------

def test_resize_known_answers():
    x = RNG.random((2, 6, 9)).astype(np.float32)
    # Integer shrink factors give block means.
    want = x.reshape(2, 2, 3, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(resize(x, (2, 3)), want, rtol=1e-5)
    # Fractional shrink 3 -> 2: output cells cover [0, 1.5) and [1.5, 3).
    r = resize(np.array([[1.0, 2.0, 4.0]]), (1, 2))
    np.testing.assert_allclose(r, [[(1 + 0.5 * 2) / 1.5, (0.5 * 2 + 4) / 1.5]], rtol=1e-6)
    # Enlarging is bilinear on pixel centres, clamped at the edges.
    np.testing.assert_allclose(resize(np.array([[0.0, 4.0]]), (1, 4)), [[0, 1, 3, 4]], atol=1e-6)
    # Constants stay constant; shape of leading axes is kept.
    c = resize(np.full((3, 2, 7, 13), 0.25, np.float32), (5, 4))
    assert c.shape == (3, 2, 5, 4)
    np.testing.assert_allclose(c, 0.25, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Preprocess: crop, resize, intensity; boxes and masks follow
# --------------------------------------------------------------------------------------------

def test_preprocess_centre_crop_geometry_and_intensity():
    # 4 x 8 image whose columns are 0/7 ... 7/7: the centre crop keeps columns 2..5.
    img = np.tile(np.arange(8, dtype=np.float32) / 7, (4, 1))
    x, boxes, _ = preprocess(img, size=4, intensity="unit",
                             boxes=[Box("A", 2, 0, 6, 4), Box("B", 0, 1, 3, 2),
                                    Box("C", 0, 0, 1.5, 4)])
    assert x.shape == (4, 4, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], np.tile(np.arange(2, 6) / 7, (4, 1)), atol=1e-6)
    assert boxes == (Box("A", 0, 0, 4, 4), Box("B", 0, 1, 1, 2))  # B clipped, C wholly cropped
    xv, _, _ = preprocess(img, size=4)
    np.testing.assert_allclose(xv, x * 2048 - 1024, atol=1e-3)
    assert to_intensity(np.array([0.0, 1.0])).tolist() == [-1024.0, 1024.0]
    # A tall image is cropped vertically.
    tall = img.T.copy()
    _, bt, _ = preprocess(tall, size=2, boxes=[Box("A", 0, 2, 4, 6)])
    assert bt == (Box("A", 0, 0, 2, 2),)


def test_preprocess_scales_boxes_from_the_annotation_frame():
    """NIH boxes are in a 1024 frame; on a 512 image they halve, then follow the resize."""
    img = np.zeros((512, 512), np.float32)
    box = Box("Mass", 100.0, 200.0, 300.0, 500.0)
    _, (b,), _ = preprocess(img, size=224, boxes=[box], frame_size=(1024, 1024))
    np.testing.assert_allclose(b[1:], np.array(box[1:]) * 224 / 1024)
    assert scale_boxes([box], (1024, 1024), (512, 512)) == (Box("Mass", 50, 100, 150, 250),)
    with pytest.raises(ValueError, match="outside the 1024x1024 annotation frame"):
        preprocess(img, boxes=[Box("Mass", 900, 0, 1100, 10)], frame_size=(1024, 1024))
    with pytest.raises(ValueError, match="outside the 512x512 image"):
        preprocess(img, boxes=[Box("Mass", 500, 0, 513, 10)])


def test_preprocess_without_crop_resizes_the_whole_image():
    img = np.zeros((10, 20), np.float32)
    _, (b,), m = preprocess(img, size=10, crop=None, boxes=[Box("A", 10, 0, 20, 10)],
                            masks=box_masks([Box("A", 10, 0, 20, 10)], 10, 20))
    assert b == Box("A", 5, 0, 10, 10)
    np.testing.assert_array_equal(m, box_masks([b], 10, 10))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 64), w=st.integers(8, 64), size=st.integers(4, 48),
       frac=st.tuples(*[st.floats(0, 1)] * 4), crop=st.sampled_from(["centre", None]))
def test_masks_and_boxes_follow_crop_and_resize(h, w, size, frac, crop):
    """A box's mask, preprocessed, agrees with the mask of the preprocessed box away from its edge."""
    x0, x1 = sorted((frac[0] * w, frac[1] * w))
    y0, y1 = sorted((frac[2] * h, frac[3] * h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    box = Box("A", x0, y0, x1, y1)
    img = np.zeros((h, w), np.float32)
    _, boxes, masks = preprocess(img, size=size, crop=crop, boxes=[box],
                                 masks=box_masks([box], h, w))
    assert masks.shape == (1, size, size) and masks.dtype == bool
    if not boxes:  # cropped away: the mask must be (nearly) empty too
        assert masks.sum() <= size
        return
    (b,) = boxes
    assert 0 <= b.x0 < b.x1 <= size and 0 <= b.y0 < b.y1 <= size
    # A margin of one output pixel plus one input pixel (in output units) on every edge.
    m = 1.0 + size / min(h, w) if crop else 1.0 + size / min(h, w) + size / max(h, w)
    c = np.arange(size) + 0.5
    inner = (((c[:, None] > b.y0 + m) & (c[:, None] < b.y1 - m))
             & ((c[None, :] > b.x0 + m) & (c[None, :] < b.x1 - m)))
    outer = (((c[:, None] < b.y0 - m) | (c[:, None] > b.y1 + m))
             | ((c[None, :] < b.x0 - m) | (c[None, :] > b.x1 + m)))
    assert masks[0][inner].all() and not masks[0][outer].any()


def test_preprocess_rejects_bad_input():
    img = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        preprocess(img + 2)
    with pytest.raises(ValueError, match="one grayscale image"):
        preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        preprocess(img * np.nan)
    with pytest.raises(ValueError, match="masks have shape"):
        preprocess(img, masks=np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="crop='left'"):
        preprocess(img, crop="left")
    with pytest.raises(ValueError, match="intensity='hu'"):
        preprocess(img, intensity="hu")
    with pytest.raises(ValueError, match="empty or inverted"):
        preprocess(img, boxes=[Box("A", 4, 0, 2, 3)])


# --------------------------------------------------------------------------------------------
# Rasterising boxes and shapes
# --------------------------------------------------------------------------------------------

def test_box_and_shape_masks():
    b = box_masks([Box("A", 2, 3, 7, 5), (0.0, 0.0, 1.0, 1.0)], 10, 12)
    assert b.shape == (2, 10, 12) and b[0].sum() == 5 * 2 and b[1].sum() == 1
    assert b[0][3:5, 2:7].all()
    rect = shape_masks([Shape("rectangle", (2, 3, 7, 5))], 10, 12)
    np.testing.assert_array_equal(rect[0], b[0])
    # An axis-aligned square polygon is exactly its rectangle; an L shape is two rectangles.
    square = shape_masks([Shape("polygon", (2, 3, 7, 3, 7, 5, 2, 5))], 10, 12)
    np.testing.assert_array_equal(square[0], b[0])
    ell = shape_masks([Shape("polygon", (0, 0, 6, 0, 6, 2, 2, 2, 2, 8, 0, 8))], 10, 12)[0]
    want = box_masks([(0, 0, 6, 2), (0, 2, 2, 8)], 10, 12).any(0)
    np.testing.assert_array_equal(ell, want)
    # Ellipse and triangle areas approach the continuous ones.
    e = shape_masks([Shape("ellipse", (20, 30, 180, 110))], 140, 200)[0]
    assert abs(e.sum() - math.pi * 80 * 40) / (math.pi * 80 * 40) < 0.01
    assert not e[:30].any() and not e[:, :20].any()
    t = shape_masks([Shape("polygon", (10, 10, 190, 10, 10, 130))], 140, 200)[0]
    assert abs(t.sum() - 0.5 * 180 * 120) / (0.5 * 180 * 120) < 0.02


def test_load_record_object_cxr_masks_follow(tmp_path):
    Image.fromarray(np.full((40, 60), 128, np.uint8)).save(tmp_path / "08001.png")
    csv = tmp_path / "dev.csv"
    csv.write_text("image_name,annotation\n08001.png,1 20 10 40 30;0 0 0 5 5\n")
    (rec,) = read_object_cxr(csv, root=tmp_path, masks=True)
    x, boxes, masks = load_record(rec, size=20, intensity="unit", masks=True)
    assert x.shape == (20, 20, 1)
    np.testing.assert_allclose(x, 128 / 255, atol=1e-6)
    # Centre crop of 60 wide -> columns 10..50; scale 20/40. The corner rectangle is cropped away.
    assert boxes == (Box("Foreign Object", 5, 5, 15, 15),)
    assert masks.shape == (1, 20, 20)
    want = shape_masks([Shape("ellipse", (5, 5, 15, 15))], 20, 20)
    np.testing.assert_array_equal(masks, want)
    # Without shapes, masks are the boxes.
    (plain,) = read_object_cxr(csv, root=tmp_path)
    np.testing.assert_array_equal(load_record(plain, size=20, masks=True)[2],
                                  box_masks(boxes, 20, 20))


def test_load_record_errors_name_the_annotation_line(tmp_path):
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "a.png")
    csv = tmp_path / "dev.csv"
    csv.write_text("image_name,annotation\nmissing.png,\na.png,0 50 10 70 20\n")
    missing, outside = read_object_cxr(csv, root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.png.*dev\.csv, line 2"):
        load_record(missing)
    with pytest.raises(ValueError, match=r"outside the 60x40 image.*dev\.csv, line 3"):
        load_record(outside)
    rec = Record(str(tmp_path / "a.png"), {}, boxes=(Box("Mass", 0, 0, 512, 256),),
                 frame_size=(1024, 512))
    _, (b,), _ = load_record(rec, size=40)  # 60x40 image: frame scale 60/1024, 40/512
    np.testing.assert_allclose(b[1:], [0, 0, 20, 20], atol=1e-9)
