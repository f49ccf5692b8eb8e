"""The per-image optimisation of a bottleneck: settings, keys, model losses and the Adam loop.

Each image has its own alpha [h, w, C] and its own optax Adam state (vmapped over the batch); a
`lax.scan` runs the steps; a step reruns only the stages after the bottleneck on the
B x samples noisy activations folded into one batch. The smoothed masks and the noise a step
uses are made by the step before and carried, so XLA computes each once. One program explains
a batch, with no host round trips; keys are explicit (`fold_in` per image and per step).
Several bottlenecks (Multi-layer IBA) are optimised in the same loop, each on its own, their
noisy activations joining one suffix pass at their layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from cxr_jax.attribution.common import auto_chunk
from cxr_jax.attribution.iba.bottleneck import kl_capacity, smooth, standard_normal
from cxr_jax.attribution.iba.stats import IBAStats
from cxr_jax.common.targets import class_indices
from cxr_jax.models import Model

Array = jax.Array

CLASSIFIER_LOSSES = ("bce", "ce")
REGRESSION_LOSSES = ("mse", "push_up")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The optimisation's hyperparameters, shared by every method of the IBA family.

    Defaults are the reference's: beta 10, 10 Adam steps at lr 1, 10 noise samples per step,
    alpha0 5, smoothing sigma 1 (Multi-layer IBA overrides samples with 5).

    Attributes:
      beta: weight of the mean capacity against the model loss.
      steps: Adam steps per image.
      lr: Adam learning rate.
      samples: noise draws per step (the suffix runs on B * samples activations per step).
      alpha0: initial alpha (lambda = sigmoid(alpha0), 0.993 for 5).
      sigma: std of the Gaussian smoothing of lambda (kernel 2 round(2 sigma) + 1, reflect
        padding); 0 disables it.
      active_threshold: features non-zero in at most this fraction of the data are masked out
        of z and of the capacity.
      unroll: `lax.scan`'s unroll for the steps; None (the default) is 1, a rolled loop. On
        DenseNet-121 at denseblock3 (224 px, batch 8, our 2-core CPU) the rolled loop runs
        IBA at 17-19 forward passes per image, as fast as the unrolled one, and compiles in
        6 s instead of 15 (Multi-layer IBA: 15 s instead of 100). The maps do not depend on it.
      chunk: images optimised together (their chunk x samples noisy activations go through
        the suffix as one batch); chunks run one after another, so memory stays bounded. None:
        about 16 suffix images per pass (1 image at 10 samples), lowered to the chunk that
        pads the batch least, best on CPU; raise it on accelerators. The maps do not depend
        on it.
    """

    beta: Any = 10.0
    steps: int = 10
    lr: Any = 1.0
    samples: int = 10
    alpha0: Any = 5.0
    sigma: Any = 1.0
    active_threshold: Any = 0.01
    unroll: int | bool | None = None
    chunk: int | None = None

    @classmethod
    def of(cls, method: str, hparams: dict, **defaults) -> "Settings":
        """Settings from a method's keyword arguments (over `defaults`), checked."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(hparams) - names)
        if unknown:
            raise TypeError(f"{method} got unknown hyperparameter(s) {unknown}; the "
                            f"optimisation takes {sorted(names)}.")
        s = cls(**{**defaults, **hparams})
        if not isinstance(s.steps, int) or s.steps < 1:
            raise ValueError(f"{method}: steps must be an int >= 1, got {s.steps!r}.")
        if not isinstance(s.samples, int) or s.samples < 1:
            raise ValueError(f"{method}: samples must be an int >= 1, got {s.samples!r}.")
        if s.sigma is not None and (not isinstance(s.sigma, (int, float)) or s.sigma < 0):
            raise ValueError(f"{method}: sigma must be a number >= 0 (0 or None: no smoothing), "
                             f"got {s.sigma!r}.")
        if isinstance(s.beta, (int, float)) and s.beta < 0:
            raise ValueError(f"{method}: beta must be >= 0, got {s.beta!r}.")
        return s


def image_keys(key: Any, batch: int) -> Array:
    """One key per image: `fold_in(key, i)` for a single key, or the caller's B keys."""
    if key is None:
        key = jax.random.key(0)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2):
            raise ValueError(f"key must be a PRNG key (jax.random.key), one per image, or raw "
                             f"uint32 key data; got dtype {key.dtype}, shape {key.shape}.")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if key.shape != (batch,):
        raise ValueError(f"Expected a single key or one key per image ({batch},), got key "
                         f"shape {key.shape}.")
    return key


# ---------------------------------------------------------------------------- model losses
def _per_image_score(model: Model, targets: Any, batch: int):
    """(index [B] or None, callable or None): the target as a class per image or a function."""
    if callable(targets):
        return None, targets
    return class_indices(targets, batch, num_classes=model.num_classes,
                         owner=f"model {model.name!r}"), None


def _scorer(fn):
    """score(logits [S, K], t) for one image: the callable's score, or logit t."""
    return lambda logits, t: fn(logits) if fn is not None else jnp.take(logits, t, axis=-1)


def classifier_loss(model: Model, targets: Any, loss: str, batch: int, method: str):
    """(model_loss(logits [S, K], t_i), per-image aux [B]) for the explained finding."""
    if loss not in CLASSIFIER_LOSSES:
        raise ValueError(f"{method}: loss must be one of {CLASSIFIER_LOSSES} ('bce': sigmoid "
                         f"cross-entropy of the finding with label 1, multi-label models; 'ce': "
                         f"softmax cross-entropy, single-label models), got {loss!r}.")
    index, fn = _per_image_score(model, targets, batch)
    if loss == "ce" and fn is not None:
        raise ValueError(f"{method}: loss='ce' needs class indices as targets; with a callable "
                         f"target use loss='bce'.")
    score = _scorer(fn)
    if loss == "bce":
        def model_loss(logits, t):  # BCE with logits against label 1 = softplus(-score)
            return jnp.mean(jax.nn.softplus(-score(logits.astype(jnp.float32), t)))
    else:
        def model_loss(logits, t):
            return -jnp.mean(jnp.take(jax.nn.log_softmax(logits.astype(jnp.float32), -1), t,
                                      axis=-1))
    aux = index if index is not None else jnp.zeros((batch,), jnp.int32)
    return model_loss, aux


def regression_loss(model: Model, logits: Array, targets: Any, loss: str, target_score: Any,
                    batch: int, method: str):
    """(model_loss(logits [S, K], aux_i), per-image aux) for a score regressor."""
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"{method}: loss must be one of {REGRESSION_LOSSES} ('mse': squared "
                         f"error to target_score; 'push_up': -MSE(f(z), 0), push the score's "
                         f"magnitude up), got {loss!r}.")
    if targets is None:
        if model.num_classes != 1:
            raise ValueError(f"{method}: targets=None picks the single output of a regression "
                             f"head, but {model.name!r} has {model.num_classes} outputs; pass "
                             f"the output index or a callable logits -> score.")
        targets = 0
    index, fn = _per_image_score(model, targets, batch)
    score = _scorer(fn)
    if index is None:
        index = jnp.zeros((batch,), jnp.int32)
    if loss == "push_up":
        if target_score is not None:
            raise ValueError(f"{method}: loss='push_up' takes no target_score (it maximises the "
                             f"squared score); use loss='mse' to fit a target.")
        return (lambda lg, aux: -jnp.mean(jnp.square(score(lg.astype(jnp.float32), aux)))), index
    if target_score is None:
        # Keep the prediction: the unperturbed model's own score for each image.
        goal = jax.vmap(lambda lg, t: score(lg[None], t)[0])(logits.astype(jnp.float32), index)
        goal = jax.lax.stop_gradient(goal)
    else:
        goal = jnp.broadcast_to(jnp.asarray(target_score, jnp.float32), (batch,))

    def model_loss(lg, aux):
        t, g = aux
        return jnp.mean(jnp.square(score(lg.astype(jnp.float32), t) - g))

    return model_loss, (index, goal)


# ------------------------------------------------------------------------------- the loop
def least_padding_chunk(largest: int, batch: int) -> int:
    """The chunk of at most `largest` images that pads `batch` least (the largest such).

    A padded image is a whole optimisation thrown away: at 5 noise samples the automatic chunk
    is 3 images, which pads a batch of 8 to 9 (Multi-layer IBA on DenseNet-121 took 11% longer
    per image than at 2 or 4, measured side by side), while 2 divides it.
    """
    return min(range(1, largest + 1), key=lambda c: (-(-batch // c) * c, -c))


def optimise(suffix: Callable[[tuple[Array, ...]], tuple[Array, ...]], R: Sequence[Array],
             aux: Any, keys: Sequence[Array], stats: Sequence[IBAStats],
             model_loss: Callable[[Array, Any], Array], settings: Settings, *,
             inverse: bool) -> tuple[Array, ...]:
    """`optimise_images` on `settings.chunk` images at a time (None: `auto_chunk`, lowered
    to the chunk that pads the batch least, `least_padding_chunk`).

    The optimisations of different images are independent, so a `lax.map` over chunks gives
    the same capacities with memory for chunk x samples suffix passes instead of B x samples
    (a DenseNet-121 multi-layer IBA at 224 px, batch 8, needed 26 GB in one piece). The batch is
    padded to a multiple of the chunk by repeating its last image, so one program is compiled.
    Arguments as `optimise_images`.
    """
    batch = R[0].shape[0]
    c = min(auto_chunk(settings.chunk, settings.samples), batch)
    if settings.chunk is None:
        c = least_padding_chunk(c, batch)
    if c == batch:
        return optimise_images(suffix, R, aux, keys, stats, model_loss, settings,
                               inverse=inverse)
    n = -(-batch // c)
    idx = jnp.minimum(jnp.arange(n * c), batch - 1)
    split = lambda a: a[idx].reshape((n, c) + a.shape[1:])
    caps = jax.lax.map(
        lambda args: optimise_images(suffix, *args, stats, model_loss, settings,
                                     inverse=inverse),
        jax.tree_util.tree_map(split, (tuple(R), aux, tuple(keys))))
    return tuple(cap.reshape((n * c,) + cap.shape[2:])[:batch] for cap in caps)


def optimise_images(suffix: Callable[[tuple[Array, ...]], tuple[Array, ...]],
                    R: Sequence[Array], aux: Any, keys: Sequence[Array],
                    stats: Sequence[IBAStats], model_loss: Callable[[Array, Any], Array],
                    settings: Settings, *, inverse: bool) -> tuple[Array, ...]:
    """Per-image bottleneck optimisation for a batch, at one or several layers at once.

    Each layer l has its own bottleneck, alpha_l and Adam state per image. In a step each
    image's noise comes from its key for that layer folded with the step; the noisy
    activations of every layer go through `suffix` together, and the
    loss is the sum of the per-image, per-layer losses. Images do not interact (eval-mode batch
    norm) and neither do layers (layer l's loss reads only its own logits), so the gradient
    with respect to alpha_l of image i is that of image i at layer l alone: the capacities
    equal separate optimisations, while one program holds the stages the layers share.

    Args:
      suffix: (z_1 [N, ...], ..., z_L [N, ...]) -> (logits_1 [N, K], ..., logits_L [N, K]):
        each layer's noisy activations through the stages after that layer.
      R: activations at each bottleneck, [B, h_l, w_l, C_l] per layer.
      aux: per-image data for the model loss (pytree with leading B).
      keys: one PRNG key per image [B], per layer.
      stats: each layer's statistics.
      model_loss: (logits [S, K], aux_i) -> scalar model loss of one image.
      settings: the hyperparameters.
      inverse: Inverse IBA: signal and noise swapped, the model loss maximised.
    Returns:
      Per layer, the capacity the last step evaluated (as the reference reports it),
      [B, h_l, w_l, C_l].
    """
    s = settings
    R = tuple(r.astype(jnp.float32) for r in R)
    batch = R[0].shape[0]
    active = tuple((st.active_rate > s.active_threshold).astype(jnp.float32) for st in stats)
    r_std = tuple((r - st.mean) / st.std for r, st in zip(R, stats))
    # Inactive features are zero in z: fold the mask into signal and noise once.
    signal = tuple(r * a for r, a in zip(R, active))
    mu = tuple(st.mean * a for st, a in zip(stats, active))
    sd = tuple(st.std * a for st, a in zip(stats, active))
    opt = optax.adam(s.lr)
    sign = -1.0 if inverse else 1.0

    def lambdas(alpha):  # per layer, [B, h, w, C] each: (lam, 1 - lam without cancellation)
        return tuple((smooth(jax.nn.sigmoid(a), s.sigma), smooth(jax.nn.sigmoid(-a), s.sigma))
                     for a in alpha)

    def draws(i):  # the standard normal draws of step i, per layer [B, samples, h, w, C]
        return tuple(jax.vmap(lambda k, shape=r.shape[1:]: standard_normal(
            jax.random.fold_in(k, i), (s.samples,) + shape))(k) for k, r in zip(keys, R))

    def total_loss(lams, eps):
        loss, zs = 0.0, []
        for l, ((lam, lam_c), e) in enumerate(zip(lams, eps)):
            cap = kl_capacity(r_std[l], lam, lam_c) * active[l]
            noise = mu[l] + sd[l] * e
            lam, lam_c, sig = lam[:, None], lam_c[:, None], signal[l][:, None]
            z = lam * noise + lam_c * sig if inverse else lam * sig + lam_c * noise
            zs.append(z.reshape((batch * s.samples,) + z.shape[2:]))
            loss = loss + s.beta * jnp.mean(cap, axis=(1, 2, 3))
        for logits in suffix(tuple(zs)):
            logits = logits.reshape((batch, s.samples) + logits.shape[1:])
            loss = loss + sign * jax.vmap(model_loss)(logits, aux)
        return jnp.sum(loss)

    # A step differentiates the loss with respect to the smoothed masks and maps that gradient
    # to alpha by the smoothing's own vjp. The masks and the noise a step uses are made at the
    # end of the step before (and carried), so each is computed once per step and stored:
    # XLA:CPU would otherwise fuse them into every consumer, recomputing the noise in the
    # forward and the backward and the smoothing once per noise sample.
    def step(carry, i):
        alpha, state, lams, eps = carry
        grad_lams = jax.grad(total_loss)(lams, eps)
        grad = jax.vjp(lambdas, alpha)[1](grad_lams)[0]
        updates, state = jax.vmap(opt.update)(grad, state, alpha)
        alpha = optax.apply_updates(alpha, updates)
        nxt = jax.lax.cond(i + 1 < s.steps - 1, draws, lambda _: eps, i + 1)
        return (alpha, state, lambdas(alpha), nxt), None

    alpha = tuple(jnp.full(r.shape, s.alpha0, jnp.float32) for r in R)
    carry = (alpha, jax.vmap(opt.init)(alpha), lambdas(alpha), draws(0))
    # The last step's update is never used: only its capacity is reported, and the capacity
    # depends on alpha alone, so steps - 1 updates run through the suffix and none more.
    (alpha, _, lams, _), _ = jax.lax.scan(step, carry, jnp.arange(s.steps - 1),
                                          unroll=1 if s.unroll is None else s.unroll)
    return tuple(kl_capacity(r, *lam) * act for r, lam, act in zip(r_std, lams, active))
