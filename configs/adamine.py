"""AdaMine (Carvalho et al., SIGIR 2018): ResNet-50 image branch, bi-LSTM ingredients +
hierarchical-LSTM instructions, 1024-d space; instance + semantic triplet (margin 0.3) with
adaptive mining; batches of 100 pairs, half class-labelled; ResNet frozen for the first 20
epochs, then fine-tuned for 60 (Sec. 4.4); Adam 1e-4.

The loss is the released configuration's (Cadene/recipe1m.bootstrap.pytorch 6ca20a2,
recipe1m/options/adamine.yaml and recipe1m/models/criterions/triplet.py `Triplet`):
(IRR + RII + 0.1 SIRR + 0.1 SRII) / 4 (`loss.combine=direction_mean`, `loss.semantic=0.1`), the
semantic positives and negatives chosen as its `semantic_multimodal` does
(`loss.semantic_positives=first`). The flag `eq` trains the paper's Eq. 1 instead:
L_ins + 0.3 L_sem summed, every same-class positive (Eq. 4).

Argument: 'preset[,flag...]'. Presets: default (CPU first run), tiny (tests), paper.
Ablations (Sec. 4.3): ins (L_ins only), sem (L_sem only), cls (AdaMine_ins+cls: the semantic
loss replaced by im2recipe's classification head), avg (average instead of adaptive mining),
ingr / instr (ingredients or instructions only). E.g. `configs/adamine.py:paper,avg`,
`configs/adamine.py:paper,eq,ins`.
"""

from __future__ import annotations

import ml_collections

from configs import common

EPOCH = 2383  # Recipe1M training batches of 100 (Sec. 4.4)
RELEASED_LAMBDA = 0.1  # recipe1m/options/adamine.yaml: substrategy_weights 1, 1, 0.1, 0.1
PAPER_LAMBDA = 0.3  # Eq. 1's lambda (Sec. 4.4)

PRESETS: dict[str, dict] = {
    "default": {
        "model.resnet.depth": 18,
        "model.resnet.width": 32,
        "train.freeze_image_steps": 500,
    },
    "tiny": {
        **common.TINY_DATA_AND_TRAIN,
        **common.TINY_RESNET,
        **common.TINY_LSTM,
        "model.embed_dim": 32,
        "train.freeze_image_steps": 10,
    },
    "paper": {
        **common.PAPER_TEXT,
        "data.image_size": 224,
        "model.dtype": "bfloat16",
        "train.batch_size": 100,
        "train.num_steps": 80 * EPOCH,
        "train.freeze_image_steps": 20 * EPOCH,
        "train.eval_every": EPOCH,
        "train.checkpoint_every": EPOCH,
        "eval.batch_size": 1000,
    },
}

ABLATIONS: dict[str, dict] = {
    "ins": {"loss.semantic": 0.0},
    "sem": {"loss.triplet": 0.0},
    "cls": {"loss.semantic": 0.0, "loss.image_cls": 0.01, "loss.recipe_cls": 0.01},
    # avg.yaml (aggregation mean): the instance costs averaged over the B x B matrix, diagonal
    # included (batch_mean), the semantic ones over its triplets.
    "avg": {"loss.reduction": "batch_mean", "loss.semantic_reduction": "mean"},
    # The paper's Eq. 1 (lambda = PAPER_LAMBDA where the semantic term is on) instead of the
    # released weighting.
    "eq": {"loss.combine": "sum", "loss.semantic_positives": "all"},
    "ingr": {"model.lstm.components": ("ingredients",)},
    "instr": {"model.lstm.components": ("instructions",)},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("adamine")
    c.data.labelled_fraction = 0.5
    c.model.recipe = "lstm"  # ResNet-50 + bi-LSTM ingredients, hierarchical-LSTM instructions
    c.model.ssl_head = ""
    c.model.embed_dim = 1024
    c.loss.triplet = 1.0
    c.loss.semantic = RELEASED_LAMBDA
    c.loss.combine = "direction_mean"
    c.loss.semantic_positives = "first"
    c.train.batch_size = 100
    c.train.lr = 1e-4
    c.train.warmup_steps = 0
    c.train.min_lr_ratio = 1.0  # constant learning rate, as in the paper
    c.train.weight_decay = 0.0  # plain Adam
    common.apply_arg(c, arg, PRESETS, ABLATIONS)
    if c.loss.combine == "sum" and c.loss.semantic:  # flag eq, in any order with the others
        c.loss.semantic = PAPER_LAMBDA
    if c.loss.image_cls or c.loss.recipe_cls:  # the class head sized to the preset's dataset
        paper = c.preset.split("-")[0] == "paper"
        c.model.num_classes = common.RECIPE1M_CLASSES if paper else common.BUILTIN_CLASSES
    return c
