"""Generative explanations: a GAN with anatomy and pathology latents (medXGAN).

  models   Generator G(z_anatomy, z_pathology) -> images in [-1, 1], spectrally normalised
           Discriminator, latent sampling, intensity conversion ([-1, 1] <-> [-1024, 1024])
  train    hinge + classifier-guidance losses, the jitted train step (D then G, EMA of G),
           train_gan (resumable, data parallel, checkpointed, sample grids), load_generator
  explain  inversion, negative twins, latent interpolation and latent integrated gradients
  study    the phantom study (`study.run`): classifier, GAN, inversion, the GAN's maps scored
           against exact masks beside Grad-CAM / IG / Multi-layer IBA, anatomy kept,
           disentanglement, response monotonicity, Frechet distance; report in
           `cxr_jax.report.gan` (matplotlib loads only when the report is written)
"""

from cxr_jax.generative.models import (IMAGE_SIZES, Discriminator, Generator, Latents,
                                       check_image_size, init_discriminator, init_generator,
                                       sample_latents, to_hu, to_unit)
from cxr_jax.generative.train import (GANState, build_models, check_images, classifier_logit,
                                      default_config, discriminator_loss, finding_index,
                                      gan_losses, guidance_loss, init_state, load_generator,
                                      make_optimizers, make_train_step, sample_latent_grid,
                                      train_gan)

from cxr_jax.generative.explain import (History, Inversion, as_attribution, difference_map,
                                        interpolate, invert, latent_integrated_gradients,
                                        response_curve)
from cxr_jax.generative.study import frechet_distance, monotonicity

__all__ = ["Discriminator", "GANState", "Generator", "IMAGE_SIZES", "Latents", "build_models",
           "check_image_size", "check_images", "classifier_logit", "default_config",
           "discriminator_loss", "finding_index", "gan_losses", "guidance_loss",
           "init_discriminator", "init_generator", "init_state", "load_generator",
           "make_optimizers", "make_train_step", "sample_latent_grid", "sample_latents",
           "to_hu", "to_unit", "train_gan", "History", "Inversion", "as_attribution",
           "difference_map", "interpolate", "invert", "latent_integrated_gradients",
           "response_curve", "frechet_distance", "monotonicity"]
