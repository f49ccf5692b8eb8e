"""NormGrad inside residual units: the convolutions of a ResNet unit as points (input and
pre-BN output, tapped and edited like stages), every variant at a point, the exact weight
variant against a hand-written forward/backward and im2col, the bias variant no longer flat in
the last unit, the combined form over convolutions, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cxr_jax import attribution, models
from cxr_jax.attribution import normgrad as ng
from cxr_jax.attribution.common import layers_and_grads, score_fn
from cxr_jax.attribution.postprocess import upsample

S = 64  # layer4 of the tiny ResNets is 2x2 here, layer3 4x4


def _variables(model, x, seed):
    """Fixed random variables in the model's tree (shapes from `jax.eval_shape`, no init
    compile): He-scaled kernels, BN with random affine parameters and running statistics, so
    BN is not the identity and reading a convolution before or after its BN differs."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        kind = path[-1].key
        if kind == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # BN and fc biases, running means
            value = rng.normal(0.0, 0.2, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def basic():
    model = models.get("resnet_tiny", num_classes=3)
    x = jax.random.normal(jax.random.key(1), (2, S, S, 1))
    return model, _variables(model, x, 0), x


T = jnp.array([0, 2])


@pytest.fixture(scope="module")
def kernel_grads(basic):
    """d(sum of target scores)/d(params), one compiled program."""
    m, v, x = basic
    score = score_fn(m, T, 2)
    return jax.jit(jax.grad(lambda p: jnp.sum(score(m.apply({**v, "params": p}, x)))))(
        v["params"])


def _conv(h, kernel, stride, pad):
    return lax.conv_general_dilated(h, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(a, k, stride, pad):
    """im2col in numpy: a [B, H, W, C] -> P [B, h, w, k*k*C] (HWI order, zero padding)."""
    a = np.pad(np.asarray(a, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, hp, wp, c = a.shape
    h, w = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.empty((b, h, w, k * k * c))
    for i in range(h):
        for j in range(w):
            out[:, i, j] = a[:, i * stride:i * stride + k, j * stride:j * stride + k].reshape(b, -1)
    return out


def _outer_norms(g, patches):
    """||g_u P_u^T||_F for every location, from the explicit outer products."""
    g = np.asarray(g, np.float64)
    outer = g[..., :, None] * patches[..., None, :]  # [B, h, w, Cout, k*k*Cin]
    return np.sqrt((outer ** 2).sum(axis=(-2, -1)))


# --------------------------------------------------------------------------- model points
def test_points_are_named_as_torchvision_and_tapped_in_place(basic):
    m, v, x = basic
    assert m.points == (
        "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
        "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0",
        "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0")
    mb = models.get("resnet_tiny_bottleneck", num_classes=3)
    assert mb.points[:4] == ("layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3",
                             "layer1.0.downsample.0")
    assert "layer2.1.conv3" in mb.points and "layer2.1.downsample.0" not in mb.points
    assert models.get("densenet_tiny", num_classes=2).points == ()

    logits = m.apply(v, x)
    names = ("layer3", "layer4.0.conv1.input", "layer4.0.downsample.0.input", "layer4.0.conv1",
             "layer4.0.conv2.input", "layer4.0.conv2", "layer4.0.downsample.0")
    same, acts = m.apply(v, x, taps=names)
    np.testing.assert_array_equal(same, logits)  # tapping changes nothing
    np.testing.assert_array_equal(acts["layer4.0.conv1.input"], acts["layer3"])
    np.testing.assert_array_equal(acts["layer4.0.downsample.0.input"], acts["layer3"])
    assert acts["layer4.0.conv1"].shape == acts["layer4.0.conv2"].shape == (2, 2, 2, 64)
    # Pre-BN: conv1's output is the kernel applied to its input, nothing more.
    p = v["params"]["layer4"]["0"]
    np.testing.assert_allclose(acts["layer4.0.conv1"],
                               _conv(acts["layer3"], p["conv1"]["kernel"], 2, 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        m.apply(v, x, edits={"layer4.0.conv2": lambda a: a}), logits)
    assert not np.allclose(m.apply(v, x, edits={"layer4.0.conv2": jnp.zeros_like}), logits)
    (train_logits, train_acts), _ = m.apply(v, x, taps=("layer2.0.conv2",), train=True,
                                            mutable=["batch_stats"])
    assert train_logits.shape == (2, 3) and train_acts["layer2.0.conv2"].shape == (2, 8, 8, 16)


# ------------------------------------------------------- (a) against a hand computation
def test_normgrad_at_inner_conv_equals_hand_outer_product_norm(basic):
    """layer4.0.conv2 of resnet_tiny: the unit written out by hand (lax convolutions, BN in
    eval form), the gradient at the conv's output by jax.grad of the hand-written rest, the
    per-location outer product g_u P_u^T formed explicitly from the im2col'd input."""
    m, v, x = basic
    t = T
    x_in = m.apply(v, x, taps=("layer3",))[1]["layer3"]
    p, st = v["params"]["layer4"]["0"], v["batch_stats"]["layer4"]["0"]

    def bn(h, q, s):
        return (h - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * q["scale"] + q["bias"]

    a = jax.nn.relu(bn(_conv(x_in, p["conv1"]["kernel"], 2, 1), p["bn1"], st["bn1"]))
    y = _conv(a, p["conv2"]["kernel"], 1, 1)                       # conv2's output, pre-BN
    shortcut = bn(_conv(x_in, p["downsample"]["0"]["kernel"], 2, 0),
                  p["downsample"]["1"], st["downsample"]["1"])

    def rest(y):
        unit = jax.nn.relu(bn(y, p["bn2"], st["bn2"]) + shortcut)
        return m.apply(v, unit, start="layer4.0")

    np.testing.assert_allclose(rest(y), m.apply(v, x), rtol=1e-4, atol=1e-5)  # hand = model
    g = jax.grad(lambda y: rest(y)[jnp.arange(2), t].sum())(y)
    expected = _outer_norms(g, _patches(a, 3, 1, 1))               # [2, 2, 2]
    assert expected.std() > 0
    fn = attribution.get("normgrad")
    got = fn(m, v, x, t, layer="layer4.0.conv2", variant="weight")
    np.testing.assert_allclose(got, upsample(jnp.asarray(expected, jnp.float32), (S, S)),
                               rtol=1e-4, atol=1e-6)
    for variant in ng.VARIANTS:  # virtual layers on the conv's (pre-BN) output
        got = fn(m, v, x, t, layer="layer4.0.conv2", variant=variant)
        want = upsample(ng.normgrad_map(y, g, variant), (S, S))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=variant)


@pytest.mark.parametrize("point,k,stride,pad", [("layer4.0.conv1", 3, 2, 1),
                                                ("layer4.0.downsample.0", 1, 2, 0),
                                                ("layer3.0.conv2", 3, 1, 1)])
def test_outer_products_sum_to_the_kernel_gradient(basic, kernel_grads, point, k, stride, pad):
    """Summed over locations, the outer products the weight variant takes norms of are the
    convolution's kernel gradient: the input and output gradient are the conv's own."""
    m, v, x = basic
    acts, grads, _ = layers_and_grads(m, v, x, score_fn(m, T, 2), (point,), inputs=(point,))
    patches = _patches(acts[f"{point}.input"], k, stride, pad)
    g = np.asarray(grads[point], np.float64)
    summed = np.einsum("bhwo,bhwi->io", g, patches)  # [k*k*Cin, Cout]
    stage, conv = m.point(point)
    dk = kernel_grads
    for key in list(stage.path) + conv.name.split(".") + ["kernel"]:
        dk = dk[key]
    np.testing.assert_allclose(summed, np.asarray(dk).reshape(summed.shape), rtol=1e-4,
                               atol=1e-5)
    got = ng.weight_map(acts[f"{point}.input"], grads[point], k, stride, pad)
    np.testing.assert_allclose(got, _outer_norms(g, patches), rtol=1e-4, atol=1e-6)


# ------------------------------------------------ (b) the bias variant inside the last unit
def test_bias_variant_flat_at_last_unit_output_not_at_its_convs(basic):
    m, v, x = basic
    t = jnp.array([1, 2])
    fn = attribution.get("normgrad")
    flat = np.asarray(fn(m, v, x, t, layer="layer4.last", variant="bias"))
    assert np.all(np.ptp(flat, axis=(1, 2)) <= 1e-6 * flat.max(axis=(1, 2)))
    for point in ("layer4.0.conv2", "layer4.0.conv1", "layer4.0.downsample.0"):
        inner = np.asarray(fn(m, v, x, t, layer=point, variant="bias"))
        assert np.all(np.ptp(inner, axis=(1, 2)) > 1e-3 * inner.max(axis=(1, 2))), point
    # So the combined product over the convolutions is not zeroed by a flat layer.
    combined = np.asarray(fn(m, v, x, t, layer="convs", variant="bias"))
    assert np.all(combined.max(axis=(1, 2)) > 0)


# --------------------------------------------------------------------- combined forms
def test_convs_and_mixed_lists_equal_manual_combination(basic):
    m, v, x = basic
    t = jnp.array([0, 1])
    fn = attribution.get("normgrad")
    convs = ("layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0")
    raw = [fn(m, v, x, t, layer=p, variant="weight") for p in convs]
    np.testing.assert_allclose(fn(m, v, x, t, layer="convs", variant="weight"),
                               ng.combine_maps(jnp.stack(raw)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(m, v, x, t, layer="layer4.convs", variant="weight"),
                               ng.combine_maps(jnp.stack(raw)), rtol=1e-5, atol=1e-6)
    mixed = ("layer3.0", "layer4.0.conv2", "layer3.0.conv1")  # a stage before its own point
    raw = [fn(m, v, x, t, layer=n, variant="scaling") for n in mixed]
    np.testing.assert_allclose(
        fn(m, v, x, t, layer=mixed, variant="scaling", weights=(1.0, 2.0, 0.5)),
        ng.combine_maps(jnp.stack(raw), (1.0, 2.0, 0.5)), rtol=1e-5, atol=1e-6)
    # Stage-only calls are unchanged: same as before points existed (layers_and_grads path).
    np.testing.assert_allclose(fn(m, v, x, t, layer=("layer2.0", "layer4")),
                               ng.combine_maps(jnp.stack([fn(m, v, x, t, layer="layer2.0"),
                                                          fn(m, v, x, t, layer="layer4")])),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- (c) errors
def test_errors_name_the_valid_points(basic):
    m, v, x = basic
    t = jnp.array([0, 1])
    fn = attribution.get("normgrad")
    with pytest.raises(ValueError, match=r"layer4\.0\.conv1, layer4\.0\.conv2, "
                                         r"layer4\.0\.downsample\.0"):
        fn(m, v, x, t, layer="layer4.0.conv9")
    with pytest.raises(ValueError, match=r"Valid stage names: conv1.*Valid points.*"
                                         r"layer1\.0\.conv1"):
        fn(m, v, x, t, layer="layer4.1.conv2")  # resnet_tiny has one unit per layer
    with pytest.raises(ValueError, match="weight gradient.*layer4"):
        fn(m, v, x, t, layer="layer4", variant="weight")
    with pytest.raises(ValueError, match="stages with units: layer1"):
        fn(m, v, x, t, layer="relu.convs")
    with pytest.raises(ValueError, match="Cannot edit 'layer4.0.conv2.input'"):
        m.apply(v, x, edits={"layer4.0.conv2.input": jnp.abs})
    with pytest.raises(ValueError, match="runs before start"):
        m.apply(v, m.apply(v, x, taps=("layer3",))[1]["layer3"], start="layer3",
                taps=("layer3.0.conv1",))
