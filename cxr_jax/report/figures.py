"""Figures for reports: training curves, matrices and heatmaps, interval dot plots, saliency
overlays (matplotlib, Agg)."""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxr_jax.common.files import atomic_path  # noqa: E402


def save(fig, path: str, dpi: int = 100) -> str:
    """Writes a figure as PNG atomically and closes it; returns `path`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def save_curves(history: Sequence[Mapping], path: str, *, per_label_key: str = "auroc") -> str:
    """Training loss and per-label held-out metric against step."""
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [h["train_loss"] for h in history], "o-")
    axes[0].set(xlabel="step", ylabel="train loss", title="Training loss")
    if history and per_label_key in history[0]:
        for name in history[0][per_label_key]:
            axes[1].plot(steps, [h[per_label_key][name] for h in history], "o-", label=name)
        axes[1].axhline(0.9, color="grey", lw=0.8, ls="--")
        axes[1].set(xlabel="step", ylabel=per_label_key.upper(), title="Held-out " + per_label_key)
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save(fig, path)


def _grid(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *,
          cmap: str, vmin: float, vmax: float, aspect: str = "equal",
          rotation: float = 45, text_size: float = 7) -> None:
    """Draws `matrix` as coloured cells with their values (2 decimals) printed in them; NaN
    cells grey with "n/a"."""
    colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=colours, vmin=vmin, vmax=vmax,
                   aspect=aspect)
    ax.set_xticks(range(len(cols)), cols, rotation=rotation, ha="right" if rotation else
                  "center", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (i, j), v in np.ndenumerate(matrix):
        dark = False
        if np.isfinite(v):  # white text on dark cells, judged by the cell colour's luminance
            r, g, b, _ = colours(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(j, i, f"{v:.2f}" if np.isfinite(v) else "n/a", ha="center", va="center",
                fontsize=text_size, color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def save_matrix(matrix: np.ndarray, names: Sequence[str], path: str, *, title: str = "",
                cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> str:
    """A labelled square matrix with its values printed in the cells (NaN: grey, "n/a")."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
    _grid(ax, np.asarray(matrix, float), names, names, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path)


def save_heatmap(values: np.ndarray, row_names: Sequence[str], col_names: Sequence[str],
                 path: str, *, title: str = "", vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = "viridis", rotation: float = 0) -> str:
    """A [rows, columns] colour heatmap (viridis, or `cmap`: e.g. "RdBu" with vmin = -vmax for
    signed changes) with each value printed in its cell to 2 decimals; NaN cells grey with
    "n/a". Rows are drawn in the order given."""
    values = np.asarray(values, float).reshape(len(row_names), len(col_names))
    fig, ax = plt.subplots(figsize=(3 + 0.95 * len(col_names), 1.2 + 0.36 * len(row_names)))
    _grid(ax, values, row_names, col_names, cmap=cmap, vmin=vmin, vmax=vmax,
          aspect="auto", rotation=rotation, text_size=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def save_intervals(scores: Mapping[str, float], intervals: Mapping[str, Sequence[float]],
                   path: str, *, baseline_name: str = "centre",
                   xlabel: str = "pointing game") -> str:
    """A horizontal dot plot: one row per method, best at the top (NaN last), a dot at its
    score and a line over its 95% interval (none when `intervals` lacks it or it is NaN).
    The value and interval are printed in the row label. `baseline_name`, if in `scores`, is
    a dashed vertical line instead of a row. The x axis spans [0, 1]."""
    names = sorted((m for m in scores if m != baseline_name),
                   key=lambda m: -np.nan_to_num(scores[m], nan=-np.inf))
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * max(len(names), 1)))
    labels = []
    for y, m in enumerate(names):
        ci = intervals.get(m)
        has_ci = ci is not None and bool(np.all(np.isfinite(ci)))
        if has_ci:
            ax.plot(ci, [y, y], "-", color="tab:blue", lw=2, alpha=0.6)
        ax.plot([scores[m]], [y], "o", color="tab:blue")
        labels.append(f"{m}  {scores[m]:.2f}" + (" [{:.2f}, {:.2f}]".format(*ci) if has_ci
                                                   else ""))
    if baseline_name in scores:
        ax.axvline(scores[baseline_name], color="grey", ls="--", lw=1,
                   label=f"{baseline_name} {scores[baseline_name]:.2f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    ax.set(xlim=(0, 1), ylim=(len(names) - 0.5, -0.5), xlabel=xlabel)
    ax.grid(axis="x", color="#ddd", lw=0.6)
    fig.tight_layout()
    return save(fig, path)


SIGNED_FRACTION = 0.05  # a map is signed when its 1st percentile < -this x its scale
OVERLAY_ALPHA = 0.7  # opacity of the map where |value| is at least half its scale
OVERLAY_CAPTION = (
    "Each method's map over the image. Columns marked ± are drawn as signed maps (any map "
    "with at least 1% of its pixels below -5% of its scale, e.g. input x gradient and "
    "integrated gradients, or one the study declares signed): a diverging colour map centred "
    "at zero, red positive and blue negative, with symmetric limits at the 99th percentile "
    "of |map|. The other maps use jet from the map's minimum (blue) to its 99th percentile "
    "(red); larger values are clipped, so a few hot pixels do not wash out the rest. Either "
    "way a map is transparent near zero (signed) or near its minimum (others), so the "
    "radiograph shows through. Green contours: the ground-truth finding.")


def _scale(a: np.ndarray) -> float:
    """The 99th percentile of `a`, or its max when that is not above its min (when fewer than
    1% of the values exceed the minimum)."""
    hi = float(np.nanpercentile(a, 99))
    return hi if hi > np.nanmin(a) else float(np.nanmax(a))


def is_signed(sal: np.ndarray) -> bool:
    """Whether a map is drawn as signed: its 1st percentile lies below -SIGNED_FRACTION times
    its scale (the 99th percentile of |map|), i.e. at least 1% of its pixels are clearly
    negative."""
    sal = np.asarray(sal, float)
    return bool(np.nanpercentile(sal, 1) < -SIGNED_FRACTION * _scale(np.abs(sal)))


def _display(sal: np.ndarray, signed: bool) -> tuple[np.ndarray, str, np.ndarray]:
    """A map as drawn: (values, colour map, alpha).

    Signed: values = map / 99th percentile of |map|, clipped to [-1, 1], on "RdBu_r" (limits
    -1, 1). Otherwise: (map - min) / (99th percentile - min), clipped to [0, 1], on "jet"
    (limits 0, 1). Alpha is OVERLAY_ALPHA x min(1, 2 |values|): transparent at 0, fully drawn
    from half the scale on; NaN pixels get alpha 0.
    """
    sal = np.asarray(sal, float)
    if signed:
        hi, lo, cmap = _scale(np.abs(sal)), 0.0, "RdBu_r"
        values = np.clip(sal / hi if hi > 0 else np.zeros_like(sal), -1, 1)
    else:
        lo, cmap = float(np.nanmin(sal)), "jet"
        hi = _scale(sal) - lo
        values = np.clip((sal - lo) / hi if hi > 0 else np.zeros_like(sal), 0, 1)
    alpha = np.nan_to_num(OVERLAY_ALPHA * np.minimum(1.0, 2 * np.abs(values)))
    return values, cmap, alpha


def save_overlays(images: np.ndarray, maps: Mapping[str, np.ndarray], path: str, *,
                  masks: np.ndarray | None = None, row_titles: Sequence[str] | None = None,
                  points: Mapping[str, np.ndarray] | None = None,
                  signed: Collection[str] | None = None) -> str:
    """A grid: one row per image, the image then one column per method's map over it, drawn
    as `_display` says (see OVERLAY_CAPTION).

    Args:
      images: [N, H, W] or [N, H, W, 1].
      maps: {method: [N, H, W]} raw maps (each scaled per image for display only).
      masks: optional [N, H, W] ground truth, drawn as a green contour.
      points: optional {method: [N, 2]} (row, col) pointing-game points, drawn as crosses.
      signed: methods drawn as signed maps; None decides per method with `is_signed` over all
        its N maps. Signed columns are titled "name ±".
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    names = list(maps)
    signs = {m: (m in signed) if signed is not None else is_signed(maps[m]) for m in names}
    n = len(images)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n),
                             squeeze=False)
    for i in range(n):
        for j, name in enumerate(["image"] + names):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray")
            if j > 0:
                values, cmap, alpha = _display(maps[name][i], signs[name])
                ax.imshow(values, cmap=cmap, alpha=alpha, vmin=-1 if signs[name] else 0, vmax=1)
                if points is not None and name in points:
                    r, c = points[name][i]
                    ax.plot([c], [r], "w+", ms=8, mew=2)
            if masks is not None and masks[i].any():
                ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name + (" ±" if j > 0 and signs[name] else ""), fontsize=7)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=90)


def save_columns(columns: Mapping[str, np.ndarray], path: str, *,
                 contours: Mapping[str, np.ndarray] | None = None,
                 notes: Mapping[str, Sequence[str]] | None = None, cmap: str = "gray",
                 vmin: float | None = None, vmax: float | None = None) -> str:
    """Images side by side: one column per entry of `columns` ({title: [N, H, W] grey}), one
    row per image, each image shown in its own grey range (or all in [vmin, vmax]).

    Args:
      contours: {title: [N, K, H, W] bool}: masks drawn as coloured contours over that column.
      notes: {title: N strings} printed under each image of that column.
      cmap, vmin, vmax: the colour map and a shared range (e.g. a diverging map centred at 0
        for signed images).
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(2.4 * len(names), 2.4 * n), squeeze=False)
    colours = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(np.asarray(columns[name][i], float), cmap=cmap, vmin=vmin, vmax=vmax)
            for k, m in enumerate((contours or {}).get(name, np.zeros((n, 0)))[i]):
                if m.any():
                    ax.contour(m, levels=[0.5], colors=[colours(k % 10)], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if notes and name in notes:
                ax.set_xlabel(notes[name][i], fontsize=6)
    fig.tight_layout()
    return save(fig, path, dpi=90)
