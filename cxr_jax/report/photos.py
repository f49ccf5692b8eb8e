"""The photo study's report: drop heatmaps, AUROC-vs-level curves, explanation stability, the
transform grid, tables and index.html (`cxr_jax.photos.study` computes the numbers)."""

from __future__ import annotations

import html
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cxr_jax.data.photo import batched  # noqa: E402
from cxr_jax.report import figures, tables, write_index  # noqa: E402
from cxr_jax.report.html import caption, collapsed, image  # noqa: E402

ORIGINAL = "original"


def _split(key: str) -> tuple[str, int]:
    if "@" in key:
        name, level = key.split("@")
        return name, int(level)
    return key, 0


def _layout(conditions) -> tuple[list[str], list[int]]:
    """Transforms (rows, in condition order) and levels (columns) of the condition keys."""
    rows, cols = [], []
    for key in conditions:
        name, level = _split(key)
        if name not in rows:
            rows.append(name)
        if level and level not in cols:
            cols.append(level)
    return rows, sorted(cols)


def _matrix(by: Mapping, conditions, value) -> tuple[np.ndarray, list[str], list[str]]:
    rows, levels = _layout(conditions)
    out = np.full((len(rows), len(levels)), np.nan)
    for key in conditions:
        name, level = _split(key)
        out[rows.index(name), levels.index(level) if level else 0] = value(by[key])
    return out, rows, [f"level {v}" for v in levels]


def drop_heatmap(path: str, model: str, by: Mapping, conditions) -> str:
    """Mean AUROC change from the originals, transform x level (JPEG in the first column)."""
    m, rows, cols = _matrix(by, conditions, lambda r: r["mean_delta"])
    span = max(0.02, float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.02)
    return figures.save_heatmap(m, rows, cols, path, cmap="RdBu", vmin=-span, vmax=span,
                                title=f"{model}: mean AUROC change from the originals")


def auroc_curves(path: str, results: Mapping) -> str:
    """Mean AUROC against level, one line per transform, one panel per model (level 0: the
    originals)."""
    cls = results["classification"]
    conds = results["conditions"]
    rows, levels = _layout(conds)
    fig, axes = plt.subplots(1, len(cls), figsize=(5.2 * len(cls), 4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (model, by) in zip(axes[0], cls.items()):
        base = by[ORIGINAL]["mean_auroc"]
        for i, name in enumerate(rows):
            pts = [(0, base)] + [(lv, by[f"{name}@{lv}"]["mean_auroc"]) for lv in levels
                                 if f"{name}@{lv}" in by]
            if len(pts) > 1:
                ax.plot(*zip(*pts), "o-", ms=3, color=cmap(i % 20), label=name)
            elif name in by:
                ax.plot([1], [by[name]["mean_auroc"]], "s", color=cmap(i % 20), label=name)
        ax.set(xlabel="level (0 = original)", ylabel="mean AUROC", title=model,
               xticks=[0, *levels])
        ax.grid(color="#ddd", lw=0.6)
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return figures.save(fig, path)


def stability_heatmap(path: str, model: str, by: Mapping, conditions, key: str,
                      title: str) -> str:
    """Methods x transforms: `key` ("spearman", "ssim", "pointing_game") averaged over levels."""
    rows, _ = _layout(conditions)
    methods = list(next(iter(by.values())))
    m = np.full((len(methods), len(rows)), np.nan)
    for j, name in enumerate(rows):
        vals = [[by[c][meth][key] for c in conditions if _split(c)[0] == name]
                for meth in methods]
        for i, v in enumerate(vals):
            v = np.asarray(v, float)
            m[i, j] = np.nanmean(v) if np.isfinite(v).any() else np.nan
    return figures.save_heatmap(m, methods, rows, path, title=f"{model}: {title}",
                                vmin=0.0 if key != "spearman" else -0.2, vmax=1.0, rotation=45)


def transform_grid(path: str, workdir: str, model: str, methods, conditions, grid_level: int,
                   example: np.ndarray, mask: np.ndarray, original_maps: Mapping) -> str | None:
    """One explained image under every transform at `grid_level` (and JPEG), with each
    method's map on the photo (its own frame) and the finding's mask moved with it."""
    keys = [k for k in conditions if _split(k)[1] in (0, grid_level)]
    imgs, masks, titles = [example], [mask], ["original"]
    maps = {m: [original_maps[m][0]] for m in methods}
    for key in keys:
        g = os.path.join(workdir, "grid", f"{key}.npz")
        e = os.path.join(workdir, "maps", model, f"{key}.npz")
        if not (os.path.exists(g) and os.path.exists(e)):
            continue
        with np.load(g) as f, np.load(e) as h:
            if not all(f"map_{m}" in h.files for m in methods):
                continue
            imgs.append(f["photo"][0])
            if "matrix" in f.files:
                moved = batched.warp_masks(jnp.asarray(mask[None, None]),
                                           jnp.asarray(f["matrix"][:1]))
                masks.append(np.asarray(moved)[0, 0])
            else:
                masks.append(mask)
            for m in methods:
                maps[m].append(h[f"map_{m}"][0])
        titles.append(key)
    if len(imgs) < 2:
        return None
    return figures.save_overlays(np.stack(imgs), {m: np.stack(v) for m, v in maps.items()},
                                 path, masks=np.stack(masks), row_titles=titles)


def _classification_rows(results) -> list[dict]:
    rows = []
    for model, by in results["classification"].items():
        for key, r in by.items():
            lo, hi = r["mean_delta_ci"]
            rows.append({"model": model, "condition": key, "mean AUROC": r["mean_auroc"],
                         "change": r["mean_delta"], "95% CI low": lo, "95% CI high": hi,
                         "mean MCC": r["mean_mcc"],
                         **{f"AUROC {f}": v for f, v in r["auroc"].items()}})
    return rows


def _explanation_rows(results) -> list[dict]:
    rows = []
    for model, by in results["explanation"].items():
        for key, per in by.items():
            for method, r in per.items():
                rows.append({"model": model, "condition": key, "method": method,
                             "pointing game": r["pointing_game"], "Spearman": r["spearman"],
                             "SSIM": r["ssim"],
                             "Spearman, same decision": r["spearman_same_decision"],
                             "Spearman, changed decision": r["spearman_changed_decision"],
                             "decisions changed": r["changed"]})
    return rows


def write(workdir: str, results: Mapping, example: np.ndarray, mask: np.ndarray,
          original_maps: Mapping) -> str:
    """Figures, CSV/Markdown tables and index.html of the photo study; returns the index path.

    Args:
      example, mask: the first explained image [H, W] (unit scale) and its finding mask.
      original_maps: {method: [1, H, W]} the first model's maps of that image.
    """
    fig_dir = os.path.join(workdir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    conds = results["conditions"]
    cls, expl = results["classification"], results["explanation"]
    models = list(cls)
    cfg = results["config"]
    tables.write(os.path.join(workdir, "classification"), _classification_rows(results))
    tables.write(os.path.join(workdir, "explanation"), _explanation_rows(results))
    page = [("What the numbers say", "<ul>" + "".join(
        f"<li>{html.escape(s)}</li>" for s in results["answers"]) + "</ul>")]
    setup = (f"<p>{len(results['classification'][models[0]][ORIGINAL]['auroc'])} findings, "
             f"{cfg['num_test']} held-out phantoms at {cfg['image_size']} px, "
             f"{len(conds)} conditions (levels {', '.join(map(str, cfg['levels']))}"
             f"{', JPEG quality 75' if cfg['jpeg'] else ''}); {len(results['explained']['indices'])}"
             f" images explained with {', '.join(cfg['methods'])}. Models: "
             + "; ".join(f"<b>{html.escape(m)}</b> (mean AUROC {r['mean_auroc']:.3f}"
                         f"{', photo augmentation' if r.get('augmented') else ''})"
                         for m, r in results["models"].items()) + ".</p>")
    page.append(("Setup", setup))
    heat = [drop_heatmap(os.path.join(fig_dir, f"drop_{i}.png"), m, cls[m], conds)
            for i, m in enumerate(models)]
    page.append(("AUROC change under each transform", "".join(
        image(os.path.relpath(p, workdir)) for p in heat) + caption(
        "Mean AUROC over the findings on the photos minus the same on the originals (the same "
        "images), per transform and level; blue cells gained, red cells lost. The tables below "
        "give each cell's paired bootstrap 95% interval (the same resampled images on both "
        "sides).")))
    curves = auroc_curves(os.path.join(fig_dir, "auroc_levels.png"), results)
    page.append(("Mean AUROC against level", image(os.path.relpath(curves, workdir))))
    for i, m in enumerate(models):
        if not expl.get(m):
            continue
        rho = stability_heatmap(os.path.join(fig_dir, f"stability_{i}.png"), m, expl[m], conds,
                                "spearman", "Spearman, photo map vs original map")
        pg = stability_heatmap(os.path.join(fig_dir, f"pointing_{i}.png"), m, expl[m], conds,
                               "pointing_game", "pointing game on the photos")
        orig = results["original_pointing_game"][m]
        page.append((f"Explanation stability: {m}", image(os.path.relpath(rho, workdir))
                     + image(os.path.relpath(pg, workdir)) + caption(
            "Averaged over levels. Spearman: rank correlation between the map on the original "
            "and the map on the photo, the photo's map pulled back into the original frame for "
            "tilt, rotation, translation and the photographic recipe and compared over the "
            "part of the original the photo still shows. Pointing game: the photo's map "
            "against the finding's mask moved with the image. On the originals: "
            + ", ".join(f"{k} {v:.2f}" for k, v in orig.items()) + ".")))
    grid = transform_grid(os.path.join(fig_dir, "grid.png"), workdir, models[0],
                          list(cfg["methods"]), conds, cfg["grid_level"], example, mask,
                          original_maps)
    if grid:
        page.append((f"One image under every transform (level {cfg['grid_level']})",
                     image(os.path.relpath(grid, workdir)) + caption(
                         f"{models[0]}'s maps of the explained finding on each photo, in the "
                         "photo's frame; green: the finding's mask moved with the image. "
                         + figures.OVERLAY_CAPTION)))
    if results.get("remedy"):
        page.append(("Does photo augmentation help?", tables.html([
            {"model": k, "plain model": r["base"], "mean change, plain": r["mean_delta_base"],
             "mean change, augmented": r["mean_delta_augmented"],
             "share of the drop recovered": r["share_recovered"]}
            for k, r in results["remedy"].items()])))
    costs = results.get("costs", {})
    page.append(collapsed("What the transforms cost", tables.html(
        [{"transform": k, "ms per image": v} for k, v in costs.get("photo_ms_per_image",
                                                                     {}).items()]
        + [{"transform": f"forward pass of {k}", "ms per image": v}
           for k, v in costs.get("forward_ms_per_image", {}).items()])
        + caption("Milliseconds per image after compilation, batches of "
                  f"{cfg['photo_batch']} (transforms) and {cfg['eval_batch_size']} (forward "
                  "passes), measured in this run.")))
    page.append(collapsed("Classification tables", tables.html(_classification_rows(results))))
    page.append(collapsed("Explanation tables", tables.html(_explanation_rows(results))))
    page.append(collapsed("Phase times", tables.html(
        [{"phase": k, "seconds": round(v, 1)} for k, v in results.get("seconds", {}).items()])))
    return write_index(workdir, "cxr_jax: photos of X-rays", page)


def write_real(workdir: str, results: Mapping) -> str:
    """index.html and tables of the real CheXphoto run (`cxr_jax.photos.real.run_real`)."""
    from cxr_jax.photos.real import rows

    table = rows(results)
    tables.write(os.path.join(workdir, "real_classification"), table)
    subsets = ", ".join(f"{k} ({v} pairs)" for k, v in results["subsets"].items())
    page = [("Setup", f"<p>CheXphoto photos paired with their CheXpert originals: {subsets}; "
                      f"{results['unpaired']} photos without an original were left out and "
                      f"{len(results['skipped'])} unreadable images skipped (results.json lists "
                      "them). Tasks per model: " + "; ".join(
                          f"<b>{html.escape(m)}</b> {', '.join(t)}"
                          + (f" (missing: {', '.join(results['missing_tasks'][m])})"
                             if results["missing_tasks"][m] else "")
                          for m, t in results["tasks"].items()) + ".</p>"),
            ("AUROC on photos and originals", tables.html(table) + caption(
                "Change: mean AUROC over the tasks on the photos minus the same on their "
                "originals, with a paired bootstrap 95% interval (the same resampled pairs on "
                "both sides). results.json also holds the MCC of the photos at the threshold "
                "that maximised MCC on the originals."))]
    return write_index(workdir, "cxr_jax: CheXphoto photos against their originals", page)
