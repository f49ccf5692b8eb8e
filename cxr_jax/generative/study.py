"""The GAN study: medXGAN explanations of a phantom classifier, scored where the truth is known.

`run(config, workdir)` goes through these phases, each written to disk as soon as it is done
and skipped when a rerun finds its file:

  phantoms         training phantoms (seed 2 s + 1, shared by the classifier and the GAN) and
                   held-out phantoms (seed 2 s + 2) at `config.image_size` (64 or 128), with
                   every finding's exact mask (`cxr_jax.data.datasets.phantom_dataset`).
  classifier       a `config.arch` classifier trained on the training phantoms
                   (`cxr_jax.training.fit`, resumable, in `classifier/`), or the model of the
                   folder `config.classifier` names (a training workdir or a converted
                   checkpoint of the same input size). Its AUROC for `config.finding` is
                   measured on the held-out phantoms.
  gan              the explanation GAN (`cxr_jax.generative.train_gan`, in `gan/`) trained on
                   the training phantoms for `config.finding`, guided by the frozen classifier;
                   train_gan resumes from its own checkpoints.
  inversion        the first `num_invert` held-out positives of the finding are inverted
                   (`explain.invert`: Adam on (z_a, z_p), `invert_steps` steps, MSE +
                   BCE on the classifier's probability); latents, reconstructions and errors in
                   `inversion.npz`.
  explanation      for every inverted image: the strip G(z_a, alpha z_p) and the classifier's
                   response curve over `num_alphas` alphas in [0, 1], the difference map
                   |G(z_a, z_p) - G(z_a, 0)| and latent integrated gradients (`ig_steps` path
                   points), beside the attribution methods `config.methods` (Grad-CAM, IG,
                   Multi-layer IBA; `cxr_jax.attribution.prepare_all`) run on the same real
                   held-out images. Scores (`explanation.json`, maps in `explanation.npz`):
                     localisation  each map against the finding's exact mask: pointing game
                                   (tolerance `tolerance_at_224` scaled to the image size; the
                                   always-the-centre baseline beside), effective heat ratio,
                                   and the IoU of the map's multi-Otsu box with the mask's box;
                     anatomy kept  SSIM between the negative twin G(z_a, 0) and the
                                   reconstruction G(z_a, z_p), in [-1, 1] units (data range 2),
                                   over the windows lying wholly outside the finding's mask;
                                   SSIM of the reconstruction against the real image (inversion
                                   quality);
                     monotonicity  per image, the fraction of the num_alphas - 1 alpha steps on
                                   which the probability rises (`monotonicity`).
  disentanglement  `num_draws` pairs (z_a, z_p) ~ N(0, I) (drawn `draw_batch` at a time from
                   seed s): the rate at which the classifier calls the negative twin G(z_a, 0)
                   negative (p < `threshold`), the positive G(z_a, z_p) positive (p >=
                   threshold), and both at once (the disentanglement rate); plus the
                   whole-image SSIM of each pair (`disentanglement.json`). And, with no
                   classifier involved, the finding's effect (`finding_effect`): the mean
                   change G(z_a, z_p) - G(z_a, 0) over the draws against the real effect,
                   the mean training positive minus the mean training negative (both maps in
                   `effect.npz`): does turning z_p on add what the finding adds, where it
                   adds it, or something the classifier alone reacts to?
  frechet          sample quality: the Frechet distance (`frechet_distance`) between Gaussian
                   fits of the classifier's penultimate features (the stage before its head,
                   `model.stages[-2]`, flattened) on `fd_samples` real phantoms (seed 2 s + 3)
                   and as many generated images, positives drawn at the training set's
                   prevalence of the finding; the floor is the distance between two disjoint
                   real sets of that size from the same seed (`frechet.json`).
  report           results.json and index.html (`cxr_jax.report.gan`).

results.json (rewritten after every phase, so a killed run leaves what it finished):
  {"config", "finding", "findings", "classifier": {"source", "arch", "auroc", "feature_stage",
   "train_seconds"?}, "gan": {"steps", "train_seconds", "final", "samples"},
   "inversion": {"indices", "mse", "ssim_real", "p_real", "p_reconstruction", ...means},
   "localisation": {method: {"pointing_game", "effective_heat_ratio", "box_iou", "n"}},
   "anatomy": {"ssim_outside_mask", "ssim_random_pairs", ...},
   "response": {"alphas", "curves", "monotonicity", "monotonicity_mean", "p_twin_mean",
                "p_reconstruction_mean", "rise_mean"},
   "disentanglement": {"draws", "threshold", "negative_rate", "positive_rate", "rate",
                       "p_twin_mean", "p_positive_mean", "effect": {"slope", "correlation",
                       "generated_mean_abs", "real_mean_abs"}},
   "frechet": {"generated", "floor", "samples", "feature_dim", "positive_share"},
   "answers", "seconds": {phase: s}, "run": {"trained", "loaded", "computed", "skipped"}}
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cxr_jax import attribution, metrics, models as model_registry, runtime, training
from cxr_jax.common import sharding
from cxr_jax.common.files import read_json, read_npz, write_json, write_npz
from cxr_jax.data import datasets, phantoms
from cxr_jax.evaluation.methods import named_specs
from cxr_jax.generative import explain as gexplain
from cxr_jax.generative.models import XRV_SCALE, check_image_size
from cxr_jax.generative.train import default_config as gan_default_config
from cxr_jax.generative.train import load_generator, train_gan

__all__ = ["PHASES", "check_config", "frechet_distance", "gan_config", "monotonicity", "run"]

PHASES = ("phantoms", "classifier", "gan", "inversion", "explanation", "disentanglement",
          "frechet", "report")
GAN_METHODS = ("difference", "latent_ig")
_TRAIN_KEYS = ("image_size", "num_train", "num_test", "phantom_style", "phantom_contrast",
               "optimizer", "schedule", "learning_rate", "warmup_steps", "weight_decay",
               "label_smoothing", "batch_size", "eval_batch_size", "steps", "eval_every",
               "checkpoint_every", "seed", "bf16")
# train_gan's keys the study sets itself (from the top-level config).
_GAN_FIXED = ("image_size", "finding", "seed", "classifier_image_size")


# =========================================================================== pure helpers
def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussian fits of two feature sets [N, D] and [M, D]:

      d^2 = |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2)),

    C the unbiased covariances. tr((C_a C_b)^(1/2)) is computed as the sum of the square roots
    of the eigenvalues of the symmetric PSD matrix C_a^(1/2) C_b C_a^(1/2) (same spectrum as
    C_a C_b), C_a^(1/2) from a symmetric eigendecomposition with negative round-off clipped to
    zero: no complex parts, no iterative matrix square root. Returns d^2 >= 0 (the quantity FID
    reports), in float64.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs features [N, D] and [M, D], got {a.shape} "
                         f"and {b.shape}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least two samples in each set.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("frechet_distance: features contain NaN or Inf.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.atleast_2d(np.cov(a, rowvar=False))
    cb = np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root_a @ cb @ root_a
    ev = np.linalg.eigvalsh(0.5 * (m + m.T))
    cross = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb) - 2.0 * cross)
    return max(d, 0.0)


def monotonicity(curves) -> np.ndarray:
    """Per curve [..., T] (probabilities along alpha), the fraction of the T - 1 steps on which
    the value rises strictly: mean_t [p_{t+1} > p_t]. 1 for a strictly increasing response, 0
    for a flat or falling one. Returns [...] float64."""
    c = np.asarray(curves, np.float64)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"monotonicity needs curves [..., T] with T >= 2, got {c.shape}.")
    return np.mean(np.diff(c, axis=-1) > 0, axis=-1)


# =========================================================================== config
def gan_config(config) -> ml_collections.ConfigDict:
    """train_gan's config: its defaults, `config.gan` over them, and the study's image size,
    finding and seed."""
    c = gan_default_config()
    extra = set(config.gan.keys()) - set(c.keys())
    if extra:
        raise ValueError(f"config.gan has unknown key(s) {sorted(extra)}; train_gan reads "
                         f"{sorted(set(c.keys()) - set(_GAN_FIXED))}.")
    fixed = set(config.gan.keys()) & set(_GAN_FIXED)
    if fixed:
        raise ValueError(f"config.gan must not set {sorted(fixed)}: the study sets them from "
                         "config.image_size, config.finding and config.seed.")
    c.update(config.gan.to_dict())
    c.image_size = int(config.image_size)
    c.finding = str(config.finding)
    c.seed = int(config.seed)
    c.classifier_image_size = 0
    return c


def check_config(config) -> None:
    """Raises a ValueError naming what is wrong with the config before anything runs."""
    check_image_size(config.image_size)   # 64 or 128
    if config.finding not in phantoms.FINDINGS:
        raise ValueError(f"Unknown finding {config.finding!r}; phantoms have "
                         f"{', '.join(phantoms.FINDINGS)}.")
    if not config.classifier and config.arch not in model_registry.names():
        raise ValueError(f"config.arch {config.arch!r} is not a model name "
                         f"({', '.join(model_registry.names())}).")
    if config.classifier and not os.path.isdir(config.classifier):
        raise ValueError(f"config.classifier {config.classifier!r} is not a folder (a training "
                         "workdir or converted checkpoint); leave it empty to train one here.")
    for name in config.methods:
        if name not in attribution.names():
            raise ValueError(f"Unknown attribution method {name!r}; known: "
                             f"{', '.join(attribution.names())}.")
    for key, low in (("num_invert", 1), ("invert_steps", 1), ("num_alphas", 2), ("ig_steps", 2),
                     ("num_draws", 1), ("draw_batch", 1), ("fd_samples", 2), ("fd_batch", 1),
                     ("num_show", 1)):
        if int(config[key]) < low:
            raise ValueError(f"config.{key} must be >= {low}, got {config[key]}.")
    if not 0.0 < float(config.threshold) < 1.0:
        raise ValueError(f"config.threshold must be in (0, 1), got {config.threshold}.")
    gan_config(config)


def _train_config(config) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.dataset = "phantoms"
    t.data_dir = ""
    t.model = config.arch
    for key in _TRAIN_KEYS:
        t[key] = config[key]
    t.loss = "bce"
    t.photo_augment = 0.0
    t.kill_at_step = 0
    return t


# =========================================================================== files
def _json_phase(path: str, compute, fresh: bool, name: str, run_info: dict) -> dict:
    """A phase whose result is one JSON file: read back when present and nothing upstream was
    trained in this call (`fresh`), else computed and stored; `run_info` records which."""
    saved = None if fresh else read_json(path)
    if saved is not None:
        run_info["skipped"].append(name)
        return saved
    run_info["computed"].append(name)
    return _store(path, compute())


def _store(path: str, obj: dict) -> dict:
    """Writes `obj` as JSON and returns it as read back, so a first run and a rerun hand the
    report the very same values."""
    if runtime.is_writer():
        write_json(path, obj)
        return read_json(path)
    return obj


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if x.size and np.isfinite(x).any() else float("nan")


# =========================================================================== classifier
def _classifier(config, workdir: str, data, progress: bool):
    """(model, variables, info, trained?) of the classifier the study explains."""
    if config.classifier:
        model, variables, meta = model_registry.load(config.classifier)
        if meta.input_size != config.image_size or tuple(meta.value_range) != (-1024.0, 1024.0):
            raise ValueError(
                f"{config.classifier} expects {meta.input_size} px inputs in the range "
                f"{meta.value_range}; this study needs {config.image_size} px in [-1024, 1024] "
                "(the GAN's size): set config.image_size to match, or train one here "
                "(config.classifier='').")
        names = tuple(meta.finding_names)
        if config.finding not in names:
            raise ValueError(f"The classifier in {config.classifier} predicts {list(names)}, "
                             f"not {config.finding!r}.")
        return model, variables, {"source": config.classifier, "arch": model.name,
                                  "label_names": list(names)}, False
    out = training.fit(_train_config(config), os.path.join(workdir, "classifier"), data.train,
                       data.eval, data.label_names, progress=progress)
    info = {"source": os.path.join(workdir, "classifier"), "arch": config.arch,
            "label_names": list(data.label_names),
            "train_seconds": out.results["train_seconds"], "steps": int(config.steps)}
    return (out.model, jax.device_get(out.variables), info,
            out.results["resumed_from_step"] < int(config.steps))


class _Fns:
    """The jitted functions of the study, closed over the modules (variables are arguments)."""

    def __init__(self, model, generator, k: int, config):
        self.model, self.generator, self.k = model, generator, k
        za_dim, zp_dim = generator.z_anatomy, generator.z_pathology
        stage = model.stages[-2]
        self.stage = stage

        def gen(gv):
            return lambda za, zp: generator.apply(gv, za, zp)

        def cls(cv):
            return lambda x: model.apply(cv, x)

        def prob(cv, x_hu):
            return jax.nn.sigmoid(model.apply(cv, x_hu)[:, k].astype(jnp.float32))

        self.prob = jax.jit(prob)

        @jax.jit
        def features(cv, x_hu):
            _, acts = model.apply(cv, x_hu, taps=(stage,))
            f = acts[stage]
            return f.reshape(f.shape[0], -1).astype(jnp.float32)

        self.features = features

        @jax.jit
        def generate(gv, za, zp):
            return generator.apply(gv, za, zp)

        self.generate = generate

        @jax.jit
        def pairs(gv, cv, za, zp):
            twin = generator.apply(gv, za, jnp.zeros_like(zp))
            pos = generator.apply(gv, za, zp)
            both = jnp.concatenate([twin, pos]) * XRV_SCALE
            p = prob(cv, both)
            ssim = metrics.ssim(twin[..., 0], pos[..., 0], normalize=False, data_range=2.0)
            return p[: za.shape[0]], p[za.shape[0]:], ssim, (pos - twin)[..., 0]

        self.pairs = pairs

        @jax.jit
        def invert(gv, cv, x, key):
            return gexplain.invert(gen(gv), cls(cv), x, k, key=key, z_anatomy_dim=za_dim,
                                   z_pathology_dim=zp_dim, steps=int(config.invert_steps),
                                   lr=float(config.invert_lr),
                                   recon_weight=float(config.recon_weight),
                                   prob_weight=float(config.prob_weight))

        self.invert = invert

        @jax.jit
        def invert_rows(variables, x, key):
            """The inversion's per-image results, every one with the image axis first."""
            inv = invert(*variables, x, key)
            return (inv.z_anatomy, inv.z_pathology, inv.reconstruction, inv.error,
                    inv.history.loss[0], inv.history.loss[-1])

        self.invert_rows = invert_rows
        alphas = jnp.linspace(0.0, 1.0, int(config.num_alphas))

        @jax.jit
        def paths(gv, cv, za, zp):
            g = gen(gv)
            strip = gexplain.interpolate(g, za, zp, alphas)
            curve = gexplain.response_curve(g, cls(cv), za, zp, alphas, k)
            diff = gexplain.difference_map(g, za, zp)
            lig = gexplain.latent_integrated_gradients(g, cls(cv), za, zp, k,
                                                       steps=int(config.ig_steps))
            return strip, curve, diff, lig

        self.paths = paths


# =========================================================================== phases
def _invert(fns: _Fns, gv, cv, x_unit: np.ndarray, config) -> dict:
    """Inverts the images with their rows sharded over every device (each image's start is
    drawn from its own key, fold_in(key, row), so the layout does not change the result)."""
    mesh = sharding.make_mesh()
    key = jax.random.PRNGKey(int(config.seed) + 7)
    out = sharding.call_sharded(lambda v, x: fns.invert_rows(v, x, key),
                                sharding.replicate((gv, cv), mesh), (np.asarray(x_unit),), mesh)
    names = ("z_anatomy", "z_pathology", "reconstruction", "error", "loss_first", "loss_last")
    return dict(zip(names, out))


def _localisation(maps: dict, masks: np.ndarray, tolerance: float) -> dict:
    """Per method: pointing game, effective heat ratio and box IoU per image (lists)."""
    gt_boxes = np.stack([metrics.mask_box(m) for m in masks])
    out = {}
    for name, m in maps.items():
        m = np.asarray(m, np.float64)
        if not np.all(np.isfinite(m)):
            logging.warning("GAN study: %s maps hold NaN/Inf; set to 0 for scoring.", name)
            m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
        pg = np.asarray(metrics.pointing_game(m, masks, tolerance=tolerance), np.float64)
        ehr = np.asarray(metrics.effective_heat_ratio(m, masks), np.float64)
        iou = np.asarray(metrics.box_iou(metrics.boxes_from_saliency(m), gt_boxes), np.float64)
        out[name] = {"pointing_game": pg.tolist(), "effective_heat_ratio": ehr.tolist(),
                     "box_iou": iou.tolist()}
    centre = np.asarray(metrics.pointing_game_centre(masks, tolerance=tolerance), np.float64)
    out["centre"] = {"pointing_game": centre.tolist()}
    return out


def _explain(fns: _Fns, gv, cv, model, variables, inv: dict, x_hu: np.ndarray,
             masks: np.ndarray, config, estimation) -> tuple[dict, dict]:
    """(scores for explanation.json, arrays for explanation.npz) of the inverted images."""
    za, zp = jnp.asarray(inv["z_anatomy"]), jnp.asarray(inv["z_pathology"])
    strip, curve, diff, lig = jax.device_get(fns.paths(gv, cv, za, zp))
    curve = np.asarray(curve, np.float64)
    twin = np.asarray(strip[:, 0, ..., 0])
    rec = inv["reconstruction"][..., 0]
    maps = {"difference": np.asarray(diff), "latent_ig": np.asarray(lig)}
    specs = named_specs(config.methods, cam_layer=config.cam_layer or None)
    prepared = attribution.prepare_all(specs, model, variables, estimation)
    t = jnp.full((len(x_hu),), fns.k, jnp.int32)
    key = jax.random.PRNGKey(int(config.seed))
    for name, fn in prepared.items():
        run = jax.jit(lambda v, x, t, k, fn=fn: fn(model, v, x, t, key=k))
        maps[name] = np.asarray(run(variables, jnp.asarray(x_hu), t, key), np.float32)
    size = int(config.image_size)
    tolerance = float(config.tolerance_at_224) * size / 224
    loc = _localisation(maps, masks, tolerance)
    outside = ~masks
    ssim_out = np.asarray(metrics.ssim(twin, rec, normalize=False, data_range=2.0,
                                       mask=outside), np.float64)
    ssim_real = np.asarray(metrics.ssim(rec, x_hu[..., 0] / XRV_SCALE, normalize=False,
                                        data_range=2.0), np.float64)
    p_real = np.asarray(fns.prob(cv, jnp.asarray(x_hu)), np.float64)
    mono = monotonicity(curve)
    scores = {
        "tolerance_px": tolerance, "alphas": np.linspace(0, 1, curve.shape[1]).tolist(),
        "localisation": loc,
        "ssim_outside_mask": ssim_out.tolist(), "ssim_real": ssim_real.tolist(),
        "mask_share": masks.mean(axis=(1, 2)).tolist(),
        "curves": curve.tolist(), "monotonicity": mono.tolist(), "p_real": p_real.tolist(),
    }
    n = min(int(config.num_show), len(x_hu))
    arrays = {"strip": np.asarray(strip[:n, ..., 0], np.float32), "twin": twin,
              **{f"map_{k}": v for k, v in maps.items()}}
    return scores, arrays


def finding_effect(generated: np.ndarray, real: np.ndarray) -> dict:
    """How the GAN's mean change G(z_a, z_p) - G(z_a, 0) compares with the real finding's mean
    effect (mean positive minus mean negative real image), both [S, S] in [-1, 1] units, with
    no classifier involved: `slope` = <generated, real> / <real, real> (1: the same change in
    the same place; 0: none there), `correlation` (Pearson over pixels), and the mean absolute
    change of each."""
    g, r = np.ravel(generated).astype(np.float64), np.ravel(real).astype(np.float64)
    rr = float(r @ r)
    gc, rc = g - g.mean(), r - r.mean()
    denom = float(np.sqrt((gc @ gc) * (rc @ rc)))
    return {"slope": float(g @ r) / rr if rr > 0 else float("nan"),
            "correlation": float(gc @ rc) / denom if denom > 0 else float("nan"),
            "generated_mean_abs": float(np.abs(g).mean()), "real_mean_abs": float(np.abs(r).mean())}


def _disentangle(fns: _Fns, gv, cv, config, za_dim: int, zp_dim: int,
                 real_effect: np.ndarray, effect_path: str) -> dict:
    n, b = int(config.num_draws), int(config.draw_batch)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 11)
    p0s, p1s, ss = [], [], []
    change = np.zeros(real_effect.shape, np.float64)
    for i, lo in enumerate(range(0, n, b)):
        ka, kp = jax.random.split(jax.random.fold_in(key, i))
        za = jax.random.normal(ka, (b, za_dim), jnp.float32)
        zp = jax.random.normal(kp, (b, zp_dim), jnp.float32)
        p0, p1, s, d = jax.device_get(fns.pairs(gv, cv, za, zp))
        m = min(b, n - lo)
        p0s.append(np.asarray(p0[:m]))
        p1s.append(np.asarray(p1[:m]))
        ss.append(np.asarray(s[:m]))
        change += np.asarray(d[:m], np.float64).sum(axis=0)
    p0, p1, s = (np.concatenate(a).astype(np.float64) for a in (p0s, p1s, ss))
    thr = float(config.threshold)
    neg, pos = p0 < thr, p1 >= thr
    generated = (change / n).astype(np.float32)
    if runtime.is_writer():
        write_npz(effect_path, {"generated": generated, "real": real_effect})
    return {"draws": n, "threshold": thr, "negative_rate": float(neg.mean()),
            "positive_rate": float(pos.mean()), "rate": float((neg & pos).mean()),
            "p_twin_mean": float(p0.mean()), "p_positive_mean": float(p1.mean()),
            "ssim_pairs_mean": _mean(s), "effect": finding_effect(generated, real_effect)}


def _phantom_images(n: int, size: int, seed: int, config, chunk: int = 500) -> np.ndarray:
    """Images [n, S, S, 1] of phantoms 0..n-1 of `seed`, rendered `chunk` at a time so their
    masks and concept maps never exist for all n at once."""
    opts = datasets.phantom_options(config)
    return np.concatenate([
        phantoms.generate(min(chunk, n - lo), image_size=size, seed=seed, start=lo,
                          **opts).images for lo in range(0, n, chunk)])


def _features(fns: _Fns, cv, images_hu: np.ndarray, batch: int) -> np.ndarray:
    out = []
    for lo in range(0, len(images_hu), batch):
        x = images_hu[lo:lo + batch]
        m = len(x)
        if m < batch:   # one compiled shape
            x = np.concatenate([x, np.repeat(x[-1:], batch - m, axis=0)])
        out.append(np.asarray(fns.features(cv, jnp.asarray(x)))[:m])
    return np.concatenate(out).astype(np.float64)


def _frechet(fns: _Fns, gv, cv, config, positive_share: float, za_dim: int,
             zp_dim: int) -> dict:
    n, b = int(config.fd_samples), int(config.fd_batch)
    real = _phantom_images(2 * n, int(config.image_size), int(config.seed) * 2 + 3, config)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 13)
    fake = []
    for i, lo in enumerate(range(0, n, b)):
        ka, kp, ku = jax.random.split(jax.random.fold_in(key, i), 3)
        za = jax.random.normal(ka, (b, za_dim), jnp.float32)
        pos = jax.random.uniform(ku, (b,)) < positive_share
        zp = jax.random.normal(kp, (b, zp_dim), jnp.float32) * pos[:, None]
        fake.append(np.asarray(fns.generate(gv, za, zp))[: min(b, n - lo)] * XRV_SCALE)
    fake = np.concatenate(fake)
    fa = _features(fns, cv, real[:n], b)
    fb = _features(fns, cv, real[n:], b)
    fg = _features(fns, cv, fake, b)
    gen_fd, floor = frechet_distance(fa, fg), frechet_distance(fa, fb)
    return {"generated": gen_fd, "floor": floor, "samples": n, "feature_dim": int(fa.shape[1]),
            "feature_stage": fns.stage, "positive_share": float(positive_share),
            "ratio_to_floor": gen_fd / floor if floor > 0 else float("nan")}


# =========================================================================== summaries
def _summaries(expl: dict, inv: dict, dis: dict | None) -> dict:
    loc = {m: {k: _mean(v) for k, v in per.items()} | {"n": len(per["pointing_game"])}
           for m, per in expl["localisation"].items()}
    anatomy = {"ssim_outside_mask": _mean(expl["ssim_outside_mask"]),
               "ssim_outside_mask_per_image": expl["ssim_outside_mask"],
               "mask_share_mean": _mean(expl["mask_share"])}
    if dis is not None:
        anatomy["ssim_random_pairs"] = dis["ssim_pairs_mean"]
    curves = np.asarray(expl["curves"])
    response = {"alphas": expl["alphas"], "curves": expl["curves"],
                "monotonicity": expl["monotonicity"],
                "monotonicity_mean": _mean(expl["monotonicity"]),
                "p_twin_mean": _mean(curves[:, 0]), "p_reconstruction_mean": _mean(curves[:, -1]),
                "rise_mean": _mean(curves[:, -1] - curves[:, 0])}
    inversion = {"indices": inv["indices"], "mse": inv["mse"], "mse_mean": _mean(inv["mse"]),
                 "ssim_real": expl["ssim_real"], "ssim_real_mean": _mean(expl["ssim_real"]),
                 "p_real": expl["p_real"], "p_real_mean": _mean(expl["p_real"]),
                 "p_reconstruction_mean": response["p_reconstruction_mean"],
                 "loss_first_mean": _mean(inv["loss_first"]),
                 "loss_last_mean": _mean(inv["loss_last"])}
    return {"localisation": loc, "anatomy": anatomy, "response": response,
            "inversion": inversion}


def answers(results: dict) -> list[str]:
    """Sentences read off the numbers."""
    out = []
    f = results["finding"]
    c = results.get("classifier", {})
    if "auroc" in c:
        out.append(f"The classifier ({c['arch']}) separates {f} on the held-out phantoms with "
                   f"AUROC {c['auroc']:.3f}.")
    d = results.get("disentanglement")
    if d:
        out.append(
            f"Disentanglement: over {d['draws']} random (z_a, z_p) pairs the classifier called "
            f"the negative twin G(z_a, 0) negative {100 * d['negative_rate']:.1f}% of the time "
            f"and G(z_a, z_p) positive {100 * d['positive_rate']:.1f}%; both at once (the "
            f"disentanglement rate) {100 * d['rate']:.1f}% (threshold {d['threshold']:.2f}; "
            f"mean p({f}) {d['p_twin_mean']:.2f} vs {d['p_positive_mean']:.2f}).")
        e = d.get("effect")
        if e:
            out.append(
                f"What z_p adds, without the classifier: the mean change G(z_a, z_p) - "
                f"G(z_a, 0) correlates {e['correlation']:.2f} over pixels with the real effect "
                f"of {f} (mean positive minus mean negative phantom), with slope "
                f"{e['slope']:.2f} (1: the same change in the same place; mean |change| "
                f"{e['generated_mean_abs']:.4f} vs {e['real_mean_abs']:.4f} real).")
    r = results.get("response")
    if r:
        out.append(f"Along the latent path from the twin to the reconstruction p({f}) went from "
                   f"{r['p_twin_mean']:.2f} to {r['p_reconstruction_mean']:.2f} on average and "
                   f"rose on {100 * r['monotonicity_mean']:.0f}% of the alpha steps.")
    a = results.get("anatomy")
    if a:
        out.append(f"Anatomy kept: SSIM between twin and reconstruction outside the finding's "
                   f"mask {a['ssim_outside_mask']:.3f}"
                   + (f" (whole image on random pairs {a['ssim_random_pairs']:.3f})"
                      if "ssim_random_pairs" in a else "") + ".")
    loc = results.get("localisation")
    if loc:
        ranked = sorted((m for m in loc if m != "centre"),
                        key=lambda m: -np.nan_to_num(loc[m]["pointing_game"], nan=-1))
        out.append("Pointing game against the finding's mask: " + ", ".join(
            f"{m} {loc[m]['pointing_game']:.2f}" for m in ranked)
            + f" (always the centre: {loc['centre']['pointing_game']:.2f}); box IoU: "
            + ", ".join(f"{m} {loc[m]['box_iou']:.2f}" for m in ranked) + ".")
    fr = results.get("frechet")
    if fr:
        out.append(f"Sample quality: Frechet distance on the classifier's {fr['feature_stage']} "
                   f"features {fr['generated']:.3g} between real and generated images, against "
                   f"{fr['floor']:.3g} between two disjoint real sets of {fr['samples']} (the "
                   "floor).")
    inv = results.get("inversion")
    if inv:
        out.append(f"Inversion: mean squared error {inv['mse_mean']:.4f} ([-1, 1] units), SSIM "
                   f"to the real image {inv['ssim_real_mean']:.3f}; p({f}) {inv['p_real_mean']:.2f}"
                   f" on the real images, {inv['p_reconstruction_mean']:.2f} on the "
                   "reconstructions.")
    return out


# =========================================================================== run
def run(config, workdir: str, *, progress: bool = True) -> dict:
    """Runs (or resumes) the GAN study in `workdir`; returns the results dict (module
    docstring).

    Args:
      config: experiments/configs/gan.py.
      workdir: output folder; a rerun skips every finished phase.
      progress: show training progress bars.
    Raises:
      ValueError: a bad config (`check_config`), or a given classifier that does not fit.
    """
    start = time.perf_counter()
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    seconds = dict.fromkeys(PHASES, 0.0)
    run_info: dict[str, list[str]] = {"trained": [], "loaded": [], "computed": [],
                                      "skipped": []}
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    results: dict[str, Any] = {"config": cfg, "finding": config.finding, "run": run_info,
                               "seconds": seconds}

    def checkpoint():
        if runtime.is_writer():
            write_json(os.path.join(workdir, "results.json"), results)

    # ---- phantoms
    mark = time.perf_counter()
    train_cfg = _train_config(config)
    data = datasets.phantom_dataset(train_cfg)
    test = data.extra["test"]
    findings = tuple(test.finding_names)
    k_ph = findings.index(config.finding)
    train_images = data.train[slice(None)]
    positive_share = float(np.mean(train_images["labels"][:, k_ph]))
    has = train_images["labels"][:, k_ph] > 0.5
    real_effect = ((train_images["image"][has].mean(axis=0, dtype=np.float64)
                    - train_images["image"][~has].mean(axis=0, dtype=np.float64))[..., 0]
                   / XRV_SCALE).astype(np.float32)
    results["findings"] = list(findings)
    seconds["phantoms"] = time.perf_counter() - mark

    # ---- classifier
    mark = time.perf_counter()
    model, variables, info, trained = _classifier(config, workdir, data, progress)
    run_info["trained" if trained else "loaded"].append("classifier")
    k = info["label_names"].index(config.finding)
    seconds["classifier"] = time.perf_counter() - mark

    # ---- GAN
    mark = time.perf_counter()
    gcfg = gan_config(config)
    gan_dir = os.path.join(workdir, "gan")
    gan_res = train_gan(gcfg, gan_dir, model, variables, train_images["image"],
                        finding_names=info["label_names"],
                        labels=has, progress=progress)
    run_info["trained" if gan_res["resumed_from_step"] < int(gcfg.steps)
             else "loaded"].append("gan")
    generator, gv, _, _ = load_generator(gan_dir)
    results["gan"] = {"steps": gan_res["steps"], "train_seconds": gan_res["train_seconds"],
                      "final": gan_res["final"], "samples": gan_res["samples"],
                      "history": gan_res["history"], "workdir": gan_dir}
    seconds["gan"] = time.perf_counter() - mark

    # Everything below depends on the classifier and the GAN: recomputed when either trained.
    fresh = bool(run_info["trained"])
    fns = _Fns(model, generator, k, config)
    cv = variables
    # The classifier's summary is measured once per trained (or given) classifier and kept,
    # so a rerun reports the very numbers of the first run.
    info_path = os.path.join(workdir, "classifier.json")
    saved = read_json(info_path)
    if trained or saved is None or saved.get("source") != info["source"]:
        info["feature_stage"] = fns.stage
        b = int(config.eval_batch_size)
        p_test = np.asarray(np.concatenate([
            np.asarray(fns.prob(cv, jnp.asarray(test.images[lo:lo + b])))
            for lo in range(0, len(test.images), b)]), np.float64)
        info["auroc"] = float(metrics.auroc(p_test[:, None], test.labels[:, k_ph:k_ph + 1])[0])
        saved = _store(info_path, info)
    results["classifier"] = saved
    checkpoint()

    # ---- held-out positives to invert
    ok = (test.labels[:, k_ph] > 0.5) & test.masks[:, k_ph].any(axis=(1, 2))
    idx = np.nonzero(ok)[0][: int(config.num_invert)]
    if len(idx) == 0:
        raise ValueError(f"No held-out positives of {config.finding} among {len(test.images)} "
                         "phantoms: raise config.num_test.")
    x_hu = np.asarray(test.images[idx], np.float32)
    masks = np.asarray(test.masks[idx, k_ph], bool)

    # ---- inversion
    mark = time.perf_counter()
    inv_path = os.path.join(workdir, "inversion.npz")
    inv = None if fresh else read_npz(inv_path)
    if inv is None or not np.array_equal(inv.get("indices", []), idx):
        inv = _invert(fns, gv, cv, x_hu / XRV_SCALE, config)
        inv["indices"] = idx
        write_npz(inv_path, inv)
        run_info["computed"].append("inversion")
    else:
        run_info["skipped"].append("inversion")
    seconds["inversion"] = time.perf_counter() - mark
    inv_summary = {"indices": idx.tolist(), "mse": inv["error"].astype(np.float64).tolist(),
                   "loss_first": inv["loss_first"].tolist(),
                   "loss_last": inv["loss_last"].tolist()}

    # ---- explanation
    mark = time.perf_counter()
    ex_json, ex_npz = (os.path.join(workdir, f"explanation.{e}") for e in ("json", "npz"))
    expl = None if fresh or "inversion" in run_info["computed"] else read_json(ex_json)
    if expl is None or not os.path.exists(ex_npz):
        estimation = lambda: train_images["image"][: int(config.estimation_images)]  # noqa
        scores, arrays = _explain(fns, gv, cv, model, variables, inv, x_hu, masks, config,
                                  estimation)
        write_npz(ex_npz, arrays)
        expl = _store(ex_json, scores)
        run_info["computed"].append("explanation")
    else:
        run_info["skipped"].append("explanation")
    seconds["explanation"] = time.perf_counter() - mark
    results.update(_summaries(expl, inv_summary, None))
    results["localisation_tolerance_px"] = expl["tolerance_px"]
    checkpoint()

    # ---- disentanglement
    mark = time.perf_counter()
    dis = _json_phase(os.path.join(workdir, "disentanglement.json"),
                      lambda: _disentangle(fns, gv, cv, config, generator.z_anatomy,
                                           generator.z_pathology, real_effect,
                                           os.path.join(workdir, "effect.npz")),
                      fresh, "disentanglement", run_info)
    seconds["disentanglement"] = time.perf_counter() - mark
    results["disentanglement"] = dis
    results.update(_summaries(expl, inv_summary, dis))
    checkpoint()

    # ---- Frechet distance
    mark = time.perf_counter()
    fd = _json_phase(os.path.join(workdir, "frechet.json"),
                     lambda: _frechet(fns, gv, cv, config, positive_share, generator.z_anatomy,
                                      generator.z_pathology),
                     fresh, "frechet", run_info)
    seconds["frechet"] = time.perf_counter() - mark
    results["frechet"] = fd
    results["answers"] = answers(results)
    checkpoint()

    # ---- report
    mark = time.perf_counter()
    if runtime.is_writer():
        from cxr_jax.report import gan as report  # matplotlib loads only here

        report.write(workdir, results, x_hu / XRV_SCALE, masks, read_npz(ex_npz),
                     inv["reconstruction"][..., 0])
    seconds["report"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    checkpoint()
    logging.info("GAN study phase times (s): %s",
                 ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return results
