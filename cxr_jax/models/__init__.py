"""Stage-pipeline Flax models named and laid out as torchvision's.

  base      Model (stages, apply with taps/edits/start), Stage, Layers (what a model declares),
            layer resolution and the one "valid stage names" message
  layers    building blocks: ReLU and guided ReLU, loop-safe convolutions, pools, BatchNorm
  densenet  DenseNet-121/169 and densenet_tiny
  resnet    ResNet-18/34/50/152, resnet_tiny(_bottleneck), resnet_small
  registry  models by name: get(name, num_classes=...), names()
  loading   load(path) -> Loaded(model, variables, metadata) from a training workdir or a
            converted checkpoint; Metadata (findings, input convention, outputs)
"""

from cxr_jax.models.base import (Layers, Model, Stage, check_stage, default_layer,
                                 resolve_layer, stage_shapes)
from cxr_jax.models.layers import guided_relu
from cxr_jax.models.loading import Loaded, Metadata, load
from cxr_jax.models.registry import get, names

__all__ = ["Layers", "Model", "Stage", "check_stage", "default_layer", "get", "guided_relu",
           "Loaded", "Metadata", "load", "names", "resolve_layer", "stage_shapes"]
