"""Raw Recipe1M layout -> ArrayRecord shards that the input pipeline reads.

    python -m xmodal.data.prepare --raw_dir=RAW --out_dir=DATA

One pass: stream and join the raw JSON (`recipe1m`), learn the vocabulary on the train partition
(`tokenizer`), decode/resize/re-encode every photo once in a process pool over all cores
(`photos`), and write one msgpack record per recipe (`records`). Recipes with at least one good
photo go to the paired splits `train`, `val`, `test`; recipes without one (none listed, or all
listed photos bad) keep their text in `train_text`, `val_text`, `test_text`. Every skipped recipe or
photo is listed with its reason in `DATA/dataset_info.json`, every repaired photo is counted by
kind under `repaired`; dataset_info is written last and atomically: its presence means the folder
is complete.

Scale: the work is cut into shards fixed before any photo is read (`raw.shards`: recipe order
of layer1, ~1024 recipes a shard), so the output does not depend on the number of workers. A shard
is written to a hidden temporary file and renamed when complete, and its counts and skips go to
`DATA/.prepare/<shard>.json`; a rerun after an interruption (same raw files and options, checked
against `DATA/.prepare/plan.json`) keeps the finished shards and produces exactly the bytes of an
uninterrupted run. Memory holds the recipes' text, the shards in flight and no other photo. Before
the photos, a timed sample gives an estimate of time and disk for this dataset and full Recipe1M
(`raw.estimate`). This module holds the run (plan, resume, dataset_info) and its command line.

Evaluation-only and gallery data (no train partition) take the vocabulary of a trained run:
`--tokenizer_from=DIR` (the run's workdir, its prepared data or a TFDS dataset) copies that
tokenizer instead of learning one, so the token ids mean what the model learned they mean.

`--vocabulary=vocab.pkl` takes H-T's released id -> word table instead and tokenises as the
released code does (`released_vocab`: nltk-style words, `<start> ... <end>` lines, quantity fixes of
ingredient lines; the token limits count the two markers, as released), so the released weights
read the ids they were trained on. It needs the optional extra `released`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from collections import Counter
from typing import Any

from tqdm import tqdm

from xmodal.data import photos, records, released_words, schema, tokenizer
from xmodal.data.jsonio import read_json, write_json
from xmodal.data.raw.estimate import estimate, print_estimate
from xmodal.data.raw.recipe1m import CLASSES, DET_INGRS, LAYER1, LAYER2, PARTITIONS, read_recipe1m
from xmodal.data.raw.shards import STATE_DIR, photo_batches, plan_shards, shard_state, write_shard
from xmodal.data.released_vocab import ReleasedTokenizer, read_vocab_pickle

LARGE_TRAIN_SPLIT = 100_000  # auto min word count: 10 (H-T) above this many train recipes, else 1
PLAN_FILE = "plan.json"
PLAN_VERSION = 1


def _raw_fingerprint(raw_dir: str) -> dict[str, list[int]]:
    """Size and mtime of the raw JSON / pickle files: a resumed run must read the same raw data."""
    out = {}
    for name in (LAYER1, LAYER2, DET_INGRS, CLASSES):
        path = os.path.join(raw_dir, name)
        if os.path.exists(path):
            st = os.stat(path)
            out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _clear_outputs(out_dir: str) -> None:
    """Removes a previous run's outputs, dataset_info first: a stale folder never looks complete."""
    info = os.path.join(out_dir, records.DATASET_INFO)
    if os.path.exists(info):
        os.remove(info)
    for name in os.listdir(out_dir):
        if name.endswith((".array_record", ".array_record.tmp")) or name == records.TOKENIZER_FILE:
            os.remove(os.path.join(out_dir, name))
    shutil.rmtree(os.path.join(out_dir, STATE_DIR), ignore_errors=True)


def prepare(
    raw_dir: str,
    out_dir: str,
    *,
    image_short_side: int = 256,
    num_shards_per_split: int = 0,
    num_workers: int = 0,
    min_word_count: int = 0,
    max_title_tokens: int = 15,
    max_ingredients: int = 20,
    max_instructions: int = 20,
    max_tokens: int = 15,
    max_image_pixels: int = photos.MAX_PIXELS,
    photo_resize: str = "xmodal",
    tokenizer_from: str | None = None,
    vocabulary: str | None = None,
    source: str | None = None,
    verbose: bool = True,
) -> dict:
    """Prepares `raw_dir` into `out_dir` and returns the dataset_info dict (0 = auto for counts).

    Auto values: shards of ~1024 records, one worker per core, and min word count 10 (H-T) when the
    train partition has more than 100k recipes, else 1 (the built-in dataset is too small for 10).
    `tokenizer_from` (a workdir, prepared data or TFDS dataset): its vocabulary is reused instead
    of learning one from the train partition, which may then be absent (evaluation-only or
    gallery data). `vocabulary`: H-T's released `vocab.pkl` and its tokenisation (module
    docstring). `photo_resize`: 'xmodal' or 'torchvision' (the released H-T's eval resize,
    stored losslessly; `photos.PHOTO_RESIZE`). Resumes an interrupted run into the same
    `out_dir` (see the module docstring).
    """
    spec = photos.PhotoSpec(image_short_side, max_image_pixels, photo_resize)
    if tokenizer_from and vocabulary:
        raise ValueError("--tokenizer_from and --vocabulary both name a vocabulary: pass one")
    released = _released_vocabulary(vocabulary) if vocabulary else None
    os.makedirs(out_dir, exist_ok=True)
    vocab_dir = tokenizer.vocabulary_dir(tokenizer_from) if tokenizer_from else None
    if vocab_dir == os.path.abspath(out_dir):
        raise ValueError(f"--tokenizer_from={tokenizer_from!r} must not be --out_dir itself")
    if vocab_dir is not None and isinstance(tokenizer.load_tokenizer(vocab_dir), ReleasedTokenizer):
        released_words.check_available()  # the released rule, reused: its splitter is needed
    raw = read_recipe1m(raw_dir)
    train = [r for r in raw.recipes if r.partition == "train"]
    if not train and vocab_dir is None and released is None:
        raise ValueError(
            f"{raw_dir}: no usable recipe in the train partition, so no vocabulary to learn. "
            "To prepare data for evaluating or searching with a trained run, reuse its "
            "vocabulary: --tokenizer_from=WORKDIR (or the run's prepared data dir)"
        )
    if not raw.recipes:
        raise ValueError(f"{raw_dir}: no usable recipe in any partition")
    limits: dict[str, int] = dict(
        max_title_tokens=max_title_tokens,
        max_ingredients=max_ingredients,
        max_instructions=max_instructions,
        max_tokens=max_tokens,
    )
    if vocab_dir is None and released is None:
        limits["min_word_count"] = min_word_count or (10 if len(train) > LARGE_TRAIN_SPLIT else 1)
    plan = dict(
        version=PLAN_VERSION,
        raw=_raw_fingerprint(raw_dir),
        image_short_side=image_short_side,
        num_shards_per_split=num_shards_per_split,
        max_image_pixels=max_image_pixels,
        limits=limits,
    )
    if photo_resize != "xmodal":  # plans written before the option stay valid
        plan["photo_resize"] = photo_resize
    if vocab_dir is not None:  # another vocabulary makes other records: start over
        plan["tokenizer"] = tokenizer.fingerprint(vocab_dir)
    if released is not None:
        plan["tokenizer"] = tokenizer.fingerprint_of(released.to_json())
    state_dir = os.path.join(out_dir, STATE_DIR)
    plan_path = os.path.join(state_dir, PLAN_FILE)
    resume = os.path.exists(plan_path) and read_json(plan_path) == plan
    if not resume:
        _clear_outputs(out_dir)
        os.makedirs(state_dir)
        write_json(plan, plan_path)
    tok_path = os.path.join(out_dir, records.TOKENIZER_FILE)
    if not os.path.exists(tok_path):
        staged = os.path.join(state_dir, records.TOKENIZER_FILE)
        if vocab_dir is not None:  # the very file: the same fingerprint
            shutil.copyfile(os.path.join(vocab_dir, records.TOKENIZER_FILE), staged)
        elif released is not None:
            tokenizer.save_tokenizer(released, state_dir)
        else:
            tok = tokenizer.build_tokenizer(
                (t for r in train for t in (r.title, *r.ingredients, *r.instructions)),
                min_count=limits["min_word_count"],
            )
            tokenizer.save_tokenizer(tok, state_dir)
        os.replace(staged, tok_path)  # renamed into place: never a half-written file
    tok = tokenizer.load_tokenizer(out_dir)

    by_part = {p: [r for r in raw.recipes if r.partition == p] for p in PARTITIONS}
    paired = [
        s
        for p in PARTITIONS
        for s in plan_shards(p, [r for r in by_part[p] if r.image_ids], num_shards_per_split, True)
    ]
    states = {s.name: shard_state(state_dir, s) for s in paired}
    todo = [s for s in paired if states[s.name] is None]
    workers = num_workers or os.cpu_count() or 1
    if todo and verbose:
        if resume:
            print(f"[prepare] resuming: {len(paired) - len(todo)} of {len(paired)} shards done")
        print_estimate(estimate(todo, tok, limits, workers, spec))
    total = sum(len(s.recipes) for s in paired)
    left = sum(len(s.recipes) for s in todo)
    with tqdm(
        total=total, initial=total - left, unit="recipe", desc="photos", disable=not verbose
    ) as bar:
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and todo else None
        try:
            batches = photo_batches(pool, todo, spec)
            for shard, results in zip(todo, batches, strict=True):
                states[shard.name] = write_shard(out_dir, shard, tok, limits, results, bar)
        finally:
            if pool is not None:
                pool.terminate()

    fell_back = {rid for st in states.values() for rid in st["text_only"]}
    text = [
        s
        for p in PARTITIONS
        for s in plan_shards(
            p + schema.TEXT_ONLY_SUFFIX,
            [r for r in by_part[p] if not r.image_ids or r.id in fell_back],
            num_shards_per_split,
            False,
        )
    ]
    for shard in tqdm(text, unit="shard", desc="text-only", disable=not verbose):
        states[shard.name] = shard_state(state_dir, shard) or write_shard(
            out_dir, shard, tok, limits, None
        )

    splits: dict[str, dict[str, int]] = {}
    skipped = [{"id": i, "reason": why} for i, why in raw.skipped]
    repaired: Counter[str] = Counter()
    for shard in paired + text:
        st = states[shard.name]
        counts = splits.setdefault(shard.split, {"recipes": 0, "images": 0})
        counts["recipes"] += st["recipes"]
        counts["images"] += st["images"]
        skipped += st["skipped"]
        repaired.update(st["repaired"])
    for split in [k for k, v in splits.items() if v["recipes"] == 0]:  # every photo was bad
        del splits[split]
        for shard in paired:
            if shard.split == split:
                os.remove(os.path.join(out_dir, shard.name))
    info = {
        "splits": splits,
        "skipped": skipped,
        "repaired": dict(sorted(repaired.items())),
        "vocab_size": tok.get_vocab_size(),
        "num_classes": len(raw.class_names),
        "class_names": raw.class_names,
        "image_short_side": image_short_side,
        "max_image_pixels": max_image_pixels,
        "photo_resize": photo_resize,
        "limits": limits,
        "source": source or os.path.abspath(raw_dir),
    }
    if vocab_dir is not None:
        info["tokenizer_from"] = vocab_dir
    if vocabulary:
        info["vocabulary"] = {"file": os.path.abspath(vocabulary), "sha256": _sha256(vocabulary)}
    write_json(info, os.path.join(out_dir, records.DATASET_INFO))
    return info


def _released_vocabulary(path: str) -> ReleasedTokenizer:
    """The released table of `path`, once the rule's sentence splitter is known to be installed
    (both checked before any raw data is read)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--vocabulary={path!r}: no such file (H-T's data/vocab.pkl)")
    table = read_vocab_pickle(path)
    released_words.check_available()
    return table


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def define_option_flags() -> None:
    """The flags of `prepare`'s options and its raw input: shared by this command line and the
    TFDS builder's (`xmodal.data.tfds.builder`). Defined only when run as a program, so
    importing this module never collides with the flags of `xmodal.main`."""
    from absl import flags

    flags.DEFINE_string("raw_dir", None, "Raw Recipe1M layout (layer1.json, layer2.json, ...).")
    flags.DEFINE_string(
        "tokenizer_from",
        None,
        "Reuse the vocabulary of a trained run (its workdir or prepared data dir, or a TFDS "
        "dataset) instead of learning one: for data without a train split.",
    )
    flags.DEFINE_string(
        "vocabulary",
        None,
        "H-T's released id->word table (data/vocab.pkl of amzn/image-to-recipe-transformers): "
        "its ids and tokenisation instead of a learned vocabulary (extra: xmodal[released]).",
    )
    flags.DEFINE_integer("image_short_side", 256, "Photos are downscaled to this short side.")
    flags.DEFINE_enum(
        "photo_resize",
        "xmodal",
        list(photos.PHOTO_RESIZE),
        "xmodal: JPEG draft decode, bicubic, JPEG q90 (fast, small). torchvision: as the released "
        "H-T's eval transform resizes (Pillow bilinear, long side truncated), stored as PNG "
        "(for imported released weights).",
    )
    flags.DEFINE_string(
        "num_shards_per_split", "auto", "'auto' (~1024 recipes a shard) or a count."
    )
    flags.DEFINE_string(
        "num_workers", "auto", "Image worker processes: 'auto' (one per core) or N."
    )
    flags.DEFINE_string("min_word_count", "auto", "'auto': 10 if train has > 100k recipes, else 1.")
    flags.DEFINE_integer("max_title_tokens", 15, "Title tokens kept.")
    flags.DEFINE_integer("max_ingredients", 20, "Ingredient lines kept.")
    flags.DEFINE_integer("max_instructions", 20, "Instruction sentences kept.")
    flags.DEFINE_integer("max_tokens", 15, "Tokens kept per ingredient / instruction line.")
    flags.DEFINE_integer(
        "max_image_pixels", photos.MAX_PIXELS, "Larger photos are skipped as decompression bombs."
    )


def options_from_flags() -> dict[str, Any]:
    """`prepare`'s keyword arguments from the flags of `define_option_flags`."""
    from absl import flags

    f = flags.FLAGS
    return dict(
        image_short_side=f.image_short_side,
        num_shards_per_split=_auto(f.num_shards_per_split, "num_shards_per_split"),
        num_workers=_auto(f.num_workers, "num_workers"),
        min_word_count=_auto(f.min_word_count, "min_word_count"),
        max_title_tokens=f.max_title_tokens,
        max_ingredients=f.max_ingredients,
        max_instructions=f.max_instructions,
        max_tokens=f.max_tokens,
        max_image_pixels=f.max_image_pixels,
        photo_resize=f.photo_resize,
        tokenizer_from=f.tokenizer_from,
        vocabulary=f.vocabulary,
    )


def _define_flags() -> None:
    from absl import flags

    define_option_flags()
    flags.DEFINE_string("out_dir", None, "Where shards, tokenizer and dataset_info.json go.")
    flags.mark_flags_as_required(["raw_dir", "out_dir"])


def _auto(value: str, name: str) -> int:
    """'auto' -> 0 (prepare's "choose for me"), else a non-negative integer."""
    if value == "auto":
        return 0
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise SystemExit(f"--{name} must be 'auto' or a non-negative integer, got {value!r}")
    return number


def summary(info: dict[str, Any], where: str) -> str:
    """One line on what a preparation wrote."""
    counts = ", ".join(
        f"{k}: {v['recipes']} recipes / {v['images']} images" for k, v in info["splits"].items()
    )
    n_skipped = len(info["skipped"])
    return f"wrote {where}: {counts}; vocabulary {info['vocab_size']}; skipped {n_skipped}"


def _main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    info = prepare(flags.FLAGS.raw_dir, flags.FLAGS.out_dir, **options_from_flags())
    print(summary(info, flags.FLAGS.out_dir))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
