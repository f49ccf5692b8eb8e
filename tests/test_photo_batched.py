"""Tests for cxr_jax.data.photo.batched: the batched, jit-compiled photo transforms.

The reference is the numpy per-image code in cxr_jax.data.photo: a stub Generator hands the numpy
functions exactly the parameter values the batched version drew, so both must produce the same
pixels. Images are small (32 x 32, a few per batch) to keep compile and run times short.
"""

import numpy as np
import pytest
from scipy import ndimage

import jax
import jax.numpy as jnp

from cxr_jax.data import photo
from cxr_jax.data.photo import appearance, batched, geometry, recipes
from cxr_jax.data.photo.batched import (NAMES, apply_batch, draw, homographies, jpeg_batch,
                                        photo_batch, unwarp, warp_masks)

N = 32
B = 3


def _images(n=B, size=N, seed=0):
    """Smooth radiograph-like images with some texture, in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = [0.5 + 0.3 * np.sin((5 + k) * xx + k) * np.cos(4 * yy - k)
           + 0.05 * rng.standard_normal((size, size)) for k in range(n)]
    return np.clip(np.stack(out), 0.05, 0.95).astype(np.float32)


class _Stub:
    """Stands in for a numpy Generator: every draw returns the next queued value."""

    def __init__(self, values):
        self.values = [float(v) for v in values]

    def _next(self, *args, **kwargs):
        return self.values.pop(0)

    uniform = integers = normal = _next


def _stub_values(name, p, H, W):
    """Values, in the numpy function's draw order, that reproduce the batched params p."""
    if name in ("brightness_up", "brightness_down", "contrast_up", "contrast_down"):
        return [p["jitter"]]
    if name == "exposure":
        return [p["cutoff"]]
    if name == "motion_blur":
        return [p["angle"]]
    if name == "glare_matte":
        return [p["cx"] * W, p["cy"] * H]
    if name == "glare_glossy":
        return [p[k] for k in ("w_jitter", "h_jitter", "place", "alpha_jitter", "cx", "cy")]
    if name == "moire":        # the angle tuple is built before the loop draws the offsets
        return [p["angle"], p["offsets"][0], p["offsets"][1]]
    if name == "rotation":
        return [p["sign"] > 0]
    if name == "translation":
        return [p["sx"] > 0, p["sy"] > 0]
    if name == "digital":
        return [p["contrast_up"], p["brightness_up"], p["contrast_jitter"],
                p["brightness_jitter"]]
    raise KeyError(name)


def _per_image(params, b):
    return {k: np.asarray(v)[b] for k, v in params.items()}


def _numpy_tilt_matrix(corners, H, W):
    dst = np.array([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]])
    return geometry.homography(np.asarray(corners, np.float64) * [W, H], dst)


def _interior(matrix, H, W):
    """Where the numpy bilinear warp samples inside the input, eroded by 1 px."""
    inside = geometry.warp(np.ones((H, W), np.float32), matrix, order=1).image > 0.999
    return ndimage.binary_erosion(inside)


# ----------------------------------------------------------------------------- registry, draws

def test_names_and_draws_follow_the_registry_and_ranges():
    assert NAMES == tuple(photo.TRANSFORMS) + ("jpeg",) and len(NAMES) == 16
    key = jax.random.PRNGKey(1)
    corners = np.asarray(draw("tilt", 1, key, 64)["corners"])    # level 3: see the tilt test
    base = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    assert corners.shape == (64, 4, 2)
    assert np.all(np.abs(corners - base) <= 0.05 + 1e-7)
    assert np.abs(corners - base).max() > 0.8 * 0.05             # spans the range
    p = draw("glare_glossy", 2, key, 200)
    assert set(np.asarray(p["place"]).tolist()) == set(range(9))
    for k, lo, hi in (("cx", 0.3, 0.7), ("w_jitter", 0, 0.05), ("alpha_jitter", 0, 20)):
        v = np.asarray(p[k])
        assert v.min() >= lo and v.max() <= hi and np.ptp(v) > 0.8 * (hi - lo), k
    jitter = np.asarray(draw("brightness_up", 3, key, 100)["jitter"])
    assert np.all(np.abs(jitter) <= 0.01) and jitter.std() > 0.004
    assert draw("blur", 1, key, 4) == {}
    # one key, one draw; n images get different parameters
    cutoff = np.asarray(draw("exposure", 2, key, 5)["cutoff"])
    np.testing.assert_array_equal(cutoff, draw("exposure", 2, key, 5)["cutoff"])
    assert len(set(cutoff.tolist())) == 5 and cutoff.min() >= 0.4 and cutoff.max() <= 0.6


# ----------------------------------------------------------------------------- numpy parity

@pytest.mark.parametrize("name,level", [
    ("brightness_up", 1), ("brightness_up", 4), ("brightness_down", 1), ("brightness_down", 3),
    ("contrast_up", 1), ("contrast_up", 4), ("contrast_down", 2), ("exposure", 2),
    ("glare_matte", 2), ("motion_blur", 2), ("moire", 3), ("digital", 2)])
def test_appearance_matches_numpy_with_the_same_parameters(name, level):
    x = _images()
    params = draw(name, level, jax.random.PRNGKey(3), B)
    if name == "digital":                    # both branches of each choice
        params = dict(params, contrast_up=jnp.array([True, False, True]),
                      brightness_up=jnp.array([False, True, True]))
    out = np.asarray(apply_batch(name, x, level, params))
    assert out.shape == x.shape and out.dtype == np.float32
    assert not np.allclose(out, x, atol=1e-3)
    for b in range(B):
        stub = _Stub(_stub_values(name, _per_image(params, b), N, N))
        want = photo.TRANSFORMS[name](x[b], level, stub).image
        assert not stub.values                                    # every value was used
        np.testing.assert_allclose(out[b], want, atol=1e-5, err_msg=f"{name} image {b}")


def test_glare_glossy_matches_numpy_at_all_nine_places():
    x = _images(9)
    params = {k: v[:9] for k, v in draw("glare_glossy", 2, jax.random.PRNGKey(4), 200).items()}
    params["place"] = jnp.arange(9, dtype=jnp.int32)
    out = np.asarray(apply_batch("glare_glossy", x, 2, params))
    for b in range(9):
        stub = _Stub(_stub_values("glare_glossy", _per_image(params, b), N, N))
        want = appearance.glare_glossy(x[b], 2, stub).image
        np.testing.assert_allclose(out[b], want, atol=1e-5, err_msg=f"place {b}")
        assert (out[b] > x[b] + 1e-6).sum() >= int(0.2 * N) ** 2   # a rectangle was drawn


@pytest.mark.parametrize("name,level", [("rotation", 2), ("translation", 2)])
def test_rotation_and_translation_match_numpy_bilinear(name, level):
    x = _images()
    params = draw(name, level, jax.random.PRNGKey(5), B)
    out = np.asarray(apply_batch(name, x, level, params))
    mats = np.asarray(homographies(name, level, params, N, N), np.float64)
    for b in range(B):
        stub = _Stub(_stub_values(name, _per_image(params, b), N, N))
        want = photo.TRANSFORMS[name](x[b], level, stub).image     # numpy: bilinear too
        # integer shifts are exact everywhere; rotations are compared off the border, where
        # float32 and float64 may disagree about a sample lying just on or off the grid
        keep = np.ones((N, N), bool) if name == "translation" else _interior(mats[b], N, N)
        assert keep.mean() > 0.7
        np.testing.assert_allclose(out[b][keep], want[keep], atol=1e-5)


def test_tilt_and_photographic_match_numpy_bilinear_away_from_the_border():
    x = _images()
    for name in ("tilt", "photographic"):
        params = draw(name, 3, jax.random.PRNGKey(6), B)
        out = np.asarray(apply_batch(name, x, 3, params))
        for b in range(B):
            p = _per_image(params, b)
            m = _numpy_tilt_matrix(p["corners"], N, N)
            y = x[b]
            if name == "photographic":       # glare_matte, moire, then the tilt (bilinear here)
                y = appearance.glare_matte(y, 3, _Stub([p["glare_cx"] * N, p["glare_cy"] * N]))
                y = appearance.moire(y.image, 3, _Stub([p["moire_angle"], *p["moire_offsets"]]))
                y = y.image
            want = geometry.warp(y, m, order=1).image
            keep = _interior(m, N, N)
            assert keep.mean() > 0.8
            np.testing.assert_allclose(out[b][keep], want[keep], atol=1e-5)
    # photo_batch's matrices are the numpy homographies of its own parameters (the source
    # corners are the preimages of the output corners), each corner moved inwards <= 0.05 level
    _, mats = photo_batch("tilt", x, 3, 6, np.arange(B))
    corners = np.array([[0, 0, 1], [N, 0, 1], [N, N, 1], [0, N, 1]], np.float64)
    for m in np.asarray(mats, np.float64):
        src = corners @ np.linalg.inv(m).T
        src = src[:, :2] / src[:, 2:]
        inward = (src - corners[:, :2]) * [[1, 1], [-1, 1], [-1, -1], [1, -1]] / N
        assert np.all((inward >= -1e-4) & (inward <= 0.05 * 3 + 1e-4))
        np.testing.assert_allclose(m, _numpy_tilt_matrix(src / N, N, N), atol=1e-4)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_blur_matches_scipy_gaussian_filter(level):
    x = _images(2, 64)
    out = np.asarray(apply_batch("blur", x, level, {}))
    sigma = (1.5, 3.0, 6.0, 10.0)[level - 1] * 64 / 320
    for b in range(2):
        want = ndimage.gaussian_filter(x[b], sigma, mode="nearest")
        np.testing.assert_allclose(out[b], want, atol=1e-5)     # edges too (nearest mode)
    assert np.abs(np.diff(out, axis=-1)).mean() < np.abs(np.diff(x, axis=-1)).mean()


# ----------------------------------------------------------------------------- JPEG

def _dct_ratios(block, quality):
    """Exact DCT coefficients of an 8 x 8 block of grey levels over the quantisation table."""
    d = batched._dct_matrix().astype(np.float64)
    return d @ block @ d.T / batched._quant_table(quality)


def test_jpeg_batch_matches_pillow_and_degrades_with_quality():
    yy, xx = np.mgrid[0:64, 0:64] / 64
    smooth = (0.5 + 0.3 * np.sin(5 * xx) * np.cos(4 * yy)).astype(np.float32)
    noisy = np.clip(smooth + 0.05 * np.random.default_rng(1).standard_normal((64, 64)), 0, 1)
    noisy = noisy.astype(np.float32)
    got = np.asarray(jpeg_batch(np.stack([smooth, noisy]), 75))
    # smooth: within Pillow's integer-DCT rounding everywhere
    diff = np.abs(got[0] - recipes.jpeg(smooth, 75)) * 255
    assert diff.mean() < 1 and diff.max() < 4, (diff.mean(), diff.max())
    # noisy: close on average; every larger difference is one quantised coefficient that lies
    # on a rounding tie (x.5 within 2%), which libjpeg's fixed-point DCT rounds the other way
    diff = (got[1] - recipes.jpeg(noisy, 75)) * 255
    assert np.abs(diff).mean() < 1
    level = np.round(noisy * 255) - 128
    for by, bx in {(r // 8, c // 8) for r, c in np.argwhere(np.abs(diff) > 3)}:
        rows, cols = slice(8 * by, 8 * by + 8), slice(8 * bx, 8 * bx + 8)
        steps = _dct_ratios(diff[rows, cols], 75)                # in quantisation steps
        flipped = np.abs(steps) > 0.3
        np.testing.assert_allclose(np.abs(steps[flipped]), 1, atol=0.2)
        exact = np.abs(_dct_ratios(level[rows, cols], 75))[flipped]
        assert np.all(np.abs(exact - np.floor(exact) - 0.5) < 0.02), exact
    # padding by edge replication to a multiple of 8, then cropped back
    odd = smooth[:60, :52]
    out = np.asarray(jpeg_batch(odd[None], 75))[0]
    assert out.shape == odd.shape
    assert np.abs(out - recipes.jpeg(odd, 75)).max() < 4 / 255
    np.testing.assert_allclose(np.round(out * 255), out * 255, atol=1e-3)  # 8-bit levels
    # stronger compression, larger error; "jpeg" in NAMES is quality 75 at any level
    x = np.stack([smooth, noisy])
    err = [float(np.abs(np.asarray(jpeg_batch(x, q)) - x).mean()) for q in (95, 50, 10)]
    assert err[0] < err[1] < err[2], err
    np.testing.assert_array_equal(apply_batch("jpeg", x, 2, {}), got)


# ----------------------------------------------------------------------------- determinism

def test_photo_batch_does_not_depend_on_the_batching():
    x = _images(2 * B)
    for name, level in (("tilt", 3),):
        whole, m_whole = photo_batch(name, x, level, 11, np.arange(2 * B))
        a, m_a = photo_batch(name, x[:B], level, 11, np.arange(B))
        b, m_b = photo_batch(name, x[B:], level, 11, np.arange(B, 2 * B))
        np.testing.assert_allclose(whole, np.concatenate([a, b]), atol=1e-6)
        if name == "tilt":
            np.testing.assert_allclose(m_whole, np.concatenate([m_a, m_b]), atol=1e-6)
        else:
            assert m_whole is None and m_a is None
        # same seed, same photos; another seed or other indices, other photos
        np.testing.assert_array_equal(whole, photo_batch(name, x, level, 11,
                                                         np.arange(2 * B))[0])
        other = np.asarray(photo_batch(name, x, level, 12, np.arange(2 * B))[0])
        assert all(not np.allclose(other[i], whole[i]) for i in range(2 * B))
        shifted = np.asarray(photo_batch(name, x[:B], level, 11, np.arange(1, B + 1))[0])
        assert not np.allclose(shifted[0], whole[0])


# ----------------------------------------------------------------------------- maps and masks

def _smooth_maps(n, size=N):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([0.5 + 0.4 * np.sin(2 * xx + k) * np.cos(3 * yy - k)
                     for k in range(n)]).astype(np.float32)


@pytest.mark.parametrize("name,level,tol", [("translation", 2, 1e-5), ("rotation", 2, 0.05)])
def test_unwarp_takes_a_moved_map_back(name, level, tol):
    maps = _smooth_maps(B)
    params = draw(name, level, jax.random.PRNGKey(5), B)
    moved = apply_batch(name, maps, level, params)              # as the photos are made
    mats = homographies(name, level, params, N, N)
    back, valid = (np.asarray(a) for a in unwarp(moved, mats))
    assert back.shape == maps.shape and valid.dtype == bool
    for b in range(B):
        keep = ndimage.binary_erosion(valid[b])
        assert keep.mean() > 0.5
        np.testing.assert_allclose(back[b][keep], maps[b][keep], atol=tol)
        assert np.all(back[b][~valid[b]] == 0)
    if name == "translation":                     # valid: originals that land in the photo
        s = round(level * N / 16)
        assert np.all(valid.sum(axis=(1, 2)) == (N - s) ** 2)
    # the identity leaves maps alone and everything valid
    same, ok = unwarp(maps, jnp.broadcast_to(jnp.eye(3), (B, 3, 3)))
    np.testing.assert_allclose(same, maps, atol=1e-6)
    assert bool(ok.all())


def test_warp_masks_translation_shifts_a_box_exactly():
    masks = np.zeros((B, 2, N, N), bool)
    masks[:, 0, 10:20, 12:18] = True
    masks[:, 1, 0:4, 0:4] = True                                # may leave the image
    params = draw("translation", 2, jax.random.PRNGKey(5), B)
    mats = homographies("translation", 2, params, N, N)
    moved = np.asarray(warp_masks(masks, mats))
    assert moved.dtype == bool and moved.shape == masks.shape
    s = round(2 * N / 16)
    shifts = np.asarray(mats)[:, :2, 2].astype(int)
    np.testing.assert_array_equal(shifts, s * np.stack([params["sx"], params["sy"]], 1))
    for b, (dx, dy) in enumerate(shifts):
        want = np.zeros((2, N, N), bool)
        want[0, 10 + dy:20 + dy, 12 + dx:18 + dx] = True
        want[1, max(0, dy):max(0, 4 + dy), max(0, dx):max(0, 4 + dx)] = True
        np.testing.assert_array_equal(moved[b], want)
    # the image moves with its mask: the bright box lands where the box mask lands
    photos = apply_batch("translation", masks[:, 0].astype(np.float32), 2, params)
    np.testing.assert_array_equal(np.asarray(photos) > 0.5, moved[:, 0])
    # photo_batch's matrices are homographies of its own draw
    _, m = photo_batch("translation", masks[:, 0].astype(np.float32), 2, 0, np.arange(B))
    assert np.all(np.abs(np.asarray(m)[:, :2, 2]) == s)
    assert homographies("blur", 2, {}, N, N) is None


# ----------------------------------------------------------------------------- errors, compiles

def test_bad_arguments_raise_helpful_errors():
    x = _images(2)
    p = draw("exposure", 1, jax.random.PRNGKey(0), 2)
    for level in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"level must be an int in 1\.\.4"):
            apply_batch("exposure", x, level, p)
        with pytest.raises(ValueError, match=r"level must be an int in 1\.\.4"):
            photo_batch("tilt", x, level, 0, [0, 1])
        with pytest.raises(ValueError, match=r"level must be an int in 1\.\.4"):
            draw("tilt", level, jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="Unknown photo transform 'sepia'. Known: .*jpeg"):
        photo_batch("sepia", x, 1, 0, [0, 1])
    bad = x.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        apply_batch("exposure", bad, 1, p)
    with pytest.raises(ValueError, match="NaN"):
        photo_batch("exposure", jnp.asarray(bad), 1, 0, [0, 1])     # device arrays too
    with pytest.raises(ValueError, match=r"\[B, H, W\].*images\[None\]"):
        apply_batch("exposure", x[0], 1, p)
    with pytest.raises(ValueError, match=r"\[B, H, W\].*images\[\.\.\., 0\]"):
        apply_batch("exposure", x[..., None], 1, p)
    with pytest.raises(ValueError, match=r"\(x \+ 1024\) / 2048"):
        apply_batch("exposure", x * 2048 - 1024, 1, p)
    with pytest.raises(ValueError, match="floating point.*/ 255"):
        apply_batch("exposure", (x * 255).astype(np.uint8), 1, p)
    with pytest.raises(ValueError, match=r"keys \['cutoff'\].*draw"):
        apply_batch("exposure", x, 1, {"gain": p["cutoff"]})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        apply_batch("exposure", x, 1, draw("exposure", 1, jax.random.PRNGKey(0), 3))
    with pytest.raises(ValueError, match="indices"):
        photo_batch("exposure", x, 1, 0, [0])
    with pytest.raises(ValueError, match="quality"):
        jpeg_batch(x, 0)
    with pytest.raises(ValueError, match="matrices"):
        unwarp(x, jnp.zeros((3, 3, 3)))


def test_photo_batch_keys_follow_the_documented_derivation():
    x, idx, seed = _images(2, 16), [5, 9], 42
    out, none = photo_batch("exposure", x, 3, seed, idx)
    keys = [jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        jax.random.PRNGKey(seed), i), NAMES.index("exposure")), 3) for i in idx]
    params = {"cutoff": jnp.concatenate([draw("exposure", 3, k, 1)["cutoff"] for k in keys])}
    np.testing.assert_allclose(out, apply_batch("exposure", x, 3, params), atol=1e-6)
    assert none is None


def test_new_parameters_do_not_recompile_and_apply_batch_jits():
    x = _images(2, 24)                                          # a shape no other test uses
    before = batched._apply_jit._cache_size()
    a = apply_batch("exposure", x, 3, draw("exposure", 3, jax.random.PRNGKey(0), 2))
    assert batched._apply_jit._cache_size() == before + 1
    b = apply_batch("exposure", x, 3, draw("exposure", 3, jax.random.PRNGKey(1), 2))
    assert batched._apply_jit._cache_size() == before + 1      # compiled once
    assert not np.allclose(a, b)
    photo_before = batched._photo_jit._cache_size()
    for seed in (0, 1, 2):
        photo_batch("exposure", x, 3, seed, [seed, seed + 1])
    assert batched._photo_jit._cache_size() == photo_before + 1
    # apply_batch itself can be jitted (value checks are skipped on traced images)
    jitted = jax.jit(apply_batch, static_argnames=("name", "level"))
    p = draw("exposure", 3, jax.random.PRNGKey(1), 2)
    np.testing.assert_allclose(jitted("exposure", x, 3, p), b, atol=1e-6)
