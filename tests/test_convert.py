"""Tests of cxr_jax.convert that need no torch: the name mapping, errors, checkpoints, metadata."""

import json
import math
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import convert, models

EPS = 1e-5  # torchvision's BatchNorm2d epsilon


# ------------------------------------------------------------------------- helpers
def _leaves(tree, path=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, path + (k,))
        else:
            yield path + (k,), v


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _reverse(abstract):
    """torch key -> (collection, flax path, torch shape), written from the naming rules alone."""
    out = {}
    for col in ("params", "batch_stats"):
        for path, leaf in _leaves(abstract[col]):
            mod, name, s = ".".join(path[:-1]), path[-1], tuple(leaf.shape)
            if name == "kernel" and len(s) == 4:
                out[mod + ".weight"] = (col, path, (s[3], s[2], s[0], s[1]))
            elif name == "kernel":
                out[mod + ".weight"] = (col, path, (s[1], s[0]))
            elif name == "scale":
                out[mod + ".weight"] = (col, path, s)
            elif name == "bias":
                out[mod + ".bias"] = (col, path, s)
            elif name in ("mean", "var"):
                out[f"{mod}.running_{name}"] = (col, path, s)
            else:
                raise AssertionError(f"unexpected leaf {col}/{path}")
    return out


def _synthetic(model):
    """A torch-layout state_dict whose i-th tensor is filled with i, plus BN counters."""
    rev = _reverse(convert.abstract_variables(model))
    sd, ids = {}, {}
    for i, (key, (col, path, shape)) in enumerate(sorted(rev.items())):
        sd[key] = np.full(shape, float(i), np.float32)
        ids[(col, path)] = float(i)
        if key.endswith(".running_var"):
            sd[key[: -len("running_var")] + "num_batches_tracked"] = np.array(7, np.int64)
    return sd, ids


def _tiny_torch_state(name, num_classes, in_channels, seed=0):
    """A random torch-layout state_dict for a (tiny) registered model, and the model."""
    model = models.get(name, num_classes=num_classes, in_channels=in_channels)
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(  # random weights of the right shapes, no XLA compile
        lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32),
        convert.abstract_variables(model))
    v["batch_stats"] = jax.tree_util.tree_map(lambda a: np.abs(a) + 0.5, v["batch_stats"])
    return model, v, convert.flax_to_torch(v)


def _resnet18_keys():
    """torchvision resnet18 state_dict keys, hand-written from its module tree."""
    keys = ["conv1.weight"]
    bn = lambda m: [f"{m}.weight", f"{m}.bias", f"{m}.running_mean", f"{m}.running_var",
                    f"{m}.num_batches_tracked"]
    keys += bn("bn1")
    for layer in range(1, 5):
        for unit in range(2):
            u = f"layer{layer}.{unit}"
            keys += [f"{u}.conv1.weight"] + bn(f"{u}.bn1") + [f"{u}.conv2.weight"] + bn(f"{u}.bn2")
            if layer > 1 and unit == 0:
                keys += [f"{u}.downsample.0.weight"] + bn(f"{u}.downsample.1")
    return keys + ["fc.weight", "fc.bias"]


# -------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("name", models.names())
def test_mapping_covers_every_parameter_exactly_once(name):
    model = models.get(name, num_classes=3, in_channels=1)
    sd, ids = _synthetic(model)
    v = convert.torch_to_flax(sd, model)
    abstract = convert.abstract_variables(model)
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(abstract)
    seen = set()
    for col in ("params", "batch_stats"):
        for path, leaf in _leaves(v[col]):
            assert leaf.shape == _get(abstract[col], path).shape
            assert leaf.dtype == np.float32
            vals = np.unique(leaf)
            assert vals.tolist() == [ids[(col, path)]], (col, path)  # its own tensor, whole
            seen.add(vals[0])
    assert len(seen) == len(ids)  # no tensor used twice
    # The structure is recognised from keys and shapes alone.
    assert convert.infer_arch(sd) == name
    # Nothing left over, nothing missing: one extra or one absent key is refused, by name.
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\): extra\.weight"):
        convert.torch_to_flax({**sd, "extra.weight": np.zeros(1, np.float32)}, model)
    drop = sorted(k for k in sd if not k.endswith("num_batches_tracked"))[len(sd) // 3]
    with pytest.raises(ValueError, match=rf"missing 1 key\(s\): {drop.replace('.', '[.]')}"):
        convert.torch_to_flax({k: a for k, a in sd.items() if k != drop}, model)


def test_abstract_variables_match_model_init():
    for name in ("densenet_tiny", "resnet_tiny_bottleneck"):
        model = models.get(name, num_classes=4, in_channels=2)
        a = convert.abstract_variables(model)
        b = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 2),
                                                                               jnp.float32))
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
        assert jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: x.shape == y.shape,
                                                                a, b))


def test_resnet18_matches_hand_written_torchvision_keys():
    model = models.get("resnet18", num_classes=1000, in_channels=3)
    keys = _resnet18_keys()
    spec = convert.torch_spec(model)
    learned = [k for k in keys if not k.endswith(("running_mean", "running_var",
                                                  "num_batches_tracked"))]
    assert len(learned) == 62 and len(keys) == 62 + 20 * 3
    assert set(spec) == {k for k in keys if not k.endswith("num_batches_tracked")}
    assert spec["conv1.weight"] == ((64, 3, 7, 7), "conv")
    assert spec["layer2.0.downsample.0.weight"] == ((128, 64, 1, 1), "conv")
    assert spec["layer4.1.conv2.weight"] == ((512, 512, 3, 3), "conv")
    assert spec["fc.weight"] == ((1000, 512), "dense")
    assert spec["layer3.0.downsample.1.running_var"] == ((256,), "stat")
    # torchvision's resnet18 has 11,689,512 parameters.
    assert sum(int(np.prod(spec[k][0])) for k in learned) == 11_689_512


def test_densenet_legacy_and_prefixed_keys():
    model, v, sd = _tiny_torch_state("densenet_tiny", 5, 1)
    # torchvision's published DenseNet files spell denselayer norms `norm.1`, DataParallel adds
    # `module.`; TorchXRayVision adds an op_threshs buffer.
    legacy = {}
    for k, a in sd.items():
        k2 = k
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in k and f".{part}." in k:
                k2 = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy["module." + k2] = a
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in legacy
    legacy["module.op_threshs"] = np.linspace(0.1, 0.5, 5).astype(np.float32)
    weights, extras = convert.normalize_keys(legacy)
    assert set(weights) == set(sd)
    np.testing.assert_array_equal(extras["op_threshs"], legacy["module.op_threshs"])
    out = convert.torch_to_flax(legacy, model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, v)


def test_resnet_model_prefix_as_torchxrayvision_wraps_it():
    model, v, sd = _tiny_torch_state("resnet_tiny", 18, 1)
    wrapped = {"model." + k: a for k, a in sd.items()}
    out = convert.torch_to_flax(wrapped, model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, v)


def test_layouts_give_torch_semantics_on_known_answers():
    """conv = NCHW cross-correlation with OIHW weights, linear = x W^T + b, BN running stats."""
    model, _, sd = _tiny_torch_state("resnet_tiny", 3, 2, seed=1)
    v = convert.torch_to_flax(sd, model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 32, 32)).astype(np.float32)  # torch layout
    _, acts = jax.jit(lambda v, x: model.apply(v, x, taps=("conv1", "bn1")))(
        v, jnp.asarray(x.transpose(0, 2, 3, 1)))
    w = sd["conv1.weight"]  # [8, 2, 7, 7], stride 2, padding 3
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    for (i, j) in [(0, 0), (5, 9), (15, 15)]:
        patch = xp[0, :, 2 * i: 2 * i + 7, 2 * j: 2 * j + 7]
        want = np.einsum("oihw,ihw->o", w, patch)
        np.testing.assert_allclose(np.asarray(acts["conv1"])[0, i, j], want, rtol=1e-4,
                                   atol=1e-4)
    c = np.asarray(acts["conv1"])
    want_bn = ((c - sd["bn1.running_mean"]) / np.sqrt(sd["bn1.running_var"] + EPS)
               * sd["bn1.weight"] + sd["bn1.bias"])
    np.testing.assert_allclose(np.asarray(acts["bn1"]), want_bn, rtol=1e-4, atol=1e-5)
    pooled = rng.normal(size=(4, 64)).astype(np.float32)
    logits = jax.jit(lambda v, p: model.apply(v, p, start="avgpool"))(v, jnp.asarray(pooled))
    np.testing.assert_allclose(np.asarray(logits), pooled @ sd["fc.weight"].T + sd["fc.bias"],
                               rtol=1e-5, atol=1e-5)


def test_flax_to_torch_inverts_torch_to_flax():
    model, v, sd = _tiny_torch_state("resnet_tiny_bottleneck", 4, 3)
    assert sd["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    back = convert.flax_to_torch(convert.torch_to_flax(sd, model))
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


# ------------------------------------------------------------------------- errors
def test_wrong_architecture_is_named():
    _, _, sd = _tiny_torch_state("resnet_tiny", 3, 1)
    with pytest.raises(ValueError, match="holds a resnet_tiny state_dict, not "
                                         "resnet_tiny_bottleneck.*--arch resnet_tiny"):
        convert.torch_to_flax(sd, models.get("resnet_tiny_bottleneck", num_classes=3))
    _, _, dense = _tiny_torch_state("densenet_tiny", 3, 1)
    with pytest.raises(ValueError, match="holds a densenet_tiny state_dict"):
        convert.torch_to_flax(dense, models.get("resnet_tiny", num_classes=3))


def test_unrecognised_file_lists_missing_and_unexpected():
    sd = {"encoder.weight": np.zeros((3, 3), np.float32), "head.bias": np.zeros(3, np.float32)}
    model = models.get("resnet_tiny", num_classes=3)
    with pytest.raises(ValueError) as e:
        convert.torch_to_flax(sd, model)
    msg = str(e.value)
    assert "missing" in msg and "conv1.weight" in msg and "fc.bias" in msg
    assert "unexpected 2 key(s): encoder.weight, head.bias" in msg
    assert "no key matches" in msg


def test_shape_mismatch_names_the_tensor():
    model, _, sd = _tiny_torch_state("resnet_tiny", 3, 1)
    bad = dict(sd, **{"layer2.0.conv2.weight": np.zeros((16, 16, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight: file has \[16, 16, 1, 1\], "
                                         r"resnet_tiny expects \[16, 16, 3, 3\]"):
        convert.torch_to_flax(bad, model)
    with pytest.raises(ValueError, match=r"fc\.weight: file has \[3, 64\].*expects \[5, 64\]"
                                         r"(.|\n)*num_classes=5"):
        convert.torch_to_flax(sd, models.get("resnet_tiny", num_classes=5))


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        convert.read_state_dict(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        convert.read_state_dict(empty)
    with pytest.raises(ValueError, match="does not exist"):
        convert.read_state_dict(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        convert.read_state_dict(foreign)
    objs = tmp_path / "objects.npz"
    np.savez(objs, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects are not read"):
        convert.read_state_dict(objs)
    nothing = tmp_path / "nothing.npz"
    np.savez(nothing)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        convert.read_state_dict(nothing)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        convert.convert(text, tmp_path / "out", arch="resnet_tiny")


def test_pt_file_without_torch_asks_for_the_extra(tmp_path):
    pytest.importorskip("safetensors")
    if "torch" in sys.modules or _torch_importable():
        pytest.skip("torch is installed, so the missing-torch message cannot arise")
    pt = tmp_path / "w.pt"
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ImportError, match=r"cxr_jax\[torch\]"):
        convert.read_state_dict(pt)


def _torch_importable():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def test_importing_convert_does_not_import_torch():
    code = ("import sys; import cxr_jax.convert, cxr_jax.models; "
            "bad = [m for m in ('torch', 'torchvision', 'safetensors') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------- checkpoints, metadata
def test_safetensors_round_trip_and_load(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model, v, sd = _tiny_torch_state("densenet_tiny", 6, 3, seed=2)
    f = tmp_path / "tv.safetensors"
    st.save_file(sd, str(f))
    assert convert.read_state_dict(f).keys() == sd.keys()
    m2, v2 = convert.convert(f, tmp_path / "ckpt")  # arch, classes, channels read from the file
    assert m2 == model
    m3, v3 = convert.load(tmp_path / "ckpt")
    assert m3 == model
    assert jax.tree_util.tree_structure(v3) == jax.tree_util.tree_structure(v)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(jax.jit(m3.apply)(v3, x)),
                                  np.asarray(jax.jit(model.apply)(v, x)))
    meta = convert.load_metadata(tmp_path / "ckpt")
    assert meta["arch"] == "densenet_tiny" and meta["num_classes"] == 6
    assert meta["in_channels"] == 3 and meta["source"] == "torchvision"
    conv = meta["input_convention"]
    assert conv["range"] == [0, 1] and conv["mean"] == [0.485, 0.456, 0.406]
    assert meta["op_threshs"] is None and meta["pathologies"] == []
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        convert.convert(f, tmp_path / "ckpt")
    convert.convert(f, tmp_path / "ckpt", overwrite=True)
    with pytest.raises(ValueError, match="Wrong architecture.*densenet_tiny"):
        convert.convert(f, tmp_path / "other", arch="densenet121")


def test_torchxrayvision_metadata_and_calibration(tmp_path):
    model, v, sd = _tiny_torch_state("densenet_tiny", 18, 1, seed=3)
    t = np.full(18, np.nan, np.float32)
    t[[0, 7, 16]] = [0.1, 0.3, 0.6]
    np.savez(tmp_path / "xrv.npz", op_threshs=t, **sd)
    _, _ = convert.convert(tmp_path / "xrv.npz", tmp_path / "x", source="torchxrayvision")
    meta = json.loads((tmp_path / "x" / "model.json").read_text())  # strict JSON: NaN -> null
    assert meta["op_threshs"][1] is None and meta["op_threshs"][7] == pytest.approx(0.3)
    assert meta["input_convention"] == {"range": [-1024, 1024], "channels": 1, "size": 224,
                                        "crop": "center"}
    assert meta["pathologies"] == list(convert.XRV_PATHOLOGIES) and meta["num_classes"] == 18
    meta = convert.load_metadata(tmp_path / "x")
    assert math.isnan(meta["op_threshs"][1])
    m, v2 = convert.load(tmp_path / "x")
    x = convert.normalize_input(jnp.full((1, 32, 32, 1), 0.5), meta)
    assert float(x[0, 0, 0, 0]) == 0.0
    logits = jax.jit(m.apply)(v2, x)
    cal = convert.calibrate(logits, meta["op_threshs"])
    assert cal.shape == (1, 18)
    np.testing.assert_array_equal(np.asarray(cal)[0, np.isnan(t)], 0.5)
    with pytest.raises(ValueError, match="are a densenet121, but the file is a densenet_tiny"):
        convert.convert(tmp_path / "xrv.npz", tmp_path / "y", source="torchxrayvision",
                        xrv_weights="densenet121-res224-all")


def test_released_torchxrayvision_file_name_gives_labels_and_thresholds(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = models.get("densenet121", num_classes=18, in_channels=1)
    sd, _ = _synthetic(model)
    info = convert.XRV_WEIGHTS["densenet121-res224-chex"]
    f = tmp_path / (info["file"][:-3] + ".safetensors")
    st.save_file(sd, str(f))
    m, _ = convert.convert(f, tmp_path / "chex", source="torchxrayvision")
    assert (m.name, m.num_classes, m.in_channels) == ("densenet121", 18, 1)
    meta = convert.load_metadata(tmp_path / "chex")
    assert meta["pathologies"][2] == "" and meta["pathologies"][0] == "Atelectasis"
    assert meta["untrained_outputs"] == [2, 5, 6, 9, 11, 12, 13]
    np.testing.assert_allclose(meta["op_threshs"], info["op_threshs"], equal_nan=True)


def test_xrv_table_is_consistent():
    for name, info in convert.XRV_WEIGHTS.items():
        assert len(info["labels"]) == 18 and len(info["op_threshs"]) == 18, name
        assert info["arch"] in models.names()
        # An output has a threshold exactly when it was trained.
        assert [lab == "" for lab in info["labels"]] == [
            math.isnan(t) for t in info["op_threshs"]] or name == "resnet50-res512-all"


def test_calibrate_known_values_and_gradients():
    logit = lambda p: math.log(p / (1 - p))
    t = np.array([0.5, 0.2, 0.2, np.nan, 0.8], np.float32)
    logits = jnp.array([[logit(0.25), 0.0, logit(0.2), 3.0, logit(0.9)]])
    got = np.asarray(convert.calibrate(logits, t))[0]
    # 0.25/(2*0.5); 1-(0.5)/(2*0.8); p = t -> 0.5; no threshold -> 0.5; 1-0.1/(2*0.2)
    np.testing.assert_allclose(got, [0.25, 0.6875, 0.5, 0.5, 0.75], rtol=1e-5)
    g = jax.grad(lambda z: convert.calibrate(z, t).sum())(logits)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 3]) == 0.0
    z = jnp.linspace(-6, 6, 101)[:, None] * jnp.ones((1, 5))
    c = np.asarray(convert.calibrate(z, t))
    assert np.all(np.diff(c[:, [0, 1, 2, 4]], axis=0) > 0)  # monotone: same ranking as logits
    with pytest.raises(ValueError, match="op_threshs must have shape"):
        convert.calibrate(logits, t[:3])


def test_normalize_input_conventions():
    xrv = convert.input_convention("torchxrayvision", 1)
    x = jnp.array([0.0, 0.25, 1.0]).reshape(1, 1, 3, 1)
    np.testing.assert_allclose(np.asarray(convert.normalize_input(x, xrv)).ravel(),
                               [-1024, -512, 1024])
    tv = convert.input_convention("torchvision", 3)
    y = convert.normalize_input(jnp.full((1, 2, 2, 3), 0.5), {"input_convention": tv})
    np.testing.assert_allclose(np.asarray(y)[0, 0, 0],
                               (0.5 - np.array(convert.IMAGENET_MEAN)) / convert.IMAGENET_STD,
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"Expected images \[B, H, W, 1\]"):
        convert.normalize_input(jnp.zeros((1, 4, 4, 3)), xrv)


def test_load_rejects_non_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no model.json"):
        convert.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(
        {"arch": "resnet_tiny", "num_classes": 2, "in_channels": 1}))
    with pytest.raises(ValueError, match="no variables/ folder"):
        convert.load(tmp_path)


def test_cli(tmp_path, capsys):
    _, _, sd = _tiny_torch_state("resnet_tiny", 2, 1)
    np.savez(tmp_path / "w.npz", **sd)
    rc = convert.main(["--source", "torchvision", "--arch", "resnet_tiny", "--weights",
                       str(tmp_path / "w.npz"), "--out", str(tmp_path / "ck"),
                       "--pathologies", "Effusion,Nodule"])
    out = capsys.readouterr().out
    assert rc == 0 and "resnet_tiny, 2 outputs, 1 input channel(s)" in out
    assert convert.load_metadata(tmp_path / "ck")["pathologies"] == ["Effusion", "Nodule"]
    rc = convert.main(["--arch", "resnet_tiny_bottleneck", "--weights", str(tmp_path / "w.npz"),
                       "--out", str(tmp_path / "ck2")])
    assert rc == 2 and "Wrong architecture" in capsys.readouterr().err
    rc = convert.main(["--weights", str(tmp_path / "w.npz"), "--out", str(tmp_path / "ck3"),
                       "--pathologies", "a,b,c"])
    assert rc == 2 and "pathologies has 3 entries but the model has 2" in capsys.readouterr().err
