"""Attribution methods as pure functions, registered by name.

Every method has the signature

    fn(model, variables, x, targets, *, layer=None, key=None, **hparams) -> saliency [B, H, W]

returns raw (unnormalised) maps, and holds no `jax.jit`: the caller jits, vmaps and shards.
"""

from cxr_jax.attribution._registry import get, names, register
from cxr_jax.attribution.common import Targets, resolve_layer, score_fn

# Importing the method modules registers their methods.
from cxr_jax.attribution import gradients  # noqa: E402,F401
from cxr_jax.attribution import cam  # noqa: E402,F401
from cxr_jax.attribution import scorecam  # noqa: E402,F401
from cxr_jax.attribution import normgrad  # noqa: E402,F401
from cxr_jax.attribution import iba  # noqa: E402,F401
from cxr_jax.attribution import postprocess  # noqa: E402
from cxr_jax.attribution.multi import explain_multi  # noqa: E402
from cxr_jax.attribution.iba import (  # noqa: E402
    IBAStats, combine_multilayer, iba_capacity, iba_stats, load_iba_stats, noise_logits,
    reference_threshold, save_iba_stats)

__all__ = ["IBAStats", "Targets", "combine_multilayer", "explain_multi", "get", "iba_capacity",
           "iba_stats", "load_iba_stats", "names", "noise_logits", "postprocess",
           "reference_threshold", "register", "resolve_layer", "save_iba_stats", "score_fn"]
