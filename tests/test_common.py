"""Shared pieces (cxr_jax.common): target scores, separable filters, trees, progress lines."""

import io
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cxr_jax.common import files, filters, progress, targets, trees


def test_score_fn_picks_logits_or_probabilities_and_checks_targets():
    logits = jnp.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    np.testing.assert_allclose(targets.score_fn(jnp.array([2, 1]), 2)(logits), [3.0, 4.0])
    np.testing.assert_allclose(targets.score_fn(0, 2)(logits), [1.0, 0.5])  # a scalar broadcasts
    p = targets.score_fn(jnp.array([1, 0]), 2, probability=True)(logits)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([-2.0, 0.5]))), rtol=1e-6)
    own = lambda lg: lg.sum(-1)
    assert targets.score_fn(own, 2) is own
    # leading axes (e.g. perturbation steps) are carried along
    stacked = jnp.stack([logits, 2 * logits])
    np.testing.assert_allclose(targets.score_fn(jnp.array([2, 1]), 2)(stacked),
                               [[3.0, 4.0], [6.0, 8.0]])
    with pytest.raises(ValueError, match="out of range"):
        targets.score_fn(jnp.array([0, 3]), 2, num_classes=3)
    with pytest.raises(ValueError, match="one target per image"):
        targets.score_fn(jnp.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        targets.score_fn(jnp.array([0.0, 1.0]), 2)


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest"])
def test_separable_gaussian_equals_scipy(mode):
    x = np.random.default_rng(0).random((2, 9, 12, 3)).astype(np.float32)
    g = lambda n: filters.gaussian_matrix(n, 1.7, mode=mode)
    got = np.asarray(filters.separable(x, g(9), g(12), axes=(1, 2)))
    want = ndimage.gaussian_filter(x, (0, 1.7, 1.7, 0), mode=mode)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_separable_uniform_equals_scipy_and_radius_overrides_truncate():
    x = np.random.default_rng(1).random((3, 10, 7)).astype(np.float32)
    u = filters.uniform_matrix
    got = np.asarray(filters.separable(x, u(10, 3), u(7, 3)))
    np.testing.assert_allclose(got, ndimage.uniform_filter(x, (1, 3, 3)), rtol=1e-5, atol=1e-6)
    a = filters.gaussian_matrix(20, 1.0, radius=2)
    b = filters.gaussian_matrix(20, 1.0, truncate=2.0)
    np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(a[10]) == 5


def test_tree_paths():
    tree = {"a": {"b": {"c": 1}}, "d": 2}
    assert trees.get_path(tree, ("a", "b", "c")) == 1 and trees.get_path(tree, ("a", "x")) is None
    new = trees.replace_path(tree, trees.as_path("a.b.c"), 5)
    assert new["a"]["b"]["c"] == 5 and tree["a"]["b"]["c"] == 1
    trees.set_path(tree, ("e", "f"), 3)
    assert tree["e"] == {"f": 3}


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_off_a_terminal_prints_plain_lines_every_few_percent_or_seconds():
    out, clock = io.StringIO(), _Clock()
    bar = progress.LineProgress(1000, desc="train", unit="step", file=out, clock=clock,
                                every_s=30.0, every_pct=10.0)
    for _ in range(1000):
        clock.t += 0.01          # 10 s in all: only the percentage rule fires
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10 and lines[0].startswith("train: 100/1000 step (10%)")
    assert lines[-1].startswith("train: 1000/1000 step (100%)")
    out2, clock2 = io.StringIO(), _Clock()
    slow = progress.LineProgress(10**6, desc="x", file=out2, clock=clock2, every_s=30.0)
    for _ in range(100):
        clock2.t += 10.0         # 1000 s for 0.01%: the time rule fires every 30 s
        slow.update(1)
    slow.set_postfix(loss="0.5")
    slow.close()
    lines2 = out2.getvalue().splitlines()
    assert 30 <= len(lines2) <= 35 and lines2[-1].endswith("loss=0.5")


def test_progress_chooses_a_bar_only_for_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress.progress(5, desc="a", file=io.StringIO()), progress.LineProgress)
    bar = progress.progress(5, desc="a", file=Tty())
    assert not isinstance(bar, progress.LineProgress)
    bar.close()


def test_write_json_is_atomic_and_read_json_defaults(tmp_path):
    path = str(tmp_path / "r.json")
    assert files.read_json(path, {"a": 1}) == {"a": 1}
    files.write_json(path, {"x": float("nan"), "y": [1, 2]})
    assert not os.path.exists(path + ".tmp")
    with open(path) as f:
        assert json.load(f)["y"] == [1, 2]
