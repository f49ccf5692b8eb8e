"""Stage-pipeline Flax models named and laid out as torchvision's."""

from cxr_jax.models.base import Model, Stage, stage_shapes
from cxr_jax.models.layers import guided_relu
from cxr_jax.models.registry import default_layer, get, names

__all__ = ["Model", "Stage", "default_layer", "get", "guided_relu", "names", "stage_shapes"]
