"""The photo study on the real CheXphoto release: photos against their CheXpert originals.

CheXphoto's photos (natural: phones photographing a screen; synthetic: the digital and
photographic transforms; film) are pictures of CheXpert validation radiographs, so each photo has
an original with the same labels. `run_real` pairs them by patient, study and view
(`cxr_jax.data.records.pair_with_originals`), scores every given model on both members of each
pair, and reports per subset (natural/oneplus, synthetic/digital, ...) the AUROC of the five
CheXpert competition tasks on the originals and on the photos, the change with a paired
bootstrap 95% interval (the same resampled pairs on both sides) and the MCC of the photos at the
threshold that maximised MCC on the originals. There are no masks, and a natural photo is not
aligned with its original, so explanations are not compared here (the phantom study does that).

Models come as folders (training workdirs or converted checkpoints); a task is matched to a
model output by name (case, spaces and underscores ignored; "Effusion" counts as "Pleural
Effusion"), and tasks a model lacks are left out and named. Each image is read and preprocessed
as the model's metadata says (`cxr_jax.explain.inputs.load_input`); a pair with an unreadable
member is skipped and listed with the reason. Scores are written per (model, subset) to
`real/<model>/<subset>.npz`; a rerun reuses them.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import metrics, models as model_registry
from cxr_jax.common.files import write_npz
from cxr_jax.data.records import pair_with_originals, read_chexpert, read_chexphoto
from cxr_jax.explain.inputs import Skip, load_input

TASKS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
_ALIASES = {"effusion": "pleuraleffusion"}


def _norm(name: str) -> str:
    key = re.sub(r"[\s_\-]+", "", name.lower())
    return _ALIASES.get(key, key)


def task_columns(finding_names: Sequence[str], tasks: Sequence[str] = TASKS) -> dict[str, int]:
    """{task: output index} for the tasks among a model's outputs (matched by name)."""
    index = {_norm(n): i for i, n in enumerate(finding_names) if n}
    return {t: index[_norm(t)] for t in tasks if _norm(t) in index}


def _pairs(config) -> tuple[dict[str, list], list]:
    """{subset: [(photo record, original record)]} and the photos without an original."""
    root = config.data_dir
    photos = read_chexphoto(os.path.join(root, config.photo_csv), root=root,
                            policy=config.policy)
    chexpert_root = config.chexpert_dir or root
    originals = read_chexpert(os.path.join(chexpert_root, config.original_csv),
                              root=chexpert_root, policy=config.policy)
    pairs = pair_with_originals(photos, originals)
    by: dict[str, list] = {}
    for photo, original in pairs:
        by.setdefault(photo.meta["subset"], []).append((photo, original))
    paired = {id(p) for p, _ in pairs}
    unpaired = [p.path for p in photos if id(p) not in paired]
    return dict(sorted(by.items())), unpaired


def _load_pairs(pairs, meta, limit: int):
    """(photo inputs [N, ...], original inputs [N, ...], labels rows, skipped [(path, why)])."""
    xs, os_, keep, skipped = [], [], [], []
    for photo, original in pairs[: limit or None]:
        try:
            x_photo, _ = load_input(photo.path, meta)
        except Skip as why:
            skipped.append((photo.path, str(why)))
            continue
        try:
            x_orig, _ = load_input(original.path, meta)
        except Skip as why:
            skipped.append((original.path, str(why)))
            continue
        xs.append(x_photo)
        os_.append(x_orig)
        keep.append(photo)
    return xs, os_, keep, skipped


def _scores(fn, variables, images: np.ndarray, batch: int) -> np.ndarray:
    """fn(variables, x) over fixed-size padded batches (one compiled shape)."""
    outs = []
    for lo in range(0, len(images), batch):
        x = images[lo:lo + batch]
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
        outs.append(np.asarray(fn(variables, jnp.asarray(x)))[:n])
    return np.concatenate(outs) if outs else np.zeros((0,))


def run_real(config, workdir: str) -> dict:
    """Scores every model folder of `config.models` on the CheXphoto pairs under
    `config.data_dir`; returns {"subsets": {subset: pairs}, "unpaired", "skipped", "tasks":
    {model: [task]}, "missing_tasks": {model: [task]}, "classification": {model: {subset:
    {"n", "auroc_original": {task: v}, "auroc_photo", "delta", "delta_ci", "mean_delta",
    "mean_delta_ci", "mcc_photo", "mcc_original", "mean_auroc_original", "mean_auroc_photo"}}}}.
    """
    folders = list(config.models)
    bad = [m for m in folders if not os.path.isdir(m)]
    if bad or not folders:
        raise ValueError(f"With config.data_dir the study scores models given as folders "
                         f"(training workdirs or converted checkpoints); {bad or 'none'} "
                         "given. Set --config.models=PATH[,PATH] and --config.augmented=.")
    if tuple(config.augmented):
        raise ValueError("config.augmented trains on phantoms and has no place in the real "
                         "CheXphoto run: set --config.augmented= .")
    by_subset, unpaired = _pairs(config)
    if not by_subset:
        raise ValueError(f"No CheXphoto photo under {config.data_dir!r} has its CheXpert "
                         f"original in {config.original_csv!r}: check config.chexpert_dir and "
                         "config.original_csv.")
    out = {"subsets": {s: len(p) for s, p in by_subset.items()}, "unpaired": len(unpaired),
           "skipped": [], "tasks": {}, "missing_tasks": {}, "classification": {}}
    for folder in folders:
        name = os.path.basename(os.path.normpath(folder))
        model, variables, meta = model_registry.load(folder)
        fn = jax.jit(lambda v, x, model=model, meta=meta: meta.probabilities(model.apply(v, x)))
        cols = task_columns(meta.finding_names)
        if not cols:
            raise ValueError(f"{folder}: none of the outputs {list(meta.finding_names)} is a "
                             f"CheXphoto task ({', '.join(TASKS)}).")
        out["tasks"][name] = list(cols)
        out["missing_tasks"][name] = [t for t in TASKS if t not in cols]
        tasks = list(cols)
        idx = np.array([cols[t] for t in tasks])
        out["classification"][name] = {}
        os.makedirs(os.path.join(workdir, "real", name), exist_ok=True)
        for subset, pairs in by_subset.items():
            path = os.path.join(workdir, "real", name, subset.replace("/", "_") + ".npz")
            if os.path.exists(path):
                with np.load(path) as f:
                    s_photo, s_orig, labels = f["photo"], f["original"], f["labels"]
            else:
                xs, xo, keep, skipped = _load_pairs(pairs, meta, config.real_limit)
                out["skipped"] += [{"model": name, "path": p, "reason": r} for p, r in skipped]
                if not keep:
                    continue
                s_photo = _scores(fn, variables, np.stack(xs), config.eval_batch_size)[:, idx]
                s_orig = _scores(fn, variables, np.stack(xo), config.eval_batch_size)[:, idx]
                labels = np.array([[p.labels[t] for t in tasks] for p in keep], np.float64)
                write_npz(path, {"photo": s_photo, "original": s_orig, "labels": labels})
            out["classification"][name][subset] = _compare(s_orig, s_photo, labels, tasks,
                                                           config)
    return out


def _compare(s_orig, s_photo, labels, tasks, config) -> dict:
    a0 = metrics.auroc(s_orig, labels)
    a1 = metrics.auroc(s_photo, labels)
    d = metrics.paired_auroc_difference(s_orig, s_photo, labels, n_boot=config.n_boot,
                                        seed=config.seed)
    thr, m0 = metrics.best_mcc_threshold(s_orig, labels)
    m1 = metrics.mcc(s_photo, labels, thr)

    def named(v) -> dict:
        return {t: float(x) for t, x in zip(tasks, np.atleast_1d(v))}

    return {"n": int(len(labels)), "auroc_original": named(a0), "auroc_photo": named(a1),
            "mean_auroc_original": _nanmean(a0), "mean_auroc_photo": _nanmean(a1),
            "delta": named(d.delta),
            "delta_ci": {t: [float(lo), float(hi)] for t, lo, hi in zip(tasks, d.low, d.high)},
            "mean_delta": d.mean_delta, "mean_delta_ci": [d.mean_low, d.mean_high],
            "mcc_original": named(m0), "mcc_photo": named(m1)}


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def rows(result: Mapping) -> list[dict]:
    """Table rows (model, subset, n, mean AUROCs, change and interval, per-task AUROCs)."""
    out = []
    for model, by in result["classification"].items():
        for subset, r in by.items():
            lo, hi = r["mean_delta_ci"]
            out.append({"model": model, "subset": subset, "pairs": r["n"],
                        "mean AUROC, originals": r["mean_auroc_original"],
                        "mean AUROC, photos": r["mean_auroc_photo"],
                        "change": r["mean_delta"], "95% CI low": lo, "95% CI high": hi,
                        **{f"AUROC {t} (photo)": v for t, v in r["auroc_photo"].items()}})
    return out
