"""CCA baseline (papers/001; the CCA rows of im2recipe and AdaMine): image features (the image
encoder's pooled output) and text features (title / ingredients / instructions / all) from a dual
encoder, a closed-form regularised CCA fitted on the training pairs, the standard protocol.

Features come from `model` (ResNet-50 + H-T text encoder here, freshly initialised from `seed`)
or from a trained run: `--config.cca.features_from=WORKDIR` (its architecture is used). The
ablation over `cca.texts` is written to WORKDIR/cca_<split>.json; eval_<split>.json holds
`cca.text`. Sweep latent sizes with `python tools/cca_sweep.py`.

Presets: default (CPU first run), tiny (tests), paper (ResNet-50 at 224, 1024-d latent).
"""

from __future__ import annotations

import ml_collections

from configs import common

PRESETS: dict[str, dict] = {
    "default": {"model.resnet.depth": 18, "model.resnet.width": 32},
    "tiny": {
        **common.TINY_DATA_AND_TRAIN,
        **common.TINY_RESNET,
        "model.text.width": 32,
        "model.text.depth": 1,
        "model.text.num_heads": 2,
        "model.text.mlp_dim": 64,
        "model.embed_dim": 32,
        "cca.dim": 16,
    },
    "paper": {
        **common.PAPER_TEXT,
        "data.image_size": 224,
        "model.resnet.depth": 50,
        "model.text.width": 512,
        "model.text.depth": 2,
        "model.text.num_heads": 4,
        "model.text.mlp_dim": 2048,
        "model.dtype": "bfloat16",
        "cca.dim": 1024,
        "cca.max_train_pairs": 100_000,
        "eval.batch_size": 1024,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("cca")
    c.model.image = "resnet"
    c.model.resnet = common.resnet_fields(depth=50)
    c.model.recipe = "hierarchical"
    c.model.text = dict(width=128, depth=2, num_heads=4, mlp_dim=256, dropout=0.1)
    c.model.ssl_head = ""
    c.model.embed_dim = 128
    c.cca = ml_collections.ConfigDict()
    c.cca.features_from = ""  # WORKDIR of a trained run; empty: this config's model, fresh
    c.cca.dim = 64  # latent dimension (capped by the feature widths)
    c.cca.reg = 1e-3  # ridge, relative to the mean feature variance
    c.cca.power = 0.0  # scale latent dims by correlation**power for retrieval (0: plain)
    c.cca.max_train_pairs = 0  # 0: every training pair
    c.cca.texts = ("title", "ingredients", "instructions", "all")
    c.cca.text = "all"  # the text features reported in eval_<split>.json
    return common.apply_arg(c, arg, PRESETS)
