"""The photo study (issue 18): augmentation in the loader, masked map similarity, and the study
end to end on the test config (determinism, resume, numbers consistent with direct computation)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cxr_jax import metrics
from cxr_jax.data.loader import ArraySource, make_loader
from cxr_jax.data.photo.augment import PhotoAugment


def test_photo_augmentation_is_deterministic_resumable_and_changes_some_rows():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1024, 1024, (40, 32, 32, 1)).astype(np.float32)
    src = ArraySource({"image": images, "labels": np.arange(40, dtype=np.float32)[:, None]})

    def loader():
        return iter(make_loader(src, batch_size=4, seed=3, transforms=[PhotoAugment(0.5)]))

    it = loader()
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it)["image"] for _ in range(3)]
    again = loader()
    for b in first:
        np.testing.assert_array_equal(b["image"], next(again)["image"])
    resumed = loader()
    resumed.set_state(state)
    for x in rest:
        np.testing.assert_array_equal(x, next(resumed)["image"])
    # about half the rows are photographed; the others pass through untouched, in range
    rows = np.concatenate([b["image"] for b in first])
    idx = np.concatenate([b["labels"][:, 0] for b in first]).astype(int)
    same = np.all(rows == images[idx], axis=(1, 2, 3))
    assert 0 < same.sum() < len(same)
    assert rows.min() >= -1024 and rows.max() <= 1024
    with pytest.raises(ValueError, match="Unknown photo transform"):
        PhotoAugment(0.5, transforms=("sepia",))
    with pytest.raises(ValueError, match="probabilities"):
        PhotoAugment(1.5)


def test_masked_spearman_and_ssim_equal_the_crop():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 24, 24))
    b = a + rng.normal(size=(3, 24, 24))
    mask = np.zeros((3, 24, 24), bool)
    mask[:, 4:18, 3:21] = True
    np.testing.assert_allclose(metrics.spearman(a, b, mask=mask),
                               metrics.spearman(a[:, 4:18, 3:21], b[:, 4:18, 3:21]), atol=1e-12)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b, mask=mask)),
                               np.asarray(metrics.ssim(a[:, 4:18, 3:21], b[:, 4:18, 3:21])),
                               atol=1e-5)
    # an all-True mask changes nothing; too small a region gives NaN, not an error
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b, mask=np.ones_like(mask))),
                               np.asarray(metrics.ssim(a, b)), atol=1e-6)
    tiny = np.zeros_like(mask)
    tiny[:, :3, :3] = True
    assert np.isnan(np.asarray(metrics.ssim(a, b, mask=tiny))).all()


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    from cxr_jax.photos import study
    from experiments.configs.photos import get_config

    workdir = str(tmp_path_factory.mktemp("photos"))
    config = get_config("test")
    first = study.run(config, workdir, progress=False)
    second = study.run(config, workdir, progress=False)
    return config, workdir, first, second


def test_photo_study_end_to_end_resumes_and_agrees_with_direct_computation(study_run):
    from cxr_jax.photos import study

    config, workdir, res, again = study_run
    keys = [study.condition_key(n, v) for n, v in study.conditions(config)]
    assert keys == ["brightness_up@1", "brightness_up@4", "rotation@1", "rotation@4",
                    "photographic@1", "photographic@4", "jpeg"]
    assert res["conditions"] == keys
    assert list(res["models"]) == ["resnet_tiny", "resnet_tiny+photo_aug"]
    # the rerun trained nothing, transformed nothing and reproduced every number
    assert again["run"]["trained"] == [] and again["run"]["skipped"] == keys
    np.testing.assert_equal(again["classification"], res["classification"])  # NaN == NaN here
    np.testing.assert_equal(again["explanation"], res["explanation"])
    labels = np.load(os.path.join(workdir, "scores", "resnet_tiny", "original.npy"))
    from cxr_jax.data import phantoms
    test = phantoms.generate(config.num_test, image_size=config.image_size, seed=2)
    y = test.labels.astype(float)
    for m in res["models"]:
        s0 = np.load(os.path.join(workdir, "scores", m, "original.npy"))
        by = res["classification"][m]
        # originals against themselves: no change, a zero-width interval
        assert by["original"]["mean_delta"] == 0 and by["original"]["mean_delta_ci"] == [0, 0]
        thr, best = metrics.best_mcc_threshold(s0, y)
        np.testing.assert_allclose(list(by["original"]["mcc"].values()), best, atol=1e-12)
        for key in keys:
            sc = np.load(os.path.join(workdir, "scores", m, f"{key}.npy"))
            want = metrics.auroc(sc, y) - metrics.auroc(s0, y)
            got = np.array(list(by[key]["delta"].values()))
            np.testing.assert_allclose(got, want, atol=1e-12)
            np.testing.assert_allclose(list(by[key]["mcc"].values()), metrics.mcc(sc, y, thr),
                                       atol=1e-12)
            lo, hi = by[key]["mean_delta_ci"]
            assert lo <= hi
        # explanation: every method scored on every condition; correlations in [-1, 1]
        for key in keys:
            for method, r in res["explanation"][m][key].items():
                assert method in config.methods
                assert np.isnan(r["spearman"]) or -1 <= r["spearman"] <= 1
                assert 0 <= r["changed"] <= config.num_explain
    assert labels.shape == (config.num_test, len(res["findings"]))
    # a condition that moves nothing (brightness scales pixels; maps are compared in place)
    # keeps the pointing game's ground truth where it was: its maps are scored against the
    # original masks; a rotation's against the rotated ones
    e = np.load(os.path.join(workdir, "maps", "resnet_tiny", "brightness_up@1.npz"))
    assert set(e.files) >= {"pg_gradient", "rho_gradient", "ssim_gradient"}
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk["conditions"] == keys and on_disk["answers"]
    index = open(os.path.join(workdir, "index.html")).read()
    for heading in ("AUROC change under each transform", "Explanation stability",
                    "One image under every transform", "Does photo augmentation help?"):
        assert heading in index
    assert os.path.exists(os.path.join(workdir, "classification.csv"))


def test_photo_study_rejects_bad_configs():
    from cxr_jax.photos import study
    from experiments.configs.photos import get_config

    c = get_config("test")
    with c.unlocked():
        c.levels = (0, 2)
    with pytest.raises(ValueError, match="levels"):
        study.conditions(c)
    c = get_config("test")
    with c.unlocked():
        c.transforms = ("sepia",)
    with pytest.raises(ValueError, match="Unknown photo transform"):
        study.conditions(c)
    c = get_config("test")
    with c.unlocked():
        c.models = ("no_such_net",)
    with pytest.raises(ValueError, match="neither a folder"):
        study.run(c, "/tmp/unused_photos_workdir")


# ------------------------------------------------------------------ the real CheXphoto release
def _tiny_release(root, model_dir):
    """A CheXphoto-layout release (two subsets, 6 patients each, one unreadable photo), its
    CheXpert originals, and a converted resnet_tiny predicting the five tasks at 64 px."""
    import jax
    import jax.numpy as jnp
    from PIL import Image

    from cxr_jax import models
    from cxr_jax.convert.checkpoint import save
    from cxr_jax.convert.inference import input_convention
    from cxr_jax.data.records import CHEXPERT_OBSERVATIONS

    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)
    tasks = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    rng = np.random.default_rng(0)
    photo_rows, orig_rows = [], []
    for i in range(6):
        cells = ["" for _ in CHEXPERT_OBSERVATIONS]
        for j, t in enumerate(tasks):
            cells[CHEXPERT_OBSERVATIONS.index(t)] = "1.0" if (i + j) % 2 else "0.0"
        tail = f",Male,60,Frontal,AP," + ",".join(cells)
        key = f"patient{64540 + i}/study1/view1_frontal.jpg"
        orig_rows.append(f"CheXpert-v1.0/valid/{key}{tail}")
        for sub in ("natural/oneplus", "synthetic/digital"):
            photo_rows.append(f"CheXphoto-v1.0/valid/{sub}/{key}{tail}")
    for rel in [r.split(",", 1)[0] for r in photo_rows + orig_rows]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 80), dtype=np.uint8)).save(path)
    (root / photo_rows[0].split(",", 1)[0]).write_bytes(b"")    # an unreadable photo
    for csv, rows in (("CheXphoto-v1.0/valid/valid.csv", photo_rows),
                      ("CheXpert-v1.0/valid/valid.csv", orig_rows)):
        (root / csv).write_text("\n".join([header] + rows) + "\n")
    model = models.get("resnet_tiny", num_classes=5)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1)))
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    save(model_dir, variables, {"arch": "resnet_tiny", "num_classes": 5, "in_channels": 1,
                                "source": "torchxrayvision", "pathologies": names,
                                "input_convention": input_convention("torchxrayvision", 1, 64)})


def test_real_chexphoto_pairs_scores_and_skips(tmp_path):
    from cxr_jax.photos import study
    from cxr_jax.photos.real import task_columns
    from experiments.configs.photos import get_config

    root, model_dir = tmp_path / "data", tmp_path / "xrv_tiny"
    _tiny_release(root, model_dir)
    c = get_config("test")
    with c.unlocked():
        c.data_dir, c.models, c.augmented, c.eval_batch_size = str(root), (str(model_dir),), (), 4
    res = study.run(c, str(tmp_path / "run"))
    assert res["subsets"] == {"natural/oneplus": 6, "synthetic/digital": 6}
    assert res["tasks"]["xrv_tiny"] == ["Atelectasis", "Cardiomegaly", "Consolidation",
                                        "Edema", "Pleural Effusion"]
    assert [s["path"].endswith("patient64540/study1/view1_frontal.jpg") and "empty" in
            s["reason"] for s in res["skipped"]] == [True]
    by = res["classification"]["xrv_tiny"]
    assert by["natural/oneplus"]["n"] == 5 and by["synthetic/digital"]["n"] == 6
    for r in by.values():
        for t in r["delta"]:
            assert r["delta"][t] == pytest.approx(r["auroc_photo"][t] - r["auroc_original"][t])
    # the rerun reads the saved scores and gives the same numbers
    again = study.run(c, str(tmp_path / "run"))
    np.testing.assert_equal(again["classification"], res["classification"])
    assert "CheXphoto photos against their originals" in open(tmp_path / "run" / "index.html").read()
    assert task_columns(["effusion", "", "Cardiomegaly"]) == {"Cardiomegaly": 2,
                                                              "Pleural Effusion": 0}
    with c.unlocked():
        c.models = ("resnet_tiny",)
    with pytest.raises(ValueError, match="as folders"):
        study.run(c, str(tmp_path / "run2"))
