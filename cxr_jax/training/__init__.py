"""Training: train state, losses, optimizers, data-parallel steps, orbax checkpoints, the loop."""

from cxr_jax.training.checkpoint import Checkpointer
from cxr_jax.training.loop import evaluate, load_trained, predict, train
from cxr_jax.training.steps import (LOSSES, TrainState, create_state, loss_fn, make_eval_step,
                                    make_mesh, make_optimizer, make_train_step, predictions,
                                    replicate, shard_batch)

__all__ = ["Checkpointer", "LOSSES", "TrainState", "create_state", "evaluate", "load_trained",
           "loss_fn", "make_eval_step", "make_mesh", "make_optimizer", "make_train_step",
           "predict", "predictions", "replicate", "shard_batch", "train"]
