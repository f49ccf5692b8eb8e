"""GAN explanations (cxr_jax.generative.explain) on analytic generators and classifiers.

The generator is G(z_a, z_p) = tanh(z_a Wa + z_p Wp) reshaped to 8x8x1 (its latents are
identifiable: [Wa; Wp] has full row rank and tanh is injective), the classifier a fixed linear
function of the pixels in classifier units (x_xrv = 1024 x_gan), so every answer is known.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.generative.explain import (XRV_SCALE, as_attribution, difference_map, interpolate,
                                        invert, latent_integrated_gradients, response_curve)

S, A, P, K = 8, 3, 2, 3
_rng = np.random.default_rng(0)
WA = jnp.asarray(_rng.normal(size=(A, S * S)) * 0.4, jnp.float32)
WP = jnp.asarray(_rng.normal(size=(P, S * S)) * 0.4, jnp.float32)
WC = jnp.asarray(_rng.normal(size=(S * S, K)) * 0.5, jnp.float32)
ZA = jnp.asarray(_rng.normal(size=(3, A)), jnp.float32)
ZP = jnp.asarray(_rng.normal(size=(3, P)), jnp.float32)
T = jnp.array([0, 0, 2])


def gen(za, zp):
    return jnp.tanh(za @ WA + zp @ WP).reshape(-1, S, S, 1)


def clf(x):  # x in classifier units [-1024, 1024]
    return (x / XRV_SCALE).reshape(x.shape[0], -1) @ WC


def endpoints(classify, za, zp, t):
    p = response_curve(gen, classify, za, zp, jnp.array([0.0, 1.0]), t)
    return p[:, 0], p[:, 1]


class LinearModel:
    """The Model interface the adapter uses: apply(variables, x) -> logits, num_classes."""

    name, num_classes, in_channels = "linear", K, 1

    def apply(self, variables, x):
        return (x / XRV_SCALE).reshape(x.shape[0], -1) @ variables["w"]


# ----------------------------------------------------------------------------- latent IG
def test_latent_ig_completeness_and_convergence():
    p0, p1 = endpoints(clf, ZA, ZP, T)
    delta = np.asarray(p1 - p0)
    assert np.all(np.abs(delta) > 0.05)  # a path along which the probability really changes
    errors = {}
    for steps in (3, 11, 101):
        lig = jax.jit(functools.partial(latent_integrated_gradients, gen, clf, steps=steps,
                                        chunk=4))
        maps = lig(ZA, ZP, T)
        assert maps.shape == (3, S, S)
        errors[steps] = np.abs(np.asarray(maps.sum((1, 2))) - delta) / np.abs(delta)
    assert np.all(errors[101] < 0.02)
    assert np.all(errors[3] > errors[11]) and np.all(errors[11] > errors[101])
    # Second order: 10x more intervals, about 100x less error (a first-order rule gives 10x).
    assert np.all(errors[11] > 20 * errors[101])
    # Chunking only regroups the path points.
    other = latent_integrated_gradients(gen, clf, ZA, ZP, T, steps=11, chunk=3)
    ref = latent_integrated_gradients(gen, clf, ZA, ZP, T, steps=11, chunk=100)
    np.testing.assert_allclose(other, ref, atol=1e-6)


def test_latent_ig_keeps_the_given_target_when_the_argmax_changes():
    zp = jnp.array([[1.0, 0.5], [1.0, 0.5]], jnp.float32)
    za = ZA[:2] * 0.3
    w = (zp[0] @ WP)  # pixels that the pathology latent brightens
    s = lambda x: (x / XRV_SCALE).reshape(x.shape[0], -1) @ w  # noqa: E731
    s0, s1 = s(XRV_SCALE * gen(za, 0 * zp)), s(XRV_SCALE * gen(za, zp))
    assert s0.max() < s1.min()
    mid = (s0.max() + s1.min()) / 2

    def two_class(x):  # class 0 wins at alpha = 0, class 1 at alpha = 1
        d = 4.0 * (s(x) - mid)
        return jnp.stack([-d, d], axis=-1)

    assert np.all(np.argmax(two_class(XRV_SCALE * gen(za, 0 * zp)), -1) == 0)
    assert np.all(np.argmax(two_class(XRV_SCALE * gen(za, zp)), -1) == 1)
    lig = jax.jit(lambda t: latent_integrated_gradients(gen, two_class, za, zp, t))
    maps = {}
    for target in (0, 1):
        p0, p1 = endpoints(two_class, za, zp, target)
        maps[target] = lig(jnp.array([target, target]))
        np.testing.assert_allclose(maps[target].sum((1, 2)), p1 - p0, rtol=0.02)
    # p_0 = 1 - p_1 all along the path, so a fixed target gives exactly opposite maps (an argmax
    # re-picked per step would switch to class 1 halfway and give the same map for both).
    np.testing.assert_allclose(maps[0], -maps[1], atol=1e-6)
    assert np.all(np.asarray(maps[0].sum((1, 2))) < 0)


# ------------------------------------------------------------------ strip, curve, difference
def test_interpolation_endpoints_and_response_curve():
    alphas = jnp.array([0.0, 0.25, 0.5, 1.0])
    strip = interpolate(gen, ZA, ZP, alphas, chunk=3)  # 3 does not divide 4: padded chunk
    assert strip.shape == (3, 4, S, S, 1)
    np.testing.assert_allclose(strip[:, 0], gen(ZA, jnp.zeros_like(ZP)), atol=1e-6)
    np.testing.assert_allclose(strip[:, 2], gen(ZA, 0.5 * ZP), atol=1e-6)
    np.testing.assert_allclose(strip[:, -1], gen(ZA, ZP), atol=1e-6)
    np.testing.assert_allclose(interpolate(gen, ZA, ZP, alphas), strip, atol=1e-6)

    curve = jax.jit(lambda a: response_curve(gen, clf, ZA, ZP, a, T))(alphas)
    assert curve.shape == (3, 4)
    for j in range(4):
        logits = clf(XRV_SCALE * strip[:, j])
        expect = jax.nn.sigmoid(logits[jnp.arange(3), T])
        np.testing.assert_allclose(curve[:, j], expect, atol=1e-6)


def test_difference_map():
    np.testing.assert_array_equal(difference_map(gen, ZA, jnp.zeros_like(ZP)), 0.0)
    d = difference_map(gen, ZA, ZP)
    assert d.shape == (3, S, S)
    np.testing.assert_allclose(d, jnp.abs(gen(ZA, ZP) - gen(ZA, 0 * ZP))[..., 0], atol=1e-6)


# ------------------------------------------------------------------------------ inversion
def test_invert_defaults_are_the_released_settings():
    params = inspect.signature(invert).parameters
    assert params["steps"].default == 5000 and params["lr"].default == 0.01
    assert params["recon_weight"].default == 4.0 and params["prob_weight"].default == 1.0


def test_invert_recovers_the_latents_of_a_generated_image():
    x = gen(ZA, ZP)
    run = jax.jit(functools.partial(invert, gen, clf, z_anatomy_dim=A, z_pathology_dim=P,
                                    steps=500, lr=0.1))
    inv = run(x, T, key=jax.random.key(1))
    assert inv.z_anatomy.shape == (3, A) and inv.z_pathology.shape == (3, P)
    assert inv.reconstruction.shape == x.shape and inv.error.shape == (3,)
    assert inv.history.loss.shape == (500, 3) and inv.history.mse.shape == (500, 3)
    assert np.all(np.asarray(inv.error) < 1e-8)
    np.testing.assert_allclose(inv.z_anatomy, ZA, atol=1e-3)
    np.testing.assert_allclose(inv.z_pathology, ZP, atol=1e-3)
    assert np.all(inv.history.loss[-1] < inv.history.loss[0])


def test_invert_probability_term_matches_the_image_prediction():
    # With the reconstruction term off, the latents only have to reproduce the classifier's
    # target probability on the real image.
    x = gen(ZA, ZP)
    inv = invert(gen, clf, x, T, key=jax.random.key(2), z_anatomy_dim=A, z_pathology_dim=P,
                 steps=300, lr=0.05, recon_weight=0.0)
    pick = lambda im: jax.nn.sigmoid(clf(XRV_SCALE * im)[jnp.arange(3), T])  # noqa: E731
    np.testing.assert_allclose(pick(inv.reconstruction), pick(x), atol=2e-3)


def test_invert_batch_equals_each_image_alone():
    x = gen(ZA, ZP)
    keys = jax.random.split(jax.random.key(3), 3)
    run = jax.jit(functools.partial(invert, gen, clf, z_anatomy_dim=A, z_pathology_dim=P,
                                    steps=40))  # far from converged: the trajectory matters
    batch = run(x, T, key=keys)
    for i in range(3):
        one = run(x[i:i + 1], T[i:i + 1], key=keys[i:i + 1])
        np.testing.assert_allclose(one.z_anatomy[0], batch.z_anatomy[i], atol=1e-5)
        np.testing.assert_allclose(one.z_pathology[0], batch.z_pathology[i], atol=1e-5)
        np.testing.assert_allclose(one.history.loss[:, 0], batch.history.loss[:, i], rtol=1e-4)
    assert np.all(np.asarray(batch.error) > 1e-6)  # not yet converged, so the check has teeth


# -------------------------------------------------------------------------------- adapter
def test_adapter_matches_the_direct_functions():
    model, variables = LinearModel(), {"w": WC}
    x = XRV_SCALE * gen(ZA, ZP)
    diff = as_attribution(gen, ZA, ZP, method="difference")
    np.testing.assert_allclose(diff(model, variables, x, T), difference_map(gen, ZA, ZP))

    lig = as_attribution(gen, ZA, ZP, steps=11)
    assert list(inspect.signature(lig).parameters)[:4] == ["model", "variables", "x", "targets"]
    maps = jax.jit(lambda v, x, t: lig(model, v, x, t, key=None))(variables, x, T)
    assert maps.shape == (3, S, S)
    np.testing.assert_allclose(maps, latent_integrated_gradients(gen, clf, ZA, ZP, T, steps=11),
                               atol=1e-6)
    np.testing.assert_allclose(  # per-call hyperparameters override the defaults
        lig(model, variables, x, T, steps=21),
        latent_integrated_gradients(gen, clf, ZA, ZP, T, steps=21), atol=1e-6)
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        lig(model, variables, x, T, sigma=1.0)


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    x = gen(ZA, ZP)
    inv = functools.partial(invert, gen, clf, key=jax.random.key(0), z_anatomy_dim=A,
                            z_pathology_dim=P, steps=2)
    with pytest.raises(ValueError, match="generator makes 8x8x1"):
        inv(jnp.zeros((3, 16, 16, 1)), T)
    with pytest.raises(ValueError, match="NaN"):
        inv(x.at[1, 2, 3, 0].set(jnp.nan), T)
    with pytest.raises(ValueError, match=r"valid 0\.\.2"):
        inv(x, jnp.array([0, 1, 3]))
    with pytest.raises(ValueError, match="generator units"):
        inv(XRV_SCALE * x, T)
    with pytest.raises(ValueError, match=r"valid 0\.\.2"):
        latent_integrated_gradients(gen, clf, ZA, ZP, -1)
    with pytest.raises(ValueError, match=r"valid 0\.\.2"):
        response_curve(gen, clf, ZA, ZP, jnp.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(gen, ZA, ZP, jnp.array([0.0, 1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        response_curve(gen, clf, ZA, ZP, jnp.array([-0.1, 1.0]), T)
    with pytest.raises(ValueError, match="same B"):
        difference_map(gen, ZA, ZP[:2])
    with pytest.raises(ValueError, match="steps"):
        latent_integrated_gradients(gen, clf, ZA, ZP, T, steps=1)
    lig = as_attribution(gen, ZA, ZP)
    model, variables = LinearModel(), {"w": WC}
    with pytest.raises(ValueError, match="generator makes 8x8x1"):
        lig(model, variables, jnp.zeros((3, 16, 16, 1)), T)
    with pytest.raises(ValueError, match="NaN"):
        lig(model, variables, (XRV_SCALE * x).at[0, 0, 0, 0].set(jnp.nan), T)
    with pytest.raises(ValueError, match=r"valid 0\.\.2"):
        lig(model, variables, XRV_SCALE * x, 7)
    with pytest.raises(ValueError, match="Unknown GAN explanation"):
        as_attribution(gen, ZA, ZP, method="gradcam")


def test_inversion_sharded_over_8_devices_equals_one_device():
    # 3 images padded to 8 rows over 8 devices (what the GAN study's inversion does) give the
    # one-device inversion of the 3: each image's start comes from fold_in(key, row).
    from cxr_jax.common import sharding
    x = np.asarray(gen(ZA, ZP))
    run = jax.jit(lambda v, x, t: invert(gen, clf, x, t, key=jax.random.key(4),
                                         z_anatomy_dim=A, z_pathology_dim=P, steps=40
                                         ).z_anatomy)
    rows = lambda mesh: sharding.call_sharded(  # noqa: E731
        run, sharding.replicate({}, mesh), (x, np.asarray(T)), mesh)
    eight, one = rows(sharding.make_mesh()), rows(sharding.make_mesh(jax.devices()[:1]))
    assert eight.shape == (3, A) and jax.device_count() == 8
    np.testing.assert_allclose(eight, one, atol=1e-6)
    np.testing.assert_allclose(eight, run({}, x, T), atol=1e-6)
