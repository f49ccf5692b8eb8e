"""CheXphoto-style transforms: how a radiograph changes when it is photographed off a screen.

Input images are numpy arrays [H, W] or [H, W, 1] with values in [0, 1] (TorchXRayVision-scale
images must be converted first: x_unit = (x + 1024) / 2048). All levelled transforms share one
signature,

    fn(image, level, rng, *, masks=None, boxes=None) -> Photo(image, masks, boxes)

where `level` is an int in 1..4 (`LEVELS`; anything else raises ValueError) and `rng` is a numpy
Generator that supplies every random draw, so one seed always gives one result (`apply` accepts an
int seed, a Generator or a JAX PRNG key in its place). The output image keeps the input's shape,
as float32 clipped to [0, 1].

Only the geometric transforms (`GEOMETRIC`: tilt, rotation, translation and the photographic
recipe) move `masks` ([H, W] or [K, H, W], nearest neighbour, zero fill) and `boxes` ([M, 4] as
x0, y0, x1, y1 in pixels, pixel (i, j) covering [j, j+1) x [i, i+1)); a box's four corners are
mapped, their bounding box is clipped to the image, and a box moved off the image ends up with
zero area. Every other transform hands masks and boxes back unchanged.

Constants come from the CheXphoto release (stanfordmlgroup/cheXphoto). Its pixel sizes assume
images of about 320 pixels and are scaled here by min(H, W) / 320; the moire line gap is not
scaled, as it belongs to the screen's pixel grid. Where this port departs from the release:
rotation and translation keep the image size (the release grows the canvas when rotating and
crops a 100-pixel border when translating), motion blur runs in a random direction rather than
horizontally, and the exposure curve steepens with the level instead of being one fixed sigmoid.
The "digital" recipe is contrast up or down followed by brightness up or down at the same level;
"photographic" is glare_matte, then moire, then tilt.

Modules:
  _common     `Photo`, `LEVELS`, argument checks and the level and size factors.
  geometry    `warp`, `homography`, `translate`, `rotate`; tilt, rotation, translation.
  appearance  brightness, contrast, blur, motion blur, glare, moire, exposure.
  recipes     the digital and photographic recipes and the `jpeg` round trip.
  registry    `TRANSFORMS` by name, `GEOMETRIC`, `names`, `as_rng`, `apply`.
  batched     jit-compiled batch versions on device: `apply_batch`, `photo_batch`, `unwarp`, ...
  augment     `PhotoAugment`, a Grain random map that photographs training images.

Example:
  >>> image = np.full((64, 64), 0.5, np.float32)
  >>> out = apply("tilt", image, 2, 0, masks=image > 0.4, boxes=[[8, 8, 24, 24]])
  >>> out.image.shape, out.masks.dtype, out.boxes.shape
  ((64, 64), dtype('bool'), (1, 4))
  >>> photo_like = jpeg(apply("photographic", image, 1, 0).image)
"""

from cxr_jax.data.photo._common import LEVELS, REFERENCE_SIZE, Photo
from cxr_jax.data.photo.appearance import (blur, brightness_down, brightness_up, contrast_down,
                                           contrast_up, exposure, glare_glossy, glare_matte,
                                           moire, motion_blur)
from cxr_jax.data.photo.geometry import (homography, rotate, rotation, tilt, translate,
                                         translation, warp)
from cxr_jax.data.photo.recipes import digital, jpeg, photographic
from cxr_jax.data.photo.registry import GEOMETRIC, TRANSFORMS, Transform, apply, as_rng, names
from cxr_jax.data.photo.batched import (apply_batch, homographies, jpeg_batch, photo_batch,
                                        unwarp, warp_masks)
from cxr_jax.data.photo.augment import PhotoAugment

__all__ = [
    "LEVELS",
    "REFERENCE_SIZE",
    "Photo",
    "Transform",
    "TRANSFORMS",
    "GEOMETRIC",
    "names",
    "as_rng",
    "apply",
    "warp",
    "homography",
    "translate",
    "rotate",
    "brightness_up",
    "brightness_down",
    "contrast_up",
    "contrast_down",
    "blur",
    "motion_blur",
    "glare_matte",
    "glare_glossy",
    "moire",
    "exposure",
    "tilt",
    "rotation",
    "translation",
    "digital",
    "photographic",
    "jpeg",
    "apply_batch",
    "photo_batch",
    "jpeg_batch",
    "unwarp",
    "warp_masks",
    "homographies",
    "PhotoAugment",
]
