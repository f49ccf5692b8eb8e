"""Scoring attribution methods against ground truth: the engine behind experiments.evaluate.

For every finding, the images that show it are explained with every method (target = that
finding), and each map is scored against the finding's ground-truth region: pointing game,
multi-Otsu box IoU, effective heat ratio, insertion and deletion AUC, and sensitivity-N. A
centre-point baseline is scored beside the methods. Per-image results are appended to
`per_image.jsonl` batch by batch as they come, so a killed run loses at most one batch and a
rerun skips what is done; an image with NaN/Inf pixels, or a batch that fails, is reported and
skipped without ending the run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import traceback
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import attribution, metrics

IBA_METHODS = ("iba", "inverse_iba", "regression_iba", "multilayer_iba")
METRICS = ("pointing_game", "box_iou", "ehr", "insertion", "deletion", "sensitivity_n")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to compute.

    Attributes:
      methods: {output name: (registered method, hparams)}; one method may appear several times
        with different settings (e.g. NormGrad variants and layers).
      tolerance: pointing-game tolerance in pixels at this image size.
      batch_size: images explained per compiled call.
      max_per_finding: at most this many positive images per finding (None = all).
      faithfulness: compute insertion/deletion AUC (costs about 2 * fraction * H * W /
        pixels_per_step forward passes per image and method).
      pixels_per_step, fraction, blur_sigma: insertion/deletion settings.
      sensitivity_num_n, sensitivity_masks: sensitivity-N settings (0 disables it).
      seed: PRNG seed for stochastic methods and sensitivity-N.
      regression: the model is a regressor (e.g. a severity score): insertion and deletion
        follow its raw output for the target (AUC in the output's units) instead of a sigmoid
        probability, which a score of several units would saturate at 1.
    """

    methods: Mapping[str, tuple[str, Mapping[str, Any]]]
    tolerance: float = 15.0
    batch_size: int = 16
    max_per_finding: int | None = None
    faithfulness: bool = True
    pixels_per_step: int = 25
    fraction: float = 0.5
    blur_sigma: float = 10.0
    sensitivity_num_n: int = 50
    sensitivity_masks: int = 30
    seed: int = 0
    regression: bool = False


def box_of_mask(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) pixel-edge bounding box of a boolean mask; NaNs when it is empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.full(4, np.nan)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], float)


class Scorer:
    """Jitted explainers and metric functions for one model; reused across batches and runs."""

    def __init__(self, model, spec: Spec):
        self.model = model
        self.spec = spec
        self.explain = {}
        for out_name, (method, hp) in spec.methods.items():
            fn = attribution.get(method)
            self.explain[out_name] = jax.jit(functools.partial(self._call, fn, dict(hp)))
        self._pg = jax.jit(functools.partial(metrics.pointing_game, tolerance=spec.tolerance))
        curve = dict(baseline="blur", sigma=spec.blur_sigma, pixels_per_step=spec.pixels_per_step,
                     fraction=spec.fraction)

        def curve_target(t):  # class indices (sigmoid scores) or, for a regressor, raw outputs
            if not spec.regression:
                return t
            return lambda logits: jnp.take_along_axis(logits, t[:, None], axis=-1)[..., 0]

        self._ins = jax.jit(lambda v, x, s, t: metrics.insertion_auc(
            model, v, x, s, curve_target(t), **curve))
        self._del = jax.jit(lambda v, x, s, t: metrics.deletion_auc(
            model, v, x, s, curve_target(t), **curve))
        self._sens = jax.jit(lambda v, x, s, t, k: jnp.mean(metrics.sensitivity_n(
            model, v, x, s, t, key=k, num_n=spec.sensitivity_num_n,
            num_masks=spec.sensitivity_masks).correlation, axis=-1))

    def _call(self, fn, hp, variables, x, targets, key):
        return fn(self.model, variables, x, targets, key=key, **hp)

    def score(self, variables, x: np.ndarray, masks: np.ndarray, targets: np.ndarray,
              key) -> dict[str, dict[str, np.ndarray]]:
        """Per-image metric values for every method (and the centre baseline) on one batch."""
        spec = self.spec
        x = jnp.asarray(x)
        t = jnp.asarray(targets, jnp.int32)
        gt_boxes = np.stack([box_of_mask(m) for m in masks])
        out = {"centre": {"pointing_game": np.asarray(
            metrics.pointing_game_centre(masks, tolerance=spec.tolerance))}}
        for i, (name, fn) in enumerate(self.explain.items()):
            k = jax.random.fold_in(key, i)
            sal = fn(variables, x, t, k)
            sal = jnp.nan_to_num(sal.astype(jnp.float32))
            sal_np = np.asarray(sal)
            boxes = np.stack([metrics.boxes_from_saliency(s) for s in sal_np])
            res = {
                "pointing_game": np.asarray(self._pg(sal, jnp.asarray(masks))),
                "box_iou": np.asarray(metrics.box_iou(boxes, gt_boxes)),
                "ehr": np.asarray(metrics.effective_heat_ratio(sal_np, masks)),
                "box": boxes,
                "peak": np.stack(np.unravel_index(sal_np.reshape(len(sal_np), -1).argmax(1),
                                                  sal_np.shape[1:]), axis=1),
            }
            if spec.faithfulness:
                res["insertion"] = np.asarray(self._ins(variables, x, sal, t))
                res["deletion"] = np.asarray(self._del(variables, x, sal, t))
            if spec.sensitivity_num_n > 0 and spec.sensitivity_masks > 0:
                res["sensitivity_n"] = np.asarray(self._sens(variables, x, sal, t, k))
            out[name] = res
        return out


def _finite_rows(images: np.ndarray) -> np.ndarray:
    return np.isfinite(images.reshape(len(images), -1)).all(axis=1)


def _read_done(path: str) -> tuple[dict, set]:
    """Rows already written, keyed by (finding, id): a batch redone after a cut line replaces
    its earlier rows instead of counting twice."""
    rows, done = {}, set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill: redo its batch
                    continue
                rows[(row["finding"], row["id"])] = row
                done.add((row["finding"], row["id"]))
    return rows, done


def _jsonable(v):
    """Numpy values as JSON-ready Python values, NaN/Inf as null."""
    if isinstance(v, (np.ndarray, np.generic)):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(a) for a in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run(workdir: str, model, variables, images: np.ndarray, masks: np.ndarray,
        labels: np.ndarray, finding_names: Sequence[str], spec: Spec,
        *, require_mask: bool = True, progress: bool = True,
        scorer: Scorer | None = None) -> dict:
    """Explains and scores every (positive image, finding) pair; resumable.

    Args:
      workdir: output folder; `per_image.jsonl` is appended to as batches finish.
      model, variables: the classifier.
      images: [N, H, W, C].
      masks: [N, K, H, W] bool ground-truth regions per finding.
      labels: [N, K]; an image is explained for finding k when labels[n, k] == 1 and its mask
        is non-empty.
      finding_names: K names.
      spec: methods and metric settings.
      require_mask: explain only images whose mask for the finding is non-empty (False for
        datasets without regions, e.g. BrixIA: localisation metrics are then NaN).
      scorer: a `Scorer(model, spec)` to reuse (its jitted functions are compiled once).
    Returns:
      The summary (see `summarise`), also written to workdir/evaluation.json.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "per_image.jsonl")
    rows, done = _read_done(path)
    finite = _finite_rows(images)
    skipped = [{"id": int(i), "reason": "NaN or Inf pixels"} for i in np.nonzero(~finite)[0]]
    for s in skipped:
        logging.warning("Skipping image %d: %s", s["id"], s["reason"])
    scorer = scorer if scorer is not None else Scorer(model, spec)
    key = jax.random.key(spec.seed)
    work = []
    for k, name in enumerate(finding_names):
        has_region = masks[:, k].reshape(len(masks), -1).any(1) | (not require_mask)
        ids = np.nonzero((labels[:, k] == 1) & has_region & finite)[0]
        if spec.max_per_finding is not None:
            ids = ids[:spec.max_per_finding]
        for start in range(0, len(ids), spec.batch_size):
            batch = ids[start:start + spec.batch_size]
            if all((name, int(i)) in done for i in batch):
                continue
            work.append((k, name, batch))
    bar = None
    if progress and work:
        from tqdm import tqdm
        bar = tqdm(total=len(work), desc="explain+score", unit="batch", dynamic_ncols=True)
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:  # a line cut short by a kill: end it so the next row starts on its own line
            with open(path, "a") as f:
                f.write("\n")
    with open(path, "a") as f:
        for k, name, batch in work:
            # Pad to the batch size (repeat the last image) so every call has one shape.
            pad = np.concatenate([batch, np.repeat(batch[-1:], spec.batch_size - len(batch))])
            try:
                res = scorer.score(variables, images[pad], masks[pad, k],
                                   np.full(len(pad), k), jax.random.fold_in(key, k * 100003
                                                                            + int(batch[0])))
            except Exception as err:  # one failing batch is reported, the run goes on
                logging.error("Batch of %s (images %s) failed: %s\n%s", name, batch.tolist(),
                              err, traceback.format_exc())
                skipped += [{"id": int(i), "finding": name, "reason": str(err)} for i in batch]
                continue
            for j, i in enumerate(batch):
                row = {"id": int(i), "finding": name,
                       "gt_box": _jsonable(box_of_mask(masks[i, k]))}
                for method, vals in res.items():
                    row[method] = {m: _jsonable(v[j]) for m, v in vals.items()}
                f.write(json.dumps(row) + "\n")
                rows[(name, int(i))] = row
            f.flush()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    summary = summarise(list(rows.values()), finding_names, ["centre"] + list(spec.methods))
    summary["skipped"] = skipped
    with open(os.path.join(workdir, "evaluation.json.tmp"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    os.replace(os.path.join(workdir, "evaluation.json.tmp"),
               os.path.join(workdir, "evaluation.json"))
    return summary


def _nanmean(values) -> float:
    a = np.array([np.nan if v is None else v for v in values], float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def summarise(rows: Sequence[dict], finding_names: Sequence[str], methods: Sequence[str]
              ) -> dict:
    """Aggregates per-image rows.

    Returns:
      {"pointing_game": {method: class-mean hit rate (mean over findings of the per-finding
         rate, TorchRay's accuracy)}, "pointing_game_pooled": {method: pooled rate},
       "table": {method: {finding: {metric: mean}}}, "counts": {finding: images},
       "agreement": {"names": [...], "matrix": [[...]]}} (box IoU between methods, ground truth
       as the last row).
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    pg_class, pg_pooled = {}, {}
    counts = {f: sum(r["finding"] == f for r in rows) for f in finding_names}
    for m in methods:
        table[m] = {}
        rates, hits = [], []
        for f in finding_names:
            sub = [r[m] for r in rows if r["finding"] == f and m in r]
            entry = {metric: _nanmean([s.get(metric) for s in sub]) for metric in METRICS
                     if any(metric in s for s in sub)}
            table[m][f] = entry
            if sub:
                rates.append(entry["pointing_game"])
                hits += [s["pointing_game"] for s in sub]
        pg_class[m] = _nanmean(rates)
        pg_pooled[m] = _nanmean(hits)
    methods_with_boxes = [m for m in methods if m != "centre"]
    complete = [r for r in rows if all(m in r for m in methods_with_boxes)]

    def as_boxes(values):
        return np.array([[np.nan if c is None else c for c in v] for v in values],
                        float).reshape(-1, 4)

    names, matrix = [], np.zeros((0, 0))
    if complete and methods_with_boxes:
        boxes = {m: as_boxes([r[m]["box"] for r in complete]) for m in methods_with_boxes}
        gt = as_boxes([r["gt_box"] for r in complete])
        names, matrix = metrics.agreement_matrix(boxes, gt if np.isfinite(gt).any() else None)
    return {"pointing_game": pg_class, "pointing_game_pooled": pg_pooled, "table": table,
            "counts": counts, "agreement": {"names": list(names),
                                            "matrix": np.asarray(matrix).tolist()}}


def write_tables(workdir: str, summary: dict, finding_names: Sequence[str],
                 metrics_shown: Sequence[str] = METRICS) -> list[str]:
    """One Markdown and one CSV table per metric (methods x findings, plus the mean)."""
    paths = []
    for metric in metrics_shown:
        methods = [m for m, per in summary["table"].items()
                   if any(metric in per.get(f, {}) for f in finding_names)]
        if not methods:
            continue
        header = ["method"] + list(finding_names) + ["mean"]
        lines_md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines_csv = [",".join(header)]
        for m in methods:
            vals = [summary["table"][m].get(f, {}).get(metric, float("nan"))
                    for f in finding_names]
            mean = _nanmean(vals)
            cells = [f"{v:.3f}" if math.isfinite(v) else "n/a" for v in vals + [mean]]
            lines_md.append("| " + " | ".join([m] + cells) + " |")
            lines_csv.append(",".join([m] + [c if c != "n/a" else "" for c in cells]))
        for ext, lines in (("md", lines_md), ("csv", lines_csv)):
            p = os.path.join(workdir, f"table_{metric}.{ext}")
            with open(p, "w") as f:
                f.write("\n".join(lines) + "\n")
            paths.append(p)
    return paths


# --------------------------------------------------------------------------- experiment
def iba_layers(model) -> tuple[str, tuple[str, ...]]:
    """The bottleneck layer for IBA and the layers for Multi-layer IBA: DenseNet denseblock3 and
    denseblock1-3 (the CXR reference); ResNet layer3 and layer1-3 (the same strides)."""
    if "denseblock3" in model.stages:
        return "denseblock3", ("denseblock1", "denseblock2", "denseblock3")
    return "layer3", ("layer1", "layer2", "layer3")


def default_methods(model, stats: Mapping[str, Any], *, fast: bool = False,
                    regression: bool = False, cam_layer: str | None = None
                    ) -> dict[str, tuple[str, dict]]:
    """Every registered method with the defaults of METHODS.md (`fast`: fewer samples/steps for
    CPU quickstarts: SmoothGrad 10 samples, IG 16 steps). `stats`: IBA stats per layer.
    `cam_layer`: the layer of the CAM family and NormGrad (default: the architecture's, DenseNet
    norm5 / ResNet layer4; "stride16": denseblock3 / layer3)."""
    single, multi = iba_layers(model)
    if cam_layer == "stride16":  # the last stage at stride 16, whatever the architecture
        cam_layer = "denseblock3" if "denseblock3" in model.stages else "layer3"
    cam = {"layer": cam_layer} if cam_layer else {}
    methods = {
        "gradient": ("gradient", {}),
        "input_x_gradient": ("input_x_gradient", {}),
        "smoothgrad": ("smoothgrad", {"method": "gradient", "n": 10 if fast else 50}),
        "integrated_gradients": ("integrated_gradients", {"steps": 16 if fast else 50}),
        "guided_backprop": ("guided_backprop", {}),
        "gradcam": ("gradcam", dict(cam)),
        "gradcam_plus_plus": ("gradcam_plus_plus", dict(cam)),
        "guided_gradcam": ("guided_gradcam", dict(cam)),
        "scorecam": ("scorecam", dict(cam)),
        "faster_scorecam": ("faster_scorecam", dict(cam)),
        "normgrad": ("normgrad", dict(cam)),
    }
    if single in stats:
        if regression:
            methods["regression_iba"] = ("regression_iba", {"layer": single,
                                                            "stats": stats[single],
                                                            "loss": "push_up"})
        else:
            methods["iba"] = ("iba", {"layer": single, "stats": stats[single]})
            methods["inverse_iba"] = ("inverse_iba", {"layer": single, "stats": stats[single]})
    if all(layer in stats for layer in multi):
        methods["multilayer_iba"] = ("multilayer_iba", {"layer": list(multi),
                                                        "stats": {l: stats[l] for l in multi}})
    return methods


def estimate_iba_stats(workdir: str, model, variables, images: np.ndarray,
                       layers: Sequence[str], *, batch_size: int = 64) -> dict:
    """IBA feature statistics per layer over `images`, cached in workdir/iba_stats_<layer>.npz."""
    out = {}
    for layer in layers:
        path = os.path.join(workdir, f"iba_stats_{layer}.npz")
        if os.path.exists(path):
            out[layer] = attribution.load_iba_stats(path)
            continue
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        out[layer] = attribution.iba_stats(model, variables, batches, layer=layer)
        attribution.save_iba_stats(path, out[layer])
    return out


def gallery(workdir: str, scorer: Scorer, variables, images, masks, labels, names,
            *, per_finding: int = 1, file: str = "overlays.png") -> str | None:
    """Overlays of every method's map on `per_finding` positive images of each finding."""
    from cxr_jax.report import save_overlays

    picks = []
    for k in range(len(names)):
        ids = np.nonzero((labels[:, k] == 1) & masks[:, k].reshape(len(masks), -1).any(1))[0]
        picks += [(int(i), k) for i in ids[:per_finding]]
    if not picks:
        return None
    ids = np.array([i for i, _ in picks])
    ks = np.array([k for _, k in picks])
    bs = scorer.spec.batch_size
    pad = np.concatenate([np.arange(len(ids)), np.full((-len(ids)) % bs, len(ids) - 1)])
    maps = {name: [] for name in scorer.explain}
    for s in range(0, len(pad), bs):
        sel = pad[s:s + bs]
        x, t = jnp.asarray(images[ids[sel]]), jnp.asarray(ks[sel], jnp.int32)
        for j, (name, fn) in enumerate(scorer.explain.items()):
            maps[name].append(np.asarray(fn(variables, x, t, jax.random.key(j))))
    maps = {n: np.concatenate(v)[:len(ids)] for n, v in maps.items()}
    path = os.path.join(workdir, file)
    save_overlays(images[ids], maps, path, masks=masks[ids, ks],
                  row_titles=[names[k] for k in ks])
    return path


def iba_noise_check(model, variables, stats: Mapping[str, Any], names: Sequence[str], *,
                    regression: bool = False, samples: int = 64) -> dict:
    """{layer: {finding: score}}: the model's mean score (sigmoid; raw output for a regressor)
    when the IBA bottleneck at the layer passes only noise (`attribution.noise_logits`).

    A classifier's score near or above 0.5 there means IBA's premise fails for that finding at
    that layer: a closed bottleneck already keeps much of the score, so the map may be flat or
    off the finding (it often still points right; treat it as a warning, not a verdict).
    """
    out = {}
    for layer in sorted(stats):
        logits = np.asarray(attribution.noise_logits(model, variables, stats[layer],
                                                     samples=samples), np.float64)
        score = logits if regression else 1.0 / (1.0 + np.exp(-logits))
        out[layer] = {n: float(v) for n, v in zip(names, score.mean(0))}
    return out


def iba_noise_section(noise: Mapping[str, Mapping[str, float]], regression: bool) -> str:
    from cxr_jax.report import table_html

    rows = [{"layer": layer, **per} for layer, per in noise.items()]
    if regression:
        return ("<p>The regressor's output when the bottleneck at each layer passes only noise. "
                "Regression IBA keeps the image's own output, so it is well posed as long as "
                "this differs from it.</p>" + table_html(rows))
    high = [f"{f} at {layer} ({v:.2f})" for layer, per in noise.items()
            for f, v in per.items() if v >= 0.5]
    verdict = ("Every finding's score drops below 0.5 on noise alone, as IBA presumes."
               if not high else "On noise alone the model already scores " + ", ".join(high)
               + ". For these IBA's premise fails at that layer: a closed bottleneck keeps "
                 "much of the score, so the map may be flat or off the finding, and Multi-layer "
                 "IBA inherits this through that layer. Read those maps with care.")
    return (f"<p>Mean score of each finding when the bottleneck at a layer passes only noise "
            f"(N(mu, sigma^2) of the layer's features). {verdict}</p>" + table_html(rows))


def report_sections(workdir: str, summary: dict, names: Sequence[str]) -> list[tuple[str, str]]:
    """HTML sections: pointing game with the centre baseline, per-metric tables, agreement."""
    from cxr_jax.report import save_matrix, table_html

    pg = summary["pointing_game"]
    rows = [{"method": m, "pointing game (class mean)": v,
             "pooled": summary["pointing_game_pooled"][m]}
            for m, v in sorted(pg.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1))]
    sections = [("Pointing game (centre = always point at the image centre)", table_html(rows))]
    for metric in METRICS:
        trows = []
        for m, per in summary["table"].items():
            if not any(metric in per.get(f, {}) for f in names):
                continue
            vals = {f: per.get(f, {}).get(metric, float("nan")) for f in names}
            trows.append({"method": m, **vals, "mean": _nanmean(list(vals.values()))})
        if trows:
            sections.append((f"{metric} per method x finding", table_html(trows)))
    ag = summary["agreement"]
    if ag["names"]:
        save_matrix(np.array(ag["matrix"], float), ag["names"],
                    os.path.join(workdir, "agreement.png"),
                    title="Box IoU between methods (multi-Otsu boxes)")
        sections.append(("Agreement between methods (box IoU; ground truth last)",
                          '<img src="agreement.png">'))
    return sections


def resolve_methods(model, specs: Mapping[str, Mapping[str, Any]], stats: Mapping[str, Any]
                    ) -> dict[str, tuple[str, dict]]:
    """Method specs from a config into Scorer form.

    Each spec is {"method": registered name, **hparams}. A layer written "layerN.last" means the
    last residual unit of layerN (torchvision's layer4.2 for ResNet-34/50, layer4.0 for the tiny
    ResNet); IBA-family methods get the statistics of their layer(s) from `stats`.
    """

    def layer_name(name):
        if isinstance(name, str) and name.endswith(".last"):
            prefix = name[: -len("last")]
            units = [s for s in model.stages if s.startswith(prefix)]
            if not units:
                raise ValueError(f"No units of {name[:-5]!r} in {model.name}.")
            return units[-1]
        return name

    out = {}
    for out_name, spec in specs.items():
        spec = dict(spec)
        method = spec.pop("method")
        if "layer" in spec:
            layer = spec["layer"]
            if isinstance(layer, (list, tuple)):  # resolved names, duplicates dropped (the
                # tiny ResNet's layer4.last is layer4.0)
                spec["layer"] = list(dict.fromkeys(layer_name(l) for l in layer))
            else:
                spec["layer"] = layer_name(layer)
        if method in IBA_METHODS and "stats" not in spec:
            single, multi = iba_layers(model)
            layer = spec.setdefault("layer", list(multi) if method == "multilayer_iba" else single)
            spec["stats"] = ({l: stats[l] for l in layer} if isinstance(layer, list)
                             else stats[layer])
        out[out_name] = (method, spec)
    return out


def evaluate_checkpoint(workdir: str, checkpoint: str, cfg, *, methods=None,
                        progress: bool = True) -> dict:
    """Loads a trained model, explains held-out images with the chosen methods, scores them and
    writes results.json, evaluation.json, per_image.jsonl, table_<metric>.md/.csv,
    agreement.png, overlays.png and index.html into `workdir`. Resumable.

    Args:
      workdir: output folder.
      checkpoint: a training workdir (experiments.train / quickstart).
      cfg: an evaluation config (experiments/configs/evaluate.py).
      methods: optional {output name: {"method": name, **hparams}} replacing the defaults (the
        papers' configs use it for NormGrad variants and layer choices).
    Returns:
      results dict: {"pointing_game": {method: value, ..., "centre": value}, "table": ...,
      and, when IBA methods ran, "iba_noise": {layer: {finding: score}} (`iba_noise_check`)}.
    """
    from cxr_jax import runtime, training
    from cxr_jax.data import datasets, phantoms
    from cxr_jax.report import write_index

    os.makedirs(workdir, exist_ok=True)
    model, variables, tcfg, names = training.load_trained(checkpoint)
    data_cfg = tcfg.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.dataset = cfg.dataset or tcfg.dataset
        data_cfg.data_dir = cfg.data_dir or tcfg.data_dir
        data_cfg.num_test = cfg.num_test
    loc = datasets.localisation_set(data_cfg, names)
    size = loc.images.shape[1]

    # IBA statistics over training-distribution images.
    single, multi = iba_layers(model)
    need_iba = cfg.iba_samples > 0 and (methods is None or any(
        spec["method"] in IBA_METHODS for spec in methods.values()))
    stats = {}
    if need_iba:
        if data_cfg.dataset.startswith("phantoms"):
            stats_images = phantoms.generate(cfg.iba_samples, image_size=size,
                                             seed=data_cfg.seed * 2 + 1).images
        else:
            train = datasets.build(data_cfg).train
            items = (train[i] for i in range(min(cfg.iba_samples, len(train))))
            stats_images = np.stack([it["image"] for it in items if it["valid"]])
        stats = estimate_iba_stats(workdir, model, variables, stats_images,
                                   sorted({single, *multi}))

    if methods is not None:
        methods = resolve_methods(model, methods, stats)
    else:
        methods = default_methods(model, stats, fast=cfg.fast, regression=tcfg.loss == "mse",
                                  cam_layer=cfg.get("cam_layer") or None)
    if cfg.methods != "all":
        wanted = [m.strip() for m in cfg.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in methods]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; available: {', '.join(methods)}.")
        methods = {m: methods[m] for m in wanted}
    fraction = cfg.fraction
    pps = cfg.pixels_per_step
    if cfg.curve_steps > 0:
        pps = max(1, math.ceil(fraction * size * size / cfg.curve_steps))
    spec = Spec(methods=methods, tolerance=cfg.tolerance_at_224 * size / 224,
                batch_size=cfg.batch_size, max_per_finding=cfg.max_per_finding,
                faithfulness=cfg.faithfulness, pixels_per_step=pps, fraction=fraction,
                blur_sigma=cfg.blur_sigma * size / 224,
                sensitivity_num_n=cfg.sensitivity_num_n, sensitivity_masks=cfg.sensitivity_masks,
                seed=cfg.seed, regression=tcfg.loss == "mse")
    scorer = Scorer(model, spec)
    summary = run(workdir, model, variables, loc.images, loc.masks, loc.labels, loc.names, spec,
                  require_mask=loc.require_mask, progress=progress, scorer=scorer)
    summary["skipped"] += [{"id": p, "reason": r} for p, r in loc.skipped]
    results = {"pointing_game": summary["pointing_game"],
               "pointing_game_pooled": summary["pointing_game_pooled"],
               "table": summary["table"], "agreement": summary["agreement"],
               "counts": summary["counts"], "skipped": summary["skipped"],
               "settings": {"model": tcfg.model, "image_size": size,
                            "dataset": data_cfg.dataset, "tolerance_px": spec.tolerance,
                            "pixels_per_step": pps,
                            "methods": {k: [m, {h: v for h, v in hp.items() if h != "stats"}]
                                        for k, (m, hp) in methods.items()}}}
    # The layers whose statistics the chosen IBA methods use (one IBAStats, or {layer: IBAStats}).
    used = [hp["stats"] for _, hp in methods.values() if "stats" in hp]
    used = [st for u in used for st in (u.values() if isinstance(u, Mapping) else [u])]
    noise_stats = {st.layer: st for st in used}
    if noise_stats:
        results["iba_noise"] = iba_noise_check(model, variables, noise_stats, names,
                                               regression=tcfg.loss == "mse")
    if runtime.is_writer():
        runtime.write_json(os.path.join(workdir, "results.json"), results)
        write_tables(workdir, summary, loc.names)
        gallery(workdir, scorer, variables, loc.images, loc.masks, loc.labels,
                loc.names, per_finding=cfg.gallery_per_finding)
        sections = [("Setup", f"<p>Model {tcfg.model} from {checkpoint}, {data_cfg.dataset} "
                              f"at {size}px; pointing-game tolerance {spec.tolerance:.1f} px; "
                              f"images per finding: {summary['counts']}.</p>")]
        sections += report_sections(workdir, summary, loc.names)
        if "iba_noise" in results:
            sections.append(("IBA noise check", iba_noise_section(results["iba_noise"],
                                                               tcfg.loss == "mse")))
        sections.append(("Overlays (green: ground truth)", '<img src="overlays.png">'))
        write_index(workdir, "cxr_jax evaluation", sections)
    return results
