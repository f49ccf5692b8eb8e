"""The training loop: resumable, data parallel, checkpointed with its data iterator.

`train(config, workdir, train_source, eval_arrays, label_names)` trains until `config.steps`,
evaluating every `config.eval_every` steps and checkpointing every `config.checkpoint_every`.
Started again with the same workdir it resumes from the last complete checkpoint (state, data
iterator position, history and elapsed time) and ends with the same parameters and metrics as an
uninterrupted run.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cxr_jax import metrics, models, runtime
from cxr_jax.common.files import read_json, write_json
from cxr_jax.common.progress import progress as progress_bar
from cxr_jax.data import datasets
from cxr_jax.data.loader import make_loader
from cxr_jax.data.photo.augment import PhotoAugment
from cxr_jax.training.checkpoint import Checkpointer
from cxr_jax.common import sharding
from cxr_jax.common.sharding import make_mesh, replicate, shard_batch
from cxr_jax.training.steps import (TrainState, create_state, make_eval_step, make_optimizer,
                                    make_train_step)


def build_model(config, num_classes: int) -> models.Model:
    """The configured model, in bf16 compute when asked (GPU/TPU)."""
    model = models.get(config.model, num_classes=num_classes, in_channels=1)
    return model.with_dtype(jnp.bfloat16) if config.get("bf16", False) else model


def predict(eval_fn, variables, images: np.ndarray, *, batch_size: int, mesh) -> np.ndarray:
    """Scores for every row of `images` (every process passes all rows), in fixed-size padded
    batches (one compiled shape); with several processes each puts its slice of every batch on
    its devices, and every process gets all scores back."""
    n = len(images)
    procs, p = jax.process_count(), jax.process_index()
    local = sharding.local_rows(-(-batch_size // procs), mesh)  # whole rows per device
    batch_size = local * procs
    pad = (-n) % batch_size
    padded = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]) \
        if pad else images
    outs = [eval_fn(variables, shard_batch(padded[i + p * local:i + (p + 1) * local], mesh))
            for i in range(0, len(padded), batch_size)]
    return np.concatenate(sharding.gather(outs))[:n]


def evaluate(eval_fn, variables, eval_arrays: Mapping[str, np.ndarray], label_names, loss: str,
             *, batch_size: int, mesh) -> dict:
    """Held-out metrics: per-label AUROC (bce), accuracy (ce) or MAE (mse)."""
    scores = predict(eval_fn, variables, eval_arrays["image"], batch_size=batch_size, mesh=mesh)
    labels = eval_arrays["labels"]
    if loss == "bce":
        per = metrics.auroc(scores, labels)
        out = {"auroc": {n: float(v) for n, v in zip(label_names, per)}}
        out["mean_auroc"] = float(np.nanmean(per)) if np.any(np.isfinite(per)) else float("nan")
        return out
    if loss == "ce":
        return {"accuracy": float(metrics.accuracy(scores, labels))}
    return {"mae": float(metrics.mae(scores[:, 0], labels.reshape(len(labels), -1)[:, 0]))}


class Trained(NamedTuple):
    """A finished (or resumed-and-finished) training run: the model, its final variables (in
    memory, nothing reloaded) and the results dict written to results.json."""

    model: models.Model
    variables: dict
    results: dict


def _score_of(ev: Mapping) -> float:
    """Higher is better, for the best-so-far checkpoint."""
    if "mean_auroc" in ev:
        return ev["mean_auroc"]
    if "accuracy" in ev:
        return ev["accuracy"]
    return -ev["mae"]


def _optimizer(config):
    return make_optimizer(name=config.optimizer, learning_rate=config.learning_rate,
                          total_steps=config.steps, warmup_steps=config.warmup_steps,
                          weight_decay=config.weight_decay, schedule=config.schedule)


def _steps(config, model: models.Model):
    """(optimizer, mesh, jitted train step, jitted eval step, per-process batch size)."""
    tx = _optimizer(config)
    mesh = make_mesh()
    n_dev = len(mesh.local_devices)
    if config.batch_size % (n_dev * jax.process_count()):
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the "
                         f"{n_dev * jax.process_count()} devices.")
    weights = config.get("class_weights", None)
    train_step = jax.jit(make_train_step(model, tx, loss=config.loss,
                                         class_weights=None if weights is None
                                         else jnp.asarray(weights),
                                         label_smoothing=config.get("label_smoothing", 0.0)),
                         donate_argnums=0, compiler_options=runtime.train_compiler_options())
    eval_fn = jax.jit(make_eval_step(model, loss=config.loss))
    return tx, mesh, train_step, eval_fn, config.batch_size // jax.process_count()


def _augmentation(config) -> list:
    """The loader's row transforms: photo augmentation when `config.photo_augment` > 0 (the
    share of training images photographed, each with its own random transform and level)."""
    p = float(config.get("photo_augment", 0.0))
    return [PhotoAugment(p)] if p else []


def _restore(ckpt: Checkpointer, state: TrainState, it, workdir: str):
    """(state, extras) of the last checkpoint, with the data iterator moved to its position;
    the fresh state and empty extras when there is none."""
    restored = ckpt.restore(state)
    if restored is None:
        return state, {"history": [], "train_seconds": 0.0, "iterator": None}
    state, extras = restored
    it.set_state(extras["iterator"].encode())
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
    return state, extras


def fit(config, workdir: str, train_source, eval_arrays: Mapping[str, np.ndarray],
        label_names: Sequence[str], *, progress: bool = True) -> Trained:
    """Trains (or resumes) until `config.steps`; returns the model, its variables and results.

    Args:
      config: ml_collections.ConfigDict with model, loss, steps, batch_size, learning_rate,
        warmup_steps, weight_decay, optimizer, schedule, eval_every, checkpoint_every, seed,
        image_size, and optionally bf16, class_weights, label_smoothing, photo_augment (share
        of training images given a random CheXphoto transform), kill_at_step (testing:
        SIGKILL itself right after that step's checkpoint is started, to prove resumption).
      workdir: where checkpoints, history and results go.
      train_source: a Grain random-access source of {"image", "labels"} rows.
      eval_arrays: {"image": [N,H,W,1], "labels": [N,K] or [N]} held-out data.
      label_names: names of the K outputs.
    Returns:
      `Trained(model, variables, results)`; results: {"auroc" | "accuracy" | "mae": ...,
      "history": [...], "train_seconds", "resumed_from_step", "steps", "model", "device" (the
      devices of this last session, e.g. "1 x cpu"), "checkpoint"}.
    """
    os.makedirs(workdir, exist_ok=True)
    if runtime.is_writer():
        write_json(os.path.join(workdir, "config.json"),
                   {"config": config.to_dict(), "label_names": list(label_names)})
    model = build_model(config, 1 if config.loss == "mse" else len(label_names))
    tx, mesh, train_step, eval_fn, local_batch = _steps(config, model)
    state = create_state(model, tx, image_size=config.image_size, seed=config.seed)
    ckpt = Checkpointer(workdir, keep=2, best_metric="score", best_mode="max")
    it = iter(make_loader(train_source, batch_size=local_batch, seed=config.seed,
                          transforms=_augmentation(config)))
    state, extras = _restore(ckpt, state, it, workdir)
    resumed_from = int(state.step)
    state = replicate(state, mesh)
    evaluate_now = functools.partial(evaluate, eval_fn, eval_arrays=eval_arrays,
                                     label_names=label_names, loss=config.loss,
                                     batch_size=config.eval_batch_size, mesh=mesh)
    t0, elapsed0 = time.perf_counter(), float(extras["train_seconds"])
    bar = (progress_bar(config.steps, desc="train", unit="step", initial=int(state.step))
           if progress and runtime.is_writer() else None)
    losses, history = [], list(extras["history"])
    for step in range(int(state.step) + 1, config.steps + 1):
        batch = next(it)
        state, m = train_step(state, *shard_batch((batch["image"], batch["labels"]), mesh))
        losses.append(m["loss"])
        if bar is not None:
            bar.update(1)
        last = step == config.steps
        if step % config.eval_every == 0 or last:
            ev = evaluate_now(state.variables)
            ev["step"] = step
            ev["train_loss"] = float(jnp.mean(jnp.stack(losses)))  # one host sync per eval
            losses = []
            history.append(ev)
            if bar is not None:
                bar.set_postfix(loss=f"{ev['train_loss']:.3f}", score=f"{_score_of(ev):.3f}")
            logging.info("step %d: %s", step, {k: v for k, v in ev.items() if k != "auroc"})
        if step % config.checkpoint_every == 0 or last:
            extras = {"history": history, "iterator": it.get_state().decode(),
                      "train_seconds": elapsed0 + time.perf_counter() - t0}
            ckpt.save(step, state, extras)
            if history and history[-1]["step"] == step:
                ckpt.save_best(step, state, extras, {"score": _score_of(history[-1])})
            if config.get("kill_at_step", 0) == step:
                os.kill(os.getpid(), signal.SIGKILL)
    if bar is not None:
        bar.close()
    ckpt.wait()
    final = history[-1] if history else evaluate_now(state.variables)
    results = {k: v for k, v in final.items() if k not in ("step", "train_loss")}
    results.update(history=history, train_seconds=elapsed0 + time.perf_counter() - t0,
                   resumed_from_step=resumed_from, steps=config.steps, model=config.model,
                   device=runtime.device_summary(),
                   checkpoint=os.path.join(os.path.abspath(workdir), "checkpoints"))
    if runtime.is_writer():
        write_json(os.path.join(workdir, "results.json"), results)
    ckpt.close()
    return Trained(model, state.variables, results)


def train(config, workdir: str, train_source, eval_arrays: Mapping[str, np.ndarray],
          label_names: Sequence[str], *, progress: bool = True) -> dict:
    """Trains (or resumes) and returns the results dict written to `workdir/results.json`
    (`fit` without the model and variables)."""
    return fit(config, workdir, train_source, eval_arrays, label_names,
               progress=progress).results


def train_and_evaluate(config, workdir: str, *, progress: bool = True,
                       data: datasets.Dataset | None = None) -> Trained:
    """The training study: builds `config.dataset` (`cxr_jax.data.datasets.build`) unless `data`
    is that dataset already built, takes its natural loss unless `config.loss` names one, and
    trains into `workdir` (resumable)."""
    data = datasets.build(config) if data is None else data
    with config.unlocked():
        config.loss = config.loss or data.loss
    return fit(config, workdir, data.train, data.eval, data.label_names, progress=progress)


def load_trained(workdir: str, *, best: bool = False):
    """(model, variables, config, label_names) from a training workdir's latest (or best)
    checkpoint; the config and label names are read from the `config.json` training wrote."""
    saved = read_json(os.path.join(workdir, "config.json"))
    if saved is None:
        raise ValueError(f"No config.json in {workdir!r}: is it a training workdir? Train first "
                         "(experiments.train or experiments.quickstart with this --workdir).")
    import ml_collections

    config = ml_collections.ConfigDict(saved["config"])
    label_names = tuple(saved["label_names"])
    num_classes = 1 if config.loss == "mse" else len(label_names)
    model = build_model(config, num_classes)
    template = create_state(model, _optimizer(config), image_size=config.image_size,
                            seed=config.seed)
    ckpt = Checkpointer(workdir, best_metric="score")
    restored = ckpt.restore(template, best=best)
    ckpt.close()
    if restored is None:
        raise ValueError(f"No checkpoint in {workdir!r}: train first (experiments.train or "
                         "experiments.quickstart with this --workdir).")
    state: TrainState = restored[0]
    return model, jax.device_get(state.variables), config, label_names

