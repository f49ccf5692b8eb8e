"""Methods declare what they need; `prepare` turns a name and settings into a ready method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cxr_jax.attribution as attribution
from cxr_jax import evaluation, models
from cxr_jax.attribution import iba as I
from cxr_jax.models import Layers, Model, Stage


def _pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))


def toy():
    """16x16 -> features [16,16,4] -> pool [8,8,4] -> head (2 classes); declares its layers."""
    feats = lambda x: jnp.concatenate([x, jnp.abs(x), x ** 2, 0 * x + 1.0], -1)
    head = lambda a: jnp.stack([a[:, :4, :4, 0].mean((1, 2)), a[:, 4:, 4:, 1].mean((1, 2))], -1)
    return Model("toy", (Stage("features", fn=feats), Stage("pool", fn=_pool2),
                         Stage("head", fn=head)), num_classes=2, in_channels=1, min_size=8,
                 layers=Layers(explain="features", iba="pool",
                               multilayer_iba=("features", "pool"), stride16="pool"))


def _setup():
    model = toy()
    images = np.asarray(jax.random.normal(jax.random.key(0), (130, 16, 16, 1)))
    return model, {}, images


def test_registry_declares_layers_needs_and_tasks():
    assert attribution.info("iba").needs.keyword == "stats"
    assert attribution.info("multilayer_iba").layer == "multilayer_iba"
    assert attribution.info("gradcam").layer == "explain"
    assert attribution.info("gradient").layer is None
    assert attribution.info("gradient").needs is None
    assert attribution.info("regression_iba").suits(regression=True)
    assert not attribution.info("iba").suits(regression=True)
    assert attribution.info("gradient").suits(regression=True)
    assert attribution.info("integrated_gradients").settings(fast=True) == {"steps": 16}
    assert [m.name for m in attribution.infos()][:3] == ["gradient", "input_x_gradient",
                                                         "smoothgrad"]
    with pytest.raises(ValueError, match="Unknown attribution method"):
        attribution.info("gradcamm")


def test_a_method_without_needs_is_the_registered_function_with_its_settings():
    model, v, images = _setup()
    p = attribution.prepare("integrated_gradients", {"steps": 4}, model, v)
    assert p == ("integrated_gradients", {"steps": 4})
    x, t = jnp.asarray(images[:2]), jnp.array([0, 1])
    np.testing.assert_array_equal(p(model, v, x, t),
                                  attribution.get("integrated_gradients")(model, v, x, t, steps=4))


def test_iba_gets_the_declared_layer_and_statistics_estimated_64_images_at_a_time():
    model, v, images = _setup()
    p = attribution.prepare("iba", {"steps": 2, "unroll": 1}, model, v, images)
    assert p.hparams["layer"] == "pool" and p.settings() == {"steps": 2, "unroll": 1,
                                                             "layer": "pool"}
    want = I.iba_stats(model, v, [images[i:i + 64] for i in range(0, 130, 64)], layer="pool")
    got = p.hparams["stats"]
    assert got.n == 130 and got.layer == "pool"
    for a, b in ((got.mean, want.mean), (got.std, want.std), (got.active_rate, want.active_rate)):
        np.testing.assert_array_equal(a, b)
    x, t, k = jnp.asarray(images[:2]), jnp.array([0, 1]), jax.random.key(3)
    np.testing.assert_array_equal(
        p(model, v, x, t, key=k), I.iba(model, v, x, t, key=k, stats=want, steps=2, unroll=1))


def test_statistics_are_estimated_once_per_layer_and_cached_on_disk(tmp_path):
    model, v, images = _setup()
    calls = []

    def source():
        calls.append(1)
        return images

    specs = {"iba": ("iba", {}), "inverse_iba": {"method": "inverse_iba", "beta": 3.0},
             "multilayer_iba": ("multilayer_iba", {}), "gradcam": ("gradcam", {})}
    first = attribution.prepare_all(specs, model, v, source, cache=attribution.Cache(tmp_path))
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iba_stats_features.npz",
                                                          "iba_stats_pool.npz"]
    assert first["iba"].hparams["stats"] is first["inverse_iba"].hparams["stats"]
    assert first["multilayer_iba"].hparams["layer"] == ["features", "pool"]
    assert set(first["multilayer_iba"].hparams["stats"]) == {"features", "pool"}
    assert "stats" not in first["gradcam"].hparams

    def fails():
        raise AssertionError("statistics on disk must not be estimated again")

    again = attribution.prepare_all(specs, model, v, fails, cache=attribution.Cache(tmp_path))
    np.testing.assert_array_equal(again["iba"].hparams["stats"].std,
                                  first["iba"].hparams["stats"].std)
    noise = attribution.noise_check(model, v, attribution.data_inputs(again.values())["stats"],
                                    ["a", "b"])
    assert set(noise) == {"features", "pool"}


def test_needs_without_images_and_unknown_layers_are_clear_errors():
    model, v, _ = _setup()
    with pytest.raises(ValueError, match="iba needs IBA feature statistics of pool: pass images="):
        attribution.prepare("iba", {}, model, v)
    stats = I.iba_stats(model, v, [np.zeros((4, 16, 16, 1), np.float32)], layer="pool")
    assert attribution.prepare("iba", {"stats": stats}, model, v).hparams["stats"] is stats
    with pytest.raises(ValueError, match="Unknown layer 'pool2'"):
        attribution.prepare("gradcam", {"layer": "pool2"}, model, v)


def test_layer_aliases_are_resolved_by_the_model():
    model = models.get("resnet_tiny", num_classes=2)
    p = attribution.prepare("gradcam", {"layer": "stride16"}, model, {})
    assert p.hparams["layer"] == "layer3"
    # resnet_tiny has one unit per layer: layer4.last is layer4.0, listed once
    p = attribution.prepare("normgrad", {"layer": ["layer2.0", "layer4.last", "layer4.0"]},
                            model, {})
    assert p.hparams["layer"] == ["layer2.0", "layer4.0"]
    # points inside units and NormGrad's "convs" pass through for the method to resolve; a
    # misspelt point is still an error before any work starts
    p = attribution.prepare("normgrad", {"layer": ["layer2.0.conv2", "layer4.last"]}, model, {})
    assert p.hparams["layer"] == ["layer2.0.conv2", "layer4.0"]
    assert attribution.prepare("normgrad", {"layer": "layer4.0.conv1"}, model,
                               {}).hparams["layer"] == "layer4.0.conv1"
    assert attribution.prepare("normgrad", {"layer": "convs"}, model, {}).hparams["layer"] == \
        "convs"
    with pytest.raises(ValueError, match="layer4.0.conv9"):
        attribution.prepare("normgrad", {"layer": "layer4.0.conv9"}, model, {})


def test_default_methods_follow_the_registry():
    cls = evaluation.default_methods(fast=True, cam_layer="stride16")
    assert list(cls) == [m.name for m in attribution.infos() if m.suits(regression=False)]
    assert cls["integrated_gradients"] == ("integrated_gradients", {"steps": 16})
    assert cls["smoothgrad"] == ("smoothgrad", {"method": "gradient", "n": 10})
    assert cls["gradcam"][1] == {"layer": "stride16"} and cls["iba"][1] == {}
    reg = evaluation.default_methods(regression=True, with_needs=True)
    assert "regression_iba" in reg and "iba" not in reg and "multilayer_iba" not in reg
    assert reg["regression_iba"][1] == {"loss": "push_up"}
    assert not any(attribution.info(m).needs for m in evaluation.default_methods(
        with_needs=False))
    black = evaluation.default_methods(fast=True, hparams={
        "integrated_gradients": {"baseline": -1024.0}, "iba": {"beta": 5.0}}, with_needs=False)
    assert black["integrated_gradients"] == ("integrated_gradients",
                                              {"steps": 16, "baseline": -1024.0})
    assert "iba" not in black  # left out by with_needs: its entry is ignored
    assert black["gradcam"] == ("gradcam", {})  # methods not named keep their settings
    with pytest.raises(ValueError, match="unknown attribution method 'ig'"):
        evaluation.default_methods(hparams={"ig": {"steps": 4}})
    with pytest.raises(ValueError, match="no hyperparameter.*base; it takes steps, baseline"):
        evaluation.default_methods(hparams={"integrated_gradients": {"base": 0.0}})
    assert list(evaluation.select(cls, "iba,gradient")) == ["iba", "gradient"]
    with pytest.raises(ValueError, match="Unknown methods"):
        evaluation.select(cls, "gradient,foo")
