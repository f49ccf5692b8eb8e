"""Figures for reports: training curves, matrices, saliency overlays (matplotlib, Agg)."""

from __future__ import annotations

from typing import Mapping, Sequence

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


def save_matrix(matrix: np.ndarray, names: Sequence[str], path: str, *, title: str = "",
                cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0) -> str:
    """A labelled square matrix with its values printed in the cells."""
    matrix = np.asarray(matrix, float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path)


def save_overlays(images: np.ndarray, maps: Mapping[str, np.ndarray], path: str, *,
                  masks: np.ndarray | None = None, row_titles: Sequence[str] | None = None,
                  points: Mapping[str, np.ndarray] | None = None) -> str:
    """A grid: one row per image, the image then one column per method's map over it.

    Args:
      images: [N, H, W] or [N, H, W, 1].
      maps: {method: [N, H, W]} raw maps (each normalised per image for display only).
      masks: optional [N, H, W] ground truth, drawn as a contour.
      points: optional {method: [N, 2]} (row, col) pointing-game points, drawn as crosses.
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    names = list(maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n),
                             squeeze=False)
    for i in range(n):
        cols = [("image", None)] + [(m, np.asarray(maps[m][i], float)) for m in names]
        for j, (name, sal) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray")
            if sal is not None:
                lo, hi = np.nanmin(sal), np.nanmax(sal)
                ax.imshow((sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal),
                          cmap="jet", alpha=0.45, vmin=0, vmax=1)
                if points is not None and name in points:
                    r, c = points[name][i]
                    ax.plot([c], [r], "w+", ms=8, mew=2)
            if masks is not None and masks[i].any():
                ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=90)


def save_columns(columns: Mapping[str, np.ndarray], path: str, *,
                 contours: Mapping[str, np.ndarray] | None = None,
                 notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """Images side by side: one column per entry of `columns` ({title: [N, H, W] grey}), one
    row per image, each image shown in its own grey range.

    Args:
      contours: {title: [N, K, H, W] bool}: masks drawn as coloured contours over that column.
      notes: {title: N strings} printed under each image of that column.
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(2.4 * len(names), 2.4 * n), squeeze=False)
    colours = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(np.asarray(columns[name][i], float), cmap="gray")
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
