"""The GAN study's report: negative twins, strips, response curves, maps over the finding's
mask, the localisation / anatomy / disentanglement / monotonicity / sample-quality tables and
the GAN's training curves, as index.html (`cxr_jax.generative.study` computes the numbers)."""

from __future__ import annotations

import html
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxr_jax.report import figures, tables, write_index  # noqa: E402
from cxr_jax.report.html import caption, collapsed, image  # noqa: E402

#: Section headings of index.html, in page order (the GAN-training and phase-time sections
#: are folded).
SECTIONS = ("What the numbers say", "Setup", "Negative twins", "Strips along the latent path",
            "Response curves", "Maps over the finding mask", "Localisation",
            "Anatomy kept", "Disentanglement", "Response monotonicity",
            "Sample quality (Frechet distance)", "GAN training", "Phase times")
_LABELS = {"difference": "difference map", "latent_ig": "latent IG", "gradcam": "Grad-CAM",
           "integrated_gradients": "IG", "centre": "centre (baseline)"}


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def response_figure(path: str, alphas, curves, finding: str, threshold: float) -> str:
    """p(finding) against alpha: one thin line per image, their mean thick."""
    curves = np.asarray(curves, float)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for c in curves:
        ax.plot(alphas, c, "-", color="tab:blue", alpha=0.35, lw=0.9)
    ax.plot(alphas, curves.mean(0), "o-", color="tab:red", lw=2, ms=3, label="mean")
    ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="alpha (0: negative twin, 1: reconstruction)", ylabel=f"p({finding})",
           ylim=(-0.02, 1.02), title="Response along G(z_a, alpha z_p)")
    ax.grid(color="#ddd", lw=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figures.save(fig, path)


def training_figure(path: str, history) -> str | None:
    """The GAN's losses and the classifier's mean probability on generated positives and
    negatives against step."""
    if not history:
        return None
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for key in ("loss_d", "loss_g", "adversarial", "guidance"):
        axes[0].plot(steps, [h[key] for h in history], "o-", ms=3, label=key)
    axes[0].set(xlabel="step", title="Losses")
    axes[0].legend(fontsize=7)
    for key in ("p_positive", "p_negative"):
        axes[1].plot(steps, [h[key] for h in history], "o-", ms=3, label=key)
    axes[1].set(xlabel="step", ylim=(-0.02, 1.02),
                title="Classifier on generated positives / negatives")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(color="#ddd", lw=0.6)
    fig.tight_layout()
    return figures.save(fig, path)


def _localisation_rows(loc: Mapping) -> list[dict]:
    rows = []
    for m, r in loc.items():
        rows.append({"method": _label(m), "pointing game": r["pointing_game"],
                     "effective heat ratio": r.get("effective_heat_ratio", float("nan")),
                     "box IoU": r.get("box_iou", float("nan")), "images": r["n"]})
    return rows


def write(workdir: str, results: Mapping, real: np.ndarray, masks: np.ndarray,
          arrays: Mapping[str, np.ndarray], reconstructions: np.ndarray) -> str:
    """Figures, tables and index.html of the GAN study; returns the index path.

    Args:
      real: the inverted real images [B, S, S] in [-1, 1].
      masks: their finding masks [B, S, S] bool.
      arrays: explanation.npz: "strip" [n, T, S, S], "twin" [B, S, S], "map_<method>" [B, S, S].
      reconstructions: G(z_a*, z_p*) [B, S, S].
    """
    fig_dir = os.path.join(workdir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    rel = lambda p: os.path.relpath(p, workdir)  # noqa: E731
    cfg, f = results["config"], results["finding"]
    resp, dis, fd = results["response"], results["disentanglement"], results["frechet"]
    loc, anat, inv = results["localisation"], results["anatomy"], results["inversion"]
    strip = arrays["strip"]
    n = len(strip)
    curves = np.asarray(resp["curves"], float)
    page = [(SECTIONS[0], "<ul>" + "".join(f"<li>{html.escape(s)}</li>"
                                         for s in results["answers"]) + "</ul>")]
    c, g = results["classifier"], results["gan"]
    gc = cfg["gan"]
    page.append((SECTIONS[1], (
        f"<p>Finding <b>{html.escape(f)}</b>; phantoms at {cfg['image_size']} px "
        f"({cfg['num_train']} for training, {cfg['num_test']} held out). Classifier: "
        f"{html.escape(c['arch'])} from {html.escape(c['source'])} (held-out AUROC for {f} "
        f"{c['auroc']:.3f}). GAN: z_anatomy {gc['z_anatomy']}, z_pathology "
        f"{gc['z_pathology']}, widths {gc['g_width']}/{gc['d_width']}, {g['steps']} steps of "
        f"batch {gc['batch_size']}, guidance weight {gc['guidance_weight']} "
        f"({g['train_seconds']:.0f} s of training in all). {len(inv['indices'])} held-out "
        f"positives inverted with {cfg['invert_steps']} Adam steps (lr {cfg['invert_lr']}); "
        f"{cfg['num_alphas']} alphas per strip, {cfg['ig_steps']} latent-IG path points; "
        f"pointing-game tolerance {results['localisation_tolerance_px']:.1f} px.</p>")))

    twins = figures.save_columns(
        {"real": real[:n], "reconstruction": reconstructions[:n],
         "negative twin": arrays["twin"][:n],
         "difference": np.abs(reconstructions[:n] - arrays["twin"][:n])},
        os.path.join(fig_dir, "twins.png"), contours={"real": masks[:n, None]},
        notes={"real": [f"p = {p:.2f}" for p in inv["p_real"][:n]],
               "reconstruction": [f"p = {p:.2f}" for p in curves[:n, -1]],
               "negative twin": [f"p = {p:.2f}" for p in curves[:n, 0]]})
    page.append((SECTIONS[2], image(rel(twins)) + caption(
        f"Each held-out positive (green: the {f} mask), its reconstruction G(z_a*, z_p*) after "
        "inversion, its negative twin G(z_a*, 0) (same anatomy latent, no pathology) and their "
        f"absolute difference; p: the classifier's probability of {f}.")))

    alphas = np.asarray(resp["alphas"], float)
    show = np.unique(np.round(np.linspace(0, len(alphas) - 1, min(len(alphas), 7))).astype(int))
    cols = {"real": real[:n]}
    notes = {"real": [f"p = {p:.2f}" for p in inv["p_real"][:n]]}
    for j in show:
        title = f"alpha {alphas[j]:.2f}"
        cols[title] = strip[:, j]
        notes[title] = [f"p = {p:.2f}" for p in curves[:n, j]]
    strips = figures.save_columns(cols, os.path.join(fig_dir, "strips.png"), notes=notes)
    page.append((SECTIONS[3], image(rel(strips)) + caption(
        "G(z_a*, alpha z_p*) from the negative twin (alpha 0) to the reconstruction (alpha 1); "
        f"p: the classifier's probability of {f} on each image.")))

    rc = response_figure(os.path.join(fig_dir, "response.png"), alphas, curves, f,
                         dis["threshold"])
    page.append((SECTIONS[4], image(rel(rc))))

    methods = [k[len("map_"):] for k in arrays if k.startswith("map_")]
    overlays = figures.save_overlays(real[:n], {_label(m): arrays[f"map_{m}"][:n]
                                                for m in methods},
                                     os.path.join(fig_dir, "overlays.png"), masks=masks[:n])
    page.append((SECTIONS[5], image(rel(overlays)) + caption(
        "The GAN's maps (difference map, latent integrated gradients; both explain the "
        "reconstruction) beside the attribution methods run on the real image. "
        + figures.OVERLAY_CAPTION)))

    rows = _localisation_rows(loc)
    tables.write(os.path.join(workdir, "localisation"), rows)
    heat = figures.save_heatmap(
        [[r["pointing game"], r["effective heat ratio"], r["box IoU"]] for r in rows],
        [r["method"] for r in rows], ["pointing game", "EHR", "box IoU"],
        os.path.join(fig_dir, "localisation.png"), title=f"Localisation of {f}")
    page.append((SECTIONS[6], image(rel(heat)) + tables.html(rows) + caption(
        "Means over the inverted held-out positives, each map against the finding's exact "
        "mask: pointing game (the map's maximum within the tolerance of the mask), effective "
        "heat ratio (share of the strongest heat inside the mask, over heat quantiles), and "
        "the IoU of the map's multi-Otsu box with the mask's bounding box.")))

    anat_rows = [{"measure": "SSIM twin vs reconstruction, outside the mask",
                  "value": anat["ssim_outside_mask"]},
                 {"measure": "SSIM twin vs positive, random pairs (whole image)",
                  "value": anat.get("ssim_random_pairs", float("nan"))},
                 {"measure": "SSIM reconstruction vs real image",
                  "value": inv["ssim_real_mean"]},
                 {"measure": "MSE reconstruction vs real image ([-1, 1])",
                  "value": inv["mse_mean"]},
                 {"measure": "share of the image inside the mask",
                  "value": anat["mask_share_mean"]}]
    page.append((SECTIONS[7], tables.html(anat_rows) + caption(
        "SSIM in [-1, 1] on the GAN's [-1, 1] intensities (data range 2, 7 x 7 windows); "
        "outside the mask: only windows lying wholly outside the finding's mask count. 1 means "
        "switching the pathology latent off left the anatomy untouched.")))

    dis_rows = [{"draws": dis["draws"], "threshold": dis["threshold"],
                 "twin called negative": dis["negative_rate"],
                 "positive called positive": dis["positive_rate"],
                 "both (disentanglement rate)": dis["rate"],
                 f"mean p({f}), twin": dis["p_twin_mean"],
                 f"mean p({f}), positive": dis["p_positive_mean"]}]
    body = tables.html(dis_rows) + caption(
        "Random z_a, z_p ~ N(0, I): how often the classifier calls G(z_a, 0) negative and "
        "G(z_a, z_p) positive, each and both at once.")
    effect = dis.get("effect")
    effect_npz = os.path.join(workdir, "effect.npz")
    if effect and os.path.exists(effect_npz):
        with np.load(effect_npz) as z:
            maps = {"real effect": z["real"][None], "GAN: G(z_a, z_p) - G(z_a, 0)":
                    z["generated"][None]}
        lim = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
        fig = figures.save_columns(maps, os.path.join(fig_dir, "effect.png"), cmap="RdBu_r",
                                   vmin=-lim, vmax=lim)
        body += image(rel(fig)) + tables.html([{
            "correlation": effect["correlation"], "slope": effect["slope"],
            "mean |change|, GAN": effect["generated_mean_abs"],
            "mean |change|, real": effect["real_mean_abs"]}]) + caption(
            f"Without the classifier: the real effect of {f} (mean training positive minus mean "
            f"training negative) beside the GAN's mean change when z_p is switched on (over "
            f"the {dis['draws']} draws), one colour scale ([-1, 1] units; red brighter). Slope "
            "= <GAN, real> / <real, real>: 1 when the GAN adds the finding's change where the "
            "finding adds it, near 0 when it changes what the classifier alone reacts to.")
    page.append((SECTIONS[8], body))

    mono_rows = [{"image": int(i), "monotonicity": m, f"p({f}) at alpha 0": cv[0],
                  f"p({f}) at alpha 1": cv[-1]}
                 for i, m, cv in zip(inv["indices"], resp["monotonicity"], curves)]
    page.append((SECTIONS[9], f"<p>Mean share of rising steps: "
                 f"{resp['monotonicity_mean']:.3f} over {len(alphas) - 1} steps.</p>"
                 + tables.html(mono_rows)))

    fd_rows = [{"pair": "real vs generated", "Frechet distance": fd["generated"]},
               {"pair": "real vs real (floor)", "Frechet distance": fd["floor"]}]
    page.append((SECTIONS[10], tables.html(fd_rows) + caption(
        f"Frechet distance between Gaussian fits of the classifier's {fd['feature_stage']} "
        f"features ({fd['feature_dim']} dimensions) of {fd['samples']} real phantoms and "
        f"{fd['samples']} generated images ({100 * fd['positive_share']:.0f}% positives, the "
        "training prevalence); the floor compares two disjoint real sets of that size.")))

    body = ""
    tf = training_figure(os.path.join(fig_dir, "gan_training.png"), g.get("history", []))
    if tf:
        body += image(rel(tf))
    if g.get("samples"):
        last = g["samples"][-1]
        if os.path.exists(last):
            body += image(rel(last)) + caption(
                "The last sample grid: rows are anatomies, the first column z_p = 0.")
    page.append(collapsed(SECTIONS[11], body or "<p>(no history)</p>"))
    page.append(collapsed(SECTIONS[12], tables.html(
        [{"phase": k, "seconds": round(v, 1)} for k, v in results.get("seconds", {}).items()])))
    return write_index(workdir, f"cxr_jax: GAN explanations of {f}", page)
