"""Tests for cxr_jax.data.photo: CheXphoto-style transforms."""

import numpy as np
import pytest

from cxr_jax.data import photo
from cxr_jax.data.photo import TRANSFORMS, apply

N = 64


@pytest.fixture(scope="module")
def image():
    """A smooth radiograph-like test image with fine detail, in [0, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:N, 0:N] / N
    x = 0.5 + 0.25 * np.sin(6 * xx) * np.cos(4 * yy) + 0.1 * rng.standard_normal((N, N))
    return np.clip(x, 0.05, 0.95).astype(np.float32)


def _hf_energy(x):
    """Mean squared discrete Laplacian: high-frequency energy."""
    x = np.asarray(x, np.float64).squeeze()
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float((lap ** 2).mean())


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_deterministic_shape_and_range(name, image):
    a = apply(name, image, 3, 7)
    b = apply(name, image, 3, 7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == image.shape and a.image.dtype == np.float32
    assert a.image.min() >= 0 and a.image.max() <= 1
    assert not np.array_equal(a.image, image), "level 3 must change the image"
    c = apply(name, image[..., None], 3, 7)
    assert c.image.shape == (N, N, 1)
    np.testing.assert_array_equal(c.image[..., 0], a.image)
    if name != "blur":                                    # blur has no randomness
        others = [apply(name, image, 3, s).image for s in range(8, 12)]
        assert any(not np.array_equal(o, a.image) for o in others)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("level", [0, 5, 2.0, True, -1])
def test_bad_level_raises(name, level, image):
    with pytest.raises(ValueError, match="level"):
        apply(name, image, level, 0)
    with pytest.raises(ValueError, match="level"):
        TRANSFORMS[name](image, level, np.random.default_rng(0))


def test_bad_inputs_raise(image):
    with pytest.raises(ValueError, match=r"\(x \+ 1024\) / 2048"):
        apply("blur", image * 2048 - 1024, 1, 0)
    with pytest.raises(ValueError, match="shape"):
        apply("blur", np.zeros((4, 4, 3)), 1, 0)
    with pytest.raises(ValueError, match="NaN"):
        apply("blur", np.full((4, 4), np.nan), 1, 0)
    with pytest.raises(ValueError, match="Unknown photo transform"):
        apply("sepia", image, 1, 0)
    with pytest.raises(ValueError, match="masks"):
        apply("rotation", image, 1, 0, masks=np.zeros((N, N + 1), bool))
    with pytest.raises(ValueError, match="boxes"):
        apply("rotation", image, 1, 0, boxes=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="key_or_seed"):
        apply("blur", image, 1, "seed")


def test_brightness_and_contrast_move_the_right_way_monotonically(image):
    mean = lambda name, lv: apply(name, image, lv, 0).image.mean()   # noqa: E731
    std = lambda name, lv: apply(name, image, lv, 0).image.std()     # noqa: E731
    up = [mean("brightness_up", lv) for lv in (1, 2, 3, 4)]
    down = [mean("brightness_down", lv) for lv in (1, 2, 3, 4)]
    assert image.mean() < up[0] < up[1] < up[2] < up[3]
    assert image.mean() > down[0] > down[1] > down[2] > down[3]
    cu = [std("contrast_up", lv) for lv in (1, 2, 3, 4)]
    cd = [std("contrast_down", lv) for lv in (1, 2, 3, 4)]
    assert image.std() < cu[0] < cu[1] < cu[2] < cu[3]
    assert image.std() > cd[0] > cd[1] > cd[2] > cd[3]
    # brightness is a multiplication (the release's factor 1 + 0.2 * 0.5 +- 0.01 at level 1)
    keep = image < 0.85                                             # not clipped at 1
    ratio = apply("brightness_up", image, 1, 0).image[keep] / image[keep]
    assert np.ptp(ratio) < 1e-5 and 1.09 <= ratio.mean() <= 1.11


def test_blurs_remove_more_high_frequency_energy_at_higher_levels(image):
    big = np.kron(image, np.ones((5, 5), np.float32))               # 320 px: reference scale
    for name in ("blur", "motion_blur"):
        e = [_hf_energy(apply(name, big, lv, 0).image) for lv in (1, 2, 3, 4)]
        assert _hf_energy(big) > e[0] > e[1] > e[2] > e[3], (name, e)


def test_glare_brightens_and_more_at_higher_levels(image):
    gain = [apply("glare_matte", image, lv, 3).image.mean() - image.mean() for lv in (1, 2, 3, 4)]
    assert 0 < gain[0] < gain[1] < gain[2] < gain[3]
    out = apply("glare_glossy", image, 2, 3).image
    changed = out > image + 1e-6
    frac = changed.mean()
    assert (0.2 - 0.02) ** 2 <= frac <= (0.25 + 0.02) ** 2       # (0.1 level + U(0, 0.05))^2
    rows, cols = np.nonzero(changed)                                # one rectangle
    assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_moire_darkens_flat_image_with_line_pattern():
    flat = np.full((N, N), 0.6, np.float32)
    m1 = apply("moire", flat, 1, 0).image
    m4 = apply("moire", flat, 4, 0).image
    assert 0.6 > m1.mean() > m4.mean()
    assert m4.std() > 1e-3                                          # not a uniform darkening
    # lines run nearly horizontally: variation mostly along the columns (down the image)
    m2 = apply("moire", flat, 2, 0).image
    assert np.abs(np.diff(m2, axis=0)).mean() > 3 * np.abs(np.diff(m2, axis=1)).mean()


def test_exposure_is_monotone_and_steeper_with_level():
    ramp = np.tile(np.linspace(0, 1, N, dtype=np.float32), (N, 1))
    e1 = apply("exposure", ramp, 1, 0).image[0]
    e4 = apply("exposure", ramp, 4, 0).image[0]
    assert np.all(np.diff(e1) > 0) and np.all(np.diff(e4) > 0)
    assert np.ptp(e4) > np.ptp(e1)


def test_jpeg_reencodes_keeping_shape(image):
    out = photo.jpeg(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.array_equal(out, image)
    assert np.abs(out - image).mean() < 0.06
    assert photo.jpeg(image[..., None], quality=90).shape == (N, N, 1)
    err = [np.abs(photo.jpeg(image, q) - image).mean() for q in (95, 10)]
    assert err[0] < err[1]
    with pytest.raises(ValueError, match="quality"):
        photo.jpeg(image, quality=0)


def test_translate_moves_pixel_mask_and_box_exactly():
    img = np.zeros((N, N), np.float32)
    img[10, 20] = 1.0
    mask = np.zeros((N, N), bool)
    mask[10, 20] = True
    out = photo.translate(img, 3, -2, masks=mask, boxes=[[20, 10, 21, 11]])
    assert out.image[8, 23] == 1.0 and out.image.sum() == 1.0
    assert np.argwhere(out.masks).tolist() == [[8, 23]] and out.masks.dtype == bool
    np.testing.assert_array_equal(out.boxes, [[23, 8, 24, 9]])


def test_translation_level_shift_follows_image():
    img = np.zeros((N, N), np.float32)
    img[30, 33] = 1.0
    masks = np.zeros((2, N, N), np.uint8)
    masks[0, 30, 33] = 1
    masks[1, 5, 5] = 1
    for seed in range(4):
        out = apply("translation", img, 2, seed, masks=masks, boxes=[[33, 30, 34, 31]])
        (r, c), = np.argwhere(out.image == 1.0)
        assert abs(r - 30) == 8 and abs(c - 33) == 8          # round(2 * 64 / 16)
        assert np.argwhere(out.masks[0]).tolist() == [[r, c]]
        np.testing.assert_array_equal(out.boxes, [[c, r, c + 1, r + 1]])
        assert out.masks.shape == (2, N, N) and out.masks.dtype == np.uint8


def test_rotate_by_90_degrees_is_exact():
    img = np.zeros((N, N), np.float32)
    img[5, 40] = 1.0
    mask = img > 0
    out = photo.rotate(img, 90.0, masks=mask, boxes=[[40, 5, 41, 6]])
    # counter-clockwise on screen: (row r, col c) -> (N - 1 - c, r)
    assert np.argwhere(out.masks).tolist() == [[N - 1 - 40, 5]]
    assert out.image[N - 1 - 40, 5] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out.boxes, [[5, N - 41, 6, N - 40]], atol=1e-4)


@pytest.mark.parametrize("name", ["rotation", "tilt", "photographic"])
def test_geometric_transforms_move_masks_and_boxes_with_the_image(name):
    img = np.zeros((N, N), np.float32)
    img[20:32, 36:46] = 1.0
    mask = img > 0.5
    box = np.array([[36, 20, 46, 32]], np.float32)
    for seed in range(3):
        out = apply(name, img, 3, seed, masks=mask, boxes=box)
        bright = out.image > 0.5
        if name != "photographic":    # glare and moire change intensities, not geometry
            inter = (bright & out.masks).sum()
            assert inter / (bright | out.masks).sum() > 0.8
        assert not np.array_equal(out.masks, mask)             # it moved
        rows, cols = np.nonzero(out.masks)
        x0, y0, x1, y1 = out.boxes[0]
        assert cols.min() + 0.5 >= x0 - 1 and cols.max() + 0.5 <= x1 + 1
        assert rows.min() + 0.5 >= y0 - 1 and rows.max() + 0.5 <= y1 + 1
        assert 0 <= x0 < x1 <= N and 0 <= y0 < y1 <= N


def test_tilt_corner_jitter_bounded_by_level():
    img = np.zeros((N, N), np.float32)
    centre = np.zeros((N, N), bool)
    centre[N // 2, N // 2] = True
    for level in (1, 4):
        shifts = []
        for seed in range(5):
            out = apply("tilt", img, level, seed, masks=centre)
            # tilt magnifies (the source quad lies inside the image): the pixel may grow
            assert 1 <= out.masks.sum() <= 4
            r, c = np.argwhere(out.masks).mean(axis=0)
            shifts.append(max(abs(r - N // 2), abs(c - N // 2)))
        # the centre moves by at most the corner jitter, 5% x level of the size
        assert max(shifts) <= 0.05 * level * N + 1
    out = apply("tilt", img, 4, 0, boxes=[[0, 0, N, N]])
    np.testing.assert_allclose(out.boxes, [[0, 0, N, N]])   # clipped to the image


def test_digital_leaves_geometry_and_changes_intensity(image):
    mask = np.zeros((N, N), bool)
    mask[3:9, 4:7] = True
    out = apply("digital", image, 2, 1, masks=mask, boxes=[[4, 3, 7, 9]])
    np.testing.assert_array_equal(out.masks, mask)
    np.testing.assert_array_equal(out.boxes, [[4, 3, 7, 9]])
    assert not np.allclose(out.image, image)


def test_seed_kinds_generator_and_jax_key(image):
    import jax

    g1 = apply("moire", image, 2, np.random.default_rng(5)).image
    g2 = apply("moire", image, 2, 5).image
    np.testing.assert_array_equal(g1, g2)
    k = jax.random.key(3)
    a = apply("tilt", image, 2, k).image
    np.testing.assert_array_equal(a, apply("tilt", image, 2, jax.random.key(3)).image)
    assert not np.array_equal(a, apply("tilt", image, 2, jax.random.key(4)).image)
    np.testing.assert_array_equal(apply("tilt", image, 2, jax.random.PRNGKey(3)).image,
                                  apply("tilt", image, 2, jax.random.PRNGKey(3)).image)


def test_homography_maps_the_four_points():
    src = np.array([[1, 2], [60, 3], [58, 61], [2, 59]], float)
    dst = np.array([[0, 0], [64, 0], [64, 64], [0, 64]], float)
    h = photo.homography(src, dst)
    p = np.c_[src, np.ones(4)] @ h.T
    np.testing.assert_allclose(p[:, :2] / p[:, 2:], dst, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        photo.homography(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], float), dst)
