"""The evaluation study: explain held-out images of a trained model, score, report.

`evaluate` works on a model in memory (the quickstart passes the one it just trained);
`evaluate_checkpoint` loads one from a training workdir first. Both write results.json,
evaluation.json, per_image.jsonl, table_<metric>.md/.csv, agreement.png, overlays.png and
index.html into the workdir, and resume from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from cxr_jax import attribution, runtime, training
from cxr_jax.common import sharding
from cxr_jax.common.files import read_json, write_json
from cxr_jax.common.trees import plain
from cxr_jax.data import datasets
from cxr_jax.data.types import LocalisationSet
from cxr_jax.evaluation import methods as method_sets
from cxr_jax.evaluation.aggregate import METRICS
from cxr_jax.evaluation.engine import Scorer, Spec, run
from cxr_jax.report import figures, sections, tables, write_index
from cxr_jax.report.html import collapsed


def gallery_picks(masks, labels, names, per_finding: int) -> list[tuple[int, int]]:
    """(finding index, image id) of the gallery: the first `per_finding` positives of each
    finding whose region is not empty."""
    picks = []
    for k in range(len(names)):
        ids = np.nonzero((labels[:, k] == 1) & masks[:, k].reshape(len(masks), -1).any(1))[0]
        picks += [(k, int(i)) for i in ids[:per_finding]]
    return picks


def gallery(workdir: str, scorer: Scorer, variables, images, masks, labels, names,
            *, per_finding: int = 1, file: str = "overlays.png",
            scored: Mapping[tuple[int, int], Mapping[str, np.ndarray]] | None = None
            ) -> str | None:
    """Overlays of every method's map on `per_finding` positive images of each finding.

    The maps are those the scoring kept (`scored`, from `run(..., keep=gallery_picks(...))`),
    so the overlays show what was scored; images scored by an earlier run are explained again
    with the scorer's compiled programs (`Scorer.maps`), at no compile. With several processes
    every process calls this (they hold the same `scored`); process 0 draws."""
    picks = gallery_picks(masks, labels, names, per_finding)
    if not picks:
        return None
    scored = dict(scored or {})
    redo = [p for p in picks if p not in scored]
    rows = scorer.rows
    for s in range(0, len(redo), rows):
        part = redo[s:s + rows]
        chunk = scorer.maps(variables, images[[i for _, i in part]],
                            np.array([k for k, _ in part]), jax.random.key(s))
        scored.update({p: {m: chunk[m][j] for m in chunk} for j, p in enumerate(part)})
    if not runtime.is_writer():
        return None
    ids = np.array([i for _, i in picks])
    ks = np.array([k for k, _ in picks])
    maps = {name: np.stack([scored[p][name] for p in picks]) for name in scorer.explain}
    path = os.path.join(workdir, file)
    figures.save_overlays(images[ids], maps, path, masks=masks[ids, ks],
                          row_titles=[names[k] for k in ks])
    return path


def spec_from_config(cfg, methods: Mapping[str, Any], size: int, *, regression: bool) -> Spec:
    """The engine's `Spec` from an evaluation config (experiments/configs/evaluate.py), with
    tolerances and blur scaled from 224 px to `size`."""
    pps = cfg.pixels_per_step
    if cfg.curve_steps > 0:
        pps = max(1, math.ceil(cfg.fraction * size * size / cfg.curve_steps))
    return Spec(methods=methods, tolerance=cfg.tolerance_at_224 * size / 224,
                batch_size=cfg.batch_size, max_per_finding=cfg.max_per_finding,
                faithfulness=cfg.faithfulness, pixels_per_step=pps, fraction=cfg.fraction,
                blur_sigma=cfg.blur_sigma * size / 224,
                sensitivity_num_n=cfg.sensitivity_num_n, sensitivity_masks=cfg.sensitivity_masks,
                seed=cfg.seed, regression=regression)


def evaluate(workdir: str, model, variables, loc: LocalisationSet, cfg, *,
             estimation_images: Callable[[], np.ndarray] | np.ndarray | None = None,
             regression: bool = False, methods: Mapping[str, Any] | None = None,
             setup: str = "", settings: Mapping[str, Any] | None = None,
             progress: bool = True) -> dict:
    """Explains `loc`'s positives with the chosen methods, scores them, writes the report.

    Args:
      workdir: output folder (a rerun resumes).
      model, variables: the model to explain.
      loc: held-out images with ground truth (`cxr_jax.data.datasets.localisation_set`).
      cfg: an evaluation config (experiments/configs/evaluate.py).
      estimation_images: training-distribution images for methods that need statistics (the
        IBA family), an array or a callable returning one (called only if needed); None leaves
        such methods out of the defaults.
      regression: the model is a regressor.
      methods: {output name: {"method": name, **hparams}} replacing the defaults (the papers'
        configs use it for NormGrad variants and layer choices). The config's `hparams`
        apply to the defaults only: explicit methods carry their own settings.
      setup: an HTML paragraph describing the model and data, for the report.
      settings: more entries for results["settings"] (e.g. the model and dataset names).
    Returns:
      {"pointing_game": {method: value, ..., "centre": value}, "pointing_game_pooled",
       "pointing_game_ci" (95% bootstrap intervals),
      "table", "agreement", "counts", "findings" (the model's order), "skipped", "settings",
      "seconds" (statistics, explanation, metrics, report: this call's wall time, compiles
      included), and, when methods with statistics ran, "iba_noise": {layer: {finding:
      score}}}.
    """
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    size = loc.images.shape[1]
    with_data = estimation_images is not None and cfg.iba_samples > 0
    if methods is None:
        methods = method_sets.default_methods(fast=cfg.fast, regression=regression,
                                              cam_layer=cfg.get("cam_layer") or None,
                                              with_needs=with_data,
                                              hparams=plain(cfg.get("hparams")))
    methods = method_sets.select(methods, cfg.methods)
    prepared = attribution.prepare_all(methods, model, variables,
                                       estimation_images if with_data else None,
                                       cache=attribution.Cache(workdir))
    seconds = {"statistics": time.perf_counter() - start}
    spec = spec_from_config(cfg, prepared, size, regression=regression)
    n_dev = int(cfg.get("devices", 0) or 0)  # 0: every device of every process
    scorer = Scorer(model, spec, mesh=sharding.make_mesh(jax.devices()[:n_dev]) if n_dev
                    else None)
    picks = gallery_picks(loc.masks, loc.labels, loc.names, cfg.gallery_per_finding)
    summary = run(workdir, model, variables, loc.images, loc.masks, loc.labels, loc.names, spec,
                  require_mask=loc.require_mask, progress=progress, scorer=scorer, keep=picks)
    scored = summary.pop("maps", {})
    summary["skipped"] += [{"id": p, "reason": r} for p, r in loc.skipped]
    results = {key: summary[key] for key in ("pointing_game", "pointing_game_pooled",
                                             "pointing_game_ci", "table", "agreement", "counts",
                                             "skipped")}
    # The model's order: results.json sorts its keys, so "counts" alone loses it, and the
    # bootstrap intervals of a reused evaluation must resample the findings as this run did.
    results["findings"] = list(summary["counts"])
    results["settings"] = {**(settings or {}), "image_size": size,
                           "tolerance_px": spec.tolerance, "pixels_per_step": spec.pixels_per_step,
                           "methods": method_sets.settings(prepared)}
    stats = attribution.data_inputs(prepared.values()).get("stats", [])
    if stats:
        results["iba_noise"] = attribution.noise_check(model, variables, stats, loc.names,
                                                       regression=regression)
    seconds.update(scorer.seconds)
    results["seconds"] = seconds
    mark = time.perf_counter()
    gallery(workdir, scorer, variables, loc.images, loc.masks, loc.labels, loc.names,
            per_finding=cfg.gallery_per_finding, scored=scored)
    if runtime.is_writer():
        _write_report(workdir, results, summary, loc, cfg, setup, regression)
        seconds["report"] = time.perf_counter() - mark
        write_json(os.path.join(workdir, "results.json"), results)
    return results


def _write_report(workdir, results, summary, loc, cfg, setup, regression):
    write_json(os.path.join(workdir, "results.json"), results)
    tables.write_metric_tables(workdir, summary["table"], loc.names, METRICS)
    tolerance = results["settings"]["tolerance_px"]
    page = [("Setup", f"<p>{setup} Pointing-game tolerance {tolerance:.1f} px; images per "
                      f"finding: {sections.counts_text(summary['counts'])}.</p>")]
    page += sections.lead(results, loc.names, workdir)
    page += report_sections(workdir, results, loc.names, regression=regression)
    write_index(workdir, "cxr_jax evaluation", page)


def report_sections(workdir: str, results: Mapping, findings, *, regression: bool,
                    prefix: str = "") -> list:
    """The evaluation's tables (folded), agreement matrix, noise check and each method's
    settings, after the pictures of `sections.lead`."""
    out = sections.evaluation(results, findings, METRICS, workdir, prefix, collapse_tables=True)
    if "iba_noise" in results:
        out.append(collapsed(*sections.noise_check(results["iba_noise"], regression)))
    methods = results.get("settings", {}).get("methods")
    if methods:
        out.append(collapsed("Method settings", tables.html(
            [{"method": name, "registered method": method,
              "settings": ", ".join(f"{k}={v}" for k, v in hp.items()) or "defaults"}
             for name, (method, hp) in methods.items()])))
    return out


def _request(cfg, methods, checkpoint: str) -> dict:
    """What an evaluation was asked for, as its results file holds it (a JSON round trip): the
    config, the methods and a digest of the training run's config.json and results.json (a
    retrained checkpoint changes it)."""
    config = dict(plain(cfg))
    digest = hashlib.sha256()
    for name in ("config.json", "results.json"):
        path = os.path.join(checkpoint, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                digest.update(f.read())
    return json.loads(json.dumps({"config": config, "methods": methods,
                                  "trained": digest.hexdigest()[:16]}, sort_keys=True,
                                 default=str))


def evaluate_checkpoint(workdir: str, checkpoint: str, cfg, *, methods=None,
                        progress: bool = True, data=None) -> dict:
    """Loads a trained model, explains held-out images with the chosen methods, scores them and
    writes the report (see `evaluate`) into `workdir`. Resumable; a finished evaluation is not
    redone: when `workdir/results.json` was written for the same config and methods and the
    same training run (its config.json and results.json unchanged), those results are returned
    (delete the file to evaluate again).

    Args:
      workdir: output folder.
      checkpoint: a training workdir (experiments.train / quickstart).
      cfg: an evaluation config (experiments/configs/evaluate.py): the dataset and data_dir
        default to the training run's.
      methods: optional {output name: {"method": name, **hparams}} replacing the defaults.
      data: the training run's `datasets.Dataset` when at hand: its held-out phantoms are
        reused instead of rendered again (the same pixels).
    Returns:
      The results dict of `evaluate`, with the model and dataset in "settings".
    """
    request = _request(cfg, methods, checkpoint)
    done = read_json(os.path.join(workdir, "results.json"), {})
    if done.get("settings", {}).get("request") == request:
        return done
    model, variables, tcfg, names = training.load_trained(checkpoint)
    data_cfg = tcfg.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.dataset = cfg.dataset or tcfg.dataset
        data_cfg.data_dir = cfg.data_dir or tcfg.data_dir
        data_cfg.num_test = cfg.num_test
    loc = datasets.localisation_set(data_cfg, names, data)
    size = loc.images.shape[1]
    return evaluate(
        workdir, model, variables, loc, cfg, regression=tcfg.loss == "mse", methods=methods,
        estimation_images=lambda: datasets.estimation_images(data_cfg, cfg.iba_samples),
        setup=f"Model {tcfg.model} from {checkpoint}, {data_cfg.dataset} at {size}px.",
        settings={"model": tcfg.model, "dataset": data_cfg.dataset, "request": request},
        progress=progress)
