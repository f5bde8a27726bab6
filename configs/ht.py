"""H-T (Salvador et al., CVPR 2021): hierarchical transformer recipe encoder + ResNet-50 or
ViT-B/16, bidirectional triplet loss over every in-batch negative (margin 0.3) averaged over the
B x B matrix as the released TripletLoss does (`loss.reduction=batch_mean`), and the
self-supervised recipe component losses with the same loss; Adam(W) at 1e-4 in the paper.

Presets: default (CPU first run, small ResNet), tiny (tests), r50 (paper, ResNet-50), vit
(paper, ViT-B/16). `--config.model.image=vit|resnet` switches the image branch of any preset.

r50 and vit are the released model (amzn/image-to-recipe-transformers @ 96e257e), not only its
sizes: post-LN / ReLU / eps 1e-5 recipe transformers with attention-probability dropout and no
final norm, 50-row position tables, Linear(1536 -> 1024) + tanh recipe head, Linear + tanh image
head, PyTorch's initialisers (common.RELEASED_HT_MODEL), no weight decay, no gradient clipping
(common.RELEASED_HT_TRAIN), and text-only batches of 2 x 128 recipes without photos (the release
alternates them with the paired steps; here both are in every step). One training default is not
mirrored: the learning rate warms up over 1,000 steps and decays by cosine (the release keeps
1e-4 and multiplies it by 0.1 every 30 epochs of its paired loader, PyTorch's StepLR, over 100
epochs; an epoch is a dataset size this config does not know). default and tiny keep this
project's layout (pre-LN, GELU, two-layer recipe head, no tanh).
"""

from __future__ import annotations

import ml_collections

from configs import common

PAPER = {
    **common.PAPER_TEXT,
    "data.image_size": 224,
    "model.text.width": 512,
    "model.text.depth": 2,
    "model.text.num_heads": 4,
    "model.text.mlp_dim": 2048,
    "model.embed_dim": 1024,
    "model.dtype": "bfloat16",
    "train.batch_size": 128,
    "train.num_steps": 300_000,
    "train.lr": 1e-4,
    "train.warmup_steps": 1_000,
    "train.eval_every": 2_000,
    "train.checkpoint_every": 2_000,
    "eval.batch_size": 1024,
    "data.num_workers": "auto",
    **common.RELEASED_HT_MODEL,
    **common.RELEASED_HT_TRAIN,
    "train.text_only_batch_size": 256,  # the released text-only batches: 2 x batch_size
}

PRESETS: dict[str, dict] = {
    "default": {"model.resnet.depth": 18, "model.resnet.width": 32},
    "tiny": {
        **common.TINY_DATA_AND_TRAIN,
        **common.TINY_RESNET,
        **common.TINY_TEXT,
    },
    "r50": {**PAPER, "model.image": "resnet", "model.resnet.depth": 50},
    "vit": {**PAPER, **common.VIT_B16, "model.image": "vit"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("ht")  # ResNet-50 + H-T text encoder, linear SSL heads
    c.loss.triplet = 1.0
    c.loss.recipe_ssl = 1.0
    c.loss.reduction = "batch_mean"  # H-T's TripletLoss (training.losses.reduce_costs)
    return common.apply_arg(c, arg, PRESETS)
