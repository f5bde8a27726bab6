"""im2recipe joint embedding (Salvador et al., CVPR 2017) as reproduced in the seed report
(papers/000): frozen ResNet-50 + linear layer; bi-LSTM over ingredients and an LSTM over
instructions (hierarchical here: word LSTM per sentence in place of skip-thought vectors),
concatenated into a linear layer; cosine embedding loss on pairs of which a share `mismatch_rate`
(0.8) is non-matching; a class head shared by both embeddings, weighted alpha
(similarity / image CE / recipe CE = 0.98 / 0.01 / 0.01, im2recipe's lambda = 0.02).

Argument: 'preset[,variant...]'. Presets: default (CPU first run: a trained ResNet-18, CPU-sized
LSTMs), tiny (tests), paper (frozen ResNet-50, im2recipe's sizes).
Variants: transformer (flat transformer text encoder instead of the LSTMs), nocls (no heads).
"""

from __future__ import annotations

import ml_collections

from configs import common

PRESETS: dict[str, dict] = {
    # CPU first run on the built-in data (the study of docs/methods.md, "Joint embedding: mismatch
    # rate and classification weights"): the ResNet-18 trained, as there are no ImageNet weights
    # offline and a frozen random backbone would leave the image side a linear map of random
    # features; the text branch at a CPU size: a step takes 0.57 s on the 2-core CPU, 2.1 s with
    # im2recipe's LSTMs of 300 / 1,024 (`tools/bench_train.py --config=configs/je.py
    # --vocab_size=1000 --steps=5 --warmup=1`, docs/methods.md). `paper` keeps the frozen
    # backbone and im2recipe's sizes.
    "default": {
        "model.resnet.depth": 18,
        "model.resnet.width": 32,
        "model.freeze_image": False,
        "model.embed_dim": 256,
        "model.lstm.word_dim": 128,
        "model.lstm.title_hidden": 128,
        "model.lstm.ingredient_hidden": 128,
        "model.lstm.sentence_hidden": 256,
        "model.lstm.instruction_hidden": 256,
    },
    "tiny": {
        **common.TINY_DATA_AND_TRAIN,
        **common.TINY_RESNET,
        **common.TINY_LSTM,
        **common.TINY_TEXT,
    },
    "paper": {
        **common.PAPER_TEXT,
        "data.image_size": 224,
        "model.dtype": "bfloat16",
        "model.num_classes": common.RECIPE1M_CLASSES,
        "train.batch_size": 160,
        "train.num_steps": 200_000,
        "train.eval_every": 2_000,
        "train.checkpoint_every": 2_000,
        "eval.batch_size": 1000,
    },
}

VARIANTS: dict[str, dict] = {
    "transformer": {"model.recipe": "transformer"},
    "nocls": {"model.num_classes": 0, "loss.image_cls": 0.0, "loss.recipe_cls": 0.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("je")
    c.model.freeze_image = True  # ResNet-50 as a fixed feature extractor
    c.model.recipe = "lstm"
    c.model.ssl_head = ""
    # The transformer variant: one flat transformer per component (max_len = 20 x 15 tokens).
    c.model.text.update(dict(width=256, depth=2, num_heads=4, mlp_dim=1024, max_len=300))
    c.model.embed_dim = 1024
    # im2recipe: 1 - cos for matching pairs (pos_margin 0), [cos - 0.1]_+ for non-matching ones
    # (neg_margin 0.9), a share mismatch_rate = 0.8 of the pairs non-matching (the defaults).
    c.loss.pairwise = 0.98
    c.loss.image_cls = 0.01
    c.loss.recipe_cls = 0.01
    c.train.lr = 1e-4
    c.train.weight_decay = 0.0
    c.model.num_classes = common.BUILTIN_CLASSES  # the paper preset: Recipe1M's
    common.apply_arg(c, arg, PRESETS, VARIANTS)
    return c
