"""The GAN study: the Frechet distance and monotonicity helpers, config checks, and the test
config end to end (every table in range, the report's sections, a rerun that trains nothing and
gives the same numbers)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.linalg

from cxr_jax.generative import study


def _frechet_scipy(a, b):
    mu = a.mean(0) - b.mean(0)
    ca = np.atleast_2d(np.cov(a, rowvar=False))
    cb = np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(ca @ cb)
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root.real))


def test_frechet_distance_matches_scipy_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) * 0.7 + 0.3
    np.testing.assert_allclose(study.frechet_distance(a, b), _frechet_scipy(a, b), rtol=1e-6)
    np.testing.assert_allclose(study.frechet_distance(b, a), _frechet_scipy(a, b), rtol=1e-6)
    assert abs(study.frechet_distance(a, a)) < 1e-8
    # a pure shift adds |shift|^2; one-dimensional features work too
    np.testing.assert_allclose(study.frechet_distance(a, a + 2.0), 6 * 4.0, rtol=1e-8)
    x = rng.normal(size=(50, 1))
    np.testing.assert_allclose(study.frechet_distance(x, 3 * x),
                               _frechet_scipy(x, 3 * x), rtol=1e-8)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        study.frechet_distance(a, b[:, :5])


def test_monotonicity_counts_rising_steps():
    curve = np.array([0.1, 0.2, 0.2, 0.5, 0.4, 0.9])   # rises on 3 of 5 steps
    np.testing.assert_allclose(study.monotonicity(curve), 0.6)
    np.testing.assert_allclose(study.monotonicity(np.stack([curve, np.linspace(0, 1, 6),
                                                            np.ones(6)])), [0.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="T >= 2"):
        study.monotonicity(np.array([0.5]))


def test_finding_effect_known_answers():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(8, 8))
    same = study.finding_effect(real, real)
    np.testing.assert_allclose([same["slope"], same["correlation"]], [1.0, 1.0])
    half = study.finding_effect(0.5 * real, real)       # the change, half as strong
    np.testing.assert_allclose([half["slope"], half["correlation"]], [0.5, 1.0])
    np.testing.assert_allclose(half["generated_mean_abs"], 0.5 * np.abs(real).mean())
    other = np.zeros((8, 8))
    other[:4] = 1.0
    real2 = np.zeros((8, 8))
    real2[4:] = 1.0                                       # a change elsewhere
    e = study.finding_effect(other, real2)
    np.testing.assert_allclose([e["slope"], e["correlation"]], [0.0, -1.0], atol=1e-12)


def test_bad_configs_raise_clear_errors():
    from experiments.configs.gan import get_config

    c = get_config("test")
    with c.unlocked():
        c.finding = "fracture"
    with pytest.raises(ValueError, match="Unknown finding 'fracture'"):
        study.run(c, "/tmp/unused_gan_workdir")
    c = get_config("test")
    with c.unlocked():
        c.image_size = 32
    with pytest.raises(ValueError, match=r"image size must be one of \(64, 128\)"):
        study.run(c, "/tmp/unused_gan_workdir")
    c = get_config("test")
    with c.unlocked():
        c.gan.finding = "nodule"
    with pytest.raises(ValueError, match="must not set"):
        study.check_config(c)
    assert not os.path.exists("/tmp/unused_gan_workdir")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    from experiments.configs.gan import get_config

    workdir = str(tmp_path_factory.mktemp("gan_study"))
    config = get_config("test")
    first = study.run(config, workdir, progress=False)
    second = study.run(config, workdir, progress=False)
    return config, workdir, first, second


def _in(x, lo, hi):
    return np.isnan(x) or lo - 1e-6 <= x <= hi + 1e-6


def test_gan_study_end_to_end_in_range(gan_run):
    config, workdir, res, _ = gan_run
    assert res["run"]["trained"] == ["classifier", "gan"]
    assert res["run"]["computed"] == ["inversion", "explanation", "disentanglement", "frechet"]
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    for key in ("classifier", "gan", "inversion", "localisation", "anatomy", "response",
                "disentanglement", "frechet", "answers", "seconds", "run"):
        assert key in on_disk, key
    loc = on_disk["localisation"]
    assert set(loc) == {"difference", "latent_ig", *config.methods, "centre"}
    for m, r in loc.items():
        assert r["n"] == config.num_invert
        for v in r.values():
            assert _in(v, 0, 1) or v == r["n"], (m, r)
    an = on_disk["anatomy"]
    assert _in(an["ssim_outside_mask"], -1, 1) and _in(an["ssim_random_pairs"], -1, 1)
    d = on_disk["disentanglement"]
    assert d["draws"] == config.num_draws == 100
    for key in ("negative_rate", "positive_rate", "rate", "p_twin_mean", "p_positive_mean"):
        assert 0 <= d[key] <= 1
    assert d["rate"] <= min(d["negative_rate"], d["positive_rate"])
    e = d["effect"]
    assert _in(e["correlation"], -1, 1) and e["real_mean_abs"] > 0
    with np.load(os.path.join(workdir, "effect.npz")) as z:
        assert z["real"].shape == z["generated"].shape == (config.image_size,) * 2
        np.testing.assert_allclose(study.finding_effect(z["generated"], z["real"])["slope"],
                                   e["slope"], rtol=1e-6)
    r = on_disk["response"]
    assert len(r["alphas"]) == config.num_alphas and r["alphas"][0] == 0 and r["alphas"][-1] == 1
    assert all(0 <= m <= 1 for m in r["monotonicity"]) and 0 <= r["monotonicity_mean"] <= 1
    np.testing.assert_allclose(r["monotonicity"], study.monotonicity(np.array(r["curves"])))
    fd = on_disk["frechet"]
    assert fd["generated"] >= 0 and fd["floor"] >= 0 and fd["samples"] == config.fd_samples
    inv = on_disk["inversion"]
    assert len(inv["indices"]) == config.num_invert and inv["mse_mean"] >= 0
    assert _in(inv["ssim_real_mean"], -1, 1)
    assert 0 <= on_disk["classifier"]["auroc"] <= 1
    index = open(os.path.join(workdir, "index.html")).read()
    from cxr_jax.report.gan import SECTIONS
    for heading in SECTIONS:
        assert heading in index, heading
    for name in ("twins", "strips", "response", "overlays", "localisation", "effect"):
        assert os.path.exists(os.path.join(workdir, "figures", f"{name}.png"))
    assert os.path.exists(os.path.join(workdir, "localisation.csv"))


def test_gan_study_rerun_resumes_without_retraining_and_agrees(gan_run):
    _, _, res, again = gan_run
    assert again["run"] == {"trained": [], "loaded": ["classifier", "gan"], "computed": [],
                            "skipped": ["inversion", "explanation", "disentanglement",
                                        "frechet"]}
    for key in ("classifier", "inversion", "localisation", "anatomy", "response",
                "disentanglement", "frechet", "answers"):
        np.testing.assert_equal(again[key], res[key])  # NaN == NaN here
    assert again["gan"]["final"] == res["gan"]["final"]
