"""Classification metrics: per-label AUROC, accuracy, MAE, MCC and paired bootstrap intervals.

`auroc` is a host-side numpy function (it needs a sort over the whole evaluation set, so it does
not decompose into per-batch sums). `accuracy` and `mae` are pure `jax.numpy` functions that can
be jitted inside an eval step; their `*_sums` companions return `(total, count)` pairs that add
up across batches, devices and hosts (sum the pairs, then divide once), as scenic does.

Missing labels (NaN, the CheXpert U-Ignore policy) are excluded per label everywhere.
"""

from __future__ import annotations

import warnings
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
    "mcc",
    "best_mcc_threshold",
    "bootstrap_indices",
    "weighted_auroc",
    "paired_auroc_difference",
    "PairedDifference",
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


# ----------------------------------------------------------------- MCC and the paired bootstrap
def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray, bool]:
    s, squeeze = _as_2d("scores", scores)
    y, _ = _as_2d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same shape.")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf; check the model outputs first.")
    valid = ~np.isnan(y)
    if not np.all((y[valid] == 0) | (y[valid] == 1)):
        raise ValueError("labels must be 0, 1 or NaN (missing).")
    return s, y, squeeze


def _mcc_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """Matthews correlation from confusion counts (arrays); 0 where a margin is empty (the
    convention of scikit-learn: a constant prediction or a constant label carries no
    correlation)."""
    tp, fp, fn, tn = (np.asarray(v, np.float64) for v in (tp, fp, fn, tn))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)


def mcc(scores, labels, threshold) -> np.ndarray:
    """Matthews correlation coefficient per label of the predictions `scores >= threshold`.

    MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)), 0 when a factor is 0.
    Rows whose label is NaN are left out of that column.

    Args:
      scores: [N, K] (or [N]) finite scores.
      labels: [N, K] (or [N]) values 0, 1 or NaN.
      threshold: a number or [K] thresholds, one per label.
    Returns:
      [K] float64 (a scalar for 1-D input).
    """
    s, y, squeeze = _check_scores_labels(scores, labels)
    t = np.broadcast_to(np.asarray(threshold, np.float64), (s.shape[1],))
    valid = ~np.isnan(y)
    pred = s >= t[None, :]
    pos = valid & (y == 1)
    neg = valid & (y == 0)
    out = _mcc_from_counts((pred & pos).sum(0), (pred & neg).sum(0), (~pred & pos).sum(0),
                           (~pred & neg).sum(0))
    return out[0] if squeeze else out


def best_mcc_threshold(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """The threshold of each label that maximises MCC, and that MCC (the operating point the
    CheXphoto papers compare at: chosen on the originals, then kept for the photos).

    Every distinct score is a candidate (predict positive at score >= candidate); the counts of
    all candidates come from one sort and cumulative sums. Among equal maxima the largest
    threshold wins. A label without positives or negatives gets threshold +inf and MCC 0.

    Returns:
      (thresholds [K], mcc [K]) (scalars for 1-D input).
    """
    s, y, squeeze = _check_scores_labels(scores, labels)
    ts, ms = [], []
    for k in range(s.shape[1]):
        ok = ~np.isnan(y[:, k])
        sk, yk = s[ok, k], y[ok, k]
        order = np.argsort(-sk, kind="stable")
        sk, yk = sk[order], yk[order]
        tp, fp = np.cumsum(yk), np.cumsum(1 - yk)
        last = np.append(sk[1:] != sk[:-1], True) if sk.size else np.zeros(0, bool)
        tp, fp, cand = tp[last], fp[last], sk[last]           # cut after each tie group
        P, N = yk.sum(), (1 - yk).sum()
        m = _mcc_from_counts(tp, fp, P - tp, N - fp)
        if not cand.size or P == 0 or N == 0:
            ts.append(np.inf)
            ms.append(0.0)
            continue
        best = int(np.argmax(m))        # candidates descend, so the first maximum is the largest
        ts.append(float(cand[best]))
        ms.append(float(m[best]))
    t, m = np.array(ts), np.array(ms)
    return (t[0], m[0]) if squeeze else (t, m)


def bootstrap_indices(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] row indices drawn with replacement: the resamples of a bootstrap. Passing the
    same indices to two evaluations pairs them (the same images on both sides)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 rows and n_boot >= 1 replicates, got {n} and {n_boot}.")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def weighted_auroc(scores, labels, weights) -> np.ndarray:
    """AUROC of each label under row weights, for many weightings at once.

    With integer weights w (how often each row was drawn) this is exactly the AUROC of the
    resampled rows: sum over (positive p, negative q) of w_p w_q ([s_p > s_q] + [s_p = s_q] / 2),
    divided by (sum of positive weights)(sum of negative weights). The scores are sorted once;
    each weighting costs cumulative sums only, so 2,000 bootstrap replicates of 500 rows take
    milliseconds.

    Args:
      scores: [N, K] (or [N]) finite scores.
      labels: [N, K] (or [N]) values 0, 1 or NaN (NaN rows get weight 0 in that column).
      weights: [R, N] non-negative weights (e.g. `np.bincount` counts of bootstrap indices).
    Returns:
      [R, K] float64 (NaN where a replicate has no positive or no negative weight).
    """
    s, y, _ = _check_scores_labels(scores, labels)
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[1] != s.shape[0]:
        raise ValueError(f"weights must be [R, N] with N = {s.shape[0]} rows, got {w.shape}.")
    out = np.empty((w.shape[0], s.shape[1]))
    for k in range(s.shape[1]):
        ok = ~np.isnan(y[:, k])
        order = np.argsort(s[:, k], kind="stable")
        sk, yk, okk = s[order, k], y[order, k], ok[order]
        wk = w[:, order] * okk
        pos_w = wk * (yk == 1)
        neg_w = wk * (yk == 0)
        cum = np.cumsum(neg_w, axis=1)
        cum = np.concatenate([np.zeros((w.shape[0], 1)), cum], axis=1)  # cum[:, j] = sum < j
        start = np.ones(sk.size, bool)
        start[1:] = sk[1:] != sk[:-1]
        first = np.maximum.accumulate(np.where(start, np.arange(sk.size), 0))
        end = np.append(start[1:], True)
        last = np.minimum.accumulate(np.where(end, np.arange(sk.size), sk.size - 1)[::-1])[::-1]
        below = cum[:, first]                                   # negatives strictly below
        tied = cum[:, last + 1] - below                         # negatives in the tie group
        num = (pos_w * (below + 0.5 * tied)).sum(axis=1)
        den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


class PairedDifference(NamedTuple):
    """AUROC on condition b minus AUROC on condition a, per label and for the label mean, with
    paired bootstrap intervals (the same resampled rows on both sides)."""

    delta: np.ndarray        # [K] auroc(b) - auroc(a) on all rows
    low: np.ndarray          # [K] interval bounds
    high: np.ndarray
    mean_delta: float        # mean over labels of auroc(b) minus the same mean of auroc(a)
    mean_low: float
    mean_high: float


def paired_auroc_difference(scores_a, scores_b, labels, *, n_boot: int = 2000, seed: int = 0,
                            level: float = 0.95, indices=None) -> PairedDifference:
    """AUROC(b) - AUROC(a) of one set of images scored two ways (originals and photos), with a
    paired percentile bootstrap: each replicate resamples the images once and evaluates both
    sides on those same images, so the interval reflects the change, not the two AUROCs' own
    spread. Labels whose AUROC is undefined on a replicate are left out of that replicate's mean.

    Args:
      scores_a, scores_b: [N, K] scores of the same N images under the two conditions.
      labels: [N, K] values 0, 1 or NaN.
      n_boot, seed: replicates and the resampling seed (ignored when `indices` is given).
      level: coverage of the intervals.
      indices: optional [R, N] resampled row indices (`bootstrap_indices`).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    a, y, _ = _check_scores_labels(scores_a, labels)
    b, _, _ = _check_scores_labels(scores_b, labels)
    if a.shape != b.shape:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} must have the same shape.")
    idx = bootstrap_indices(a.shape[0], n_boot, seed) if indices is None else np.asarray(indices)
    counts = np.zeros((idx.shape[0], a.shape[0]))
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    full = np.ones((1, a.shape[0]))
    d_full = weighted_auroc(b, y, full)[0] - weighted_auroc(a, y, full)[0]
    d = weighted_auroc(b, y, counts) - weighted_auroc(a, y, counts)          # [R, K]
    q = [(1 - level) / 2, (1 + level) / 2]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(d, q, axis=0)
        m_lo, m_hi = np.nanquantile(np.nanmean(d, axis=1), q)
        mean_delta = float(np.nanmean(d_full))
    return PairedDifference(d_full, lo, hi, mean_delta, float(m_lo), float(m_hi))
