"""Which outputs to explain for each image: named findings, all of them, or the top K.

`parse(spec, metadata)` turns the command's `--targets` into a `Targets`; `Targets.select`
picks, inside the compiled prediction step, the output index of each slot for each image.
Ranking uses `ranking_scores`: the probabilities, or TorchXRayVision's calibrated scores where
the model has operating points (so that 0.5 means "at the operating point" for every finding,
as TorchXRayVision reports them). Outputs the source never trained are never picked.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.convert.inference import calibrate
from cxr_jax.models import Metadata

_TOP = re.compile(r"^top(\d+)$")


@dataclasses.dataclass(frozen=True)
class Targets:
    """Either fixed output indices (every image explains the same outputs) or the `top` K.

    Attributes:
      spec: what the user asked for, as given.
      fixed: output indices, or None for top K.
      top: K, or None.
      allowed: the outputs that may be picked (trained ones).
    """

    spec: str
    fixed: tuple[int, ...] | None
    top: int | None
    allowed: tuple[int, ...]

    @property
    def slots(self) -> int:
        """How many outputs each image explains (T)."""
        return len(self.fixed) if self.fixed is not None else int(self.top)

    def select(self, scores: jax.Array) -> jax.Array:
        """[B, T] int32 output indices: the fixed ones, or the top K by `scores` [B, K]."""
        if self.fixed is not None:
            return jnp.broadcast_to(jnp.asarray(self.fixed, jnp.int32),
                                    (scores.shape[0], len(self.fixed)))
        keep = np.zeros(scores.shape[-1], bool)
        keep[list(self.allowed)] = True
        masked = jnp.where(jnp.asarray(keep), scores, -jnp.inf)
        return jax.lax.top_k(masked, int(self.top))[1].astype(jnp.int32)


def ranking_scores(metadata: Metadata, logits: jax.Array) -> jax.Array:
    """The scores findings are ranked by: probabilities, or where operating points exist the
    calibrated scores of `cxr_jax.convert.calibrate` (each threshold at 0.5)."""
    if metadata.op_threshs is None or metadata.output != "sigmoid":
        return metadata.probabilities(logits)
    return calibrate(logits, metadata.op_threshs)


def parse(spec: str | Sequence[str], metadata: Metadata) -> Targets:
    """The targets named by `spec`.

    Args:
      spec: "top1" / "topK" (the K highest-scoring findings of each image), "all" (every
        trained output), or finding names (a list or a comma-separated string; matched
        exactly, else ignoring case).
      metadata: the model's, for its finding names.
    Raises:
      ValueError: an unknown finding or a K beyond the trained outputs; the message lists the
        valid choices.
    """
    names = metadata.finding_names
    allowed = metadata.trained
    valid = (f"top1, topK (K <= {len(allowed)}), all, or finding names: "
             f"{', '.join(names[i] for i in allowed)}")
    text = spec if isinstance(spec, str) else ",".join(spec)
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if not wanted:
        raise ValueError(f"--targets is empty; use {valid}.")
    if len(wanted) == 1 and wanted[0].lower() == "all":
        return Targets(text, tuple(allowed), None, allowed)
    top = _TOP.match(wanted[0].lower()) if len(wanted) == 1 else None
    if top:
        k = int(top.group(1))
        if not 1 <= k <= len(allowed):
            raise ValueError(f"--targets {text!r}: the model has {len(allowed)} trained outputs; "
                             f"use {valid}.")
        return Targets(text, None, k, allowed)
    fixed = []
    for w in wanted:
        hits = [i for i in allowed if names[i] == w] or [
            i for i in allowed if names[i].lower() == w.lower()]
        if not hits:
            raise ValueError(f"--targets: unknown finding {w!r} for this model; use {valid}.")
        fixed.append(hits[0])
    return Targets(text, tuple(dict.fromkeys(fixed)), None, allowed)
