r"""Explain config: method hyperparameters and output options of `experiments.explain`.

    python -m experiments.explain --model runs/quickstart --images my_pngs/ --workdir runs/ex \
        --methods gradcam,integrated_gradients,iba \
        --config.hparams.integrated_gradients.steps=32 --config.hparams.iba.beta=10

`hparams.<method>` holds every hyperparameter of each registered method with the value the
command uses (`Method.parameters(fast=True)`: the registry's fast settings over the method's
defaults); those of the methods chosen with --methods are passed on. Hyperparameters whose
default is None (e.g. chunk sizes) are left out and keep it, except Integrated Gradients'
baseline: "black" here (the model's input for a black image), "zero" for METHODS.md's b = 0.
The other fields are the options of `cxr_jax.explain.explain_files`.
"""

import ml_collections

from cxr_jax import attribution


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.hparams = ml_collections.ConfigDict({
        info.name: {k: v for k, v in info.parameters(fast=True).items() if v is not None}
        for info in attribution.infos()})
    # IG from the black image, as the evaluation configs do (evaluate.py says why); "zero" is
    # METHODS.md's b = 0, a number sets any other (`cxr_jax.explain.named_baseline`).
    c.hparams.integrated_gradients.baseline = "black"
    c.batch_size = 8
    c.stats_images = 1000        # images decoded to estimate IBA statistics (when needed)
    c.maps_dtype = "float32"     # or "float16" (each map scaled by its max |value|)
    c.overlays = True
    c.page_size = 50             # images per gallery page
    c.min_side = 64              # shorter sides below this are refused as too small
    c.seed = 0
    return c
