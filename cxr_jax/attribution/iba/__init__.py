"""The IBA family: IBA, Inverse IBA, Regression IBA and Multi-layer IBA.

A bottleneck at stage `layer` replaces its activation R [h, w, C] by a noisy mix

    lambda = smooth(sigmoid(alpha)),   eps ~ N(mu, sigma^2)   (per feature, over data)
    IBA:          z = lambda * R + (1 - lambda) * eps
    Inverse IBA:  z = lambda * eps + (1 - lambda) * R

and learns alpha [h, w, C] for one image so that the model still predicts (IBA: minimise the
model loss; Inverse IBA: maximise it) while the information that passes, the capacity
KL(N(lambda r, (1 - lambda)^2) || N(0, 1)) with r = (R - mu) / sigma, is as small as possible.
The saliency is the capacity summed over channels, in bits.

  stats       feature statistics mu, sigma, active rate (`iba_stats`, save/load) and what the
              methods declare they need (`NEED`, used by `cxr_jax.attribution.prepare`)
  bottleneck  capacity, the smoothing of lambda, capacity -> saliency in bits
  optimise    the hyperparameters (`Settings`), model losses and the per-image Adam loop
  methods     iba, inverse_iba, regression_iba, iba_capacity
  multilayer  multilayer_iba and its combination of per-layer maps
  noise       the noise check of IBA's premise (`noise_logits`, `noise_check`)

References:
  Schulz, Sixt, Tombari, Landgraf. "Restricting the Flow: Information Bottlenecks for
  Attribution", ICLR 2020 (BioroboticsLab/IBA).
  Khakzar, Zhang, Mansour, et al. "Explaining COVID-19 and Thoracic Pathology Model Predictions
  by Identifying Informative Input Features", MICCAI 2021 (CAMP-eXplain-AI/CheXplain-IBA):
  Inverse IBA, Regression IBA, Multi-layer IBA.
"""

from cxr_jax.attribution.iba.bottleneck import (capacity_to_saliency, gaussian_kernel_1d,
                                                kl_capacity, reflect_smoothing_matrix, smooth,
                                                standard_normal)
from cxr_jax.attribution.iba.methods import iba, iba_capacity, inverse_iba, regression_iba
from cxr_jax.attribution.iba.multilayer import (REFERENCE_THRESHOLD, combine_multilayer,
                                                multilayer_iba, reference_threshold)
from cxr_jax.attribution.iba.noise import noise_check, noise_logits
from cxr_jax.attribution.iba.optimise import Settings, image_keys
from cxr_jax.attribution.iba.stats import (IBAStats, Moments, iba_stats, load_iba_stats,
                                           merge_moments, save_iba_stats, stats_from_moments)

__all__ = ["IBAStats", "Moments", "REFERENCE_THRESHOLD", "Settings", "capacity_to_saliency",
           "combine_multilayer", "gaussian_kernel_1d", "iba", "iba_capacity", "iba_stats",
           "image_keys", "inverse_iba", "kl_capacity", "load_iba_stats", "merge_moments",
           "multilayer_iba", "noise_check", "noise_logits", "reference_threshold",
           "reflect_smoothing_matrix", "regression_iba", "save_iba_stats", "smooth",
           "standard_normal", "stats_from_moments"]
