"""Gradient family: known answers on analytic models, IG completeness, guided rule, SmoothGrad
keys, vmap/jit behaviour and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cxr_jax.attribution as attribution
import cxr_jax.models as models
from cxr_jax.attribution import gradients
from cxr_jax.attribution.common import chunked_reduce
from analytic import Pipeline, numpy_init


H = W = 8
C_IN = 2
K = 3


def linear_model():
    """logits[b, k] = sum_{ijc} x[b,i,j,c] w[i,j,c,k] + bias[k]."""
    return Pipeline("linear", [
        ("features", lambda v, h, r: h),
        ("flat", lambda v, h, r: h.reshape(h.shape[0], -1)),
        ("head", lambda v, h, r: h @ v["w"].reshape(-1, K) + v["b"]),
    ], K, C_IN)


def linear_setup():
    rng = np.random.default_rng(0)
    v = {"w": jnp.asarray(rng.normal(size=(H, W, C_IN, K)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(2, H, W, C_IN)), jnp.float32)
    return linear_model(), v, x


def test_linear_gradient_and_input_x_gradient_exact():
    m, v, x = linear_setup()
    t = jnp.array([2, 0])
    w = np.asarray(v["w"])
    g_map = attribution.get("gradient")(m, v, x, t)
    ixg = attribution.get("input_x_gradient")(m, v, x, t)
    for b, k in enumerate([2, 0]):
        np.testing.assert_allclose(g_map[b], np.abs(w[..., k]).max(-1), rtol=1e-6)
        np.testing.assert_allclose(ixg[b], (np.asarray(x[b]) * w[..., k]).sum(-1), rtol=1e-5,
                                   atol=1e-6)
    s_abs = attribution.get("gradient")(m, v, x, t, reduce="sum_abs")
    np.testing.assert_allclose(s_abs[0], np.abs(w[..., 2]).sum(-1), rtol=1e-6)


def test_callable_target_is_differentiated():
    m, v, x = linear_setup()
    g = attribution.get("gradient")(m, v, x, lambda logits: logits[:, 0] - logits[:, 1],
                                    reduce="sum")
    w = np.asarray(v["w"])
    np.testing.assert_allclose(g[1], (w[..., 0] - w[..., 1]).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["left", "right", "midpoint", "trapezoid"])
def test_integrated_gradients_linear_exact(rule):
    m, v, x = linear_setup()
    t = jnp.array([1, 2])
    base = 0.5 * jnp.ones_like(x)
    ig = attribution.get("integrated_gradients")(m, v, x, t, steps=7, rule=rule, chunk=3,
                                                 baseline=base)
    w = np.asarray(v["w"])
    for b, k in enumerate([1, 2]):
        expected = ((np.asarray(x[b]) - 0.5) * w[..., k]).sum(-1)
        np.testing.assert_allclose(ig[b], expected, rtol=1e-5, atol=1e-5)


def test_ig_from_black_points_at_a_brightening_in_a_dark_region_where_mid_grey_does_not():
    """Why the studies' configs give IG the black baseline: a finding that raises the score as
    a dark lung region brightens (weight 1 there) beside a bright, weakly weighted mediastinum
    (0.2). From b = 0 (mid-grey in [-1024, 1024]) the region's x - b is negative, its map value
    -600, and the peak lands outside it; from b = -1024 every x - b >= 0 and it lands inside."""
    m = Pipeline("linear1", [
        ("features", lambda v, h, r: h),
        ("flat", lambda v, h, r: h.reshape(h.shape[0], -1)),
        ("head", lambda v, h, r: h @ v["w"].reshape(-1, 1)),
    ], 1, 1)
    region = np.zeros((H, W, 1), bool)
    region[2:4, 2:4] = True
    v = {"w": jnp.asarray(np.where(region, 1.0, 0.2)[..., None], jnp.float32)}
    x = jnp.asarray(np.where(region, -600.0, 900.0)[None], jnp.float32)
    t = jnp.array([0])
    ig = attribution.get("integrated_gradients")
    for b, inside in ((0.0, False), (-1024.0, True)):
        sal = np.asarray(ig(m, v, x, t, steps=4, baseline=b))[0]
        np.testing.assert_allclose(sal, np.where(region[..., 0], -600.0 - b, (900.0 - b) * 0.2),
                                   rtol=1e-5)
        peak = np.unravel_index(np.argmax(sal), sal.shape)
        assert bool(region[peak + (0,)]) is inside, (b, peak)


def test_riemann_nodes():
    a, w = gradients.riemann_nodes("midpoint", 4)
    np.testing.assert_allclose(a, [0.125, 0.375, 0.625, 0.875])
    a, w = gradients.riemann_nodes("right", 4)
    np.testing.assert_allclose(a, [0.25, 0.5, 0.75, 1.0])
    a, w = gradients.riemann_nodes("trapezoid", 2)
    np.testing.assert_allclose(a, [0, 0.5, 1])
    np.testing.assert_allclose(w, [0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="Riemann rule"):
        gradients.riemann_nodes("simpson", 4)
    with pytest.raises(ValueError, match="steps"):
        gradients.riemann_nodes("left", 0)


def test_chunked_reduce_matches_plain_sum_with_remainder():
    xs = jnp.arange(7.0)
    f = lambda a: {"sq": jnp.sum(a ** 2), "v": jnp.stack([jnp.sum(a), a.shape[0] * 1.0])}
    for chunk in (1, 3, 7, 50):
        out = chunked_reduce(f, xs, chunk)
        assert float(out["sq"]) == pytest.approx(91.0)
        np.testing.assert_allclose(out["v"], [21.0, 7.0])
    with pytest.raises(ValueError, match="chunk"):
        chunked_reduce(f, xs, 0)


@pytest.fixture(scope="module")
def tiny():
    m = models.get("resnet_tiny", num_classes=3)
    x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 1))
    return m, numpy_init(m, x), x


def test_integrated_gradients_completeness_tiny_model(tiny):
    m, v, x = tiny
    t = jnp.array([0, 1, 2])
    ig = jax.jit(lambda v, x: attribution.get("integrated_gradients")(m, v, x, t))(v, x)
    logits_x = m.apply(v, x)
    logits_b = m.apply(v, jnp.zeros_like(x))
    delta = np.asarray(logits_x[jnp.arange(3), t] - logits_b[jnp.arange(3), t])
    assert np.all(np.abs(delta) > 1e-2)  # a meaningful difference to check against
    np.testing.assert_allclose(np.asarray(ig).sum((1, 2)), delta, rtol=0.01)


def test_integrated_gradients_equals_the_riemann_sum_for_every_chunking(tiny):
    # Path points are folded into the batch in chunks (with a remainder for chunk=3): every
    # chunking must give sum_k w_k (x - b) dy/dx(b + a_k (x - b)) computed point by point.
    m, v, x = tiny
    t = jnp.array([0, 1, 2])
    base = 0.3 * x[::-1]
    alphas, weights = gradients.riemann_nodes("trapezoid", 6)
    score = lambda logits: logits[jnp.arange(3), t]
    expected = sum(w * jax.grad(lambda p: jnp.sum(score(m.apply(v, p))))(base + a * (x - base))
                   for a, w in zip(alphas, weights))
    expected = np.asarray(jnp.sum((x - base) * expected, axis=-1))
    for chunk in (1, 3, 7):
        ig = attribution.get("integrated_gradients")(m, v, x, t, steps=6, rule="trapezoid",
                                                     baseline=base, chunk=chunk)
        np.testing.assert_allclose(ig, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_guided_backprop_rule_on_analytic_relu_network():
    rng = np.random.default_rng(1)
    d, j = 4 * 4, 6
    v = {"w1": jnp.asarray(rng.normal(size=(d, j)), jnp.float32),
         "w2": jnp.asarray(rng.normal(size=(j, 2)), jnp.float32)}
    m = Pipeline("mlp", [
        ("hidden", lambda v, h, r: h.reshape(h.shape[0], -1) @ v["w1"]),
        ("act", lambda v, h, r: r(h)),
        ("head", lambda v, h, r: h @ v["w2"]),
    ], 2, 1)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
    t = jnp.array([0, 1])
    guided = attribution.get("guided_backprop")(m, v, x, t, reduce="sum")
    plain = attribution.get("gradient")(m, v, x, t, reduce="sum")
    w1, w2 = np.asarray(v["w1"]), np.asarray(v["w2"])
    for b, k in enumerate([0, 1]):
        pre = np.asarray(x[b]).reshape(-1) @ w1
        up = w2[:, k]
        expected_guided = w1 @ (up * (pre > 0) * (up > 0))
        expected_plain = w1 @ (up * (pre > 0))
        np.testing.assert_allclose(guided[b].reshape(-1), expected_guided, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(plain[b].reshape(-1), expected_plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(guided, plain)  # the rule actually changed something here


def test_guided_backprop_needs_guided_variant():
    m, v, x = linear_setup()

    class NoGuided:
        name, stages, num_classes, in_channels = m.name, m.stages, m.num_classes, m.in_channels
        apply = staticmethod(m.apply)

    with pytest.raises(ValueError, match="guided"):
        attribution.get("guided_backprop")(NoGuided(), v, x, jnp.array([0, 1]))


def test_smoothgrad_linear_equals_gradient_and_key_behaviour():
    m, v, x = linear_setup()
    t = jnp.array([0, 1])

    compiled = {}

    def sg(key, **hp):  # one compiled program per hyperparameter set, keys are arguments
        name = tuple(sorted(hp.items()))
        if name not in compiled:
            compiled[name] = jax.jit(lambda v, x, key: attribution.get("smoothgrad")(
                m, v, x, t, key=key, **hp))
        return compiled[name](v, x, key)

    # A linear model's gradient does not depend on x: SmoothGrad of it is the gradient itself.
    out = sg(jax.random.key(0), n=5, chunk=2)
    np.testing.assert_allclose(out, attribution.get("gradient")(m, v, x, t), rtol=1e-5)
    # input x gradient is linear in x: the noise must show up, deterministically per key.
    a = sg(jax.random.key(0), method="input_x_gradient", n=5, chunk=2)
    a2 = sg(jax.random.key(0), method="input_x_gradient", n=5, chunk=5)
    b = sg(jax.random.key(1), method="input_x_gradient", n=5, chunk=2)
    np.testing.assert_allclose(a, a2, rtol=1e-5, atol=1e-6)  # chunking does not change keys
    assert not np.allclose(a, b)
    # sigma = 0: exactly the inner method.
    z = sg(jax.random.key(3), method="input_x_gradient", n=3, sigma=0.0)
    np.testing.assert_allclose(z, attribution.get("input_x_gradient")(m, v, x, t), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="key"):
        attribution.get("smoothgrad")(m, v, x, t)


def test_smoothgrad_noise_matches_hand_computation():
    m, v, x = linear_setup()
    t = jnp.array([0, 1])
    key, n, sigma = jax.random.key(7), 4, 0.2
    out = jax.jit(lambda v, x: attribution.get("smoothgrad")(
        m, v, x, t, key=key, method="input_x_gradient", n=n, sigma=sigma))(v, x)
    # For input x gradient on a linear model: mean_i sum_c (x + eps_i) w = sum_c (x + mean eps) w.
    span = np.asarray(x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    eps = np.stack([np.asarray(jax.random.normal(jax.random.split(k)[0], x.shape))
                    for k in jax.random.split(key, n)]).mean(0) * sigma * span
    w = np.asarray(v["w"])
    for b, k in enumerate([0, 1]):
        expected = ((np.asarray(x[b]) + eps[b]) * w[..., k]).sum(-1)
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)


def test_smoothgrad_folded_equals_sample_by_sample_mean(tiny):
    # A nonlinear model: the n noisy copies folded into one batch per pass must give the mean of
    # the inner method over each noisy copy on its own, whatever the chunking, and a callable
    # target must see one [B, K] block of logits per copy.
    m, v, x = tiny
    t = jnp.array([0, 2, 1])
    key, n, sigma = jax.random.key(3), 5, 0.1
    span = x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True)
    grad = jax.jit(lambda v, x: attribution.get("gradient")(m, v, x, t))
    expected = np.mean([grad(v, x + sigma * span * jax.random.normal(jax.random.split(k)[0],
                                                                     x.shape))
                        for k in jax.random.split(key, n)], axis=0)
    for chunk in (1, 2, 5):
        out = jax.jit(lambda v, x: attribution.get("smoothgrad")(
            m, v, x, t, key=key, n=n, sigma=sigma, chunk=chunk))(v, x)
        np.testing.assert_allclose(out, expected, rtol=2e-4, atol=1e-6)
    pick = jnp.asarray(t)
    by_callable = jax.jit(lambda v, x: attribution.get("smoothgrad")(
        m, v, x, lambda logits: jnp.take_along_axis(logits, pick[:, None], 1)[:, 0],
        key=key, n=n, sigma=sigma, chunk=2))(v, x)
    np.testing.assert_allclose(by_callable, expected, rtol=2e-4, atol=1e-6)


def test_make_smoothgrad_leading_key():
    m, v, x = linear_setup()
    t = jnp.array([2, 2])
    smoothed = gradients.make_smoothgrad(attribution.get("input_x_gradient"), n=3)
    direct = jax.jit(lambda v, x: attribution.get("smoothgrad")(
        m, v, x, t, key=jax.random.key(5), method="input_x_gradient", n=3))(v, x)
    wrapped = jax.jit(lambda key, v, x: smoothed(key, m, v, x, t))(jax.random.key(5), v, x)
    np.testing.assert_allclose(wrapped, direct, rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        gradients.make_smoothgrad(attribution.get("gradient"), n=0)


def test_vmap_over_batch_equals_batched_call(tiny):
    m, v, x = tiny
    t = jnp.array([0, 2, 1])
    fn = attribution.get("integrated_gradients")  # gradients of a few path points
    batched = jax.jit(lambda v, x, t: fn(m, v, x, t, steps=3))(v, x, t)
    per = jax.jit(jax.vmap(lambda xi, ti: fn(m, v, xi[None], ti[None], steps=3)[0]))(x, t)
    np.testing.assert_allclose(per, batched, rtol=1e-4, atol=1e-6)


def test_jit_does_not_recompile(tiny):
    m, v, x = tiny
    traces = []

    @jax.jit
    def explain(v, x, t):
        traces.append(1)
        return attribution.get("gradient")(m, v, x, t)

    first = explain(v, x, jnp.array([0, 1, 2]))
    second = explain(v, x * 0.5, jnp.array([2, 1, 0]))
    assert len(traces) == 1
    assert first.shape == second.shape == (3, 32, 32)
    assert np.all(np.isfinite(second))


def test_constant_image_gives_finite_maps(tiny):
    m, v, _ = tiny
    x = jnp.full((2, 32, 32, 1), 0.3)
    t = jnp.array([0, 1])

    @jax.jit
    def maps(v, x):
        out = {name: attribution.get(name)(m, v, x, t)
               for name in ("gradient", "input_x_gradient", "guided_backprop")}
        # constant image: zero intensity range, so zero noise; must not divide by it
        out["smoothgrad"] = attribution.get("smoothgrad")(m, v, x, t, key=jax.random.key(0),
                                                          n=2)
        return out

    for name, out in maps(v, x).items():
        assert out.shape == (2, 32, 32)
        assert np.all(np.isfinite(out)), name


def test_bad_inputs_raise_value_error():
    m, v, x = linear_setup()
    fn = attribution.get("gradient")
    with pytest.raises(ValueError, match="Unknown attribution method"):
        attribution.get("gradients_typo")
    with pytest.raises(ValueError, match="out of range"):
        fn(m, v, x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        fn(m, v, x, jnp.array([-1, 0]))
    with pytest.raises(ValueError, match="one target per image"):
        fn(m, v, x, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        fn(m, v, x, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[B, H, W, 2\]"):
        fn(m, v, x[0], jnp.array([0]))
    with pytest.raises(ValueError, match=r"\[B, H, W, 2\]"):
        fn(m, v, x[..., :1], jnp.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        fn(m, v, x.at[1, 0, 0, 0].set(jnp.nan), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="channel reduction"):
        fn(m, v, x, jnp.array([0, 1]), reduce="mean")
    with pytest.raises(ValueError, match="broadcast"):
        attribution.get("integrated_gradients")(m, v, x, jnp.array([0, 1]),
                                                baseline=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="Unknown attribution method"):
        attribution.get("smoothgrad")(m, v, x, jnp.array([0, 1]), key=jax.random.key(0),
                                      method="nope")
