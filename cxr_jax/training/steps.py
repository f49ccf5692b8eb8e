"""Train state, losses, optimizers and the jitted train/eval steps (data parallel over a mesh).

The steps are pure functions of (state, batch). Data parallelism needs no special code: the batch
is sharded over the mesh's "data" axis, the state is replicated, and `jax.jit` inserts the
cross-device reductions (gradient mean, batch-norm statistics over the global batch).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from cxr_jax.models import Model

Array = jax.Array
LOSSES = ("bce", "ce", "mse")


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes, as one pytree.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params, batch_stats: the model's variables.
      opt_state: the optax state.
      key: raw PRNG key data (uint32 [2]); each step folds in its step number.
    """

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(*, name: str = "adamw", learning_rate: float = 1e-3, total_steps: int,
                   warmup_steps: int = 0, weight_decay: float = 1e-4,
                   schedule: str = "cosine", clip_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
    """An optax optimizer with linear warm-up then a cosine (or constant) schedule.

    Args:
      name: "adamw", "adam" or "sgd" (momentum 0.9, nesterov).
      learning_rate: peak learning rate.
      total_steps: length of the schedule.
      warmup_steps: linear warm-up from 0.
      weight_decay: decoupled weight decay (adamw) or L2 added to the gradient (sgd).
      schedule: "cosine" (decay to 0 at total_steps) or "constant".
      clip_norm: global-norm gradient clipping, or None.
    """
    if schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 0),
                                                max(total_steps, warmup_steps + 1))
    elif schedule == "constant":
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
             optax.constant_schedule(learning_rate)], [warmup_steps])
    else:
        raise ValueError(f"Unknown schedule {schedule!r}: use 'cosine' or 'constant'.")
    if name == "adamw":
        opt = optax.adamw(lr, weight_decay=weight_decay)
    elif name == "adam":
        opt = optax.adam(lr)
    elif name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(weight_decay),
                          optax.sgd(lr, momentum=0.9, nesterov=True))
    else:
        raise ValueError(f"Unknown optimizer {name!r}: use 'adamw', 'adam' or 'sgd'.")
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt


def create_state(model: Model, tx: optax.GradientTransformation, *, image_size: int,
                 seed: int = 0) -> TrainState:
    """Initialises variables and optimizer state."""
    key = jax.random.PRNGKey(seed)
    x = jnp.zeros((1, image_size, image_size, model.in_channels), jnp.float32)
    variables = model.init(jax.random.fold_in(key, 1), x)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      key=key)


def loss_fn(kind: str, logits: Array, labels: Array,
            class_weights: Array | None = None, label_smoothing: float = 0.0) -> Array:
    """Mean training loss.

    Args:
      kind: "bce" multi-label sigmoid binary cross-entropy over [B, K] labels in {0, 1, NaN}
        (NaN = unknown, e.g. CheXpert's U-Ignore: masked out), optionally weighted per class;
        "ce" softmax cross-entropy with integer labels [B]; "mse" squared error with float
        targets [B] or [B, 1] (severity regression).
      logits: model outputs [B, K] (computed in float32).
      labels: as above.
      class_weights: [K] weights for "bce".
      label_smoothing: eps for "bce" and "ce": targets move eps of the way to uniform (bce:
        y -> y (1 - eps) + eps / 2). With eps > 0 the loss is minimal at a finite logit
        (log((2 - eps) / eps) for bce, 3.7 at eps = 0.05): the label-smoothing
        regularisation CheXpert models use against overconfident labels.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    logits = logits.astype(jnp.float32)
    if kind == "bce":
        mask = ~jnp.isnan(labels)
        y = jnp.where(mask, labels, 0.0) * (1.0 - label_smoothing) + 0.5 * label_smoothing
        per = optax.sigmoid_binary_cross_entropy(logits, y)
        w = mask.astype(jnp.float32)
        if class_weights is not None:
            w = w * jnp.asarray(class_weights, jnp.float32)[None, :]
        return jnp.sum(per * w) / jnp.maximum(jnp.sum(mask), 1.0)
    if kind == "ce":
        k = logits.shape[-1]
        y = jax.nn.one_hot(labels.astype(jnp.int32), k) * (1.0 - label_smoothing)
        return jnp.mean(optax.softmax_cross_entropy(logits, y + label_smoothing / k))
    if kind == "mse":
        return jnp.mean((logits.reshape(labels.shape[0], -1)[:, 0]
                         - labels.reshape(labels.shape[0], -1)[:, 0]) ** 2)
    raise ValueError(f"Unknown loss {kind!r}: use one of {LOSSES}.")


def predictions(kind: str, logits: Array) -> Array:
    """Scores used for metrics: sigmoid (bce), softmax (ce) or the raw output (mse)."""
    logits = logits.astype(jnp.float32)
    if kind == "bce":
        return jax.nn.sigmoid(logits)
    if kind == "ce":
        return jax.nn.softmax(logits, axis=-1)
    return logits


def make_train_step(model: Model, tx: optax.GradientTransformation, *, loss: str,
                    class_weights: Array | None = None,
                    label_smoothing: float = 0.0) -> Callable:
    """`train_step(state, images, labels) -> (state, {"loss", "grad_norm"})`, pure (jit it)."""
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}: use one of {LOSSES}.")

    def step(state: TrainState, images: Array, labels: Array):
        def objective(params):
            logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"])
            return (loss_fn(loss, logits, labels, class_weights, label_smoothing),
                    upd["batch_stats"])

        (value, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
        return new, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return step


def make_eval_step(model: Model, *, loss: str) -> Callable:
    """`eval_step(variables, images) -> scores [B, K]` (sigmoid / softmax / raw)."""

    def step(variables, images):
        return predictions(loss, model.apply(variables, images))

    return step


