"""The semantics study: which concepts the units of five phantom-trained models detect.

On phantoms (exact concept masks), it trains and dissects

  (a) multilabel  a multi-label classifier of every phantom finding (sigmoid BCE);
  (b) severity    a regressor trained only on the six-zone severity score (0-18, MSE);
  (c) abnormal    a healthy/unhealthy classifier: one label, "any finding present" (the weakly
                  labelled model; its phantoms are drawn with a lower prevalence per finding so
                  that about half are healthy);
  (d) rare        (a) with one finding made rare (`rare_finding` at `rare_prevalence`, the
                  others as in (a)); evaluated on (a)'s held-out phantoms;
  (e) pretrained  (b) initialised from (a)'s trained weights: every parameter and batch-norm
                  statistic whose name and shape (a) has is copied, the one-output head is fresh.

and then, per model:

  1. dissection (`cxr_jax.semantics.dissect_baseline`) of each layer of `config.layers` over
     `config.num_dissect` held-out phantoms at `config.resolution`: units labelled per concept
     beside the two chance baselines (the same layer with re-initialised weights; the trained
     units against spatially shuffled masks). Concepts: the phantom concept masks plus the
     masks of the findings in `config.finding_concepts`;
  2. a grid of the top-activating held-out images of the best unit of each concept (highest
     IoU), with that unit's mask Up(A_k) > T_k and the concept's mask drawn over each;
  3. semantic attribution (`cxr_jax.semantics.explain_concepts`, Grad-CAM estimator) of a few
     predictions at the last dissected layer, one figure each
     (`cxr_jax.report.semantics.save_semantic_attribution`).

Everything goes to `workdir`: `results.json` (rewritten after every model step), tables
`units_<layer>.md/.csv`, figures under `figures/`, `index.html` (rewritten after every model),
each model's training workdir (orbax checkpoints) under `models/<name>/` and each dissection's
arrays in `dissection/<name>_<layer>.npz`.

Resuming. A rerun with the same workdir skips every finished step: a model whose training
finished is loaded from its checkpoint (`cxr_jax.training.load_trained`) instead of trained, a
model killed mid-training resumes from its last checkpoint (`cxr_jax.training.fit`), and
dissections, grids and attributions already in results.json are not recomputed. A model with
nothing left to do is not even loaded. `results["run"]` says what this call trained, loaded and
skipped.

With `config.data_dir`, the models are still trained on phantoms and the dissection set (and the
explained images) are read from a real concept dataset instead: the COVID-19 CXR segmentation
set (a folder holding structure.csv) or NIH ChestX-ray14 with its boxes
(`cxr_jax.semantics.concept_batches`).

results.json:
  {"config", "models": [names], "concept_names",
   "training": {model: {"auroc" | "mae", "mean_auroc", "train_seconds", "resumed_from_step",
                        "steps", "label_names", "initialised_from"?}},
   "dissection": {model: {layer: {"units", "labelled": {concept: n}, "above": {concept: n},
                                  "best_iou": {concept: v}, "best_unit": {concept: k},
                                  "baseline": {"random_weights" | "shuffled_masks":
                                               {"labelled", "above", "best_iou"}},
                                  "grid": path, "seconds"}}},
   "attribution": {model: {"layer", "explained": [{"index", "target", "score", "concepts":
                                                   {concept: share}, "figure"}]}},
   "layers": {model: [dissected stages]}, "answers": [sentences],
   "seconds": {phase: s} (this call), "run": {"trained", "loaded",
   "skipped", "resumed"}, "runs": [every call's "run" with its seconds]}
"""

from __future__ import annotations

import html
import os
import time
import types
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import flax  # noqa: E402
from absl import logging  # noqa: E402
from flax import traverse_util  # noqa: E402

from cxr_jax import runtime, training  # noqa: E402
from cxr_jax.common import sharding  # noqa: E402
from cxr_jax.common.files import read_json, write_json  # noqa: E402
from cxr_jax.data import phantoms  # noqa: E402
from cxr_jax.data.loader import ArraySource, make_loader  # noqa: E402
from cxr_jax.report import figures, tables, write_index  # noqa: E402
from cxr_jax.report.html import caption, collapsed, image  # noqa: E402
from cxr_jax.report.semantics import (SEMANTIC_CAPTION, save_semantic_attribution,  # noqa: E402
                                      save_unit_bars, unit_masks_at)
from cxr_jax.semantics.attribution import explain_concepts  # noqa: E402
from cxr_jax.semantics.dissection import dissect_baseline  # noqa: E402
from cxr_jax.training.loop import build_model  # noqa: E402

__all__ = ["MODELS", "PHASES", "run"]

MODELS = {
    "multilabel": "(a) multi-label classifier",
    "severity": "(b) severity regressor",
    "abnormal": "(c) healthy/unhealthy classifier",
    "rare": "(d) multi-label, one finding rare",
    "pretrained": "(e) severity regressor initialised from (a)",
}
PHASES = ("phantoms", "training", "dissection", "figures", "attribution", "report")
# What each model trains on: training set, target, held-out set, loss.
_KINDS = {
    "multilabel": ("base", "findings", "base", "bce"),
    "severity": ("base", "severity", "base", "mse"),
    "abnormal": ("abnormal", "any", "abnormal", "bce"),
    "rare": ("rare", "findings", "base", "bce"),
    "pretrained": ("base", "severity", "base", "mse"),
}
_INIT_FROM = {"pretrained": "multilabel"}
# Concepts the answers paragraph asks about (those present in the concept set).
_PATHOLOGY = ("opacity", "consolidation", "effusion")
_CHUNK = 1024


# =========================================================================== data
def _options(config) -> dict:
    return {"style": config.phantom_style, "contrast": float(config.phantom_contrast)}


def _prevalence(config, which: str):
    if which == "abnormal":
        return float(config.abnormal_prevalence)
    if which == "rare":
        return {config.rare_finding: float(config.rare_prevalence)}
    return None


def _targets(which: str, labels: np.ndarray, severity: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(training targets, output names) of a target kind."""
    if which == "findings":
        return labels.astype(np.float32), tuple(phantoms.FINDINGS)
    if which == "severity":
        return severity.sum(axis=1, keepdims=True).astype(np.float32), ("global_severity",)
    return labels.max(axis=1, keepdims=True).astype(np.float32), ("abnormal",)


def _render(n: int, size: int, seed: int, options: dict, prevalence) -> dict:
    """Images, labels and severity of phantoms [0, n) of `seed`, rendered in chunks so the
    masks of only one chunk exist at a time."""
    out = {"image": np.empty((n, size, size, 1), np.float32),
           "labels": np.empty((n, len(phantoms.FINDINGS)), np.float32),
           "severity": np.empty((n, 6), np.int32)}
    for start in range(0, n, _CHUNK):
        b = phantoms.generate(min(_CHUNK, n - start), image_size=size, seed=seed, start=start,
                              prevalence=prevalence, **options)
        stop = start + len(b.images)
        out["image"][start:stop] = b.images
        out["labels"][start:stop] = b.labels
        out["severity"][start:stop] = b.severity
    return out


def _finding_concept_names(config) -> tuple[str, ...]:
    names = []
    for f in config.finding_concepts:
        if f not in phantoms.FINDINGS:
            raise ValueError(f"finding_concepts names {f!r}, not a phantom finding "
                             f"({', '.join(phantoms.FINDINGS)}).")
        names.append(f"{f} finding" if f in phantoms.CONCEPTS else f)
    return tuple(names)


def _held_out_phantoms(config, n: int) -> dict:
    """The held-out phantoms (seed 2 seed + 2, as `cxr_jax.data.datasets`): images, labels,
    severity and the concept masks (phantom concepts, then the `finding_concepts` masks)."""
    size, opts = config.image_size, _options(config)
    cols = [phantoms.FINDINGS.index(f) for f in config.finding_concepts]
    names = tuple(phantoms.CONCEPTS) + _finding_concept_names(config)
    out = {"image": np.empty((n, size, size, 1), np.float32),
           "labels": np.empty((n, len(phantoms.FINDINGS)), np.float32),
           "severity": np.empty((n, 6), np.int32),
           "concepts": np.empty((n, len(names), size, size), bool)}
    for start in range(0, n, _CHUNK):
        b = phantoms.generate(min(_CHUNK, n - start), image_size=size, seed=config.seed * 2 + 2,
                              start=start, **opts)
        stop = start + len(b.images)
        out["image"][start:stop] = b.images
        out["labels"][start:stop] = b.labels
        out["severity"][start:stop] = b.severity
        out["concepts"][start:stop] = np.concatenate([b.concepts, b.masks[:, cols]], axis=1)
    out["concept_names"] = names
    return out


def _real_concepts(config) -> dict:
    """The dissection set from a real concept dataset under `config.data_dir`."""
    from cxr_jax.data import records
    from cxr_jax.semantics.concepts import concept_batches

    root = config.data_dir
    table = os.path.join(root, "structure.csv")
    if os.path.exists(table) or os.path.exists(table + ".gz"):
        entries = records.read_covid_segmentation(table if os.path.exists(table)
                                                  else table + ".gz")
    else:
        entries = [r for r in records.read_nih(root) if r.boxes]
    if not entries:
        raise ValueError(f"No concept annotations under {root!r}: give the COVID-19 CXR "
                         "segmentation folder (structure.csv) or NIH ChestX-ray14 with boxes.")
    source = concept_batches(entries[: config.num_dissect], image_size=config.image_size,
                             batch_size=config.dissect_batch)
    xs, ms = [], []
    for b in source:
        xs.append(b.images)
        ms.append(b.concepts)
    return {"image": np.concatenate(xs), "concepts": np.concatenate(ms),
            "concept_names": tuple(source.concept_names), "labels": None, "severity": None}


class _Data:
    """Training and held-out sets, rendered on first use and kept while some model needs them."""

    def __init__(self, config):
        self.config = config
        self.cache: dict[str, Any] = {}
        self.seconds = 0.0

    def _timed(self, key, make):
        if key not in self.cache:
            t = time.perf_counter()
            self.cache[key] = make()
            self.seconds += time.perf_counter() - t
        return self.cache[key]

    def train(self, which: str) -> dict:
        c = self.config
        return self._timed(("train", which), lambda: _render(
            c.num_train, c.image_size, c.seed * 2 + 1, _options(c), _prevalence(c, which)))

    def held_out(self) -> dict:
        c = self.config
        return self._timed("held_out", lambda: _held_out_phantoms(
            c, max(c.num_test, c.num_dissect if not c.data_dir else 0, c.explain_pool
                   if not c.data_dir else 0)))

    def eval(self, which: str) -> dict:
        c = self.config
        if which == "base":
            h = self.held_out()
            return {k: h[k][: c.num_test] for k in ("image", "labels", "severity")}
        return self._timed(("eval", which), lambda: _render(
            c.num_test, c.image_size, c.seed * 2 + 2, _options(c), _prevalence(c, which)))

    def concepts(self) -> dict:
        """The dissection set: images [N, H, W, 1], concepts [N, C, H, W], concept_names."""
        c = self.config
        if c.data_dir:
            return self._timed("real", lambda: _real_concepts(c))
        h = self.held_out()
        n = c.num_dissect
        return {"image": h["image"][:n], "concepts": h["concepts"][:n],
                "concept_names": h["concept_names"]}

    def release(self, keep: Sequence[str]) -> None:
        """Drops the training sets no remaining model needs."""
        for key in [k for k in self.cache if isinstance(k, tuple) and k[0] == "train"]:
            if key[1] not in keep:
                del self.cache[key]


# =========================================================================== training
def _train_config(config, name: str) -> ml_collections.ConfigDict:
    """The `cxr_jax.training.fit` config of one model."""
    train_set, target, _, loss = _KINDS[name]
    prevalence = _prevalence(config, train_set)
    t = ml_collections.ConfigDict()
    t.dataset = "phantoms_severity" if target == "severity" else "phantoms"
    t.target = target
    t.prevalence = ("default" if prevalence is None else
                    f"{prevalence:g}" if isinstance(prevalence, float) else
                    ", ".join(f"{k}={v:g}" for k, v in prevalence.items()))
    t.initialised_from = _INIT_FROM.get(name, "")
    for key in ("model", "image_size", "num_train", "num_test", "phantom_style",
                "phantom_contrast", "optimizer", "schedule", "learning_rate", "warmup_steps",
                "weight_decay", "label_smoothing", "batch_size", "eval_batch_size", "steps",
                "eval_every", "checkpoint_every", "seed", "bf16"):
        t[key] = config[key]
    t.loss = loss
    t.kill_at_step = config.kill_at_step if name == config.models[0] else 0
    return t


def _copy_matching(fresh, source) -> tuple[Any, int]:
    """`fresh` with every leaf that `source` has under the same name and shape taken from it."""
    flat, src = traverse_util.flatten_dict(fresh), traverse_util.flatten_dict(source)
    n = 0
    for k, v in flat.items():
        if k in src and np.shape(src[k]) == np.shape(v):
            flat[k] = jnp.asarray(src[k], jnp.asarray(v).dtype)
            n += 1
    out = traverse_util.unflatten_dict(flat)
    return (flax.core.freeze(out) if isinstance(fresh, flax.core.FrozenDict) else out), n


def _seed_checkpoint(t, workdir: str, source_variables, train_source,
                     num_classes: int) -> int | None:
    """Writes a step-0 checkpoint into a fresh training workdir, holding `source_variables`
    where names and shapes match (a fresh head elsewhere) and the data iterator at its start,
    so `training.fit` starts from it as from any checkpoint. Returns the number of leaves
    copied, or None when the workdir already has a checkpoint (training started before)."""
    ckpt = training.Checkpointer(workdir, keep=2, best_metric="score", best_mode="max")
    try:
        if ckpt.latest_step() is not None:
            return None
        model = build_model(t, num_classes)
        tx = training.make_optimizer(name=t.optimizer, learning_rate=t.learning_rate,
                                     total_steps=t.steps, warmup_steps=t.warmup_steps,
                                     weight_decay=t.weight_decay, schedule=t.schedule)
        state = training.create_state(model, tx, image_size=t.image_size, seed=t.seed)
        params, n_p = _copy_matching(state.params, source_variables["params"])
        stats, n_s = _copy_matching(state.batch_stats, source_variables.get("batch_stats", {}))
        state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
        it = iter(make_loader(train_source, batch_size=t.batch_size // jax.process_count(),
                              seed=t.seed))
        ckpt.save(0, state, {"history": [], "train_seconds": 0.0,
                             "iterator": it.get_state().decode()})
        return n_p + n_s
    finally:
        ckpt.close()


def _train(config, name: str, workdir: str, data: _Data, trained: dict, progress: bool):
    """Trains (or resumes) one model; returns (model, variables, training results)."""
    train_set, target, eval_set, _ = _KINDS[name]
    t = _train_config(config, name)
    tr = data.train(train_set)
    y, label_names = _targets(target, tr["labels"], tr["severity"])
    source = ArraySource({"image": tr["image"], "labels": y})
    ev = data.eval(eval_set)
    ev_y, _ = _targets(target, ev["labels"], ev["severity"])
    copied = None
    if name in _INIT_FROM:
        parent = _INIT_FROM[name]
        copied = _seed_checkpoint(t, workdir, trained[parent][1], source,
                                  1 if t.loss == "mse" else len(label_names))
    out = training.fit(t, workdir, source, {"image": ev["image"], "labels": ev_y}, label_names,
                       progress=progress)
    res = {k: v for k, v in out.results.items() if k not in ("history", "checkpoint", "model")}
    res["label_names"] = list(label_names)
    res["history"] = out.results["history"]
    if name in _INIT_FROM:
        res["initialised_from"] = _INIT_FROM[name]
        if copied is not None:
            res["leaves_copied"] = copied
    return out.model, out.variables, res


# =========================================================================== dissection
def _forward(model, layers: Sequence[str]):
    fn = jax.jit(lambda v, x: model.apply(v, x, taps=tuple(layers)))
    return fn


def _batched(fn, variables, images: np.ndarray, batch: int):
    """Yields (start, n, outputs) of `fn` over fixed-size padded batches (one compiled shape)."""
    for lo in range(0, len(images), batch):
        x = images[lo:lo + batch]
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
        yield lo, n, fn(variables, jnp.asarray(x))


def _counts(d, names) -> dict:
    return {"labelled": dict(zip(names, d.concept_counts().tolist())),
            "above": dict(zip(names, d.units_above().tolist())),
            "best_iou": dict(zip(names, d.iou.max(axis=0).round(4).tolist()))}


def _save_dissection(path: str, b) -> None:
    arrays = {"thresholds": b.real.thresholds, "iou": b.real.iou, "labels": b.real.labels,
              "random_iou": b.random_weights.iou, "shuffled_iou": b.shuffled_masks.iou,
              "concept_names": np.array(b.real.concept_names), "layer": np.array(b.real.layer)}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_dissection(path: str):
    """The fields of a saved dissection `explain_concepts` reads."""
    z = np.load(path)
    return types.SimpleNamespace(thresholds=z["thresholds"], iou=z["iou"], labels=z["labels"],
                                 concept_names=tuple(str(n) for n in z["concept_names"]),
                                 layer=str(z["layer"]))


def _grid(path: str, model, variables, layer: str, d, data: dict, config) -> list[str]:
    """Top-activating images of the best unit of each concept, with unit and concept masks.
    Returns the concepts shown."""
    names = d.concept_names
    best = d.iou.max(axis=0)
    order = [c for c in np.argsort(-best) if best[c] > config.iou_threshold]
    if not order:  # nothing labelled: show the closest units anyway, their IoU says how close
        order = list(np.argsort(-best)[:min(4, len(names))])
    order = order[: config.grid_concepts]
    units = [int(np.argmax(d.iou[:, c])) for c in order]
    fwd = _forward(model, (layer,))
    images = data["image"]
    peak = np.empty((len(images), d.iou.shape[0]), np.float32)
    for lo, n, (_, acts) in _batched(fwd, variables, images, config.dissect_batch):
        peak[lo:lo + n] = np.asarray(acts[layer]).max(axis=(1, 2))[:n]
    g = min(config.grid_images, len(images))
    top = [np.argsort(-peak[:, k], kind="stable")[:g] for k in units]
    chosen = np.unique(np.concatenate(top))
    maps = {}
    for lo, n, (_, acts) in _batched(fwd, variables, images[chosen], config.dissect_batch):
        a = np.asarray(acts[layer])[:n]
        maps.update({int(i): a[j] for j, i in enumerate(chosen[lo:lo + n])})
    size = images.shape[1:3]
    columns, contours, notes = {}, {}, {}
    for j in range(g):
        title = f"top {j + 1}"
        grey, cont = [], []
        for c, k, idx in zip(order, units, top):
            i = int(idx[j])
            x = images[i, ..., 0]
            grey.append((x - x.min()) / max(float(np.ptp(x)), 1e-6))
            um = unit_masks_at(maps[i][None, ..., k], size, d.thresholds[k:k + 1])[0]
            cont.append(np.stack([um, data["concepts"][i, c]]))
        columns[title], contours[title] = np.stack(grey), np.stack(cont)
    notes["top 1"] = [f"{names[c]}: unit {k}, IoU {d.iou[k, c]:.2f}"
                      for c, k in zip(order, units)]
    figures.save_columns(columns, path, contours=contours, notes=notes)
    return [names[c] for c in order]


def _dissect_layer(config, model, variables, layer: str, data: dict):
    batches = [(data["image"][i:i + config.dissect_batch],
                data["concepts"][i:i + config.dissect_batch])
               for i in range(0, len(data["image"]), config.dissect_batch)]
    return dissect_baseline(model, variables, batches, layer=layer,
                            key=jax.random.PRNGKey(config.seed), quantile=config.quantile,
                            iou_threshold=config.iou_threshold, resolution=config.resolution,
                            concept_names=data["concept_names"], bins=config.bins,
                            shuffle=config.shuffle, mesh=sharding.make_mesh(jax.local_devices()))


# =========================================================================== attribution
def _choose(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, targets): up to k images, each explained for its highest-scoring output, with
    distinct outputs first (highest score first), then the highest scores."""
    target = scores.argmax(axis=1)
    top = scores.max(axis=1)
    order = np.argsort(-top, kind="stable")
    picked, seen = [], set()
    for i in order:
        if len(picked) < k and int(target[i]) not in seen:
            picked.append(int(i))
            seen.add(int(target[i]))
    for i in order:
        if len(picked) < k and int(i) not in picked:
            picked.append(int(i))
    idx = np.array(picked, int)
    return idx, target[idx]


def _attribution(workdir: str, name: str, model, variables, loss: str, label_names,
                 dissection, data: dict, config) -> dict:
    pool = data["image"][: config.explain_pool]
    fwd = _forward(model, ())
    scores = np.empty((len(pool), model.num_classes), np.float32)
    for lo, n, out in _batched(fwd, variables, pool, config.dissect_batch):
        logits = out[0] if isinstance(out, tuple) else out
        scores[lo:lo + n] = np.asarray(training.predictions(loss, logits))[:n]
    idx, targets = _choose(scores, min(config.num_explain, len(pool)))
    e = explain_concepts(model, variables, jnp.asarray(pool[idx]), jnp.asarray(targets),
                         dissection, layer=dissection.layer)
    out = []
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    for b, (i, t) in enumerate(zip(idx, targets)):
        rel = os.path.join("figures", f"semantic_{name}_{b}.png")
        what = label_names[int(t)]
        save_semantic_attribution(
            os.path.join(workdir, rel), pool[i], e.concepts[b], e.names, e.top_maps[b],
            e.top_labels[b], unit_thresholds=e.top_thresholds[b], unit_ids=e.top_units[b],
            unit_values=e.top_contributions[b],
            title=f"{MODELS[name]}: {what} = {scores[i, t]:.2f} (image {int(i)})")
        out.append({"index": int(i), "target": what, "score": float(scores[i, t]),
                    "concepts": {n: float(v) for n, v in zip(e.names, e.concepts[b])},
                    "figure": rel})
    return {"layer": e.layer, "estimator": e.estimator, "normalise": e.normalise,
            "explained": out}


# =========================================================================== answers
def _n(results, model, layer, concept, kind="labelled"):
    return results["dissection"][model][layer][kind].get(concept, 0)


def _base(results, model, layer, concept, which):
    return results["dissection"][model][layer]["baseline"][which]["labelled"].get(concept, 0)


def _across(results, model, layers, concept, base=None) -> str:
    """'3 at layer3, 1 at layer4' (with the baselines when base is given)."""
    parts = []
    for layer in layers:
        s = f"{_n(results, model, layer, concept)} at {layer}"
        if base:
            s += (f" (random weights {_base(results, model, layer, concept, 'random_weights')}, "
                  f"shuffled masks {_base(results, model, layer, concept, 'shuffled_masks')})")
        parts.append(s)
    return ", ".join(parts)


def _above_chance(results, model, layers, concept) -> bool:
    return any(_n(results, model, l, concept) > max(_base(results, model, l, concept, w)
                                                   for w in ("random_weights", "shuffled_masks"))
               for l in layers)


def answers(results: dict) -> list[str]:
    """The questions of the study answered from the unit counts in `results` (one sentence
    each; a question whose models are missing is left out)."""
    diss = results.get("dissection", {})
    done = [m for m in results.get("models", []) if m in diss and diss[m]]
    if not done:
        return []
    layers = list(diss[done[0]])
    concepts = results.get("concept_names", [])
    path = [c for c in _PATHOLOGY if c in concepts]
    out = []
    for layer in layers:
        parts = []
        for m in done:
            d = diss[m].get(layer)
            if d is None:
                continue
            tot = lambda counts: sum(counts.values())
            parts.append(f"{MODELS[m].split()[0]} {tot(d['labelled'])} of {d['units']} "
                         f"(random weights {tot(d['baseline']['random_weights']['labelled'])}, "
                         f"shuffled masks {tot(d['baseline']['shuffled_masks']['labelled'])})")
        out.append(f"Units labelled with any concept at {layer}: {'; '.join(parts)}.")
    if "severity" in done and path:
        grown = [c for c in path if _above_chance(results, "severity", layers, c)]
        verdict = (f"yes for {', '.join(grown)}" if grown else "no, not beyond the baselines")
        detail = "; ".join(f"{c}: {_across(results, 'severity', layers, c, base=True)}"
                           for c in path)
        s = (f"Does the severity regressor (b) grow {'/'.join(path)} units? {verdict}. "
             f"Units labelled {detail}.")
        if "multilabel" in done:
            s += (" The multi-label classifier (a) has " + "; ".join(
                f"{c}: {_across(results, 'multilabel', layers, c)}" for c in path) + ".")
        out.append(s)
    if "abnormal" in done and path:
        tot = lambda m, l: sum(_n(results, m, l, c) for c in path)
        parts = []
        for l in layers:
            s = f"{tot('abnormal', l)} at {l}"
            if "multilabel" in done:
                s += f" against {tot('multilabel', l)} for (a)"
            rand = sum(_base(results, "abnormal", l, c, "random_weights") for c in path)
            s += f" and {rand} with random weights"
            parts.append(s)
        grown = [c for c in path if _above_chance(results, "abnormal", layers, c)]
        out.append(f"The weakly labelled healthy/unhealthy classifier (c) has "
                   f"{'/'.join(path)} units {'; '.join(parts)}; above both baselines for "
                   f"{', '.join(grown) if grown else 'none of them'}.")
    rare = results.get("config", {}).get("rare_finding")
    if "rare" in done and "multilabel" in done and rare:
        names = [c for c in (rare, f"{rare} finding", "opacity") if c in concepts]
        if names:
            detail = "; ".join(f"{c}: {_across(results, 'rare', layers, c)} against "
                               f"{_across(results, 'multilabel', layers, c)} for (a)"
                               for c in names)
            s = f"With {rare} made rare (d), units labelled {detail}."
            tr = results.get("training", {})
            a_auc = tr.get("multilabel", {}).get("auroc", {}).get(rare)
            d_auc = tr.get("rare", {}).get("auroc", {}).get(rare)
            if a_auc is not None and d_auc is not None:
                s += f" Its {rare} AUROC is {d_auc:.3f} against {a_auc:.3f} for (a)."
            out.append(s)
    if "pretrained" in done and "severity" in done and path:
        detail = "; ".join(f"{c}: {_across(results, 'pretrained', layers, c)} against "
                           f"{_across(results, 'severity', layers, c)} trained from scratch"
                           for c in path)
        tr = results.get("training", {})
        mae = [tr.get(m, {}).get("mae") for m in ("pretrained", "severity")]
        s = f"Initialised from (a), the severity regressor (e) has units labelled {detail}."
        if None not in mae:
            s += f" Held-out MAE {mae[0]:.2f} against {mae[1]:.2f} from scratch."
        out.append(s)
    out.append("Each unit counts once, under its best concept: a unit that fits the effusion "
               "mask better than the opacity mask (their union with the other opaque findings) "
               "counts as effusion only. All counts are of one training seed and one "
               "dissection set; how much they vary with the seed was not measured, so read a "
               "difference of a unit or two with care.")
    return out


# =========================================================================== report
def _unit_rows(results, layer, models, concepts, kind="labelled") -> list[dict]:
    rows = []
    for m in models:
        d = results["dissection"][m][layer]
        for label, counts in (("trained", d[kind]),
                              ("random weights", d["baseline"]["random_weights"][kind]),
                              ("shuffled masks", d["baseline"]["shuffled_masks"][kind])):
            rows.append({"model": MODELS[m], "units": label,
                         **{c: counts.get(c, 0) for c in concepts},
                         "total": sum(counts.get(c, 0) for c in concepts)})
    return rows


def _report(workdir: str, config, results: dict) -> None:
    models = [m for m in results["models"] if results["dissection"].get(m)]
    concepts = list(results.get("concept_names", []))
    tr = results.get("training", {})
    source = (f"the real concept dataset under {html.escape(config.data_dir)}"
              if config.data_dir else f"{config.num_dissect} held-out phantoms")
    page = [("Setup", (
        f"<p>{len(results['models'])} ways of training <b>{config.model}</b> at "
        f"{config.image_size}x{config.image_size} on {config.num_train} phantoms each "
        f"({config.steps} steps of "
        f"batch {config.batch_size}): " + "; ".join(MODELS[m] for m in results["models"])
        + f". {config.rare_finding} is made rare at prevalence {config.rare_prevalence:g} for "
        f"(d); the healthy/unhealthy model's phantoms have each finding at prevalence "
        f"{config.abnormal_prevalence:g}. Layers {', '.join(config.layers)} are dissected over "
        f"{source} at {config.resolution}x{config.resolution} (top {config.quantile:g} "
        f"quantile, IoU threshold {config.iou_threshold:g}), each beside two baselines: the "
        f"same layer with re-initialised weights, and the trained units against spatially "
        f"shuffled masks ({config.shuffle}).</p>"))]
    ans = results.get("answers", [])
    if ans:
        page.append(("What the numbers say", "".join(f"<p>{html.escape(a)}</p>" for a in ans)))
    if models:
        layers = list(results["dissection"][models[0]])
        for layer in layers:
            rel = os.path.join("figures", f"units_{layer}.png")
            save_unit_bars(os.path.join(workdir, rel), results, layer, models, concepts, MODELS)
            rows = _unit_rows(results, layer, models, concepts)
            tables.write(os.path.join(workdir, f"units_{layer}"), rows,
                         title=f"Units labelled per concept at {layer}")
            page.append((f"Units per concept at {layer}", image(rel) + caption(
                "Units whose best IoU exceeds the threshold, counted under the concept of "
                "that IoU (one concept per unit). Ticks: the same model's layer with "
                "re-initialised weights (black) and its trained units against shuffled "
                "masks (grey).") + tables.html(rows)))
        grids = []
        for m in models:
            for layer, d in results["dissection"][m].items():
                if d.get("grid"):
                    grids.append(f"<h3>{MODELS[m]}, {layer}</h3>" + image(d["grid"]))
        page.append(("Top-activating images", caption(
            "Each row: the unit of the highest IoU with one concept (named under the first "
            "image, with its IoU), its most strongly activating held-out images; blue contour "
            "the unit's mask (activation upsampled and thresholded at its dissection "
            "threshold), orange the concept's mask.") + "".join(grids)))
    att = results.get("attribution", {})
    if att:
        body = caption(SEMANTIC_CAPTION)
        for m in results["models"]:
            if m in att:
                body += f"<h3>{MODELS[m]} ({att[m]['layer']})</h3>" + "".join(
                    image(e["figure"]) for e in att[m]["explained"])
        page.append(("Semantic attribution", body))
    if tr:
        rows = []
        for m in results["models"]:
            if m not in tr:
                continue
            r = tr[m]
            rows.append({"model": MODELS[m],
                         "mean AUROC": r.get("mean_auroc"), "MAE": r.get("mae"),
                         "lowest AUROC": (min(r["auroc"].values()) if r.get("auroc") else None),
                         "train s": round(r.get("train_seconds", 0.0), 1),
                         "resumed from step": r.get("resumed_from_step")})
        page.append(("Training (held-out phantoms)", tables.html(rows) + caption(
            "(a), (b), (d) and (e) are scored on the same held-out phantoms (default "
            "prevalence); (c) on held-out phantoms drawn at its own prevalence, about half "
            "of them healthy. Severity: mean absolute error of the 0-18 score.")))
        per = [{"model": MODELS[m], **tr[m]["auroc"]}
               for m in results["models"] if m in tr and tr[m].get("auroc")]
        if per:
            cols = list(dict.fromkeys(k for row in per for k in row))
            page.append(collapsed("AUROC per output (held-out phantoms)",
                                  tables.html(per, cols)))
    if models:
        for layer in results["dissection"][models[0]]:
            page.append(collapsed(f"Units above the threshold per concept at {layer}",
                                  caption("A unit counts for every concept whose IoU with it "
                                          "exceeds the threshold.")
                                  + tables.html(_unit_rows(results, layer, models, concepts,
                                                           "above"))))
    calls = results.get("runs") or [{"trained": [], "seconds": results.get("seconds", {})}]
    page.append(collapsed("Phase times (seconds, one row per call of the study)", tables.html(
        [{"call": i + 1, "trained": ", ".join(c.get("trained", [])) or "-",
          **{k: round(v, 1) for k, v in c["seconds"].items()}}
         for i, c in enumerate(calls)])))
    write_index(workdir, "cxr_jax semantics study", page)


# =========================================================================== the study
def _check(config) -> list[str]:
    models = list(config.models)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"Unknown models {unknown}: use any of {', '.join(MODELS)}.")
    for m in models:
        parent = _INIT_FROM.get(m)
        if parent and (parent not in models or models.index(parent) > models.index(m)):
            raise ValueError(f"model {m!r} is initialised from {parent!r}: list {parent!r} "
                             f"before it in config.models.")
    if config.rare_finding not in phantoms.FINDINGS:
        raise ValueError(f"rare_finding {config.rare_finding!r} is not a phantom finding "
                         f"({', '.join(phantoms.FINDINGS)}).")
    if not config.layers:
        raise ValueError("config.layers names no layer to dissect.")
    return models


def _save(workdir: str, results: dict) -> None:
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)


def run(config, workdir: str, *, progress: bool = True) -> dict:
    """Runs (or resumes) the semantics study in `workdir`; returns the results dict.

    Args:
      config: experiments/configs/semantics.py (models, training, dissection and report
        settings).
      workdir: output folder; a rerun resumes (module docstring).
      progress: show training progress bars.
    Returns:
      The dict written to `workdir/results.json` (module docstring).
    """
    start = time.perf_counter()
    models = _check(config)
    os.makedirs(os.path.join(workdir, "dissection"), exist_ok=True)
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    results = read_json(os.path.join(workdir, "results.json")) or {}
    cfg = config.to_dict()
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    if results.get("config") and results["config"] != cfg:
        changed = sorted(k for k in set(cfg) | set(results["config"])
                         if cfg.get(k) != results["config"].get(k))
        logging.warning("The workdir's study had another config (%s differ); finished steps "
                        "are kept as they are.", ", ".join(changed))
    resumed = bool(results)
    results.update(config=cfg, models=models)
    for key in ("training", "dissection", "attribution"):
        results.setdefault(key, {})
    data = _Data(config)
    seconds = dict.fromkeys(PHASES, 0.0)
    run_info = {"trained": [], "loaded": [], "skipped": [], "resumed": resumed}
    trained: dict[str, tuple] = {}  # name -> (model, variables, loss, label_names)

    def needs(m: str) -> bool:
        """Whether model m still has work, or a later model initialises from it and does."""
        own = (m not in results["training"]
               or set(_layer_keys(m)) - set(results["dissection"].get(m, {}))
               or m not in results["attribution"])
        children = [c for c, p in _INIT_FROM.items() if p == m and c in models
                    and c not in results["training"]]
        return bool(own or children)

    def _layer_keys(m):
        return results.get("layers", {}).get(m, [None])

    for pos, name in enumerate(models):
        if not needs(name):
            run_info["skipped"].append(name)
            continue
        wd = os.path.join(workdir, "models", name)
        loss = _KINDS[name][3]
        mark = time.perf_counter()
        rendered = data.seconds
        if (name in results["training"]
                and results["training"][name].get("steps") == config.steps):
            model, variables, _, label_names = training.load_trained(wd)
            run_info["loaded"].append(name)
        else:
            model, variables, res = _train(config, name, wd, data, trained, progress)
            label_names = tuple(res["label_names"])
            results["training"][name] = res
            if res["resumed_from_step"] < config.steps:
                run_info["trained"].append(name)
            else:
                run_info["loaded"].append(name)
        trained[name] = (model, variables, loss, label_names)
        data.release([_KINDS[m][0] for m in models[pos + 1:]])
        seconds["training"] += time.perf_counter() - mark - (data.seconds - rendered)
        _save(workdir, results)

        # ---- dissection (one layer at a time) and its grid
        concepts = None
        layers = [model.layer(None if l == "last" else l) for l in config.layers]
        layers = list(dict.fromkeys(layers))
        results.setdefault("layers", {})[name] = layers
        dissections = {}
        for layer in layers:
            path = os.path.join(workdir, "dissection", f"{name}_{layer}.npz")
            if layer in results["dissection"].get(name, {}) and os.path.exists(path):
                continue
            rendered = data.seconds
            concepts = concepts or data.concepts()
            mark = time.perf_counter()
            b = _dissect_layer(config, model, variables, layer, concepts)
            _save_dissection(path, b)
            names = list(b.real.concept_names)
            results["concept_names"] = names
            entry = {"units": int(b.real.iou.shape[0]), **_counts(b.real, names),
                     "best_unit": dict(zip(names, b.real.iou.argmax(axis=0).tolist())),
                     "baseline": {"random_weights": _counts(b.random_weights, names),
                                  "shuffled_masks": _counts(b.shuffled_masks, names)},
                     "num_images": int(b.real.num_images)}
            d_sec = time.perf_counter() - mark - (data.seconds - rendered)
            seconds["dissection"] += d_sec
            mark = time.perf_counter()
            rel = os.path.join("figures", f"grid_{name}_{layer}.png")
            entry["grid_concepts"] = _grid(os.path.join(workdir, rel), model, variables, layer,
                                           b.real, concepts, config)
            entry["grid"] = rel
            entry["seconds"] = round(d_sec, 2)
            seconds["figures"] += time.perf_counter() - mark
            dissections[layer] = b.real
            results["dissection"].setdefault(name, {})[layer] = entry
            _save(workdir, results)
            logging.info("%s %s: units labelled %s", name, layer,
                         {c: n for c, n in entry["labelled"].items() if n})

        # ---- semantic attribution at the last dissected layer
        if name not in results["attribution"]:
            rendered = data.seconds
            concepts = concepts or data.concepts()
            mark = time.perf_counter()
            last = layers[-1]
            d = dissections.get(last) or _load_dissection(
                os.path.join(workdir, "dissection", f"{name}_{last}.npz"))
            results["attribution"][name] = _attribution(workdir, name, model, variables, loss,
                                                        label_names, d, concepts, config)
            seconds["attribution"] += time.perf_counter() - mark - (data.seconds - rendered)
        results["answers"] = answers(results)
        seconds["phantoms"] = data.seconds
        results["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        _save(workdir, results)
        mark = time.perf_counter()
        if runtime.is_writer():
            _report(workdir, config, results)
        seconds["report"] += time.perf_counter() - mark
        logging.info("%s done (%.0f s so far)", name, time.perf_counter() - start)

    results["answers"] = answers(results)
    seconds["phantoms"] = data.seconds
    seconds["total"] = time.perf_counter() - start
    results["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    results["run"] = run_info
    results.setdefault("runs", []).append({**run_info, "seconds": results["seconds"]})
    _save(workdir, results)
    logging.info("Phase times (s): %s", ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if runtime.is_writer():  # the page's phase table shows this call's final times (the
        _report(workdir, config, results)  # time of this last page is not in them)
    return results
