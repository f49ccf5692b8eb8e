"""Attribution methods as pure functions, registered by name with what they need.

Every method has the signature

    fn(model, variables, x, targets, *, layer=None, key=None, **hparams) -> saliency [B, H, W]

returns raw (unnormalised) maps, and holds no `jax.jit`: the caller jits, vmaps and shards.

  registry     name -> method, with its default layer role, data needs and task (`info`)
  prepare      prepare / prepare_all: a method made ready for one model (layers resolved,
               data-derived inputs such as IBA statistics estimated and cached)
  common       input checks, targets -> scores, layer gradients, chunked sums
  gradients    gradient, input x gradient, SmoothGrad, integrated gradients, guided backprop
  cam          Grad-CAM, Grad-CAM++, Guided Grad-CAM
  scorecam     Score-CAM, Faster Score-CAM
  normgrad     NormGrad (five variants at stages or convolutions inside ResNet units, plus
               the exact weight-gradient variant at those convolutions; several combined)
  iba/         IBA, Inverse IBA, Regression IBA, Multi-layer IBA, their statistics and the
               noise check
  multi        several targets per image in one call
  postprocess  upsampling, normalisation, overlays

A new method: one function with the contract signature in a file of its family (or a new
file), decorated with `@register(name, layer=..., needs=..., task=...)`, imported below.
"""

from cxr_jax.attribution.registry import Method, Need, get, info, infos, names, register
from cxr_jax.attribution.common import Targets, resolve_layer, score_fn

# Importing the method modules registers their methods.
from cxr_jax.attribution import gradients  # noqa: E402,F401
from cxr_jax.attribution import cam  # noqa: E402,F401
from cxr_jax.attribution import scorecam  # noqa: E402,F401
from cxr_jax.attribution import normgrad  # noqa: E402,F401
from cxr_jax.attribution import iba  # noqa: E402,F401
from cxr_jax.attribution import postprocess  # noqa: E402
from cxr_jax.attribution.multi import explain_multi  # noqa: E402
from cxr_jax.attribution.prepare import (  # noqa: E402
    Cache, Prepared, data_inputs, prepare, prepare_all, resolve_layers)
from cxr_jax.attribution.iba.methods import iba_capacity  # noqa: E402
from cxr_jax.attribution.iba.multilayer import (  # noqa: E402
    combine_multilayer, reference_threshold)
from cxr_jax.attribution.iba.noise import noise_check, noise_logits  # noqa: E402
from cxr_jax.attribution.iba.stats import (  # noqa: E402
    IBAStats, iba_stats, load_iba_stats, save_iba_stats)

#: A fast, sensible first look at a classifier (the explain command's default): one class
#: activation map, one path integral of the input gradient, one information bottleneck.
FIRST_LOOK = ("gradcam", "integrated_gradients", "iba")

__all__ = ["Cache", "FIRST_LOOK", "IBAStats", "Method", "Need", "Prepared", "Targets", "combine_multilayer",
           "data_inputs", "explain_multi", "get", "iba_capacity", "iba_stats", "info", "infos",
           "load_iba_stats", "names", "noise_check", "noise_logits", "postprocess", "prepare",
           "prepare_all", "reference_threshold", "register", "resolve_layer", "resolve_layers",
           "save_iba_stats", "score_fn"]
