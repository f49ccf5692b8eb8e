"""The semantics figures: the semantic attribution of one image (its top units' masks, its
concept bars), and the units-per-concept bars of the semantics study (`save_unit_bars`).

Left, the image with the masks of the units that carry the most attribution, each a filled,
translucent colour with a contour of the same colour: M_k = Up(A_k) > T_k, the unit's
activation bilinearly upsampled to the image (half-pixel centres, edges clamped, as
`cxr_jax.semantics.dissection.unit_masks`) and thresholded at its dissection threshold. The
legend names each unit, its concept and its contribution. Right, one horizontal bar per concept
and one for "unlabelled" (red positive, blue negative), with its value printed beside it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr_jax.report.figures import save  # noqa: E402

SEMANTIC_CAPTION = (
    "Left: the image with the masks of the units that contribute most to the prediction (each "
    "unit's activation upsampled to the image and thresholded at its dissection threshold), "
    "one colour per unit; the legend gives the unit, the concept dissection labelled it with "
    "and its contribution. Right: the contributions of all units summed by concept, the last "
    "bar collecting the units dissection left unlabelled; red bars support the prediction, "
    "blue bars speak against it.")


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear resampling, half-pixel centres, edges clamped."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def unit_masks_at(maps: np.ndarray, size: Sequence[int],
                  thresholds: np.ndarray | None = None) -> np.ndarray:
    """Unit masks at the image size: [k, h, w] -> [k, H, W] bool.

    With thresholds: Up(map) > threshold (bilinear, as dissection builds unit masks). Without:
    `maps` are masks already, resized by nearest neighbour.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"unit maps must be [k, h, w], got shape {maps.shape}.")
    k, h, w = maps.shape
    height, width = (int(s) for s in size)
    if thresholds is None:
        rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
        cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
        return maps.astype(bool)[:, rows][:, :, cols]
    thresholds = np.asarray(thresholds, float).reshape(-1)
    if thresholds.shape != (k,):
        raise ValueError(f"{thresholds.shape[0]} thresholds for {k} unit maps.")
    up = np.einsum("Hh,khw,Ww->kHW", _bilinear_matrix(h, height), maps.astype(float),
                   _bilinear_matrix(w, width))
    return up > thresholds[:, None, None]


def save_semantic_attribution(path: str, image: np.ndarray, concept_vector: np.ndarray,
                              names: Sequence[str], unit_maps: np.ndarray,
                              unit_labels: Sequence, *, unit_thresholds: np.ndarray | None = None,
                              unit_ids: Sequence[int] | None = None,
                              unit_values: Sequence[float] | None = None,
                              title: str = "", xlabel: str = "share of attribution",
                              dpi: int = 100) -> str:
    """Draws one image's semantic attribution (module docstring; SEMANTIC_CAPTION) as a PNG.

    Args:
      path: where to write the PNG (atomically).
      image: [H, W], [H, W, 1] or [H, W, 3].
      concept_vector: [C + 1] value per concept, "unlabelled" last
        (`ConceptExplanation.concepts[b]`).
      names: the C + 1 bar names (`ConceptExplanation.names`).
      unit_maps: [k, h, w] the top units' activations (with `unit_thresholds`), or their
        boolean masks at any resolution (without).
      unit_labels: [k] each unit's concept: an index into `names` (-1: the last, "unlabelled")
        or a name.
      unit_thresholds: [k] the units' dissection thresholds; None when `unit_maps` are masks.
      unit_ids: [k] unit indices for the legend (default 0..k-1).
      unit_values: [k] the units' contributions for the legend (optional).
      title: figure title.
      xlabel: the bars' axis label (say "contribution" for raw sums).
      dpi: resolution.
    Returns:
      `path`.
    """
    image = np.asarray(image, float)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, channels], got shape {image.shape}.")
    values = np.asarray(concept_vector, float).reshape(-1)
    names = [str(n) for n in names]
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names for a concept vector of {len(values)} entries.")
    masks = unit_masks_at(unit_maps, image.shape[:2], unit_thresholds)
    k = len(masks)
    if len(unit_labels) != k:
        raise ValueError(f"{len(unit_labels)} unit labels for {k} unit maps.")
    ids = list(range(k)) if unit_ids is None else [int(u) for u in unit_ids]
    labels = [names[int(l)] if isinstance(l, (int, np.integer)) else str(l)
              for l in unit_labels]

    fig, (ax_img, ax_bar) = plt.subplots(
        1, 2, figsize=(8.5, max(3.6, 0.9 + 0.32 * len(names))),
        gridspec_kw={"width_ratios": [1, 1.15]})
    lo, hi = np.nanmin(image), np.nanmax(image)
    shown = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    ax_img.imshow(shown, cmap="gray", vmin=0, vmax=1)
    # Unit colours avoid the bars' red and blue, so a unit is not read as a sign.
    colours = [plt.get_cmap("tab10")(i) for i in (1, 2, 4, 6, 8, 9, 5, 7)]
    handles = []
    for i, mask in enumerate(masks):
        colour = colours[i % len(colours)]
        if mask.any():
            fill = np.zeros(mask.shape + (4,))
            fill[mask] = colour[:3] + (0.35,)
            ax_img.imshow(fill)
            ax_img.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
        text = f"unit {ids[i]}: {labels[i]}"
        if unit_values is not None:
            text += f" ({float(unit_values[i]):+.3g})"
        handles.append(plt.Line2D([], [], color=colour, lw=4, label=text))
    if handles:
        ax_img.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                      fontsize=7, frameon=False)
    ax_img.set_xticks([])
    ax_img.set_yticks([])

    y = np.arange(len(values))
    finite = np.nan_to_num(values)
    ax_bar.barh(y, finite, color=["tab:red" if v >= 0 else "tab:blue" for v in finite],
                alpha=0.8)
    span = max(float(np.abs(finite).max()), 1e-12)
    for yi, v in zip(y, values):
        ax_bar.text(np.nan_to_num(v) + (0.02 * span if v >= 0 else -0.02 * span), yi,
                    f"{v:.2f}" if np.isfinite(v) else "n/a", va="center",
                    ha="left" if not v < 0 else "right", fontsize=7)
    ax_bar.axvline(0, color="black", lw=0.8)
    ax_bar.set_yticks(y, names, fontsize=8)
    ax_bar.set_ylim(len(values) - 0.5, -0.5)
    left = min(0.0, float(finite.min()))
    right = max(0.0, float(finite.max()))
    pad = 0.2 * span
    ax_bar.set_xlim(left - (pad if left < 0 else 0), right + pad)
    ax_bar.set_xlabel(xlabel, fontsize=8)
    ax_bar.grid(axis="x", color="#ddd", lw=0.6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path, dpi=dpi)


def save_unit_bars(path: str, results: Mapping, layer: str, models: Sequence[str], concepts,
                   titles: Mapping[str, str]) -> str:
    """Grouped bars: units labelled per concept, one bar per model; black tick: the same model
    with re-initialised weights, grey tick: shuffled masks. Concepts no model or baseline has
    a unit for are left out (the tables list them). `results` is the semantics study's
    (`cxr_jax.semantics.study`), `titles` the legend name of each model."""
    def total(c):
        per = [results["dissection"][m][layer] for m in models]
        return sum(d["labelled"].get(c, 0) + d["baseline"]["random_weights"]["labelled"].get(c, 0)
                   + d["baseline"]["shuffled_masks"]["labelled"].get(c, 0) for d in per)

    concepts = [c for c in concepts if total(c)] or list(concepts)  # concepts with a unit
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 + 0.18 * len(concepts) * len(models)), 3.8))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(concepts))
    for j, m in enumerate(models):
        d = results["dissection"][m][layer]
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, [d["labelled"].get(c, 0) for c in concepts], width, label=titles.get(m, m))
        for w, colour in (("random_weights", "black"), ("shuffled_masks", "grey")):
            vals = [d["baseline"][w]["labelled"].get(c, 0) for c in concepts]
            ax.hlines(vals, pos - width / 2, pos + width / 2, colors=colour, lw=1.5)
    ax.set_xticks(x, concepts, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("units labelled")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Units per concept at {layer} (ticks: black random weights, grey shuffled "
                 f"masks)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", color="#ddd", lw=0.6)
    fig.tight_layout()
    return save(fig, path)
