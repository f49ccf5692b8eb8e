"""Report pieces: how saliency maps are drawn, the lead figures, counts as text, folding."""

import math
import os

import matplotlib.image
import numpy as np
import pytest

from cxr_jax.report import figures, sections
from cxr_jax.report.html import collapsed, page

A = figures.OVERLAY_ALPHA


def test_signed_map_is_drawn_diverging_around_zero():
    sal = np.concatenate([np.full(500, -1000.0), np.full(400, 500.0), np.zeros(100)])
    sal = sal.reshape(10, 100)
    assert figures.is_signed(sal)
    values, cmap, alpha = figures._display(sal, True)
    assert cmap == "RdBu_r"
    # Limits at the 99th percentile of |map| (1000): background -1, blob +0.5, zero stays 0.
    np.testing.assert_allclose(values[sal == -1000], -1.0)
    np.testing.assert_allclose(values[sal == 500], 0.5)
    np.testing.assert_allclose(values[sal == 0], 0.0)
    # Transparent at zero, fully drawn from half the scale on.
    np.testing.assert_allclose(alpha[sal == 0], 0.0)
    np.testing.assert_allclose(alpha[sal != 0], A)


def test_non_negative_map_clips_a_hot_pixel_at_p99():
    sal = np.zeros((100, 100))
    sal[10:30, 10:30] = 1.0  # 4% of the pixels
    sal[90, 90] = 1e6
    assert not figures.is_signed(sal)
    values, cmap, alpha = figures._display(sal, False)
    assert cmap == "jet"
    np.testing.assert_allclose(values[10:30, 10:30], 1.0)  # a min-max would give 1e-6
    assert values[90, 90] == 1.0 and values[50, 50] == 0.0
    np.testing.assert_allclose(alpha[10:30, 10:30], A)
    assert alpha[50, 50] == 0.0


def test_sign_detection_edge_cases():
    ringing = np.ones((20, 20))
    ringing[:2] = -0.01  # 10% of pixels slightly negative (interpolation ringing)
    assert not figures.is_signed(ringing)
    assert figures.is_signed(-np.ones((20, 20)))
    zeros = np.zeros((8, 8))
    assert not figures.is_signed(zeros)
    for signed in (True, False):
        values, _, alpha = figures._display(zeros, signed)
        assert not values.any() and not alpha.any()
    sparse = np.zeros((100, 100))
    sparse[0, :5] = 2.0  # under 1% of the pixels: the scale falls back to the max
    np.testing.assert_allclose(figures._display(sparse, False)[0][0, :5], 1.0)


def _panels(png):
    """Bounding boxes (r0, r1, c0, c1) of the two image panels of a 1 x 2 overlay figure."""
    solid = (png[..., :3] < 0.97).any(-1)
    half = png.shape[1] // 2
    boxes = []
    for part, off in ((solid[:, :half], 0), (solid[:, half:], half)):
        rows = np.nonzero(part.sum(1) > 0.3 * half)[0]
        cols = np.nonzero(part.sum(0) > 0.3 * len(rows))[0]
        boxes.append((rows[0], rows[-1], cols[0] + off, cols[-1] + off))
    return boxes


def _at(png, box, fr, fc):
    r0, r1, c0, c1 = box
    r, c = int(r0 + fr * (r1 - r0)), int(c0 + fc * (c1 - c0))
    return png[r - 1:r + 2, c - 1:c + 2, :3].reshape(-1, 3).mean(0)


def test_signed_overlay_png_is_not_a_wash(tmp_path):
    h = 64
    image = np.tile(np.linspace(0.0, 1.0, h), (h, 1))
    sal = np.random.default_rng(0).normal(0, 1e-3, (h, h))
    sal[:, :10] = -1000.0  # a clearly negative strip
    sal[24:40, 24:40] = 500.0  # a positive blob
    sal[60, 60], sal[62, 2] = 1e5, -1e5  # extremes that a min-max would stretch to
    path = figures.save_overlays(image[None], {"ig": sal[None]}, str(tmp_path / "o.png"))
    png = matplotlib.image.imread(path)
    left, right = _panels(png)
    blob, strip = _at(png, right, 0.5, 0.5), _at(png, right, 0.5, 0.06)
    assert blob[0] - blob[2] > 0.2  # red where positive
    assert strip[2] - strip[0] > 0.2  # blue where negative
    # Near zero the map is transparent: the radiograph shows as it does in the image column.
    np.testing.assert_allclose(_at(png, right, 0.5, 0.8), _at(png, left, 0.5, 0.8), atol=0.05)


def test_overlays_signed_keyword_forces_the_diverging_display(tmp_path, monkeypatch):
    calls = []
    display = figures._display
    monkeypatch.setattr(figures, "_display",
                        lambda sal, signed: calls.append(signed) or display(sal, signed))
    maps = {"a": np.ones((1, 8, 8)), "b": np.ones((1, 8, 8)), "c": -np.ones((1, 8, 8))}
    figures.save_overlays(np.zeros((1, 8, 8)), maps, str(tmp_path / "auto.png"))
    assert calls == [False, False, True]
    calls.clear()
    figures.save_overlays(np.zeros((1, 8, 8)), maps, str(tmp_path / "forced.png"),
                          signed=["b"])
    assert calls == [False, True, False]


def test_counts_text():
    assert (sections.counts_text({"nodule": 24, "mass": 24, "consolidation": 23})
            == "nodule 24, mass 24, consolidation 23 (71 in all)")
    assert sections.counts_text({}) == "no images"


def test_heatmap_and_intervals_are_written(tmp_path):
    values = np.array([[0.9, np.nan], [0.4, 0.55]])
    heat = figures.save_heatmap(values, ["m1", "m2"], ["f1", "f2"], str(tmp_path / "h.png"),
                                title="t")
    dots = figures.save_intervals({"m1": 0.8, "m2": 0.5, "centre": 0.6},
                                  {"m1": [0.7, 0.9]}, str(tmp_path / "i.png"))
    for path in (heat, dots):
        assert os.path.getsize(path) > 1000
        assert matplotlib.image.imread(path).shape[-1] == 4


def _summary(counts):
    findings = list(counts)
    table = {m: {f: {"pointing_game": v} for f in findings}
             for m, v in (("good", 0.9), ("bad", 0.3), ("centre", 0.5))}
    return {"table": table, "pointing_game": {"good": 0.9, "bad": 0.3, "centre": 0.5},
            "pointing_game_ci": {"good": [0.8, 0.95], "bad": [0.2, 0.4]}, "counts": counts}


def test_lead_sections_and_precision_note(tmp_path):
    counts = {"a": 24, "b": 24, "c": 10}
    out = sections.lead(_summary(counts), list(counts), str(tmp_path), "explain/")
    assert [len(s) for s in out] == [2, 2, 2]
    srcs = ["explain/overlays.png", "explain/pointing_game_heatmap.png",
            "explain/pointing_game_intervals.png"]
    for (_, body), src in zip(out, srcs):
        assert f'<img src="{src}">' in body
    assert figures.OVERLAY_CAPTION.split("'")[0] in out[0][1]
    for name in ("pointing_game_heatmap.png", "pointing_game_intervals.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    se = math.sqrt(0.16 / 24)  # the median count is 24
    note = out[2][1]
    assert "24 images per finding" in note and "1/24 = 0.04" in note
    assert f"= {se:.2f}" in note and f"±{1.96 * se:.2f}" in note and "±0.16" in note
    quiet = sections.lead(_summary(counts), list(counts), str(tmp_path), per_cell_note=False)
    assert "binomial" not in quiet[2][1]


def test_collapsed_sections_render_folded():
    html = page("t", [("open", "<p>x</p>"), collapsed("folded", "<table></table>")])
    assert "<h2>open</h2>\n<p>x</p>" in html
    assert "<details><summary><h2>folded</h2></summary>\n<table></table></details>" in html
    assert html.count("<details>") == 1


@pytest.mark.parametrize("collapse", [False, True])
def test_evaluation_tables_fold_on_request(tmp_path, collapse):
    summary = {**_summary({"a": 3}), "pointing_game_pooled": {"good": 0.9, "bad": 0.3,
                                                              "centre": 0.5},
               "agreement": {"names": [], "matrix": []}}
    out = sections.evaluation(summary, ["a"], ["pointing_game"], str(tmp_path),
                              collapse_tables=collapse)
    assert len(out) == 2
    assert all((len(s) == 3 and s[2]["collapsed"]) if collapse else len(s) == 2 for s in out)
