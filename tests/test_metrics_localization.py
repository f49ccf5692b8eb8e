"""Localisation metrics with hand-computed answers, edges included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import metrics
from cxr_jax.metrics import (
    agreement_matrix,
    box_iou,
    box_mask,
    box_set_iou,
    boxes_from_saliency,
    centre_point_saliency,
    effective_heat_ratio,
    iobb,
    ior,
    mask_box,
    pointing_game,
    pointing_game_centre,
    pointing_game_summary,
    saliency_peaks,
    top_class_mask,
)

H = W = 64


def _peak(r, c, shape=(H, W)):
    m = np.zeros(shape, np.float32)
    m[r, c] = 1.0
    return m


def _mask(*pixels, shape=(H, W)):
    m = np.zeros(shape, bool)
    for r, c in pixels:
        m[r, c] = True
    return m


# --------------------------------------------------------------------------- pointing game
def test_pointing_game_tolerance_edges():
    sal = np.stack([_peak(10, 10)] * 5)
    masks = np.stack([
        _mask((10, 25)),  # distance exactly 15 along a row: hit
        _mask((10, 26)),  # one pixel beyond: miss
        _mask((19, 22)),  # (9, 12) away: distance exactly 15 on a diagonal: hit
        _mask((19, 23)),  # sqrt(81 + 169) > 15: miss
        np.zeros((H, W), bool),  # no ground truth: NaN, not a hit
    ])
    out = np.asarray(pointing_game(sal, masks, tolerance=15))
    np.testing.assert_array_equal(out[:4], [1.0, 0.0, 1.0, 0.0])
    assert np.isnan(out[4])


def test_pointing_game_first_argmax_row_major_and_constant_map():
    sal = np.zeros((H, W), np.float32)
    sal[30, 2] = sal[5, 40] = 3.0  # tie: (5, 40) comes first in row-major order
    near_second = _mask((30, 2))
    near_first = _mask((5, 40))
    out = pointing_game(np.stack([sal, sal]), np.stack([near_second, near_first]), tolerance=0)
    np.testing.assert_array_equal(out, [0.0, 1.0])
    # a constant map points at (0, 0)
    const = np.ones((2, H, W), np.float32)
    out = pointing_game(const, np.stack([_mask((0, 3)), _mask((0, 4))]), tolerance=3)
    np.testing.assert_array_equal(out, [1.0, 0.0])


def test_pointing_game_is_jittable_and_takes_leading_axes():
    sal = jnp.asarray(np.stack([_peak(10, 10), _peak(40, 40)]))[:, None].repeat(3, axis=1)
    masks = np.zeros((2, 3, H, W), bool)
    masks[0, 0, 10, 12] = True  # hit at distance 2
    masks[1, 1, 0, 0] = True  # miss
    out = jax.jit(lambda s, m: pointing_game(s, m, tolerance=5))(sal, masks)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(np.isnan(out), [[False, True, True], [True, False, True]])
    assert out[0, 0] == 1.0 and out[1, 1] == 0.0


def test_pointing_game_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(np.zeros((2, H, W)), np.zeros((2, 32, 32), bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.zeros((1, H, W)), np.zeros((1, H, W), bool), tolerance=-1)


def test_a_nan_map_points_nowhere_never_a_hit():
    # Every pixel of the mask is within the tolerance of every pixel: any point would hit.
    masks = np.ones((3, H, W), bool)
    sal = np.zeros((3, H, W), np.float32)
    sal[0] = np.nan                     # all NaN
    sal[1, 10, 10] = np.nan             # one NaN pixel beside a finite peak
    sal[1, 40, 40] = 1.0
    sal[2, 40, 40] = 1.0                # finite: a hit
    out = np.asarray(pointing_game(sal, masks, tolerance=2 * H))
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 1.0
    summary = pointing_game_summary(out[:, None])
    assert summary.counts[0] == 1 and summary.accuracy == 1.0


def test_saliency_peaks_first_argmax_row_major():
    sal = np.zeros((2, 4, 5), np.float32)
    sal[0, 1, 3] = sal[0, 2, 0] = 5.0   # a tie: the first in row-major order
    np.testing.assert_array_equal(np.asarray(saliency_peaks(sal)), [[1, 3], [0, 0]])


def test_mask_box_is_the_pixel_edge_box_and_inverts_box_mask():
    m = np.zeros((8, 8), bool)
    m[2:4, 3:7] = True
    np.testing.assert_array_equal(mask_box(m), [3, 2, 7, 4])
    np.testing.assert_array_equal(box_mask(mask_box(m), (8, 8)), m)
    assert np.isnan(mask_box(np.zeros((4, 4), bool))).all()


def test_centre_baseline():
    masks = np.stack([_mask((32, 32)), _mask((32, 47)), _mask((32, 48)), np.zeros((H, W), bool)])
    out = np.asarray(pointing_game_centre(masks, tolerance=15))
    np.testing.assert_array_equal(out[:3], [1.0, 1.0, 0.0])
    assert np.isnan(out[3])
    sal = centre_point_saliency(masks.shape)
    np.testing.assert_array_equal(np.asarray(pointing_game(sal, masks, tolerance=15)), out)
    assert np.unravel_index(np.argmax(sal[0]), (H, W)) == (32, 32)


def test_pointing_game_summary_per_class_accuracy_pooled():
    hits = np.array([[1, 0, np.nan],
                     [1, np.nan, np.nan],
                     [0, np.nan, np.nan],
                     [1, np.nan, np.nan]])
    s = pointing_game_summary(hits)
    np.testing.assert_allclose(s.per_class[:2], [0.75, 0.0])
    assert np.isnan(s.per_class[2])
    np.testing.assert_array_equal(s.counts, [4, 1, 0])
    assert s.accuracy == pytest.approx((0.75 + 0.0) / 2)  # classes with ground truth only
    assert s.pooled == pytest.approx(3 / 5)
    d = pointing_game_summary({"nodule": [1, 1, 0], "effusion": [0, np.nan]})
    assert d.names == ("nodule", "effusion")
    np.testing.assert_allclose(d.per_class, [2 / 3, 0.0])
    assert d.pooled == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        pointing_game_summary(np.array([[0.5]]))


# --------------------------------------------------------------------------- boxes
def test_box_iou_iobb_hand_values():
    a = np.array([0, 0, 10, 10])
    assert box_iou(a, [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, [10, 0, 20, 10]) == 0.0  # touching edges share no pixel
    assert np.isnan(box_iou(a, [np.nan] * 4))
    out = box_iou(np.array([[0, 0, 10, 10], [0, 0, 5, 5]])[:, None], a[None, None])
    assert out.shape == (2, 1) and out[1, 0] == pytest.approx(0.25)
    # IoBB divides by the predicted box: a small box inside a big one scores 1
    assert iobb([0, 0, 10, 10], [0, 0, 20, 20]) == 1.0
    assert box_iou([0, 0, 10, 10], [0, 0, 20, 20]) == pytest.approx(0.25)
    assert iobb([10, 10, 30, 30], [0, 0, 20, 20]) == pytest.approx(100 / 400)
    assert np.isnan(iobb([0, 0, 1, 1], [np.nan] * 4))
    # box recall divides by the ground truth: a big box over a small finding scores 1
    assert metrics.box_recall([0, 0, 20, 20], [0, 0, 10, 10]) == 1.0
    assert metrics.box_recall([0, 0, 10, 10], [0, 0, 20, 20]) == pytest.approx(0.25)
    assert metrics.box_recall([10, 10, 30, 30], [0, 0, 20, 20]) == pytest.approx(100 / 400)
    assert metrics.box_recall([np.nan] * 4, a) == 0.0  # no box covers nothing
    assert np.isnan(metrics.box_recall(a, [np.nan] * 4))
    assert np.isnan(metrics.box_recall(a, [3, 3, 3, 8]))  # a finding of zero area
    with pytest.raises(ValueError, match="x1 < x0"):
        box_iou([5, 0, 1, 1], a)


def test_box_mask_and_ior():
    m = box_mask([1, 2, 4, 5], (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[2:5, 1:4] = True
    np.testing.assert_array_equal(m, expected)
    assert not box_mask([np.nan] * 4, (6, 6)).any()
    act = np.zeros((6, 6), bool)
    act[0, :] = True  # 6 pixels
    act[2, 0:4] = True  # 4 more; (2,1),(2,2),(2,3) in the box
    assert ior(act, m) == pytest.approx(3 / 10)
    assert np.isnan(ior(np.zeros((6, 6), bool), m))
    assert np.isnan(ior(act, np.zeros((6, 6), bool)))


def _three_level_map():
    s = np.zeros((32, 32))
    for i in range(6):  # component A: a 6-pixel diagonal, box rows/cols 0..5
        s[i, i] = 1.0
    s[0:2, 4:6] = 1.0  # component B: 4 pixels inside A's box, not touching A
    s[10:13, 10:13] = 1.0  # component C: 9 pixels, its box holds 9
    s[20:26, 20:30] = 0.5  # a middle class, so multi-Otsu has 3 levels to split
    return s


def test_boxes_from_saliency_keeps_the_box_with_most_top_pixels():
    s = _three_level_map()
    np.testing.assert_array_equal(top_class_mask(s), s == 1.0)
    # A's box holds 6 + 4 = 10 top pixels, more than C's 9, though C is the larger component
    np.testing.assert_array_equal(boxes_from_saliency(s), [0, 0, 6, 6])
    s2 = s.copy()
    s2[14, 10:13] = 1.0  # three more pixels two rows below C ...
    s2[13, 11] = 1.0  # ... joined to it: C's box (rows 10-14) now holds 13 top pixels > 10
    np.testing.assert_array_equal(boxes_from_saliency(s2), [10, 10, 13, 15])


def test_boxes_from_saliency_map_equal_to_box_and_constant_map():
    gt = np.array([8.0, 4.0, 20.0, 12.0])
    binary = box_mask(gt, (32, 32)).astype(float)  # two values only: the fallback path
    box = boxes_from_saliency(binary)
    np.testing.assert_array_equal(box, gt)
    assert box_iou(box, gt) == 1.0
    batch = boxes_from_saliency(np.stack([binary, np.full((32, 32), 0.3), np.zeros((32, 32))]))
    assert batch.shape == (3, 4)
    np.testing.assert_array_equal(batch[0], gt)
    assert np.isnan(batch[1:]).all()  # constant maps: no box, no crash
    assert not top_class_mask(np.full((8, 8), 2.0)).any()
    with pytest.raises(ValueError, match="NaN"):
        boxes_from_saliency(np.full((8, 8), np.nan))


def test_box_set_iou_missing_rules_and_multiple_boxes():
    a = [[0, 0, 10, 10], None, None, [0, 0, 4, 4]]
    b = [[[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0, 2, 2], None, [0, 0, 2, 2]]
    out = box_set_iou(a, b)
    np.testing.assert_allclose(out[[0, 1, 3]], [1.0, 0.0, 0.25])  # best match; absent box: 0
    assert np.isnan(out[2])  # neither has a box
    ref = box_set_iou(b, a, reference=True)  # a as ground truth: images without it are NaN
    np.testing.assert_allclose(ref[[0, 3]], [1.0, 0.25])
    assert np.isnan(ref[1]) and np.isnan(ref[2])
    np.testing.assert_allclose(box_set_iou(a, b, reference=True)[[0, 1, 3]], [1.0, 0.0, 0.25])


def test_agreement_matrix_hand_computed():
    nan4 = [np.nan] * 4
    methods = {"A": np.array([[0, 0, 10, 10], nan4]),
               "B": np.array([[5, 5, 15, 15], [0, 0, 4, 4]])}
    gt = np.array([[0, 0, 10, 10], [0, 0, 4, 4]])
    names, m = agreement_matrix(methods, gt)
    assert names == ["A", "B", "ground truth"]
    expected = np.array([
        [1.0, (1 / 7 + 0) / 2, (1 + 0) / 2],
        [(1 / 7 + 0) / 2, 1.0, (1 / 7 + 1) / 2],
        [(1 + 0) / 2, (1 / 7 + 1) / 2, 1.0],
    ])
    np.testing.assert_allclose(m, expected)
    names, m = agreement_matrix(methods)
    assert names == ["A", "B"] and m.shape == (2, 2)
    with pytest.raises(ValueError, match="same images"):
        agreement_matrix({"A": np.zeros((2, 4)), "B": np.zeros((3, 4))})


def test_agreement_from_extracted_boxes():
    s = _three_level_map()
    boxes = boxes_from_saliency(np.stack([s, s]))
    # the second image has no ground truth: skipped in the ground-truth row, not scored 0
    names, m = agreement_matrix({"x": boxes, "y": boxes}, gt=[[0, 0, 6, 6], None])
    np.testing.assert_allclose(m, np.ones((3, 3)))


# --------------------------------------------------------------------------- effective heat
def test_ehr_hand_computed():
    s = np.zeros((1, 10))
    s[0, :3] = [1.0, 0.5, 0.5]
    region = np.zeros((1, 10), bool)
    region[0, [0, 2]] = True
    # q <= .5: t = .5, pixels {0,1,2}: in-box heat 1.5 / 3 = .5; q > .5: t > .5, pixel 0 only: 1
    expected = 5 * 0.1 * 0.5 + 0.1 * (0.5 + 1.0) / 2 + 4 * 0.1 * 1.0
    assert effective_heat_ratio(s, region, normalize=None) == pytest.approx(expected)
    assert effective_heat_ratio(s, region) == pytest.approx(expected)  # min-max changes nothing
    counted = 5 * 0.1 * (2 / 3) + 0.1 * (2 / 3 + 1) / 2 + 0.4
    assert effective_heat_ratio(s, region, weight_by_heat=False) == pytest.approx(counted)


def test_ehr_edges():
    box = box_mask([4, 4, 12, 10], (16, 16))
    other = box_mask([0, 12, 4, 16], (16, 16))
    maps = np.stack([box.astype(float), box.astype(float), np.full((16, 16), 0.7),
                     box.astype(float)])
    regions = np.stack([box, other, box, np.zeros((16, 16), bool)])
    out = effective_heat_ratio(maps, regions)
    assert out[0] == 1.0  # map equal to the box
    assert out[1] == 0.0  # all heat outside the region
    assert out[2] == 0.0  # constant map: no heat survives min-max, no NaN
    assert np.isnan(out[3])  # no ground truth
    assert effective_heat_ratio(maps[None], regions[None]).shape == (1, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        effective_heat_ratio(maps * 3, regions, normalize=None)


def test_ehr_vectorised_quantiles_match_a_per_map_transcription():
    def one_map(h, region, base=0.1):
        h = (h - h.min()) / (h.max() - h.min())
        heat = np.where(h >= base, h, 0.0)
        ratios = []
        for q in np.linspace(0, 1, 11):
            t = min(np.quantile(h[h >= base], q), 0.99 * heat.max())
            sel = heat >= t
            ratios.append(heat[sel & region].sum() / sel.sum())
        return np.trapezoid(ratios, np.linspace(0, 1, 11))

    rng = np.random.default_rng(0)
    maps = rng.random((4, 20, 20)) ** 3
    regions = np.zeros((4, 20, 20), bool)
    regions[:, 3:12, 5:15] = True
    want = [one_map(m, r) for m, r in zip(maps, regions)]
    np.testing.assert_allclose(effective_heat_ratio(maps, regions), want, rtol=1e-12)


def test_pointing_game_interval_known_answers():
    assert metrics.pointing_game_interval({"a": [1, 1, 1], "b": [1, np.nan]}) == (1.0, 1.0)
    half = np.tile([1.0, 0.0], 200)                      # one class, rate 0.5, n = 400
    lo, hi = metrics.pointing_game_interval(half, n_boot=4000)
    sd = np.sqrt(0.25 / 400)
    assert lo == pytest.approx(0.5 - 1.96 * sd, abs=0.006)
    assert hi == pytest.approx(0.5 + 1.96 * sd, abs=0.006)
    # Two classes: the class mean's interval is narrower than either class's own.
    two = {"a": half, "b": np.tile([1.0, 0.0, 0.0, 0.0], 100)}
    lo2, hi2 = metrics.pointing_game_interval(two, n_boot=4000)
    assert lo2 < 0.375 < hi2 and hi2 - lo2 < hi - lo
    assert metrics.pointing_game_interval(two) == metrics.pointing_game_interval(two)
    assert np.isnan(metrics.pointing_game_interval({"a": [np.nan]})[0])
