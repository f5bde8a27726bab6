"""Grain input pipelines: prepared ArrayRecord shards (or a TFDS dataset built from them,
`tfds_records`; `open_split` reads either) -> fixed-shape numpy batches per process.

Train: shuffle (reshuffled every epoch) -> repeat -> this process's slice -> decode a random photo
of the recipe, random crop (the papers' fixed scale, or Inception-style) + flip -> batch. Eval:
deterministic, the first photo of each recipe, center crop, padded with `valid=False` rows to a
whole number of global batches so every process runs the same number of steps. Images leave the
host as uint8; the model normalises them. Decoding runs in Grain worker processes when
`num_workers > 0` (spawned: keep this module free of import-time work).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image, ImageOps

from xmodal.data import class_aware, decoder_targets, photos, records, schema
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.data.tfds import records as tfds_records

CROP_SCALE = (0.5, 1.0)  # area share of the photo kept by the random crop
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # center crop of the short side, as in the ImageNet eval recipe


@dataclasses.dataclass(frozen=True)
class TextLimits:
    """Padded text shapes of a batch (H-T: title 15 tokens, 20 x 15 ingredients/instructions).

    Ingredient and instruction lines have their own token limits: ingredient lines are short
    ("2 cups diced onion"), so padding them to the instruction length wastes encoder work.
    """

    title_tokens: int
    ingredients: int
    instructions: int
    ingredient_tokens: int
    instruction_tokens: int

    @classmethod
    def from_config(cls, data_config: Any) -> TextLimits:
        return cls(
            title_tokens=data_config.max_title_tokens,
            ingredients=data_config.max_ingredients,
            instructions=data_config.max_instructions,
            ingredient_tokens=data_config.max_ingredient_tokens,
            instruction_tokens=data_config.max_instruction_tokens,
        )

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Shape of each text field (`schema.COMPONENTS`) of a batch of `batch` recipes."""
        title, ingredients, instructions = schema.COMPONENTS
        return {
            title: (batch, self.title_tokens),
            ingredients: (batch, self.ingredients, self.ingredient_tokens),
            instructions: (batch, self.instructions, self.instruction_tokens),
        }


def random_batch(
    data_config: Any, batch_size: int, vocab_size: int, seed: int = 0, decoder_tokens: int = 0
) -> dict[str, np.ndarray]:
    """A host batch with the train pipeline's keys, shapes and dtypes and random content: for
    benchmarks and size checks that need no dataset. `decoder_tokens` > 0 adds the cross
    decoder's targets of that length (without them the model skips the decoder)."""
    rng = np.random.default_rng(seed)
    shapes = TextLimits.from_config(data_config).shapes(batch_size)
    batch = {k: rng.integers(1, vocab_size, size=s).astype(np.int32) for k, s in shapes.items()}
    side = data_config.image_size
    batch[schema.IMAGE] = rng.integers(0, 256, size=(batch_size, side, side, 3), dtype=np.uint8)
    batch[schema.CLASS_ID] = rng.integers(1, 5, size=(batch_size,)).astype(np.int32)
    if decoder_tokens:
        size = (batch_size, decoder_tokens)
        batch[schema.DECODER_TOKENS] = rng.integers(1, vocab_size, size=size).astype(np.int32)
    return batch


def pad_tokens(ids: list[int], length: int) -> np.ndarray:
    out = np.full((length,), schema.PAD_ID, np.int32)
    ids = ids[:length]
    out[: len(ids)] = ids
    return out


def pad_sentences(sentences: list[list[int]], count: int, length: int) -> np.ndarray:
    out = np.full((count, length), schema.PAD_ID, np.int32)
    for i, ids in enumerate(sentences[:count]):
        ids = ids[:length]
        out[i, : len(ids)] = ids
    return out


def text_features(recipe: records.Recipe, limits: TextLimits) -> dict[str, np.ndarray]:
    """A record's padded token ids, one entry per `schema.COMPONENTS`, and its class id."""
    title, ingredients, instructions = schema.COMPONENTS
    return {
        title: pad_tokens(recipe["title_ids"], limits.title_tokens),
        ingredients: pad_sentences(
            recipe["ingredient_ids"], limits.ingredients, limits.ingredient_tokens
        ),
        instructions: pad_sentences(
            recipe["instruction_ids"], limits.instructions, limits.instruction_tokens
        ),
        schema.CLASS_ID: np.int32(recipe["class_id"]),
    }


def open_image(jpeg: bytes, min_short_side: int) -> Image.Image:
    """Decode to RGB; JPEG draft mode lets libjpeg decode at a reduced scale when it can."""
    img = Image.open(io.BytesIO(jpeg))
    img.draft("RGB", (min_short_side, min_short_side))
    return img.convert("RGB")


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Inception-style crop: random area share and aspect ratio, resized to size x size, flipped
    with probability 1/2."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to the largest centred square
        cw = ch = min(w, h)
        x, y = (w - cw) // 2, (h - ch) // 2
    return _resize_box(img, size, (x, y, x + cw, y + ch), rng)


def random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """The Recipe1M papers' training crop (im2recipe, H-T: resize to 256, random 224 crop, flip):
    a square of the eval crop's scale at a random position. Unlike `random_resized_crop` it keeps
    the apparent size of things, a cue for how food is cut."""
    w, h = img.size
    side = _eval_crop_side(img)
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    return _resize_box(img, size, (x, y, x + side, y + side), rng)


def center_crop(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    side = _eval_crop_side(img)
    # torchvision's CenterCrop offset: half the margin, rounded half to even (Python's round).
    x, y = round((w - side) / 2), round((h - side) / 2)
    return _resize_box(img, size, (x, y, x + side, y + side))


def read_photo(source: str | bytes, image_size: int) -> np.ndarray:
    """A photo file (or its bytes) -> uint8 [S, S, 3]: EXIF orientation applied, RGB, eval
    center crop. A file that is no photo, or one past `photos.MAX_PIXELS` (a decompression
    bomb, refused before decoding), is a ValueError naming it."""
    name = source if isinstance(source, str) else f"{len(source)} bytes"
    try:
        with photos.open_photo(source) as img:
            img.draft("RGB", (image_size, image_size))
            img = ImageOps.exif_transpose(img).convert("RGB")
            return center_crop(img, image_size)
    except Exception as e:  # Pillow raises many types for bytes that are not a usable photo
        raise ValueError(f"cannot read {name[:200]!r} as an image: {e}") from None


def _eval_crop_side(img: Image.Image) -> int:
    """Side of the square the eval crop (and the papers' train crop) takes from the photo."""
    return max(1, round(min(img.size) * EVAL_CROP_FRACTION))


def _resize_box(
    img: Image.Image,
    size: int,
    box: tuple[int, int, int, int],
    flip_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`box` of the photo resized to size x size; with `flip_rng`, mirrored with probability 1/2."""
    out = img.resize((size, size), Image.BILINEAR, box=box)
    if flip_rng is not None and flip_rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.uint8)


class DecoderTargets:
    """Tokenises the cross decoder's target ("ingredients <title> title") of a record.

    Holds only the data folder: the tokenizer is loaded on first use inside each Grain worker.
    """

    def __init__(self, data_dir: str, vocab_size: int, length: int, order: str = "recipe"):
        decoder_targets.check_order(order)
        self.data_dir = data_dir
        self.vocab_size = vocab_size
        self.length = length
        self.order = order
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def __call__(self, recipe: records.Recipe) -> np.ndarray:
        if self._tok is None:
            self._tok = tokenizer_lib.load_tokenizer(self.data_dir)
        return decoder_targets.encode_target(
            self._tok,
            recipe["clean_ingredients"],
            recipe["title"],
            vocab_size=self.vocab_size,
            length=self.length,
            order=self.order,
        )


# data.train_crop: random = the papers' fixed-scale crop; random_resized = Inception-style. Each
# with the smallest share of the photo's short side it crops (sets the JPEG draft size).
TRAIN_CROPS = {
    "random": (random_crop, EVAL_CROP_FRACTION),
    "random_resized": (random_resized_crop, math.sqrt(CROP_SCALE[0])),
}


class TrainExample(grain.transforms.RandomMap):
    """A record -> one training pair with a random photo of the recipe (and, with `targets`,
    the cross decoder's target tokens as 'decoder_tokens')."""

    def __init__(
        self,
        limits: TextLimits,
        image_size: int,
        targets: DecoderTargets | None = None,
        crop: str = "random",
    ):
        if crop not in TRAIN_CROPS:
            raise ValueError(f"data.train_crop must be one of {sorted(TRAIN_CROPS)}, got {crop!r}")
        self.limits = limits
        self.image_size = image_size
        self.targets = targets
        self._crop, smallest_side = TRAIN_CROPS[crop]
        self._draft = math.ceil(image_size / smallest_side)  # JPEG draft: decode no smaller

    def random_map(
        self, element: bytes | records.Recipe, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        recipe = records.decode_record(element)
        jpeg = recipe["images"][int(rng.integers(len(recipe["images"])))]
        image = self._crop(open_image(jpeg, self._draft), self.image_size, rng)
        out = {schema.IMAGE: image, **text_features(recipe, self.limits)}
        if self.targets is not None:
            out[schema.DECODER_TOKENS] = self.targets(recipe)
        return out


class TextOnlyExample(grain.transforms.Map):
    """A record of a recipe without photos -> its text, keys prefixed 'text_only/'."""

    def __init__(self, limits: TextLimits, prefix: str):
        self.limits = limits
        self.prefix = prefix

    def map(self, element: bytes | records.Recipe) -> dict[str, np.ndarray]:
        recipe = records.decode_record(element)
        feats = text_features(recipe, self.limits)
        return {self.prefix + k: feats[k] for k in schema.COMPONENTS}


class EvalExample(grain.transforms.Map):
    """(index, record or None for padding) -> one eval pair with the recipe's first photo."""

    def __init__(self, limits: TextLimits, image_size: int):
        self.limits = limits
        self.image_size = image_size

    def map(self, element: tuple[int, Any]) -> dict[str, np.ndarray]:
        index, data = element
        if data is None:
            return self._padding()
        recipe = records.decode_record(data)
        image = center_crop(open_image(recipe["images"][0], self.image_size), self.image_size)
        return {
            schema.IMAGE: image,
            **text_features(recipe, self.limits),
            schema.INDEX: np.int32(index),
            schema.VALID: np.bool_(True),
        }

    def _padding(self) -> dict[str, np.ndarray]:
        empty = records.empty_recipe()
        return {
            schema.IMAGE: np.zeros((self.image_size, self.image_size, 3), np.uint8),
            **text_features(empty, self.limits),
            schema.INDEX: np.int32(-1),
            schema.VALID: np.bool_(False),
        }


class PaddedSource:
    """Random access over a split, extended with `None` entries up to `length`."""

    def __init__(self, source: Any, length: int):
        self.source = source
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return (index, self.source[index]) if index < len(self.source) else (index, None)


def open_split(data_dir: str, split: str) -> Any:
    """Random access to the records of `split`, the one way every reader opens a split: the
    prepared shards' msgpack bytes, or for a TFDS dataset (`tfds_records`) its examples as
    record dicts; `records.decode_record` takes either."""
    if tfds_records.is_dataset_dir(data_dir):
        return tfds_records.TfdsSplit(data_dir, split)
    return grain.sources.ArrayRecordDataSource(records.shard_paths(data_dir, split))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a SLURM or container share), not the
    whole host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(num_workers: str | int) -> int:
    """`data.num_workers` as a number: "auto" keeps two of `usable_cores()` for the train step's
    dispatch and Grain's read threads and gives the rest to decoding workers, up to 32; 0 below
    4 cores."""
    value = str(num_workers).strip()
    if value == "auto":
        cores = usable_cores()
        return min(32, cores - 2) if cores >= 4 else 0
    if not value.isdigit():
        raise ValueError(f"data.num_workers must be 'auto' or a count >= 0, got {num_workers!r}")
    return int(value)


def _batches(ds: grain.MapDataset, batch_size: int, num_workers: str | int) -> grain.IterDataset:
    """Batches read one batch ahead with a thread per core (up to Grain's 16).

    Grain's default read-ahead of 500 elements costs host CPU for every element it returns (it
    polls each pending read), taken from the cores that run the train step: one batch ahead, the
    host pipeline alone went from 501 to 1,067 examples/s on 2 cores (docs/methods.md). Thread
    prefetch overlaps decoding with the step; `num_workers` processes add parallelism on larger
    hosts.
    """
    threads = min(16, usable_cores())
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=batch_size)
    ds = ds.to_iter_dataset(options).batch(batch_size, drop_remainder=True)
    workers = worker_count(num_workers)
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


def train_dataset(
    data_dir: str,
    data_config: Any,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    decoder_targets: DecoderTargets | None = None,
) -> grain.IterDataset:
    """Endless shuffled batches of `batch_size`: this process's rows of each global batch.

    The examples are ordered (and augmented, each from its own index) the same way whatever the
    number of processes; process p of P reads rows [p * batch_size, (p + 1) * batch_size) of
    every global batch of `batch_size * P`. So a run on 2 processes x 2 devices sees the same
    global batches as one process with 4 devices.
    """
    source = open_split(data_dir, split)
    fraction = data_config.labelled_fraction
    if fraction >= 0:  # AdaMine: a fixed share of class-labelled pairs in every batch
        ds = _class_aware(source, data_dir, split, fraction, batch_size * process_count, seed)
    else:
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds.random_map(
        TrainExample(
            TextLimits.from_config(data_config),
            data_config.image_size,
            decoder_targets,
            crop=data_config.train_crop,
        )
    )
    ds = process_rows(ds, batch_size, process_index, process_count)
    return _batches(ds, batch_size, data_config.num_workers)


def process_rows(
    ds: grain.MapDataset, batch_size: int, process_index: int, process_count: int
) -> grain.MapDataset:
    """Process `process_index`'s rows of every global batch of `batch_size * process_count`
    consecutive elements of `ds` (the identity on one process)."""
    if process_count == 1:
        return ds
    global_batch = batch_size * process_count
    offset = process_index * batch_size
    rows = len(ds) // global_batch * batch_size
    return grain.MapDataset.range(rows).map(
        functools.partial(_global_row, ds, batch_size, global_batch, offset)
    )


def _global_row(ds: grain.MapDataset, local: int, global_batch: int, offset: int, i: int) -> Any:
    return ds[i // local * global_batch + offset + i % local]


def _class_aware(
    source: Any,
    data_dir: str,
    split: str,
    fraction: float,
    batch_size: int,
    seed: int,
) -> grain.MapDataset:
    """Records ordered by `ClassAwareOrder` in global batches of `batch_size`."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.labelled_fraction must be in [0, 1] (or < 0: off), got {fraction}")
    order = class_aware.ClassAwareOrder(
        class_aware.split_class_ids(data_dir, split, source),
        batch_size=batch_size,
        labelled_per_batch=round(fraction * batch_size),
        seed=seed,
    )
    return grain.MapDataset.source(class_aware.OrderedRecords(source, order)).seed(seed)


def text_only_dataset(
    data_dir: str,
    data_config: Any,
    *,
    batch_size: int,
    seed: int,
    prefix: str,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train" + schema.TEXT_ONLY_SUFFIX,
) -> grain.IterDataset:
    """Endless shuffled batches of recipes without photos (H-T's text-only SSL batches).

    Raises FileNotFoundError when the dataset has no such split (see `records.shard_paths`).
    """
    source = open_split(data_dir, split)
    ds = grain.MapDataset.source(source).seed(seed + 1).shuffle().repeat()
    ds = ds.map(TextOnlyExample(TextLimits.from_config(data_config), prefix))
    ds = process_rows(ds, batch_size, process_index, process_count)
    return _batches(ds, batch_size, data_config.num_workers)


class ZipIterator:
    """Draws one batch from each iterator and merges them into one dict (their keys differ).

    Its state is both positions, {'paired': ..., 'text_only': ...}; it is checkpointed in the
    same Composite item as a lone Grain iterator would be (as JSON bytes, see
    `xmodal.runtime.checkpointing.save`), so a resume continues both streams where they were.
    """

    def __init__(self, paired: Any, text_only: Any):
        self.paired = paired
        self.text_only = text_only

    def __iter__(self) -> ZipIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {**next(self.paired), **next(self.text_only)}

    def get_state(self) -> dict[str, Any]:
        return {"paired": self.paired.get_state(), "text_only": self.text_only.get_state()}

    def set_state(self, state: dict[str, Any] | bytes | str) -> None:
        if isinstance(state, (bytes, str)):  # Grain's checkpoint handler hands back JSON bytes
            state = json.loads(state)
        self.paired.set_state(state["paired"])
        self.text_only.set_state(state["text_only"])

    def start_prefetch(self) -> None:
        for it in (self.paired, self.text_only):
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def eval_dataset(
    data_dir: str,
    split: str,
    data_config: Any,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    limit: int | None = None,
) -> tuple[grain.IterDataset, int]:
    """Deterministic batches covering the first `limit` recipes of `split` (all by default).

    Returns the dataset and the number of real pairs; the split is padded to a multiple of the
    global batch (`batch_size * process_count`) with rows marked `valid=False`.
    """
    source = open_split(data_dir, split)
    n = len(source) if limit is None else min(limit, len(source))
    global_batch = batch_size * process_count
    padded = max(global_batch, math.ceil(n / global_batch) * global_batch)
    ds = grain.MapDataset.source(PaddedSource(_Limited(source, n), padded))
    ds = ds[process_index::process_count]
    ds = ds.map(EvalExample(TextLimits.from_config(data_config), data_config.image_size))
    return _batches(ds, batch_size, data_config.num_workers), n


class _Limited:
    """The first `n` records of a source."""

    def __init__(self, source: Any, n: int):
        self.source = source
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        return self.source[index]


def split_metadata(
    data_dir: str, split: str, *, limit: int | None = None, fields: Sequence[str] = ("id",)
) -> list[dict[str, Any]]:
    """`fields` of the first `limit` records of `split`, in record order (the order in which
    `xmodal.runtime.embed.Embedder` returns a split). Reads the records without decoding any
    photo."""
    source = open_split(data_dir, split)
    n = len(source) if limit is None else min(limit, len(source))
    out = []
    for start in range(0, n, 1024):
        for data in source.__getitems__(list(range(start, min(n, start + 1024)))):
            rec = records.decode_record(data)
            out.append({f: rec[f] for f in fields})
    return out
