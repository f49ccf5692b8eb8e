"""The quickstart study on a tiny budget: trains, explains the model it holds in memory and
the phantoms it rendered once, and gives what explaining the saved checkpoint gives."""

import json
import os

import jax
import pytest

from cxr_jax import evaluation, quickstart
from experiments.configs import evaluate as ecfg, train as tcfg


def test_quickstart_in_memory_equals_explaining_the_checkpoint(tmp_path):
    work = str(tmp_path / "q")
    c = tcfg.get_config("test")
    c.image_size = 64
    e = ecfg.get_config("fast")
    e.methods = "gradient,iba"
    e.num_test, e.max_per_finding, e.batch_size, e.iba_samples = 24, 1, 4, 32
    e.faithfulness, e.sensitivity_num_n = False, 0
    e.devices = 1  # the 8-device path: test_scores_on_eight_devices_equal_one_device
    res = quickstart.run(work, c, e, progress=False)
    with open(os.path.join(work, "results.json")) as f:
        saved = json.load(f)
    assert set(saved["pointing_game"]) == {"gradient", "iba", "centre"}
    assert saved["resumed_from_step"] == 0
    assert saved["device"] == f"{jax.device_count()} x cpu"  # times come with their machine
    assert set(saved["auroc"]) == set(saved["iba_noise"]["layer3"])
    with open(os.path.join(work, "index.html")) as f:
        page = f.read()
    assert 'src="explain/overlays.png"' in page and "IBA noise check" in page
    # the page leads with pictures; the tables follow, folded
    order = [page.index(k) for k in ('src="explain/overlays.png"',
                                     'src="explain/pointing_game_heatmap.png"',
                                     'src="explain/pointing_game_intervals.png"',
                                     'src="curves.png"', "<details")]
    assert order == sorted(order)
    assert "{" not in page.split("Explanations", 1)[1].split("</p>", 1)[0]   # counts as text
    assert set(saved["seconds"]) >= {"phantoms", "training", "statistics", "explanation",
                                     "metrics", "report", "total"}
    phases = page.split("Phase times", 1)[1]
    assert "<td>training</td>" in phases and "(no rows)" not in phases
    parts = sum(v for k, v in saved["seconds"].items() if k != "total")
    assert 0 < parts <= saved["seconds"]["total"] * 1.01
    again = evaluation.evaluate_checkpoint(str(tmp_path / "e"), work, e, progress=False)
    assert again["pointing_game"] == pytest.approx(res["pointing_game"], nan_ok=True)
    with open(os.path.join(work, "explain", "results.json")) as f:
        explained = json.load(f)
    flat = lambda t: {(m, f, k): v for m, per in t.items() for f, ms in per.items()
                      for k, v in ms.items()}
    assert flat(again["table"]) and flat(again["table"]) == pytest.approx(
        flat(explained["table"]), nan_ok=True)
    # a rerun resumes: training from its last checkpoint, explanation finds every row done
    rerun = quickstart.run(work, c, e, progress=False)
    assert rerun["resumed_from_step"] == c.steps
    assert rerun["pointing_game"] == pytest.approx(res["pointing_game"], nan_ok=True)
