"""The evaluation engine: aggregation by hand, resumption, bad images, tables."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import evaluation, metrics, models
from cxr_jax.report import tables


def _row(i, finding, pg, box=(0, 0, 4, 4), gt=(0, 0, 4, 4)):
    return {"id": i, "finding": finding, "gt_box": list(gt),
            "centre": {"pointing_game": 0.0},
            "m": {"pointing_game": pg, "box_iou": 1.0, "box": list(box)}}


def test_summary_class_mean_vs_pooled_by_hand():
    rows = [_row(0, "a", 1.0), _row(1, "a", 1.0), _row(2, "a", 1.0), _row(3, "a", 0.0),
            _row(4, "b", 0.0)]
    s = evaluation.summarise(rows, ["a", "b"], ["centre", "m"])
    # class mean: (3/4 + 0/1) / 2; pooled: 3/5
    assert s["pointing_game"]["m"] == pytest.approx(0.375)
    assert s["pointing_game_pooled"]["m"] == pytest.approx(0.6)
    assert s["pointing_game"]["centre"] == 0.0
    assert s["counts"] == {"a": 4, "b": 1}
    names, matrix = s["agreement"]["names"], np.array(s["agreement"]["matrix"])
    assert names == ["m", "ground truth"]
    np.testing.assert_allclose(matrix, np.ones((2, 2)))


def test_box_recall_is_derived_from_the_stored_boxes():
    rows = [_row(0, "a", 1.0, box=(0, 0, 2, 4)), _row(1, "a", 1.0, box=(0, 0, 8, 8)),
            _row(2, "b", 0.0, box=(2, 2, 6, 6))]
    rows[1]["m"]["nan_map"] = True  # a NaN map scores NaN, not its (meaningless) box
    s = evaluation.summarise(rows, ["a", "b"], ["m"])
    assert s["table"]["m"]["a"]["box_recall"] == pytest.approx(0.5)  # 8 of 16 px; NaN skipped
    assert s["table"]["m"]["b"]["box_recall"] == pytest.approx(4 / 16)
    assert "box_recall" not in rows[0]["m"]  # the caller's rows are left as they were
    ci = evaluation.aggregate.intervals(rows, ["a", "b"], ["m"])["m"]["box_recall"]
    assert ci == pytest.approx([0.375, 0.375])  # one scored image per finding: no spread


def test_summary_none_values_are_ignored_not_zero():
    rows = [_row(0, "a", 1.0), _row(1, "a", None)]
    s = evaluation.summarise(rows, ["a"], ["m"])
    assert s["pointing_game"]["m"] == 1.0


def _toy(n=6, size=32):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, 2, size, size), bool)
    masks[:, 0, 4:12, 4:12] = True
    masks[:, 1, 20:28, 18:30] = True
    labels = np.ones((n, 2), np.float32)
    labels[0, 1] = 0.0
    return images, masks, labels


def test_run_resumes_and_skips_bad_images(tmp_path):
    model = models.get("resnet_tiny", num_classes=2)
    images, masks, labels = _toy()
    images[3, 5, 5, 0] = np.nan
    variables = model.init(jax.random.key(0), images[:1])
    spec = evaluation.Spec(methods={"gradient": ("gradient", {}), "gradcam": ("gradcam", {})},
                           tolerance=2.0, batch_size=4, pixels_per_step=64,
                           sensitivity_num_n=3, sensitivity_masks=2)
    out = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                         spec, progress=False)
    assert [s["id"] for s in out["skipped"]] == [3]
    with open(tmp_path / "per_image.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # finding a: images 0,1,2,4,5; finding b: 1,2,4,5 (image 0 negative, 3 bad)
    assert sorted((r["finding"], r["id"]) for r in rows) == sorted(
        [("a", i) for i in (0, 1, 2, 4, 5)] + [("b", i) for i in (1, 2, 4, 5)])
    for r in rows:
        for m in ("gradient", "gradcam"):
            assert set(r[m]) >= {"pointing_game", "box_iou", "ehr", "insertion", "deletion",
                                 "sensitivity_n", "box"}
            assert r[m]["pointing_game"] in (0.0, 1.0)
            assert 0.0 <= r[m]["insertion"] <= 1.0
    # A rerun finds everything done: no new rows, same summary.
    out2 = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                          spec, progress=False)
    with open(tmp_path / "per_image.jsonl") as f:
        assert len(f.readlines()) == len(rows)
    assert out2["pointing_game"] == out["pointing_game"]
    paths = tables.write_metric_tables(str(tmp_path), out["table"], ["a", "b"],
                                       evaluation.METRICS)
    assert os.path.join(str(tmp_path), "table_pointing_game.md") in paths
    with open(tmp_path / "table_pointing_game.csv") as f:
        header = f.readline().strip().split(",")
    assert header == ["method", "a", "b", "mean"]


def test_tables_show_every_column_the_rows_hold():
    """Without explicit columns a table shows every key of its rows, in order of first
    appearance: a row's extra field (a regressor's MAE beside classifiers) is not dropped."""
    rows = [{"model": "a", "AUROC": 0.5}, {"model": "b", "mae": 0.25}]
    assert tables.csv(rows) == "model,AUROC,mae\na,0.500,\nb,,0.250\n"
    assert tables.markdown(rows).splitlines()[0] == "| model | AUROC | mae |"


def test_cut_line_is_redone(tmp_path):
    model = models.get("resnet_tiny", num_classes=2)
    images, masks, labels = _toy(n=4)
    variables = model.init(jax.random.key(0), images[:1])
    spec = evaluation.Spec(methods={"gradient": ("gradient", {})}, batch_size=4,
                           faithfulness=False, sensitivity_num_n=0)
    evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"], spec,
                   progress=False)
    path = tmp_path / "per_image.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    out = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                         spec, progress=False)
    assert sum(out["counts"].values()) == 4 + 3
    assert not math.isnan(out["pointing_game"]["gradient"])



def test_regression_insertion_deletion_follow_the_raw_output():
    # A one-output "regressor" whose head bias puts every output near 20 (severity-like units):
    # a sigmoid would read ~1 at every step; the regression scorer follows the raw output.
    model = models.get("resnet_tiny", num_classes=1)
    images, masks, _ = _toy(n=2)
    variables = model.init(jax.random.key(0), images[:1])
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 20.0 if "bias" in jax.tree_util.keystr(path)
        and a.shape == (1,) else a, variables["params"])
    variables = {**variables, "params": params}
    kw = dict(methods={"gradient": ("gradient", {})}, tolerance=2.0, batch_size=2,
              pixels_per_step=64, fraction=0.5, blur_sigma=2.0, sensitivity_num_n=0)
    t = np.zeros(2, np.int32)
    key = jax.random.key(0)
    reg = evaluation.Scorer(model, evaluation.Spec(**kw, regression=True))
    cls = evaluation.Scorer(model, evaluation.Spec(**kw))
    r = reg.score(variables, images[:2], masks[:2, 0], t, key)["gradient"]
    c = cls.score(variables, images[:2], masks[:2, 0], t, key)["gradient"]
    sal = reg.explain["gradient"](variables, jnp.asarray(images[:2]), jnp.asarray(t),
                                  jax.random.fold_in(key, 0))
    raw = lambda logits: logits[:, 0]
    curve = dict(baseline="blur", sigma=2.0, pixels_per_step=64, fraction=0.5)
    for name, fn in (("insertion", metrics.insertion_auc), ("deletion", metrics.deletion_auc)):
        want = fn(model, variables, jnp.asarray(images[:2]), sal, raw, **curve)
        np.testing.assert_allclose(r[name], want, rtol=1e-5)
        assert np.all(r[name] > 10)  # raw units, not a probability
        np.testing.assert_allclose(c[name], 1.0, atol=1e-6)  # the sigmoid saturates


def test_evaluate_checkpoint_end_to_end_writes_results_report_and_noise_check(tmp_path,
                                                                             monkeypatch):
    """A tiny trained checkpoint through evaluate_checkpoint: the files the issue names, the
    centre baseline beside the methods, and the IBA noise check for exactly the layers the IBA
    methods use, equal to attribution.noise_check recomputed from the cached statistics."""
    import ml_collections
    from cxr_jax import attribution, training
    from cxr_jax.data import datasets
    from experiments.configs import evaluate as ecfg, train as tcfg_mod

    tdir, edir = str(tmp_path / "train"), str(tmp_path / "eval")
    tc = tcfg_mod.get_config("test")
    tc.image_size = 64  # layer3 at stride 16: 4x4, enough for the bottleneck's smoothing
    data = datasets.build(tc)
    with tc.unlocked():
        tc.loss = data.loss
    training.train(tc, tdir, data.train, data.eval, data.label_names, progress=False)
    c = ecfg.get_config("fast")
    c.methods = "gradient,iba,multilayer_iba"
    c.num_test, c.max_per_finding, c.batch_size, c.iba_samples = 24, 1, 4, 32
    c.faithfulness, c.sensitivity_num_n = False, 0  # both covered by the engine tests above
    c.devices = 1  # the 8-device path: test_scores_on_eight_devices_equal_one_device
    c.hparams = {"gradient": {"reduce": "sum_abs"}}  # the config's overrides reach the methods
    res = evaluation.evaluate_checkpoint(edir, tdir, c, progress=False)
    assert set(res["pointing_game"]) == {"gradient", "iba", "multilayer_iba", "centre"}
    assert res["settings"]["methods"]["gradient"] == ["gradient", {"reduce": "sum_abs"}]
    for name in ("results.json", "index.html", "per_image.jsonl", "table_pointing_game.csv"):
        assert os.path.exists(os.path.join(edir, name)), name
    flat = lambda d: {(l, f): v for l, per in d.items() for f, v in per.items()}
    with open(os.path.join(edir, "results.json")) as f:
        assert flat(json.load(f)["iba_noise"]) == pytest.approx(flat(res["iba_noise"]))
    # iba at layer3, multilayer_iba at layer1-3: the check covers their union
    assert set(res["iba_noise"]) == {"layer1", "layer2", "layer3"}
    model, variables, _, names = training.load_trained(tdir)
    stats = {l: attribution.load_iba_stats(os.path.join(edir, f"iba_stats_{l}.npz"))
             for l in res["iba_noise"]}
    again = attribution.noise_check(model, variables, stats.values(), names)
    assert flat(again) == pytest.approx(flat(res["iba_noise"]), rel=1e-5)
    assert all(0 <= v <= 1 for v in flat(again).values())
    with open(os.path.join(edir, "index.html")) as f:
        page = f.read()
    assert "IBA noise check" in page and "Method settings" in page
    assert "reduce=sum_abs" in page
    # A finished evaluation is returned as written, without loading the model again; a changed
    # config, or a training run that wrote its results again, evaluates again.
    class Loaded(Exception):
        pass

    def load(_):
        raise Loaded

    monkeypatch.setattr(training, "load_trained", load)
    assert evaluation.evaluate_checkpoint(edir, tdir, c)["pointing_game"] == pytest.approx(
        res["pointing_game"])
    changed = c.copy_and_resolve_references()
    changed.max_per_finding = 2
    with pytest.raises(Loaded):
        evaluation.evaluate_checkpoint(edir, tdir, changed)
    with open(os.path.join(tdir, "results.json"), "a") as f:
        f.write("\n")  # as if trained again
    with pytest.raises(Loaded):
        evaluation.evaluate_checkpoint(edir, tdir, c)


def test_a_method_giving_nan_maps_scores_nan_not_hits(tmp_path):
    """NaN weights make every map NaN: each metric of those images is NaN (the run goes on),
    the method's pointing game is undefined, and the centre baseline is unaffected."""
    model = models.get("resnet_tiny", num_classes=2)
    images, masks, labels = _toy(n=4)
    masks[:] = True  # any point would hit
    variables = model.init(jax.random.key(0), images[:1])
    params = jax.tree_util.tree_map(lambda a: a * jnp.nan, variables["params"])
    variables = {**variables, "params": params}
    spec = evaluation.Spec(methods={"gradient": ("gradient", {})}, tolerance=2.0, batch_size=4,
                           pixels_per_step=64, sensitivity_num_n=0)
    out = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                         spec, progress=False)
    with open(tmp_path / "per_image.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(r["gradient"]["nan_map"] for r in rows)
    assert all(r["gradient"]["pointing_game"] is None for r in rows)
    assert all(r["gradient"]["box_iou"] is None and r["gradient"]["insertion"] is None
               for r in rows)
    assert math.isnan(out["pointing_game"]["gradient"])
    assert out["pointing_game"]["centre"] == 1.0


def test_scores_on_eight_devices_equal_one_device():
    # The batch sharded over 8 devices (5 images padded to 8) gives the metrics of one device,
    # for a deterministic method, a stochastic one (same keys) and the model-querying metrics.
    from cxr_jax.common import sharding
    assert jax.device_count() == 8
    model = models.get("resnet_tiny", num_classes=2)
    images, masks, _ = _toy(n=5)
    variables = model.init(jax.random.key(0), images[:1])
    spec = evaluation.Spec(
        methods={"gradient": ("gradient", {}), "gradcam": ("gradcam", {}),
                 "smoothgrad": ("smoothgrad", {"n": 3})},
        tolerance=2.0, batch_size=5, pixels_per_step=64, sensitivity_num_n=3,
        sensitivity_masks=2)
    t, key = np.array([0, 1, 0, 1, 1]), jax.random.key(3)
    one = evaluation.Scorer(model, spec, mesh=sharding.make_mesh(jax.devices()[:1]))
    eight = evaluation.Scorer(model, spec)
    assert (one.rows, eight.rows) == (5, 8)
    a = one.score(variables, images, masks[:, 0], t, key)
    b = eight.score(variables, images, masks[:, 0], t, key)
    assert a.keys() == b.keys() and set(a["gradcam"]) >= {"insertion", "sensitivity_n", "box"}
    for method in a:
        for metric in a[method]:
            assert len(b[method][metric]) == 5, (method, metric)
            np.testing.assert_allclose(np.asarray(a[method][metric], float),
                                       np.asarray(b[method][metric], float),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{method} {metric}")


def test_gallery_draws_the_scored_maps_and_explains_only_what_an_earlier_run_scored(tmp_path):
    """The scoring keeps the gallery's maps, so drawing them explains nothing again; on a
    resumed run (the images scored earlier, their maps not saved) the gallery explains them
    with the programs `score` compiled: no second compile, and the maps equal the method's."""
    from cxr_jax import attribution

    model = models.get("resnet_tiny", num_classes=2)
    images, masks, labels = _toy(n=5)
    variables = model.init(jax.random.key(0), images[:1])
    spec = evaluation.Spec(methods={"gradient": ("gradient", {})}, tolerance=2.0, batch_size=4,
                           faithfulness=False, sensitivity_num_n=0)
    scorer = evaluation.Scorer(model, spec)
    calls = []
    maps_fn = scorer.maps
    scorer.maps = lambda *a, **k: calls.append(len(a[1])) or maps_fn(*a, **k)
    picks = evaluation.gallery_picks(masks, labels, ["a", "b"], 3)
    assert picks == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]  # image 0 lacks "b"
    summary = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                             spec, progress=False, scorer=scorer, keep=picks)
    kept = summary.pop("maps")
    assert sorted(kept) == picks and "maps" not in json.load(open(tmp_path / "evaluation.json"))
    for k, i in picks:  # what was scored is the method's map of that image and finding
        want = attribution.get("gradient")(model, variables, jnp.asarray(images[i:i + 1]),
                                           jnp.array([k]))[0]
        np.testing.assert_allclose(kept[(k, i)]["gradient"], want, rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in open(tmp_path / "per_image.jsonl")]
    assert all("map" not in r["gradient"] for r in rows)
    compiled = scorer.explain["gradient"]._cache_size()
    path = evaluation.gallery(str(tmp_path), scorer, variables, images, masks, labels,
                              ["a", "b"], per_finding=3, scored=kept)
    assert os.path.exists(path) and calls == []
    # resumed: nothing left to score, so nothing kept; given one map, the gallery explains
    # the other 5 images in calls of at most `rows`, with the compiled programs
    again = evaluation.run(str(tmp_path), model, variables, images, masks, labels, ["a", "b"],
                           spec, progress=False, scorer=scorer, keep=picks)
    assert again["maps"] == {}
    evaluation.gallery(str(tmp_path), scorer, variables, images, masks, labels, ["a", "b"],
                       per_finding=3, scored={**again["maps"], (0, 0): kept[(0, 0)]})
    assert sum(calls) == 5 and max(calls) <= scorer.rows
    assert scorer.explain["gradient"]._cache_size() == compiled == 1
    got = maps_fn(variables, images[[1, 2]], np.array([1, 1]), jax.random.key(0))
    want = attribution.get("gradient")(model, variables, jnp.asarray(images[[1, 2]]),
                                       jnp.array([1, 1]))
    np.testing.assert_allclose(got["gradient"], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Scorer.rows"):
        maps_fn(variables, images[:0], np.zeros(0), jax.random.key(0))
