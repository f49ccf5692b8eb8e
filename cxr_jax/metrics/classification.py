"""Classification metrics: per-label AUROC, accuracy and MAE.

`auroc` is a host-side numpy function (it needs a sort over the whole evaluation set, so it does
not decompose into per-batch sums). `accuracy` and `mae` are pure `jax.numpy` functions that can
be jitted inside an eval step; their `*_sums` companions return `(total, count)` pairs that add
up across batches, devices and hosts (sum the pairs, then divide once), as scenic does.

Missing labels (NaN, the CheXpert U-Ignore policy) are excluded per label everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "auroc",
    "accuracy",
    "accuracy_sums",
    "multilabel_accuracy",
    "multilabel_accuracy_sums",
    "mae",
    "mae_sums",
    "Sums",
]


class Sums(NamedTuple):
    """A metric as an additive pair: value = total / count (NaN where count is 0)."""

    total: jnp.ndarray
    count: jnp.ndarray

    def value(self):
        """total / count, NaN where nothing was counted."""
        return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1), jnp.nan)

    def __add__(self, other):  # pairs from two batches add up
        return Sums(self.total + other.total, self.count + other.count)


def _as_2d(name: str, a) -> tuple[np.ndarray, bool]:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return a[:, None], True
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [N, K] (or [N]), got {a.shape}.")
    return a, False


def auroc(scores, labels) -> np.ndarray:
    """Area under the ROC curve for each label (Mann-Whitney U, ties counted as one half).

    AUROC_k = P(s_pos > s_neg) + 1/2 P(s_pos = s_neg) over all (positive, negative) pairs of
    column k. Computed from tie-averaged ranks r (1-based, among the valid rows of the column):
    AUROC = (sum_{pos} r - P (P + 1) / 2) / (P N), which equals the pairwise definition exactly.
    Rows whose label is NaN are left out of that column only. A column with no positive or no
    negative label gives NaN (not an error).

    Args:
      scores: [N, K] (or [N]) real scores; any monotone transform (logit, probability) gives the
        same value. Must be finite.
      labels: [N, K] (or [N]) with values 0, 1 or NaN (missing).
    Returns:
      [K] float64 array (a float64 scalar for 1-D input).

    Example:
      >>> auroc(np.array([[0.1], [0.4], [0.4], [0.8]]), np.array([[0], [0], [1], [1]]))
      array([0.875])
    """
    s, squeeze = _as_2d("scores", scores)
    y, _ = _as_2d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same shape.")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf; AUROC needs finite scores. Check the model "
                         "outputs (or drop those rows) before calling auroc.")
    valid = ~np.isnan(y)
    if not np.all((y[valid] == 0) | (y[valid] == 1)):
        raise ValueError("labels must be 0, 1 or NaN (missing). Map uncertain labels (-1) with a "
                         "U-policy (zeros, ones or ignore=NaN) first.")
    n = s.shape[0]
    if n == 0:
        out = np.full(s.shape[1], np.nan)
        return out[0] if squeeze else out
    # Sort each column with invalid rows pushed to the end; ties among valid rows share the
    # average of their 1-based positions.
    invalid = (~valid).astype(np.int8)
    order = np.lexsort((s, invalid), axis=0)  # last key is primary
    s_sorted = np.take_along_axis(s, order, axis=0)
    inv_sorted = np.take_along_axis(invalid, order, axis=0)
    pos = np.arange(n)[:, None]
    new_group = np.ones_like(s_sorted, dtype=bool)
    new_group[1:] = (s_sorted[1:] != s_sorted[:-1]) | (inv_sorted[1:] != inv_sorted[:-1])
    first = np.maximum.accumulate(np.where(new_group, pos, 0), axis=0)
    end_group = np.ones_like(new_group)
    end_group[:-1] = new_group[1:]
    last = np.minimum.accumulate(np.where(end_group, pos, n - 1)[::-1], axis=0)[::-1]
    ranks_sorted = (first + last) / 2.0 + 1.0
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=0)

    positive = valid & (y == 1)
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = (valid & (y == 0)).sum(axis=0).astype(np.float64)
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    out = np.where((n_pos > 0) & (n_neg > 0), out, np.nan)
    return out[0] if squeeze else out


def accuracy_sums(logits, labels) -> Sums:
    """Single-label accuracy as an additive pair: (number correct, number counted).

    correct_i = [argmax_k logits_ik == labels_i]; rows with a negative label (e.g. -1 padding)
    are not counted.

    Args:
      logits: [N, K] scores (logits or probabilities).
      labels: [N] integer class indices; negative = ignore.
    Returns:
      Sums(total [], count []).
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"accuracy expects logits [N, K] and integer labels [N], got "
                         f"{logits.shape} and {labels.shape}. For multi-label targets use "
                         f"multilabel_accuracy.")
    keep = labels >= 0
    hit = (jnp.argmax(logits, axis=-1) == labels) & keep
    return Sums(hit.sum().astype(jnp.float32), keep.sum().astype(jnp.float32))


def accuracy(logits, labels):
    """Single-label accuracy: mean_i [argmax_k logits_ik == labels_i] (see `accuracy_sums`).

    Returns:
      A scalar, NaN when no row is counted.
    """
    return accuracy_sums(logits, labels).value()


def multilabel_accuracy_sums(logits, labels, *, threshold: float = 0.0) -> Sums:
    """Per-label accuracy of thresholded multi-label outputs as additive pairs.

    prediction_ik = [logits_ik > threshold] (threshold 0 on logits = probability 0.5);
    correct_ik = [prediction_ik == labels_ik]; NaN labels are not counted.

    Args:
      logits: [N, K].
      labels: [N, K] with 0, 1 or NaN.
      threshold: decision threshold on the same scale as `logits`.
    Returns:
      Sums(total [K], count [K]).
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels, dtype=jnp.float32)
    if logits.ndim != 2 or labels.shape != logits.shape:
        raise ValueError(f"multilabel_accuracy expects logits and labels of the same shape "
                         f"[N, K], got {logits.shape} and {labels.shape}.")
    keep = ~jnp.isnan(labels)
    hit = ((logits > threshold) == (labels > 0.5)) & keep
    return Sums(hit.sum(0).astype(jnp.float32), keep.sum(0).astype(jnp.float32))


def multilabel_accuracy(logits, labels, *, threshold: float = 0.0):
    """Per-label accuracy of thresholded multi-label outputs (see `multilabel_accuracy_sums`).

    Returns:
      [K], NaN for a label with no valid row.
    """
    return multilabel_accuracy_sums(logits, labels, threshold=threshold).value()


def mae_sums(predictions, targets) -> Sums:
    """Mean absolute error as additive pairs, per output column; NaN targets are skipped.

    Args:
      predictions: [N] or [N, D] regression outputs.
      targets: same shape; NaN = missing.
    Returns:
      Sums(total, count), each [] for 1-D input or [D].
    """
    p = jnp.asarray(predictions)
    t = jnp.asarray(targets, dtype=p.dtype if jnp.issubdtype(p.dtype, jnp.floating)
                    else jnp.float32)
    if p.shape != t.shape or p.ndim not in (1, 2):
        raise ValueError(f"mae expects predictions and targets of the same shape [N] or [N, D], "
                         f"got {p.shape} and {t.shape}.")
    keep = ~jnp.isnan(t)
    err = jnp.where(keep, jnp.abs(p - jnp.where(keep, t, 0.0)), 0.0)
    return Sums(err.sum(0).astype(jnp.float32), keep.sum(0).astype(jnp.float32))


def mae(predictions, targets):
    """Mean absolute error, mean_i |p_i - t_i| over non-NaN targets (see `mae_sums`).

    Returns:
      [] for 1-D input or [D]; NaN where no target is present.
    """
    return mae_sums(predictions, targets).value()
