"""Post-processing: bilinear upsampling convention, guarded normalisations, overlays."""

import matplotlib
import numpy as np
import pytest

from cxr_jax.attribution import postprocess as pp


def _bilinear_reference(a, out_h, out_w):
    """Half-pixel-centre bilinear resize with clamped edges, written out per output pixel."""
    h, w = a.shape

    def coords(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = coords(out_h, h)
    c0, c1, fc = coords(out_w, w)
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top = a[r0[i], c0[j]] * (1 - fc[j]) + a[r0[i], c1[j]] * fc[j]
            bottom = a[r1[i], c0[j]] * (1 - fc[j]) + a[r1[i], c1[j]] * fc[j]
            out[i, j] = top * (1 - fr[i]) + bottom * fr[i]
    return out


def test_upsample_known_values():
    out = np.asarray(pp.upsample(np.array([[0.0, 1.0]]), (1, 4)))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    out = np.asarray(pp.upsample(np.array([[0.0, 1.0], [2.0, 3.0]]), (4, 4)))
    np.testing.assert_allclose(out[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5, 2.0], atol=1e-6)


def test_upsample_matches_reference_and_keeps_leading_axes():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    out = np.asarray(pp.upsample(maps, (32, 20)))
    assert out.shape == (2, 3, 32, 20)
    for b in range(2):
        for k in range(3):
            np.testing.assert_allclose(out[b, k], _bilinear_reference(maps[b, k], 32, 20),
                                       rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pp.upsample(maps, (7, 5)), maps)
    with pytest.raises(ValueError):
        pp.upsample(np.zeros(4), (8, 8))
    with pytest.raises(ValueError):
        pp.upsample(np.zeros((4, 4)), (8,))


def test_minmax_values_and_guards():
    maps = np.array([[[1.0, 3.0], [5.0, 9.0]],
                     [[2.0, 2.0], [2.0, 2.0]],        # constant
                     [[0.0, 0.0], [0.0, 0.0]],        # all zero
                     [[0.3, 0.3 + 1e-8], [0.3, 0.3]]], np.float32)  # constant up to rounding
    out = np.asarray(pp.normalize_minmax(maps))
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(out[1:], 0.0)
    assert np.all(np.isfinite(out))
    tiny = np.array([[0.0, 1e-20], [2e-20, 4e-20]], np.float32)  # tiny but real contrast
    np.testing.assert_allclose(pp.normalize_minmax(tiny), [[0, 0.25], [0.5, 1.0]], rtol=1e-5)
    # leading axes are independent maps
    stacked = np.stack([maps[0] * 10.0, maps[0]])[None]
    np.testing.assert_allclose(pp.normalize_minmax(stacked)[0, 0], out[0], atol=1e-6)


def test_percentile_normalisation():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 10, 10)).astype(np.float32)
    out = np.asarray(pp.normalize_percentile(maps, low=5, high=90))
    for b in range(3):
        lo, hi = np.percentile(maps[b], [5, 90])
        np.testing.assert_allclose(out[b], np.clip((maps[b] - lo) / (hi - lo), 0, 1),
                                   rtol=1e-4, atol=1e-5)
    absolute = np.asarray(pp.normalize_percentile(maps, low=0, high=99, absolute=True))
    lo, hi = np.percentile(np.abs(maps[0]), [0, 99])
    np.testing.assert_allclose(absolute[0], np.clip((np.abs(maps[0]) - lo) / (hi - lo), 0, 1),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(pp.normalize_percentile(np.full((4, 4), 7.0)), 0.0)
    np.testing.assert_allclose(pp.normalize(maps, "percentile", low=5, high=90), out)
    np.testing.assert_allclose(pp.normalize(maps), pp.normalize_minmax(maps))
    with pytest.raises(ValueError, match="low < high"):
        pp.normalize_percentile(maps, low=50, high=10)
    with pytest.raises(ValueError, match="Unknown normalisation"):
        pp.normalize(maps, "zscore")


def test_overlay_blend_and_types():
    img = np.linspace(0, 255, 16 * 16).reshape(16, 16)
    sal = np.zeros((16, 16))
    sal[4:8, 4:8] = 3.0
    heat = matplotlib.colormaps["jet"](np.where(sal > 0, 1.0, 0.0))[..., :3]
    grey = (img - img.min()) / (img.max() - img.min())
    out = pp.overlay(img, sal, alpha=0.4)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.6 * grey[..., None] + 0.4 * heat, atol=1e-5)
    np.testing.assert_allclose(pp.overlay(img[..., None], sal, alpha=0.0),
                               np.repeat(grey[..., None], 3, -1), atol=1e-6)
    u8 = pp.overlay(img, sal, dtype=np.uint8)
    assert u8.dtype == np.uint8 and u8.shape == (16, 16, 3)
    np.testing.assert_array_equal(u8, np.round(pp.overlay(img, sal) * 255).astype(np.uint8))
    rgb = np.stack([img, img * 0, img * 0], -1)  # a red ramp keeps its colour
    red = pp.overlay(rgb, sal, alpha=0.0)
    np.testing.assert_allclose(red[..., 1:], 0.0)
    batch = pp.overlay(np.stack([img, img]), np.stack([sal, sal]))
    assert batch.shape == (2, 16, 16, 3)


def test_overlay_constant_inputs_and_errors():
    out = pp.overlay(np.full((8, 8), 5.0), np.full((8, 8), 2.0))
    assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="does not match"):
        pp.overlay(np.zeros((8, 8)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        pp.overlay(np.zeros((8, 8)), np.zeros((8, 8)), alpha=1.5)
