"""IBA's premise, checked: what the model says when a bottleneck passes only noise.

IBA asks which features must pass for the target's score to stay high; it presumes that noise
alone scores the target low. Where the noise already scores it high, the bottleneck can close at
little cost to the model loss, so the map may reflect little more than the capacity penalty
(flat, or off the finding). CNNs often answer noise at a shallow layer with texture-like
findings (consolidation), and at a deep one with whatever their most extreme activations mean
(a foreign object).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

from cxr_jax.attribution.iba.bottleneck import standard_normal
from cxr_jax.attribution.iba.stats import IBAStats
from cxr_jax.models import Model, check_stage

Array = jax.Array


def noise_logits(model: Model, variables: Any, stats: IBAStats, *, key: Any = None,
                 samples: int = 64, active_threshold: float = 0.01) -> Array:
    """The model's outputs when the bottleneck at `stats.layer` passes no signal at all.

    That is z = eps ~ N(mu, sigma^2) (inactive features zero), the bottleneck of `iba` at
    lambda = 0 everywhere, pushed through the stages after the layer. Check this before
    trusting IBA for a finding at a layer (see the module docstring).

    Args:
      stats: the layer's statistics (`iba_stats`).
      key: PRNG key for the noise (default key 0); samples: how many noise draws.
      active_threshold: as in `iba`.
    Returns:
      [samples, K] outputs (logits) of the model for the noise draws.
    """
    if not isinstance(stats, IBAStats):
        raise ValueError(f"noise_logits needs IBAStats (from iba_stats), got "
                         f"{type(stats).__name__}.")
    check_stage(model, stats.layer)
    if int(samples) < 1:
        raise ValueError(f"samples must be >= 1, got {samples}.")
    key = jax.random.key(0) if key is None else key
    active = (stats.active_rate > active_threshold).astype(jnp.float32)
    eps = stats.mean + stats.std * standard_normal(key, (int(samples),) + tuple(stats.shape))
    return model.apply(variables, eps * active, start=stats.layer)


def noise_check(model: Model, variables: Any, stats: Iterable[IBAStats],
                names: Sequence[str], *, regression: bool = False,
                samples: int = 64) -> dict[str, dict[str, float]]:
    """{layer: {finding: score}}: the model's mean score (sigmoid; a regressor's raw output)
    when the bottleneck at each layer of `stats` passes only noise (`noise_logits`).

    A classifier's score near or above 0.5 there means IBA's premise fails for that finding at
    that layer: a closed bottleneck already keeps much of the score, so the map may be flat or
    off the finding (it often still points right; treat it as a warning, not a verdict).

    Args:
      stats: the statistics of the layers to check (one `IBAStats` per layer; duplicates of a
        layer are checked once).
      names: the K output names.
      regression: report raw outputs instead of sigmoid probabilities.
      samples: noise draws per layer.
    """
    by_layer = {s.layer: s for s in stats}
    out = {}
    for layer in sorted(by_layer):
        logits = np.asarray(noise_logits(model, variables, by_layer[layer], samples=samples),
                            np.float64)
        score = logits if regression else expit(logits)
        out[layer] = {n: float(v) for n, v in zip(names, score.mean(0))}
    return out
