"""Insertion/deletion and sensitivity-N on an analytic linear model with hand-computed curves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cxr_jax.metrics import (
    deletion_auc,
    deletion_curve,
    gaussian_blur,
    insertion_auc,
    insertion_curve,
    insertion_deletion,
    sensitivity_n,
    sensitivity_n_values,
)


class LinearModel:
    """Stand-in with the model contract: logits_k = sum_{hwc} w_hwck x_hwc + b_k."""

    def apply(self, variables, x):
        return jnp.einsum("bhwc,hwck->bk", x, variables["w"]) + variables["b"]


MODEL = LinearModel()


def sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, float)))


def _two_by_two():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]  # [1, 2, 2, 1]
    w = jnp.stack([jnp.ones((2, 2, 1)), -jnp.ones((2, 2, 1))], axis=-1)  # class 0 = sum
    variables = {"w": w, "b": jnp.zeros(2)}
    sal = jnp.array([[[0.1, 0.4], [0.3, 0.2]]])  # order: 2, 3, 4, 1
    return x, variables, sal


def test_deletion_and_insertion_hand_computed():
    x, v, sal = _two_by_two()
    t = jnp.array([0])
    kw = dict(baseline="zeros", pixels_per_step=1, fraction=1.0)
    d = deletion_curve(MODEL, v, x, sal, t, **kw)
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(d.scores[0], sigmoid([10, 8, 5, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(d.auc, [np.trapezoid(sigmoid([10, 8, 5, 1, 0]), dx=0.25)],
                               rtol=1e-6)
    i = insertion_curve(MODEL, v, x, sal, t, **kw)
    np.testing.assert_allclose(i.scores[0], sigmoid([0, 2, 5, 9, 10]), rtol=1e-6)
    np.testing.assert_allclose(insertion_auc(MODEL, v, x, sal, t, **kw),
                               [np.trapezoid(sigmoid([0, 2, 5, 9, 10]), dx=0.25)], rtol=1e-6)


def test_insertion_deletion_together_equal_the_two_curves_and_the_hand_values():
    x, v, sal = _two_by_two()
    t = jnp.array([0])
    kw = dict(baseline="zeros", pixels_per_step=1, fraction=1.0)
    ins, dele = insertion_deletion(MODEL, v, x, sal, t, **kw)
    np.testing.assert_allclose(dele.scores[0], sigmoid([10, 8, 5, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(ins.scores[0], sigmoid([0, 2, 5, 9, 10]), rtol=1e-6)
    # random maps with ties, several images, partial last step, a blurred baseline
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 9, 7, 2)), jnp.float32)
    v = {"w": jnp.asarray(rng.normal(size=(9, 7, 2, 3)), jnp.float32), "b": jnp.zeros(3)}
    sal = jnp.asarray(rng.integers(0, 4, size=(3, 9, 7)), jnp.float32)   # many ties
    t = jnp.array([0, 2, 1])
    kw = dict(baseline="blur", sigma=1.5, pixels_per_step=5, fraction=0.7, steps_per_batch=3)
    both = insertion_deletion(MODEL, v, x, sal, t, **kw)
    for got, want in zip(both, (insertion_curve(MODEL, v, x, sal, t, **kw),
                                deletion_curve(MODEL, v, x, sal, t, **kw))):
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
        np.testing.assert_allclose(got.auc, want.auc, rtol=1e-6)
    # the ranking is the stable descending order: ties go in row-major order
    flat = np.asarray(sal).reshape(3, -1)
    rank = np.argsort(np.argsort(-flat, axis=1, kind="stable"), axis=1)
    n = round(0.7 * 63)
    first_step = (rank < 5) & (rank < n)       # the pixels deleted at step 1
    img1 = np.where(first_step.reshape(3, 9, 7, 1), np.asarray(gaussian_blur(x, 1.5)), x)
    logits = np.einsum("bhwc,hwck->bk", img1, np.asarray(v["w"]))
    np.testing.assert_allclose(both[1].scores[:, 1], sigmoid(logits[[0, 1, 2], [0, 2, 1]]),
                               rtol=1e-5)


def test_partial_last_step_budget_and_ties():
    x, v, sal = _two_by_two()
    t = jnp.array([0])
    # 3 pixels per step over all 4: steps of 3 then 1 pixel
    d = deletion_curve(MODEL, v, x, sal, t, baseline="zeros", pixels_per_step=3, fraction=1.0)
    np.testing.assert_allclose(d.fractions, [0, 0.75, 1.0])
    np.testing.assert_allclose(d.scores[0], sigmoid([10, 1, 0]), rtol=1e-6)
    # top 50% only: two pixels, x axis normalised to the budget
    d = deletion_curve(MODEL, v, x, sal, t, baseline="zeros", pixels_per_step=1, fraction=0.5)
    np.testing.assert_allclose(d.fractions, [0, 0.5, 1.0])
    np.testing.assert_allclose(d.scores[0], sigmoid([10, 8, 5]), rtol=1e-6)
    # a constant map removes pixels in row-major order
    d = deletion_curve(MODEL, v, x, jnp.ones_like(sal), t, baseline="zeros", pixels_per_step=1,
                       fraction=1.0)
    np.testing.assert_allclose(d.scores[0], sigmoid([10, 9, 7, 4, 0]), rtol=1e-6)


def test_callable_target_batch_and_jit():
    x, v, sal = _two_by_two()
    x2 = jnp.concatenate([x, 2 * x])
    sal2 = jnp.concatenate([sal, -sal])  # second image: order 1, 4, 3, 2
    fn = jax.jit(functools.partial(deletion_curve, MODEL, baseline="zeros", pixels_per_step=1,
                                   fraction=1.0, steps_per_batch=2))  # 5 steps, uneven batches
    res = fn(v, x2, sal2, jnp.array([0, 1]))
    np.testing.assert_allclose(res.scores[0], sigmoid([10, 8, 5, 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(res.scores[1], sigmoid([-20, -18, -10, -4, 0]), rtol=1e-6)
    # a callable target returns the score itself (no sigmoid): here the raw class-0 logit
    res = deletion_curve(MODEL, v, x, sal, lambda logits: logits[:, 0], baseline="zeros",
                         pixels_per_step=1, fraction=1.0)
    np.testing.assert_allclose(res.scores[0], [10, 8, 5, 1, 0], rtol=1e-6)


def test_gaussian_blur_matches_scipy_and_is_the_default_baseline():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 12, 2)).astype(np.float32)
    for sigma in (1.5, 10.0):  # 10: the kernel (radius 40) is wider than the image
        ref = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")
        np.testing.assert_allclose(gaussian_blur(x, sigma), ref, atol=1e-5)
    np.testing.assert_array_equal(gaussian_blur(x, 0.0), x)

    v = {"w": jnp.asarray(rng.normal(size=(16, 12, 2, 3)).astype(np.float32)),
         "b": jnp.zeros(3)}
    sal = jnp.asarray(rng.random((2, 16, 12)))
    t = jnp.array([2, 0])
    d = deletion_curve(MODEL, v, x, sal, t, sigma=3.0, pixels_per_step=8, fraction=1.0)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 3, 3, 0), mode="reflect")
    logits_full = np.einsum("bhwc,hwck->bk", x, v["w"])
    logits_blur = np.einsum("bhwc,hwck->bk", blurred, v["w"])
    want_first = sigmoid(logits_full[[0, 1], [2, 0]])
    want_last = sigmoid(logits_blur[[0, 1], [2, 0]])
    np.testing.assert_allclose(d.scores[:, 0], want_first, rtol=1e-5)
    np.testing.assert_allclose(d.scores[:, -1], want_last, rtol=1e-4)
    i = insertion_curve(MODEL, v, x, sal, t, sigma=3.0, pixels_per_step=8, fraction=1.0)
    np.testing.assert_allclose(i.scores[:, 0], want_last, rtol=1e-4)
    np.testing.assert_allclose(i.scores[:, -1], want_first, rtol=1e-5)


def test_faithful_map_beats_its_reverse():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((2, 8, 8, 1)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(8, 8, 1, 1)).astype(np.float32))
    v = {"w": w, "b": jnp.zeros(1)}
    sal = (x * w[..., 0])[..., 0]  # gradient x input
    t = jnp.zeros(2, int)
    kw = dict(baseline="zeros", pixels_per_step=4, fraction=1.0)
    assert np.all(deletion_auc(MODEL, v, x, sal, t, **kw)
                  < deletion_auc(MODEL, v, x, -sal, t, **kw))
    assert np.all(insertion_auc(MODEL, v, x, sal, t, **kw)
                  > insertion_auc(MODEL, v, x, -sal, t, **kw))


def test_perturbation_rejects_bad_input():
    x, v, sal = _two_by_two()
    with pytest.raises(ValueError, match="upsample"):
        deletion_curve(MODEL, v, x, sal[:, :1], jnp.array([0]))
    with pytest.raises(ValueError, match="integer class indices"):
        deletion_curve(MODEL, v, x, sal, jnp.array([0.5]))
    with pytest.raises(ValueError, match="fraction"):
        deletion_curve(MODEL, v, x, sal, jnp.array([0]), fraction=0.0)
    with pytest.raises(ValueError, match="baseline"):
        deletion_curve(MODEL, v, x, sal, jnp.array([0]), baseline="noise")


# --------------------------------------------------------------------------- sensitivity-N
def test_sensitivity_n_grid():
    g = sensitivity_n_values(224 * 224)
    assert len(g) == 50 and g[0] == 1 and g[-1] == 224 * 224
    assert np.all(np.diff(g) >= 0)
    assert list(sensitivity_n_values(64, 7)) == [1, 2, 4, 8, 16, 32, 64]


def test_sensitivity_n_is_one_for_gradient_x_input_on_a_linear_model():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 2)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(8, 8, 2, 3)).astype(np.float32))
    v = {"w": w, "b": jnp.ones(3)}
    t = jnp.array([1, 2])
    sal = jnp.einsum("bhwc,hwcb->bhw", x, w[..., t])  # exact attribution of each target
    res = sensitivity_n(MODEL, v, x, sal, t, key=jax.random.key(0), num_masks=10,
                        masks_per_batch=128)
    assert res.correlation.shape == (2, 50)
    full = res.n_values == 64
    np.testing.assert_allclose(res.correlation[:, ~full], 1.0, atol=1e-4)
    np.testing.assert_array_equal(res.correlation[:, full], 0.0)  # one possible mask: NaN -> 0
    # a map unrelated to the model correlates far less, and the key fixes the masks
    noise = jnp.asarray(rng.normal(size=(2, 8, 8)).astype(np.float32))
    fn = jax.jit(lambda key: sensitivity_n(MODEL, v, x, noise, t, key=key, n_values=[8, 16])
                 .correlation)
    c1, c2, c3 = (fn(jax.random.key(k)) for k in (0, 0, 1))
    np.testing.assert_array_equal(c1, c2)
    assert not np.allclose(c1, c3)
    assert np.all(np.abs(c1) < 0.95)


def test_sensitivity_n_masks_hold_exactly_n_pixels():
    # x = 1, w = 1, saliency = 1: attribution = drop = number of masked pixels. Masks of a
    # varying size would correlate perfectly; masks of exactly n pixels give constant vectors,
    # an undefined correlation, hence 0 everywhere.
    x = jnp.ones((1, 6, 6, 1))
    v = {"w": jnp.ones((6, 6, 1, 1)), "b": jnp.zeros(1)}
    res = sensitivity_n(MODEL, v, x, jnp.ones((1, 6, 6)), jnp.array([0]), key=jax.random.key(3),
                        num_n=10, num_masks=5, masks_per_batch=7)
    np.testing.assert_array_equal(res.correlation, 0.0)


def test_sensitivity_n_rejects_bad_input():
    x = jnp.ones((1, 4, 4, 1))
    v = {"w": jnp.ones((4, 4, 1, 1)), "b": jnp.zeros(1)}
    with pytest.raises(ValueError, match="n_values"):
        sensitivity_n(MODEL, v, x, jnp.ones((1, 4, 4)), jnp.array([0]), key=jax.random.key(0),
                      n_values=[0, 3])
    with pytest.raises(ValueError, match="num_masks"):
        sensitivity_n(MODEL, v, x, jnp.ones((1, 4, 4)), jnp.array([0]), key=jax.random.key(0),
                      num_masks=1)


def test_correlation_of_vectors_constant_up_to_rounding_is_undefined():
    """Sums of a spatially constant map over different masks of n pixels differ only in float
    rounding; their correlation with anything is undefined (NaN, counted 0 by sensitivity-N),
    not +-1 from the rounding. A real spread, however small in absolute terms, still counts."""
    from cxr_jax.metrics.faithfulness import _pearson_last_axis

    drop = jnp.array([[0.2, -0.3, 0.1]])
    rounded = jnp.array([[38.701767, 38.70177, 38.701767]], jnp.float32)
    assert np.isnan(np.asarray(_pearson_last_axis(rounded, drop))).all()
    assert np.isnan(np.asarray(_pearson_last_axis(drop, rounded))).all()
    small = jnp.array([[1e-6, 3e-6, 2e-6]])
    np.testing.assert_allclose(np.asarray(_pearson_last_axis(small, drop * -1)),
                               np.corrcoef([1, 3, 2], [-0.2, 0.3, -0.1])[0, 1], rtol=1e-5)
