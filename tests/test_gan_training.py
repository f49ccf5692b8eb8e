"""Training the explanation GAN: the guidance term, the EMA, resumption, bad inputs."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import generative as gen
from cxr_jax.data import phantoms
from cxr_jax.generative import train as gan_train
from cxr_jax.training import Checkpointer, make_mesh, replicate, shard_batch

NAMES = ("a", "b", "c")


class MeanPixel(nn.Module):
    """A frozen analytic classifier: logit k = (k + 1) * mean pixel / 1024 (no parameters)."""

    num_classes: int = len(NAMES)

    @nn.compact
    def __call__(self, x):
        m = jnp.mean(x, axis=(1, 2, 3)) / 1024.0
        return m[:, None] * (jnp.arange(self.num_classes) + 1.0)


class Killed(Exception):
    """Stands for the process dying mid-run."""


def _config(**overrides):
    c = gen.default_config()
    c.update(dict(image_size=64, z_anatomy=8, z_pathology=3, g_width=4, d_width=4,
                  finding="c", guidance_weight=2.0, batch_size=8, steps=4, ema=0.9,
                  checkpoint_every=2, sample_every=2, sample_rows=2, sample_columns=2, seed=0))
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def images():
    return phantoms.generate(16, image_size=64, seed=0).images  # [-1024, 1024]


def test_guidance_is_bce_of_one_sigmoid_of_the_frozen_logit():
    # Constant images: the classifier's logit for finding "c" (index 2) is 3 * pixel value.
    values = np.array([-0.9, 0.8, -0.7, 0.6], np.float32)
    x = jnp.asarray(np.broadcast_to(values[:, None, None, None], (4, 64, 64, 1)))
    positive = jnp.array([False, True, False, True])
    logit = gen.classifier_logit(MeanPixel(), {}, x, 2)
    np.testing.assert_allclose(logit, 3 * values, rtol=1e-6)   # mapped to [-1024, 1024]
    np.testing.assert_allclose(gen.classifier_logit(MeanPixel(), {}, x, 2, input_size=128),
                               logit, rtol=1e-5)              # resized for the classifier

    z, y = 3.0 * values.astype(np.float64), np.asarray(positive, np.float64)
    s = 1 / (1 + np.exp(-z))
    hand = np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s)))
    real, fake = jnp.array([1.5, 0.2, -0.3]), jnp.array([-2.0, 0.4, 0.1, -0.5])
    losses = gen.gan_losses(real, fake, logit, positive, guidance_weight=2.0)
    np.testing.assert_allclose(losses["guidance"], hand, rtol=1e-5)
    hinge = np.mean(np.maximum(0, 1 - np.array([1.5, 0.2, -0.3]))) + np.mean(
        np.maximum(0, 1 + np.array([-2.0, 0.4, 0.1, -0.5])))
    np.testing.assert_allclose(losses["d"], hinge, rtol=1e-6)
    np.testing.assert_allclose(losses["adversarial"], -np.mean([-2.0, 0.4, 0.1, -0.5]),
                               rtol=1e-6)
    np.testing.assert_allclose(losses["g"], losses["adversarial"] + 2.0 * hand, rtol=1e-5)
    # The released code's double softmax (two-class logits [0, z], softmax, then a
    # cross-entropy that applies another) is flatter: it never falls below log(1 + 1/e), so
    # a classifier that agrees with z_p (as here) still gets a large, uninformative loss.
    p = np.stack([1 - s, s], axis=1)
    log_q = p - np.log(np.exp(p).sum(1, keepdims=True))
    double = np.mean(-log_q[np.arange(4), y.astype(int)])
    assert hand < 0.11 and double > np.log(1 + np.exp(-1)) and double - hand > 0.2


def _step_setup(config):
    G, D = gan_train.build_models(config)
    mesh = make_mesh()
    step = gan_train.make_train_step(config, G, D, MeanPixel(), replicate({}, mesh),
                                     finding_index=2, mesh=mesh)
    return step, gan_train.init_state(config, G, D), mesh


def test_one_step_updates_both_networks_and_the_ema(images):
    config = _config()
    step, state, mesh = _step_setup(config)
    old = jax.device_get(state)
    batch = shard_batch(gen.to_unit(images[:8]), mesh)
    new, metrics = step(replicate(state, mesh), batch, jax.random.PRNGKey(5))
    new = jax.device_get(new)
    assert int(new.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
    for name in ("g_params", "d_params", "d_spectral"):
        assert not np.allclose(flat(getattr(old, name)), flat(getattr(new, name))), name
    expected = 0.9 * flat(old.ema_params) + 0.1 * flat(new.g_params)
    np.testing.assert_allclose(flat(new.ema_params), expected, rtol=1e-6, atol=1e-7)


def _final_state(workdir, config):
    G, D = gan_train.build_models(config)
    ckpt = Checkpointer(str(workdir))
    state, extras = ckpt.restore(gan_train.init_state(config, G, D))
    ckpt.close()
    return jax.device_get(state), extras


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, images):
    config = _config()
    run = lambda workdir: gen.train_gan(config, str(workdir), MeanPixel(), {}, images,
                                        finding_names=NAMES, progress=False)
    straight = run(tmp_path / "straight")

    # Interrupted: an exception after step 3 (checkpoints at 2 and 4), then a restart.
    build = gan_train.make_train_step

    def crashing(*args, **kwargs):
        step, calls = build(*args, **kwargs), []

        def wrapped(*a):
            out = step(*a)
            calls.append(1)
            if len(calls) == 3:
                raise Killed("simulated kill after step 3")
            return out
        return wrapped

    monkeypatch.setattr(gan_train, "make_train_step", crashing)
    with pytest.raises(Killed):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    assert Checkpointer(str(tmp_path / "resumed")).latest_step() == 2
    resumed = run(tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2 and straight["resumed_from_step"] == 0

    a, extras_a = _final_state(tmp_path / "straight", config)
    b, extras_b = _final_state(tmp_path / "resumed", config)
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert straight["history"] == resumed["history"] == extras_a["history"]
    assert [h["step"] for h in straight["history"]] == [2, 4]
    assert extras_a["iterator"] == extras_b["iterator"]

    on_disk = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert on_disk["history"] == resumed["history"] and on_disk["finding"] == "c"
    for path in resumed["samples"]:
        assert os.path.getsize(path) > 0 and path.endswith(".png")
    assert [os.path.basename(p) for p in resumed["samples"]] == ["step_000002.png",
                                                                 "step_000004.png"]
    # The saved generator is the moving average, ready for explanations.
    G, g_vars, saved_config, names = gen.load_generator(str(tmp_path / "resumed"))
    assert names == NAMES and saved_config.image_size == 64
    for x, y in zip(jax.tree_util.tree_leaves(g_vars["params"]),
                    jax.tree_util.tree_leaves(b.ema_params)):
        np.testing.assert_array_equal(x, y)


def test_bad_inputs_are_refused_with_clear_errors(tmp_path, images):
    def train(config=None, imgs=images, names=NAMES):
        return gen.train_gan(config or _config(), str(tmp_path), MeanPixel(), {}, imgs,
                             finding_names=names, progress=False)

    with pytest.raises(ValueError, match=r"\[N, 64, 64, 1\].*\(16, 32, 32, 1\)"):
        train(imgs=phantoms.generate(16, image_size=32, seed=0).images)
    with pytest.raises(ValueError, match=r"one of \(64, 128\)"):
        train(_config(image_size=96))
    with pytest.raises(ValueError, match="'nodule' is not among"):
        train(_config(finding="nodule"))
    with pytest.raises(ValueError, match="4 outputs but 3"):
        gen.train_gan(_config(), str(tmp_path), MeanPixel(4), {}, images, finding_names=NAMES,
                      progress=False)
    nan = images.copy()
    nan[3, 10, 10, 0] = np.nan
    with pytest.raises(ValueError, match="NaN.*first index 3"):
        train(imgs=nan)
    with pytest.raises(ValueError, match=r"\[-1024, 1024\]"):
        train(imgs=images * 4)
    with pytest.raises(ValueError, match="even"):
        train(_config(batch_size=7))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(imgs=images[:4])
    with pytest.raises(ValueError, match="needs the real images' labels"):
        train(_config(conditional=True))
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[16\]"):
        gen.train_gan(_config(conditional=True), str(tmp_path), MeanPixel(), {}, images,
                      finding_names=NAMES, labels=np.zeros(15, bool), progress=False)
    with pytest.raises(ValueError, match="0/1"):
        gen.train_gan(_config(conditional=True), str(tmp_path), MeanPixel(), {}, images,
                      finding_names=NAMES, labels=np.full(16, 2), progress=False)
    assert not os.path.exists(tmp_path / "checkpoints")
