"""What the three paper configs share: the ":gpu" variant of a ":reduced" one."""

import ml_collections

GPU_STEPS = 3000


def full_width(c: ml_collections.ConfigDict, steps: int = GPU_STEPS) -> ml_collections.ConfigDict:
    """The reduced comparison `c` with the published architectures at full width (the `_slim`
    suffix dropped from the models and the claims' model names) and `steps` training steps:
    the same phantoms, sizes and methods, for a machine with an accelerator."""
    c.models = tuple(m.replace("_slim", "") for m in c.models)
    for claim in c.claims:
        if claim.get("model"):
            claim["model"] = claim["model"].replace("_slim", "")
    c.train.steps = steps
    c.note = c.note.replace("at full depth and a quarter of its width",
                            "at full width").replace(
        "at full depth and a quarter of their width", "at full width") + (
        f" GPU variant: {steps} training steps.")
    return c
