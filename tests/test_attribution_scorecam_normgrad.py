"""Score-CAM, Faster Score-CAM and NormGrad: against independent reference computations,
per-location formulas against numpy, the layer combination rule, numerics and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cxr_jax.attribution as attribution
import cxr_jax.models as models
from cxr_jax.attribution import normgrad as ng
from cxr_jax.attribution.common import layer_and_grad, score_fn
from cxr_jax.attribution.postprocess import upsample


class Pipeline:
    """An analytic stand-in with the Model interface: stages are (name, f(variables, h));
    `explain` is the layer it declares for layer-based methods (as real models do)."""

    def __init__(self, name, stage_fns, num_classes, in_channels, explain=None):
        self.name, self._fns = name, tuple(stage_fns)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.layers = models.Layers(explain=explain) if explain else None

    @property
    def stages(self):
        return tuple(n for n, _ in self._fns)

    def apply(self, variables, x, *, taps=(), edits=None, start=None):
        edits = edits or {}
        first = 0 if start is None else self.stages.index(start) + 1
        acts, h = {}, x
        for name, f in self._fns[first:]:
            h = f(variables, h)
            if name in edits:
                h = edits[name](h)
            if name in taps:
                acts[name] = h
        return (h, acts) if taps else h


S = 16


def _features(v, x):
    """Three channels on 4x4 cells: cell means, squared cell means, and a constant channel."""
    cells = x[..., 0].reshape(x.shape[0], 4, 4, 4, 4).mean(axis=(2, 4))
    return jnp.stack([cells, cells ** 2, jnp.ones_like(cells)], axis=-1)


def cell_model():
    """logits: a nonlinear read-out of the features; class 2 ignores them (zero gradient)."""
    def head(v, h):
        z = h @ v["w"]
        return jnp.concatenate([jnp.tanh(z), 0.0 * z[:, :1] + 0.5], axis=-1)

    return Pipeline("cells", [
        ("features", _features),
        ("pool", lambda v, h: h.mean(axis=(1, 2))),
        ("head", head),
    ], 3, 1, explain="features")


def cell_setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(2, S, S, 1)), jnp.float32)
    v = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    return cell_model(), v, x


def reference_scorecam(model, v, x, t, a, eps=1e-6):
    """Score-CAM written the plain way: all masks at once, one big forward, numpy weights."""
    b, _, _, c = a.shape
    up = np.asarray(upsample(jnp.moveaxis(a, -1, 1), x.shape[1:3]))  # [B, C, H, W]
    lo = up.min(axis=(2, 3), keepdims=True)
    hi = up.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    ok = span > eps * np.maximum(np.abs(lo), np.abs(hi)) + 1e-30
    masks = np.where(ok, (up - lo) / np.where(ok, span, 1), 0.0)
    masked = np.asarray(x)[:, None] * masks[..., None]  # [B, C, H, W, 1]
    logits = np.asarray(jax.jit(model.apply)(v, jnp.asarray(
        masked.reshape((b * c,) + x.shape[1:]), jnp.float32)))
    scores = logits.reshape(b, c, -1)[np.arange(b), :, np.asarray(t)]  # [B, C]
    w = np.exp(scores - scores.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    cam = np.maximum(np.einsum("bhwc,bc->bhw", np.asarray(a), w), 0)
    return np.asarray(upsample(jnp.asarray(cam), x.shape[1:3])), ok


def test_scorecam_matches_reference_on_analytic_model():
    m, v, x = cell_setup()
    t = jnp.array([0, 1])
    a = _features(v, x)
    expected, ok = reference_scorecam(m, v, x, t, a)
    assert not ok[:, 2].any()  # the constant channel got a zero mask, as designed
    for chunk in (2, 64):
        out = attribution.get("scorecam")(m, v, x, t, chunk=chunk)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    m = models.get("resnet_tiny", num_classes=3)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1))
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)

    def leaf(path, s):  # He-normal kernels, identity norms: a fast numpy initialisation
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1])),
                               s.dtype)
        return jnp.ones(s.shape, s.dtype) if ("scale" in name or "var" in name) else \
            jnp.zeros(s.shape, s.dtype)

    return m, jax.tree_util.tree_map_with_path(leaf, shapes), x


def test_scorecam_and_faster_on_tiny_model_match_reference(tiny):
    m, v, x = tiny
    t = jnp.array([2, 0])
    layer = "layer3"  # 2x2 at 32 px, 32 channels

    @jax.jit
    def run(v, x):
        sc = attribution.get("scorecam")(m, v, x, t, layer=layer, chunk=5)
        fast = attribution.get("faster_scorecam")(m, v, x, t, layer=layer, max_n=4, chunk=3)
        full = attribution.get("faster_scorecam")(m, v, x, t, layer=layer, max_n=1000)
        return sc, fast, full

    sc, fast, full = run(v, x)
    a = jax.jit(lambda v, x: m.apply(v, x, taps=(layer,))[1][layer])(v, x)
    expected, _ = reference_scorecam(m, v, x, t, a)
    np.testing.assert_allclose(sc, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full, sc, rtol=1e-4, atol=1e-6)  # all channels kept
    # Faster Score-CAM: the 4 channels of largest spatial std, per image.
    keep = np.argsort(-np.asarray(a).std(axis=(1, 2)), axis=1)[:, :4]
    for b in range(2):
        sub = a[b:b + 1][..., keep[b]]
        exp_b, _ = reference_scorecam(m, v, x[b:b + 1], t[b:b + 1], sub)
        np.testing.assert_allclose(fast[b], exp_b[0], rtol=1e-4, atol=1e-6)


def _numpy_normgrad(a, g, variant):
    norm = lambda z: np.sqrt((z ** 2).sum(-1))
    if variant == "conv1x1":
        return norm(a) * norm(g)
    if variant == "scaling":
        return norm(a * g)
    if variant == "bias":
        return norm(g)
    if variant == "selective":
        return norm(np.maximum(a * g, 0))
    # conv3x3: explicit unfolding of the zero-padded 3x3 neighbourhood
    b, h, w, c = a.shape
    pad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = np.stack([pad[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
    return norm(patches.reshape(b, h, w, c * 9)) * norm(g)


@pytest.mark.parametrize("variant", ng.VARIANTS)
def test_normgrad_map_matches_numpy(variant):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    g = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    got = ng.normgrad_map(jnp.asarray(a), jnp.asarray(g), variant)
    np.testing.assert_allclose(got, _numpy_normgrad(a, g, variant), rtol=1e-5, atol=1e-6)
    zero = ng.normgrad_map(jnp.zeros((1, 3, 3, 2)), jnp.zeros((1, 3, 3, 2)), variant)
    np.testing.assert_array_equal(zero, 0.0)


def test_combine_maps_by_hand():
    m1 = np.array([[0.0, 1.0], [2.0, 3.0]])   # normalises to [[0, 1/3], [2/3, 1]]
    m2 = np.array([[4.0, 5.0], [4.0, 8.0]])   # normalises to [[0, 1/4], [0, 1]]
    maps = jnp.asarray(np.stack([m1, m2])[:, None])  # [L=2, B=1, 2, 2]
    n1 = np.array([[0, 1 / 3], [2 / 3, 1]])
    n2 = np.array([[0, 0.25], [0, 1]])
    np.testing.assert_allclose(ng.combine_maps(maps)[0], n1 * n2, rtol=1e-6)
    np.testing.assert_allclose(ng.combine_maps(maps, (0.5, 2.0))[0], n1 ** 0.5 * n2 ** 2,
                               rtol=1e-6)
    np.testing.assert_allclose(ng.combine_maps(maps, (1.0, 0.0))[0], n1, rtol=1e-6)
    np.testing.assert_allclose(ng.combine_maps(maps, combine="sum")[0], (n1 + n2) / 2, rtol=1e-6)
    np.testing.assert_allclose(ng.combine_maps(maps, (0.2, 0.8), combine="sum")[0],
                               0.2 * n1 + 0.8 * n2, rtol=1e-6)
    const = jnp.asarray(np.stack([m1, np.full((2, 2), 3.0)])[:, None])
    np.testing.assert_array_equal(ng.combine_maps(const)[0], 0.0)  # a constant layer: zeros
    with pytest.raises(ValueError, match="weights"):
        ng.combine_maps(maps, (1.0,))
    with pytest.raises(ValueError, match="combination"):
        ng.combine_maps(maps, combine="max")


def test_normgrad_single_layer_known_gradient():
    m, v, x = cell_setup()
    t = jnp.array([0, 1])
    a = _features(v, x)
    # logits_k = tanh(mean_ij(A) @ w)_k  =>  g_ijc = (1 - tanh^2) w[c, k] / 16
    z = a.mean(axis=(1, 2)) @ v["w"]
    sech2 = 1 - jnp.tanh(z) ** 2
    g = (sech2[jnp.arange(2), t][:, None] * v["w"][:, t].T)[:, None, None, :] / 16.0
    g = jnp.broadcast_to(g, a.shape)
    for variant in ng.VARIANTS:
        out = attribution.get("normgrad")(m, v, x, t, variant=variant)
        expected = upsample(ng.normgrad_map(a, g, variant), (S, S))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_normgrad_multi_layer_equals_manual_combination(tiny):
    m, v, x = tiny
    t = jnp.array([1, 2])
    layers = ("layer2.0", "layer3.0", "layer4.0", "layer4")
    score = score_fn(m, t, 2)

    @jax.jit
    def run(v, x):
        out = attribution.get("normgrad")(m, v, x, t, layer=layers, variant="scaling",
                                          weights=(1.0, 0.5, 2.0, 1.0))
        manual = []
        for name in layers:
            a, g, _ = layer_and_grad(m, v, x, score, name)
            manual.append(upsample(ng.normgrad_map(a, g, "scaling"), (32, 32)))
        return out, ng.combine_maps(jnp.stack(manual), (1.0, 0.5, 2.0, 1.0))

    out, expected = run(v, x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    assert out.shape == (2, 32, 32) and float(out.max()) <= 1.0


def test_nan_free_on_constant_images_and_zero_gradients(tiny):
    m, v, _ = tiny
    const = jnp.full((2, 32, 32, 1), 0.25)
    t = jnp.array([0, 1])

    @jax.jit
    def run(v, x):
        get = attribution.get
        return [get("scorecam")(m, v, x, t, layer="layer3"),
                get("faster_scorecam")(m, v, x, t),
                get("normgrad")(m, v, x, t, layer=("layer3", "layer4"))] + [
            get("normgrad")(m, v, x, t, variant=variant) for variant in ng.VARIANTS]

    for out in run(v, const):
        assert out.shape == (2, 32, 32)
        assert np.all(np.isfinite(out))
    cm, cv, cx = cell_setup()
    zero_t = jnp.array([2, 2])  # class 2 ignores the features
    for variant in ng.VARIANTS:
        np.testing.assert_array_equal(
            attribution.get("normgrad")(cm, cv, cx, zero_t, variant=variant), 0.0)
    np.testing.assert_array_equal(  # combined form: a zero map normalises to zeros
        attribution.get("normgrad")(cm, cv, cx, zero_t, layer=("features",)), 0.0)
    flat = attribution.get("scorecam")(cm, cv, jnp.zeros_like(cx), jnp.array([0, 1]))
    assert np.all(np.isfinite(flat))  # a black image: every mask is zero


def test_errors():
    m, v, x = cell_setup()
    t = jnp.array([0, 1])
    fn = attribution.get("normgrad")
    with pytest.raises(ValueError, match="variant"):
        fn(m, v, x, t, variant="conv5x5")
    with pytest.raises(ValueError, match="distinct"):
        fn(m, v, x, t, layer=("features", "features"))
    with pytest.raises(ValueError, match="several layers"):
        fn(m, v, x, t, layer="features", weights=(1.0,))
    with pytest.raises(ValueError, match="Unknown layer"):
        fn(m, v, x, t, layer=("features", "nope"))
    with pytest.raises(ValueError, match="spatial map"):
        fn(m, v, x, t, layer="pool")
    with pytest.raises(ValueError, match="out of range"):
        attribution.get("scorecam")(m, v, x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match="chunk"):
        attribution.get("scorecam")(m, v, x, t, chunk=0)
    with pytest.raises(ValueError, match="max_n"):
        attribution.get("faster_scorecam")(m, v, x, t, max_n=0)
    with pytest.raises(ValueError, match="Unknown layer"):
        attribution.get("scorecam")(m, v, x, t, layer="denseblock9")
