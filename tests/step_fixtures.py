"""A very small TNLBT model and random batches for tests that compile train steps (sharding,
accumulation, remat): smaller than the tiny preset so each compile costs seconds, not tens."""

import numpy as np

from configs import tnlbt
from xmodal.data import pipeline, schema

VOCAB = 40


def micro_config(**overrides):
    """configs/tnlbt.py:tiny shrunk further; dropout off so runs on different layouts compare
    exactly (random bits are not promised to be layout-invariant)."""
    c = tnlbt.get_config("tiny")
    c.update_from_flattened_dict(
        {
            "data.image_size": 16,
            "data.max_title_tokens": 5,
            "data.max_ingredients": 3,
            "data.max_instructions": 3,
            "data.max_ingredient_tokens": 4,
            "data.max_instruction_tokens": 5,
            "model.vit.depth": 1,
            "model.vit.width": 32,
            "model.vit.mlp_dim": 64,
            "model.text.width": 32,
            "model.text.mlp_dim": 64,
            "model.text.dropout": 0.0,
            "model.embed_dim": 16,
            "train.batch_size": 16,
            "train.warmup_steps": 0,
            "train.num_steps": 10,
            **overrides,
        }
    )
    return c


def random_batch(config, seed=0, batch_size=None):
    """Host numpy batch with the pipeline's keys, shapes and dtypes; some text padded out."""
    d = config.data
    b = batch_size or config.train.batch_size
    rng = np.random.default_rng(seed)

    def tokens(*shape):
        ids = rng.integers(1, VOCAB, size=shape).astype(np.int32)
        keep = rng.random(shape) < 0.7
        keep[..., 0] = True  # every sentence has a first word; later words may be padding
        return np.where(keep, ids, 0).astype(np.int32)

    shapes = pipeline.TextLimits.from_config(d).shapes(b)
    title, ingredients, instructions = schema.COMPONENTS
    some_short = tokens(*shapes[ingredients])
    some_short[::3, -1] = 0  # some recipes have fewer ingredients than the maximum
    return {
        schema.IMAGE: rng.integers(0, 256, size=(b, d.image_size, d.image_size, 3), dtype=np.uint8),
        title: tokens(*shapes[title]),
        ingredients: some_short,
        instructions: tokens(*shapes[instructions]),
        schema.CLASS_ID: rng.integers(0, 5, size=(b,)).astype(np.int32),
    }
