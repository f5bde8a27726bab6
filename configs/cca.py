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
        **common.TINY_TEXT,
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
    c = common.base_config("cca")  # ResNet-50 + H-T text encoder, no SSL heads
    c.model.ssl_head = ""
    return common.apply_arg(c, arg, PRESETS)
