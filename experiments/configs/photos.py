r"""Config of the photo study (cxr_jax.photos.study): models on CheXphoto-style photos.

    python -m experiments.photos --workdir runs/photos --config=experiments/configs/photos.py:quick
    python -m experiments.photos --workdir runs/photos_full \
        --config=experiments/configs/photos.py:full
    python -m experiments.photos --workdir runs/photos_mine \
        --config=experiments/configs/photos.py:quick --config.models=runs/quickstart \
        --config.augmented=

    python -m experiments.photos --workdir runs/chexphoto \
        --config=experiments/configs/photos.py:quick --config.data_dir=/data \
        --config.models=xrv_dir --config.augmented=

`models` lists architectures to train here on phantoms, or folders (training workdirs such as
the quickstart's, or converted checkpoints) to load; `augmented` lists architectures trained a
second time with photo augmentation (the remedy). With `data_dir` the study instead scores the
model folders on the real CheXphoto release (photos against their CheXpert originals, the five
competition tasks). Variants: "quick" (two small models and the
remedy at 128 px; within 15 minutes on a 2-core CPU), "full" (DenseNet-121 and ResNet-50 at
224 px, GPU-sized), "test" (seconds: the unit tests).
"""

import ml_collections


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.models = ("resnet_small", "densenet_tiny")
    c.augmented = ("resnet_small",)
    c.augment_probability = 0.5   # share of training images photographed (the remedy)
    # ---- phantoms and training (the models trained here)
    c.image_size = 128
    c.phantom_style = "v2"
    c.phantom_contrast = 1.0
    c.num_train = 6000
    c.num_test = 500              # held-out images scored under every condition
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.learning_rate = 6e-3
    c.warmup_steps = 100
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.batch_size = 32
    c.eval_batch_size = 100
    c.steps = 1200
    c.eval_every = 400
    c.checkpoint_every = 400
    c.seed = 0
    c.bf16 = False
    # ---- conditions
    c.transforms = ()             # empty: every transform of cxr_jax.data.photo.batched.NAMES
    c.levels = (1, 2, 3, 4)
    c.jpeg = True                 # also the JPEG round trip (quality 75)
    c.photo_batch = 125
    # ---- explanations
    c.methods = ("gradient", "integrated_gradients", "gradcam", "normgrad")
    c.cam_layer = "stride16"      # layer of the CAM-family methods and NormGrad
    c.num_explain = 48            # held-out positives explained (findings taken in turn)
    c.estimation_images = 256     # training images for methods that estimate statistics (IBA)
    # ---- the real CheXphoto release (instead of phantoms) when data_dir is set
    c.data_dir = ""               # the folder CheXphoto's Paths are relative to
    c.chexpert_dir = ""           # the folder CheXpert's Paths are relative to (default data_dir)
    c.photo_csv = "CheXphoto-v1.0/valid/valid.csv"      # relative to data_dir
    c.original_csv = "CheXpert-v1.0/valid/valid.csv"    # relative to chexpert_dir
    c.policy = "zeros"            # CheXpert uncertainty policy: ignore | zeros | ones
    c.real_limit = 0              # pairs per subset (0: all)
    # ---- report
    c.n_boot = 2000
    c.grid_level = 3
    if variant == "quick":
        pass
    elif variant == "full":
        c.models = ("densenet121", "resnet50")
        c.augmented = ("densenet121",)
        c.image_size = 224
        c.num_train = 20000
        c.num_test = 2000
        c.learning_rate = 1e-3
        c.warmup_steps = 200
        c.steps = 5000
        c.eval_every = 500
        c.checkpoint_every = 500
        c.eval_batch_size = 50
        c.photo_batch = 100
        c.num_explain = 200
        c.methods = ("gradient", "integrated_gradients", "gradcam", "normgrad", "iba")
    elif variant == "test":
        c.models = ("resnet_tiny",)
        c.augmented = ("resnet_tiny",)
        c.image_size = 32
        c.num_train = 48
        c.num_test = 48
        c.batch_size = 8
        c.eval_batch_size = 16
        c.steps = 2
        c.warmup_steps = 1
        c.eval_every = 2
        c.checkpoint_every = 2
        c.transforms = ("brightness_up", "rotation", "photographic")
        c.levels = (1, 4)
        c.photo_batch = 16
        c.methods = ("gradient", "gradcam")
        c.cam_layer = ""
        c.num_explain = 6
        c.estimation_images = 16
        c.n_boot = 200
        c.grid_level = 4
    else:
        raise ValueError(f"Unknown config variant {variant!r}: quick, full or test.")
    return c
