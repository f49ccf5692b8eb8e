"""Classification metrics: AUROC against the pairwise definition, accuracy, MAE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_jax.metrics import (
    accuracy,
    accuracy_sums,
    auroc,
    mae,
    mae_sums,
    multilabel_accuracy,
    multilabel_accuracy_sums,
)


def pairwise_auroc(scores, labels):
    """P(s_pos > s_neg) + 1/2 P(s_pos = s_neg), by enumerating every pair."""
    out = []
    for k in range(scores.shape[1]):
        ok = ~np.isnan(labels[:, k])
        pos = scores[ok & (labels[:, k] == 1), k]
        neg = scores[ok & (labels[:, k] == 0), k]
        if len(pos) == 0 or len(neg) == 0:
            out.append(np.nan)
            continue
        wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        out.append(wins / (len(pos) * len(neg)))
    return np.array(out)


def test_auroc_hand_computed_with_a_tie():
    # pairs (pos, neg): (0.4 vs 0.1) win, (0.4 vs 0.4) tie, (0.8 vs .1) win, (0.8 vs .4) win
    s = np.array([[0.1], [0.4], [0.4], [0.8]])
    y = np.array([[0], [0], [1], [1]])
    assert auroc(s, y)[0] == pytest.approx(3.5 / 4)


def test_auroc_perfect_inverted_and_constant():
    y = np.array([0, 0, 1, 1], float)
    assert auroc(np.array([1.0, 2, 3, 4]), y) == 1.0
    assert auroc(np.array([4.0, 3, 2, 1]), y) == 0.0
    assert auroc(np.zeros(4), y) == 0.5  # all tied: every pair counts one half


def test_auroc_one_class_label_is_nan_not_an_error():
    s = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    y = np.array([[1, 0], [1, 1], [1, 0]], float)  # column 0 has no negative
    out = auroc(s, y)
    assert np.isnan(out[0])
    assert out[1] == pytest.approx(0.5)  # pos 0.4 vs negs 0.2 (win), 0.6 (loss)


def test_auroc_nan_labels_are_ignored_per_column():
    s = np.array([[0.9, 0.9], [0.1, 0.1], [0.5, 0.5], [0.7, 0.7]])
    y = np.array([[1, 1], [0, 0], [np.nan, 1], [0, np.nan]])
    # column 0: pos .9 vs negs .1, .7 -> 1; column 1: pos .9, .5 vs neg .1 -> 1
    np.testing.assert_allclose(auroc(s, y), [1.0, 1.0])
    y2 = y.copy()
    y2[0, 0] = np.nan  # column 0 now has no positive
    assert np.isnan(auroc(s, y2)[0])


def test_auroc_monotone_invariance_and_jax_input():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(40, 3))
    y = (rng.random((40, 3)) < 0.4).astype(float)
    a = auroc(jnp.asarray(s), jnp.asarray(y))
    np.testing.assert_allclose(a, auroc(1 / (1 + np.exp(-s)), y))
    np.testing.assert_allclose(a, pairwise_auroc(s, y))


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        auroc(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="U-policy"):
        auroc(np.zeros((3, 1)), np.array([[1], [-1], [0]]))
    with pytest.raises(ValueError, match="finite"):
        auroc(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 25).flatmap(lambda n: st.tuples(
        st.lists(st.lists(st.integers(0, 4), min_size=3, max_size=3), min_size=n, max_size=n),
        st.lists(st.lists(st.sampled_from([0.0, 1.0, np.nan]), min_size=3, max_size=3),
                 min_size=n, max_size=n),
    ))
)
def test_auroc_equals_pairwise_definition_with_ties(data):
    s = np.array(data[0], float)  # few distinct values -> many ties
    y = np.array(data[1], float)
    np.testing.assert_allclose(auroc(s, y), pairwise_auroc(s, y), equal_nan=True)


def test_accuracy_and_its_sums_add_up_over_batches():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    labels = jnp.array([0, 1, 1, -1])  # last row ignored
    assert float(accuracy(logits, labels)) == pytest.approx(2 / 3)
    s = accuracy_sums(logits[:2], labels[:2]) + accuracy_sums(logits[2:], labels[2:])
    assert float(s.total) == 2 and float(s.count) == 3
    assert float(jax.jit(accuracy)(logits, labels)) == pytest.approx(2 / 3)
    assert np.isnan(float(accuracy(logits[3:], labels[3:])))
    with pytest.raises(ValueError, match="multilabel_accuracy"):
        accuracy(logits, jnp.zeros((4, 2)))


def test_multilabel_accuracy_masks_nan_labels():
    logits = jnp.array([[1.0, -1.0], [-2.0, 0.5], [0.3, 2.0]])
    labels = jnp.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0]])
    # col 0: right, wrong, wrong -> 1/3; col 1: right, (skipped), right -> 1
    np.testing.assert_allclose(multilabel_accuracy(logits, labels), [1 / 3, 1.0])
    s = multilabel_accuracy_sums(logits, labels)
    np.testing.assert_allclose(s.count, [3, 2])
    # a threshold of 0.4 turns the 0.3 prediction negative: col 0 becomes right twice
    np.testing.assert_allclose(multilabel_accuracy(logits, labels, threshold=0.4)[0], 2 / 3)


def test_mae_with_missing_targets_and_sums():
    p = jnp.array([1.0, 2.0, 5.0, 0.0])
    t = jnp.array([2.0, 2.0, 1.0, np.nan])
    assert float(mae(p, t)) == pytest.approx((1 + 0 + 4) / 3)
    s = mae_sums(p[:2], t[:2]) + mae_sums(p[2:], t[2:])
    assert float(s.value()) == pytest.approx(5 / 3)
    p2 = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    t2 = jnp.array([[1.0, 1.0], [2.0, np.nan]])
    np.testing.assert_allclose(mae(p2, t2), [0.5, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        mae(p, t[:2])


# ------------------------------------------------------------ MCC and the paired bootstrap
def test_mcc_hand_values_and_best_threshold():
    from cxr_jax.metrics import best_mcc_threshold, mcc

    s = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0], float)
    # threshold 0.6: predictions 1 1 1 1 0 0 0 0 -> TP 3, FP 1, FN 1, TN 3 -> (9 - 1) / 4 = 0.5
    assert mcc(s, y, 0.6) == pytest.approx(0.5)
    # threshold 0.8: TP 2, FP 0, FN 2, TN 4 -> 8 / sqrt(2 * 4 * 4 * 6) = 0.5773...
    assert mcc(s, y, 0.8) == pytest.approx(8 / np.sqrt(2 * 4 * 4 * 6))
    assert mcc(s, y, 2.0) == 0.0      # nothing predicted positive: an empty margin gives 0
    t, m = best_mcc_threshold(s, y)
    # brute force over every cut
    cands = {c: mcc(s, y, c) for c in s}
    assert m == pytest.approx(max(cands.values()))
    assert t == max(c for c, v in cands.items() if np.isclose(v, m))
    # NaN labels drop out of their column only; two columns at once
    s2 = np.stack([s, s[::-1]], 1)
    y2 = np.stack([y, np.where(np.arange(8) == 0, np.nan, y[::-1])], 1)
    t2, m2 = best_mcc_threshold(s2, y2)
    assert t2[0] == t and m2[0] == pytest.approx(m)
    assert m2[1] == pytest.approx(best_mcc_threshold(s[::-1][1:], y[::-1][1:])[1])
    # a label with no positives has no operating point
    assert best_mcc_threshold(s, np.zeros(8)) == (np.inf, 0.0)


def test_weighted_auroc_equals_the_auroc_of_the_resampled_rows():
    from cxr_jax.metrics import bootstrap_indices, weighted_auroc

    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=(60, 3)), 1)           # rounded: many ties
    y = (rng.uniform(size=(60, 3)) < 0.4).astype(float)
    y[rng.uniform(size=(60, 3)) < 0.1] = np.nan
    idx = bootstrap_indices(60, 25, seed=3)
    w = np.zeros((25, 60))
    np.add.at(w, (np.arange(25)[:, None], idx), 1.0)
    got = weighted_auroc(s, y, w)
    want = np.stack([auroc(s[i], y[i]) for i in idx])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weighted_auroc(s, y, np.ones((1, 60)))[0], auroc(s, y), atol=1e-12)


def test_paired_bootstrap_equals_a_direct_computation_and_pairs_the_images():
    from cxr_jax.metrics import bootstrap_indices, paired_auroc_difference

    rng = np.random.default_rng(1)
    n = 80
    y = (rng.uniform(size=(n, 2)) < 0.5).astype(float)
    a = y * 1.0 + rng.normal(size=(n, 2))
    b = a + 0.8 * rng.normal(size=(n, 2))              # the same images, degraded
    idx = bootstrap_indices(n, 400, seed=7)
    res = paired_auroc_difference(a, b, y, indices=idx)
    direct = np.stack([auroc(b[i], y[i]) - auroc(a[i], y[i]) for i in idx])
    lo, hi = np.quantile(direct, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(res.low, lo, atol=1e-12)
    np.testing.assert_allclose(res.high, hi, atol=1e-12)
    np.testing.assert_allclose(res.delta, auroc(b, y) - auroc(a, y), atol=1e-12)
    m_lo, m_hi = np.quantile(direct.mean(1), [0.025, 0.975])
    assert (res.mean_low, res.mean_high) == pytest.approx((m_lo, m_hi), abs=1e-12)
    assert res.mean_delta == pytest.approx(float(np.mean(auroc(b, y) - auroc(a, y))))
    # Pairing: identical scores on both sides give a zero-width interval at 0, which an
    # unpaired bootstrap (two independent resamples) would not.
    same = paired_auroc_difference(a, a, y, n_boot=200)
    assert np.all(same.low == 0) and np.all(same.high == 0)
    # the drop is seen: b is noisier, so its AUROC is lower and the interval excludes 0 or
    # at least lies mostly below it
    assert res.mean_delta < 0 and res.mean_low < 0
