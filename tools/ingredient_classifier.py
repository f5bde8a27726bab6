"""Photo -> ingredients without the decoder: an image encoder trained for that alone, as the
reference the cross decoder's F1 is read against.

    python tools/ingredient_classifier.py --config=configs/tnlbt.py:extended [--encoder=resnet18]
        [--steps=1500] [--config.a.b=v ...]

A set-prediction model: the config's image encoder (`--encoder=config`; the `extended` preset's
ViT) or a ResNet-18 (`--encoder=resnet18`, `--resnet_width` channels in its first stage), then a
linear layer over [pooled feature, mean of the output tokens] with one logit per clean ingredient
name of the train split, trained from scratch with per-ingredient binary cross-entropy (AdamW,
warm-up then cosine decay, the config's batch size and learning rate) on every train photo with
random horizontal flips. The threshold on the predicted probability is chosen on the validation
split's first photos (best micro F1 of 0.1, 0.15, ..., 0.6) and test is scored with it, as
`xmodal.predict` scores the decoder (`ingredient_scores`, first photo per recipe).

It holds the decoded photos in host and device memory (the built-in data: 9,067 train photos,
250 MB at 96 px), so it refuses splits of more than `--max_photos`. Prints one JSON object.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xmodal.apps import cli
from xmodal.data import decoder_targets, pipeline, records
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.data.pipeline import read_photo
from xmodal.models.dual_encoder import build_image_encoder, normalize_images
from xmodal.predict import ingredient_scores
from xmodal.run import resolve_data_dir

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.61, 0.05), 2).tolist())


def load_split(
    data_dir: str, split: str, image_size: int, *, every_photo: bool, max_photos: int
) -> tuple[np.ndarray, list[list[str]]]:
    """(uint8 [N, S, S, 3] photos centre-cropped as in eval, each photo's clean ingredient names as
    the decoder writes them); a recipe without photos is left out (as `xmodal.predict` does)."""
    source = pipeline.open_split(data_dir, split)
    norm = functools.partial(decoder_targets.normalize_text, tokenizer_lib.load_tokenizer(data_dir))
    photos, names = [], []
    for i in range(len(source)):
        recipe = records.decode_record(source[i])
        ingredients = [norm(x) for x in recipe["clean_ingredients"]]
        for photo in recipe["images"] if every_photo else recipe["images"][:1]:
            photos.append(read_photo(photo, image_size))
            names.append(ingredients)
            if len(photos) > max_photos:
                raise SystemExit(f"split {split!r} has more than --max_photos={max_photos} photos")
    return np.stack(photos), names


def multi_hot(names: list[list[str]], vocabulary: list[str]) -> np.ndarray:
    """[N, len(vocabulary)] float32 targets; names outside the vocabulary have no column."""
    index = {n: i for i, n in enumerate(vocabulary)}
    out = np.zeros((len(names), len(vocabulary)), np.float32)
    for row, ingredients in enumerate(names):
        for n in ingredients:
            if n in index:
                out[row, index[n]] = 1.0
    return out


def named_above(probs: np.ndarray, vocabulary: list[str], threshold: float) -> list[list[str]]:
    """Each row's names with probability >= threshold."""
    return [[vocabulary[j] for j in np.flatnonzero(row >= threshold)] for row in probs]


def best_threshold(probs: np.ndarray, names: list[list[str]], vocabulary: list[str]) -> float:
    """The threshold of `THRESHOLDS` with the best micro F1 (the lowest on ties)."""
    f1 = [
        ingredient_scores(named_above(probs, vocabulary, t), names)["micro_f1"] for t in THRESHOLDS
    ]
    return THRESHOLDS[int(np.argmax(f1))]


class IngredientClassifier(nnx.Module):
    """Image encoder -> one logit per ingredient from [pooled feature, mean output token]."""

    def __init__(self, encoder: nnx.Module, width: int, num_labels: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.head = nnx.Linear(2 * width, num_labels, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        tokens, pooled = self.encoder(normalize_images(images, jnp.float32))
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # a ResNet's [B, H, W, C]
        feats = jnp.concatenate([pooled, tokens.mean(1)], -1).astype(jnp.float32)
        return self.head(feats)


def build(
    config: Any, encoder: str, resnet_width: int, num_labels: int, seed: int
) -> IngredientClassifier:
    model_config = config.model.copy_and_resolve_references()
    if encoder == "resnet18":
        model_config.image = "resnet"
        model_config.resnet = dict(
            depth=18, width=resnet_width, blocks=(), num_classes=0, zero_init_residual=False
        )
    rngs = nnx.Rngs(seed)
    image_encoder, width = build_image_encoder(
        model_config,
        image_size=config.data.image_size,
        dtype=jnp.float32,
        attention="auto",
        rngs=rngs,
    )
    return IngredientClassifier(image_encoder, width, num_labels, rngs=rngs)


_sigmoid_probs = nnx.jit(lambda model, images: jax.nn.sigmoid(model(images)))


def probabilities(model: IngredientClassifier, photos: np.ndarray, batch: int) -> np.ndarray:
    """[N, labels] probabilities, in batches of one shape (the last one padded): one compilation
    for every split."""
    out = []
    for i in range(0, len(photos), batch):
        chunk = photos[i : i + batch]
        pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
        probs = _sigmoid_probs(model, jnp.asarray(np.concatenate([chunk, pad])))
        out.append(np.asarray(probs)[: len(chunk)])
    return np.concatenate(out)


def run(
    config: Any, *, encoder: str, resnet_width: int, steps: int, seed: int, max_photos: int
) -> dict[str, Any]:
    """Train the classifier on `config`'s data and score it; the dict `main` prints."""
    data_dir = resolve_data_dir(config.data)
    size = config.data.image_size
    load = functools.partial(load_split, data_dir, image_size=size, max_photos=max_photos)
    train_x, train_names = load("train", every_photo=True)
    val_x, val_names = load("val", every_photo=False)
    test_x, test_names = load("test", every_photo=False)
    vocabulary = sorted({n for names in train_names for n in names})
    train_y = multi_hot(train_names, vocabulary)
    model = build(config, encoder, resnet_width, len(vocabulary), seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.train.lr, max(1, min(config.train.warmup_steps, steps // 2)), steps
    )
    tx = optax.adamw(schedule, weight_decay=config.train.weight_decay)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer, photos, labels, idx, flip):
        """One step on photos[idx] (flipped left-right where `flip`): the photos stay on device."""
        images = jnp.where(flip[:, None, None, None], photos[idx, :, ::-1], photos[idx])

        def loss_fn(model):
            return optax.sigmoid_binary_cross_entropy(model(images), labels[idx]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    batch = config.train.batch_size
    photos, labels = jnp.asarray(train_x), jnp.asarray(train_y)  # copied to the device once
    start = time.perf_counter()
    loss = float("nan")
    for _ in range(steps):
        idx = rng.integers(0, len(train_x), batch)
        flip = rng.random(batch) < 0.5
        loss = train_step(model, optimizer, photos, labels, jnp.asarray(idx), jnp.asarray(flip))
    loss = float(loss)
    train_s = time.perf_counter() - start
    model.eval()
    threshold = best_threshold(probabilities(model, val_x, 256), val_names, vocabulary)
    test_probs = probabilities(model, test_x, 256)
    by_threshold = {
        str(t): ingredient_scores(named_above(test_probs, vocabulary, t), test_names)["micro_f1"]
        for t in THRESHOLDS
    }
    test = ingredient_scores(named_above(test_probs, vocabulary, threshold), test_names)
    return {
        "encoder": encoder if encoder == "resnet18" else config.model.image,
        "image_size": size,
        "steps": steps,
        "batch_size": batch,
        "seed": seed,
        "labels": len(vocabulary),
        "train_photos": len(train_x),
        "test_recipes": len(test_x),
        "final_loss": loss,
        "train_s": round(train_s, 1),
        "val_threshold": threshold,
        **{k: v for k, v in test.items() if k.startswith("micro")},
        "test_micro_f1_by_threshold": by_threshold,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/<method>.py[:preset]")
    p.add_argument("--encoder", choices=("config", "resnet18"), default="config")
    p.add_argument("--resnet_width", type=int, default=32, help="ResNet-18's first-stage channels")
    p.add_argument("--steps", type=int, default=None, help="default: the config's train.num_steps")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    p.add_argument("--max_photos", type=int, default=50_000, help="refuse larger splits")
    args = cli.parse_args(p, argv)
    config = cli.with_overrides(cli.load_config_file(args.config), args.overrides)
    result = run(
        config,
        encoder=args.encoder,
        resnet_width=args.resnet_width,
        steps=args.steps or config.train.num_steps,
        seed=args.seed,
        max_photos=args.max_photos,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
