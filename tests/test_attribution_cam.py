"""CAM family and the multi-target helper: known answers on an analytic region model, Grad-CAM++
numerics, Guided Grad-CAM composition, layers, vmap/jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cxr_jax.attribution as attribution
import cxr_jax.models as models
from cxr_jax.attribution import cam
from cxr_jax.attribution.common import layer_and_grad, layers_and_grads, score_fn
from cxr_jax.attribution.multi import explain_multi
from cxr_jax.attribution.postprocess import upsample
from analytic import Pipeline, numpy_init


S = 32  # image size; the feature map is 4x4 (8x8 cells)


def _features(v, x, relu):
    """Two channels: the 8x8 cell means of the image, restricted to the left / right half."""
    cells = x[..., 0].reshape(x.shape[0], 4, 8, 4, 8).mean(axis=(2, 4))  # [B, 4, 4]
    left = jnp.array([1.0, 1.0, 0.0, 0.0])
    return relu(jnp.stack([cells * left, cells * (1.0 - left)], axis=-1))  # [B, 4, 4, 2]


def region_model():
    """Class 0 sees only the left half, class 1 only the right half, class 2 nothing (constant)."""
    return Pipeline("region", [
        ("features", _features),
        ("pool", lambda v, h, r: h.mean(axis=(1, 2))),
        ("head", lambda v, h, r: jnp.stack([3.0 * h[:, 0], 2.0 * h[:, 1],
                                            0.0 * h[:, 0] + 1.0], axis=-1)),
    ], 3, 1, explain="features")


def two_blob_images():
    x = np.zeros((2, S, S, 1), np.float32)
    x[:, 8:16, 0:8] = 1.0     # a blob in cell (1, 0): left half
    x[:, 16:24, 24:32] = 2.0  # a brighter blob in cell (2, 3): right half
    x[1] += 0.1
    return jnp.asarray(x)


def test_gradcam_known_answer_and_region():
    m, x = region_model(), two_blob_images()
    a = _features(None, x, jax.nn.relu)
    for k, scale, ch, cell in ((0, 3.0, 0, (1, 0)), (1, 2.0, 1, (2, 3))):
        out = attribution.get("gradcam")(m, {}, x, jnp.array([k, k]))
        # g = scale / 16 on channel ch everywhere, so w = (scale / 16) e_ch and cam = w A_ch.
        expected = upsample(scale / 16.0 * a[..., ch], (S, S))
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
        for b in range(2):
            i, j = np.unravel_index(int(jnp.argmax(out[b])), (S, S))
            assert 8 * cell[0] <= i < 8 * cell[0] + 8 and 8 * cell[1] <= j < 8 * cell[1] + 8
        # the class ignores the other half: its map is zero there (bar bilinear spill).
        other = out[:, :, 20:] if k == 0 else out[:, :, :12]
        assert float(jnp.abs(other).max()) == 0.0


def test_gradcam_plus_plus_known_answer():
    m, x = region_model(), two_blob_images()
    a = np.asarray(_features(None, x, jax.nn.relu))
    out = attribution.get("gradcam_plus_plus")(m, {}, x, jnp.array([0, 1]))
    for b, (k, scale) in enumerate(((0, 3.0), (1, 2.0))):
        g = scale / 16.0
        s = a[b, :, :, k].sum()
        alpha = g * g / (2 * g * g + s * g ** 3 + 1e-6)
        w = 16 * alpha * g
        expected = upsample(jnp.asarray(w * a[b, :, :, k]), (S, S))
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-7)


def test_gradcam_plus_plus_weights_match_numpy_and_guards():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    g = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    g[0, 0, 0, :] = 0.0
    s = a.sum(axis=(1, 2), keepdims=True)
    alpha = g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-6)
    alpha = np.where(g != 0, alpha, 0.0)
    expected = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    got = cam.gradcam_plus_plus_weights(jnp.asarray(a), jnp.asarray(g))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # A vanishing denominator (2 g^2 + S g^3 = 0 with eps = 0) gives 0, not Inf/NaN.
    a1 = jnp.full((1, 1, 2, 1), 1.0)  # S = 2
    g1 = jnp.full((1, 1, 2, 1), -1.0)  # 2 - 2 = 0
    assert float(cam.gradcam_plus_plus_weights(a1, g1, eps=0.0)[0, 0]) == 0.0
    zero = cam.gradcam_plus_plus_weights(jnp.asarray(a), jnp.zeros_like(jnp.asarray(g)))
    np.testing.assert_array_equal(zero, 0.0)


def test_zero_gradient_and_constant_image_are_nan_free():
    m = region_model()
    x = two_blob_images()
    t = jnp.array([2, 2])  # class 2 ignores the features: g = 0 exactly
    for name in ("gradcam", "gradcam_plus_plus"):
        out = attribution.get(name)(m, {}, x, t)
        np.testing.assert_array_equal(out, 0.0)
    const = jnp.full((2, S, S, 1), 0.7)
    for name in ("gradcam", "gradcam_plus_plus", "guided_gradcam"):
        out = attribution.get(name)(m, {}, const, jnp.array([0, 1]))
        assert np.all(np.isfinite(out)), name


def test_callable_target_and_layer_choice():
    m, x = region_model(), two_blob_images()
    diff = attribution.get("gradcam")(m, {}, x, lambda logits: logits[:, 0] + logits[:, 1],
                                      layer="features")
    a = _features(None, x, jax.nn.relu)
    expected = upsample(3.0 / 16 * a[..., 0] + 2.0 / 16 * a[..., 1], (S, S))
    np.testing.assert_allclose(diff, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="Unknown layer"):
        attribution.get("gradcam")(m, {}, x, jnp.array([0, 0]), layer="conv9")
    with pytest.raises(ValueError, match="spatial map"):
        attribution.get("gradcam")(m, {}, x, jnp.array([0, 0]), layer="pool")


@pytest.fixture(scope="module")
def tiny():
    m = models.get("resnet_tiny", num_classes=4)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1))
    return m, numpy_init(m, x), x


def test_guided_gradcam_is_gradcam_times_guided_backprop(tiny):
    m, v, x = tiny
    t = jnp.array([1, 3])

    @jax.jit
    def maps(v, x):
        get = attribution.get
        return (get("guided_gradcam")(m, v, x, t, layer="layer3"),
                get("gradcam")(m, v, x, t, layer="layer3"),
                get("guided_backprop")(m, v, x, t))

    gg, gc, gb = maps(v, x)
    np.testing.assert_allclose(gg, gc * gb, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(gg).sum()) > 0


def test_layer_grads_match_edit_gradient_and_multi_layer_pass(tiny):
    m, v, x = tiny
    score = score_fn(m, jnp.array([0, 2]), 2)
    layers = ("layer2.0", "layer4", "layer3.0")

    @jax.jit
    def grads(v, x):
        one = {name: layer_and_grad(m, v, x, score, name)[:2] for name in layers}
        acts, gs, _ = layers_and_grads(m, v, x, score, layers)
        # the definition: gradient of an additive edit at zero, through the whole model
        shapes = jax.eval_shape(lambda x: m.apply(v, x, taps=("layer3.0",))[1], x)
        d0 = jnp.zeros(shapes["layer3.0"].shape)
        by_edit = jax.grad(lambda d: jnp.sum(score(m.apply(
            v, x, edits={"layer3.0": lambda a: a + d}))))(d0)
        return one, acts, gs, by_edit

    one, acts, gs, by_edit = grads(v, x)
    for name in layers:
        np.testing.assert_allclose(acts[name], one[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gs[name], one[name][1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gs["layer3.0"], by_edit, rtol=1e-4, atol=1e-6)


def test_vmap_equals_batched_and_jit_does_not_recompile(tiny):
    m, v, x = tiny
    traces = []

    @jax.jit
    def explain(v, x, t):
        traces.append(1)
        return attribution.get("gradcam_plus_plus")(m, v, x, t)

    t = jnp.array([0, 3])
    batched = explain(v, x, t)
    explain(v, x + 1.0, jnp.array([1, 1]))
    assert len(traces) == 1
    per = jax.jit(jax.vmap(lambda xi, ti: attribution.get("gradcam_plus_plus")(
        m, v, xi[None], ti[None])[0]))(x, t)
    np.testing.assert_allclose(per, batched, rtol=1e-4, atol=1e-6)


def test_default_layers():
    dn = models.get("densenet_tiny", num_classes=2)
    rn = models.get("resnet_tiny", num_classes=2)
    from cxr_jax.attribution.common import resolve_layer
    assert resolve_layer(dn, None) == "relu5"
    assert resolve_layer(rn, None) == "layer4"
    assert resolve_layer(rn, "layer4.0") == "layer4.0"


def test_densenet_gradcam_is_computed_on_rectified_features():
    """Grad-CAM's default DenseNet layer is relu5 = ReLU(norm5): the map equals the formula with
    A = ReLU(norm5) (what pytorch-grad-cam computes at features.norm5, whose stored activation
    torchvision's in-place ReLU overwrites) and differs from the map on norm5 itself."""
    model = models.get("densenet_tiny", num_classes=2)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
    v = model.init(jax.random.key(1), x[:1])
    # A read-out that sums the pooled features (class 1: with weight 2), so the maps are not zero
    kernel = jnp.ones_like(v["params"]["classifier"]["kernel"]) * jnp.array([1.0, 2.0])
    v = {**v, "params": {**v["params"], "classifier": {**v["params"]["classifier"],
                                                        "kernel": kernel}}}
    t = jnp.array([0, 1])
    cam = np.asarray(attribution.get("gradcam")(model, v, x, t))
    assert cam.max() > 0
    _, acts = model.apply(v, x, taps=("norm5",))
    a = jax.nn.relu(acts["norm5"])
    g = jax.grad(lambda a: model.apply(v, a, start="relu5")[jnp.arange(2), t].sum())(a)
    want = upsample(jax.nn.relu(jnp.einsum("bhwc,bc->bhw", a, g.mean((1, 2)))), (64, 64))
    np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-7)
    on_norm5 = np.asarray(attribution.get("gradcam")(model, v, x, t, layer="norm5"))
    assert not np.allclose(cam, on_norm5, rtol=1e-3, atol=1e-6)


def test_explain_multi_equals_per_target_calls():
    m, x = region_model(), two_blob_images()
    targets = jnp.array([[0, 1, 2], [1, 1, 0]])
    for name in ("gradcam", "gradcam_plus_plus", "gradient"):
        multi = explain_multi(name, m, {}, x, targets)
        assert multi.shape == (2, 3, S, S)
        for k in range(3):
            single = attribution.get(name)(m, {}, x, targets[:, k])
            np.testing.assert_allclose(multi[:, k], single, rtol=1e-6, atol=1e-7)
    jitted = jax.jit(lambda x, t: explain_multi("gradcam", m, {}, x, t))(x, targets)
    np.testing.assert_allclose(jitted, explain_multi("gradcam", m, {}, x, targets), rtol=1e-6)


def test_explain_multi_errors():
    m, x = region_model(), two_blob_images()
    with pytest.raises(ValueError, match="Unknown attribution method"):
        explain_multi("gradcamm", m, {}, x, jnp.array([[0], [1]]))
    with pytest.raises(ValueError, match="out of range"):
        explain_multi("gradcam", m, {}, x, jnp.array([[0, 3], [1, 0]]))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        explain_multi("gradcam", m, {}, x, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        explain_multi("gradcam", m, {}, x, jnp.array([[0.0], [1.0]]))


def test_bad_inputs():
    m, x = region_model(), two_blob_images()
    fn = attribution.get("gradcam")
    with pytest.raises(ValueError, match="out of range"):
        fn(m, {}, x, jnp.array([0, 5]))
    with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
        fn(m, {}, x[..., 0], jnp.array([0, 0]))
    with pytest.raises(ValueError, match="one target per image"):
        fn(m, {}, x, jnp.array([[0, 0]]))
