"""Parameter randomisation, Spearman, SSIM and the consistency summary."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from cxr_jax.metrics import (
    cascading_randomization,
    consistency_summary,
    independent_randomization,
    model_layer_paths,
    randomize_layers,
    spearman,
    ssim,
)


def _variables(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "params": {
            "features": {
                "conv0": {"kernel": 3 + 2 * jax.random.normal(k[0], (60, 50))},
                "block1": {"kernel": jax.random.normal(k[1], (4, 4)), "bias": jnp.zeros(4)},
            },
            "classifier": {"kernel": jax.random.normal(k[2], (4, 2)), "bias": jnp.zeros(2)},
        },
        "batch_stats": {"features": {"block1": {"mean": jnp.ones(4)}}},
    }


def _leaf(v, *path):
    for p in path:
        v = v[p]
    return np.asarray(v)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_randomize_from_fresh_init_replaces_only_the_named_subtree():
    v, fresh = _variables(0), _variables(1)
    out = randomize_layers(v, jax.random.key(0), ["features.block1"], init_variables=fresh)
    assert _same(out["params"]["features"]["block1"], fresh["params"]["features"]["block1"])
    assert _same(out["params"]["features"]["conv0"], v["params"]["features"]["conv0"])
    assert _same(out["params"]["classifier"], v["params"]["classifier"])
    assert _same(out["batch_stats"], v["batch_stats"])  # running statistics kept
    assert not _same(v["params"]["features"]["block1"], fresh["params"]["features"]["block1"])
    bad = {"params": {"features": {"block1": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(4)}}}}
    with pytest.raises(ValueError, match="shape"):
        randomize_layers(v, jax.random.key(0), ["features.block1"], init_variables=bad)


def test_moment_matched_reinit():
    v = _variables()
    out = randomize_layers(v, jax.random.key(5), [("features", "conv0"), "classifier"])
    new = _leaf(out, "params", "features", "conv0", "kernel")
    old = _leaf(v, "params", "features", "conv0", "kernel")
    assert abs(new.mean() - old.mean()) < 0.1 and abs(new.std() - old.std()) < 0.1
    assert np.corrcoef(new.ravel(), old.ravel())[0, 1] < 0.1  # unrelated values
    bias = _leaf(out, "params", "classifier", "bias")  # zero-spread leaf: fallback std 0.01
    assert np.all(bias != 0) and np.all(np.abs(bias) < 0.05)
    assert np.array_equal(_leaf(v, "params", "classifier", "bias"), np.zeros(2))  # input intact
    with pytest.raises(ValueError, match="no parameters"):
        randomize_layers(v, jax.random.key(0), ["features.denseblock9"])


def test_cascading_and_independent():
    v = _variables()
    order = ["classifier", "features.block1", "features.conv0"]
    key = jax.random.key(7)
    casc = cascading_randomization(v, key, order)
    assert [name for name, _ in casc] == order
    cls = lambda t: t["params"]["classifier"]  # noqa: E731
    blk = lambda t: t["params"]["features"]["block1"]  # noqa: E731
    conv = lambda t: t["params"]["features"]["conv0"]  # noqa: E731
    # step 0: only the top layer; step 1: top two; the same random top layer in both
    assert not _same(cls(casc[0][1]), cls(v)) and _same(blk(casc[0][1]), blk(v))
    assert _same(cls(casc[1][1]), cls(casc[0][1])) and not _same(blk(casc[1][1]), blk(v))
    assert _same(conv(casc[1][1]), conv(v)) and not _same(conv(casc[2][1]), conv(v))
    ind = independent_randomization(v, key, order)
    assert _same(blk(ind[1][1]), blk(casc[1][1]))  # same draw as in the cascade
    assert _same(cls(ind[1][1]), cls(v)) and _same(conv(ind[1][1]), conv(v))


def test_model_layer_paths():
    stage = lambda *p: types.SimpleNamespace(path=p)  # noqa: E731
    model = types.SimpleNamespace(stage_list=[stage("features", "conv0"), stage(),
                                              stage("classifier")])
    assert model_layer_paths(model) == ["classifier", "features.conv0"]
    assert model_layer_paths(model, top_down=False) == ["features.conv0", "classifier"]
    with pytest.raises(ValueError, match="stage_list"):
        model_layer_paths(object())


def test_spearman_known_pairs():
    a = np.array([[1.0, 2, 2, 3]])
    b = np.array([[1.0, 3, 2, 4]])
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman(a, b)[0] == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman(a, b)[0] == pytest.approx(spearmanr(a[0], b[0])[0])
    rng = np.random.default_rng(0)
    m = rng.random((3, 5, 5))
    np.testing.assert_allclose(spearman(m, np.exp(3 * m)), 1.0)
    np.testing.assert_allclose(spearman(m, -m), -1.0)
    s = np.array([[-3.0, 1, 2]])
    t = np.array([[3.0, 1, 2]])
    assert spearman(s, t)[0] == pytest.approx(-0.5)
    assert spearman(s, t, absolute=True)[0] == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones((1, 4, 4)), m[:1, :4, :4])[0])


def test_ssim_matches_skimage_and_known_pairs():
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 24))
    b = a + 0.3 * rng.random((3, 20, 24))
    got = np.asarray(ssim(a, b))
    for i in range(3):
        na = (a[i] - a[i].min()) / np.ptp(a[i])
        nb = (b[i] - b[i].min()) / np.ptp(b[i])
        assert got[i] == pytest.approx(structural_similarity(na, nb, data_range=1.0), abs=1e-5)
    np.testing.assert_allclose(ssim(a, 5 * a + 2), 1.0, atol=1e-5)  # normalised: same map
    assert np.all(np.asarray(ssim(a, -a)) < 0)
    raw = np.asarray(ssim(a, b, normalize=False, data_range=2.0))
    ref = [structural_similarity(a[i], b[i], data_range=2.0) for i in range(3)]
    np.testing.assert_allclose(raw, ref, atol=1e-5)
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, b, normalize=False)


def test_consistency_summary():
    s = consistency_summary([1.0, 2.0, 3.0], [0.0, 1.0, np.nan])
    assert s.difference == pytest.approx(2.0 - 0.5)
    assert (s.mean_a, s.mean_b) == (2.0, 0.5)
    np.testing.assert_array_equal(s.per_image, [1.0, 1.0, np.nan])
    u = consistency_summary([1.0, 3.0], [1.0, 1.0, 4.0])  # unpaired sets
    assert u.difference == pytest.approx(0.0) and u.per_image is None
    with pytest.raises(ValueError, match="non-NaN"):
        consistency_summary([np.nan], [1.0])
