"""The semantics study on a tiny budget: two models (one initialised from the other) trained,
dissected with baselines, explained and reported; a second call trains nothing."""

import json
import os

from cxr_jax.semantics import study
from experiments.configs import semantics as scfg


def test_semantics_study_end_to_end_and_resume(tmp_path):
    work = str(tmp_path / "s")
    c = scfg.get_config("test")
    res = study.run(c, work, progress=False)
    with open(os.path.join(work, "results.json")) as f:
        saved = json.load(f)
    assert saved["models"] == ["multilabel", "pretrained"]
    names = saved["concept_names"]
    assert "opacity" in names and "consolidation" in names and "left_lung" in names
    for model in saved["models"]:
        layers = saved["dissection"][model]
        assert list(layers) == ["layer4"]  # "last": resnet_tiny's explain layer
        for d in layers.values():
            assert set(d["labelled"]) == set(names)
            assert all(isinstance(n, int) and n >= 0 for n in d["labelled"].values())
            assert sum(d["labelled"].values()) <= d["units"]
            for base in ("random_weights", "shuffled_masks"):
                assert set(d["baseline"][base]["labelled"]) == set(names)
            assert os.path.exists(os.path.join(work, d["grid"]))
        att = saved["attribution"][model]
        assert att["layer"] == "layer4" and len(att["explained"]) == c.num_explain
        for e in att["explained"]:
            assert set(e["concepts"]) == set(names) | {"unlabelled"}
            assert os.path.exists(os.path.join(work, e["figure"]))
    assert saved["training"]["pretrained"]["initialised_from"] == "multilabel"
    assert saved["training"]["pretrained"]["leaves_copied"] > 0
    assert "auroc" in saved["training"]["multilabel"] and "mae" in saved["training"]["pretrained"]
    assert saved["run"] == {"trained": ["multilabel", "pretrained"], "loaded": [],
                            "skipped": [], "resumed": False}
    assert os.path.exists(os.path.join(work, "units_layer4.csv"))
    with open(os.path.join(work, "index.html")) as f:
        page = f.read()
    for model in saved["models"]:
        assert study.MODELS[model] in page
    assert "What the numbers say" in page
    first = saved["answers"][0]   # computed from the counts, not written in advance
    tot = sum(saved["dissection"]["pretrained"]["layer4"]["labelled"].values())
    assert first.startswith("Units labelled with any concept at layer4")
    assert f"(e) {tot} of {saved['dissection']['pretrained']['layer4']['units']}" in first
    # a rerun finds everything done: nothing trained, loaded or recomputed
    again = study.run(c, work, progress=False)
    assert again["run"] == {"trained": [], "loaded": [], "skipped": ["multilabel", "pretrained"],
                            "resumed": True}
    assert again["dissection"] == res["dissection"]
    assert again["training"]["multilabel"]["resumed_from_step"] == 0
    assert len(again["runs"]) == 2
