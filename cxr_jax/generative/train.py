"""Training the explanation GAN: losses, the jitted step, and a resumable data-parallel loop.

One training step (`make_train_step`) updates D, then G, on one batch of real images:

    D:  L_D = mean relu(1 - D(x, y_x)) + mean relu(1 + D(G(z), y(z_p)))        (hinge)
    G:  L_G = -mean D(G(z), y(z_p)) + guidance_weight * BCE(sigmoid(f_k(G(z))), y(z_p))

where f_k is the frozen classifier's logit for the chosen finding k, evaluated on the generated
image mapped back to the classifier's [-1024, 1024] scale, and y(z_p) = 1 when z_p != 0
(positive) and 0 when z_p = 0 (negative); half of every batch is each (`models.sample_latents`).
The sigmoid is applied once, inside a numerically stable BCE on the logit
(`optax.sigmoid_binary_cross_entropy`); the released medXGAN code applied a softmax to the
classifier's output and then a cross-entropy that applies another one, which flattens the
guidance signal. With `conditional` D is a projection discriminator that reads the class:
y_x is the real image's label for finding k, y(z_p) the class z_p implies (an unconditional D
ignores both). Then G's exponential moving average is updated:
ema <- d * ema + (1 - d) * new G weights, d = config.ema.

`train_gan` runs the step until `config.steps` with Adam (separate learning rates for G and D),
checkpoints (state + data iterator + history) every `config.checkpoint_every` steps through the
project's `Checkpointer`, writes a sample grid every `config.sample_every` steps and
`results.json` at the end. Started again on the same workdir it resumes from the last
checkpoint and ends with the same weights as an uninterrupted run. The batch is sharded over
the device mesh and the state replicated, as in `cxr_jax.training`.

The config (an `ml_collections.ConfigDict`; `default_config()` has every key with its default):

  image_size        64 or 128: the size G draws and D reads (and the real images' size).
  z_anatomy         size of the anatomy latent (100).
  z_pathology       size of the pathology latent (10); z_pathology = 0 is a negative.
  finding           name of the classifier output that guides G (one of `finding_names`).
  guidance_weight   weight of the classifier term in G's loss (2.0, as in medXGAN).
  conditional       a projection discriminator that reads each image's class (False: the
                    released code's unconditional D). Needs the real images' labels.
  batch_size        global batch (even: half negatives, half positives; divisible by the
                    number of devices).
  steps             number of training steps (each one D and one G update).
  lr_g, lr_d        Adam learning rates of G and D (1e-4 and 4e-4: TTUR).
  beta1, beta2      Adam's betas for both (0.0, 0.9).
  ema               decay of the moving average of G's weights (0.999).
  checkpoint_every  steps between checkpoints (and history records).
  sample_every      steps between sample grids (<= 0: only at the end).
  seed              everything random: initialisation, data order, latents.
optional:
  g_width, d_width  finest-level channels of G and D (64, 64; tests use 4).
  classifier_image_size  resize generated images to this size before the classifier
                    (0: leave them at image_size).
  sample_rows, sample_columns  anatomies (rows) and positive z_p (columns after z_p = 0) in the
                    sample grid (4, 3).

Example:
  >>> config = default_config()
  >>> config.finding = "nodule"
  >>> batch = cxr_jax.data.phantoms.generate(2048, image_size=64, seed=0)
  >>> results = train_gan(config, "/tmp/gan", classifier, variables, batch.images,
  ...                     finding_names=batch.finding_names)
  >>> generator, g_vars, config, names = load_generator("/tmp/gan")

References:
  Dravid et al., medXGAN: Visual Explanations for Medical Classifiers through a Generative
  Latent Space, CVPR Workshops 2022. Miyato et al., Spectral Normalization for GANs, ICLR 2018.
  Zhang et al., Self-Attention GANs, ICML 2019 (hinge loss, TTUR with beta1 = 0).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from cxr_jax import runtime
from cxr_jax.common.files import read_json, write_json
from cxr_jax.common.progress import progress as progress_bar
from cxr_jax.data.loader import ArraySource, make_loader
from cxr_jax.generative.models import (SPECTRAL, Discriminator, Generator, XRV_SCALE,
                                       check_image_size, sample_latents, to_hu)
from cxr_jax.training.checkpoint import Checkpointer
from cxr_jax.common.sharding import make_mesh, replicate, shard_batch

Array = jax.Array
_INIT_OPTIONS = {"xla_backend_optimization_level": 0}  # initialisers run once: compile fast


# --------------------------------------------------------------------------- config
def default_config():
    """Every config key `train_gan` reads, with its default (see the module docstring)."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        image_size=64, z_anatomy=100, z_pathology=10, finding="opacity", guidance_weight=2.0,
        conditional=False,
        batch_size=64, steps=20_000, lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.9, ema=0.999,
        checkpoint_every=1000, sample_every=1000, seed=0, g_width=64, d_width=64,
        classifier_image_size=0, sample_rows=4, sample_columns=3))


def build_models(config) -> tuple[Generator, Discriminator]:
    """The (G, D) pair the config describes."""
    size = check_image_size(config.image_size)
    return (Generator(size, int(config.z_anatomy), int(config.z_pathology),
                      width=int(config.get("g_width", 64))),
            Discriminator(size, width=int(config.get("d_width", 64)),
                          conditional=bool(config.get("conditional", False))))


def make_optimizers(config) -> tuple[optax.GradientTransformation,
                                     optax.GradientTransformation]:
    """(G's, D's) Adam optimizers: learning rates `lr_g`, `lr_d`, betas `beta1`, `beta2`."""
    return _adam_pair(float(config.lr_g), float(config.lr_d), float(config.beta1),
                      float(config.beta2))


def _adam_pair(lr_g: float, lr_d: float, b1: float, b2: float):
    return optax.adam(lr_g, b1=b1, b2=b2), optax.adam(lr_d, b1=b1, b2=b2)


# --------------------------------------------------------------------------- state
@flax.struct.dataclass
class GANState:
    """Everything a GAN training step reads and writes, as one pytree.

    Attributes:
      step: steps taken (int32 scalar).
      g_params, g_stats: G's parameters and BatchNorm running statistics.
      ema_params: the moving average of `g_params` (what is sampled and explained).
      d_params, d_spectral: D's parameters and spectral-norm power-iteration state.
      opt_g, opt_d: the optax states.
    """

    step: Array
    g_params: Any
    g_stats: Any
    ema_params: Any
    d_params: Any
    d_spectral: Any
    opt_g: Any
    opt_d: Any

    def generator_variables(self, *, ema: bool = True) -> dict:
        """G's variables for `Generator.apply(..., train=False)`: the averaged weights (or the
        raw ones) with the running statistics."""
        return {"params": self.ema_params if ema else self.g_params,
                "batch_stats": self.g_stats}

    def discriminator_variables(self) -> dict:
        """D's variables for `Discriminator.apply`."""
        return {"params": self.d_params, SPECTRAL: self.d_spectral}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), compiler_options=_INIT_OPTIONS)
def _init(generator: Generator, discriminator: Discriminator, tx_g, tx_d, key: Array):
    kg, kd = jax.random.split(key)
    za = jnp.zeros((1, generator.z_anatomy), jnp.float32)
    zp = jnp.zeros((1, generator.z_pathology), jnp.float32)
    g = generator.init(kg, za, zp, train=False)
    s = discriminator.image_size
    d = discriminator.init(kd, jnp.zeros((1, s, s, 1), jnp.float32), jnp.zeros((1,), jnp.int32),
                           update_stats=False)
    return GANState(step=jnp.zeros((), jnp.int32), g_params=g["params"],
                    g_stats=g["batch_stats"], ema_params=g["params"], d_params=d["params"],
                    d_spectral=d[SPECTRAL], opt_g=tx_g.init(g["params"]),
                    opt_d=tx_d.init(d["params"]))


def init_state(config, generator: Generator, discriminator: Discriminator) -> GANState:
    """A fresh state from `config.seed` (the EMA starts at G's initial weights)."""
    spec = (float(config.lr_g), float(config.lr_d), float(config.beta1), float(config.beta2))
    tx_g, tx_d = _cached_adam_pair(*spec)
    return _init(generator, discriminator, tx_g, tx_d,
                 jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 0))


@functools.lru_cache(maxsize=None)
def _cached_adam_pair(*spec):
    # One optimizer object per hyper-parameter set, so jitted functions closed over it are
    # compiled once per process.
    return _adam_pair(*spec)


# --------------------------------------------------------------------------- losses
def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Hinge loss of D: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return (jnp.mean(jax.nn.relu(1.0 - real_logits))
            + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def guidance_loss(class_logits: Array, positive: Array) -> Array:
    """Mean binary cross-entropy of sigmoid(class_logits) against `positive` (1 where z_p != 0,
    0 where z_p = 0): -mean[y log s + (1 - y) log(1 - s)], s = sigmoid(logit), one sigmoid."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(
        class_logits.astype(jnp.float32), positive.astype(jnp.float32)))


def gan_losses(real_logits: Array, fake_logits: Array, class_logits: Array, positive: Array,
               *, guidance_weight: float) -> dict[str, Array]:
    """All loss terms from one forward pass.

    Args:
      real_logits: D's logits on real images [B_real].
      fake_logits: D's logits on generated images [B].
      class_logits: the frozen classifier's logit for the guiding finding on the generated
        images [B] (`classifier_logit`).
      positive: [B] bool, z_p != 0 for that image.
      guidance_weight: weight of the classifier term in G's loss.
    Returns:
      {"d": hinge loss of D, "adversarial": -mean D(fake), "guidance": BCE,
       "g": adversarial + guidance_weight * guidance}.
    """
    adversarial = -jnp.mean(fake_logits)
    guidance = guidance_loss(class_logits, positive)
    return {"d": discriminator_loss(real_logits, fake_logits), "adversarial": adversarial,
            "guidance": guidance, "g": adversarial + guidance_weight * guidance}


def classifier_logit(classifier, classifier_variables, images: Array, finding_index: int, *,
                     input_size: int = 0) -> Array:
    """The frozen classifier's logit for one finding on GAN images.

    Args:
      classifier: anything with `apply(variables, x) -> logits [B, K]` (a `cxr_jax.models`
        Model or a Flax module).
      classifier_variables: its variables (not differentiated here; the caller's gradient
        flows through `images` only).
      images: [B, S, S, 1] in [-1, 1]; mapped to [-1024, 1024] for the classifier.
      finding_index: which output.
      input_size: resize (bilinear) to this size first; 0 keeps S.
    Returns:
      [B] float32 logits.
    """
    x = to_hu(images)
    if input_size and input_size != x.shape[1]:
        x = jax.image.resize(x, (x.shape[0], input_size, input_size, x.shape[3]), "bilinear")
    logits = classifier.apply(jax.lax.stop_gradient(classifier_variables), x)
    return logits[:, finding_index].astype(jnp.float32)


# --------------------------------------------------------------------------- the step
class _StepSpec(NamedTuple):
    """The static part of a train step (hashable: one compilation per spec and shapes)."""

    generator: Generator
    discriminator: Discriminator
    classifier: Any
    finding_index: int
    guidance_weight: float
    ema: float
    adam: tuple[float, float, float, float]
    classifier_size: int
    mesh: Any


def _ema_update(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _step_fn(spec: _StepSpec) -> Callable:
    """The pure step `(state, images [B,S,S,1] in [-1,1], labels [B], key,
    classifier_variables)`."""
    G, D = spec.generator, spec.discriminator
    tx_g, tx_d = _cached_adam_pair(*spec.adam)
    data = None if spec.mesh is None else NamedSharding(spec.mesh, P("data"))

    def latents(key, batch):
        lat = sample_latents(key, batch, G.z_anatomy, G.z_pathology)
        if data is not None and batch % spec.mesh.size == 0:
            lat = jax.tree_util.tree_map(
                lambda a: jax.lax.with_sharding_constraint(a, data), lat)
        return lat

    def step(state: GANState, real: Array, real_labels: Array, key: Array,
             classifier_variables: Any):
        batch = real.shape[0]
        k_d, k_g = jax.random.split(key)

        # D: one hinge step on real images and (fixed) samples of the current G.
        lat = latents(k_d, batch)
        fake, _ = G.apply({"params": state.g_params, "batch_stats": state.g_stats},
                          lat.z_anatomy, lat.z_pathology, train=True, mutable=["batch_stats"])
        both = jnp.concatenate([real.astype(jnp.float32), jax.lax.stop_gradient(fake)])
        classes = jnp.concatenate([real_labels.astype(jnp.int32),
                                   lat.positive.astype(jnp.int32)])

        def d_objective(d_params):
            logits, upd = D.apply({"params": d_params, SPECTRAL: state.d_spectral}, both,
                                  classes, update_stats=True, mutable=[SPECTRAL])
            real_l, fake_l = logits[:batch], logits[batch:]
            return discriminator_loss(real_l, fake_l), (upd[SPECTRAL], real_l, fake_l)

        (loss_d, (spectral, real_l, fake_l)), grads = jax.value_and_grad(
            d_objective, has_aux=True)(state.d_params)
        updates, opt_d = tx_d.update(grads, state.opt_d, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)

        # G: fool the updated D and make the classifier see the class z_p implies.
        lat = latents(k_g, batch)

        def g_objective(g_params):
            fake, upd = G.apply({"params": g_params, "batch_stats": state.g_stats},
                                lat.z_anatomy, lat.z_pathology, train=True,
                                mutable=["batch_stats"])
            fake_l = D.apply({"params": d_params, SPECTRAL: spectral}, fake,
                             lat.positive.astype(jnp.int32))
            cls = classifier_logit(spec.classifier, classifier_variables, fake,
                                   spec.finding_index, input_size=spec.classifier_size)
            adversarial = -jnp.mean(fake_l)
            guidance = guidance_loss(cls, lat.positive)
            total = adversarial + spec.guidance_weight * guidance
            return total, (upd["batch_stats"], adversarial, guidance, cls)

        (loss_g, (g_stats, adversarial, guidance, cls)), grads = jax.value_and_grad(
            g_objective, has_aux=True)(state.g_params)
        updates, opt_g = tx_g.update(grads, state.opt_g, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)

        new = state.replace(step=state.step + 1, g_params=g_params, g_stats=g_stats,
                            ema_params=_ema_update(state.ema_params, g_params, spec.ema),
                            d_params=d_params, d_spectral=spectral, opt_g=opt_g, opt_d=opt_d)
        prob = jax.nn.sigmoid(cls)
        pos = lat.positive.astype(jnp.float32)
        metrics = {"loss_d": loss_d, "loss_g": loss_g, "adversarial": adversarial,
                   "guidance": guidance, "d_real": jnp.mean(real_l),
                   "d_fake": jnp.mean(fake_l),
                   "p_positive": jnp.sum(prob * pos) / jnp.maximum(jnp.sum(pos), 1.0),
                   "p_negative": jnp.sum(prob * (1 - pos)) / jnp.maximum(jnp.sum(1 - pos), 1.0)}
        return new, metrics

    return step


@functools.lru_cache(maxsize=32)
def _jitted_step(spec: _StepSpec) -> Callable:
    return jax.jit(_step_fn(spec), donate_argnums=0)


def make_train_step(config, generator: Generator, discriminator: Discriminator, classifier,
                    classifier_variables, *, finding_index: int, mesh=None) -> Callable:
    """The jitted `train_step(state, batch, key) -> (state, metrics)`.

    Args:
      config: reads guidance_weight, ema, lr_g, lr_d, beta1, beta2 and (optionally)
        classifier_image_size.
      generator, discriminator: the modules (`build_models`).
      classifier: the frozen classifier (`apply(variables, x) -> logits [B, K]`, x in
        [-1024, 1024]); classifier_variables: its variables (passed to the compiled step as an
        argument, not baked in as constants).
      finding_index: the classifier output that guides G.
      mesh: a device mesh with a "data" axis; latents and generated images are sharded over it
        like the batch.
    Returns:
      `train_step(state, batch, key, labels=None)`: `batch` [B, S, S, 1] real images in
      [-1, 1], `key` a PRNG key (the loop folds the step number into one), `labels` [B] the
      real images' classes (read by a conditional D; None: zeros); it donates `state`. Metrics (device
      scalars): loss_d, loss_g, adversarial, guidance, d_real, d_fake (mean logits), p_positive,
      p_negative (the classifier's mean probability of the finding on generated positives and
      negatives).
    """
    spec = _StepSpec(generator, discriminator, classifier, int(finding_index),
                     float(config.guidance_weight), float(config.ema),
                     (float(config.lr_g), float(config.lr_d), float(config.beta1),
                      float(config.beta2)),
                     int(config.get("classifier_image_size", 0) or 0), mesh)
    try:
        hash(spec)
        jitted = _jitted_step(spec)
    except TypeError:  # an unhashable classifier: compile for this call only
        jitted = jax.jit(_step_fn(spec), donate_argnums=0)

    def train_step(state: GANState, batch: Array, key: Array, labels: Array | None = None):
        if labels is None:
            labels = jnp.zeros(batch.shape[:1], jnp.int32)
        return jitted(state, batch, labels, key, classifier_variables)

    return train_step


# --------------------------------------------------------------------------- sampling
@functools.lru_cache(maxsize=32)
def _sampler(generator: Generator, classifier, finding_index: int, input_size: int):
    @jax.jit
    def sample(g_vars, c_vars, za, zp):
        images = generator.apply(g_vars, za, zp)
        logit = classifier_logit(classifier, c_vars, images, finding_index,
                                 input_size=input_size)
        return images, jax.nn.sigmoid(logit)

    return sample


def sample_latent_grid(config) -> tuple[np.ndarray, np.ndarray]:
    """The fixed latents of the sample grids: (z_a [R, za], z_p [C + 1, zp]) with R =
    sample_rows anatomies and z_p[0] = 0 followed by C = sample_columns draws of N(0, I)."""
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 2)
    ka, kp = jax.random.split(key)
    rows, cols = int(config.get("sample_rows", 4)), int(config.get("sample_columns", 3))
    za = jax.random.normal(ka, (rows, int(config.z_anatomy)), jnp.float32)
    zp = jax.random.normal(kp, (cols, int(config.z_pathology)), jnp.float32)
    zp = jnp.concatenate([jnp.zeros((1, zp.shape[1]), jnp.float32), zp])
    return np.asarray(za), np.asarray(zp)


def _save_samples(path: str, sample, g_vars, c_vars, za: np.ndarray, zp: np.ndarray,
                  finding: str) -> str:
    """Draws the grid (every process: the arrays are global) and writes it (process 0)."""
    rows, cols = len(za), len(zp)
    za_all = np.repeat(za, cols, axis=0)        # row-major: anatomy r, pathology c
    zp_all = np.tile(zp, (rows, 1))
    images, probs = jax.device_get(sample(g_vars, c_vars, za_all, zp_all))
    if not runtime.is_writer():
        return path
    from cxr_jax.report import figures

    images = np.asarray(images)[..., 0].reshape(rows, cols, *images.shape[1:3])
    probs = np.asarray(probs).reshape(rows, cols)
    titles = ["z_p = 0"] + [f"z_p #{j}" for j in range(1, cols)]
    columns = {t: images[:, j] for j, t in enumerate(titles)}
    notes = {t: [f"p({finding}) = {p:.2f}" for p in probs[:, j]] for j, t in enumerate(titles)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return figures.save_columns(columns, path, notes=notes)


# --------------------------------------------------------------------------- checks
def check_images(images, image_size: int) -> np.ndarray:
    """Real images [N, S, S, 1] in [-1024, 1024] -> float32 in [-1, 1], or a ValueError."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 1):
        raise ValueError(
            f"GAN training images must be [N, {image_size}, {image_size}, 1] (config."
            f"image_size = {image_size}), got {images.shape}. Generate or resize them at that "
            f"size, e.g. cxr_jax.data.phantoms.generate(n, image_size={image_size}).")
    images = images.astype(np.float32)
    bad = ~np.isfinite(images)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(f"GAN training images contain NaN or infinite pixels (in "
                         f"{len(rows)} image(s), first index {int(rows[0])}).")
    peak = float(np.abs(images).max()) if images.size else 0.0
    if peak > XRV_SCALE * 1.001:
        raise ValueError(f"GAN training images must be in [-1024, 1024] (the TorchXRayVision "
                         f"scale the classifiers use); the largest |pixel| is {peak:g}.")
    return images / XRV_SCALE


def check_labels(labels, n: int, conditional: bool) -> np.ndarray:
    """The real images' classes as int32 [n] (zeros when None and D is unconditional), or a
    ValueError."""
    if labels is None:
        if conditional:
            raise ValueError("A conditional discriminator needs the real images' labels: pass "
                             "labels=[N] (finding present) to train_gan, or set "
                             "conditional=False.")
        return np.zeros(n, np.int32)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"GAN labels must be [N] = [{n}] (one per image), got {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("GAN labels must be 0/1 (or bool): whether each image has the finding.")
    return labels.astype(np.int32)


def finding_index(finding: str, finding_names: Sequence[str], classifier=None) -> int:
    """Position of `finding` among the classifier's outputs, or a ValueError."""
    names = list(finding_names)
    k = getattr(classifier, "num_classes", None)
    if k is not None and k != len(names):
        raise ValueError(f"The classifier has {k} outputs but {len(names)} finding names were "
                         f"given: {names}.")
    if finding not in names:
        raise ValueError(f"Finding {finding!r} is not among the classifier's outputs {names}.")
    return names.index(finding)


def _check_config(config, n_images: int, n_devices: int) -> None:
    b = int(config.batch_size)
    if b < 2 or b % 2:
        raise ValueError(f"batch_size must be even and >= 2 (half negatives, half positives), "
                         f"got {b}.")
    if b % (n_devices * jax.process_count()):
        raise ValueError(f"batch_size {b} must be divisible by the "
                         f"{n_devices * jax.process_count()} devices.")
    if n_images < b // jax.process_count():
        raise ValueError(f"{n_images} training images are fewer than one batch ({b}).")
    if int(config.checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {config.checkpoint_every}.")
    if not 0.0 <= float(config.ema) < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {config.ema}.")


# --------------------------------------------------------------------------- the loop
def _mean_metrics(pending: list[dict]) -> dict:
    stacked = jax.device_get({k: jnp.stack([m[k] for m in pending]) for k in pending[0]})
    return {k: float(np.mean(v)) for k, v in stacked.items()}  # one host sync per record


def train_gan(config, workdir: str, classifier, classifier_variables, images, *,
              finding_names: Sequence[str], labels=None, progress: bool = True) -> dict:
    """Trains (or resumes) the explanation GAN until `config.steps`; returns the results dict.

    Args:
      config: see the module docstring (`default_config()` for every key).
      workdir: checkpoints/, samples/step_NNNNNN.png, config.json and results.json go here;
        a workdir with checkpoints is resumed from its last one.
      classifier: the frozen classifier that guides G (`apply(variables, x) -> logits [B, K]`,
        x in [-1024, 1024]).
      classifier_variables: its variables.
      images: real training images [N, S, S, 1] in [-1024, 1024], S = config.image_size.
      finding_names: the names of the classifier's K outputs; `config.finding` must be one.
      labels: [N] bool, whether each real image has `config.finding` (required by a
        `conditional` D, unused otherwise).
      progress: show a progress bar (process 0 only).
    Returns:
      {"history": [{"step", "loss_d", "loss_g", "adversarial", "guidance", "d_real",
       "d_fake", "p_positive", "p_negative"}, ...] (means since the previous record, recorded
       at every checkpoint and sample step), "final": the last record, "samples": grid PNGs,
       "steps", "resumed_from_step", "train_seconds", "finding", "image_size", "checkpoint"}.
    """
    size = check_image_size(config.image_size)
    images = check_images(images, size)
    labels = check_labels(labels, len(images), bool(config.get("conditional", False)))
    k = finding_index(config.finding, finding_names, classifier)
    mesh = make_mesh()
    _check_config(config, len(images), len(mesh.local_devices))
    os.makedirs(workdir, exist_ok=True)
    if runtime.is_writer():
        write_json(os.path.join(workdir, "config.json"),
                   {"config": config.to_dict(), "finding_names": list(finding_names)})

    generator, discriminator = build_models(config)
    c_vars = replicate(classifier_variables, mesh)
    train_step = make_train_step(config, generator, discriminator, classifier, c_vars,
                                 finding_index=k, mesh=mesh)
    state = init_state(config, generator, discriminator)
    ckpt = Checkpointer(workdir, keep=2)
    it = iter(make_loader(ArraySource({"image": images, "label": labels}),
                          batch_size=int(config.batch_size) // jax.process_count(),
                          seed=int(config.seed)))
    extras = {"history": [], "samples": [], "train_seconds": 0.0}
    restored = ckpt.restore(state)
    if restored is not None:
        state, extras = restored
        it.set_state(extras["iterator"].encode())
        logging.info("GAN: resumed from step %d in %s", int(state.step), workdir)
    start = int(state.step)
    state = replicate(state, mesh)

    sample = _sampler(generator, classifier, k, int(config.get("classifier_image_size", 0) or 0))
    za, zp = sample_latent_grid(config)
    step_root = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1)
    history, samples = list(extras["history"]), list(extras["samples"])
    t0, elapsed0 = time.perf_counter(), float(extras["train_seconds"])
    every_sample = int(config.sample_every)
    bar = (progress_bar(int(config.steps), desc="gan", unit="step", initial=start)
           if progress and runtime.is_writer() else None)
    pending: list[dict] = []
    try:
        for step in range(start + 1, int(config.steps) + 1):
            item = next(it)
            state, m = train_step(state, shard_batch(item["image"], mesh),
                                  jax.random.fold_in(step_root, step),
                                  shard_batch(item["label"], mesh))
            pending.append(m)
            if bar is not None:
                bar.update(1)
            last = step == int(config.steps)
            sample_now = (every_sample > 0 and step % every_sample == 0) or last
            save_now = step % int(config.checkpoint_every) == 0 or last
            if sample_now or save_now:
                record = {"step": step, **_mean_metrics(pending)}
                pending = []
                history.append(record)
                if bar is not None:
                    bar.set_postfix(d=f"{record['loss_d']:.3f}", g=f"{record['loss_g']:.3f}",
                                    ce=f"{record['guidance']:.3f}")
                logging.info("GAN step %d: %s", step, record)
            if sample_now:
                path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
                _save_samples(path, sample, state.generator_variables(), c_vars, za, zp,
                              config.finding)
                if path not in samples:
                    samples.append(path)
            if save_now:
                # A host copy: orbax would otherwise split every replicated array into
                # per-device slices (an op dispatch per leaf, seconds for a small model).
                ckpt.save(step, jax.device_get(state), {
                    "history": history, "samples": samples,
                    "iterator": it.get_state().decode(),
                    "train_seconds": elapsed0 + time.perf_counter() - t0})
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
    results = {"history": history, "final": history[-1] if history else {},
               "samples": samples, "steps": int(config.steps), "resumed_from_step": start,
               "train_seconds": elapsed0 + time.perf_counter() - t0,
               "finding": config.finding, "image_size": size,
               "checkpoint": os.path.join(os.path.abspath(workdir), "checkpoints")}
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
    return results


def load_generator(workdir: str, *, ema: bool = True):
    """(generator, variables, config, finding_names) from a GAN workdir's last checkpoint.

    `variables` are for `generator.apply(variables, z_anatomy, z_pathology)` (running batch
    statistics): the moving-average weights, or the raw ones with `ema=False`.
    """
    saved = read_json(os.path.join(workdir, "config.json"))
    if saved is None:
        raise ValueError(f"No config.json in {workdir!r}: is it a GAN workdir? Train first "
                         "(cxr_jax.generative.train_gan with this workdir).")
    import ml_collections

    config = ml_collections.ConfigDict(saved["config"])
    generator, discriminator = build_models(config)
    ckpt = Checkpointer(workdir, keep=2)
    try:
        restored = ckpt.restore(init_state(config, generator, discriminator))
    finally:
        ckpt.close()
    if restored is None:
        raise ValueError(f"No GAN checkpoint in {workdir!r}: train first.")
    state: GANState = restored[0]
    return (generator, jax.device_get(state.generator_variables(ema=ema)), config,
            tuple(saved["finding_names"]))
