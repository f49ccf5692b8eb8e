"""The photo study: classifiers and their explanations on CheXphoto-style photos of X-rays.

For every model the config names (architectures trained here on phantoms, some of them a second
time with photo augmentation, or training workdirs / converted checkpoints given by path), the
same held-out phantoms are scored on the originals and under every condition: each transform of
`cxr_jax.data.photo.batched.NAMES` (brightness, contrast, blurs, glare, moire, tilt, rotation,
translation, exposure, the "digital" and "photographic" recipes) at every level, and the JPEG
round trip. A photo is a deterministic function of (seed, image index, transform, level), made
on device for a whole batch at once, and shared by all models.

  Classification  per model and condition: AUROC per finding and their mean; the change from
                  the originals with a paired bootstrap 95% interval (one set of resampled
                  images for every condition and both sides,
                  `cxr_jax.metrics.paired_auroc_difference`); MCC at the threshold that
                  maximises MCC on the originals (the operating point of the CheXphoto papers).
  Explanations    on `num_explain` held-out positives (one target finding each, findings taken
                  in turn): each method's map on the original and on the photo. Geometric
                  conditions move the finding's mask with the image, and the photo's map is
                  pulled back into the original frame (`batched.unwarp`) before the two maps
                  are compared over the part of the original the photo still shows: Spearman
                  rank correlation and SSIM (`cxr_jax.metrics.spearman`, `ssim`). The pointing
                  game is scored on each photo against its moved mask. The correlation is also
                  split by whether the model's decision on the target (at the MCC threshold)
                  stayed the same: does the map move when the prediction does not?
  Remedy          a model listed in `config.augmented` is trained twice, plain and with
                  `photo_augment` (each training image photographed with that probability by a
                  random transform and level); the report says how much of the plain model's
                  mean AUROC drop the augmented one keeps away.

Everything is written as it is computed and a rerun resumes: trained models are reloaded from
their checkpoints (a killed training resumes; a model that trains further in a call has its
earlier condition files removed), and each (model, condition) writes its scores to
`scores/<model>/<condition>.npy` and its explanation scores to `maps/<model>/<condition>.npz`;
a condition every model has finished is neither transformed nor scored again. results.json,
the tables and index.html are rebuilt from those files at the end of every run.

results.json:
  {"config", "conditions": [key], "findings", "explained": {"indices", "targets"},
   "models": {model: {"source", "arch", "augmented", "label_names", "auroc", "mean_auroc",
                      "thresholds", "train_seconds"?}},
   "classification": {model: {condition: {"auroc": {f: v}, "mean_auroc", "delta": {f: v},
                      "delta_ci": {f: [lo, hi]}, "mean_delta", "mean_delta_ci", "mcc": {f: v},
                      "mean_mcc"}}},
   "explanation": {model: {condition: {method: {"pointing_game", "spearman", "ssim",
                   "spearman_same_decision", "spearman_changed_decision", "changed"}}}},
   "original_pointing_game": {model: {method: v}},
   "remedy": {augmented model: {"base", "mean_delta_base", "mean_delta_augmented",
              "share_recovered"}},
   "costs": {"photo_ms_per_image": {transform: ms}, "forward_ms_per_image": {model: ms}},
   "answers": [sentences], "seconds": {phase: s}, "run": {"trained", "loaded", "skipped"}}
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cxr_jax import attribution, metrics, models as model_registry, runtime, training
from cxr_jax.common import sharding
from cxr_jax.common.files import atomic_path, read_json, read_npz, write_json, write_npz
from cxr_jax.data import datasets, phantoms
from cxr_jax.data.photo import batched
from cxr_jax.data.photo._common import LEVELS
from cxr_jax.evaluation.methods import named_specs

__all__ = ["PHASES", "conditions", "condition_key", "run"]

PHASES = ("phantoms", "training", "photos", "scoring", "explanation", "report")
ORIGINAL = "original"
_TRAIN_KEYS = ("image_size", "num_train", "num_test", "phantom_style", "phantom_contrast",
               "optimizer", "schedule", "learning_rate", "warmup_steps", "weight_decay",
               "label_smoothing", "batch_size", "eval_batch_size", "steps", "eval_every",
               "checkpoint_every", "seed", "bf16")


# =========================================================================== conditions
def condition_key(name: str, level: int) -> str:
    """File and table key of a condition: "<transform>@<level>", or "jpeg"."""
    return "jpeg" if name == "jpeg" else f"{name}@{level}"


def conditions(config) -> list[tuple[str, int]]:
    """The (transform, level) pairs the config asks for, in table order; JPEG (level-free)
    last, as ("jpeg", 1)."""
    names = tuple(config.transforms) or tuple(n for n in batched.NAMES if n != "jpeg")
    unknown = [n for n in names if n not in batched.NAMES or n == "jpeg"]
    if unknown:
        raise ValueError(f"Unknown photo transform(s) {unknown} in config.transforms; known: "
                         f"{', '.join(n for n in batched.NAMES if n != 'jpeg')} (JPEG is "
                         "config.jpeg).")
    levels = tuple(int(v) for v in config.levels)
    bad = [v for v in levels if v not in LEVELS]
    if bad or not levels:
        raise ValueError(f"config.levels must be levels in 1..4, got {tuple(config.levels)}.")
    out = [(n, v) for n in names for v in levels]
    if config.jpeg:
        out.append(("jpeg", 1))
    return out


# =========================================================================== models
def _train_config(config, arch: str, augment: float) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.dataset = "phantoms"
    t.data_dir = ""
    t.model = arch
    for key in _TRAIN_KEYS:
        t[key] = config[key]
    t.loss = "bce"
    t.photo_augment = float(augment)
    t.kill_at_step = 0
    return t


def _model_specs(config) -> list[dict]:
    """[{"name", "arch", "augment", "path"}] in the order the report lists them."""
    specs = []
    for entry in config.models:
        if os.path.isdir(entry):
            specs.append({"name": os.path.basename(os.path.normpath(entry)), "arch": None,
                          "augment": 0.0, "path": entry})
        elif entry in model_registry.names():
            specs.append({"name": entry, "arch": entry, "augment": 0.0, "path": None})
        else:
            raise ValueError(f"config.models entry {entry!r} is neither a folder (a training "
                             f"workdir or converted checkpoint) nor a model name "
                             f"({', '.join(model_registry.names())}).")
    for arch in config.augmented:
        if arch not in model_registry.names():
            raise ValueError(f"config.augmented names {arch!r}, not a model name.")
        specs.append({"name": f"{arch}+photo_aug", "arch": arch,
                      "augment": float(config.augment_probability), "path": None})
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Two models share a name: {names}.")
    if not specs:
        raise ValueError("config.models and config.augmented name no model.")
    return specs


def _obtain(spec: dict, config, workdir: str, data, progress: bool):
    """(model, variables, info) of one spec: trained (or resumed, or reloaded) on phantoms, or
    loaded from its folder."""
    if spec["path"] is not None:
        model, variables, meta = model_registry.load(spec["path"])
        if meta.input_size != config.image_size or meta.value_range != (-1024.0, 1024.0):
            raise ValueError(
                f"{spec['path']} expects {meta.input_size} px inputs in the range "
                f"{meta.value_range}; this study scores phantoms at {config.image_size} px in "
                "[-1024, 1024]: set config.image_size to match (or convert the model with "
                "that range).")
        return model, variables, {"source": spec["path"], "arch": model.name, "augmented": False,
                                  "label_names": list(meta.finding_names)}
    t = _train_config(config, spec["arch"], spec["augment"])
    wd = os.path.join(workdir, "models", spec["name"])
    out = training.fit(t, wd, data.train, data.eval, data.label_names, progress=progress)
    info = {"source": wd, "arch": spec["arch"], "augmented": spec["augment"] > 0,
            "label_names": list(data.label_names), "train_seconds": out.results["train_seconds"],
            "resumed_from_step": out.results["resumed_from_step"], "steps": t.steps}
    return out.model, out.variables, info


# =========================================================================== data
def _explained(labels: np.ndarray, masks: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, targets) of up to n held-out positives with a non-empty mask, one target
    finding each, the findings taken in turn (so every finding gets about n / K images)."""
    K = labels.shape[1]
    ok = (labels > 0.5) & masks.any(axis=(2, 3))
    queues = [list(np.nonzero(ok[:, k])[0]) for k in range(K)]
    used: set[int] = set()
    idx, tgt = [], []
    while len(idx) < n and any(queues):
        for k in range(K):
            while queues[k] and queues[k][0] in used:
                queues[k].pop(0)
            if queues[k] and len(idx) < n:
                i = queues[k].pop(0)
                used.add(i)
                idx.append(i)
                tgt.append(k)
    order = np.argsort(idx, kind="stable")
    return np.asarray(idx, np.int64)[order], np.asarray(tgt, np.int64)[order]


def _to_unit(x: np.ndarray) -> np.ndarray:
    return np.clip((x[..., 0] + 1024.0) / 2048.0, 0.0, 1.0).astype(np.float32)


def _to_model(u) -> jax.Array:
    return (jnp.asarray(u) * 2048.0 - 1024.0)[..., None]


def _photos(name: str, level: int, unit: np.ndarray, seed: int, batch: int):
    """Photos [N, H, W] (unit scale), forward homographies [N, 3, 3] (None for appearance
    transforms) and milliseconds per image after compilation (the median batch beyond the
    first) of all N images, `batch` at a time (the last batch padded: one compiled shape)."""
    n = len(unit)
    outs, mats, times = [], [], []
    for lo in range(0, n, batch):
        x = unit[lo:lo + batch]
        idx = np.arange(lo, lo + len(x))
        if len(x) < batch:
            pad = batch - len(x)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            idx = np.concatenate([idx, np.arange(n, n + pad)])
        mark = time.perf_counter()
        p, m = jax.block_until_ready(batched.photo_batch(name, jnp.asarray(x), level, seed, idx))
        times.append(time.perf_counter() - mark)
        outs.append(p[: min(batch, n - lo)])
        if m is not None:
            mats.append(m[: min(batch, n - lo)])
    photos = np.asarray(jnp.concatenate(outs))
    ms = 1000 * float(np.median(times[1:] if len(times) > 1 else times)) / batch
    return photos, (np.asarray(jnp.concatenate(mats)) if mats else None), ms


class _Scorer:
    """A model's compiled forward (sigmoid scores) and explanation methods."""

    def __init__(self, model, variables, specs, batch: int, key_seed: int, images,
                 mesh=None):
        self.model, self.variables, self.batch = model, variables, batch
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        self._rep = sharding.replicate(variables, self.mesh)
        self._forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x)))
        self.methods = attribution.prepare_all(specs, model, variables, images)
        self.key = jax.random.PRNGKey(key_seed)
        self._explain = {
            name: jax.jit(lambda v, x, t, fn=fn: fn(model, v, x, t, key=self.key))
            for name, fn in self.methods.items()}

    def scores(self, unit: np.ndarray) -> np.ndarray:
        """Sigmoid scores of images in [0, 1], `batch` at a time, each batch over the mesh."""
        n = len(unit)
        x = np.asarray(_to_model(unit))
        pad = (-n) % self.batch  # one compiled shape: the last batch padded to `batch`
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        return np.concatenate([
            sharding.call_sharded(self._forward, self._rep, (x[lo:lo + self.batch],), self.mesh)
            for lo in range(0, len(x), self.batch)])[:n]

    def maps(self, unit: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Every method's maps of images in [0, 1] for `targets`, the rows over the mesh."""
        x, t = np.asarray(_to_model(unit)), np.asarray(targets)
        return {name: sharding.call_sharded(fn, self._rep, (x, t), self.mesh).astype(np.float32)
                for name, fn in self._explain.items()}


# =========================================================================== one condition
def _explanation_scores(orig: dict, maps: dict, masks: np.ndarray, matrices) -> dict:
    """Per method: pointing game of the photo's map against the (moved) mask, and Spearman /
    SSIM between the original's map and the photo's map pulled back into the original frame,
    over the part of the original the photo shows."""
    if matrices is not None:
        moved = np.asarray(batched.warp_masks(jnp.asarray(masks[:, None]),
                                              jnp.asarray(matrices))[:, 0])
    else:
        moved = masks
    out = {}
    for name, m in maps.items():
        if matrices is not None:
            back, valid = batched.unwarp(jnp.asarray(m), jnp.asarray(matrices))
            back, valid = np.asarray(back), np.asarray(valid)
        else:
            back, valid = m, np.ones(m.shape, bool)
        out[f"pg_{name}"] = np.asarray(metrics.pointing_game(m, moved), np.float64)
        out[f"rho_{name}"] = metrics.spearman(orig[name], back, mask=valid)
        out[f"ssim_{name}"] = np.asarray(metrics.ssim(orig[name], back, mask=valid), np.float64)
    return out


def _save_scores(path: str, scores: np.ndarray) -> None:
    """One condition's scores as .npy, atomically (a killed run leaves no half file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, scores)


# =========================================================================== aggregation
def _aggregate(config, cond_keys, model_names, findings, labels, explained, workdir,
               method_names) -> dict:
    """Classification and explanation results of every (model, condition) from the files."""
    idx, tgt = explained
    boot = metrics.bootstrap_indices(len(labels), config.n_boot, seed=config.seed)
    cls, expl, thresholds, pg0 = {}, {}, {}, {}
    for m in model_names:
        s0 = np.load(os.path.join(workdir, "scores", m, f"{ORIGINAL}.npy"))
        thr, _ = metrics.best_mcc_threshold(s0, labels)
        thresholds[m] = thr
        a0 = metrics.auroc(s0, labels)
        cls[m] = {ORIGINAL: _classification(s0, s0, labels, thr, findings, boot, a0)}
        orig_maps = read_npz(os.path.join(workdir, "maps", m, f"{ORIGINAL}.npz"))
        pg0[m] = {k: float(np.nanmean(orig_maps[f"pg_{k}"])) for k in method_names}
        expl[m] = {}
        before = s0[idx, tgt] >= thr[tgt]
        for key in cond_keys:
            sc = np.load(os.path.join(workdir, "scores", m, f"{key}.npy"))
            cls[m][key] = _classification(s0, sc, labels, thr, findings, boot, a0)
            e = read_npz(os.path.join(workdir, "maps", m, f"{key}.npz"))
            same = (sc[idx, tgt] >= thr[tgt]) == before
            expl[m][key] = {k: _explanation_summary(e, k, same) for k in method_names}
    return {"classification": cls, "explanation": expl, "thresholds": thresholds,
            "original_pointing_game": pg0}


def _classification(s0, sc, labels, thr, findings, boot, a0) -> dict:
    a = metrics.auroc(sc, labels)
    d = metrics.paired_auroc_difference(s0, sc, labels, indices=boot)
    mc = metrics.mcc(sc, labels, thr)
    f = list(findings)
    return {"auroc": dict(zip(f, map(float, a))), "mean_auroc": float(np.nanmean(a)),
            "delta": dict(zip(f, map(float, d.delta))),
            "delta_ci": {k: [float(lo), float(hi)] for k, lo, hi in zip(f, d.low, d.high)},
            "mean_delta": d.mean_delta, "mean_delta_ci": [d.mean_low, d.mean_high],
            "mcc": dict(zip(f, map(float, mc))), "mean_mcc": float(np.nanmean(mc))}


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _explanation_summary(e: dict, name: str, same: np.ndarray) -> dict:
    rho = e[f"rho_{name}"]
    return {"pointing_game": _nanmean(e[f"pg_{name}"]), "spearman": _nanmean(rho),
            "ssim": _nanmean(e[f"ssim_{name}"]),
            "spearman_same_decision": _nanmean(rho[same]) if same.any() else float("nan"),
            "spearman_changed_decision": _nanmean(rho[~same]) if (~same).any() else float("nan"),
            "changed": int((~same).sum())}


def _remedy(specs, cls) -> dict:
    out = {}
    names = {s["name"] for s in specs}
    for s in specs:
        if not s["augment"] or s["arch"] not in names:
            continue
        conds = [k for k in cls[s["name"]] if k != ORIGINAL]
        base = _nanmean([cls[s["arch"]][k]["mean_delta"] for k in conds])
        aug = _nanmean([cls[s["name"]][k]["mean_delta"] for k in conds])
        out[s["name"]] = {"base": s["arch"], "mean_delta_base": base,
                          "mean_delta_augmented": aug,
                          "share_recovered": (1.0 - aug / base) if base < 0 else float("nan")}
    return out


def answers(results: dict) -> list[str]:
    """Sentences read off the numbers: the worst conditions, the methods whose maps hold up
    best and worst, whether maps move while decisions hold, and the remedy."""
    out = []
    for m, by in results["classification"].items():
        ranked = sorted((k for k in by if k != ORIGINAL), key=lambda k: by[k]["mean_delta"])
        worst = ranked[:3]
        sig = [k for k in ranked if by[k]["mean_delta_ci"][1] < 0]
        out.append(
            f"{m}: mean AUROC {by[ORIGINAL]['mean_auroc']:.3f} on the originals; the largest "
            "drops are " + ", ".join(f"{k} ({by[k]['mean_delta']:+.3f} [{by[k]['mean_delta_ci'][0]:+.3f}, "
                                     f"{by[k]['mean_delta_ci'][1]:+.3f}])" for k in worst)
            + f"; {len(sig)} of {len(ranked)} conditions lower it significantly (interval "
            "below 0).")
    for m, by in results["explanation"].items():
        if not by:
            continue
        methods = list(next(iter(by.values())))
        mean_rho = {k: _nanmean([by[c][k]["spearman"] for c in by]) for k in methods}
        best = max(mean_rho, key=lambda k: np.nan_to_num(mean_rho[k], nan=-9))
        worst = min(mean_rho, key=lambda k: np.nan_to_num(mean_rho[k], nan=9))
        same = {k: _nanmean([by[c][k]["spearman_same_decision"] for c in by]) for k in methods}
        pg0 = results.get("original_pointing_game", {}).get(m, {})
        pg = {k: _nanmean([by[c][k]["pointing_game"] for c in by]) for k in methods}
        out.append(
            f"{m}: over all conditions the maps of {best} stay closest to the originals' "
            f"(Spearman {mean_rho[best]:.2f}), those of {worst} move most ({mean_rho[worst]:.2f}); "
            "where the decision on the explained finding did not change, the mean Spearman "
            "was " + ", ".join(f"{k} {v:.2f}" for k, v in same.items())
            + " (1 would be a map that does not move). Pointing game on the originals, then "
            "averaged over the photos: " + ", ".join(
                f"{k} {pg0.get(k, float('nan')):.2f} to {pg[k]:.2f}" for k in methods)
            + " (a map that stays put is not thereby on the finding).")
    for name, r in results.get("remedy", {}).items():
        out.append(
            f"Photo augmentation: {r['base']} loses {-r['mean_delta_base']:.3f} mean AUROC on "
            f"average over the conditions, {name} {-r['mean_delta_augmented']:.3f}"
            + (f" ({100 * r['share_recovered']:.0f}% of the drop recovered)."
               if np.isfinite(r["share_recovered"]) else "."))
    return out


# =========================================================================== run
def _check(config) -> None:
    if config.num_explain < 1 or config.num_test < 2:
        raise ValueError("config.num_test must be >= 2 and config.num_explain >= 1.")
    if not config.methods:
        raise ValueError("config.methods names no attribution method.")
    for name in config.methods:
        if name not in attribution.names():
            raise ValueError(f"Unknown attribution method {name!r}; known: "
                             f"{', '.join(attribution.names())}.")


def _method_specs(config) -> dict:
    return named_specs(config.methods, cam_layer=config.cam_layer or None)


def _run_real(config, workdir: str, start: float) -> dict:
    """The real CheXphoto release instead of phantoms (`cxr_jax.photos.real`)."""
    from cxr_jax.photos.real import run_real
    from cxr_jax.report import photos as report

    os.makedirs(workdir, exist_ok=True)
    results = run_real(config, workdir)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    results["config"] = cfg
    results["seconds"] = {"total": time.perf_counter() - start}
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
        report.write_real(workdir, results)
    return results


def run(config, workdir: str, *, progress: bool = True) -> dict:
    """Runs (or resumes) the photo study in `workdir`; returns the results dict (module
    docstring).

    Args:
      config: experiments/configs/photos.py. With `config.data_dir` set, the real CheXphoto
        release under it is scored instead (`cxr_jax.photos.real.run_real`).
      workdir: output folder; a rerun resumes.
      progress: show training progress bars.
    """
    from cxr_jax.report import photos as report  # figures load matplotlib only here

    start = time.perf_counter()
    if config.data_dir:
        return _run_real(config, workdir, start)
    _check(config)
    conds = conditions(config)
    keys = [condition_key(n, v) for n, v in conds]
    specs = _model_specs(config)
    seconds = dict.fromkeys(PHASES, 0.0)
    os.makedirs(workdir, exist_ok=True)

    # ---- phantoms (training set shared by the models trained here; held-out test set)
    mark = time.perf_counter()
    train_cfg = _train_config(config, "resnet_tiny", 0.0)
    data = datasets.phantom_dataset(train_cfg)
    test = data.extra["test"]
    findings = tuple(test.finding_names)
    labels = np.asarray(test.labels, np.float64)
    unit = _to_unit(test.images)
    explained = _explained(test.labels, test.masks, config.num_explain)
    idx, tgt = explained
    masks = test.masks[idx, tgt]
    seconds["phantoms"] = time.perf_counter() - mark

    # ---- models
    mark = time.perf_counter()
    scorers, infos = {}, {}
    run_info = {"trained": [], "loaded": [], "skipped": []}
    method_specs = _method_specs(config)
    for spec in specs:
        model, variables, info = _obtain(spec, config, workdir, data, progress)
        if tuple(info["label_names"]) != findings:
            raise ValueError(f"model {spec['name']} predicts {info['label_names']}, not the "
                             f"phantom findings {list(findings)}.")
        infos[spec["name"]] = info
        scorers[spec["name"]] = _Scorer(
            model, variables, method_specs, config.eval_batch_size, config.seed,
            lambda: datasets.estimation_images(train_cfg, config.estimation_images, data))
        (run_info["trained"] if info.get("resumed_from_step", config.steps) < config.steps
         else run_info["loaded"]).append(spec["name"])
    seconds["training"] = time.perf_counter() - mark
    names = [s["name"] for s in specs]
    for m in names:
        for sub in ("scores", "maps"):
            folder = os.path.join(workdir, sub, m)
            if m in run_info["trained"] and os.path.isdir(folder):
                shutil.rmtree(folder)      # scored by an earlier state of the model
            os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(workdir, "grid"), exist_ok=True)

    # ---- originals: scores and maps
    costs = read_json(os.path.join(workdir, "costs.json")) or {"photo_ms_per_image": {},
                                                                "forward_ms_per_image": {}}
    orig_maps = {}
    for m in names:
        s_path = os.path.join(workdir, "scores", m, f"{ORIGINAL}.npy")
        m_path = os.path.join(workdir, "maps", m, f"{ORIGINAL}.npz")
        if not os.path.exists(s_path):
            mark = time.perf_counter()
            scorers[m].scores(unit[: config.eval_batch_size])        # compiles
            warm = time.perf_counter()
            _save_scores(s_path, scorers[m].scores(unit))
            done = time.perf_counter()
            costs["forward_ms_per_image"][m] = 1000 * (done - warm) / len(unit)
            seconds["scoring"] += done - mark
        saved = read_npz(m_path)
        if saved is None:
            mark = time.perf_counter()
            maps = scorers[m].maps(unit[idx], tgt)
            saved = {f"map_{k}": v for k, v in maps.items()}
            saved.update({f"pg_{k}": np.asarray(metrics.pointing_game(v, masks), np.float64)
                          for k, v in maps.items()})
            write_npz(m_path, saved)
            seconds["explanation"] += time.perf_counter() - mark
        orig_maps[m] = {k: saved[f"map_{k}"] for k in config.methods}

    # ---- every condition: photos once, then each model that has not finished it
    for (name, level), key in zip(conds, keys):
        todo = [m for m in names if not (
            os.path.exists(os.path.join(workdir, "scores", m, f"{key}.npy"))
            and os.path.exists(os.path.join(workdir, "maps", m, f"{key}.npz")))]
        if not todo:
            run_info["skipped"].append(key)
            continue
        mark = time.perf_counter()
        photos, matrices, ms = _photos(name, level, unit, config.seed, config.photo_batch)
        dt = time.perf_counter() - mark
        seconds["photos"] += dt
        costs["photo_ms_per_image"][key] = ms
        if level == config.grid_level or name == "jpeg":
            write_npz(os.path.join(workdir, "grid", f"{key}.npz"),
                      {"photo": photos[idx[:1]], **({"matrix": matrices[idx[:1]]}
                                                     if matrices is not None else {})})
        for m in todo:
            mark = time.perf_counter()
            _save_scores(os.path.join(workdir, "scores", m, f"{key}.npy"),
                         scorers[m].scores(photos))
            seconds["scoring"] += time.perf_counter() - mark
            mark = time.perf_counter()
            maps = scorers[m].maps(photos[idx], tgt)
            scores = _explanation_scores(orig_maps[m], maps, masks,
                                         None if matrices is None else matrices[idx])
            if m == names[0] and (level == config.grid_level or name == "jpeg"):
                scores.update({f"map_{k}": v[:1] for k, v in maps.items()})
            write_npz(os.path.join(workdir, "maps", m, f"{key}.npz"), scores)
            seconds["explanation"] += time.perf_counter() - mark
        logging.info("photos: %s done (%.1f s)", key, time.perf_counter() - mark + dt)
        if runtime.is_writer():
            write_json(os.path.join(workdir, "costs.json"), costs)

    # ---- aggregate and report
    mark = time.perf_counter()
    agg = _aggregate(config, keys, names, findings, labels, explained, workdir,
                     list(config.methods))
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    results = {
        "config": cfg, "conditions": keys, "findings": list(findings),
        "explained": {"indices": idx.tolist(), "targets": [findings[t] for t in tgt]},
        "models": {m: {**infos[m], "thresholds": dict(zip(findings, map(float,
                                                                        agg["thresholds"][m]))),
                       "auroc": agg["classification"][m][ORIGINAL]["auroc"],
                       "mean_auroc": agg["classification"][m][ORIGINAL]["mean_auroc"]}
                   for m in names},
        "classification": agg["classification"], "explanation": agg["explanation"],
        "original_pointing_game": agg["original_pointing_game"],
        "remedy": _remedy(specs, agg["classification"]), "costs": costs, "run": run_info,
    }
    results["answers"] = answers(results)
    results["seconds"] = seconds
    if runtime.is_writer():
        report.write(workdir, results, unit[idx[0]], masks[0],
                     {k: v[:1] for k, v in orig_maps[names[0]].items()})
    seconds["report"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
    logging.info("Phase times (s): %s", ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return results
