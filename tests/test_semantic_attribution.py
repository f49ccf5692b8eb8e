"""Semantic attribution: known answers on an analytic concept model, the Grad-CAM identity,
segment sums, batching, IBA as second estimator, the end-to-end path through `dissect`, errors
and the figure."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import attribution, models
from cxr_jax.attribution import iba as I
from cxr_jax.attribution.cam import weighted_cam, gradcam_weights
from cxr_jax.attribution.common import layer_and_grad, score_fn
from cxr_jax.report.semantics import save_semantic_attribution, unit_masks_at
from cxr_jax.semantics.attribution import (UNLABELLED, explain_concepts, semantic_attribution,
                                           unit_contributions)
from cxr_jax.semantics.dissection import Dissection, dissect

# ------------------------------------------------------------------------------ the analytic model
# A 16x16 scene with 4 input channels: channel c < 3 is concept c ("lungs", "heart", "opacity")
# drawn as a rectangle of intensity I_c; channel 3 is a marker (no concept). Stage "units"
# (8x8x6) 2x2-average-pools the scene and copies channel SOURCE[k] with gain GAIN[k] into unit
# k, so unit k is concept SOURCE[k]'s mask times GAIN[k] I. "pool" averages over positions,
# p_k = GAIN[k] I_c area_c / 256; "head" gives
#   class 0:  sum_k V0[k] p_k + 0.3          (linear: dy/dA_k = V0[k] / 64 everywhere)
#   class 1:  sum_k V1[k] p_k + 0.5 p_0 p_2  (dy/dA_0 = (V1[0] + 0.5 p_2) / 64, ...)
#   class 2:  20 (p_0 + p_1) - 5             (reads the lungs units only)
S = 16
NAMES = ("lungs", "heart", "opacity")
SOURCE = np.array([0, 0, 1, 2, 2, 3])
GAIN = np.array([1.0, 0.5, 2.0, 1.0, 3.0, 1.0], np.float32)
LABELS = np.array([0, 0, 1, 2, 2, -1])  # what the units are built to detect
V0 = np.array([1.0, -2.0, 0.5, 1.5, -0.25, 0.75], np.float32)
V1 = np.array([0.5, 1.0, -1.0, 0.0, 2.0, -0.5], np.float32)
MIX = np.zeros((4, 6), np.float32)
MIX[SOURCE, np.arange(6)] = GAIN


def _units(x):
    b = x.shape[0]
    pooled = x.reshape(b, S // 2, 2, S // 2, 2, 4).mean(axis=(2, 4))
    return jax.nn.relu(pooled @ jnp.asarray(MIX))


def _head(p):
    return jnp.stack([p @ V0 + 0.3, p @ V1 + 0.5 * p[:, 0] * p[:, 2],
                      20.0 * (p[:, 0] + p[:, 1]) - 5.0], axis=-1)


MODEL = models.Model(
    "concept_units", (models.Stage("units", fn=_units),
                      models.Stage("pool", fn=lambda a: a.mean(axis=(1, 2))),
                      models.Stage("head", fn=_head)),
    num_classes=3, in_channels=4, min_size=8, layers=models.Layers(explain="units", iba="units"))


# Grad-CAM contributions at "units", jitted once per batch shape (eager dispatch is slow on CPU).
gradcam_units = jax.jit(functools.partial(unit_contributions, MODEL, layer="units"))


def rects(b):
    """(row0, row1, col0, col1) of the 3 concepts and the marker in image b; disjoint."""
    return [(2, 8 + 2 * (b % 2), 2, 6), (8, 14, 8, 12 + 2 * (b % 2)), (2, 6, 10, 14),
            (12, 16, 0, 4)]


def intensities(b):
    m = b % 5
    return np.array([1.0 + 0.5 * m, 2.0 - 0.25 * m, 0.5 + 0.75 * m, 1.0 + 0.1 * m], np.float32)


def scenes(n, offset=0):
    """Images [n, S, S, 4] and concept masks [n, 3, S, S] bool."""
    x = np.zeros((n, S, S, 4), np.float32)
    masks = np.zeros((n, 3, S, S), bool)
    for i in range(n):
        b = i + offset
        for c, ((r0, r1, c0, c1), v) in enumerate(zip(rects(b), intensities(b))):
            x[i, r0:r1, c0:c1, c] = v
            if c < 3:
                masks[i, c, r0:r1, c0:c1] = True
    return jnp.asarray(x), masks


def pooled_by_hand(b):
    """p_k = GAIN[k] I_c area_c / S^2 for image b."""
    areas = np.array([(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects(b)], np.float64)
    return GAIN * (intensities(b) * areas / S**2)[SOURCE]


def contributions_by_hand(b, target):
    p = pooled_by_hand(b)
    if target == 0:
        return V0 * p
    if target == 1:
        w = V1.astype(np.float64).copy()
        w[0] += 0.5 * p[2]
        w[2] += 0.5 * p[0]
        return w * p
    return np.array([20.0, 20.0, 0, 0, 0, 0]) * p


def hand_dissection(labels=LABELS, layer="units"):
    u = len(labels)
    return Dissection(thresholds=np.full(u, 0.1, np.float32), iou=np.zeros((u, 3)),
                      labels=np.asarray(labels), scores=np.zeros(u),
                      intersections=np.zeros((u, 3), np.int64),
                      unions=np.zeros((u, 3), np.int64), unit_areas=np.zeros(u, np.int64),
                      concept_areas=np.zeros(3, np.int64), threshold_errors=np.zeros(u),
                      num_images=0, concept_names=NAMES, layer=layer, settings={})


# ---------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_contributions_and_concept_vector_equal_the_hand_values():
    x, _ = scenes(3)
    for target in (0, 1, 2):
        t = jnp.full((3,), target)
        got = np.asarray(gradcam_units({}, x, t))
        want = np.stack([contributions_by_hand(b, target) for b in range(3)])
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
        # Concept vector: lungs = units 0+1, heart = 2, opacity = 3+4, unlabelled = 5.
        concepts = np.asarray(semantic_attribution(got, LABELS, 3))
        hand = np.stack([want[:, 0] + want[:, 1], want[:, 2], want[:, 3] + want[:, 4],
                         want[:, 5]], axis=-1)
        np.testing.assert_allclose(concepts, hand, rtol=2e-6, atol=1e-7)
    # Behind global pooling and a linear head, the contributions add up to the logit (CAM).
    t0 = jnp.zeros(3, jnp.int32)
    c = unit_contributions(MODEL, {}, x, t0)  # default layer: the model's explain layer
    np.testing.assert_allclose(np.asarray(c).sum(1), np.asarray(MODEL.apply({}, x)[:, 0]) - 0.3,
                               rtol=1e-5)


def test_signed_contributions_sum_to_the_gradcam_total_before_relu():
    x, _ = scenes(3)
    t = jnp.array([0, 1, 2])
    c = np.asarray(gradcam_units({}, x, t))
    a, g, _ = layer_and_grad(MODEL, {}, x, score_fn(MODEL, t, 3), "units")
    at_layer = weighted_cam(a, gradcam_weights(g), (8, 8), relu=False)
    np.testing.assert_allclose(c.sum(1), np.asarray(at_layer.sum((1, 2))), rtol=1e-5)
    # The registered map, upsampled 2x per axis, keeps totals times 4.
    cam = attribution.get("gradcam")(MODEL, {}, x, t, layer="units", relu=False)
    np.testing.assert_allclose(np.asarray(cam.sum((1, 2))), 4 * c.sum(1), rtol=1e-5)
    assert (c < 0).any()  # class 0 has negative evidence, so the ReLU'd map would differ


def test_batch_equals_one_image_at_a_time_and_jit_equals_eager():
    x, _ = scenes(3)
    t = jnp.array([0, 1, 2])
    whole = np.asarray(gradcam_units({}, x, t))
    eager = np.asarray(unit_contributions(MODEL, {}, x, t, layer="units"))
    np.testing.assert_allclose(whole, eager, rtol=1e-6)
    one = np.concatenate([np.asarray(gradcam_units({}, x[i:i + 1], t[i:i + 1]))
                          for i in range(3)])
    np.testing.assert_allclose(whole, one, rtol=1e-6, atol=1e-7)
    batched = np.asarray(semantic_attribution(whole, LABELS, 3, normalise="abs"))
    single = np.stack([np.asarray(semantic_attribution(whole[i], LABELS, 3, normalise="abs"))
                       for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-6)


# ------------------------------------------------------------------------------ segment sums
def test_segment_sums_with_unlabelled_units_and_normalisations():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 9)).astype(np.float32)
    labels = np.array([2, -1, 0, 2, -1, 3, 0, 2, -1])  # concept 1 carries no unit
    raw = np.asarray(semantic_attribution(c, labels, 4))
    want = np.zeros((5, 5))
    for k, l in enumerate(labels):
        want[:, 4 if l < 0 else l] += c[:, k]
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    assert np.all(raw[:, 1] == 0)
    np.testing.assert_allclose(raw.sum(1), c.sum(1), rtol=1e-4, atol=1e-5)  # nothing dropped
    shares = np.asarray(semantic_attribution(c, labels, 4, normalise="sum"))
    np.testing.assert_allclose(shares.sum(1), 1.0, rtol=1e-4)
    absolute = np.asarray(semantic_attribution(c, labels, 4, normalise="abs"))
    np.testing.assert_allclose(np.abs(absolute).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(absolute, want / np.abs(want).sum(1, keepdims=True), rtol=1e-5)
    # All units unlabelled: everything lands in the last column; zero contributions: NaN shares.
    every = np.asarray(semantic_attribution(c, -np.ones(9, int), 4))
    np.testing.assert_allclose(every[:, 4], c.sum(1), rtol=1e-5, atol=1e-6)
    assert np.all(every[:, :4] == 0)
    assert np.all(np.isnan(semantic_attribution(np.zeros((2, 9)), labels, 4, normalise="abs")))
    # Jittable with traced labels.
    jitted = jax.jit(semantic_attribution, static_argnums=2)(c, jnp.asarray(labels), 4)
    np.testing.assert_allclose(np.asarray(jitted), raw, rtol=1e-6)


# ------------------------------------------------------------------------------ the driver
def test_explain_concepts_with_a_hand_made_dissection():
    x, _ = scenes(3)
    t = jnp.array([0, 1, 0])
    e = explain_concepts(MODEL, {}, x, t, hand_dissection(), normalise=None, top_k=2)
    assert e.names == NAMES + (UNLABELLED,) and e.layer == "units" and e.estimator == "gradcam"
    want = np.stack([contributions_by_hand(b, int(t[b])) for b in range(3)])
    np.testing.assert_allclose(e.contributions, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(e.concepts, semantic_attribution(want, LABELS, 3), rtol=2e-6,
                               atol=1e-7)
    order = np.argsort(-np.abs(want), axis=1)[:, :2]
    np.testing.assert_array_equal(e.top_units, order)
    np.testing.assert_array_equal(e.top_labels, LABELS[order])
    np.testing.assert_allclose(e.top_contributions, np.take_along_axis(want, order, 1),
                               rtol=2e-6)
    acts = np.asarray(_units(x))  # [B, 8, 8, 6]
    np.testing.assert_allclose(e.top_maps, np.stack(
        [np.moveaxis(acts[b][..., order[b]], -1, 0) for b in range(3)]), rtol=1e-6)
    assert e.top_thresholds.shape == (3, 2)
    assert e.unit_names(0) == tuple(e.names[l] for l in LABELS[order[0]])
    shares = explain_concepts(MODEL, {}, x, t, hand_dissection())  # default: "abs"
    np.testing.assert_allclose(np.abs(shares.concepts).sum(1), 1.0, rtol=1e-5)


def test_dissect_then_explain_recovers_the_built_in_concepts():
    x, masks = scenes(4)
    d = dissect(MODEL, {}, [(np.asarray(x), masks)], layer="units", quantile=0.05,
                resolution=S, concept_names=NAMES)
    np.testing.assert_array_equal(d.labels, LABELS)
    e = explain_concepts(MODEL, {}, x[1:], jnp.full((3,), 2), d)  # compiled as in other tests
    # Class 2 reads the lungs units only: all of its attribution is "lungs".
    np.testing.assert_allclose(e.concepts[:, 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(e.concepts[:, 1:], 0.0, atol=1e-7)
    assert np.all(e.top_labels[:, :2] == 0)
    # The top unit's dissection mask lies on the lungs rectangle of its image (and is not
    # empty on the brightest image, the last, whose lungs set the unit's threshold).
    for b in range(3):
        m = unit_masks_at(e.top_maps[b, :1], (S, S), e.top_thresholds[b, :1])[0]
        assert not (m & ~masks[b + 1, 0]).any()
        assert m.any() or b < 2


# ------------------------------------------------------------------------------ IBA
@functools.lru_cache(maxsize=None)
def iba_setup():
    data, _ = scenes(20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 20 samples: "fewer than recommended"
        return I.iba_stats(MODEL, {}, [data], layer="units")


def test_iba_estimator_is_per_unit_capacity_and_follows_the_units_the_target_reads():
    stats = iba_setup()
    x, _ = scenes(2, offset=3)  # bright lungs: the target's logit is well above the noise's
    t = jnp.array([2, 2])
    key = jax.random.key(3)
    # beta 0.1: this toy layer has few active features, so the default 10 closes every unit.
    settings = dict(steps=10, samples=4, beta=0.1)
    e = explain_concepts(MODEL, {}, x, t, hand_dissection(), estimator="capacity", stats=stats,
                         key=key, **settings)
    c = e.contributions
    assert c.shape == (2, 6) and np.all(c >= 0)
    # sum_k c_k is the bottleneck's total capacity: ln 2 times the total of the IBA map (bits).
    iba_map = jax.jit(functools.partial(attribution.get("iba"), MODEL, **settings))
    sal = iba_map({}, x, t, stats=stats, key=key)
    np.testing.assert_allclose(c.sum(1), np.log(2) * np.asarray(sal.sum((1, 2))), rtol=1e-4)
    # Class 2 reads only the lungs units: they keep (almost) all the capacity.
    shares = np.asarray(semantic_attribution(c, LABELS, 3, normalise="sum"))
    assert np.all(shares[:, 0] > 0.95), shares
    np.testing.assert_allclose(e.concepts, shares, rtol=1e-5)  # "abs" = "sum" for IBA
    assert set(e.top_labels[:, 0].tolist()) == {0}


# ------------------------------------------------------------------------------ errors
def test_bad_input_raises_clear_errors():
    x, _ = scenes(2)
    t = jnp.array([0, 1])
    c = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match="5 labels for 6 units"):
        semantic_attribution(c, LABELS[:5], 3)
    with pytest.raises(ValueError, match=r"-1 \(unlabelled\) or concept indices"):
        semantic_attribution(c, np.array([0, 0, 1, 3, 2, -1]), 3)
    with pytest.raises(ValueError, match="integer"):
        semantic_attribution(c, LABELS.astype(float), 3)
    with pytest.raises(ValueError, match="normalise"):
        semantic_attribution(c, LABELS, 3, normalise="softmax")
    with pytest.raises(ValueError, match="Unknown estimator"):
        unit_contributions(MODEL, {}, x, t, estimator="lrp")
    with pytest.raises(ValueError, match="needs the IBA feature statistics"):
        unit_contributions(MODEL, {}, x, t, estimator="capacity")
    with pytest.raises(ValueError, match="takes no IBA settings"):
        unit_contributions(MODEL, {}, x, t, beta=3.0)
    with pytest.raises(ValueError, match="not a spatial map"):
        unit_contributions(MODEL, {}, x, t, layer="pool")
    with pytest.raises(ValueError, match="Unknown layer"):
        unit_contributions(MODEL, {}, x, t, layer="conv9")
    with pytest.raises(ValueError, match="5 labels for 6 units"):
        explain_concepts(MODEL, {}, x, t, hand_dissection(LABELS[:5]))
    with pytest.raises(ValueError, match="dissection is of layer"):
        explain_concepts(MODEL, {}, x, t, hand_dissection(layer="pool"), layer="units")
    with pytest.raises(ValueError, match="needs the IBA feature statistics"):
        explain_concepts(MODEL, {}, x, t, hand_dissection(), estimator="capacity")
    with pytest.raises(ValueError, match="Unknown estimator"):
        explain_concepts(MODEL, {}, x, t, hand_dissection(), estimator="cam")


# ------------------------------------------------------------------------------ the figure
def test_figure_writes_a_png(tmp_path):
    x, _ = scenes(3)
    e = explain_concepts(MODEL, {}, x, jnp.array([0, 1, 0]), hand_dissection())
    path = save_semantic_attribution(
        str(tmp_path / "semantic.png"), np.asarray(x[0, ..., 0] + x[0, ..., 1]), e.concepts[0],
        e.names, e.top_maps[0], e.top_labels[0], unit_thresholds=e.top_thresholds[0],
        unit_ids=e.top_units[0], unit_values=e.top_contributions[0], title="class 0")
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and (tmp_path / "semantic.png").stat().st_size > 1000
    # Masks given directly, labels by name.
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = masks[1, 2:, 2:] = True
    save_semantic_attribution(str(tmp_path / "m.png"), np.zeros((S, S)), [0.5, -0.2, 0.1, 0.2],
                              e.names, masks, ["lungs", UNLABELLED])
    assert (tmp_path / "m.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="names for a concept vector"):
        save_semantic_attribution(str(tmp_path / "bad.png"), np.zeros((S, S)), [1.0],
                                  e.names, masks, ["lungs", "heart"])
