r"""Config of the GAN study (cxr_jax.generative.study): medXGAN explanations scored on phantoms.

    python -m experiments.gan --workdir runs/gan --config=experiments/configs/gan.py:quick
    python -m experiments.gan --workdir runs/gan_full --config=experiments/configs/gan.py:full
    python -m experiments.gan --workdir runs/gan_mine --config=experiments/configs/gan.py:quick \
        --config.classifier=runs/quickstart_64 --config.finding=nodule

`classifier` empty trains `arch` here on the phantoms; a folder (a training workdir or a
converted checkpoint taking `image_size` px in [-1024, 1024]) is explained instead. `gan` holds
train_gan's keys (`cxr_jax.generative.train.default_config`) except image_size, finding and
seed, which come from the top level. Variants: "quick" (64 px, within 15 minutes on a 2-core
CPU, classifier training included), "full" (128 px, GPU-sized), "test" (seconds: the unit
test).
"""

import ml_collections


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.finding = "opacity"          # the finding the GAN draws and the maps explain
    c.classifier = ""              # a model folder to explain; empty: train `arch` here
    c.arch = "resnet_tiny"
    # ---- phantoms and classifier training (cxr_jax.training.fit)
    c.image_size = 64              # 64 or 128 (the GAN's sizes)
    c.phantom_style = "v2"
    c.phantom_contrast = 1.0
    c.num_train = 4000             # training phantoms (classifier and GAN)
    c.num_test = 400               # held-out phantoms (classifier AUROC, images to invert)
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.learning_rate = 6e-3
    c.warmup_steps = 50
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.batch_size = 32
    c.eval_batch_size = 100
    c.steps = 2000
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.seed = 0
    c.bf16 = False
    # ---- the GAN (train_gan's keys; see cxr_jax.generative.train)
    c.gan = ml_collections.ConfigDict(dict(
        z_anatomy=64, z_pathology=8, g_width=16, d_width=16, guidance_weight=1.0,
        conditional=True,
        batch_size=32, steps=3000, lr_g=2e-4, lr_d=4e-4, beta1=0.0, beta2=0.9, ema=0.99,
        checkpoint_every=600, sample_every=1000, sample_rows=4, sample_columns=3))
    # ---- inversion and explanations
    c.num_invert = 16              # held-out positives of the finding inverted and explained
    c.invert_steps = 300           # Adam steps of the inversion (the released code: 5000)
    c.invert_lr = 0.05
    c.recon_weight = 4.0
    c.prob_weight = 1.0
    c.num_alphas = 11              # points of the strips and response curves (alpha 0 .. 1)
    c.ig_steps = 33                # latent IG path points
    c.methods = ("gradcam", "integrated_gradients", "multilayer_iba")
    c.cam_layer = "stride16"       # Grad-CAM's layer ("" = the model's default, layer4: 2 x 2
                                   # at 64 px; stride16 = layer3, 4 x 4)
    c.estimation_images = 256      # training images for IBA's feature statistics
    c.tolerance_at_224 = 15.0      # pointing-game tolerance (px at 224, scaled to image_size)
    c.num_show = 4                 # images shown in the strips and overlays
    # ---- disentanglement and sample quality
    c.num_draws = 1000             # random (z_a, z_p) pairs
    c.draw_batch = 100
    c.threshold = 0.5              # p >= threshold: the classifier calls the finding present
    c.fd_samples = 1000            # real and generated images per Frechet set
    c.fd_batch = 100
    if variant == "quick":
        pass
    elif variant == "full":
        c.image_size = 128
        c.arch = "resnet_small"
        c.num_train = 20000
        c.num_test = 2000
        c.learning_rate = 2e-3
        c.warmup_steps = 200
        c.steps = 4000
        c.eval_every = 1000
        c.checkpoint_every = 1000
        c.gan.update(dict(z_anatomy=100, z_pathology=10, g_width=64, d_width=64, batch_size=64,
                          steps=20000, lr_g=1e-4, lr_d=4e-4, ema=0.999, checkpoint_every=1000,
                          sample_every=2000))
        c.num_invert = 100
        c.invert_steps = 2000
        c.invert_lr = 0.01
        c.ig_steps = 101
        c.num_draws = 1000
        c.fd_samples = 5000
    elif variant == "test":
        c.num_train = 48
        c.num_test = 24
        c.batch_size = 8
        c.eval_batch_size = 24
        c.steps = 2
        c.warmup_steps = 1
        c.eval_every = 2
        c.checkpoint_every = 2
        c.gan.update(dict(z_anatomy=8, z_pathology=3, g_width=4, d_width=4, batch_size=8,
                          steps=3, ema=0.9, checkpoint_every=3, sample_every=3, sample_rows=2,
                          sample_columns=2))
        c.num_invert = 3
        c.invert_steps = 5
        c.num_alphas = 5
        c.ig_steps = 5
        c.methods = ("gradcam", "integrated_gradients")   # Multi-layer IBA: quick and full
        c.cam_layer = ""
        c.estimation_images = 16
        c.num_show = 2
        c.num_draws = 100
        c.draw_batch = 50
        c.fd_samples = 24
        c.fd_batch = 24
    else:
        raise ValueError(f"Unknown config variant {variant!r}: quick, full or test.")
    return c
