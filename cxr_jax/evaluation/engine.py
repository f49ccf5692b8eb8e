"""The scoring engine: explain positives with every method, score each map, write rows.

For every finding, the images that show it are explained with every method (target = that
finding), and each map is scored against the finding's ground-truth region: pointing game,
multi-Otsu box IoU, effective heat ratio, insertion and deletion AUC, and sensitivity-N. A
centre-point baseline is scored beside the methods. Per-image results are appended to
`per_image.jsonl` batch by batch as they come, so a killed run loses at most one batch and a
rerun skips what is done; an image with NaN/Inf pixels, or a batch that fails, is reported and
skipped without ending the run. A method whose map holds NaN scores NaN on that image, never
a hit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
import traceback
from typing import Any, Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cxr_jax import attribution, metrics, runtime
from cxr_jax.common import sharding
from cxr_jax.common.files import write_json
from cxr_jax.common.progress import progress as progress_bar
from cxr_jax.common.targets import pick
from cxr_jax.evaluation.aggregate import METRICS, summarise


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to compute.

    Attributes:
      methods: {output name: (registered method, hparams)} (a `Prepared` method is such a pair);
        one method may appear several times with different settings (e.g. NormGrad variants and
        layers). Methods that need data-derived inputs (IBA statistics) must have them in their
        hparams: get them with `cxr_jax.attribution.prepare_all`.
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


class Scorer:
    """Jitted explainers and metric functions for one model; reused across batches and runs.

    Each batch is sharded over `mesh` (default: every device of every process), the variables
    replicated; the methods and metrics are the same pure functions, partitioned by `jax.jit`.
    `rows` is the batch size rounded up to a multiple of the device count; `score` pads a
    shorter batch to it. With several processes, each passes the same batch and puts only its
    slice of the rows on its devices; every process gets every row's scores back.
    """

    def __init__(self, model, spec: Spec, mesh: Mesh | None = None):
        self.model = model
        self.spec = spec
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        procs = jax.process_count()
        self.rows = sharding.local_rows(-(-spec.batch_size // procs), self.mesh) * procs
        self._replicated = (None, None)
        self.seconds = {"explanation": 0.0, "metrics": 0.0}  # wall time spent, compiles included
        self.explain = {}
        for out_name, (method, hp) in spec.methods.items():
            fn = attribution.get(method)
            self.explain[out_name] = jax.jit(functools.partial(self._call, fn, dict(hp)))
        self._pg = jax.jit(functools.partial(metrics.pointing_game, tolerance=spec.tolerance))
        curve = dict(baseline="blur", sigma=spec.blur_sigma, pixels_per_step=spec.pixels_per_step,
                     fraction=spec.fraction)

        def curve_target(t):  # class indices (sigmoid scores) or, for a regressor, raw outputs
            return (lambda logits: pick(logits, t)) if spec.regression else t

        def faithfulness(v, x, sals, t):
            """Insertion and deletion AUC [M, B] of M methods' maps [M, B, H, W]: the maps
            ride along the batch axis of one call (one ranking, one compiled program)."""
            m, b = sals.shape[:2]
            xs = jnp.broadcast_to(x, (m,) + x.shape).reshape((m * b,) + x.shape[1:])
            ins, dele = metrics.insertion_deletion(
                model, v, xs, sals.reshape((m * b,) + sals.shape[2:]),
                curve_target(jnp.tile(t, m)), steps_per_batch=max(1, 16 // m), **curve)
            return ins.auc.reshape(m, b), dele.auc.reshape(m, b)

        self._faith = jax.jit(faithfulness)
        self._sens = jax.jit(lambda v, x, s, t, k: jnp.mean(metrics.sensitivity_n(
            model, v, x, s, t, key=k, num_n=spec.sensitivity_num_n,
            num_masks=spec.sensitivity_masks).correlation, axis=-1))

    def _call(self, fn, hp, variables, x, targets, key):
        return fn(self.model, variables, x, targets, key=key, **hp)

    def score(self, variables, x: np.ndarray, masks: np.ndarray, targets: np.ndarray,
              key, *, maps: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """Per-image metric values for every method (and the centre baseline) on one batch:
        every method's maps first, then the metrics (the model-querying ones of all methods
        in one call). With `maps`, each method's entry also holds its maps under "map"
        ([n, H, W] float32 on the host, NaN set to 0, as they were scored)."""
        spec = self.spec
        masks = np.asarray(masks)
        # Padded to `rows` (one compiled shape); `_score_maps` cuts results back to n rows.
        variables, (x, t, masks_dev) = self._place(variables, x, targets, masks)
        gt_boxes = np.stack([metrics.mask_box(m) for m in masks])
        out = {"centre": {"pointing_game": np.asarray(
            metrics.pointing_game_centre(masks, tolerance=spec.tolerance))}}
        start = time.perf_counter()
        raws, keys = {}, {}
        for i, (name, fn) in enumerate(self.explain.items()):
            keys[name] = jax.random.fold_in(key, i)
            raws[name] = fn(variables, x, t, keys[name]).astype(jnp.float32).block_until_ready()
        mid = time.perf_counter()
        faith = None
        if spec.faithfulness and raws:
            sals = jnp.stack([jnp.nan_to_num(r) for r in raws.values()])
            faith = sharding.gather(self._faith(variables, x, sals, t))
        for i, name in enumerate(raws):
            curves = None if faith is None else (faith[0][i], faith[1][i])
            out[name] = self._score_maps(variables, x, masks, masks_dev, t, keys[name],
                                         raws[name], gt_boxes, curves)
            if not maps:
                del out[name]["map"]
        self.seconds["explanation"] += mid - start
        self.seconds["metrics"] += time.perf_counter() - mid
        return out

    def maps(self, variables, x: np.ndarray, targets: np.ndarray, key) -> dict[str, np.ndarray]:
        """Every method's maps [n, H, W] (float32, on the host) for one batch of 1 to `rows`
        images, from the same compiled programs as `score` (the batch is placed the same way,
        so nothing compiles again). With several processes, every process calls it."""
        n = len(x)
        variables, (x, t) = self._place(variables, x, targets)
        return {name: sharding.gather(fn(variables, x, t, jax.random.fold_in(key, i))
                                      .astype(jnp.float32))[:n]
                for i, (name, fn) in enumerate(self.explain.items())}

    def _place(self, variables, x, targets, *more):
        """(the variables on every device, (x, targets, *more) padded to `rows` and sharded
        like the batch) for a batch of 1 to `rows` images; `targets` broadcast to one per
        image."""
        n = len(x)
        if not 1 <= n <= self.rows:
            raise ValueError(f"Expected 1 to {self.rows} images (Scorer.rows), got {n}.")
        targets = np.broadcast_to(np.asarray(targets, np.int32), (n,))
        return (self._replicate(variables),
                sharding.place_rows((x, targets) + more, self.mesh, self.rows))

    def _replicate(self, variables):
        """The variables on every device of the mesh (placed once per variables object)."""
        if self._replicated[0] is not variables:
            self._replicated = (variables, sharding.replicate(variables, self.mesh))
        return self._replicated[1]

    def _score_maps(self, variables, x, masks, masks_dev, t, k, raw, gt_boxes, curves
                    ) -> dict[str, np.ndarray]:
        """Every metric of one method's maps (`curves`: its insertion and deletion AUC, or
        None); images whose map holds NaN score NaN. `masks` [n] on the host, `masks_dev` the
        same padded to the scorer's rows and sharded like the batch; results keep n rows."""
        spec, n = self.spec, len(masks)
        sal = jnp.nan_to_num(raw)
        nan_map, sal_np, pg = (a[:n] for a in sharding.gather(
            (jnp.any(jnp.isnan(raw), axis=(1, 2)), sal, self._pg(raw, masks_dev))))
        boxes = np.stack([metrics.boxes_from_saliency(s) for s in sal_np])
        res = {
            "pointing_game": pg,
            "box_iou": np.asarray(metrics.box_iou(boxes, gt_boxes)),
            "ehr": np.asarray(metrics.effective_heat_ratio(sal_np, masks)),
            "box": boxes,
            "peak": np.asarray(metrics.saliency_peaks(sal_np)),
            "map": sal_np,
        }
        if curves is not None:
            res["insertion"], res["deletion"] = curves[0][:n], curves[1][:n]
        if spec.sensitivity_num_n > 0 and spec.sensitivity_masks > 0:
            res["sensitivity_n"] = sharding.gather(self._sens(variables, x, sal, t, k))[:n]
        if nan_map.any():
            for metric in METRICS:
                if metric in res:
                    res[metric] = np.where(nan_map, np.nan, res[metric].astype(float))
            res["box"] = np.where(nan_map[:, None], np.nan, boxes)
        res["nan_map"] = nan_map
        return res


# ------------------------------------------------------------------------------ rows on disk
def _read_done(path: str) -> dict:
    """Rows already written, keyed by (finding, id): a batch redone after a cut line replaces
    its earlier rows instead of counting twice."""
    rows = {}
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
    return rows


def read_rows(workdir: str) -> list[dict]:
    """The per-image rows an evaluation in `workdir` wrote (per_image.jsonl), one per (finding,
    image)."""
    return list(_read_done(os.path.join(workdir, "per_image.jsonl")).values())


def _end_cut_line(path: str) -> None:
    """Ends a last line cut short by a kill, so the next row starts on its own line."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:
            with open(path, "a") as f:
                f.write("\n")


def _jsonable(v):
    """Numpy values as JSON-ready Python values, NaN/Inf as null."""
    if isinstance(v, (np.ndarray, np.generic)):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(a) for a in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _work(finite, masks, labels, finding_names, spec, require_mask, done) -> list:
    """(finding index, finding, image ids) batches still to do, finding by finding."""
    work = []
    for k, name in enumerate(finding_names):
        has_region = masks[:, k].reshape(len(masks), -1).any(1) | (not require_mask)
        ids = np.nonzero((labels[:, k] == 1) & has_region & finite)[0]
        if spec.max_per_finding is not None:
            ids = ids[:spec.max_per_finding]
        for start in range(0, len(ids), spec.batch_size):
            batch = ids[start:start + spec.batch_size]
            if not all((name, int(i)) in done for i in batch):
                work.append((k, name, batch))
    return work


def run(workdir: str, model, variables, images: np.ndarray, masks: np.ndarray,
        labels: np.ndarray, finding_names: Sequence[str], spec: Spec,
        *, require_mask: bool = True, progress: bool = True,
        scorer: Scorer | None = None, keep: Collection[tuple[int, int]] = ()) -> dict:
    """Explains and scores every (positive image, finding) pair; resumable.

    Args:
      workdir: output folder; `per_image.jsonl` is appended to as batches finish. With
        several processes every process computes every batch (each on its own devices' rows)
        and process 0 writes; resuming then needs the folder on a filesystem all processes
        read, as orbax checkpoints do.
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
      keep: (finding index, image id) pairs whose maps to return (e.g. the report's gallery),
        when this call scores them; pairs scored by an earlier run are not kept (their maps
        were not saved).
    Returns:
      The summary (see `summarise`) with "skipped", also written to workdir/evaluation.json;
      with `keep`, also "maps": {(finding index, image id): {method: map [H, W]}} for the
      pairs this call scored (not written).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "per_image.jsonl")
    rows = _read_done(path)
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    skipped = [{"id": int(i), "reason": "NaN or Inf pixels"} for i in np.nonzero(~finite)[0]]
    for s in skipped:
        logging.warning("Skipping image %d: %s", s["id"], s["reason"])
    scorer = scorer if scorer is not None else Scorer(model, spec)
    key = jax.random.key(spec.seed)
    work = _work(finite, masks, labels, finding_names, spec, require_mask, set(rows))
    bar = progress_bar(len(work), desc="explain+score", unit="batch") if progress and work \
        else None
    writer = runtime.is_writer()  # with several processes, process 0 writes
    keep, kept = set(keep), {}
    if writer:
        _end_cut_line(path)
    with open(path if writer else os.devnull, "a") as f:
        for k, name, batch in work:
            wanted = [j for j, i in enumerate(batch) if (k, int(i)) in keep]
            try:  # (the scorer pads a short batch to its rows)
                res = scorer.score(variables, images[batch], masks[batch, k],
                                   np.full(len(batch), k), jax.random.fold_in(key, k * 100003
                                                                              + int(batch[0])),
                                   maps=bool(wanted))
            except Exception as err:  # one failing batch is reported, the run goes on
                logging.error("Batch of %s (images %s) failed: %s\n%s", name, batch.tolist(),
                              err, traceback.format_exc())
                skipped += [{"id": int(i), "finding": name, "reason": str(err)} for i in batch]
                continue
            for j in wanted:
                kept[(k, int(batch[j]))] = {m: vals["map"][j] for m, vals in res.items()
                                            if "map" in vals}
            for vals in res.values():
                vals.pop("map", None)
            for j, i in enumerate(batch):
                row = {"id": int(i), "finding": name,
                       "gt_box": _jsonable(metrics.mask_box(masks[i, k]))}
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
    if writer:
        write_json(os.path.join(workdir, "evaluation.json"), summary)
    if keep:
        summary["maps"] = kept
    return summary
