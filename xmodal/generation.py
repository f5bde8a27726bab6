"""Recipe -> dish image with a trained run's generator (`config.adversarial`), and generation
measured as ACME and TNLBT measure it (the command line is `python -m xmodal.apps.generate`).

- `DishGenerator.images`: recipe embeddings -> uint8 images at `adversarial.image_size`, each row
  drawn from its own key (the seed folded with the row's position), so an image depends on the
  seed and its recipe only, not on the batch it was generated in.
- `evaluate_generated`: the generated test images embedded by the run's image encoder and ranked
  against the recipes (generated image -> recipe and recipe -> generated image, the bag protocol
  of `xmodal.evaluate`), and a dish-class probe: a ridge-regression classifier on the frozen image
  encoder's embeddings of the *real* train photos, asked to name the class of each generated test
  image (and, for reference, of each real test photo). Written to WORKDIR/generated_<split>.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from xmodal import fid as fid_lib
from xmodal.data import pipeline, schema
from xmodal.evaluate import format_table, protocol_metrics
from xmodal.models.gan import resize_square
from xmodal.run import Run
from xmodal.runtime import results as results_lib
from xmodal.runtime import sharding
from xmodal.runtime.embed import eval_jit, in_fixed_batches

PROBE = "ridge classifier on the frozen image encoder's embeddings of real train photos"
RIDGE = 1e-2  # relative to the mean squared embedding norm (1 for unit embeddings)


def _batch_size(n: int, config: Any, devices: int) -> int:
    size = max(devices, int(config.eval.batch_size))
    return min(size, -(-n // devices) * devices)


class DishGenerator:
    """A run's generator and image encoder on a train state (`state` may be replaced: the train
    loop's sample grid keeps one generator across validations)."""

    def __init__(self, run: Run, state: Any):
        nets = run.layout.adversarial
        if state.adversarial is None or nets is None:
            raise ValueError(
                f"{run.workdir!r} was trained without adversarial networks "
                "(config.adversarial.enabled is False): it has no generator"
            )
        side = nnx.merge(
            nets.gen_graphdef, state.adversarial.gen_params, state.adversarial.gen_state
        )
        if side.generator is None:
            raise ValueError(
                f"{run.workdir!r} has no generator (adversarial.translate and "
                ".generated_triplet were 0): train with a translation weight to generate images"
            )
        self.run, self.state = run, state
        self.config = run.config
        a = self.config.adversarial
        self.image_size, self.z_dim, self.ca_dim = a.image_size, a.z_dim, a.ca_dim
        encoder_size = self.config.data.image_size
        graphdef, gen_graphdef = run.graphdef, nets.gen_graphdef

        z_dim, ca_dim = self.z_dim, self.ca_dim

        def draw(seed: jax.Array, row: jax.Array) -> tuple[jax.Array, jax.Array]:
            k_noise, k_eps = jax.random.split(jax.random.fold_in(jax.random.key(seed), row))
            return jax.random.normal(k_noise, (z_dim,)), jax.random.normal(k_eps, (ca_dim,))

        def generate(params, model_state, gen_params, gen_state, embeddings, rows, seed):
            # the draws are made in the program, from the row's index: one compiled program per
            # batch size, whatever the seed or the rows
            noise, eps = jax.vmap(draw, in_axes=(None, 0))(seed, rows)
            gen = nnx.merge(gen_graphdef, gen_params, gen_state)
            gen.eval()
            fake, _, _ = gen.generator(noise, embeddings, eps)
            encoder = nnx.merge(graphdef, params, model_state)
            encoder.eval()
            # the encoder reads the generated image as it would read it from a file: 8-bit
            pixels = jnp.clip(jnp.round((fake + 1.0) * 127.5), 0.0, 255.0)
            embedded = encoder.embed_image(resize_square(pixels, encoder_size))
            return pixels.astype(jnp.uint8), embedded

        # The state goes in with its own shardings (data-parallel or FSDP, over every process);
        # the draws' inputs and the images are replicated: host values, the same in every
        # process, and outputs that every process can read.
        layout, replicated = run.layout.shardings, sharding.replicated(run.mesh)
        self._generate = jax.jit(
            generate,
            in_shardings=(
                layout.params,
                layout.model_state,
                layout.adversarial.gen_params,
                layout.adversarial.gen_state,
                replicated,
                replicated,
                replicated,
            ),
            out_shardings=replicated,
        )

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        config: ml_collections.ConfigDict | None = None,
        *,
        which: str | int | None = None,
    ) -> DishGenerator:
        """WORKDIR's run (its recorded config unless `config`), restored onto one device."""
        run = Run.from_workdir(workdir, config, mesh=sharding.make_mesh(1))
        return cls(run, run.restore(which))

    @property
    def step(self) -> int:
        return int(self.state.step)

    def embed_split(self, split: str, *, limit: int | None = None) -> tuple[Any, Any]:
        """(photo, recipe) embeddings of the first `limit` pairs of `split`."""
        return self.run.embed_split(self.state, split, limit=limit)

    def generate(self, embeddings: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Recipe embeddings [N, D] -> (uint8 images [N, S, S, 3], their embeddings by the run's
        image encoder [N, D]); row i's draw is the seed's row i."""
        embeddings = np.asarray(embeddings, np.float32)
        n = len(embeddings)
        if n == 0:
            raise ValueError("no recipes to generate images for")
        state, adv = self.state, self.state.adversarial
        seed_array = np.int32(seed)

        def run(chunk, rows):
            return self._generate(
                state.params,
                state.model_state,
                adv.gen_params,
                adv.gen_state,
                chunk,
                rows,
                seed_array,
            )

        size = _batch_size(n, self.config, self.run.mesh.size)
        return in_fixed_batches(run, [embeddings, np.arange(n, dtype=np.int32)], size)


def image_embedder(run: Run, state: Any) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 photos [N, S, S, 3] (S: the run's data.image_size) -> the run's unit embeddings."""
    embed = eval_jit(run.layout, run.mesh, lambda model, images: model.embed_image(images))
    size = lambda n: _batch_size(n, run.config, run.mesh.size)
    return lambda images: in_fixed_batches(
        lambda x: embed(state.params, state.model_state, x), [images], size(len(images))
    )


def real_photos(data_dir: str, split: str, data_config: Any, n: int) -> np.ndarray:
    """The first `n` photos of `split` as the eval pipeline reads them (centre crop, uint8)."""
    ds, _ = pipeline.eval_dataset(data_dir, split, data_config, batch_size=n, limit=n)
    batch = next(iter(ds))
    return np.asarray(batch[schema.IMAGE])[np.asarray(batch[schema.VALID])][:n]


def side_by_side(
    rows: Sequence[np.ndarray], size: int, columns: int = 8, gap: int = 2
) -> np.ndarray:
    """Image rows (each uint8 [N, S, S, 3], the same N; shown at `size` px) -> one uint8
    picture: for each block of `columns` items, the rows stacked (real photos above the
    images generated from their recipes)."""
    rows = [r if r.shape[1] == size else _resize(r, size) for r in rows]
    n = len(rows[0])
    block_height = len(rows) * (size + gap) + gap
    out = np.full((-(-n // columns) * block_height, columns * (size + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        block, col = divmod(i, columns)
        for r, images in enumerate(rows):
            y = block * block_height + gap + r * (size + gap)
            x = gap + col * (size + gap)
            out[y : y + size, x : x + size] = images[i]
    return out


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(resize_square(jnp.asarray(images), size).round().clip(0, 255), np.uint8)


class SampleGrid:
    """The train loop's picture of generation at each validation: the first `count` validation
    photos above the images generated from their recipes, the same draws every time."""

    def __init__(self, run: Run, count: int = 16, seed: int = 0):
        self.run, self.count, self.seed = run, count, seed
        self._generator: DishGenerator | None = None
        self._real: np.ndarray | None = None

    def __call__(self, state: Any) -> np.ndarray:
        if self._generator is None:
            self._generator = DishGenerator(self.run, state)
            self._real = real_photos(self.run.data_dir, "val", self.run.config.data, self.count)
        self._generator.state = state
        _, recipe = self.run.embed_split(state, "val", limit=self.count)
        images, _ = self._generator.generate(recipe, seed=self.seed)
        return side_by_side([self._real, images], images.shape[1])


def ridge_classifier(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, C], b [C]) of least squares to one-hot targets with a ridge `RIDGE`: a
    deterministic linear probe, no training schedule to tune."""
    x = np.asarray(features, np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    y = np.eye(num_classes)[labels]
    ridge = RIDGE * float(np.mean(np.sum(x * x, axis=1)))
    w = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ (y - y.mean(0)))
    return w, y.mean(0) - mean @ w


def classify(features: np.ndarray, probe: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, b = probe
    return np.argmax(np.asarray(features, np.float64) @ w + b, axis=1)


def _class_ids(data_dir: str, split: str, limit: int | None = None) -> np.ndarray:
    meta = pipeline.split_metadata(data_dir, split, limit=limit, fields=("class_id",))
    return np.array([m["class_id"] for m in meta], np.int64)


def evaluate_generated(
    generator: DishGenerator,
    *,
    split: str | None = None,
    seed: int = 0,
    train_split: str = "train",
    probe_from: str | None = None,
    fid_inception: str | None = None,
) -> dict[str, Any]:
    """Generated images of every recipe of `split`, scored (module docstring); writes and returns
    WORKDIR/generated_<split>.json. `probe_from`: the class probe (and the encoder FID) reads
    images with the image encoder of that run (on the same data) instead of this run's, an
    encoder the generator was never trained against. `fid_inception`: pytorch-fid's Inception
    weights file; the FID then uses Inception features instead of the frozen encoder's."""
    config = generator.config
    split = split or config.eval.split
    _, recipe = generator.embed_split(split)
    generated, embedded = generator.generate(recipe, seed=seed)
    ranking = protocol_metrics(embedded, recipe, config, split=split)
    frozen = FrozenEncoder(generator, probe_from, generated, split, train_split)
    results = {
        "step": generator.step,
        "split": split,
        "seed": seed,
        "n_pairs": len(recipe),
        "image_size": generator.image_size,
        "generated_image_to_recipe": ranking["image_to_recipe"],
        "recipe_to_generated_image": ranking["recipe_to_image"],
        "class_probe": class_probe(frozen),
        "fid": generated_fid(frozen, generated, fid_inception),
    }
    results_lib.write_result(generator.run.workdir, results_lib.generated_file(split), results)
    if jax.process_index() == 0:
        table = {
            "split": split,
            "step": generator.step,
            "n_pairs": len(recipe),
            "image_to_recipe": ranking["image_to_recipe"],
            "recipe_to_image": ranking["recipe_to_image"],
        }
        print("generated images (image = the generated image of each recipe):")
        print(format_table(table))
        probe, fid = results["class_probe"], results["fid"]
        print(
            f"class probe ({probe['probe']}): generated {probe['generated_accuracy']:.3f}, real "
            f"{probe['real_accuracy']:.3f}, chance {probe['chance']:.3f}"
        )
        print(
            f"FID {fid['value']:.4g} over {fid['samples']} images each (real train photos against "
            f"the same real photos: {fid['real_train_photos']:.4g}; features: {fid['features']})"
        )
    return results


class FrozenEncoder:
    """The image encoder that judges the generated images without being trained by them
    (`probe_from`'s, else the run's own), with its embeddings of the real photos of `split` and
    `train_split` and of the generated images (resized to its input size)."""

    def __init__(
        self,
        generator: DishGenerator,
        probe_from: str | None,
        generated: np.ndarray,
        split: str,
        train_split: str,
    ):
        self.run, self.state = generator.run, generator.state
        self.data_dir, self.workdir = generator.run.data_dir, probe_from or generator.run.workdir
        self.name = probe_from or "this run"
        self.num_classes = generator.config.adversarial.num_classes
        if probe_from:
            self.run = Run.from_workdir(probe_from, mesh=sharding.make_mesh(1))
            if os.path.realpath(self.run.data_dir) != os.path.realpath(self.data_dir):
                raise ValueError(
                    f"probe_from={probe_from!r} was trained on {self.run.data_dir!r}, not on "
                    f"this run's data {self.data_dir!r}: its classes would not be these"
                )
            self.state = self.run.restore()
        self.split, self.train_split = split, train_split
        self.real, _ = self.run.embed_split(self.state, split)
        self.train, _ = self.run.embed_split(self.state, train_split)
        size = self.run.config.data.image_size
        self.generated = image_embedder(self.run, self.state)(_resize(generated, size))


def class_probe(frozen: FrozenEncoder) -> dict[str, Any]:
    """The ridge probe trained on the real `train_split` photos as the frozen encoder embeds
    them, scored on the generated images of `split` and, for reference, on its real photos;
    rows of class 0 (no dish class) are left out."""
    train_image = frozen.train
    train_classes = _class_ids(frozen.data_dir, frozen.train_split)
    labelled = train_classes > 0
    num_classes = int(max(train_classes.max(), frozen.num_classes - 1)) + 1
    probe = ridge_classifier(train_image[labelled], train_classes[labelled], num_classes)
    classes = _class_ids(frozen.data_dir, frozen.split)
    scored = classes > 0
    right = lambda features: float(np.mean(classify(features[scored], probe) == classes[scored]))
    return {
        "probe": f"{PROBE} ({frozen.name})",
        "train_photos": int(labelled.sum()),
        "scored": int(scored.sum()),
        "chance": 1.0 / max(len(np.unique(train_classes[labelled])), 1),
        "generated_accuracy": right(frozen.generated),
        "real_accuracy": right(frozen.real),
    }


def generated_fid(
    frozen: FrozenEncoder, generated: np.ndarray, inception_weights: str | None
) -> dict[str, Any]:
    """FID of the generated images of `split` against its real photos, and for scale the FID of
    as many real `train_split` photos against them: on Inception features (every set at the
    generator's resolution: real photos resized to it) when the weights file is given, else on
    the frozen encoder's embeddings (the name says which)."""
    n = len(generated)
    if inception_weights:
        size, data = generated.shape[1], frozen.run.config.data
        features = fid_lib.inception_features(inception_weights)
        real = features(_resize(real_photos(frozen.data_dir, frozen.split, data, n), size))
        train = features(_resize(real_photos(frozen.data_dir, frozen.train_split, data, n), size))
        fake = features(generated)
        name = fid_lib.FEATURES_INCEPTION.format(path=inception_weights)
    else:
        real, train, fake = frozen.real, frozen.train[:n], frozen.generated
        name = fid_lib.encoder_features_name(frozen.workdir)
    return {
        "value": fid_lib.fid(real, fake),
        "real_train_photos": fid_lib.fid(real, train),
        "samples": n,
        "features": name,
    }
