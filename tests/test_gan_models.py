"""The explanation GAN's networks: shapes, determinism, the z_pathology = 0 negative, spectral
normalisation of D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import generative as gen
from cxr_jax.generative.models import SPECTRAL

ZA, ZP, WIDTH = 8, 3, 4


def _latents(n=4, seed=0):
    return gen.sample_latents(jax.random.PRNGKey(seed), n, ZA, ZP)


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_dtypes_and_range(size):
    G = gen.Generator(size, ZA, ZP, width=WIDTH)
    D = gen.Discriminator(size, width=WIDTH)
    g_vars = gen.init_generator(G, jax.random.PRNGKey(0))
    d_vars = gen.init_discriminator(D, jax.random.PRNGKey(1))
    lat = _latents()

    @jax.jit  # one compilation for the three calls
    def run(g_vars, d_vars, za, zp):
        x = G.apply(g_vars, za, zp)
        x_train, upd = G.apply(g_vars, za, zp, train=True, mutable=["batch_stats"])
        return x, x_train, upd, D.apply(d_vars, x)

    x, x_train, upd, logits = run(g_vars, d_vars, lat.z_anatomy, lat.z_pathology)
    assert x.shape == (4, size, size, 1) and x.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(x))) <= 1.0
    assert x_train.shape == x.shape and set(upd) == {"batch_stats"}
    assert logits.shape == (4,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_unsupported_sizes_and_latent_shapes_are_refused():
    with pytest.raises(ValueError, match=r"one of \(64, 128\).*96"):
        gen.check_image_size(96)
    with pytest.raises(ValueError, match=r"one of \(64, 128\)"):
        gen.init_generator(gen.Generator(32, ZA, ZP, width=WIDTH), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"one of \(64, 128\)"):
        gen.init_discriminator(gen.Discriminator(256, width=WIDTH), jax.random.PRNGKey(0))
    G = gen.Generator(64, ZA, ZP, width=WIDTH)
    g_vars = gen.init_generator(G, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"z_pathology must be \[B, 3\]"):
        G.apply(g_vars, jnp.zeros((2, ZA)), jnp.zeros((2, ZP + 1)))
    D = gen.Discriminator(64, width=WIDTH)
    d_vars = gen.init_discriminator(D, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\[B, 64, 64, 1\]"):
        D.apply(d_vars, jnp.zeros((2, 128, 128, 1)))


def test_deterministic_by_key_and_batch_independent_in_eval_mode():
    G = gen.Generator(64, ZA, ZP, width=WIDTH)
    a = gen.init_generator(G, jax.random.PRNGKey(0))
    b = gen.init_generator(G, jax.random.PRNGKey(0))
    c = gen.init_generator(G, jax.random.PRNGKey(1))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a["params"]["project"]["kernel"], c["params"]["project"]["kernel"])
    apply = jax.jit(G.apply)
    lat, lat_again = _latents(seed=3), _latents(seed=3)
    np.testing.assert_array_equal(lat.z_anatomy, lat_again.z_anatomy)
    np.testing.assert_array_equal(apply(a, lat.z_anatomy, lat.z_pathology),
                                  apply(b, lat_again.z_anatomy, lat_again.z_pathology))
    # Running statistics: an image depends on its own latents only (inversion needs this).
    batch = apply(a, lat.z_anatomy, lat.z_pathology)
    one = apply(a, lat.z_anatomy[1:2], lat.z_pathology[1:2])
    np.testing.assert_allclose(batch[1:2], one, atol=1e-6)


def test_zero_pathology_is_a_negative_that_differs_from_positives():
    lat = _latents(n=6, seed=2)
    positive = np.asarray(lat.positive)
    np.testing.assert_array_equal(positive, np.arange(6) % 2 == 1)  # half the batch each
    zp = np.asarray(lat.z_pathology)
    assert np.all(zp[~positive] == 0) and np.all(np.abs(zp[positive]).sum(1) > 0)
    G = gen.Generator(64, ZA, ZP, width=WIDTH)
    g_vars = gen.init_generator(G, jax.random.PRNGKey(0))
    za = jnp.repeat(lat.z_anatomy[:1], 2, axis=0)          # one anatomy, twice
    zp2 = jnp.stack([jnp.zeros(ZP), lat.z_pathology[1]])   # negative twin, positive
    x = jax.jit(G.apply)(g_vars, za, zp2)
    assert np.all(np.isfinite(np.asarray(x)))
    assert float(jnp.mean(jnp.abs(x[0] - x[1]))) > 1e-4


def _kernel_matrix(kernel):
    k = np.asarray(kernel, np.float64)
    return k.reshape(-1, k.shape[-1])


def test_spectral_norm_converges_to_the_top_singular_value():
    D = gen.Discriminator(64, width=WIDTH)
    d_vars = gen.init_discriminator(D, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 1))

    @jax.jit
    def iterate(spectral):  # 200 training-mode calls: one power iteration each
        def body(_, s):
            _, upd = D.apply({"params": d_vars["params"], SPECTRAL: s}, x, update_stats=True,
                             mutable=[SPECTRAL])
            return upd[SPECTRAL]
        return jax.lax.fori_loop(0, 200, body, spectral)

    spectral = jax.device_get(iterate(d_vars[SPECTRAL]))
    layers = {k.split("/")[0]: v for entry in spectral.values() for k, v in entry.items()
              if k.endswith("/sigma")}
    assert set(layers) == set(d_vars["params"])  # every conv and dense layer is normalised
    for name, sigma in layers.items():
        w = _kernel_matrix(d_vars["params"][name]["kernel"])
        top = np.linalg.svd(w, compute_uv=False)[0]
        # u W v with unit vectors never exceeds the top singular value; iterated, it reaches it.
        assert float(sigma) <= top * (1 + 1e-5), name
        np.testing.assert_allclose(float(sigma), top, rtol=5e-3, err_msg=name)
        np.testing.assert_allclose(np.linalg.svd(w / float(sigma), compute_uv=False)[0], 1.0,
                                   rtol=5e-3, err_msg=name)
    # The layer uses W / sigma(W): scaling a kernel leaves D's output unchanged.
    scaled = jax.tree_util.tree_map(lambda a: a, d_vars["params"])
    scaled["conv1"] = dict(scaled["conv1"], kernel=scaled["conv1"]["kernel"] * 10.0)
    v = {"params": d_vars["params"], SPECTRAL: spectral}
    out = jax.jit(D.apply)(v, x)
    np.testing.assert_allclose(jax.jit(D.apply)(dict(v, params=scaled), x), out, rtol=1e-4,
                               atol=1e-5)


def test_projection_discriminator_adds_the_class_term_to_the_unconditional_logit():
    """D(x, y) = unconditional(x) + <e_y, h(x)>: with the class embedding zeroed it equals the
    unconditional D with the same weights; with it, the label moves the logit; no labels is an
    error."""
    D = gen.Discriminator(64, width=WIDTH, conditional=True)
    U = gen.Discriminator(64, width=WIDTH)
    d_vars = gen.init_discriminator(D, jax.random.PRNGKey(3))
    u_vars = gen.init_discriminator(U, jax.random.PRNGKey(3))
    assert set(d_vars["params"]) == set(u_vars["params"]) | {"class_embed"}
    x = jax.random.uniform(jax.random.PRNGKey(4), (4, 64, 64, 1), minval=-1, maxval=1)
    ones, zeros = jnp.ones(4, jnp.int32), jnp.zeros(4, jnp.int32)
    shared = {"params": {k: v for k, v in d_vars["params"].items() if k != "class_embed"},
              SPECTRAL: {k: v for k, v in d_vars[SPECTRAL].items() if k != "class_embed"}}
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, d_vars["params"]["class_embed"])
    z_vars = {"params": {**d_vars["params"], "class_embed": zeroed}, SPECTRAL: d_vars[SPECTRAL]}
    np.testing.assert_allclose(D.apply(z_vars, x, ones), U.apply(shared, x), rtol=1e-5,
                               atol=1e-6)
    l1, l0 = D.apply(d_vars, x, ones), D.apply(d_vars, x, zeros)
    assert np.all(np.abs(np.asarray(l1 - l0)) > 1e-6)
    mixed = D.apply(d_vars, x, jnp.array([1, 0, 1, 0]))
    np.testing.assert_allclose(mixed, jnp.where(jnp.array([1, 0, 1, 0]) == 1, l1, l0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be \[4\]"):
        D.apply(d_vars, x)
