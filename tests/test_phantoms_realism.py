"""Realism statistics (known answers, and real radiographs against phantoms) and the v2
phantoms: same patients and findings as v1, deterministic, with a contrast dial (issue 21)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cxr_jax.data import phantoms
from cxr_jax.data.images import load_image, preprocess
from cxr_jax.data.phantoms.realism import histogram_distance, summary
from cxr_jax.data.phantoms import realism

REAL = os.environ.get("CXR_JAX_REAL_DATA")
LUNG = [phantoms.FINDINGS.index(k) for k in ("nodule", "mass", "consolidation", "effusion")]


def test_realism_known_answers():
    n = 128
    ramp = np.tile(np.linspace(0.0, 1.0, n), (n, 1))[None]
    assert realism(ramp)["gradient_ratio"][0] == pytest.approx(1.0, abs=1e-6)  # one slope
    white = np.random.default_rng(0).standard_normal((4, n, n))
    s = realism(white)
    assert abs(s["spectral_slope"].mean()) < 0.15                      # flat spectrum
    f = np.fft.fftfreq(n) * n
    r = np.rint(np.hypot(f[:, None], f[None, :]))
    band = ((r > (n // 2) * 7 / 8) & (r <= n // 2)).mean()           # share of frequency bins
    assert s["hf_fraction"].mean() == pytest.approx(band, rel=0.15)
    yy, xx = np.mgrid[:n, :n] / n
    blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02)[None]  # smooth: steep spectrum
    assert realism(blob)["spectral_slope"][0] < -5
    with pytest.raises(ValueError, match="NaN"):
        realism(np.full((1, 32, 32), np.nan))


def test_v2_draws_the_same_patients_and_findings_deterministically():
    v1 = phantoms.generate(6, image_size=96, seed=3, style="v1")
    v2 = phantoms.generate(6, image_size=96, seed=3, style="v2")
    for field in ("labels", "severity", "ctr"):
        np.testing.assert_array_equal(getattr(v1, field), getattr(v2, field))
    same = [phantoms.FINDINGS.index(k) for k in ("effusion", "pneumothorax", "cardiomegaly",
                                                 "foreign_object")]
    np.testing.assert_array_equal(v1.masks[:, same], v2.masks[:, same])
    for k in ("nodule", "mass"):   # spicules only push the margin outwards
        j = phantoms.FINDINGS.index(k)
        assert not (v1.masks[:, j] & ~v2.masks[:, j]).any()
    anatomy = [phantoms.CONCEPTS.index(c) for c in phantoms.CONCEPTS[:9] if c != "ribs"]
    np.testing.assert_array_equal(v1.concepts[:, anatomy], v2.concepts[:, anatomy])
    # v2's ribs are v1's posterior arches plus anterior ribs over the outer lung (their
    # cartilage near the midline does not show).
    r1, r2 = (b.concepts[:, phantoms.CONCEPTS.index("ribs")] for b in (v1, v2))
    assert not (r1 & ~r2).any() and r2.sum() > 1.2 * r1.sum()
    half_width = np.abs(np.arange(96) - 47.5) / 48.0
    assert half_width[np.nonzero(r2 & ~r1)[2]].min() > 0.15
    assert not np.allclose(v1.images, v2.images)
    tail = phantoms.generate(3, image_size=96, seed=3, style="v2", start=3, num_threads=1)
    np.testing.assert_array_equal(tail.images, v2.images[3:])           # (seed, index) only
    assert v2.images.min() >= -1024 and v2.images.max() <= 1024
    with pytest.raises(ValueError, match="style must be one of"):
        phantoms.generate(1, style="v3")


def test_contrast_dial_scales_what_the_findings_change():
    kw = dict(image_size=96, seed=8, style="v2", intensity="unit",
              prevalence={k: 0.9 for k in phantoms.FINDINGS})
    full, half, none = (phantoms.generate(8, contrast=c, **kw) for c in (1.0, 0.5, 0.0))
    np.testing.assert_array_equal(full.labels, none.labels)             # labels stay
    inside = full.masks[:, LUNG].any(axis=1)
    outside = ~full.masks.any(axis=1)
    change = lambda a: np.abs(a.images[..., 0] - none.images[..., 0])   # noqa: E731
    assert change(full)[inside].mean() > 0.03
    assert change(half)[inside].mean() / change(full)[inside].mean() == pytest.approx(0.5,
                                                                                  abs=0.12)
    assert change(full)[outside].mean() < 0.1 * change(full)[inside].mean()


@pytest.mark.skipif(not REAL, reason="set CXR_JAX_REAL_DATA to the real-data folder")
def test_v2_statistics_near_real_radiographs():
    files = ["nih/images/00000001_000.png", "nih/images/00027426_000.png",
             "covid/covid-19-pneumonia-58-prior.jpg", "dicom/siim_sample.dcm"]
    real = realism(np.stack([preprocess(load_image(os.path.join(REAL, f)), size=224,
                                        intensity="unit")[0][..., 0] for f in files]))
    stats = {s: realism(phantoms.generate(24, image_size=224, seed=1, style=s).images)
             for s in ("v1", "v2")}
    r, v1, v2 = summary(real), summary(stats["v1"]), summary(stats["v2"])
    for k in r:  # v2 is nearer the real radiographs than v1 on every statistic
        assert abs(np.log(abs(v2[k][0] / r[k][0]))) < abs(np.log(abs(v1[k][0] / r[k][0]))), k
    assert abs(v2["spectral_slope"][0] - r["spectral_slope"][0]) < 0.25
    assert 0.5 < v2["hf_fraction"][0] / r["hf_fraction"][0] < 2.0
    assert abs(v2["gradient_ratio"][0] / r["gradient_ratio"][0] - 1) < 0.25
    assert histogram_distance(real, stats["v2"]) < 0.5


def test_side_by_side_figure_has_a_panel_per_column_and_image(tmp_path):
    from PIL import Image

    from cxr_jax.report.figures import save_columns

    b = phantoms.generate(2, image_size=48, seed=0, style="v2", intensity="unit")
    grey = b.images[..., 0]
    path = save_columns({"v1": grey, "v2": grey, "masks": grey},
                        str(tmp_path / "f.png"), contours={"masks": b.masks},
                        notes={"masks": ["a", "b"]})
    w, h = Image.open(path).size
    assert w / h == pytest.approx(3 / 2, rel=0.1)  # 3 columns x 2 rows of square panels


def test_tubes_change_exactly_their_masks_and_are_not_findings():
    from cxr_jax.data.phantoms import tubes
    from cxr_jax.data.phantoms.anatomy import draw_patient
    from cxr_jax.data.phantoms.geometry import draw_frame
    from cxr_jax.data.phantoms._fields import _Draws
    d = _Draws(5, np.arange(64))
    fr = draw_frame(d, 64)
    pt = draw_patient(d, np.full(len(phantoms.FINDINGS), 0.4))
    img = np.zeros((64, 64, 64), np.float32)
    masks = tubes.draw(_Draws(9, np.arange(64)), fr, pt, img)
    union = np.any(masks, axis=0)
    assert (img[union] > 0).all() and (img[~union] == 0).all()
    rates = [m.any(axis=(1, 2)).mean() for m in masks]
    assert all(0.02 < r < 0.4 for r in rates), rates           # TUBE_RATE 0.15 each
    batch = phantoms.generate(64, image_size=64, seed=5, style="v2")
    tube_ids = [phantoms.CONCEPTS.index(n) for n in tubes.NAMES]
    present = batch.concepts[:, tube_ids].any(axis=(2, 3))
    assert present.any()
    # a tube is neither a label nor a finding mask, and v1 draws none
    assert not phantoms.generate(16, image_size=64, seed=5, style="v1").concepts[:, tube_ids].any()
    et = batch.concepts[:, phantoms.CONCEPTS.index("et_tube")]
    lungs = batch.concepts[:, :2].any(axis=1)
    assert (et & lungs).sum() < 0.05 * max(et.sum(), 1)       # the ET tube runs in the trachea


def test_v2_borders_blur_per_image_and_soften_at_the_cardiophrenic_angle(monkeypatch):
    from cxr_jax.data.phantoms import anatomy
    from cxr_jax.data.phantoms._fields import _Draws
    from cxr_jax.data.phantoms.geometry import dome, draw_frame

    def render(blur):
        d = _Draws(5, np.arange(4))
        fr = draw_frame(d, 160)
        pt = anatomy.draw_patient(d, np.full(len(phantoms.FINDINGS), 0.0))
        return fr, pt, anatomy.render(d, fr, pt, "v2", np.full(4, blur))

    def partial(layer):                      # pixels inside an edge's anti-aliasing ramp
        return (layer > 0.02) & (layer < 0.98)

    fr, pt, soft = render(1.0)
    _, _, blurred = render(2.0)
    # twice the blur: about twice as many lung-edge pixels on their ramp, the masks unchanged
    ratio = partial(blurred.lung).sum() / partial(soft.lung).sum()
    assert 1.6 < ratio < 2.4
    np.testing.assert_array_equal(blurred.heart_bin, soft.heart_bin)
    np.testing.assert_array_equal(blurred.lung_any, soft.lung_any)
    # Without the cardiophrenic softening the lungs change only within CARDIOPHRENIC (plus an
    # edge width) above the dome, next to the heart, and there the ramp was wider.
    monkeypatch.setattr(anatomy, "CARDIOPHRENIC_SOFT", 1.0)
    _, _, plain = render(1.0)
    changed = np.abs(plain.lung - soft.lung) > 1e-6
    assert changed.sum() > 20
    dome_y = np.where(fr.X < 0, dome(fr.px[-1], pt.lungs[-1]), dome(fr.px[+1], pt.lungs[+1]))
    assert np.all((dome_y - fr.Y)[changed] < anatomy.CARDIOPHRENIC + 2 * fr.edge)
    near_heart = np.zeros_like(soft.heart_bin)
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            near_heart |= np.roll(soft.heart_bin, (dy, dx), axis=(1, 2))
    assert near_heart[changed].all()
    assert partial(soft.lung).sum() > partial(plain.lung).sum()


def test_spicules_point_where_drawn_and_reach_their_own_lengths():
    from cxr_jax.data.phantoms import blend

    K = blend.SPICULES[1] - 1
    m = 6
    jitter = np.linspace(0.1, 0.9, K)[None]
    length = np.linspace(0.0, 1.0, K)[None]
    v = blend.Draws(spiculated=np.array([True]), spicules=np.array([m]),
                    reach=np.array([0.5]), phase=np.array([0.3]), lobar=np.array([False]),
                    haze=np.zeros((1, 16, 16), np.float32), jitter=jitter, length=length)
    k = np.arange(m)
    angles = 0.3 + 2 * np.pi * (k + blend.SPICULE_JITTER * (jitter[0, :m] - 0.5)) / m
    r = np.linspace(0.2, 1.6, 200)
    # one ray per spicule plus rays half-way between neighbours; qq = r^2 along each ray
    rays = np.concatenate([angles, angles + np.pi / m])
    ddx = (r[None, :] * np.cos(rays)[:, None])[None].astype(np.float32)
    ddy = (r[None, :] * np.sin(rays)[:, None])[None].astype(np.float32)
    qq = blend.spiculate(v, np.array([0]), ddx, ddy, (ddx ** 2 + ddy ** 2).copy())
    grow = np.sqrt((ddx ** 2 + ddy ** 2) / qq)[0]            # radial growth where computed
    reach = 0.5 * (0.35 + 0.65 * length[0, :m])
    # on its own ray each spicule pushes the margin out by at least its reach
    np.testing.assert_allclose(grow[:m, 0], 1 + reach, rtol=0.02, atol=0.02)
    assert np.all(grow[:m, 0] >= 1 + reach - 1e-4)
    # between spicules the margin barely moves; lengths differ from spicule to spicule
    assert np.all(grow[m:, 0] < 1 + 0.3 * reach.max())
    assert np.ptp(grow[:m, 0]) > 0.2
