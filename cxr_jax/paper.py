"""The published comparisons as runnable studies (experiments/paper.py).

A comparison config names models, a training set-up, methods (with their layers and variants),
the metric layout of the paper's table, the paper's published figures (`paper`: method -> the
figure as text) and its claims (`claims`, checked by `check_claims`). `run` trains every model
(resumable), evaluates it with `cxr_jax.evaluation`, and writes the table in the paper's layout,
with 95% bootstrap intervals on our numbers and the paper's figure beside them, as Markdown and
CSV, the claims with their verdicts (claims.md), and an index.html.

Claims (each a dict with "kind", "claim" (the paper's words, short) and kind-specific keys):
  best        {"metric", "methods": name prefixes}: a method of the group scores highest on
              `metric` (for every model, or for "model" only).
  greater     {"metric", "a", "b"}: method a scores above method b (every model or "model").
  agreement   {"model"}: the methods' boxes agree with each other (mean box IoU between pairs of
              methods) more than with the ground truth (mean box IoU against it).
  best_model  {"metric", "models": name prefixes}: averaged over methods, a model of the group
              scores highest.
  untestable  {"why"}: cannot be tested on this data; the reason is stated.
A verdict is "holds", "does not hold" or "a tie" on our point estimates; for the claims that
compare methods (best, greater) it adds whether the 95% intervals of the two sides compared are
separated ("separated") or overlap ("within noise": the data cannot tell the two apart, so a
claim that "holds (within noise)" is ahead on the point estimate only).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from cxr_jax import evaluation, training
from cxr_jax.data import datasets
from cxr_jax.common.files import read_json, write_json, write_text
from cxr_jax.common.trees import plain
from cxr_jax.evaluation import aggregate, engine
from cxr_jax.report import figures, sections, tables, write_index
from cxr_jax.report.html import caption, image

REGRESSION_DATASETS = ("phantoms_severity", "brixia")
LAYOUTS = {
    # (a) foreign objects: one column, the pointing game of each method.
    "pointing_game": ("pointing_game",),
    # (b) methods x architectures x findings: multi-Otsu box IoU (and the agreement matrix).
    "box_iou": ("box_iou",),
    # (c) IBA family against baselines: EHR, insertion, deletion, sensitivity-N, with
    # localisation beside them for the claims about finer maps and about covering the finding.
    "faithfulness": ("ehr", "pointing_game", "box_iou", "box_recall", "insertion", "deletion",
                     "sensitivity_n"),
}


def _data_key(config) -> str:
    """What a training config's dataset depends on: everything but the model."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "model"},
                      sort_keys=True, default=str)


def _train(workdir: str, config, shared: dict) -> datasets.Dataset | None:
    """Trains one model of the comparison, unless a finished run of this budget is there, and
    returns the dataset built for it in this process (None when none was).

    `shared` holds the last dataset built ({"key", "data"}): the comparison's models train on
    the same data, so it is built once (at 224 px, 10,000 phantoms take minutes to render)."""
    key = _data_key(config)
    done = read_json(os.path.join(workdir, "results.json"), {})
    if done.get("steps") != config.steps:
        if shared.get("key") != key:
            shared.clear()  # one dataset held at a time
            shared.update(key=key, data=datasets.build(config))
        training.train_and_evaluate(config, workdir, data=shared["data"])
    return shared["data"] if shared.get("key") == key else None


def _trained_row(tag: str, tdir: str) -> dict:
    """A model's held-out score from its training results: mean and lowest AUROC per finding
    for a classifier, MAE for a regressor."""
    r = read_json(os.path.join(tdir, "results.json"), {})
    row = {"model": tag, "steps": r.get("steps")}
    if r.get("auroc"):
        low = min(r["auroc"], key=r["auroc"].get)
        row.update({"mean AUROC": f"{r['mean_auroc']:.3f}",
                    "lowest AUROC": f"{r['auroc'][low]:.3f} ({low})"})
    for key in ("accuracy", "mae"):
        if key in r:
            row[key] = f"{r[key]:.3f}"
    return row


def _finite_mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _ci_text(ci) -> str:
    if ci is None or not all(v is not None and math.isfinite(v) for v in ci):
        return "n/a"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _findings(c, res: Mapping) -> list[str]:
    """The config's findings, else the model's in its own order: the bootstrap resamples the
    findings one after another, so a reused evaluation must pass them as the live run did
    (results.json sorts "counts"; evaluations written before "findings" fall back to it)."""
    if c.findings:
        return list(c.findings)
    return list(res.get("findings") or res["counts"])


def model_rows(tag: str, res: Mapping, per_image: Sequence[dict], c) -> list[dict]:
    """This model's rows of the paper's table: the layout's metrics as class means over the
    config's findings (all of the model's findings when it names none), each followed by its
    95% bootstrap interval, and the paper's figure for the method when it published one.

    Args:
      tag: the model's name in the table.
      res: its evaluation summary (`evaluation.evaluate_checkpoint`).
      per_image: its per-image rows (`engine.read_rows`), for the intervals.
      c: the comparison config.
    """
    findings = _findings(c, res)
    paper = plain(c.get("paper", {})) or {}
    methods = [m for m in res["table"] if not (m == "centre" and c.layout != "pointing_game")]
    cis = aggregate.intervals(per_image, findings, methods)
    rows = []
    for method in methods:
        per = res["table"][method]
        row = {"model": tag, "method": method}
        for metric in LAYOUTS[c.layout]:
            vals = {f: per.get(f, {}).get(metric, float("nan")) for f in findings}
            if c.layout == "box_iou" and len(findings) > 1:
                row.update(vals)
            name = metric.replace("_", " ")
            row[name] = _finite_mean(vals.values())
            row[f"{name} 95% CI"] = _ci_text(cis[method].get(metric))
        if paper:
            row["paper"] = paper.get(method, "")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ claims
def _in_group(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def _separated(a_ci, b_ci) -> bool:
    """Intervals a and b do not overlap (a finite pair each)."""
    ok = all(v is not None and math.isfinite(v) for v in list(a_ci) + list(b_ci))
    return ok and (a_ci[0] > b_ci[1] or b_ci[0] > a_ci[1])


def _noise(a_ci, b_ci) -> str:
    return "separated" if _separated(a_ci, b_ci) else "within noise"


def _overall_noise(notes: Sequence[str]) -> str | None:
    """One interval note over models: "within noise" if any comparison overlaps."""
    if not notes:
        return None
    return "within noise" if "within noise" in notes else "separated"


def _value(row: Mapping, metric: str) -> tuple[float, tuple[float, float]]:
    name = metric.replace("_", " ")
    v = row.get(name, float("nan"))
    ci = row.get(f"{name} 95% CI", "n/a")
    lohi = tuple(float(s) for s in ci.strip("[]").split(",")) if ci != "n/a" else (np.nan,) * 2
    return (float("nan") if v is None else float(v)), lohi


def _compare(ours: float, other: float) -> bool | str:
    """True when ours is above, False when below, "tie" when equal (e.g. both at a ceiling)."""
    return "tie" if ours == other else bool(ours > other)


def _combine(verdicts: Sequence[bool | str]) -> bool | str | None:
    """One verdict over models: None without any, False if any fails, "tie" if any ties."""
    if not verdicts:
        return None
    if False in verdicts:
        return False
    return "tie" if "tie" in verdicts else True


def _models(rows, claim) -> list[str]:
    tags = list(dict.fromkeys(r["model"] for r in rows))
    return [claim["model"]] if claim.get("model") else tags


def _check_best(rows, claim) -> tuple[bool | str | None, str, str | None]:
    metric, group = claim["metric"], list(claim["methods"])
    holds, notes, noise = [], [], []
    for tag in _models(rows, claim):
        scored = [(r["method"],) + _value(r, metric) for r in rows
                  if r["model"] == tag and r["method"] != "centre"]
        scored = [s for s in scored if math.isfinite(s[1])]
        ours = [s for s in scored if _in_group(s[0], group)]
        others = [s for s in scored if not _in_group(s[0], group)]
        if not ours or not others:
            notes.append(f"{tag}: no scores to compare")
            continue
        best_ours = max(ours, key=lambda s: s[1])
        best_other = max(others, key=lambda s: s[1])
        holds.append(_compare(best_ours[1], best_other[1]))
        noise.append(_noise(best_ours[2], best_other[2]))
        notes.append(f"{tag}: best of the group {best_ours[0]} {best_ours[1]:.3f}, best other "
                     f"{best_other[0]} {best_other[1]:.3f} ({noise[-1]})")
    return _combine(holds), "; ".join(notes), _overall_noise(noise)


def _check_greater(rows, claim) -> tuple[bool | str | None, str, str | None]:
    metric, a, b = claim["metric"], claim["a"], claim["b"]
    holds, notes, noise = [], [], []
    for tag in _models(rows, claim):
        by = {r["method"]: _value(r, metric) for r in rows if r["model"] == tag}
        if a not in by or b not in by or not (math.isfinite(by[a][0])
                                              and math.isfinite(by[b][0])):
            notes.append(f"{tag}: {a} or {b} not scored")
            continue
        holds.append(_compare(by[a][0], by[b][0]))
        noise.append(_noise(by[a][1], by[b][1]))
        notes.append(f"{tag}: {a} {by[a][0]:.3f} vs {b} {by[b][0]:.3f} ({noise[-1]})")
    return _combine(holds), "; ".join(notes), _overall_noise(noise)


def agreement_means(names: Sequence[str], matrix) -> tuple[float, float]:
    """(mean box IoU between pairs of methods, mean box IoU of the methods against the ground
    truth) from an agreement matrix whose last row and column are the ground truth."""
    m = np.asarray(matrix, float)
    if len(names) < 3 or m.shape != (len(names), len(names)):
        return float("nan"), float("nan")
    k = len(names) - 1
    pairs = m[:k, :k][~np.eye(k, dtype=bool)]
    return float(np.nanmean(pairs)), float(np.nanmean(m[k, :k]))


def _check_agreement(results, claim) -> tuple[bool | None, str]:
    holds, notes = [], []
    for tag in ([claim["model"]] if claim.get("model") else list(results)):
        agree = results.get(tag, {}).get("agreement", {})
        between, truth = agreement_means(agree.get("names", []), agree.get("matrix", []))
        if not (math.isfinite(between) and math.isfinite(truth)):
            notes.append(f"{tag}: no agreement matrix")
            continue
        holds.append(_compare(between, truth))
        notes.append(f"{tag}: methods vs each other {between:.3f}, vs ground truth {truth:.3f}")
    return _combine(holds), "; ".join(notes)


def _check_best_model(rows, claim) -> tuple[bool | None, str]:
    metric, group = claim["metric"], list(claim["models"])
    means = {}
    for tag in dict.fromkeys(r["model"] for r in rows):
        means[tag] = _finite_mean([_value(r, metric)[0] for r in rows
                                   if r["model"] == tag and r["method"] != "centre"])
    scored = {t: v for t, v in means.items() if math.isfinite(v)}
    ours = {t: v for t, v in scored.items() if _in_group(t, group)}
    others = {t: v for t, v in scored.items() if not _in_group(t, group)}
    if not ours or not others:
        return None, "not enough models scored"
    text = ", ".join(f"{t} {v:.3f}" for t, v in sorted(scored.items(), key=lambda kv: -kv[1]))
    return _compare(max(ours.values()), max(others.values())), f"mean over methods: {text}"


def check_claims(claims: Sequence[Mapping], rows: Sequence[dict], results: Mapping
                 ) -> list[dict]:
    """Each claim with our verdict: {"claim", "paper", "verdict", "evidence"}; verdict is
    "holds on phantoms", "does not hold on phantoms", "a tie on phantoms" (the two sides score
    the same, e.g. both at the ceiling: the data cannot separate them), with the claim's "data"
    in place of "phantoms" for a real dataset, or "cannot be tested here". A comparison of
    methods (best, greater) adds " (separated)" or " (within noise)" from the 95% intervals.

    Args:
      claims: the config's claims (see the module doc).
      rows: the table's rows (`model_rows` of every model).
      results: {model tag: evaluation summary} (for the agreement matrices).
    """
    checks = {"best": lambda c: _check_best(rows, c),
              "greater": lambda c: _check_greater(rows, c),
              "agreement": lambda c: _check_agreement(results, c) + (None,),
              "best_model": lambda c: _check_best_model(rows, c) + (None,)}
    out = []
    for claim in claims:
        claim = dict(plain(claim))
        kind, data = claim.get("kind"), claim.get("data", "phantoms")
        noise = None
        if kind == "untestable":
            verdict, evidence = None, claim["why"]
        elif kind in checks:
            verdict, evidence, noise = checks[kind](claim)
        else:
            raise ValueError(f"Unknown claim kind {kind!r}: one of {', '.join(checks)}, "
                             "untestable.")
        text = ("cannot be tested here" if verdict is None else
                f"a tie on {data}" if verdict == "tie" else
                f"holds on {data}" if verdict else f"does not hold on {data}")
        if verdict is not None and verdict != "tie" and noise:
            text += f" ({noise})"
        out.append({"claim": claim["claim"], "paper": claim.get("paper", ""), "verdict": text,
                    "evidence": evidence})
    return out


# -------------------------------------------------------------------------------------- run
def _headline(workdir: str, tag: str, rows: Sequence[dict], counts: Mapping[str, int], c
              ) -> tuple[str, str] | None:
    """A dot plot of the layout's first metric with its intervals, for one model."""
    metric = LAYOUTS[c.layout][0]
    scores, cis = {}, {}
    for r in rows:
        if r["model"] == tag:
            scores[r["method"]], cis[r["method"]] = _value(r, metric)
    if not any(math.isfinite(v) for v in scores.values()):
        return None
    name = f"{tag}_{metric}.png"
    figures.save_intervals(scores, cis, os.path.join(workdir, name),
                           xlabel=metric.replace("_", " "))
    return (f"{tag}: {metric.replace('_', ' ')} with 95% intervals",
            image(name) + caption("Dot: our class mean over the findings; line: its 95% "
                                  "stratified bootstrap interval (images resampled within each "
                                  "finding). Images per finding: " +
                                  sections.counts_text(counts) + "."))


def run(workdir: str, c) -> dict:
    """Trains and evaluates every model of comparison `c`; writes table.md/.csv, claims.md and
    index.html.

    Returns:
      {model: the evaluation results of that model}.
    """
    data_dirs = c.get("data_dirs", {})
    for entry in c.models:
        dataset = entry.partition("@")[2]
        if dataset in data_dirs and not data_dirs[dataset]:
            raise ValueError(f"Model entry {entry!r} trains on {dataset!r}, whose folder is not "
                             f"set: pass --config.data_dirs.{dataset}=FOLDER, or leave the "
                             f"entry out of --config.models.")
    os.makedirs(workdir, exist_ok=True)
    results, figs, rows, shared, trained = {}, [], [], {}, []
    for entry in c.models:
        # "model" or "model@dataset" (e.g. a severity regressor beside a classifier).
        model_name, _, dataset = entry.partition("@")
        tcfg = c.train.copy_and_resolve_references()
        ecfg = c.eval
        with tcfg.unlocked():
            tcfg.model = model_name
            tcfg.dataset = dataset or tcfg.dataset
            if dataset:  # its own folder (c.data_dirs), and evaluated on that dataset
                tcfg.data_dir = data_dirs.get(dataset, tcfg.data_dir)
                ecfg = c.eval.copy_and_resolve_references()
                with ecfg.unlocked():
                    ecfg.dataset, ecfg.data_dir = dataset, tcfg.data_dir
        tag = entry.replace("@", "_")
        tdir = os.path.join(workdir, tag, "train")
        edir = os.path.join(workdir, tag, "eval")
        methods = evaluation.for_task(c.methods.to_dict(),
                                      regression=tcfg.dataset in REGRESSION_DATASETS)
        data = _train(tdir, tcfg, shared)
        trained.append(_trained_row(tag, tdir))
        res = evaluation.evaluate_checkpoint(edir, tdir, ecfg, methods=methods, data=data)
        results[tag] = res
        model_part = model_rows(tag, res, engine.read_rows(edir), c)
        rows += model_part
        findings = _findings(c, res)
        head = _headline(workdir, tag, model_part,
                         {f: res["counts"].get(f, 0) for f in findings}, c)
        figs += [head] if head else []
        if os.path.exists(os.path.join(edir, "agreement.png")):
            figs.append(sections.figure(f"{tag}: agreement between methods (box IoU)",
                                        os.path.join(tag, "eval", "agreement.png")))
        if os.path.exists(os.path.join(edir, "overlays.png")):  # not kept with copied results
            figs.append(sections.figure(f"{tag}: overlays",
                                        os.path.join(tag, "eval", "overlays.png")))
    tables.write(os.path.join(workdir, "table"), rows, title=c.title)
    verdicts = check_claims(list(c.get("claims", [])), rows, results)
    claim_cols = ["claim", "paper", "verdict", "evidence"]
    write_text(os.path.join(workdir, "claims.md"),
               f"{c.title}: the paper's claims\n\n" + tables.markdown(verdicts, claim_cols))
    write_json(os.path.join(workdir, "results.json"),
               {"title": c.title, "rows": rows, "claims": verdicts,
                "pointing_game": {m: r["pointing_game"] for m, r in results.items()}})
    write_index(workdir, c.title,
                [("The paper's claims, checked", tables.html(verdicts, claim_cols)),
                 ("Table (as in the paper), with 95% intervals", tables.html(rows)),
                 ("The trained models, on held-out images", tables.html(trained)),
                 ("Note", f"<p>{c.note}</p>")] + figs)
    return results
