"""The one config schema: `base_config` declares every field any code reads, with one type each.

A method config (tnlbt.py, ht.py, adamine.py, je.py, cca.py) starts from `base_config(method)`
and only overrides values: the returned ConfigDict is locked, so a typo or a field the code does
not know is an error in the config file as it is on the command line (`--config.a.b=v`).
Consumers read `config.x` with no fallback default. What a switch means for each method (and
which method refuses it, with an error naming it) is checked in `xmodal.run.check_config`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from xmodal.data.builtin.recipes import CLASSES
from xmodal.models.vit import VIT_VARIANTS

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
# The tiny transformer text branch (H-T, CCA, JE's transformer variant) and LSTM branch.
TINY_TEXT = {
    "model.text.width": 32,
    "model.text.depth": 1,
    "model.text.num_heads": 2,
    "model.text.mlp_dim": 64,
    "model.embed_dim": 32,
}
TINY_LSTM = {
    "model.lstm.word_dim": 16,
    "model.lstm.title_hidden": 16,
    "model.lstm.ingredient_hidden": 16,
    "model.lstm.sentence_hidden": 24,
    "model.lstm.instruction_hidden": 24,
}
# The released H-T (amzn/image-to-recipe-transformers @ 96e257e, src/models.py and src/config.py):
# its recipe transformers are PyTorch's nn.TransformerEncoderLayer as it comes (post-LN, ReLU,
# eps 1e-5, dropout 0.1 also on attention probabilities, no final LayerNorm), 50-row xavier-normal
# position tables, an N(0, 1) word embedding; its recipe head is one Linear(3 x 512 -> 1024) +
# tanh (`merger_recipe`), its image head Linear + tanh (`fc`), every Linear PyTorch-initialised.
# Its ViT is timm's (pre-LN, GELU, eps 1e-6, final norm): the model.vit defaults.
RELEASED_HT_MODEL = {
    "model.text.block": "post_ln",
    "model.text.activation": "relu",
    "model.text.norm_eps": 1e-5,
    "model.text.final_norm": False,
    "model.text.dropout": 0.1,
    "model.text.attention_dropout": 0.1,
    "model.text.max_len": 50,
    "model.text.init": "pytorch",
    "model.text.merge_linear": False,
    "model.recipe_head_activation": "tanh",
    "model.image_head_activation": "tanh",
    "model.head_init": "pytorch",
}
# Its training defaults (src/config.py): Adam without weight decay (--wd 0) and no gradient
# clipping. (Its text-only batches of 2 x batch recipes without photos alternate with the paired
# steps; this project adds them to every step instead: train.text_only_batch_size.)
RELEASED_HT_TRAIN = {
    "train.weight_decay": 0.0,
    "train.grad_clip": 0.0,
}
# The paper-size ViT-B/16 (timm's patchify stem: ImageNet weights import one-to-one).
VIT_B16 = {
    "model.vit.stem": "patch",
    **{f"model.vit.{k}": v for k, v in VIT_VARIANTS["B/16"].items()},
}

# ACME's adversarial parts at its released weights (hwang1996/ACME train.py: triplet + 0.005 x
# the critic's term + 0.002 x the translation losses; penalty 10, KL 2): configs/acme.py, and
# TNLBT's adversarial network (configs/tnlbt.py's `adversarial` flag).
ACME_ADVERSARIAL = {
    "adversarial.enabled": True,
    "adversarial.align": 0.005,
    "adversarial.translate": 0.002,
    "adversarial.gradient_penalty": 10.0,
    "adversarial.kl": 2.0,
}
# ACME's paper-size networks: 128 px images, generator and discriminator widths 64, Recipe1M's
# classes (set by the paper presets; on only with ACME_ADVERSARIAL).
ACME_PAPER_NETWORKS = {
    "adversarial.image_size": 128,
    "adversarial.gf_dim": 64,
    "adversarial.df_dim": 64,
    "adversarial.num_classes": RECIPE1M_CLASSES,
}


def base_config(method: str) -> ml_collections.ConfigDict:
    """Every field, with the defaults of the first run on the built-in data (TNLBT's values where
    a method has its own, the method config overrides them)."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.preset = "default"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # empty: the built-in synthetic dataset, generated and prepared on first use
    # Or a TFDS dataset (xmodal.data.tfds.builder): the --data_dir it was built into; read with
    # tfds.data_source into the same pipeline. Set data.dir or this, not both.
    c.data.tfds_dir = ""
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
    c.data.max_decoder_tokens = 48  # cross decoder target: BOS ingredients <title> title EOS
    c.data.decoder_order = "recipe"  # the target's ingredients: recipe (as written) | sorted
    # Grain worker processes: "0" decodes in the main process (threads), "N" spawns N, "auto" one
    # per core this process may use beyond two (xmodal.data.pipeline.worker_count).
    c.data.num_workers = "0"
    c.data.prefetch = 2  # batches prefetched to device
    c.data.labelled_fraction = -1.0  # >= 0: that share of every batch is class-labelled (AdaMine)

    c.model = ml_collections.ConfigDict()
    c.model.image = "resnet"  # vit | resnet
    c.model.vit = dict(
        patch_size=16,
        width=768,
        depth=12,
        num_heads=12,
        mlp_dim=3072,
        pool="cls",
        stem="patch",  # patch (timm) | conv
        stem_first_norm=True,
        # The ViT's block layout (xmodal.models.layers.BlockLayout): timm's, which the released
        # H-T's ViT also is: pre_ln | post_ln, gelu | relu, LayerNorm eps, final LayerNorm,
        # dropout on attention probabilities.
        block="pre_ln",
        activation="gelu",
        norm_eps=1e-6,
        final_norm=True,
        attention_dropout=0.0,
    )
    c.model.resnet = dict(depth=50, width=64, blocks=(), num_classes=0, zero_init_residual=False)
    c.model.recipe = "hierarchical"  # hierarchical (H-T) | lstm (im2recipe) | transformer
    c.model.text = dict(  # the transformer recipe encoders (hierarchical, transformer)
        width=128,
        depth=2,
        num_heads=4,
        mlp_dim=256,
        dropout=0.1,
        max_len=64,  # position table length (the flat transformer reads 20 x 15 tokens)
        packed_ingredient_tokens=0,  # > 0: lines packed end to end into this many tokens
        packed_instruction_tokens=0,
        components=("ingredients", "instructions"),  # the flat transformer's inputs
        # Block layout (xmodal.models.layers.BlockLayout). Defaults: pre-LN, exact GELU, eps
        # 1e-6, final LayerNorm, no attention-probability dropout. The released H-T (PyTorch's
        # nn.TransformerEncoderLayer): post_ln, relu, 1e-5, no final norm, 0.1 (configs/ht.py).
        block="pre_ln",  # pre_ln | post_ln
        activation="gelu",  # gelu | relu
        norm_eps=1e-6,
        final_norm=True,
        # Dropout on attention probabilities. No fused kernel (jax.nn.dot_product_attention,
        # cuDNN) has it: while it is active (> 0, training) this encoder's attention is an
        # explicit softmax on XLA whatever model.attention says; evaluation keeps the kernel.
        attention_dropout=0.0,
        # xmodal (normal 0.02 word / position tables, xavier-uniform kernels) | pytorch (the
        # released H-T's: N(0, 1) words, xavier-normal positions, PyTorch's layer defaults).
        init="xmodal",
        # H-T's hierarchical encoder: Linear(3W -> W) over the concatenated components before
        # model.recipe_head (True) | the concatenation itself (False: one Linear(3W -> D) head,
        # the released `merger_recipe`).
        merge_linear=True,
    )
    # im2recipe / AdaMine text branch sizes (word2vec 300-d, bi-LSTM 2x300, sentences 1024).
    c.model.lstm = dict(
        word_dim=300,
        title_hidden=300,
        ingredient_hidden=300,
        sentence_hidden=1024,
        instruction_hidden=1024,
        components=("ingredients", "instructions"),
    )
    c.model.ssl_head = "linear"  # H-T's component heads: linear | mlp | "" (none)
    c.model.embed_dim = 128
    # After each branch's Linear to embed_dim, before L2 normalisation: none | tanh (the
    # released H-T's image `fc` + tanh and recipe `merger_recipe` + tanh).
    c.model.image_head_activation = "none"
    c.model.recipe_head_activation = "none"
    # image_proj, recipe_proj and the SSL heads: xmodal (xavier-uniform) | pytorch (nn.Linear's).
    c.model.head_init = "xmodal"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    # auto: cuDNN fused attention on GPU, XLA elsewhere (attention-probability dropout while
    # training: always XLA, see model.text.attention_dropout)
    c.model.attention = "auto"
    c.model.remat = "none"  # none | full | dots | dots_no_batch (xmodal.models.layers)
    c.model.image_init = ""  # timm ViT / torchvision ResNet weights file to start the image from
    # WORKDIR of a run (or of `python -m xmodal.apps.import_checkpoint`, e.g. the released H-T
    # weights) whose best (else latest) checkpoint's model starts this run at step 0: same model
    # fields and vocabulary, no optimizer state (xmodal.runtime.init_from).
    c.model.init_from = ""
    c.model.num_classes = 0  # > 0: shared class head (im2recipe), the dataset's classes incl. 0
    c.model.freeze_image = False  # the image backbone is a fixed feature extractor (JE)
    # Cross decoder (TNLBT extension, "fuse before generating"; xmodal.models.cross_decoder):
    # generates "ingredient <sep> ... <title> title words" from image tokens + recipe embedding.
    c.model.cross_decoder = dict(
        enabled=False,
        width=128,
        depth=2,
        num_heads=4,
        mlp_dim=256,
        dropout=0.1,
        recipe_tokens=1,  # memory tokens the recipe embedding is projected to
        recipe_drop=0.5,  # per-example probability of dropping the recipe from the memory
    )

    c.loss = ml_collections.ConfigDict()
    c.loss.triplet = 0.0  # instance triplet weight (H-T, TNLBT, AdaMine's L_ins)
    # Retrieval margin (TNLBT's dynamic margins; xmodal.training.losses.retrieval_margins): kind
    # constant uses `start`; linear ramps start -> end over `steps` (0: the whole run); adaptive
    # sets each direction's margin in [min, max] from the share of triplets active at `start`;
    # adaptive_tfood is T-Food's map of that share (training.losses.tfood_adaptive_margin).
    c.loss.margin = dict(kind="constant", start=0.3, end=0.5, steps=0, min=0.2, max=0.5)
    # Triplet reduction: violating (AdaMine's adaptive mining) | hardest (VSE++) | mean (over the
    # B(B-1) triplets) | batch_mean (over the B x B matrix: H-T's TripletLoss; training.losses).
    c.loss.reduction = "violating"
    c.loss.recipe_ssl = 0.0  # H-T component self-supervision
    c.loss.cross_decoder = 0.0  # weight of the cross decoder's cross-entropy (needs the decoder)
    c.loss.semantic = 0.0  # AdaMine lambda for L_sem
    c.loss.semantic_margin = 0.3
    c.loss.semantic_reduction = "violating"  # violating | mean (AdaMine_avg)
    # Semantic positives per query: all = every other item of its class (AdaMine's Eq. 4) | first
    # = the released code's `semantic_multimodal`: the first in batch order, and negatives capped
    # at the fewest any query has.
    c.loss.semantic_positives = "all"
    # How the instance and semantic triplet terms add up (xmodal.training.losses.ranking_total):
    # sum = weight x term (AdaMine's Eq. 1, L_ins + lambda L_sem) | direction_mean = that sum over
    # the number of directional terms (the released AdaMine: (IRR + RII + 0.1 SIRR + 0.1 SRII) / 4).
    c.loss.combine = "sum"
    c.loss.pairwise = 0.0  # im2recipe / PWC++ pairwise cosine loss weight
    c.loss.pos_margin = 0.0
    c.loss.neg_margin = 0.9
    c.loss.mismatch_rate = 0.8
    c.loss.image_cls = 0.0
    c.loss.recipe_cls = 0.0

    # ACME's adversarial and translation parts (Wang et al., CVPR 2019; TNLBT trains them beside
    # its retrieval losses): xmodal.training.adversarial_step, networks in xmodal.models.gan. Off
    # unless `enabled`; each part is on when its weight is > 0. Weights are those of ACME's
    # train.py (its total: triplet + 0.005 align + 0.002 translation).
    c.adversarial = ml_collections.ConfigDict()
    c.adversarial.enabled = False
    # Modality alignment: a WGAN-GP critic tells image from recipe embeddings; the recipe encoder
    # is trained to pass as images, weight `align`.
    c.adversarial.align = 0.0
    c.adversarial.gradient_penalty = 10.0
    # Translation: recipe -> image (a generator conditioned on the recipe embedding, an image
    # discriminator with a real/fake and a class head) and image -> recipe (ingredients and
    # class predicted from the image embedding), the two balanced to the smaller, weight
    # `translate`.
    c.adversarial.translate = 0.0
    c.adversarial.kl = 2.0  # conditioning augmentation's KL term, in the generator's loss
    # Ingredients predicted from the image: bce (sigmoid cross-entropy per word, memory B x V) |
    # margin (PyTorch's MultiLabelMarginLoss, as ACME; memory B x V x V, for small vocabularies).
    c.adversarial.ingredient_loss = "bce"
    c.adversarial.balance = True  # ACME's balance of the two translation losses
    # Translation consistency (R2GAN's ranking in image space): the generated image, jittered and
    # embedded by the image encoder held fixed (as a test photo), ranks its recipe first (the
    # instance triplet, weight `generated_triplet`); it trains the generator only.
    c.adversarial.generated_triplet = 0.0
    # Judge every k-th generated image of the batch (a bag of batch / k): the judge's forward and
    # input gradient cost about what the image encoder's training pass does.
    c.adversarial.generated_triplet_stride = 1
    c.adversarial.critic_steps = 1  # discriminator updates per step, on the same batch
    # Adam for the generator side and for the discriminators (ACME: 1e-4, betas 0.5, 0.999).
    c.adversarial.lr = 1e-4
    c.adversarial.b1 = 0.5
    c.adversarial.b2 = 0.999
    c.adversarial.image_size = 64  # generated images: 64 | 128 px
    c.adversarial.num_classes = BUILTIN_CLASSES  # the dish classes incl. 0 (none); Recipe1M 1048
    c.adversarial.z_dim = 100
    c.adversarial.ca_dim = 128  # conditioning augmentation's size
    c.adversarial.gf_dim = 64  # generator width (ACME: 64, i.e. 1024 channels at 4 x 4)
    c.adversarial.df_dim = 64  # image discriminator width
    c.adversarial.num_residual = 2

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64  # global, over all devices and hosts
    c.train.num_steps = 2_500
    c.train.lr = 1e-3
    c.train.min_lr_ratio = 0.01
    c.train.warmup_steps = 200
    c.train.weight_decay = 1e-4
    c.train.grad_clip = 1.0  # global-norm clipping; 0 = none (the released H-T's)
    c.train.freeze_image_steps = 0  # > 0: image backbone frozen for these first steps (AdaMine)
    c.train.fsdp = False  # shard params + optimizer state over the data axis (training.state)
    c.train.fsdp_min_size = 16384  # leaves with fewer elements stay replicated under fsdp
    c.train.mu_dtype = ""  # Adam first-moment dtype; "" = float32, "bfloat16" halves its memory
    c.train.grad_accum_steps = 1  # micro-batches per step (train.batch_size is the whole step)
    c.train.grad_accum = "gradcache"  # gradcache: exact global-batch loss | naive: per micro-batch
    # H-T: a second batch per step from recipes without photos (train_text split) for the recipe
    # SSL loss; 0 = off.
    c.train.text_only_batch_size = 0
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    # A step with a non-finite loss or gradient: stop = raise an error naming the step and loss
    # terms before anything after it is logged, evaluated or saved | skip = leave that update out
    # and count it (`nonfinite_steps` in the metrics; costs a select over the state each step).
    c.train.on_nonfinite = "stop"
    c.train.val_pairs = 500  # val pairs embedded for the periodic retrieval check
    c.train.eval_at_end = True  # score the test split when training finishes (eval_test.json)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.checkpoint = "best"  # best | latest | <step>
    c.eval.batch_size = 256
    c.eval.bag_sizes = (1000, 10000)
    c.eval.num_bags = (10, 5)
    c.eval.seed = 0
    c.eval.full_split = True  # also rank the whole split as one bag ("full")

    # CCA baseline (configs/cca.py; read only by xmodal.baselines.cca).
    c.cca = ml_collections.ConfigDict()
    c.cca.features_from = ""  # WORKDIR of a trained run; empty: this config's model, fresh
    c.cca.dim = 64  # latent dimension (capped by the feature widths)
    c.cca.reg = 1e-3  # ridge, relative to the mean feature variance
    c.cca.power = 0.0  # scale latent dims by correlation**power for retrieval (0: plain)
    c.cca.max_train_pairs = 0  # 0: every training pair
    c.cca.texts = ("title", "ingredients", "instructions", "all")
    c.cca.text = "all"  # the text features reported in eval_<split>.json
    c.lock()
    return c


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


# Fields a recorded config may hold that the schema no longer has, with what replaced them.
RETIRED_FIELDS = {
    "data.num_classes": "model.num_classes (the class head's size) is the one class count",
}


def reopen(recorded: dict[str, Any], source: str) -> ml_collections.ConfigDict:
    """A config recorded in a run's config.json (`source`), as the schema reads it now: fields
    added since at their defaults (which keep the behaviour of before), retired fields dropped,
    locked like a config from a file. A field the schema never had is an error naming it."""
    out = base_config(str(recorded["method"])).to_dict()
    unknown: list[str] = []

    def merge(into: dict[str, Any], over: dict[str, Any], prefix: str) -> None:
        for k, v in over.items():
            name = prefix + k
            if name in RETIRED_FIELDS:
                continue
            if k not in into:
                unknown.append(name)
            elif isinstance(v, dict) and isinstance(into[k], dict):
                merge(into[k], v, name + ".")
            else:
                into[k] = v

    merge(out, recorded, "")
    if unknown:
        raise ValueError(
            f"{source} has fields this version does not know: {', '.join(sorted(unknown))} "
            "(written by a newer xmodal, or edited by hand)"
        )
    config = ml_collections.ConfigDict(out)
    config.lock()
    return config
