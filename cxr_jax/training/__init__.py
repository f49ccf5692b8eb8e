"""Training: train state, losses, optimizers, data-parallel steps, orbax checkpoints, the loop.

  steps       TrainState, losses, optimizers, jitted train/eval steps
(the device mesh helpers make_mesh, replicate and shard_batch live in cxr_jax.common.sharding
and are re-exported here)
  checkpoint  periodic and best orbax checkpoints with the data iterator's state
  loop        fit (train or resume, model kept in memory), train, train_and_evaluate (from a
              config), load_trained (a training workdir's model)
"""

from cxr_jax.common.sharding import make_mesh, replicate, shard_batch
from cxr_jax.training.checkpoint import Checkpointer
from cxr_jax.training.loop import (Trained, evaluate, fit, load_trained, predict, train,
                                   train_and_evaluate)
from cxr_jax.training.steps import (LOSSES, TrainState, create_state, loss_fn, make_eval_step,
                                    make_optimizer, make_train_step, predictions)

__all__ = ["Checkpointer", "LOSSES", "TrainState", "Trained", "create_state", "evaluate", "fit",
           "load_trained", "loss_fn", "make_eval_step", "make_mesh", "make_optimizer",
           "make_train_step", "predict", "predictions", "replicate", "shard_batch", "train",
           "train_and_evaluate"]
