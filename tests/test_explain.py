"""The explain command (issue 16): one loader for every model, a folder of any radiographs ->
maps equal to the library's, skips with reasons, top-K targets, resume after SIGKILL."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cxr_jax import attribution, convert, explain, models
from cxr_jax.common.files import write_json
from cxr_jax.data import phantoms
from cxr_jax.explain import outputs, targets as targets_mod
from cxr_jax.training.checkpoint import Checkpointer
from cxr_jax.training.steps import TrainState, make_optimizer
from experiments.configs import train as train_config

REAL = os.environ.get("CXR_JAX_REAL_DATA")
FAST = {"integrated_gradients": {"steps": 4}}


def fan_in_variables(model, size, seed=0):
    """Random He-scaled weights of the right shapes, without compiling the model's init
    (whose random number generation takes seconds to compile on a CPU)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, size, size, model.in_channels)))
    rng = np.random.default_rng(seed)

    def fill(path, a):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(a.shape[:-1]))
            return jnp.asarray(rng.normal(0, np.sqrt(2.0 / fan_in), a.shape), jnp.float32)
        return jnp.full(a.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training workdir (resnet_tiny at 64 px) as `training.fit` leaves it: config.json
    and an orbax checkpoint of the train state, with random weights (no training needed)."""
    c = train_config.get_config("test")
    c.image_size, c.loss = 64, "bce"
    path = str(tmp_path_factory.mktemp("train"))
    names = phantoms.FINDINGS
    write_json(os.path.join(path, "config.json"),
               {"config": c.to_dict(), "label_names": list(names)})
    model = models.get(c.model, num_classes=len(names))
    tx = make_optimizer(name=c.optimizer, learning_rate=c.learning_rate, total_steps=c.steps,
                        warmup_steps=c.warmup_steps, weight_decay=c.weight_decay,
                        schedule=c.schedule)
    variables = fan_in_variables(model, c.image_size, seed=1)
    state = TrainState(step=jnp.asarray(3, jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"],
                       opt_state=tx.init(variables["params"]), key=jax.random.PRNGKey(0))
    ckpt = Checkpointer(path)
    ckpt.save(3, state, {"history": []})
    ckpt.close()
    return path, variables


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8- and 16-bit PNGs, a JPEG (one in a subfolder), and five files that must be skipped."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    imgs = phantoms.generate(4, image_size=80, seed=5, intensity="unit").images[..., 0]
    Image.fromarray(np.round(imgs[0] * 255).astype(np.uint8)).save(root / "a8.png")
    Image.fromarray(np.round(imgs[1] * 65535).astype(np.uint16)).save(root / "b16.png")
    Image.fromarray(np.round(imgs[2] * 255).astype(np.uint8)).convert("RGB").save(
        root / "sub" / "c.jpg", quality=95)
    Image.fromarray(np.round(imgs[3] * 255).astype(np.uint8)).save(root / "sub" / "d.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.zeros((30, 200), np.uint8)).save(root / "thin.png")
    (root / ".hidden.png").write_bytes(b"ignored")
    return str(root)


@pytest.fixture(scope="module")
def workdir_model(trained):
    return trained[0]


GOOD = ["a8.png", "b16.png", "sub__c.jpg", "sub__d.png"]


def _inputs(names, folder, meta):
    paths = {explain.inputs.output_name(os.path.relpath(p, folder)): p
             for p in (os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)}
    return np.stack([explain.load_input(paths[n], meta)[0] for n in names])


def test_models_load_both_kinds(trained, tmp_path):
    workdir_model, ref_vars = trained
    model, variables, meta = models.load(workdir_model)
    assert model.name == "resnet_tiny" and meta.kind == "training"
    assert meta.finding_names == phantoms.FINDINGS and meta.input_size == 64
    assert meta.channels == 1
    assert meta.value_range == (-1024.0, 1024.0) and meta.output == "sigmoid"
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, ref_vars)
    # A converted ImageNet-style model: 3 channels, mean/std, named outputs.
    m3 = models.get("resnet_tiny", num_classes=3, in_channels=3)
    v3 = fan_in_variables(m3, 64)
    np.savez(tmp_path / "w.npz", **{k: np.asarray(a) for k, a in
                                    convert.flax_to_torch(v3).items()})
    convert.convert(tmp_path / "w.npz", tmp_path / "tv", pathologies=["x", "y", "z"])
    _, v, meta3 = models.load(tmp_path / "tv")
    assert meta3.kind == "converted" and meta3.finding_names == ("x", "y", "z")
    assert meta3.channels == 3 and meta3.mean is not None and meta3.input_size == 224
    x = meta3.to_input(np.full((2, 4, 4), 0.5, np.float32))
    np.testing.assert_allclose(x[0, 0, 0], (0.5 - np.asarray(meta3.mean)) / np.asarray(meta3.std),
                               rtol=1e-6)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, v3)
    for bad in (tmp_path / "nothing", tmp_path / "w.npz", tmp_path):
        with pytest.raises(ValueError, match="training workdir .* or a converted checkpoint"):
            models.load(bad)


def test_targets_parse_and_select():
    meta = models.Metadata(kind="converted", path="", arch="resnet_tiny",
                           finding_names=("Mass", "", "Effusion", "Nodule"), input_size=64,
                           channels=1, value_range=(0.0, 1.0))
    assert targets_mod.parse("all", meta).fixed == (0, 2, 3)
    assert targets_mod.parse("effusion,Mass", meta).fixed == (2, 0)
    t = targets_mod.parse("top2", meta)
    scores = jnp.asarray([[0.1, 0.99, 0.5, 0.7], [0.9, 0.95, 0.2, 0.1]])
    np.testing.assert_array_equal(t.select(scores), [[3, 2], [0, 2]])  # index 1 is untrained
    for bad, msg in (("top4", "3 trained outputs"), ("Lungs", "unknown finding 'Lungs'"),
                     ("", "empty")):
        with pytest.raises(ValueError, match=msg):
            targets_mod.parse(bad, meta)


def test_explain_folder_maps_equal_library(workdir_model, folder, tmp_path):
    out = str(tmp_path / "ex")
    methods = ("gradcam", "integrated_gradients", "iba")
    with pytest.warns(UserWarning, match="estimated from only 4 samples"):
        res = explain.explain_files(workdir_model, folder, out, methods=methods, hparams=FAST,
                                    batch_size=8, progress=False)
    assert res["counts"] == {"listed": 8, "explained": 4, "done_before": 0, "skipped": 4}
    reasons = {os.path.basename(s["path"]): s["reason"] for s in res["skipped"]}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "not an image format" in reasons["notes.txt"]
    assert "corrupt" in reasons["corrupt.png"] or "cannot decode" in reasons["corrupt.png"]
    assert reasons["thin.png"].startswith("image too small: 200x30")
    assert "sub__c.jpg" in os.listdir(os.path.join(out, "overlays"))
    loaded = models.load(workdir_model)
    x = _inputs(GOOD, folder, loaded.metadata)
    got = {n: outputs.read(os.path.join(out, "maps", n + ".npz")) for n in GOOD}
    logits = loaded.model.apply(loaded.variables, x)
    probs = np.asarray(jax.nn.sigmoid(logits))
    for i, n in enumerate(GOOD):
        np.testing.assert_allclose(got[n]["probs"], probs[i], rtol=1e-5, atol=1e-6)
        assert got[n]["targets"].tolist() == [int(np.argmax(probs[i]))]  # top1
    # The library's own call on the same padded batch, the same key.
    xb = np.concatenate([x, np.repeat(x[-1:], 4, axis=0)])
    t = jnp.asarray([got[n]["targets"][0] for n in GOOD] + [got[GOOD[-1]]["targets"][0]] * 4)
    ready = attribution.prepare_all(explain.method_specs(loaded, methods, hparams=FAST),
                                    loaded.model, loaded.variables,
                                    cache=attribution.Cache(os.path.join(out, "stats")))
    key = explain.batch_key(0, 0, 0)
    for m in methods:
        want = np.asarray(jax.jit(lambda v, x, t, k: ready[m](loaded.model, v, x, t, key=k))(
            loaded.variables, xb, t, key))
        # Two programs round differently; IBA's ten Adam steps carry that to ~5e-4.
        tol = 1e-3 if m == "iba" else 2e-4
        for i, n in enumerate(GOOD):
            np.testing.assert_allclose(got[n]["maps"][m][0], want[i], rtol=tol,
                                       atol=tol * np.abs(want[i]).max() + 1e-12, err_msg=m)
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == GOOD and rows[0]["explained"] == loaded.metadata.\
        finding_names[got[GOOD[0]]["targets"][0]]
    page = open(os.path.join(out, "index.html")).read()
    assert page.count('class="card"') == 4 and "thin.png" in page
    assert json.load(open(os.path.join(out, "results.json")))["counts"]["explained"] == 4


def test_resume_after_sigkill_and_float16(workdir_model, folder, tmp_path):
    out = str(tmp_path / "ex")
    # SIGKILL (no cleanup) while the only batch is being written, after its third image.
    script = (
        "import os, signal\n"
        "from cxr_jax import explain\n"
        "from cxr_jax.explain import outputs\n"
        "write, n = outputs.Writer.write, [0]\n"
        "def dying(self, r):\n"
        "    write(self, r); n[0] += 1\n"
        "    if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "outputs.Writer.write = dying\n"
        f"explain.explain_files({workdir_model!r}, {folder!r}, {out!r}, methods='gradcam',"
        " progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = sorted(os.listdir(os.path.join(out, "maps")))
    assert done == [n + ".npz" for n in GOOD[:3]]  # whole files only: no temporary file counts as done
    res = explain.explain_files(workdir_model, folder, out, methods="gradcam", progress=False)
    assert res["counts"]["explained"] == 1 and res["counts"]["done_before"] == 3
    assert len(open(os.path.join(out, "predictions.csv")).readlines()) == 5
    with pytest.raises(ValueError, match=r"other settings \(methods differ\)"):
        explain.explain_files(workdir_model, folder, out, methods="gradient", progress=False)
    # float16 storage: maps scaled by their max |value|, read back within float16 precision.
    res16 = explain.explain_files(workdir_model, folder, str(tmp_path / "f16"),
                                  methods="gradcam", maps_dtype="float16", progress=False)
    assert res16["counts"]["explained"] == 4
    for n in GOOD:
        a = outputs.read(os.path.join(out, "maps", n + ".npz"))["maps"]["gradcam"]
        b = outputs.read(str(tmp_path / "f16" / "maps" / (n + ".npz")))["maps"]["gradcam"]
        np.testing.assert_allclose(b, a, atol=1e-3 * np.abs(a).max())


def test_converted_model_csv_all_targets_and_calibration(folder, tmp_path):
    """A TorchXRayVision-style conversion: [-1024, 1024] input, an untrained slot, operating
    points; the images listed in a CSV (NIH's Image Index, resolved under root/images/)."""
    m = models.get("densenet_tiny", num_classes=3, in_channels=1)
    v = fan_in_variables(m, 64, seed=2)
    np.savez(tmp_path / "w.npz", op_threshs=np.asarray([0.2, np.nan, 0.9], np.float32),
             **{k: np.asarray(a) for k, a in convert.flax_to_torch(v).items()})
    convert.convert(tmp_path / "w.npz", tmp_path / "xrv", source="torchxrayvision",
                    pathologies=["Mass", "", "Effusion"])
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for name in ("a8.png", "b16.png"):
        (root / "images" / name).write_bytes(open(os.path.join(folder, name), "rb").read())
    (root / "list.csv").write_text("Image Index,Finding Labels\na8.png,Mass\n,No Finding\n"
                                   "b16.png,Effusion\nmissing.png,Mass\n")
    out = str(tmp_path / "ex")
    res = explain.explain_files(tmp_path / "xrv", str(root / "list.csv"), out,
                                methods="gradcam", targets="all", progress=False)
    assert res["counts"]["explained"] == 2 and res["counts"]["skipped"] == 2
    assert {s["reason"] for s in res["skipped"]} == {"empty 'Image Index'", "no such file"}
    r = outputs.read(os.path.join(out, "maps", "images__a8.png.npz"))
    assert r["targets"].tolist() == [0, 2] and r["maps"]["gradcam"].shape == (2, 224, 224)
    model, v2, meta = models.load(tmp_path / "xrv")
    assert meta.value_range == (-1024.0, 1024.0) and meta.finding_names[1] == ""
    x = explain.load_input(str(root / "images" / "a8.png"), meta)[0]
    logits = model.apply(v2, x[None])
    np.testing.assert_allclose(r["probs"], jax.nn.sigmoid(logits)[0], rtol=1e-5, atol=1e-6)
    cal = np.asarray(convert.calibrate(logits, [0.2, np.nan, 0.9]))[0]
    np.testing.assert_allclose(r["scores"][[0, 2]], cal[[0, 2]], rtol=1e-5, atol=1e-6)
    header = open(os.path.join(out, "predictions.csv")).readline().strip().split(",")
    assert header == ["name", "path", "explained", "Mass", "Effusion", "Mass (calibrated)",
                      "Effusion (calibrated)"]


def test_bad_choices_stop_before_any_work(workdir_model, folder, tmp_path):
    out = tmp_path / "never"
    cases = [({"methods": "gradcam,foo"}, "Unknown attribution method 'foo'.*gradcam"),
             ({"methods": "regression_iba"}, "explains regression models.*classifier"),
             ({"targets": "lungs"}, "unknown finding 'lungs'.*nodule"),
             ({"layer": "layer9"}, "Unknown layer 'layer9'.*layer3"),
             ({"hparams": {"iba": {"beta": 1}}, "methods": "gradcam"}, "not among the chosen")]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            explain.explain_files(workdir_model, folder, out, progress=False, **kwargs)
    assert not out.exists()


def test_method_specs_accept_points_inside_units(workdir_model):
    # NormGrad where TorchRay reads (a convolution inside a unit) passes the checks; a misspelt
    # point is named in the error.
    loaded = models.load(workdir_model)
    point = loaded.model.points[-1]
    specs = explain.method_specs(loaded, "normgrad,gradcam", layer=point)
    assert specs["normgrad"][1]["layer"] == point
    with pytest.raises(ValueError, match="conv9"):
        explain.method_specs(loaded, "normgrad", layer=point.rsplit(".", 1)[0] + ".conv9")


def test_named_baselines_are_the_models_black_input(workdir_model):
    """"black" is the model's input for intensity 0 in each convention; the command's config
    starts IG there; a bad name stops before any work."""
    meta = lambda **kw: models.Metadata(kind="converted", path="", arch="resnet_tiny",
                                        finding_names=("a",), input_size=64, **kw)
    xrv = meta(channels=1, value_range=(-1024.0, 1024.0))
    assert explain.named_baseline("black", xrv) == -1024.0
    assert explain.named_baseline("black", meta(channels=1, value_range=(0.0, 1.0))) == 0.0
    imagenet = meta(channels=3, value_range=(0.0, 1.0), mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225))
    np.testing.assert_allclose(explain.named_baseline("black", imagenet),
                               [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
    assert explain.named_baseline("zero", xrv) == 0.0
    assert explain.named_baseline("-512", xrv) == -512.0
    with pytest.raises(ValueError, match="unknown baseline 'grey'.*'black'"):
        explain.named_baseline("grey", xrv)
    loaded = models.load(workdir_model)  # trained in [-1024, 1024]
    from experiments.configs import explain as explain_config
    hp = {"integrated_gradients": explain_config.get_config().hparams.integrated_gradients
          .to_dict()}
    assert hp["integrated_gradients"]["baseline"] == "black"
    specs = explain.method_specs(loaded, "integrated_gradients", hparams=hp)
    assert specs["integrated_gradients"][1]["baseline"] == -1024.0
    assert "baseline" not in explain.method_specs(loaded, "integrated_gradients")[
        "integrated_gradients"][1]  # the library keeps the registry's b = 0


@pytest.mark.skipif(not REAL, reason="set CXR_JAX_REAL_DATA to the real-data folder")
def test_real_files(workdir_model, tmp_path):
    """The published files: NIH 8-bit PNGs, the COVID JPEG (three equal channels), both
    DICOMs (JPEG-baseline compressed; one MONOCHROME1, shown inverted)."""
    folder = tmp_path / "real"
    folder.mkdir()
    for sub in ("nih/images/00000001_000.png", "nih/images/00027426_000.png",
                "covid/covid-19-pneumonia-58-prior.jpg", "dicom/siim_sample.dcm",
                "dicom/fake_monochrome1.dcm"):
        (folder / os.path.basename(sub)).write_bytes(open(os.path.join(REAL, sub), "rb").read())
    res = explain.explain_files(workdir_model, str(folder), str(tmp_path / "ex"),
                                methods="gradcam", progress=False)
    assert res["counts"]["explained"] == 5 and res["skipped"] == []
    shown = np.asarray(Image.open(tmp_path / "ex" / "overlays" / "fake_monochrome1.dcm" /
                                  "input.png"))[..., 0] / 255.0
    meta = models.load(workdir_model).metadata
    want = explain.load_input(str(folder / "fake_monochrome1.dcm"), meta)[1]
    np.testing.assert_allclose(shown, want, atol=1 / 255 + 1e-6)  # inverted, as displayed


def test_gallery_pages_link_each_other(tmp_path):
    from cxr_jax.report import Card, write_gallery

    cards = [Card(f"img{i}", [f"line {i}"], [("finding", [("input", f"o/{i}.png")])])
             for i in range(5)]
    paths = write_gallery(str(tmp_path), "t", [("Summary", "<p>s</p>")], cards, page_size=2)
    assert [os.path.basename(p) for p in paths] == ["index.html", "page_002.html",
                                                    "page_003.html"]
    first, last = (open(p).read() for p in (paths[0], paths[-1]))
    assert "Summary" in first and "Summary" not in last
    assert first.count('class="card"') == 2 and last.count('class="card"') == 1
    assert 'href="page_002.html">next' in first and 'href="page_002.html">&larr; previous' in last
    assert 'loading="lazy"' in first and "Images 5-5" in last
