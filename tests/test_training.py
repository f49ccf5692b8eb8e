"""Training: losses, optimizer, data-parallel steps, checkpoints and SIGKILL resumption."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cxr_jax import models, training
from cxr_jax.data.loader import ArraySource, make_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bce_masks_nan_labels_and_weights_classes():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = jnp.array([[1.0, np.nan, 0.0], [np.nan, 1.0, 1.0]])
    bce = lambda z, y: np.log1p(np.exp(-z)) if y == 1 else np.log1p(np.exp(z))
    terms = [bce(2.0, 1), bce(0.5, 0), bce(3.0, 1), bce(-2.0, 1)]
    np.testing.assert_allclose(training.loss_fn("bce", logits, labels), np.mean(terms), rtol=1e-6)
    w = jnp.array([1.0, 2.0, 3.0])
    weighted = (1 * terms[0] + 3 * terms[1] + 2 * terms[2] + 3 * terms[3]) / 4
    np.testing.assert_allclose(training.loss_fn("bce", logits, labels, w), weighted, rtol=1e-6)
    assert np.isfinite(training.loss_fn("bce", logits, jnp.full((2, 3), jnp.nan)))


def test_ce_and_mse_losses():
    logits = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    ce = training.loss_fn("ce", logits, jnp.array([1, 0]))
    expected = np.mean([np.log1p(np.exp(-1.0)), np.log(2.0)])
    np.testing.assert_allclose(ce, expected, rtol=1e-6)
    mse = training.loss_fn("mse", jnp.array([[1.0], [3.0]]), jnp.array([0.0, 5.0]))
    np.testing.assert_allclose(mse, (1 + 4) / 2)
    with pytest.raises(ValueError, match="Unknown loss"):
        training.loss_fn("hinge", logits, logits)


def test_label_smoothing_moves_targets_and_bounds_the_optimal_logit():
    eps = 0.1
    sp = lambda z: np.log1p(np.exp(z))
    logits = jnp.array([[2.0, -1.0]])
    labels = jnp.array([[1.0, 0.0]])
    # bce: y -> 0.95 / 0.05, so each term is (1 - t) softplus(z) + t softplus(-z).
    want = np.mean([0.95 * sp(-2.0) + 0.05 * sp(2.0), 0.95 * sp(-1.0) + 0.05 * sp(1.0)])
    np.testing.assert_allclose(training.loss_fn("bce", logits, labels, label_smoothing=eps),
                               want, rtol=1e-6)
    # Minimal at log((2 - eps) / eps) for a positive label, not at +infinity.
    grad = jax.grad(lambda z: training.loss_fn("bce", z[None, None], jnp.ones((1, 1)),
                                               label_smoothing=eps))
    assert abs(float(grad(jnp.float32(np.log((2 - eps) / eps))))) < 1e-6
    assert float(grad(jnp.float32(10.0))) > 0
    # ce with K = 2: targets (eps/2, 1 - eps/2).
    ce = training.loss_fn("ce", jnp.array([[1.0, 2.0]]), jnp.array([1]), label_smoothing=eps)
    logp = np.log(np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum())
    np.testing.assert_allclose(ce, -(0.05 * logp[0] + 0.95 * logp[1]), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        training.loss_fn("bce", logits, labels, label_smoothing=1.0)


def test_optimizer_warmup_then_cosine():
    tx = training.make_optimizer(name="sgd", learning_rate=1.0, total_steps=10, warmup_steps=5,
                                 weight_decay=0.0, clip_norm=None)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    lrs = []
    for _ in range(10):
        upd, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(float(-upd["w"]))
    assert lrs[0] == 0.0 and lrs[1] > 0  # warm-up from zero (nesterov momentum adds up)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        training.make_optimizer(name="lion", total_steps=10)


def _setup(n_devices, batch=8, size=32):
    model = models.get("resnet_tiny", num_classes=3)
    # SGD, not Adam: Adam rescales near-zero gradients to full-size steps, which would turn
    # reduction-order rounding between 1 and 8 devices into visible parameter differences.
    tx = training.make_optimizer(name="sgd", learning_rate=1e-2, total_steps=10, warmup_steps=0)
    state = training.create_state(model, tx, image_size=size, seed=0)
    step = jax.jit(training.make_train_step(model, tx, loss="bce"))
    mesh = training.make_mesh(jax.devices()[:n_devices])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 1)).astype(np.float32)
    y = (rng.random((batch, 3)) > 0.5).astype(np.float32)
    return step, training.replicate(state, mesh), training.shard_batch((x, y), mesh)


def test_data_parallel_step_on_8_devices_matches_one_device():
    assert jax.device_count() == 8, "tests run with 8 fake CPU devices (tests/conftest.py)"
    outs = []
    for n in (1, 8):
        step, state, (x, y) = _setup(n)
        assert len(x.sharding.device_set) == n
        losses = []
        for _ in range(3):
            state, m = step(state, x, y)
            losses.append(float(m["loss"]))
        assert losses[-1] < losses[0]
        outs.append((state, losses))
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(outs[0][0].params),
                    jax.tree_util.tree_leaves(outs[1][0].params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_loader_is_deterministic_and_resumes_from_state():
    src = ArraySource({"x": np.arange(40), "y": np.arange(40) * 2})
    it = iter(make_loader(src, batch_size=4, seed=3))
    first = [next(it)["x"] for _ in range(3)]
    saved = it.get_state()
    rest = [next(it)["x"] for _ in range(6)]
    again = iter(make_loader(src, batch_size=4, seed=3))
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(
        [next(again)["x"] for _ in range(3)]))
    resumed = iter(make_loader(src, batch_size=4, seed=3))
    resumed.set_state(saved)
    np.testing.assert_array_equal(np.concatenate(rest),
                                  np.concatenate([next(resumed)["x"] for _ in range(6)]))
    # One epoch (10 batches of 4) covers every row once, in a shuffled order.
    fresh = iter(make_loader(src, batch_size=4, seed=3))
    epoch = np.concatenate([next(fresh)["x"] for _ in range(10)])
    assert sorted(epoch.tolist()) == list(range(40))
    assert not np.array_equal(epoch, np.arange(40))


def test_process_slices_of_global_batches_equal_the_one_process_batches():
    # Two processes' loaders (global batch 6 = 2 x 3) put side by side give the one-process
    # batches of 6, across an epoch boundary, and each row keeps its random draw.
    import grain.python as grain
    from cxr_jax.data.loader import BatchSliceSampler

    class Draw(grain.RandomMapTransform):
        def random_map(self, row, rng):
            return {**row, "u": rng.integers(1 << 30)}

    src = ArraySource({"x": np.arange(20)})

    def loader(batch, index=None):
        base = grain.IndexSampler(20, shard_options=grain.NoSharding(), shuffle=True,
                                  num_epochs=None, seed=5)
        sampler = base if index is None else BatchSliceSampler(base, batch, index, 2)
        return iter(grain.DataLoader(data_source=src, sampler=sampler,
                                     operations=[Draw(), grain.Batch(batch)]))

    one, p0, p1 = loader(6), loader(3, 0), loader(3, 1)
    for _ in range(8):  # 48 rows: more than two epochs of 20
        a, b, c = next(one), next(p0), next(p1)
        for k in ("x", "u"):
            np.testing.assert_array_equal(a[k], np.concatenate([b[k], c[k]]))
    with pytest.raises(ValueError, match="process index"):
        BatchSliceSampler(None, 3, 2, 2)


def _train(workdir, cache, *extra):
    # The three runs share a persistent compilation cache: later runs skip compilation.
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
           "--config=experiments/configs/train.py:test", f"--compilation_cache={cache}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _final_params(workdir):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    tree = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mgr.close()
    return step, tree.state


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    killed, clean, cache = (str(tmp_path / d) for d in ("killed", "clean", "cache"))
    first = _train(killed, cache, "--config.kill_at_step=4")
    assert first.returncode == -9, first.stderr[-2000:]
    assert not os.path.exists(os.path.join(killed, "results.json"))
    second = _train(killed, cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert os.listdir(cache), "the persistent compilation cache was not written"
    ref = _train(clean, cache)
    assert ref.returncode == 0, ref.stderr[-2000:]
    with open(os.path.join(killed, "results.json")) as f:
        resumed = json.load(f)
    with open(os.path.join(clean, "results.json")) as f:
        uninterrupted = json.load(f)
    assert resumed["resumed_from_step"] in (2, 4)
    assert uninterrupted["resumed_from_step"] == 0
    assert resumed["auroc"] == pytest.approx(uninterrupted["auroc"], abs=1e-6, nan_ok=True)
    assert [h["step"] for h in resumed["history"]] == [3, 6]
    s1, p1 = _final_params(killed)
    s2, p2 = _final_params(clean)
    assert s1 == s2 == 6
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = models.get("resnet_tiny", num_classes=2)
    tx = optax.sgd(0.1)
    state = training.create_state(model, tx, image_size=32)
    ck = training.Checkpointer(str(tmp_path), keep=2)
    ck.save(2, state, {"iterator": "", "history": [], "train_seconds": 0.0})
    ck.wait()
    # What a kill during a save leaves behind: an orbax temporary directory for a later step.
    os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-123" / "state")
    ck2 = training.Checkpointer(str(tmp_path), keep=2)
    assert ck2.latest_step() == 2
    restored, extras = ck2.restore(state)
    assert int(restored.step) == 0 and extras["history"] == []
    ck.close()
    ck2.close()
