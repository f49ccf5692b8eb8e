"""Network dissection: the sketch's error bound, counts against numpy, streaming, sharding,
analytic units, baselines and input errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from analytic import numpy_init
from cxr_jax import models
from cxr_jax.data import phantoms
from cxr_jax.semantics import (dissect, dissect_baseline, dissect_features, merge, reinitialize,
                               resize_masks, shuffle_masks, sketch_init, sketch_threshold,
                               sketch_update)

# The package re-exports the function `dissect`, which shadows the submodule's attribute name.
from cxr_jax.semantics import dissection as _module


def identity(params, x):
    """Features = the input: 'images' are hand-built activations [B, h, w, U]."""
    return x


def batched(acts, masks, sizes):
    out, lo = [], 0
    for n in sizes:
        out.append((acts[lo:lo + n], masks[lo:lo + n]))
        lo += n
    assert lo == len(acts)
    return out


def bilinear_matrix(n_in, n_out):
    """[n_out, n_in] half-pixel bilinear resampling with clamped edges (numpy reference)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - f)
    np.add.at(m, (np.arange(n_out), i1), f)
    return m


def reference_counts(acts, masks_r, thresholds, r):
    """Intersections, unit areas and concept areas computed directly in numpy (float64)."""
    _, h, w, _ = acts.shape
    up = np.einsum("Yy,byxu,Xx->bYXu", bilinear_matrix(h, r), acts.astype(np.float64),
                   bilinear_matrix(w, r))
    m = up > thresholds.astype(np.float64)
    inter = np.einsum("byxu,bcyx->uc", m.astype(np.int64), masks_r.astype(np.int64))
    return inter, m.sum((0, 1, 2)), masks_r.sum((0, 2, 3))


def block_mean(masks, k):
    b, c, h, w = masks.shape
    return masks.reshape(b, c, h // k, k, w // k, k).mean((3, 5))


def assert_same(a, b):
    for name in ("thresholds", "threshold_errors", "intersections", "unions", "unit_areas",
                 "concept_areas", "iou", "labels", "scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.num_images == b.num_images


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    # Spatially smooth-ish activations (a blurred field plus noise) so masks have extent.
    acts = rng.normal(size=(11, 8, 8, 6)).astype(np.float32)
    acts = (acts + np.roll(acts, 1, 1) + np.roll(acts, 1, 2)).astype(np.float32)
    masks = rng.random((11, 4, 8, 8)) < np.array([0.1, 0.3, 0.5, 0.05])[None, :, None, None]
    return acts, masks


@pytest.fixture(scope="module")
def tiny():
    model = models.get("resnet_tiny", num_classes=2)
    ph = phantoms.generate(6, image_size=64, seed=0)
    # numpy draws: compiling the Flax initialisers costs seconds on CPU
    return model, numpy_init(model, jnp.asarray(ph.images[:1]), seed=0), ph


# ----------------------------------------------------------------------------- sketch
def test_sketch_threshold_is_within_one_bin_of_numpy_quantile():
    rng = np.random.default_rng(1)
    bins, rows, chunks = 256, 400, 5
    parts, valids = [], []
    for c in range(chunks):  # the range grows chunk after chunk: the grid is re-binned
        scale = 0.1 * 4.0**c
        cols = [rng.normal(size=rows) * scale,
                rng.exponential(size=rows) * scale,
                np.maximum(rng.normal(size=rows) * scale, 0.0),      # ReLU: an atom at 0
                np.full(rows, 3.0),                                   # constant unit
                1000.0 + 1e-3 * scale * rng.normal(size=rows),        # large offset
                rng.lognormal(sigma=1.5, size=rows)]                  # heavy tail
        parts.append(np.stack(cols, 1).astype(np.float32))
        valids.append(rng.random(rows) < 0.9)                        # padding rows
    update = jax.jit(sketch_update)
    sk = sketch_init(6, bins)
    for v, ok in zip(parts, valids):
        sk = update(sk, v, ok)
    values = np.concatenate([v[ok] for v, ok in zip(parts, valids)])
    n = len(values)
    # Exact whatever the order and batching: one update with all values gives the same sketch.
    one = jax.jit(sketch_update)(sketch_init(6, bins), values[::-1])
    for a, b in zip(sk, one):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(sk.counts).sum(1).tolist() == [n] * 6
    np.testing.assert_array_equal(np.asarray(sk.lo), values.min(0))
    np.testing.assert_array_equal(np.asarray(sk.hi), values.max(0))

    for top in (0.005, 0.05, 0.5):
        t, width = sketch_threshold(sk, top)
        span = values.max(0).astype(np.float64) - values.min(0)
        big = np.abs(values).max(0).astype(np.float64)
        assert np.all(width <= np.maximum(2 * span / (bins - 2), 2.0**-22 * big) + 1e-300)
        for k in range(6):
            v = np.sort(values[:, k].astype(np.float64))
            j = int(np.floor((1 - top) * (n - 1)))
            # value bound: within one bin width of the order statistic x_j ...
            assert abs(t[k] - v[j]) <= width[k], (top, k)
            # ... and of np.quantile up to the gap to the next order statistic
            assert abs(t[k] - np.quantile(v, 1 - top)) <= width[k] + (v[j + 1] - v[j])
            # rank bound: values between T and x_j are no more than one bin holds
            between = np.sum((v > min(t[k], v[j])) & (v < max(t[k], v[j])))
            in_bin = np.sum((v >= t[k] - width[k]) & (v <= t[k] + width[k]))
            assert between <= in_bin
    # the constant unit's threshold is exact; the large-offset one within its tiny bin
    t, width = sketch_threshold(sk, 0.005)
    assert t[3] == 3.0
    assert width[4] < 1e-2


# ----------------------------------------------------------------------------- counting
def test_counts_and_iou_match_numpy(random_data):
    acts, masks = random_data
    r = 16
    d = dissect_features(identity, {}, batched(acts, masks, (4, 4, 3)), quantile=0.05,
                         resolution=r, concept_names=["a", "b", "c", "d"])
    masks_r = np.repeat(np.repeat(masks, 2, 2), 2, 3)  # "area" at an integer upsampling
    inter, ua, ca = reference_counts(acts, masks_r, d.thresholds, r)
    np.testing.assert_array_equal(d.intersections, inter)
    np.testing.assert_array_equal(d.unit_areas, ua)
    np.testing.assert_array_equal(d.concept_areas, ca)
    union = ua[:, None] + ca[None] - inter
    np.testing.assert_array_equal(d.unions, union)
    np.testing.assert_allclose(d.iou, inter / union)
    np.testing.assert_allclose(d.scores, (inter / union).max(1))
    best = (inter / union).argmax(1)
    np.testing.assert_array_equal(d.labels, np.where((inter / union).max(1) > 0.04, best, -1))
    assert d.num_images == 11 and d.iou.shape == (6, 4) and d.concept_names == ("a", "b", "c", "d")
    # thresholds: the top 5% of the raw (not upsampled) activations, within the sketch's bound
    raw = np.sort(acts.reshape(-1, 6).astype(np.float64), axis=0)
    j = int(np.floor(0.95 * (len(raw) - 1)))
    assert np.all(np.abs(d.thresholds - raw[j]) <= d.threshold_errors)
    assert np.all(d.threshold_errors < 0.01)
    # the fraction of raw values above the threshold is the quantile, up to one value per bin
    above = (acts.reshape(-1, 6) > d.thresholds).mean(0)
    np.testing.assert_allclose(above, 0.05, atol=2 / len(raw))


def test_resize_masks_matches_numpy():
    rng = np.random.default_rng(2)
    m = rng.random((2, 3, 16, 16)) < 0.4
    np.testing.assert_array_equal(resize_masks(m, 8, "area"), block_mean(m, 2) >= 0.5)
    np.testing.assert_array_equal(resize_masks(m, 8, "any"), block_mean(m, 2) > 0)
    np.testing.assert_array_equal(resize_masks(m, 8, "nearest"), m[..., 1::2, 1::2])
    np.testing.assert_array_equal(resize_masks(m, 16, "area"), m)
    # a non-integer ratio (12 -> 8, 1.5 pixels a cell): exact area = mean over half-pixels
    m = rng.random((2, 3, 12, 12)) < 0.5
    half = np.repeat(np.repeat(m, 2, 2), 2, 3)
    np.testing.assert_array_equal(resize_masks(m, 8, "area"), block_mean(half, 3) >= 0.5)
    np.testing.assert_array_equal(resize_masks(m, 8, "any"), block_mean(half, 3) > 0)


def test_unit_copying_a_concept_gets_iou_one_and_its_label():
    rng = np.random.default_rng(3)
    b, s = 6, 16
    masks = np.zeros((b, 3, s, s), bool)
    for i in range(b):  # rectangles at random places
        for c in range(3):
            y, x = rng.integers(0, s - 6, size=2)
            masks[i, c, y:y + 4 + c, x:x + 5] = True
    acts = np.zeros((b, s, s, 3), np.float32)
    acts[..., 0] = masks[:, 2]                            # copies concept 2
    acts[..., 1] = np.roll(masks[:, 0], 2, axis=2)        # concept 0, shifted
    # channel 2 stays zero: a dead unit
    q = masks[:, 2].mean() + 0.03                          # the threshold falls among zeros
    d = dissect_features(identity, {}, [(acts, masks)], quantile=q, resolution=s,
                         concept_names=["x", "y", "z"])
    assert d.iou[0, 2] == 1.0 and d.labels[0] == 2 and d.scores[0] == 1.0
    assert d.label_names[0] == "z"
    assert 0.04 < d.iou[1, 0] < 1.0 and d.labels[1] == 0
    assert d.unit_areas[2] == 0 and d.labels[2] == -1 and d.scores[2] == 0.0
    np.testing.assert_array_equal(d.concept_counts(), [1, 0, 1])


# ----------------------------------------------------------------------------- streaming
def test_streaming_equals_one_shot_and_each_pass_compiles_once(random_data, monkeypatch):
    acts, masks = random_data
    traces = []

    def features(params, x):
        traces.append(x.shape)
        return x

    kw = dict(quantile=0.02, resolution=12)
    streamed = dissect_features(features, {}, batched(acts, masks, (4, 4, 3)), **kw)
    assert len(traces) == 3  # the shape check, pass 1 and pass 2: the ragged batch is padded
    one_shot = dissect_features(identity, {}, [(acts, masks)], **kw)
    assert_same(streamed, one_shot)
    # a callable giving fresh iterables works the same
    again = dissect_features(identity, {}, lambda: iter(batched(acts, masks, (5, 6))), **kw)
    assert_same(again, one_shot)
    # moving the device histogram to the host before int32 could overflow changes nothing
    monkeypatch.setattr(_module, "_MAX_COUNT", 300)  # a 4-image step counts 256 per unit
    assert_same(dissect_features(identity, {}, batched(acts, masks, (4, 4, 3)), **kw), one_shot)
    # counts of two halves with shared thresholds merge into the whole
    halves = [dissect_features(identity, {}, [part], thresholds=one_shot.thresholds, **kw)
              for part in batched(acts, masks, (5, 6))]
    merged = merge(*halves)
    for name in ("intersections", "unions", "iou", "labels", "num_images"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(one_shot, name))


def test_sharded_over_8_devices_equals_single_device(random_data):
    acts, masks = random_data
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    assert mesh.size == 8
    parts = batched(acts, masks, (8, 3))  # the last batch is padded to 8, one row a device
    single = dissect_features(identity, {}, parts, quantile=0.05, resolution=16)
    sharded = dissect_features(identity, {}, parts, quantile=0.05, resolution=16, mesh=mesh)
    assert_same(sharded, single)


def test_model_dissection_matches_numpy_and_sharded_run(tiny):
    model, variables, ph = tiny
    layer, r = "layer2", 16
    batches = [(ph.images[:4], ph.concepts[:4]), (ph.images[4:], ph.concepts[4:])]
    d = dissect(model, variables, batches, layer=layer, quantile=0.05, resolution=r,
                concept_names=ph.concept_names)
    acts = np.asarray(jax.jit(lambda v, x: model.apply(v, x, taps=(layer,))[1][layer])(
        variables, jnp.asarray(ph.images)))
    assert acts.shape == (6, 8, 8, 16) and d.iou.shape == (16, len(ph.concept_names))
    inter, ua, ca = reference_counts(acts, block_mean(ph.concepts, 4) >= 0.5, d.thresholds, r)
    np.testing.assert_array_equal(d.concept_areas, ca)
    # activations computed in another program may differ in the last bits: allow a pixel
    assert np.abs(d.intersections - inter).max() <= 1
    assert np.abs(d.unit_areas - ua).max() <= 1
    raw = np.sort(acts.reshape(-1, 16).astype(np.float64), axis=0)
    j = int(np.floor(0.95 * (len(raw) - 1)))
    assert np.all(np.abs(d.thresholds - raw[j]) <= d.threshold_errors + 1e-5 * np.abs(raw[j]))
    assert d.layer == layer and d.labels.min() >= -1 and d.labels.max() < len(ph.concept_names)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = dissect(model, variables, [ph], layer=layer, quantile=0.05, resolution=r,
                      mesh=mesh)  # a PhantomBatch is accepted as the data
    np.testing.assert_allclose(sharded.thresholds, d.thresholds, rtol=1e-5, atol=1e-5)
    assert np.abs(sharded.intersections - d.intersections).max() <= 1
    assert sharded.concept_names == tuple(ph.concept_names)


# ----------------------------------------------------------------------------- baselines
def test_roll_shuffle_does_not_depend_on_batching():
    rng = np.random.default_rng(4)
    m = jnp.asarray(rng.random((6, 2, 16, 16)) < 0.3)
    key = jax.random.key(7)
    shuffle = jax.jit(shuffle_masks, static_argnames="kind")
    whole = shuffle(m, key, 0)
    np.testing.assert_array_equal(shuffle(m[3:], key, 3), whole[3:])
    np.testing.assert_array_equal(np.asarray(whole).sum((2, 3)), np.asarray(m).sum((2, 3)))
    assert not np.array_equal(np.asarray(whole), np.asarray(m))
    perm = shuffle(m, key, 0, jnp.arange(6) < 4, kind="permute")
    np.testing.assert_array_equal(perm, m[jnp.array([1, 2, 3, 0, 4, 5])])


def test_baselines(tiny):
    model, variables, ph = tiny
    fresh = numpy_init(model, jnp.asarray(ph.images[:1]), seed=1)
    out = dissect_baseline(model, variables, [ph], layer="stride16", key=jax.random.key(1),
                           quantile=0.05, resolution=16, init_variables=fresh)
    real, rand, moved = out.real, out.random_weights, out.shuffled_masks
    assert real.layer == "layer3" and rand.layer == "layer3"  # the alias is resolved
    np.testing.assert_array_equal(moved.thresholds, real.thresholds)
    np.testing.assert_array_equal(moved.unit_areas, real.unit_areas)
    np.testing.assert_array_equal(moved.concept_areas, real.concept_areas)  # rolled, not lost
    assert not np.array_equal(moved.intersections, real.intersections)
    assert not np.allclose(rand.thresholds, real.thresholds)
    for name, d in (("real", real), ("random_weights", rand), ("shuffled_masks", moved)):
        above = out.units_above[name]
        assert above.shape == (len(phantoms.CONCEPTS),) and above.dtype == np.int64
        np.testing.assert_array_equal(above, (d.iou > 0.04).sum(0))
    # re-initialisation touches the stages up to the layer only
    mixed = reinitialize(model, variables, "layer3", jax.random.key(3), ph.images[:1],
                         init_variables=fresh)
    same = lambda tree, path: all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(_get(tree, path)), jax.tree_util.tree_leaves(_get(mixed, path))))
    for path in (("params", "conv1"), ("params", "layer3")):
        assert same(fresh, path) and not same(variables, path)
    for path in (("params", "layer4"), ("params", "fc")):
        assert same(variables, path) and not same(fresh, path)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# ----------------------------------------------------------------------------- errors
def _bad(acts, masks, **kw):
    return lambda: dissect_features(identity, {}, [(acts, masks)], resolution=8, **kw)


@pytest.mark.parametrize("case, match", [
    ("size", "at the images' resolution"),
    ("float", "must be boolean"),
    ("concepts", "same concepts in the same order"),
    ("q0", r"quantile must be in \(0, 1\)"),
    ("q1", r"quantile must be in \(0, 1\)"),
    ("empty", "no images"),
    ("zero_rows", "no images"),
    ("iterator", "one-shot iterator"),
    ("names", "2 concept names for masks with 3 concepts"),
    ("nan", r"activations of units \[1\] are not finite"),
])
def test_bad_inputs_raise_clear_errors(case, match):
    acts = np.zeros((2, 8, 8, 4), np.float32)
    masks = np.zeros((2, 3, 8, 8), bool)
    calls = {
        "size": _bad(acts, masks[..., :4, :4]),
        "float": _bad(acts, masks.astype(np.float32)),
        "concepts": lambda: dissect_features(identity, {}, [(acts, masks), (acts, masks[:, :2])],
                                             resolution=8),
        "q0": _bad(acts, masks, quantile=0.0),
        "q1": _bad(acts, masks, quantile=1.5),
        "empty": lambda: dissect_features(identity, {}, [], resolution=8),
        "zero_rows": _bad(acts[:0], masks[:0]),
        "iterator": lambda: dissect_features(identity, {}, iter([(acts, masks)]), resolution=8),
        "names": _bad(acts, masks, concept_names=["a", "b"]),
        "nan": _bad(np.where(np.arange(4) == 1, np.nan, acts).astype(np.float32), masks),
    }
    with pytest.raises(ValueError, match=match):
        calls[case]()


@pytest.mark.parametrize("layer, match", [
    ("avgpool", r"not a spatial map.*spatial stages of resnet_tiny: .*layer4"),
    ("fc", "not a spatial map"),
    ("layer9", r"Unknown layer 'layer9'.*Valid stage names: .*layer4"),
])
def test_bad_layer_raises_clear_error(tiny, layer, match):
    model, variables, ph = tiny
    with pytest.raises(ValueError, match=match):
        dissect(model, variables, [(ph.images[:2], ph.concepts[:2])], layer=layer)
