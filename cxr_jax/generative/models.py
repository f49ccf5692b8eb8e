"""A generator with anatomy and pathology latents, and a spectrally normalised discriminator.

The GAN of medXGAN (Dravid et al. 2022): G(z_anatomy, z_pathology) draws a radiograph whose
anatomy is set by z_anatomy and whose finding by z_pathology. z_pathology = 0 is "negative" (no
finding) and z_pathology ~ N(0, I) is "positive"; the class enters *only* through z_pathology,
so G(z_a, 0) and G(z_a, z_p) are the negative and positive twins of one anatomy, and the path
z_p: 0 -> z_p* is what the explanations walk along.

Architecture (the released COVID code's generator, made resolution-generic):

    [z_a, z_p] -> Dense -> reshape [4, 4, C0] -> BN, ReLU
               -> (ConvTranspose 4x4 stride 2 -> BN, ReLU) x (log2(S / 4) - 1)
               -> ConvTranspose 4x4 stride 2 to 1 channel -> tanh          [B, S, S, 1] in [-1, 1]

    images -> (Conv 4x4 stride 2 -> LeakyReLU 0.2) x log2(S / 4) -> h -> Dense -> [B] logits
              (+ <e_y, h> for a conditional D, y the image's class)

with S in `IMAGE_SIZES` (64 or 128) and channel counts `width` x (8, 4, 2, 1) (capped at 8 x
`width`) from coarse to fine, mirrored in D.

The stable recipe, and why:

* Hinge loss (`train.gan_losses`): D is penalised only for real logits below +1 and fake logits
  above -1, so it stops pushing on samples it already separates; with spectral normalisation it
  is the SN-GAN / SAGAN / BigGAN recipe and trains without the vanishing or exploding gradients
  of the original saturating loss.
* Spectral normalisation on every conv and dense layer of D (`flax.linen.SpectralNorm`, one power
  iteration per training step, its vector `u` kept in the "spectral" collection): each layer is
  1-Lipschitz in its weights' top singular value, which bounds D's gradient with respect to its
  input -- the gradient G learns from -- without the cost of a gradient penalty. D has no batch
  normalisation, so its output for an image does not depend on the rest of the batch.
* Batch normalisation in G (as in the reference design) in training; sampling, inversion and
  interpolation run G with its running statistics (`train=False`), so an image depends only on
  its own latents -- which the explanations need.
* An exponential moving average of G's weights (`train`, config `ema`) is what is sampled and
  saved for explanations: it averages out the oscillation of the adversarial game and gives
  visibly smoother, more stable samples for the same training.
* Optionally (`conditional`, on in the study's configs) a projection discriminator that reads
  each image's class: real images with their label, generated ones with the class z_p
  implies. With the released code's unconditional D, only the frozen classifier says what a
  positive is, and G can satisfy it with changes the classifier reacts to but a radiologist
  would not see (our first quick run: p went 0 -> 1 along strips that barely changed). The
  projection term makes a generated positive match the *real positives*, so the finding has
  to look like the finding.
* TTUR (D's learning rate above G's) with Adam(beta1 = 0, beta2 = 0.9): SAGAN's settings, one
  D step per G step.

Intensities: the GAN works in [-1, 1]; classifiers and phantoms in the TorchXRayVision scale
[-1024, 1024]. `to_unit` and `to_hu` convert.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
IMAGE_SIZES: tuple[int, ...] = (64, 128)
XRV_SCALE = 1024.0
SPECTRAL = "spectral"  # the variable collection holding D's power-iteration state


def check_image_size(size) -> int:
    """`size` as an int if the GAN can draw it, else a ValueError naming the allowed sizes."""
    if (not isinstance(size, numbers.Integral) or isinstance(size, bool)
            or int(size) not in IMAGE_SIZES):
        raise ValueError(f"GAN image size must be one of {IMAGE_SIZES}, got {size!r}.")
    return int(size)


def _levels(size: int) -> int:
    """Number of 2x up/down-sampling steps between 4x4 and size x size."""
    return int(size).bit_length() - 3  # 64 -> 4, 128 -> 5


def to_unit(images: Array) -> Array:
    """[-1024, 1024] (classifier / phantom scale) -> [-1, 1] (GAN scale)."""
    return images / XRV_SCALE


def to_hu(images: Array) -> Array:
    """[-1, 1] (GAN scale) -> [-1024, 1024] (classifier / phantom scale)."""
    return images * XRV_SCALE


class Generator(nn.Module):
    """G(z_anatomy, z_pathology) -> images [B, S, S, 1] in [-1, 1].

    Attributes:
      image_size: S, one of `IMAGE_SIZES`.
      z_anatomy, z_pathology: latent sizes (the inputs' last axes).
      width: channels of the finest feature map; coarser maps have 2x, 4x, 8x (at most).

    Call args:
      z_anatomy: [B, z_anatomy].
      z_pathology: [B, z_pathology]; all zeros for a negative (no finding).
      train: batch statistics (and their running averages updated: pass
        `mutable=["batch_stats"]`) when True; running statistics when False.
    """

    image_size: int = 64
    z_anatomy: int = 100
    z_pathology: int = 10
    width: int = 64

    @nn.compact
    def __call__(self, z_anatomy: Array, z_pathology: Array, *, train: bool = False) -> Array:
        size = check_image_size(self.image_size)
        for name, z, n in (("z_anatomy", z_anatomy, self.z_anatomy),
                           ("z_pathology", z_pathology, self.z_pathology)):
            if z.ndim != 2 or z.shape[-1] != n:
                raise ValueError(f"Generator: {name} must be [B, {n}], got {tuple(z.shape)}.")
        if z_anatomy.shape[0] != z_pathology.shape[0]:
            raise ValueError(f"Generator: z_anatomy and z_pathology batch sizes differ "
                             f"({z_anatomy.shape[0]} vs {z_pathology.shape[0]}).")
        n_up = _levels(size)
        chans = [self.width * min(2 ** (n_up - 1 - i), 8) for i in range(n_up)]
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                         epsilon=1e-5, name=name)
        h = jnp.concatenate([z_anatomy, z_pathology], axis=-1).astype(jnp.float32)
        h = nn.Dense(4 * 4 * chans[0], use_bias=False, name="project")(h)
        h = nn.relu(norm("project_bn")(h.reshape(h.shape[0], 4, 4, chans[0])))
        for i, c in enumerate(chans[1:]):
            h = nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                                 name=f"up{i}")(h)
            h = nn.relu(norm(f"up{i}_bn")(h))
        h = nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding="SAME", name="to_image")(h)
        return jnp.tanh(h)


class Discriminator(nn.Module):
    """D(images [B, S, S, 1] in [-1, 1]) -> real/fake logits [B]; every layer spectrally
    normalised. With `conditional`, a projection discriminator (Miyato & Koyama 2018): D also
    reads each image's class y (finding present or not) and adds <e_y, h(x)> to the logit,
    where h(x) are its last features and e_y a learned (spectrally normalised) embedding, so
    a generated positive must look like a real *positive*, not merely like a real image.

    Attributes:
      image_size: S, one of `IMAGE_SIZES`.
      width: channels of the first (finest) conv; later convs have 2x, 4x, 8x (at most).
      power_iterations: power-iteration steps per call for each layer's top singular value.
      conditional: read `labels` (the projection term); False: an unconditional D.

    Call args:
      images: [B, S, S, 1].
      labels: [B] bool or 0/1 (the finding present); required when `conditional`, ignored
        otherwise.
      update_stats: store the refined singular vectors (pass `mutable=["spectral"]`); True in
        D's training step, False otherwise.
    """

    image_size: int = 64
    width: int = 64
    power_iterations: int = 1
    conditional: bool = False

    @nn.compact
    def __call__(self, images: Array, labels: Array | None = None, *,
                 update_stats: bool = False) -> Array:
        size = check_image_size(self.image_size)
        if images.ndim != 4 or images.shape[1:] != (size, size, 1):
            raise ValueError(f"Discriminator: expected images [B, {size}, {size}, 1], got "
                             f"{tuple(images.shape)}.")
        if self.conditional and (labels is None or labels.shape != images.shape[:1]):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(f"Conditional discriminator: labels must be [{images.shape[0]}] "
                             f"(the finding present per image), got {got}.")
        sn = lambda layer: nn.SpectralNorm(layer, n_steps=self.power_iterations,
                                           collection_name=SPECTRAL)
        h = images.astype(jnp.float32)
        for i in range(_levels(size)):
            conv = nn.Conv(self.width * min(2 ** i, 8), (4, 4), strides=(2, 2), padding="SAME",
                           name=f"conv{i}")
            h = nn.leaky_relu(sn(conv)(h, update_stats=update_stats), 0.2)
        h = h.reshape(h.shape[0], -1)
        logit = sn(nn.Dense(1, name="logit"))(h, update_stats=update_stats)[:, 0]
        if not self.conditional:
            return logit
        onehot = jax.nn.one_hot(labels.astype(jnp.int32), 2, dtype=jnp.float32)
        embed = sn(nn.Dense(h.shape[-1], use_bias=False, name="class_embed"))(
            onehot, update_stats=update_stats)
        return logit + jnp.sum(embed * h, axis=-1)


class Latents(NamedTuple):
    """A batch of latents: z_anatomy [B, za], z_pathology [B, zp] (zero rows for negatives),
    positive [B] bool."""

    z_anatomy: Array
    z_pathology: Array
    positive: Array


def sample_latents(key: Array, batch: int, z_anatomy: int, z_pathology: int) -> Latents:
    """Latents for a training batch: z_anatomy ~ N(0, I); every other row (odd indices) a
    positive with z_pathology ~ N(0, I), the rest negatives with z_pathology = 0.

    Alternating rows (rather than first half / second half) keep both classes on every device
    when the batch is sharded.
    """
    ka, kp = jax.random.split(key)
    positive = jnp.arange(batch) % 2 == 1
    za = jax.random.normal(ka, (batch, z_anatomy), jnp.float32)
    zp = jax.random.normal(kp, (batch, z_pathology), jnp.float32) * positive[:, None]
    return Latents(za, zp, positive)


def init_generator(generator: Generator, key: Array) -> dict:
    """G's variables {"params", "batch_stats"}."""
    return _init_g(generator, key)


def init_discriminator(discriminator: Discriminator, key: Array) -> dict:
    """D's variables {"params", "spectral"} (random unit-free `u` vectors)."""
    return _init_d(discriminator, key)


# Initialisers run once: compiled at XLA's lowest optimisation level (much faster to compile
# on CPU, same values), once per (module, key type).
@functools.partial(jax.jit, static_argnums=0,
                   compiler_options={"xla_backend_optimization_level": 0})
def _init_g(generator: Generator, key: Array) -> dict:
    za = jnp.zeros((1, generator.z_anatomy), jnp.float32)
    zp = jnp.zeros((1, generator.z_pathology), jnp.float32)
    return generator.init(key, za, zp, train=False)


@functools.partial(jax.jit, static_argnums=0,
                   compiler_options={"xla_backend_optimization_level": 0})
def _init_d(discriminator: Discriminator, key: Array) -> dict:
    s = check_image_size(discriminator.image_size)
    return discriminator.init(key, jnp.zeros((1, s, s, 1), jnp.float32),
                              jnp.zeros((1,), jnp.int32), update_stats=False)
