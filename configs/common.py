"""What every method's config shares: data, train and eval fields (named as in configs/tnlbt.py),
the `preset[,flag...]` argument, and the tiny-CPU overrides the tests train with.

A method config (ht.py, adamine.py, je.py, cca.py) adds its `model` and `loss` fields and its
presets; every knob stays a plain field (`--config.a.b=v`).
"""

from __future__ import annotations

import ml_collections

from xmodal.data.synthetic import CLASSES

# Recipe1M: 1047 dish classes + class 0 (background / unlabelled), classes1M.pkl.
RECIPE1M_CLASSES = 1048
BUILTIN_CLASSES = len(CLASSES) + 1

# A small ResNet / LSTM for CPU tests and first runs (the tiny presets of every method).
TINY_DATA_AND_TRAIN = {
    "data.image_size": 32,
    "data.synthetic.num_recipes": 600,
    "data.synthetic.image_size": 48,
    "train.batch_size": 16,
    "train.num_steps": 30,
    "train.warmup_steps": 5,
    "train.log_every": 10,
    "train.eval_every": 15,
    "train.checkpoint_every": 15,
    "eval.batch_size": 64,
    "eval.bag_sizes": (50,),
    "eval.num_bags": (3,),
}
# Recipe1M text limits (H-T): title 15 tokens, 20 ingredients and 20 instructions of 15 tokens.
PAPER_TEXT = {
    "data.max_title_tokens": 15,
    "data.max_ingredients": 20,
    "data.max_instructions": 20,
    "data.max_ingredient_tokens": 15,
    "data.max_instruction_tokens": 15,
}
TINY_RESNET = {
    "model.resnet.depth": 18,
    "model.resnet.width": 8,
    "model.resnet.blocks": (1, 1, 1, 1),
}


def base_config(method: str) -> ml_collections.ConfigDict:
    """data / train / eval fields with the names of configs/tnlbt.py. Defaults differ where TNLBT's
    first-run preset was tuned for the 2-core CPU (its crop, instruction-line length and steps)."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # empty: the built-in synthetic dataset, generated and prepared on first use
    c.data.cache_dir = ""  # where the built-in dataset is cached; empty: ~/.cache/xmodal
    c.data.synthetic = dict(num_recipes=9000, image_size=96, seed=0)
    c.data.image_size = 64
    # Training crop: random = the papers' (resize, random fixed-size crop, flip); random_resized =
    # Inception-style scale and aspect jitter (xmodal.data.pipeline.TRAIN_CROPS).
    c.data.train_crop = "random"
    # Text limits sized to the built-in dataset (<= 10 lines per recipe); PAPER_TEXT restores H-T's.
    c.data.max_title_tokens = 10
    c.data.max_ingredients = 10
    c.data.max_instructions = 10
    c.data.max_ingredient_tokens = 8  # tokens per ingredient line (built-in: <= 8 words)
    c.data.max_instruction_tokens = 15  # tokens per instruction line
    c.data.num_workers = 0
    c.data.prefetch = 2
    c.data.num_classes = BUILTIN_CLASSES  # the dataset's classes incl. 0; Recipe1M: 1048
    c.data.labelled_fraction = -1.0  # >= 0: that share of every batch is class-labelled (AdaMine)

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.attention = "auto"
    c.model.num_classes = 0  # > 0 (= data.num_classes): shared class head (im2recipe)
    c.model.freeze_image = False  # the image backbone is a fixed feature extractor (JE)

    c.loss = ml_collections.ConfigDict()
    c.loss.triplet = 0.0  # instance triplet weight (H-T, TNLBT, AdaMine's L_ins)
    c.loss.margin = 0.3
    c.loss.reduction = "violating"  # violating (adaptive mining) | hardest | mean
    c.loss.recipe_ssl = 0.0  # H-T component self-supervision
    c.loss.semantic = 0.0  # AdaMine lambda for L_sem
    c.loss.semantic_margin = 0.3
    c.loss.semantic_reduction = "violating"  # violating | mean (AdaMine_avg)
    c.loss.pairwise = 0.0  # im2recipe / PWC++ pairwise cosine loss weight
    c.loss.pos_margin = 0.0
    c.loss.neg_margin = 0.9
    c.loss.mismatch_rate = 0.8
    c.loss.image_cls = 0.0
    c.loss.recipe_cls = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64
    c.train.num_steps = 2_500
    c.train.lr = 1e-3
    c.train.min_lr_ratio = 0.01
    c.train.warmup_steps = 200
    c.train.weight_decay = 1e-4
    c.train.grad_clip = 1.0
    c.train.freeze_image_steps = 0  # > 0: image backbone frozen for these first steps (AdaMine)
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.val_pairs = 500
    c.train.eval_at_end = True

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.checkpoint = "best"
    c.eval.batch_size = 256
    c.eval.bag_sizes = (1000, 10000)
    c.eval.num_bags = (10, 5)
    c.eval.seed = 0
    return c


def resnet_fields(depth: int = 50, width: int = 64) -> dict:
    """ResNet fields; `blocks` () keeps the standard blocks per stage of `depth`."""
    return dict(depth=depth, width=width, blocks=(), num_classes=0, zero_init_residual=False)


def lstm_fields(**overrides) -> dict:
    """im2recipe / AdaMine text branch sizes (word2vec 300-d, bi-LSTM 2x300, sentences 1024)."""
    fields = dict(
        word_dim=300,
        title_hidden=300,
        ingredient_hidden=300,
        sentence_hidden=1024,
        instruction_hidden=1024,
        components=("ingredients", "instructions"),
    )
    fields.update(overrides)
    return fields


def apply_arg(
    c: ml_collections.ConfigDict,
    arg: str | None,
    presets: dict[str, dict],
    flags: dict[str, dict] | None = None,
) -> ml_collections.ConfigDict:
    """`arg` = 'preset[,flag,...]': the preset's overrides, then each flag's (ablations)."""
    preset, *names = (arg or "default").split(",")
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {c.method}; choose from {sorted(presets)}")
    c.update_from_flattened_dict(presets[preset])
    flags = flags or {}
    for name in names:
        if name not in flags:
            raise ValueError(f"unknown flag {name!r} for {c.method}; choose from {sorted(flags)}")
        c.update_from_flattened_dict(flags[name])
    c.preset = "-".join([preset, *names])
    return c
