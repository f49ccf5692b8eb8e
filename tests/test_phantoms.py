"""Tests for cxr_jax.data.phantoms: ground truth consistency, determinism, look, shortcut."""

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import phantoms
from cxr_jax.data.phantoms import CONCEPTS, FINDINGS, LUNG_FINDINGS, OPACITY_FINDINGS, generate

S = 64


@pytest.fixture(scope="module", params=["v2", "v1"])
def batch(request):
    return generate(400, image_size=S, seed=0, style=request.param)


def batch_style(batch):
    """The style the fixture's batch was drawn in (v2 draws tubes, v1 none)."""
    tubes = [CONCEPTS.index(n) for n in ("et_tube", "central_line", "ng_tube")]
    return "v2" if batch.concepts[:, tubes].any() else "v1"


def _dilate(m, r):
    """[N, H, W] bool grown by r pixels (a square neighbourhood)."""
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, axis=-2), dx, axis=-1)
    return out


def _extent(cols_any):
    """Width (in pixels) of the span of True entries of [N, W] bool (0 where none)."""
    idx = np.arange(cols_any.shape[1])
    lo = np.where(cols_any, idx, cols_any.shape[1]).min(axis=1)
    hi = np.where(cols_any, idx, -1).max(axis=1)
    return np.maximum(hi - lo + 1, 0)


def test_fields_shapes_and_dtypes(batch):
    n, K, C = 400, len(FINDINGS), len(CONCEPTS)
    assert batch.images.shape == (n, S, S, 1) and batch.images.dtype == np.float32
    assert batch.labels.shape == (n, K) and batch.labels.dtype == np.float32
    assert batch.masks.shape == (n, K, S, S) and batch.masks.dtype == bool
    assert batch.concepts.shape == (n, C, S, S) and batch.concepts.dtype == bool
    assert batch.severity.shape == (n, 6) and np.issubdtype(batch.severity.dtype, np.integer)
    assert batch.finding_names == FINDINGS and batch.concept_names == CONCEPTS
    assert batch.shortcut_mask.shape == (n, S, S) and not batch.shortcut_mask.any()
    assert set(np.unique(batch.labels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(batch.index, np.arange(n))


def test_label_is_one_exactly_when_mask_nonempty(batch):
    for k, name in enumerate(FINDINGS):
        nonempty = batch.masks[:, k].any(axis=(1, 2))
        np.testing.assert_array_equal(batch.labels[:, k] == 1, nonempty, err_msg=name)


def test_every_finding_has_moderate_prevalence(batch):
    prev = batch.labels.mean(axis=0)
    for name, p in zip(FINDINGS, prev):
        assert 0.28 <= p <= 0.52, (name, p)
    # independent findings: no strong correlation between labels
    corr = np.corrcoef(batch.labels.T)
    assert np.abs(corr - np.eye(len(FINDINGS))).max() < 0.2


def test_lung_findings_lie_inside_the_lungs(batch):
    lungs = batch.concepts[:, CONCEPTS.index("left_lung")] | \
        batch.concepts[:, CONCEPTS.index("right_lung")]
    for name in LUNG_FINDINGS:
        m = batch.masks[:, FINDINGS.index(name)]
        assert m.any(), name
        assert not (m & ~lungs).any(), name


def test_left_lung_is_on_the_image_right(batch):
    cols = np.arange(S)
    left = batch.concepts[:, CONCEPTS.index("left_lung")]
    right = batch.concepts[:, CONCEPTS.index("right_lung")]
    cl = (left.sum(axis=1) * cols).sum(axis=1) / left.sum(axis=(1, 2))
    cr = (right.sum(axis=1) * cols).sum(axis=1) / right.sum(axis=(1, 2))
    assert np.all(cl > S / 2) and np.all(cr < S / 2)
    assert not (left & right).any()


def test_cardiomegaly_mask_is_heart_and_heart_wider_than_half_thorax(batch):
    k = FINDINGS.index("cardiomegaly")
    heart = batch.concepts[:, CONCEPTS.index("heart")]
    pos = batch.labels[:, k] == 1
    np.testing.assert_array_equal(batch.masks[pos, k], heart[pos])
    assert not batch.masks[~pos, k].any()
    lungs = batch.concepts[:, CONCEPTS.index("left_lung")] | \
        batch.concepts[:, CONCEPTS.index("right_lung")]
    heart_w = _extent(heart.any(axis=1))
    thorax_w = _extent((lungs | heart).any(axis=1))
    np.testing.assert_array_equal(heart_w > 0.5 * thorax_w, pos)
    np.testing.assert_array_equal(batch.ctr > 0.5, pos)


def test_severity_matches_opacity_label_and_mask_sides(batch):
    k = FINDINGS.index("opacity")
    sev = batch.severity
    assert sev.min() >= 0 and sev.max() <= 3
    np.testing.assert_array_equal(batch.labels[:, k] == 1, (sev > 0).any(axis=1))
    m = batch.masks[:, k]
    right = batch.concepts[:, CONCEPTS.index("right_lung")]
    left = batch.concepts[:, CONCEPTS.index("left_lung")]
    # zones A-C are the patient's right lung, D-F the left lung
    np.testing.assert_array_equal((m & right).any(axis=(1, 2)), (sev[:, :3] > 0).any(axis=1))
    np.testing.assert_array_equal((m & left).any(axis=(1, 2)), (sev[:, 3:] > 0).any(axis=1))
    # all scores occur, and more zones means a larger mask
    assert set(np.unique(sev)) == {0, 1, 2, 3}
    zones = (sev > 0).sum(axis=1)
    area = m.sum(axis=(1, 2))
    assert area[zones >= 4].mean() > area[(zones >= 1) & (zones <= 2)].mean()


def test_concepts_consistent_with_findings(batch):
    fo = batch.masks[:, FINDINGS.index("foreign_object")]
    np.testing.assert_array_equal(batch.concepts[:, CONCEPTS.index("foreign_object")], fo)
    opac = batch.masks[:, [FINDINGS.index(k) for k in OPACITY_FINDINGS]].any(axis=1)
    np.testing.assert_array_equal(batch.concepts[:, CONCEPTS.index("opacity")], opac)
    for name in ("heart", "mediastinum", "spine", "ribs", "clavicles", "diaphragm"):
        assert batch.concepts[:, CONCEPTS.index(name)].any(axis=(1, 2)).all(), name
    heart = batch.concepts[:, CONCEPTS.index("heart")]
    assert not (heart & batch.concepts[:, CONCEPTS.index("left_lung")]).any()


def test_intensity_ranges_and_radiograph_look(batch):
    x = batch.images[..., 0]
    assert x.min() >= -1024 and x.max() <= 1024
    unit = (x + 1024) / 2048
    # outside the body (top corners: air, in v2 shoulder soft tissue) is dark, lungs darker
    # than heart and mediastinum
    dark = 0.1 if batch_style(batch) == "v1" else 0.2
    assert np.median(unit[:, 0, 0]) < dark and np.median(unit[:, 0, -1]) < dark

    def mean_in(name):
        m = batch.concepts[:, CONCEPTS.index(name)]
        return (unit * m).sum(axis=(1, 2)) / m.sum(axis=(1, 2))

    lung = batch.concepts[:, CONCEPTS.index("left_lung")] | \
        batch.concepts[:, CONCEPTS.index("right_lung")]
    lung_mean = (unit * lung).sum(axis=(1, 2)) / lung.sum(axis=(1, 2))
    # (findings such as effusion and opacity brighten some lungs)
    assert np.all(mean_in("heart") > lung_mean + 0.15)
    # (v2's lungs are brighter under the chest wall, as real ones are)
    assert np.median(mean_in("heart") - lung_mean) > (0.35 if dark == 0.1 else 0.28)
    assert np.median(mean_in("mediastinum") - lung_mean) > (0.3 if dark == 0.1 else 0.25)
    # overall histogram roughly that of a real radiograph: mean mid-grey, wide spread (the
    # NIH PNGs and the COVID-19 JPEG in shared/data have std 0.26-0.29 in this scale; v2
    # phantoms about 0.20 at 64 px, a narrower histogram than real films)
    assert 0.35 < unit.mean() < 0.65 and unit.std() > 0.19
    u = generate(4, image_size=S, seed=0, intensity="unit", style=batch_style(batch)).images
    np.testing.assert_allclose(u, (batch.images[:4] + 1024) / 2048, atol=1e-4)
    assert u.min() >= 0 and u.max() <= 1


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_findings_change_pixels_only_inside_their_masks(style):
    """Same seed, finding forced on vs off: identical patients, differing only in the mask
    (v2: up to the exposure's blur, two pixels, and its scatter veil, a faint glow)."""
    for name in FINDINGS:
        if name == "cardiomegaly":   # a bigger heart moves the lungs' borders too
            continue
        kw = dict(image_size=S, seed=5, intensity="unit", style=style)
        on = generate(12, prevalence={name: 1.0}, **kw)
        off = generate(12, prevalence={name: 0.0}, **kw)
        k = FINDINGS.index(name)
        assert on.labels[:, k].mean() > 0.9 and off.labels[:, k].sum() == 0, name
        diff = np.abs(on.images - off.images)[..., 0]
        m = on.masks[:, k]
        if style == "v1":
            assert diff[~m].max() == 0.0, name
        else:
            assert diff[~_dilate(m, 2)].max() < 0.01, name
        pos = on.labels[:, k] == 1
        mean_in = diff.sum(axis=(1, 2))[pos] / m.sum(axis=(1, 2))[pos]
        assert mean_in.min() > 0.03, (name, mean_in.min())   # visible, well above zero
        np.testing.assert_array_equal(np.delete(on.labels, k, 1), np.delete(off.labels, k, 1))


def test_deterministic_and_random_access():
    a = generate(10, image_size=48, seed=3)
    b = generate(10, image_size=48, seed=3, num_threads=1)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(np.asarray(fa), np.asarray(fb))
    c = generate(10, image_size=48, seed=4)
    assert not np.array_equal(a.images, c.images)
    tail = generate(4, image_size=48, seed=3, start=6)
    np.testing.assert_array_equal(tail.images, a.images[6:])
    np.testing.assert_array_equal(tail.masks, a.masks[6:])
    np.testing.assert_array_equal(tail.index, np.arange(6, 10))


def test_any_size_from_32_and_empty_batch():
    for size in (32, 97):
        b = generate(6, image_size=size, seed=1)
        assert b.images.shape == (6, size, size, 1)
        k = FINDINGS.index("cardiomegaly")
        np.testing.assert_array_equal(b.labels, b.masks.any(axis=(2, 3)))
        assert b.concepts[:, CONCEPTS.index("left_lung")].any(axis=(1, 2)).all()
        assert b.labels[:, k].sum() == (b.ctr > 0.5).sum()
    e = generate(0, image_size=32)
    assert e.images.shape == (0, 32, 32, 1) and e.masks.shape == (0, len(FINDINGS), 32, 32)


def test_prevalence_extremes():
    b = generate(40, image_size=S, seed=2, prevalence=1.0)
    assert b.labels.mean() > 0.97
    b = generate(40, image_size=S, seed=2, prevalence={"nodule": 0.0, "opacity": 0.0})
    assert b.labels[:, FINDINGS.index("nodule")].sum() == 0
    assert b.severity.sum() == 0


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_shortcut_tag_correlates_with_label_at_the_rate(style):
    b = generate(400, image_size=S, seed=0, style=style,
                 shortcut=dict(label="cardiomegaly", rate=0.9))
    tag = b.shortcut_mask.any(axis=(1, 2))
    pos = b.labels[:, FINDINGS.index("cardiomegaly")] == 1
    assert abs(tag[pos].mean() - 0.9) < 0.06 and abs(tag[~pos].mean() - 0.1) < 0.06
    # the tag is bright, lies in a corner and is the only marker
    unit = (b.images[..., 0] + 1024) / 2048
    assert unit[b.shortcut_mask].min() > 0.6 and unit[b.shortcut_mask].mean() > 0.75
    rows, cols = np.nonzero(b.shortcut_mask.any(axis=0))
    assert rows.max() < S // 4 and cols.max() < S // 4
    np.testing.assert_array_equal(b.marker_mask, b.shortcut_mask)
    # the same patients as without the shortcut
    plain = generate(400, image_size=S, seed=0, style=style)
    np.testing.assert_array_equal(plain.labels, b.labels)
    if style == "v1":
        untagged = ~(b.shortcut_mask | plain.marker_mask)
        np.testing.assert_array_equal(plain.images[..., 0][untagged], b.images[..., 0][untagged])
    else:   # the exposure blurs the tag by a pixel or two and its scatter veil glows faintly
        untagged = ~_dilate(b.shortcut_mask | plain.marker_mask, 2)
        np.testing.assert_allclose(plain.images[..., 0][untagged], b.images[..., 0][untagged],
                                   atol=0.01 * 2048)
    # without a shortcut the film marker is independent of every label
    m = plain.marker_mask.any(axis=(1, 2))
    assert 0.4 < m.mean() < 0.6
    for k in range(len(FINDINGS)):
        assert abs(m[plain.labels[:, k] == 1].mean() - m[plain.labels[:, k] == 0].mean()) < 0.15


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=-1), "n must"),
    (dict(n=2, image_size=16), "image_size"),
    (dict(n=2, intensity="hu"), "intensity"),
    (dict(n=2, prevalence=1.5), "prevalence"),
    (dict(n=2, prevalence={"tumour": 0.5}), "unknown findings"),
    (dict(n=2, shortcut=dict(label="edema", rate=0.9)), "not a finding"),
    (dict(n=2, shortcut=dict(label="mass", rate=2.0)), "rate"),
    (dict(n=2, shortcut="mass"), "shortcut must"),
    (dict(n=2, start=-3), "start"),
])
def test_bad_arguments_raise(kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        generate(n, **kwargs)


def test_save_grid_writes_a_readable_png(tmp_path):
    b = generate(10, image_size=S, seed=1)
    path = tmp_path / "grid.png"
    arr = phantoms.save_grid(b, path, ncols=4)
    im = Image.open(path)
    assert im.size == (4 * S, 3 * (S + 12)) and im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), arr)
    # outlines are drawn in colour where masks are, grey elsewhere in the tile
    plain = phantoms.save_grid(b, tmp_path / "plain.png", ncols=4, with_masks=False)
    tile = arr[:S, :S].astype(int)
    assert (np.abs(tile[..., 0] - tile[..., 2]) > 0).any() == b.labels[0].any()
    assert (plain[:S, :S, 0] == plain[:S, :S, 1]).all()
    with pytest.raises(ValueError, match="ncols"):
        phantoms.save_grid(b, tmp_path / "x.png", ncols=0)


def test_airway_and_cardiomediastinum_concepts(batch):
    """The two concepts the CXR dissection work names: the trachea (a narrow vertical column
    above the carina) and the cardiomediastinum (heart or mediastinum)."""
    c = batch.concepts
    trachea = c[:, CONCEPTS.index("trachea")]
    assert trachea.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(c[:, CONCEPTS.index("cardiomediastinum")],
                                  c[:, CONCEPTS.index("heart")] | c[:, CONCEPTS.index("mediastinum")])
    rows, cols = trachea.any(axis=2), trachea.any(axis=1)
    assert np.all(cols.sum(1) <= 0.12 * S)            # narrow (0.06 of the width, + pose)
    assert np.all(rows.sum(1) >= 0.2 * S)             # and tall
    assert not (trachea & c[:, CONCEPTS.index("heart")]).any()
    # it runs down the middle of the mediastinum (above it only in the neck)
    med = c[:, CONCEPTS.index("mediastinum")]
    assert np.median((trachea & med).sum((1, 2)) / trachea.sum((1, 2))) > 0.8


def test_scatter_upsampling_is_scipy_zoom_bit_for_bit():
    """texture._upsample reproduces ndimage.zoom(order=1) exactly (the v2 phantoms' pixels,
    and every number measured on them, rest on it): a scipy that changed its arithmetic would
    show here, not silently in the figures."""
    from scipy import ndimage

    from cxr_jax.data.phantoms import texture

    rng = np.random.default_rng(0)
    for n, size in ((5, 32), (9, 224), (7, 97), (12, 128)):
        low = rng.normal(size=(3, n, n)).astype(np.float32)
        want = ndimage.zoom(low, (1, size / n, size / n), order=1)
        np.testing.assert_array_equal(texture._upsample(low, size), want)
