"""The IBA family: statistics, bottleneck maths, known-answer toy models, batching, errors."""

import dataclasses
import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import integrate, ndimage
from skimage.transform import resize

from cxr_jax import attribution, models
from cxr_jax.attribution import iba as I
from cxr_jax.models import Model, Stage

# --------------------------------------------------------------------------------- toy models
# Region toy: 16x16 input -> "features" [16,16,C] (x, |x|, then C-2 dead channels) -> "pool"
# (2x2 average, [8,8,C]) -> "head". Logit k reads only channel 0 of pool inside region k:
# class 0 <- feature rows 0:3, cols 0:3 (input 0:6, 0:6); class 1 <- rows 5:8, cols 4:8
# (input 10:16, 8:16). So the answer is known: all information the model uses sits there.
REGIONS = ((slice(0, 3), slice(0, 3)), (slice(5, 8), slice(4, 8)))
INPUT_REGIONS = ((slice(0, 6), slice(0, 6)), (slice(10, 16), slice(8, 16)))
GAIN = 8.0


def _pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))


def _region_head(a, num_classes):
    scores = [a[:, rs, cs, 0].mean((1, 2)) for rs, cs in REGIONS[:max(num_classes, 1)]]
    return GAIN * jnp.stack(scores, -1) - GAIN / 4


def region_toy(num_classes=2, channels=32):
    feats = lambda x: jnp.concatenate([x, jnp.abs(x)] + [0 * x] * (channels - 2), -1)
    return Model(f"toy_regions_{num_classes}_{channels}",
                 (Stage("features", fn=feats), Stage("pool", fn=_pool2),
                  Stage("head", fn=functools.partial(_region_head, num_classes=num_classes))),
                 num_classes=num_classes, in_channels=1, min_size=8)


def region_images(n=2, key=5):
    """Image 0 bright in region 0, image 1 in region 1 (on N(0,1) background)."""
    x = jax.random.normal(jax.random.key(key), (n, 16, 16, 1))
    for i in range(n):
        rs, cs = INPUT_REGIONS[i % 2]
        x = x.at[i, rs, cs].add(2.0)
    return x


@functools.lru_cache(maxsize=None)
def region_setup(num_classes=2):
    model = region_toy(num_classes)
    data = jax.random.normal(jax.random.key(0), (1000, 16, 16, 1))
    variables = model.init(jax.random.key(0), data[:1])
    batches = [data[i:i + 250] for i in range(0, 1000, 250)]
    stats = {layer: I.iba_stats(model, variables, batches, layer=layer)
             for layer in ("features", "pool")}
    return model, variables, stats


@functools.lru_cache(maxsize=None)
def jitted(method, num_classes=2, layer="pool", **static):
    """`method` on the region toy, jitted once per configuration (compiles are the test cost)."""
    model, variables, stats = region_setup(num_classes)
    fn = functools.partial(getattr(I, method), model, stats=stats[layer], **static)
    return jax.jit(lambda x, t, key, **kw: fn(variables, x, t, key=key, **kw))


def region_iba(x, t, key, layer="pool"):
    """IBA saliency on the region toy, through the (cached) jitted capacity."""
    return I.capacity_to_saliency(jitted("iba_capacity", layer=layer)(x, t, key), (16, 16))


def region_mask(i, size=16):
    m = np.zeros((size, size), bool)
    m[INPUT_REGIONS[i]] = True
    return m


def assert_concentrated(sal, region_ids):
    sal = np.asarray(sal)
    assert np.all(np.isfinite(sal)) and sal.min() >= 0
    for img, r in zip(sal, region_ids):
        m = region_mask(r)
        frac = img[m].sum() / img.sum()
        # the region is 14-19% of the image; smoothing of lambda spills a little over its edge
        assert frac > 0.7, frac
        assert img[m].mean() > 10 * img[~m].mean()


class _ConvBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(8, (3, 3), name="conv")(x))


def conv_toy():
    """Real Flax convolutions before and after the bottleneck (for vmap-over-conv checks)."""
    return Model("toy_conv", (
        Stage("block1", ("block1",), _ConvBlock(name="block1"), mode="none"),
        Stage("pool", fn=_pool2),
        Stage("block2", ("block2",), _ConvBlock(name="block2"), mode="none"),
        Stage("gap", fn=lambda h: 20.0 * h.mean((1, 2))),
        Stage("classifier", ("classifier",), nn.Dense(3, name="classifier"), mode="none"),
    ), num_classes=3, in_channels=1, min_size=8)


# --------------------------------------------------------------------------- bottleneck maths
@pytest.mark.parametrize("lam,r", [(0.5, 0.0), (0.9, 1.5), (0.2, -2.0), (0.993, 0.7),
                                   (0.05, 3.0)])
def test_capacity_equals_integrated_kl(lam, r):
    mu, s = lam * r, 1.0 - lam
    logp = lambda z: -0.5 * ((z - mu) / s) ** 2 - np.log(s * np.sqrt(2 * np.pi))
    logq = lambda z: -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
    kl, _ = integrate.quad(lambda z: np.exp(logp(z)) * (logp(z) - logq(z)),
                           mu - 40 * s, mu + 40 * s, points=[mu], limit=200)
    closed = 0.5 * (mu ** 2 + s ** 2 - 1 - 2 * np.log(s))
    got = float(I.kl_capacity(jnp.float32(r), jnp.float32(lam)))
    np.testing.assert_allclose(kl, closed, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got, kl, rtol=2e-5, atol=1e-6)


def test_capacity_zero_for_pure_noise_and_finite_at_lambda_one():
    assert float(I.kl_capacity(jnp.float32(1.7), jnp.float32(0.0))) == pytest.approx(0, abs=1e-7)
    big = I.kl_capacity(jnp.float32(0.3), jnp.float32(1.0))
    assert np.isfinite(float(big)) and float(big) > 20


def test_smoothing_matches_reference_kernel_with_reflect_padding():
    k = I.gaussian_kernel_1d(1.0)
    assert k.shape == (5,) and k.sum() == pytest.approx(1.0)
    # the reference's 2-D kernel: exp(-|d|^2 / 2 sigma^2) over a 5x5 grid, normalised
    d = np.arange(5) - 2.0
    k2 = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / 2.0)
    k2 /= k2.sum()
    a = np.random.default_rng(0).random((7, 6, 3)).astype(np.float32)
    want = np.stack([ndimage.convolve(a[..., c], k2, mode="mirror") for c in range(3)], -1)
    np.testing.assert_allclose(np.asarray(I.smooth(jnp.asarray(a), 1.0)), want, rtol=1e-5,
                               atol=1e-6)
    assert I.smooth(jnp.asarray(a), 0) is not None
    np.testing.assert_array_equal(np.asarray(I.smooth(jnp.asarray(a), 0)), a)
    with pytest.raises(ValueError, match="at least 3x3"):
        I.smooth(jnp.ones((2, 5, 1)), 1.0)


def test_saliency_in_bits_matches_skimage_and_preserves_total():
    cap = np.random.default_rng(1).random((2, 4, 5, 3)).astype(np.float32)
    sal = np.asarray(I.capacity_to_saliency(jnp.asarray(cap), (8, 10)))
    bits = cap.sum(-1) / np.log(2) * (4 * 5) / (8 * 10)
    # bilinear with half-pixel centres as skimage's resize(order=1); the border clamps to the edge
    # (skimage mode="edge"; the reference's default mode mirrors, which changes only the outer
    # half feature pixel and does not keep the total)
    want = np.stack([resize(b, (8, 10), order=1, preserve_range=True, mode="edge")
                     for b in bits])
    np.testing.assert_allclose(sal, want, rtol=1e-5, atol=1e-6)
    mirrored = np.stack([resize(b, (8, 10), order=1, preserve_range=True) for b in bits])
    np.testing.assert_allclose(sal[:, 1:-1, 1:-1], mirrored[:, 1:-1, 1:-1], rtol=1e-5)
    # 2x bilinear upsampling with half-pixel centres keeps the sum: total bits preserved
    np.testing.assert_allclose(sal.sum((1, 2)), cap.sum((1, 2, 3)) / np.log(2), rtol=1e-5)


# ------------------------------------------------------------------------------- the estimator
def _identity_model(channels):
    return Model(f"toy_identity_{channels}",
                 (Stage("features", fn=lambda x: x), Stage("head", fn=lambda a: a.mean((1, 2)))),
                 num_classes=channels, in_channels=channels, min_size=1)


def test_stats_match_numpy_on_random_data_with_large_offset_and_sparse_features():
    rng = np.random.default_rng(0)
    n = 25
    x = np.zeros((n, 3, 4, 4), np.float32)
    x[..., 0] = 100.0 + 0.05 * rng.standard_normal((n, 3, 4))  # |mean| >> std
    x[..., 1] = rng.standard_normal((n, 3, 4)) * (rng.random((n, 3, 4)) < 0.3)  # sparse
    x[..., 2] = rng.standard_normal((n, 3, 4))
    x[..., 3] = 0.0  # dead: std clamped, never active
    model = _identity_model(4)
    batches = [x[:7], x[7:20], (x[20:], "labels are ignored")]
    with pytest.warns(UserWarning, match="only 25 samples"):
        stats = I.iba_stats(model, {}, batches, layer="features")
    x64 = x.astype(np.float64)
    assert stats.n == n and stats.layer == "features" and stats.shape == (3, 4, 4)
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, np.maximum(x64.std(0, ddof=1), 0.01), rtol=1e-4)
    np.testing.assert_allclose(stats.active_rate, (x != 0).mean(0), rtol=0, atol=1e-7)
    assert np.all(np.asarray(stats.std[..., 3]) == np.float32(0.01))
    # max_samples truncates, counting across batches
    with pytest.warns(UserWarning):
        part = I.iba_stats(model, {}, batches, layer="features", max_samples=10)
    assert part.n == 10
    np.testing.assert_allclose(part.mean, x64[:10].mean(0), rtol=1e-6, atol=1e-6)


def test_merge_moments_is_exact_and_order_free():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((40, 2)) * 3 + 7
    parts = [data[:5], data[5:6], data[6:31], data[31:]]
    mom = lambda a: I.Moments(len(a), a.mean(0), ((a - a.mean(0)) ** 2).sum(0), (a != 0).sum(0))
    fwd = None
    for p in parts:
        fwd = I.merge_moments(fwd, mom(p))
    rev = None
    for p in parts[::-1]:
        rev = I.merge_moments(rev, mom(p))
    for m in (fwd, rev):
        assert m.n == 40
        np.testing.assert_allclose(m.mean, data.mean(0), rtol=1e-12)
        np.testing.assert_allclose(m.m2 / 39, data.var(0, ddof=1), rtol=1e-12)


def test_stats_with_the_batch_sharded_over_8_devices_equal_unsharded_and_numpy():
    model = conv_toy()
    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 1))
    variables = model.init(jax.random.key(1), x[:1])
    a = np.asarray(model.apply(variables, x, taps=("block1",))[1]["block1"], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = I.iba_stats(model, variables, [x[:16], x[16:]], layer="block1")
        mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
        assert mesh.size == 8, "conftest should provide 8 CPU devices"
        shard = NamedSharding(mesh, P("batch"))
        rep = jax.device_put(variables, NamedSharding(mesh, P()))
        parts = [jax.device_put(x[:16], shard), jax.device_put(x[16:], shard)]
        assert len(parts[0].sharding.device_set) == 8
        sharded = I.iba_stats(model, rep, parts, layer="block1")
    assert plain.shape == a.shape[1:] == sharded.shape and sharded.n == plain.n == 32
    np.testing.assert_allclose(plain.mean, a.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.std, np.maximum(a.std(0, ddof=1), 0.01), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(plain.active_rate, (a != 0).mean(0))  # after a ReLU: sparse
    assert 0 < float(plain.active_rate.mean()) < 1
    for field in ("mean", "std", "active_rate"):
        np.testing.assert_allclose(getattr(sharded, field), getattr(plain, field), rtol=1e-5,
                                   atol=1e-6)


def test_stats_errors():
    model = _identity_model(1)
    x = np.ones((3, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="Unknown layer"):
        I.iba_stats(model, {}, [x], layer="conv9")
    with pytest.raises(ValueError, match="at least 2 samples"):
        I.iba_stats(model, {}, [x[:1]], layer="features")
    with pytest.raises(ValueError, match="not an image array"):
        I.iba_stats(model, {}, [x[0]], layer="features")
    with pytest.raises(ValueError, match="spatial feature map"):
        I.iba_stats(model, {}, [x], layer="head")
    with pytest.raises(ValueError, match="earlier batches"):
        I.iba_stats(model, {}, [x, np.ones((2, 5, 5, 1), np.float32)], layer="features")
    with pytest.raises(ValueError, match="NaN or Inf"):
        I.iba_stats(model, {}, [x * np.nan], layer="features")


def test_save_load_round_trip(tmp_path):
    model, _, stats = region_setup()
    st = stats["pool"]
    path = tmp_path / "stats_pool"
    I.save_iba_stats(path, st)
    back = I.load_iba_stats(path)
    assert (back.n, back.layer, back.shape, back.min_std) == (st.n, st.layer, st.shape,
                                                              st.min_std) == (1000, "pool",
                                                                              (8, 8, 32), 0.01)
    for field in ("mean", "std", "active_rate"):
        np.testing.assert_array_equal(getattr(back, field), getattr(st, field))
    # a pytree: arrays are leaves, the rest static
    assert len(jax.tree_util.tree_leaves(st)) == 3
    np.savez(tmp_path / "x.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="not an IBA statistics file"):
        I.load_iba_stats(tmp_path / "x.npz")


# ----------------------------------------------------------------------- methods: known answers
def test_public_names_and_registry():
    for name in ("iba", "inverse_iba", "regression_iba", "multilayer_iba"):
        assert name in attribution.names()
    assert attribution.get("iba") is I.iba
    assert attribution.iba_stats is I.iba_stats and attribution.IBAStats is I.IBAStats


def test_iba_concentrates_capacity_in_the_region_the_model_reads():
    x = region_images()
    cap = np.asarray(jitted("iba_capacity")(x, jnp.array([0, 1]), jax.random.key(1)))
    sal = region_iba(x, jnp.array([0, 1]), jax.random.key(1))
    assert sal.shape == (2, 16, 16)
    assert_concentrated(sal, (0, 1))
    per_channel = cap.sum((1, 2))  # [B, C]
    assert np.all(per_channel[:, 2:] == 0)  # dead channels are masked out of the bottleneck
    assert np.all(per_channel[:, 1] < 0.05 * per_channel[:, 0])  # the unread channel is dropped
    # explaining the other finding moves the map away from the bright region
    swapped = np.asarray(region_iba(x, jnp.array([1, 0]), jax.random.key(1)))
    for i in range(2):
        m = region_mask(i)
        assert swapped[i][m].sum() < 0.3 * np.asarray(sal)[i][m].sum()


def test_same_key_same_map_other_key_other_map():
    x, t = region_images(), jnp.array([0, 1])
    a = np.asarray(region_iba(x, t, jax.random.key(1)))
    np.testing.assert_array_equal(np.asarray(region_iba(x, t, jax.random.key(1))), a)
    b = np.asarray(region_iba(x, t, jax.random.key(2)))
    assert np.abs(a - b).max() > 1e-2 * a.max()


def test_iba_with_the_batch_sharded_over_8_devices_equals_unsharded():
    x = region_images(8, key=9)
    t = jnp.arange(8) % 2
    keys = jax.random.split(jax.random.key(5), 8)
    f = jitted("iba_capacity")
    plain = np.asarray(f(x, t, keys))
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    out = f(jax.device_put(x, shard), jax.device_put(t, shard), jax.device_put(keys, shard))
    assert len(out.sharding.device_set) == 8  # the optimisation ran on all 8 devices
    np.testing.assert_allclose(np.asarray(out), plain, rtol=1e-5, atol=1e-6 * plain.max())


def test_image_keys_fold_a_single_key_and_accept_one_per_image():
    key = jax.random.key(1)
    folded = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3))
    same = lambda a, b: np.testing.assert_array_equal(jax.random.key_data(a),
                                                      jax.random.key_data(b))
    same(I.image_keys(key, 3), folded)
    same(I.image_keys(folded, 3), folded)
    same(I.image_keys(jax.random.key_data(folded), 3), folded)  # raw uint32 key data
    same(I.image_keys(jax.random.PRNGKey(1), 3), folded)
    same(I.image_keys(None, 2), I.image_keys(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="one key per image"):
        I.image_keys(folded[:2], 3)
    with pytest.raises(ValueError, match="PRNG key"):
        I.image_keys(jnp.ones(3), 3)


def test_inverse_iba_concentrates_capacity_in_the_region_too():
    # Fully unrolled here (the other toy tests use the default rolled loop): the same maps.
    args = (region_images(), jnp.array([0, 1]), jax.random.key(2))
    sal = jitted("inverse_iba", unroll=True)(*args)
    assert_concentrated(sal, (0, 1))
    np.testing.assert_allclose(sal, jitted("inverse_iba")(*args), rtol=1e-4, atol=1e-7)


def test_regression_iba_on_a_regression_head():
    model, variables, _ = region_setup(num_classes=1)
    x = region_images()[:1]
    score = model.apply(variables, x)[:, 0]
    assert model.num_classes == 1 and float(score[0]) > 5
    key = jax.random.key(3)
    mse = jitted("regression_iba", num_classes=1)
    push = jitted("regression_iba", num_classes=1, loss="push_up")
    keep = mse(x, None, key)
    assert_concentrated(keep, (0,))
    assert_concentrated(push(x, None, key), (0,))
    # mse's default target is the model's own score
    np.testing.assert_allclose(mse(x, None, key, target_score=score), keep, rtol=1e-5,
                               atol=1e-7)
    # fitting the score noise gives (about -2) keeps much less than keeping the prediction
    low = mse(x, None, key, target_score=jnp.array([-2.0]))
    assert float(low.sum()) < 0.5 * float(keep.sum())
    with pytest.raises(ValueError, match="push_up' takes no target_score"):
        push(x, None, key, target_score=jnp.array([1.0]))
    with pytest.raises(ValueError, match="loss must be one of"):
        I.regression_iba(model, variables, x, None, loss="bce", stats=region_setup(1)[2]["pool"])


def test_batch_equals_one_image_at_a_time():
    model = conv_toy()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 1))
    variables = model.init(jax.random.key(1), x[:1])
    with pytest.warns(UserWarning):
        stats = I.iba_stats(model, variables, [jax.random.normal(jax.random.key(2),
                                                                 (64, 16, 16, 1))], layer="pool")
    f = jax.jit(functools.partial(I.iba, model, stats=stats, unroll=1, chunk=3))
    keys = jax.random.split(jax.random.key(7), 3)
    targets = jnp.array([0, 2, 1])
    batch = np.asarray(f(variables, x, targets, key=keys))
    single = np.concatenate([np.asarray(f(variables, x[i:i + 1], targets[i:i + 1],
                                          key=keys[i:i + 1])) for i in range(3)])
    assert batch.std(axis=(1, 2)).min() > 0.1 * batch.mean()  # maps with structure
    # vmap folds images x samples into one conv batch; only summation order may differ
    np.testing.assert_allclose(batch, single, rtol=2e-4, atol=1e-4 * batch.max())
    # Chunks of 2 (the batch padded to 4 with a copy of the last image) and the default (one
    # image per pass at 10 samples) give the same maps.
    for chunk in (2, None):
        chunked = I.iba(model, variables, x, targets, key=keys, stats=stats, unroll=1,
                        chunk=chunk)
        np.testing.assert_allclose(chunked, batch, rtol=2e-4, atol=1e-4 * batch.max())
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        I.iba(model, variables, x, targets, key=keys, stats=stats, chunk=0)


def test_automatic_chunk_pads_the_batch_least():
    from cxr_jax.attribution.iba.optimise import least_padding_chunk
    # at most 3 images per pass: 8 = 4 x 2 (3 x 3 would optimise a copy), 9 = 3 x 3,
    # 7 = 7 x 1 (any larger chunk pads); never above the largest allowed, nor the batch
    assert [least_padding_chunk(3, b) for b in (8, 9, 7, 6, 2, 1)] == [2, 3, 1, 3, 2, 1]
    assert least_padding_chunk(1, 8) == 1 and least_padding_chunk(16, 12) == 12


def test_densenet_under_jit_compiles_once_and_prefix_runs_once():
    model = models.get("densenet_tiny", num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
    variables = model.init(jax.random.key(1), x[:1])
    # statistics of the right shape (their values do not matter for what this test checks)
    shape = models.stage_shapes(model, x.shape)["denseblock3"][1:]
    stats = I.IBAStats(jnp.zeros(shape), jnp.ones(shape), jnp.ones(shape), n=1000,
                       layer="denseblock3", shape=shape)
    traces = []

    def run(v, x, t, k, st):
        traces.append(1)
        return I.iba(model, v, x, t, key=k, stats=st, unroll=1)  # default chunk: lax.map

    f = jax.jit(run)
    t = jnp.array([0, 2])
    a = f(variables, x, t, jax.random.key(0), stats)
    b = f(variables, x * 0.5, jnp.array([1, 1]), jax.random.key(1), stats)  # new values only
    assert len(traces) == 1
    assert a.shape == b.shape == (2, 64, 64) and np.all(np.isfinite(a)) and float(a.min()) >= 0
    # One program: one scan (the per-image optimisation, both images in one chunk); its body
    # reruns only the stages after denseblock3 (transition3: a 1x1 conv, denseblock4: 2 layers
    # of a 1x1 and a 3x3 conv), forward and backward with respect to the activation. 1x1
    # convolutions are matrix products (dot_general); the 3x3 ones are counted below.
    jaxpr = jax.make_jaxpr(lambda v, x: I.iba(model, v, x, t, key=jax.random.key(0),
                                              stats=stats, chunk=2))(variables, x)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    params = variables["params"]["features"]
    spatial = lambda tree: sum(k.shape[0] > 1 for k in jax.tree_util.tree_leaves(tree)
                               if k.ndim == 4)
    after = spatial(params["denseblock4"]) + spatial(params["transition3"])
    total = spatial(params)
    assert after == 2
    # The models' convolutions have a custom backward (models.layers.loop_safe_conv): count how
    # many conv ops one convolution's forward and value-and-gradient trace to (the traced
    # kernel-gradient branch is dead code XLA prunes), so the counts below stay exact.
    from cxr_jax.models.layers import loop_safe_conv

    def one_conv(a):
        return loop_safe_conv(a, jnp.ones((3, 3, 2, 2)), (1, 1), ((1, 1), (1, 1)),
                              dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()

    a0 = jnp.ones((1, 4, 4, 2))
    per_fwd = str(jax.make_jaxpr(one_conv)(a0)).count("conv_general_dilated")
    per_grad = str(jax.make_jaxpr(jax.value_and_grad(one_conv))(a0)).count("conv_general_dilated")
    in_scan = str(scans[0]).count("conv_general_dilated")
    assert in_scan == after * per_grad
    # outside the scan the network runs once (jit prunes the unused tail)
    assert str(jaxpr).count("conv_general_dilated") - in_scan == total * per_fwd


# --------------------------------------------------------------------------------- multi-layer
def test_combine_multilayer_on_hand_made_maps():
    m1 = np.full((1, 4, 4), 2.0)  # ||m1|| = 8 -> 0.25 everywhere
    m2 = np.zeros((1, 4, 4))
    m2[0, 0, 0], m2[0, 3, 3] = 3.0, 4.0  # ||m2|| = 5 -> 0.6, 0.8
    m3 = np.ones((1, 4, 4))  # -> 0.25 everywhere
    gated = np.asarray(I.combine_multilayer([m1, m2, m3], thresholds=(0.7, 0.2)))
    want = np.zeros((1, 4, 4))
    want[0, 3, 3] = 0.25
    np.testing.assert_allclose(gated, want)
    # a threshold above m3's level closes every gate
    assert np.all(np.asarray(I.combine_multilayer([m1, m2, m3], thresholds=(0.5, 0.3))) == 0)
    # one threshold for all: 0.5 passes m2 at both peaks, m3 (0.25) at none
    assert np.all(np.asarray(I.combine_multilayer([m1, m2, m3], thresholds=0.5)) == 0)
    np.testing.assert_allclose(I.combine_multilayer([m1, m2], thresholds=0.5),
                               np.where(m2 > 0, 0.25, 0.0))
    summed = np.asarray(I.combine_multilayer([m1, m2, m3], combine="sum", weights=(1, 2, 4)))
    np.testing.assert_allclose(summed, 0.25 + 2 * m2 / 5 + 4 * 0.25)
    np.testing.assert_allclose(I.combine_multilayer([m1, 0 * m2], combine="sum"), 0.25 + 0 * m1)
    with pytest.raises(ValueError, match="2 thresholds"):
        I.combine_multilayer([m1, m2, m3], thresholds=(0.1,))
    with pytest.raises(ValueError, match="'gated' or 'sum'"):
        I.combine_multilayer([m1, m2], combine="max")
    with pytest.raises(ValueError, match="one shape"):
        I.combine_multilayer([m1, np.ones((1, 3, 3))])


def test_default_gate_is_the_reference_threshold_at_the_map_size():
    assert I.reference_threshold((224, 224)) == pytest.approx(0.006)
    assert I.reference_threshold((128, 128)) == pytest.approx(0.0105)
    # a uniform unit-norm map sits at 1/sqrt(HW): the gate is 1.344x that level at every size
    for size in ((64, 64), (128, 96), (224, 224)):
        assert I.reference_threshold(size) * np.sqrt(size[0] * size[1]) == pytest.approx(1.344)
    # at 128 px: a gate map whose unit-norm values are 0.0091 (top half) and 0.0063 (bottom)
    # passes everywhere under the 224-px value 0.006, nowhere under the carried-over 0.0105
    keep = np.ones((1, 128, 128))  # unit-norm: 1/128 everywhere
    gate = np.ones((1, 128, 128))
    gate[0, :64] = 1.44
    n = gate / np.sqrt((gate ** 2).sum())
    assert 0.006 < n.min() < n.max() < 0.0105
    np.testing.assert_allclose(I.combine_multilayer([keep, gate], thresholds=0.006), keep / 128,
                               rtol=1e-6)
    assert np.all(np.asarray(I.combine_multilayer([keep, gate])) == 0)
    # a gate above 0.0105 in its top quarter passes there only
    gate = np.ones((1, 128, 128))
    gate[0, :32] = 2.0
    n = gate / np.sqrt((gate ** 2).sum())
    assert n.min() < 0.0105 < n.max()
    np.testing.assert_allclose(I.combine_multilayer([keep, gate]),
                               np.where(n > 0.0105, 1 / 128, 0.0), rtol=1e-6)


def test_multilayer_iba_optimises_each_layer_separately():
    model, variables, stats = region_setup()
    x = region_images()
    t = jnp.array([0, 1])
    key = jax.random.key(4)
    # 10 samples, as IBA's default (Multi-layer IBA's own default is 5)
    gated = np.asarray(jax.jit(lambda x, t, k: I.multilayer_iba(
        model, variables, x, t, stats=stats, key=k, thresholds=0.1, unroll=1,
        samples=10))(x, t, key))
    # layer j is explained alone, with keys fold_in(fold_in(key, i), j), then combined
    keys = [jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), j))(jnp.arange(2))
            for j in range(2)]
    maps = [region_iba(x, t, keys[0], layer="features"), region_iba(x, t, keys[1])]
    np.testing.assert_allclose(gated, I.combine_multilayer(maps, thresholds=0.1), rtol=1e-5,
                               atol=1e-7)
    first = np.asarray(I.combine_multilayer(maps, combine="sum", weights=(1, 0)))
    assert 0 < (gated > 0).sum() < (first > 0).sum()  # the gate closes somewhere
    # Layers given deepest first: the joint suffix still starts at the shallowest, and the
    # maps come back in the caller's order (layer j keeps its key fold_in(., j)).
    reverse = np.asarray(I.multilayer_iba(model, variables, x, t, stats=stats, key=key,
                                          layer=("pool", "features"), combine="sum",
                                          weights=(1, 2), unroll=1, samples=10))
    alone = [region_iba(x, t, keys[0]), region_iba(x, t, keys[1], layer="features")]
    np.testing.assert_allclose(reverse, I.combine_multilayer(alone, combine="sum",
                                                             weights=(1, 2)),
                               rtol=1e-5, atol=1e-7)
    for i in range(2):  # and keeps the first map where the pooled map is high: in the region
        assert gated[i][region_mask(i)].sum() > 0.95 * gated[i].sum() > 0
    # the default, 5 draws per step, is the function's and the one studies read
    assert attribution.info("multilayer_iba").parameters()["samples"] == 5
    with pytest.raises(ValueError, match="no stats for layer"):
        I.multilayer_iba(model, variables, x, t, stats={"pool": stats["pool"]},
                         layer=("features", "pool"))
    with pytest.raises(ValueError, match="several layers"):
        I.multilayer_iba(model, variables, x, t, stats=stats, layer="pool")
    assert models.get("densenet_tiny", num_classes=1).layers.multilayer_iba == (
        "denseblock1", "denseblock2", "denseblock3")


# ----------------------------------------------------------------------------- noise baseline
def test_noise_logits_are_the_models_answer_to_a_closed_bottleneck():
    model, variables, stats = region_setup()
    st = stats["pool"]
    out = np.asarray(I.noise_logits(model, variables, st, samples=4096))
    assert out.shape == (4096, 2)
    # The head is linear in channel 0 of the noise: logit k ~ N(GAIN mean(mu_k) - GAIN/4,
    # GAIN^2 sum(sigma_k^2) / cells^2), mu_k, sigma_k over region k's cells.
    for k, (rs, cs) in enumerate(REGIONS):
        mu, sd = np.asarray(st.mean)[rs, cs, 0], np.asarray(st.std)[rs, cs, 0]
        assert out[:, k].mean() == pytest.approx(GAIN * mu.mean() - GAIN / 4, abs=0.1)
        assert out[:, k].std() == pytest.approx(GAIN * np.sqrt((sd ** 2).sum()) / mu.size,
                                                rel=0.05)
    np.testing.assert_array_equal(out, I.noise_logits(model, variables, st, samples=4096,
                                                      key=jax.random.key(0)))
    # features the bottleneck masks out (active in <= 1% of samples) are zero in the noise too
    dead = dataclasses.replace(st, active_rate=jnp.zeros_like(st.active_rate))
    np.testing.assert_allclose(I.noise_logits(model, variables, dead, samples=3), -GAIN / 4)
    with pytest.raises(ValueError, match="needs IBAStats"):
        I.noise_logits(model, variables, {"pool": st})
    with pytest.raises(ValueError, match="samples must be"):
        I.noise_logits(model, variables, st, samples=0)


def test_iba_map_collapses_for_a_target_the_noise_already_scores_high():
    """The failure `noise_logits` detects: shift the noise mean in class 0's region so a closed
    bottleneck scores class 0 at +6; class 0's map loses its information and its region, class 1
    (whose noise still scores -2) keeps both."""
    model, variables, stats = region_setup()
    st = stats["pool"]
    mean = np.asarray(st.mean).copy()
    mean[REGIONS[0] + (0,)] += 1.0
    hot = dataclasses.replace(st, mean=jnp.asarray(mean))
    assert np.asarray(I.noise_logits(model, variables, hot)).mean(0)[0] > 5
    x, t = region_images(), jnp.array([0, 1])
    sal = {}
    for name, s in (("fit", st), ("hot", hot)):
        cap = I.iba_capacity(model, variables, x, t, stats=s, key=jax.random.key(1), unroll=1)
        sal[name] = np.asarray(I.capacity_to_saliency(cap, (16, 16)))
    frac = lambda m, i: m[i][region_mask(i)].sum() / m[i].sum()
    assert frac(sal["fit"], 0) > 0.8 and frac(sal["hot"], 0) < 0.4
    assert sal["hot"][0].sum() < 0.05 * sal["fit"][0].sum()
    assert frac(sal["hot"], 1) > 0.8
    np.testing.assert_allclose(sal["hot"][1].sum(), sal["fit"][1].sum(), rtol=0.05)


# ------------------------------------------------------------------------------------- errors
def test_bad_stats_and_arguments_give_clear_errors():
    model, variables, stats = region_setup()
    x = region_images()
    with pytest.raises(ValueError, match="needs the feature statistics"):
        I.iba(model, variables, x, 0)
    with pytest.raises(ValueError, match="needs the feature statistics"):
        I.inverse_iba(model, variables, x, 0, layer="pool")
    with pytest.raises(ValueError, match="estimated at layer 'features'"):
        I.iba(model, variables, x, 0, stats=stats["features"], layer="pool")
    with pytest.raises(ValueError, match=r"feature shape \(8, 8, 32\).*give \(16, 16, 32\)"):
        I.iba(model, variables, jnp.ones((2, 32, 32, 1)), 0, stats=stats["pool"])
    with pytest.raises(ValueError, match="must be IBAStats"):
        I.iba(model, variables, x, 0, stats={"mean": 0})
    st = stats["pool"]
    with pytest.raises(ValueError, match="out of range"):
        I.iba(model, variables, x, jnp.array([0, 5]), stats=st)
    with pytest.raises(ValueError, match="steps must be"):
        I.iba(model, variables, x, 0, stats=st, steps=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        I.iba(model, variables, x, 0, stats=st, loss="hinge")
    with pytest.raises(ValueError, match="loss='ce' needs class indices"):
        I.iba(model, variables, x, lambda lg: lg[:, 0], stats=st, loss="ce")
    with pytest.raises(ValueError, match="Expected images"):
        I.iba(model, variables, x[..., 0], 0, stats=st)


def test_bottleneck_noise_is_standard_normal_and_lanes_uncorrelated():
    from scipy import stats as st
    n = 400_003  # not a multiple of 4: the last word's lanes are cut
    z = np.asarray(I.standard_normal(jax.random.key(5), (n,)), np.float64)
    assert z.shape == (n,) and np.all(np.isfinite(z))
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.std() - 1) < 5 / np.sqrt(2 * n)
    assert st.kstest(z, "norm").pvalue > 1e-3
    # Each threefry word makes four values, lane j at flat index j * ceil(n / 4) + word.
    q = -(-n // 4)
    lanes = z[:3 * q].reshape(3, q)
    for a in (lanes, lanes ** 2):
        corr = np.corrcoef(a)
        assert np.all(np.abs(corr[np.triu_indices(3, 1)]) < 5 / np.sqrt(q))
    # Deterministic by key, different across keys, shape kept.
    again = np.asarray(I.standard_normal(jax.random.key(5), (n,)))
    np.testing.assert_array_equal(again, z.astype(np.float32))
    other = np.asarray(I.standard_normal(jax.random.key(6), (4, 5, 3)))
    assert other.shape == (4, 5, 3) and not np.allclose(other.ravel(), z[:60])
