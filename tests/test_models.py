"""The stage-pipeline models: sizes, stages, taps, edits, start, guided ReLU, compilation."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import models
from cxr_jax.models import guided_relu, stage_shapes
from cxr_jax.models.layers import BatchNorm, Conv, Dense, relu

TORCHVISION_PARAMS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
}
TINY = ("densenet_tiny", "resnet_tiny", "resnet_tiny_bottleneck")


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name):
    model = models.get(name, num_classes=1000, in_channels=3)
    assert model.param_count() == TORCHVISION_PARAMS[name]


def test_registry_names_and_errors():
    assert set(TORCHVISION_PARAMS) | set(TINY) <= set(models.names())
    with pytest.raises(ValueError, match="Registered models: .*densenet121"):
        models.get("densenet122", num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        models.get("resnet18", num_classes=0)


def test_stage_names_mirror_torchvision():
    dn = models.get("densenet121", num_classes=14)
    assert dn.stages[:6] == ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1")
    assert dn.stages[-4:] == ("norm5", "relu5", "avgpool", "classifier")
    rn = models.get("resnet50", num_classes=14)
    assert rn.stages[:5] == ("conv1", "bn1", "relu", "maxpool", "layer1.0")
    assert {"layer4.0", "layer4.2", "layer4"} <= set(rn.stages)
    assert rn.stages.index("layer4.2") + 1 == rn.stages.index("layer4")


@pytest.mark.parametrize("name", sorted(set(models.names())))
def test_every_model_declares_its_layers_at_the_right_strides(name):
    model = models.get(name, num_classes=2)
    shapes = stage_shapes(model, (1, 64, 64, 1))
    side = lambda stage: 64 // shapes[stage][1]
    layers = model.layers
    assert side(layers.stride16) == 16 and layers.iba == layers.stride16
    assert [side(s) for s in layers.multilayer_iba] == [4, 8, 16]
    assert side(layers.explain) == 32 and len(shapes[layers.explain]) == 4
    assert model.layer() == layers.explain and model.layer(role="iba") == layers.iba
    assert model.layer("stride16") == layers.stride16
    for stage, units in layers.units:
        assert units and all(u in model.stages for u in units)
        assert model.layer(f"{stage}.last") == units[-1]
        assert model.stages.index(units[-1]) + 1 == model.stages.index(stage)
    with pytest.raises(ValueError, match="Unknown layer 'layer9.last'"):
        model.layer("layer9.last")


def test_resnet_last_units_and_densenet_relu5():
    assert models.get("resnet34", num_classes=2).layer("layer4.last") == "layer4.2"
    assert models.get("resnet_tiny", num_classes=2).layer("layer4.last") == "layer4.0"
    model = models.get("densenet_tiny", num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 48, 48, 1))
    variables = model.init(jax.random.key(1), x)
    logits, acts = model.apply(variables, x, taps=("norm5", "relu5"))
    # relu5 is torchvision's F.relu(features(x)); the pooled head reads it
    np.testing.assert_array_equal(acts["relu5"], jnp.maximum(acts["norm5"], 0))
    np.testing.assert_allclose(model.apply(variables, acts["relu5"], start="relu5"), logits,
                               rtol=1e-6, atol=1e-6)
    assert model.with_guided_relu().layers == model.layers


def test_stage_shapes_full_size():
    shapes = stage_shapes(models.get("densenet121", num_classes=14), (2, 224, 224, 1))
    assert shapes["conv0"] == (2, 112, 112, 64)
    assert shapes["pool0"] == (2, 56, 56, 64)
    assert shapes["denseblock1"] == (2, 56, 56, 256)
    assert shapes["transition1"] == (2, 28, 28, 128)
    assert shapes["denseblock3"] == (2, 14, 14, 1024)
    assert shapes["norm5"] == (2, 7, 7, 1024)
    assert shapes["avgpool"] == (2, 1024)
    assert shapes["classifier"] == (2, 14)
    shapes = stage_shapes(models.get("resnet50", num_classes=1), (1, 224, 224, 1))
    assert shapes["layer4"] == (1, 7, 7, 2048) and shapes["fc"] == (1, 1)


@pytest.mark.parametrize("name", ["resnet34", "resnet50", "densenet121"])
def test_slim_variants_keep_depth_and_map_sizes(name):
    # The paper configs' reduced models: every stage and unit of the published architecture, the
    # same map sizes (7 x 7 after the last stage at 224 px), a quarter of the channels. (ResNet-152
    # and DenseNet-169 differ from ResNet-50 and DenseNet-121 in unit counts only.)
    full = models.get(name, num_classes=2)
    slim = models.get(f"{name}_slim", num_classes=2)
    assert slim.stages == full.stages and slim.layers == full.layers
    a = stage_shapes(full, (1, 224, 224, 1))
    b = stage_shapes(slim, (1, 224, 224, 1))
    for stage in full.stages:
        assert a[stage][:-1] == b[stage][:-1], stage
        if len(a[stage]) == 4:
            assert a[stage][-1] == 4 * b[stage][-1], stage
    assert b[full.layers.explain][1:3] == (7, 7)


def _tiny(name, num_classes=3, size=48, batch=2, seed=0):
    model = models.get(name, num_classes=num_classes)
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, 1))
    variables = model.init(jax.random.key(1), x)
    # Non-trivial batch statistics so eval-mode BN is not the identity.
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda s: s + 0.1 * jax.random.uniform(jax.random.key(2), s.shape), variables["batch_stats"])
    return model, variables, x


@pytest.mark.parametrize("name", TINY)
def test_every_stage_tappable_and_consistent(name):
    model, variables, x = _tiny(name)
    logits, acts = model.apply(variables, x, taps=model.stages)
    assert set(acts) == set(model.stages)
    expected = stage_shapes(model, x.shape)
    assert {k: a.shape for k, a in acts.items()} == expected
    np.testing.assert_allclose(acts[model.stages[-1]], logits)
    np.testing.assert_allclose(model.apply(variables, x), logits, rtol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_start_reproduces_logits_from_every_stage(name):
    model, variables, x = _tiny(name)
    logits, acts = model.apply(variables, x, taps=model.stages)
    for stage in model.stages[:-1]:
        out = model.apply(variables, acts[stage], start=stage)
        np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5, err_msg=stage)


def test_identity_edit_and_edit_changes_downstream():
    model, variables, x = _tiny("densenet_tiny")
    logits = model.apply(variables, x)
    same = model.apply(variables, x, edits={"denseblock2": lambda a: a})
    np.testing.assert_array_equal(same, logits)
    zeroed, acts = model.apply(variables, x, edits={"denseblock2": jnp.zeros_like},
                               taps=("denseblock2",))
    assert float(jnp.abs(acts["denseblock2"]).max()) == 0.0
    assert not np.allclose(zeroed, logits)


@pytest.mark.parametrize("name,layer", [("densenet_tiny", "denseblock3"),
                                        ("resnet_tiny", "layer3.0"),
                                        ("resnet_tiny_bottleneck", "layer2")])
def test_additive_edit_gradient_equals_start_gradient(name, layer):
    model, variables, x = _tiny(name)
    _, acts = model.apply(variables, x, taps=(layer,))
    a = acts[layer]

    def via_edit(d):
        return model.apply(variables, x, edits={layer: lambda h: h + d})[:, 1].sum()

    def via_start(a):
        return model.apply(variables, a, start=layer)[:, 1].sum()

    g_edit = jax.grad(via_edit)(jnp.zeros_like(a))
    g_start = jax.grad(via_start)(a)
    np.testing.assert_allclose(g_edit, g_start, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(g_start).max()) > 0


def test_errors_name_the_problem():
    model, variables, x = _tiny("resnet_tiny")
    with pytest.raises(ValueError, match="Unknown tap 'layer9'.*Valid stage names: conv1"):
        model.apply(variables, x, taps=("layer9",))
    with pytest.raises(ValueError, match="Unknown edit"):
        model.apply(variables, x, edits={"nope": jnp.abs})
    with pytest.raises(ValueError, match="Unknown start stage"):
        model.apply(variables, x, start="nope")
    with pytest.raises(ValueError, match="rank 4"):
        model.apply(variables, x[0])
    with pytest.raises(ValueError, match="1 input channel"):
        model.apply(variables, jnp.concatenate([x, x, x], axis=-1))
    with pytest.raises(ValueError, match="runs before start"):
        model.apply(variables, x, start="layer2", taps=("layer1",))
    with pytest.raises(ValueError, match="mutable"):
        model.apply(variables, x, train=True)


def test_train_mode_updates_batch_stats():
    model, variables, x = _tiny("resnet_tiny")
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 3)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert len(old) == len(new) and any(not np.allclose(a, b) for a, b in zip(old, new))
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])


def test_regression_head_is_raw():
    model, variables, x = _tiny("densenet_tiny", num_classes=1)
    out = model.apply(variables, x)
    assert out.shape == (2, 1)
    feats = model.apply(variables, x, taps=("avgpool",))[1]["avgpool"]
    p = variables["params"]["classifier"]
    np.testing.assert_allclose(out, feats @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-6)


def test_jit_vmap_and_no_recompile():
    model, variables, x = _tiny("densenet_tiny")
    traces = []

    def fwd(v, x):
        traces.append(1)
        return model.apply(v, x)

    f = jax.jit(fwd)
    a = f(variables, x)
    b = f(variables, x + 1.0)
    assert len(traces) == 1
    # A rebuilt, equal model hashes equal: no recompile when used as a static argument.
    g = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    g(model, variables, x)
    g(models.get("densenet_tiny", num_classes=3), variables, x)
    assert g._cache_size() == 1
    per_image = jax.vmap(lambda xi: model.apply(variables, xi[None])[0])(x)
    np.testing.assert_allclose(per_image, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)


def test_guided_relu_backward_rule():
    x = jnp.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    g = jnp.array([1.0, -1.0, 2.0, -3.0, 0.5])
    _, vjp = jax.vjp(guided_relu, x)
    np.testing.assert_array_equal(vjp(g)[0], jnp.array([0.0, 0.0, 2.0, 0.0, 0.5]))
    np.testing.assert_array_equal(guided_relu(x), jax.nn.relu(x))
    # Edge values, both dtypes, eager and compiled: jax.nn.relu's forward bits, and the
    # gradient passes only at strictly positive inputs (not at 0, -0 or NaN).
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0, -jnp.inf, jnp.inf, jnp.nan])
    g = jnp.array([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 2.0, 1.0])
    for dtype in (jnp.float32, jnp.bfloat16):
        for f in (lambda a: a, jax.jit):
            both = f(lambda v, c: (guided_relu(v), jax.vjp(guided_relu, v)[1](c)[0]))
            y, dx = (np.asarray(a, np.float32) for a in both(x.astype(dtype), g.astype(dtype)))
            np.testing.assert_array_equal(y, np.asarray(jax.nn.relu(x.astype(dtype)), np.float32))
            assert not np.signbit(y[:7]).any()
            np.testing.assert_array_equal(dx,
                                          [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0])


def test_relu_is_jax_relu_bit_for_bit_with_zero_slope_at_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0, -jnp.inf, jnp.inf, jnp.nan])
    for dtype in (jnp.float32, jnp.bfloat16):
        for f in (lambda a: a, jax.jit):  # eager and inside a compiled program
            ours, ref = f(relu)(x.astype(dtype)), f(jax.nn.relu)(x.astype(dtype))
            assert ours.dtype == ref.dtype == dtype
            np.testing.assert_array_equal(ours, ref)  # NaN where NaN
            np.testing.assert_array_equal(np.signbit(np.asarray(ours, np.float32)),
                                          np.signbit(np.asarray(ref, np.float32)))
    x = x[:-1]
    g = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    np.testing.assert_array_equal(jax.vjp(relu, x)[1](g)[0], jax.vjp(jax.nn.relu, x)[1](g)[0])
    np.testing.assert_array_equal(jax.grad(lambda v: relu(v).sum())(x)[:3], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batchnorm_equals_flax_bit_for_bit_in_both_modes(dtype):
    """Our BatchNorm writes the eval-mode arithmetic itself (cheaper to trace): same variables,
    same bits as Flax's, values and gradients; training mode and bf16 are Flax's own code."""
    ours = BatchNorm(dtype=dtype)
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype)
    x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6)) * 7.0 + 2.0
    v = ours.init(jax.random.key(1), x, use_running_average=True)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(
        jnp.shape, flax_bn.init(jax.random.key(1), x, use_running_average=True))
    k = jax.random.split(jax.random.key(2), 4)
    v = {"params": {"scale": jax.random.normal(k[0], (6,)), "bias": jax.random.normal(k[1], (6,))},
         "batch_stats": {"mean": jax.random.normal(k[2], (6,)),
                         "var": jax.random.uniform(k[3], (6,), minval=0.1, maxval=3.0)}}
    for train in (False, True):
        def run(m):
            def f(v, x):
                out = m.apply(v, x, use_running_average=not train,
                              mutable=["batch_stats"] if train else False)
                return out if train else (out, None)
            y, stats = jax.jit(f)(v, x)
            grads = jax.grad(lambda v, x: jnp.sum(jnp.sin(f(v, x)[0].astype(jnp.float32))),
                             argnums=(0, 1))(v, x)
            return y, stats, grads
        for a, b in zip(jax.tree.leaves(run(ours)), jax.tree.leaves(run(flax_bn)), strict=True):
            np.testing.assert_array_equal(a, b)
    bad = {**v, "params": {**v["params"], "scale": jnp.ones((5,))}}
    expected = ValueError if dtype == jnp.float32 else flax.errors.ScopeParamShapeError
    with pytest.raises(expected, match="scale"):  # bf16 runs Flax's code, with Flax's error
        ours.apply(bad, x, use_running_average=True)


def test_conv_and_dense_fetch_parameters_like_flax_and_check_their_shapes():
    """Our Conv and Dense skip Flax's traced shape check of existing parameters: the same
    variables and bits as Flax's layers, and a mismatched parameter still stops the apply."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    pad = ((1, 1), (1, 1))
    for ours, theirs in [(Conv(4, (3, 3), padding=pad), nn.Conv(4, (3, 3), padding=pad)),
                         (Dense(5), nn.Dense(5))]:
        v, v_flax = ours.init(jax.random.key(1), x), theirs.init(jax.random.key(1), x)
        assert jax.tree.structure(v) == jax.tree.structure(v_flax)
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_flax)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(jax.jit(ours.apply)(v, x), jax.jit(theirs.apply)(v, x))
        bad = {"params": {**v["params"], "kernel": v["params"]["kernel"][..., :-1]}}
        with pytest.raises(ValueError, match="'kernel' has shape .* needs"):
            ours.apply(bad, x)
    model, variables, x = _tiny("densenet_tiny")
    other = models.get("densenet_tiny", num_classes=model.num_classes + 1)
    with pytest.raises(ValueError, match="classifier.*'kernel'.*do not belong"):
        other.apply(variables, x)


def test_guided_model_same_forward_guided_gradient():
    model, variables, x = _tiny("resnet_tiny")
    guided = model.with_guided_relu()
    assert guided != model and guided.stages == model.stages
    np.testing.assert_allclose(guided.apply(variables, x), model.apply(variables, x), rtol=1e-6)

    def grad(m):
        return jax.grad(lambda x: m.apply(variables, x)[:, 0].sum())(x)

    assert not np.allclose(grad(guided), grad(model))


def test_bf16_compute_keeps_float32_params():
    model, variables, x = _tiny("densenet_tiny")
    low = model.with_dtype(jnp.bfloat16)
    out = low.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), model.apply(variables, x), atol=0.1,
                               rtol=0.1)


@pytest.mark.parametrize("kernel,stride,pad,dn", [
    (3, 2, 1, ("NHWC", "HWIO", "NHWC")),
    (1, 1, 0, ("NHWC", "HWIO", "NHWC")),      # pointwise: computed as a matrix product
    (1, 1, 0, ("NCHW", "OIHW", "NCHW")),
])
def test_loop_safe_conv_matches_lax_values_and_gradients(kernel, stride, pad, dn):
    from jax import lax

    from cxr_jax.models.layers import loop_safe_conv

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3) if dn[0] == "NHWC" else (2, 3, 9, 9))
    k = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 5) if dn[1] == "HWIO"
                          else (5, 3, kernel, kernel))
    args = ((stride, stride), ((pad, pad), (pad, pad)))

    def ours(x, k):
        return jnp.sum(jnp.sin(loop_safe_conv(x, k, *args, dimension_numbers=dn)))

    def ref(x, k):
        return jnp.sum(jnp.sin(lax.conv_general_dilated(x, k, *args, dimension_numbers=dn)))

    np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-6)
    for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Inside a scan (where XLA:CPU's default transpose is slow) the gradient is the same too.
    def scanned(x):
        return jax.lax.scan(lambda c, s: (c + jax.grad(ours)(x * s, k), None),
                            jnp.zeros_like(x), jnp.array([0.5, 1.0]))[0]
    expected = jax.grad(ref)(x * 0.5, k) + jax.grad(ref)(x, k)
    np.testing.assert_allclose(scanned(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 8, 2), (2, 16, 15, 4)])
def test_max_pool_equals_reduce_window_values_and_gradients(shape):
    """The slice-based pool gives lax's values and routes each gradient to the first maximum of
    its window exactly as select-and-scatter does, ties included (inputs rounded to halves)."""
    import flax.linen as nn

    from cxr_jax.models.layers import max_pool_3x3_s2

    def ref(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 2) / 2
    w = jax.random.normal(jax.random.key(1), ref(x).shape)
    np.testing.assert_array_equal(max_pool_3x3_s2(x), ref(x))
    ours = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x) * w))(x)
    theirs = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # A window whose maximum repeats sends its gradient to one pixel only (the first).
    flat = jnp.zeros((1, 3, 3, 1))
    g = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x)))(flat)
    assert float(g.sum()) == 4.0 and int((g != 0).sum()) <= 4


def test_avg_pool_2x2_matches_torchvision_floor_mode():
    from cxr_jax.models.layers import avg_pool_2x2

    x = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 5, 7, 3)
    y = avg_pool_2x2(x)
    assert y.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(y[0, 1, 2, 0], np.mean(np.asarray(x)[0, 2:4, 4:6, 0]))
