"""Effective Heat Ratio (CheXplain-IBA): how concentrated a map's strongest heat is in a region.

Maps and regions are `[..., H, W]` as in `cxr_jax.metrics.pointing`; a box becomes a region
with `cxr_jax.metrics.boxes.box_mask`. Per-image values are NaN where the region is empty.
Vectorised numpy.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.metrics.pointing import _check_pair

__all__ = ["effective_heat_ratio"]


def effective_heat_ratio(saliency, region, *, base_threshold: float = 0.1,
                         quantiles=None, normalize: str | None = "minmax",
                         weight_by_heat: bool = True) -> np.ndarray:
    """Effective Heat Ratio (CheXplain-IBA): how concentrated the strongest heat is in the box.

    With h the map normalised to [0, 1] and heat below `base_threshold` set to zero, for each
    q in `quantiles` (default 0, 0.1, ..., 1):
      t_q = min(quantile_q(h over pixels with h >= base_threshold), 0.99 max h)
      ratio_q = sum_{h >= t_q, in region} h / #{h >= t_q}        (weight_by_heat=True)
              = #{h >= t_q, in region} / #{h >= t_q}              (weight_by_heat=False)
    EHR = trapezoid area of ratio_q over q. A map equal to a binary box mask scores exactly 1.
    This follows the reference's `EffectiveHeatRatios` (weight_by_heat=True is its default; the
    reference adds 1e-8 to the denominator, unnecessary here because the maximum pixel always
    passes the threshold). Maps with no heat left (constant maps after min-max, all-zero maps)
    score 0: none of their heat lies in the box.

    Args:
      saliency: [..., H, W] maps.
      region: [..., H, W] bool ground truth (e.g. `box_mask(box, (H, W))`).
      base_threshold: heat below it is ignored (0.1 in the reference).
      quantiles: 1-D increasing quantile levels in [0, 1]; default `np.linspace(0, 1, 11)`.
      normalize: "minmax" (per map, (s - min)/(max - min), constant -> 0), "max" (s / max for
        non-negative maps) or None (maps already in [0, 1]).
      weight_by_heat: weigh in-box pixels by their heat (reference default) or count them.
    Returns:
      [...] float64; NaN where the region is empty.
    """
    s = np.asarray(saliency, np.float64)
    reg = np.asarray(region) != 0
    _check_pair("saliency", s, "region", reg)
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or inf; clean the maps first.")
    qs = np.linspace(0.0, 1.0, 11) if quantiles is None else np.asarray(quantiles, np.float64)
    if qs.ndim != 1 or qs.size < 2 or np.any(np.diff(qs) <= 0) or qs[0] < 0 or qs[-1] > 1:
        raise ValueError("quantiles must be a 1-D increasing sequence of at least 2 levels in "
                         "[0, 1].")
    lead = s.shape[:-2]
    s = s.reshape(-1, s.shape[-2] * s.shape[-1])
    reg = reg.reshape(s.shape)
    lo = s.min(-1, keepdims=True)
    hi = s.max(-1, keepdims=True)
    if normalize == "minmax":
        span = hi - lo
        s = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)
    elif normalize == "max":
        if np.any(lo < 0):
            raise ValueError('normalize="max" needs non-negative maps; use "minmax".')
        s = np.where(hi > 0, s / np.where(hi > 0, hi, 1.0), 0.0)
    elif normalize is None:
        if np.any(lo < 0) or np.any(hi > 1):
            raise ValueError('with normalize=None maps must lie in [0, 1]; pass '
                             'normalize="minmax".')
    else:
        raise ValueError(f'normalize must be "minmax", "max" or None, got {normalize!r}.')

    passing = s >= base_threshold
    heat = np.where(passing, s, 0.0)
    has_heat = passing.any(-1)
    # Quantiles of the passing pixels of every map at once (numpy's default "linear" rule):
    # sort with the non-passing pixels last, interpolate at q * (n_valid - 1).
    ordered = np.sort(np.where(passing, s, np.inf), axis=-1)
    ordered[~has_heat] = 0.0  # maps without heat: placeholder values, scored 0 below
    n_valid = np.maximum(passing.sum(-1), 1)  # [N]
    pos = qs[:, None] * (n_valid - 1)  # [Q, N]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_valid - 1)
    rows = np.arange(len(s))[None, :]
    q_lo, q_hi = ordered[rows, lo], ordered[rows, hi]
    quant = np.where(hi > lo, q_lo + (pos - lo) * (q_hi - q_lo), q_lo)
    t = np.minimum(quant, 0.99 * heat.max(-1))  # [Q, N]
    selected = heat[None] >= t[..., None]  # [Q, N, HW]
    count = selected.sum(-1)
    weight = heat if weight_by_heat else np.ones_like(heat)
    in_box = np.where(selected & reg[None], weight[None], 0.0).sum(-1)
    ratio = in_box / np.maximum(count, 1)
    ehr = np.trapezoid(ratio, qs, axis=0)
    ehr = np.where(has_heat, ehr, 0.0)
    ehr = np.where(reg.any(-1), ehr, np.nan)
    return ehr.reshape(lead)
