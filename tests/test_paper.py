"""The paper comparisons' tables and claims: bootstrap intervals of class means, table rows
with intervals and the paper's figures, and each claim kind's verdict on hand-made results."""

import math

import numpy as np
import pytest

from cxr_jax import metrics, paper
from cxr_jax.common.files import read_json, write_json
from cxr_jax.evaluation import aggregate
from experiments.configs import paper_cam_boxes, paper_iba, paper_normgrad


def test_class_mean_interval_known_cases():
    # Constant values in every class: every replicate has the same class mean.
    lo, hi = metrics.class_mean_interval({"a": [0.4, 0.4, np.nan], "b": [0.8]})
    assert lo == pytest.approx(0.6) and hi == pytest.approx(0.6)
    # One class of values 0 and 1 (n = 2): replicate means are 0, 0.5 or 1 with chances
    # 1/4, 1/2, 1/4, so the 95% interval spans [0, 1].
    assert metrics.class_mean_interval({"a": [0.0, 1.0]}) == (0.0, 1.0)
    # On 1/0/NaN hits it is the pointing game's interval, draw for draw.
    hits = {"a": [1, 0, 1, 1, np.nan], "b": [0, 0, 1]}
    assert metrics.class_mean_interval(hits) == metrics.pointing_game_interval(hits)
    assert all(math.isnan(v) for v in metrics.class_mean_interval({"a": [np.nan]}))
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        metrics.pointing_game_interval({"a": [0.5]})


def _rows():
    """Per-image rows of two findings; method m1 is perfect, m2 is half right."""
    rows = []
    for i in range(4):
        for f in ("x", "y"):
            rows.append({"id": i, "finding": f, "centre": {"pointing_game": 0.0},
                         "m1": {"pointing_game": 1.0, "box_iou": 0.5},
                         "m2": {"pointing_game": float(i % 2), "box_iou": None}})
    return rows


def test_intervals_per_method_and_metric():
    ci = aggregate.intervals(_rows(), ["x", "y"], ["m1", "m2"])
    assert ci["m1"]["pointing_game"] == [1.0, 1.0] and ci["m1"]["box_iou"] == [0.5, 0.5]
    lo, hi = ci["m2"]["pointing_game"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert all(math.isnan(v) for v in ci["m2"]["box_iou"])  # unscored everywhere


def _config(layout, findings=(), paper_figures=None, claims=()):
    c = paper_normgrad.get_config("reduced")
    with c.unlocked():
        c.layout, c.findings = layout, list(findings)
        c.paper = paper_figures or {}
        c.claims = list(claims)
    return c


def test_model_rows_carry_intervals_and_paper_figures():
    res = {"counts": {"x": 4, "y": 4},
           "table": {"centre": {"x": {"pointing_game": 0.0}, "y": {"pointing_game": 0.0}},
                     "m1": {"x": {"pointing_game": 1.0, "box_iou": 0.5},
                            "y": {"pointing_game": 1.0, "box_iou": 0.5}},
                     "m2": {"x": {"pointing_game": 0.5}, "y": {"pointing_game": 0.5}}}}
    rows = paper.model_rows("net", res, _rows(), _config("pointing_game", ["x"],
                                                         {"m1": "0.862"}))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"centre", "m1", "m2"}
    assert by["m1"]["pointing game"] == 1.0 and by["m1"]["pointing game 95% CI"] == "[1.000, 1.000]"
    assert by["m1"]["paper"] == "0.862" and by["m2"]["paper"] == ""
    assert by["m2"]["pointing game"] == 0.5
    boxes = paper.model_rows("net", res, _rows(), _config("box_iou"))
    assert "centre" not in {r["method"] for r in boxes}  # no box for the centre baseline
    m1 = next(r for r in boxes if r["method"] == "m1")
    assert m1["x"] == 0.5 and m1["box iou"] == 0.5 and m1["box iou 95% CI"] == "[0.500, 0.500]"


def test_a_reused_evaluation_resamples_the_findings_in_the_live_order(tmp_path):
    # The bootstrap draws the classes one after another, so their order moves the interval;
    # results.json sorts "counts", and a reused evaluation must still follow "findings".
    rows = [{"id": i, "finding": f, "m": {"box_iou": v}}
            for f, vals in (("y", [0.9, 0.1, 0.2, 0.3, 0.8]), ("x", [0.4, 0.5, 0.0, 1.0, 0.7]))
            for i, v in enumerate(vals)]
    table = {"m": {f: {"box_iou": float(np.mean([r["m"]["box_iou"] for r in rows
                                                  if r["finding"] == f]))} for f in "yx"}}
    live = {"findings": ["y", "x"], "counts": {"y": 5, "x": 5}, "table": table}
    write_json(str(tmp_path / "results.json"), live)
    reused = read_json(str(tmp_path / "results.json"))
    assert list(reused["counts"]) == ["x", "y"]  # the file lost the order; "findings" keeps it
    ci = lambda res: paper.model_rows("net", res, rows, _config("box_iou"))[0]["box iou 95% CI"]
    in_order = aggregate.intervals(rows, ["y", "x"], ["m"])["m"]["box_iou"]
    swapped = aggregate.intervals(rows, ["x", "y"], ["m"])["m"]["box_iou"]
    assert in_order != swapped  # the order matters, so the check below can fail
    assert ci(reused) == ci(live) == f"[{in_order[0]:.3f}, {in_order[1]:.3f}]"
    older = {k: v for k, v in reused.items() if k != "findings"}  # written before the fix
    assert ci(older) == f"[{swapped[0]:.3f}, {swapped[1]:.3f}]"


def _table(values):
    """Table rows {model: {method: (value, low, high)}} as model_rows writes them."""
    return [{"model": tag, "method": m, "box iou": v, "box iou 95% CI": f"[{lo:.3f}, {hi:.3f}]"}
            for tag, per in values.items() for m, (v, lo, hi) in per.items()]


def test_claims_best_greater_and_best_model():
    rows = _table({"densenet_a": {"gradcam": (0.30, 0.25, 0.35), "guided": (0.40, 0.36, 0.44)},
                   "resnet_b": {"gradcam": (0.20, 0.10, 0.30), "guided": (0.25, 0.15, 0.35)}})
    claims = [
        {"kind": "best", "metric": "box_iou", "methods": ["guided"], "claim": "guided best"},
        {"kind": "best", "metric": "box_iou", "methods": ["gradcam"], "claim": "gradcam best",
         "model": "densenet_a"},
        {"kind": "greater", "metric": "box_iou", "a": "guided", "b": "gradcam",
         "model": "resnet_b", "claim": "guided above"},
        {"kind": "best_model", "metric": "box_iou", "models": ["densenet"],
         "claim": "densenet best", "data": "NIH"},
        {"kind": "untestable", "claim": "0.862 on Object-CXR", "why": "real data only"},
        {"kind": "greater", "metric": "box_iou", "a": "nope", "b": "gradcam", "claim": "?"},
        {"kind": "greater", "metric": "box_iou", "a": "gradcam", "b": "gradcam", "claim": "="},
    ]
    out = paper.check_claims(claims, rows, {})
    verdicts = [o["verdict"] for o in out]
    # guided best: separated on densenet_a, within noise on resnet_b -> within noise overall
    assert verdicts == ["holds on phantoms (within noise)",
                        "does not hold on phantoms (separated)",
                        "holds on phantoms (within noise)", "holds on NIH",
                        "cannot be tested here", "cannot be tested here", "a tie on phantoms"]
    assert "separated" in out[1]["evidence"]  # [0.36, 0.44] vs [0.25, 0.35]
    assert "within noise" in out[2]["evidence"]  # [0.15, 0.35] vs [0.10, 0.30]
    assert out[4]["evidence"] == "real data only"
    assert "densenet_a 0.350, resnet_b 0.225" in out[3]["evidence"]
    with pytest.raises(ValueError, match="Unknown claim kind"):
        paper.check_claims([{"kind": "bigger", "claim": "?"}], rows, {})


def test_agreement_claim_from_the_matrix():
    names = ["a", "b", "ground truth"]
    matrix = [[1.0, 0.8, 0.2], [0.8, 1.0, 0.3], [0.2, 0.3, 1.0]]
    assert paper.agreement_means(names, matrix) == pytest.approx((0.8, 0.25))
    claim = {"kind": "agreement", "claim": "agree"}
    held = paper.check_claims([claim], [], {"net": {"agreement": {"names": names,
                                                                  "matrix": matrix}}})
    assert held[0]["verdict"] == "holds on phantoms"
    flipped = [[1.0, 0.1, 0.5], [0.1, 1.0, 0.6], [0.5, 0.6, 1.0]]
    out = paper.check_claims([claim], [], {"net": {"agreement": {"names": names,
                                                                 "matrix": flipped}}})
    assert out[0]["verdict"] == "does not hold on phantoms"


@pytest.mark.parametrize("module", [paper_normgrad, paper_cam_boxes, paper_iba])
def test_paper_configs_name_known_claims_methods_and_models(module):
    from cxr_jax import models
    from cxr_jax.evaluation import methods as method_sets
    for variant in ("reduced", "gpu", "full"):
        c = module.get_config(variant)
        for entry in c.models:
            assert entry.partition("@")[0] in models.names()
        tags = [m.replace("@", "_") for m in c.models]
        for claim in c.claims:
            assert claim["kind"] in ("best", "greater", "agreement", "best_model", "untestable")
            if claim.get("model") and variant != "full":
                assert claim["model"] in tags, claim
            for key in ("a", "b"):
                if key in claim:
                    assert claim[key] in c.methods
        method_sets.for_task(c.methods.to_dict(), regression=False)  # every method resolves
    gpu = module.get_config("gpu")
    assert gpu.train.steps == 3000 and not any("_slim" in m for m in gpu.models)
    with pytest.raises(ValueError, match="reduced, gpu or full"):
        module.get_config("tiny")


def test_model_entries_train_and_evaluate_on_their_own_dataset(tmp_path, monkeypatch):
    c = paper_iba.get_config("full")
    with pytest.raises(ValueError, match="data_dirs.brixia=FOLDER"):  # before any training
        paper.run(str(tmp_path / "a"), c)
    assert not (tmp_path / "a").exists()
    seen = []

    def evaluate(edir, tdir, ecfg, methods, data):  # records what it was asked, then stops the run
        seen.append((ecfg.dataset, ecfg.data_dir, sorted(methods)))
        raise KeyError("stop")

    trained = []
    monkeypatch.setattr(paper, "_train", lambda tdir, t, shared: trained.append(
        (t.model, t.dataset, t.data_dir)))
    monkeypatch.setattr(paper.evaluation, "evaluate_checkpoint", evaluate)
    with c.unlocked():
        c.train.data_dir = "/data/nih"
        c.data_dirs.brixia = "/data/brixia"
        c.models = ("densenet121@brixia",)  # a tuple overrides from the command line
    with pytest.raises(KeyError):
        paper.run(str(tmp_path / "b"), c)
    assert trained == [("densenet121", "brixia", "/data/brixia")]
    assert seen[0][:2] == ("brixia", "/data/brixia") and "regression_iba" in seen[0][2]


def test_models_of_one_comparison_share_one_built_dataset(tmp_path, monkeypatch):
    built, trained = [], []
    monkeypatch.setattr(paper.datasets, "build", lambda t: built.append(t.image_size) or object())
    monkeypatch.setattr(paper.training, "train_and_evaluate",
                        lambda t, tdir, data: trained.append((t.model, data)))
    c = paper_cam_boxes.get_config("reduced").train
    shared = {}
    for model, size in (("resnet50_slim", 224), ("densenet121_slim", 224),
                        ("densenet169_slim", 128)):
        t = c.copy_and_resolve_references()
        with t.unlocked():
            t.model, t.image_size = model, size
        paper._train(str(tmp_path / model), t, shared)
    assert built == [224, 128]  # the second model reused the first one's data
    assert trained[0][1] is trained[1][1] and trained[2][1] is not trained[1][1]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text(f'{{"steps": {c.steps}}}')
    # finished: neither built nor trained
    again = paper._train(str(tmp_path / "done"), c, shared)
    assert len(built) == 2 and len(trained) == 3
    assert again is None  # its data (224 px) is not the one held (128 px)


def test_the_shipped_cam_results_give_the_readme_verdicts():
    """The measured CAM comparison shipped in experiments/results (all four models):
    the claims re-checked from its rows and agreement matrices give the verdicts README states."""
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "experiments", "results",
                        "cam_boxes_reduced")
    shipped = read_json(os.path.join(root, "results.json"))
    results = {tag: read_json(os.path.join(root, tag, "eval", "results.json"))
               for tag in dict.fromkeys(r["model"] for r in shipped["rows"])}
    c = paper_cam_boxes.get_config("reduced")
    assert sorted(results) == sorted(c.models)
    verdicts = paper.check_claims(list(c.claims), shipped["rows"], results)
    assert [v["verdict"] for v in verdicts] == [
        "holds on phantoms", "does not hold on phantoms (separated)",
        "holds on phantoms (separated)", "holds on phantoms"]
    assert verdicts == shipped["claims"]


def test_trained_row_reports_mean_and_lowest_auroc_or_mae(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(
        '{"steps": 500, "auroc": {"mass": 0.9, "nodule": 0.8}, "mean_auroc": 0.85}')
    assert paper._trained_row("m", str(tmp_path / "c")) == {
        "model": "m", "steps": 500, "mean AUROC": "0.850", "lowest AUROC": "0.800 (nodule)"}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text('{"steps": 10, "mae": 0.8612}')
    assert paper._trained_row("s", str(tmp_path / "r")) == {"model": "s", "steps": 10,
                                                            "mae": "0.861"}
