"""Grain pipelines on hand-written shards: shapes, determinism, padding, iterator checkpointing."""

import io
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from configs import common, tnlbt
from xmodal.data import pipeline, records


def _jpeg(colour, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _write_split(data_dir, split, n, shards=2):
    per = -(-n // shards)
    for s in range(shards):
        w = ArrayRecordWriter(str(data_dir / records.shard_name(split, s, shards)), "group_size:1")
        for i in range(s * per, min(n, (s + 1) * per)):
            w.write(
                records.encode_record(
                    records.empty_recipe(
                        id=f"r{i:04d}",
                        title_ids=[4 + i % 7, 5, 6],
                        ingredient_ids=[[7, 8], [9]] * (1 + i % 3),
                        instruction_ids=[[10, 11, 12]],
                        class_id=i % 4,
                        images=[_jpeg((6 * i % 256, 0, 0)), _jpeg((0, 6 * i % 256, 0), (30, 50))],
                    )
                )
            )
        w.close()


@pytest.fixture()
def data_dir(tmp_path):
    _write_split(tmp_path, "train", 37)
    _write_split(tmp_path, "val", 11)
    return tmp_path


def _config(**overrides):
    c = common.base_config("test").data
    c.update(
        dict(
            image_size=16,
            max_title_tokens=4,
            max_ingredients=3,
            max_instructions=2,
            max_ingredient_tokens=2,
            max_instruction_tokens=3,
            num_workers="0",
        )
    )
    c.update(overrides)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_have_fixed_shapes_and_dtypes(data_dir):
    it = iter(pipeline.train_dataset(str(data_dir), _config(), batch_size=8, seed=0))
    batch = next(it)
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["title"].shape == (8, 4) and batch["title"].dtype == np.int32
    assert batch["ingredients"].shape == (8, 3, 2)
    assert batch["instructions"].shape == (8, 2, 3)  # own token limit for instruction lines
    # truncation to the run's limits: the recipe's last ingredient token survives only if it fits
    assert set(np.unique(batch["ingredients"])) <= {0, 7, 8, 9}


def test_train_order_is_deterministic_for_a_seed_and_differs_across_seeds(data_dir):
    def titles(seed):
        it = iter(pipeline.train_dataset(str(data_dir), _config(), batch_size=8, seed=seed))
        return np.concatenate([b["image"].reshape(8, -1)[:, :3] for b in _take(it, 6)])

    np.testing.assert_array_equal(titles(0), titles(0))
    assert not np.array_equal(titles(0), titles(1))


def test_train_iterator_state_restores_exactly(data_dir):
    ds = pipeline.train_dataset(str(data_dir), _config(), batch_size=8, seed=3)
    it = iter(ds)
    _take(it, 7)  # past one epoch of 37 recipes
    state = it.get_state()
    expected = _take(it, 3)
    fresh = iter(ds)
    fresh.set_state(state)
    for got, want in zip(_take(fresh, 3), expected, strict=True):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def _recipe_of(image):
    """Recipe index of a solid-colour photo written by _write_split (colour 6 * index)."""
    return round(float(image.reshape(-1, 3).mean(0).max()) / 6)


def test_train_processes_split_an_epoch_disjointly_and_completely(data_dir):
    seen = []
    for p in range(2):
        ds = pipeline.train_dataset(
            str(data_dir), _config(), batch_size=1, seed=5, process_index=p, process_count=2
        )
        it = iter(ds)
        epoch = [_recipe_of(next(it)["image"][0]) for _ in range(len(range(p, 37, 2)))]
        assert len(set(epoch)) == len(epoch)  # one epoch: every recipe of the slice once
        seen.append(set(epoch))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(37))


def test_processes_see_disjoint_recipes(data_dir):
    seen = []
    for p in range(2):
        ds = pipeline.eval_dataset(
            str(data_dir), "train", _config(), batch_size=4, process_index=p, process_count=2
        )[0]
        idx = np.concatenate([b["index"][b["valid"]] for b in ds])
        seen.append(set(idx.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(37))


def test_eval_covers_every_pair_once_with_padding(data_dir):
    ds, n = pipeline.eval_dataset(str(data_dir), "val", _config(), batch_size=4)
    batches = list(ds)
    assert n == 11 and len(batches) == 3
    index = np.concatenate([b["index"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert sorted(index[valid].tolist()) == list(range(11))
    assert not valid[-1] and index[-1] == -1
    # deterministic: the first photo, center-cropped, same on every pass
    again = list(pipeline.eval_dataset(str(data_dir), "val", _config(), batch_size=4)[0])
    np.testing.assert_array_equal(batches[0]["image"], again[0]["image"])


def test_eval_limit_takes_the_first_pairs(data_dir):
    ds, n = pipeline.eval_dataset(str(data_dir), "val", _config(), batch_size=4, limit=5)
    idx = np.concatenate([b["index"][b["valid"]] for b in ds])
    assert n == 5 and idx.tolist() == [0, 1, 2, 3, 4]


def test_missing_split_is_a_clear_error(data_dir):
    with pytest.raises(FileNotFoundError, match="prepare"):
        pipeline.train_dataset(str(data_dir), _config(), batch_size=4, seed=0, split="test")


def test_random_resized_crop_output_and_flip():
    img = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3))
    rng = np.random.default_rng(0)
    crops = [pipeline.random_resized_crop(img, 24, rng) for _ in range(20)]
    assert all(c.shape == (24, 24, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) == 20  # crops differ


def test_papers_random_crop_keeps_the_scale_and_moves():
    """data.train_crop=random: a square of the eval crop's scale (so sizes look the same as at
    eval), at random positions, flipped half of the time."""
    h, w = 40, 60
    pixels = np.random.default_rng(1).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    side = round(h * pipeline.EVAL_CROP_FRACTION)  # 35 px of the short side
    rng = np.random.default_rng(0)
    crops = [pipeline.random_crop(img, side, rng) for _ in range(40)]
    # At the crop's own size no resampling happens: each crop is a window of the photo, as is
    # or mirrored.
    windows = {
        pixels[y : y + side, x : x + side].tobytes(): (x, y)
        for y in range(h - side + 1)
        for x in range(w - side + 1)
    }
    found, flipped = set(), 0
    for c in crops:
        if c.tobytes() in windows:
            found.add(windows[c.tobytes()])
        else:
            flipped += 1
            found.add(windows[c[:, ::-1].tobytes()])
    assert len(found) > 10 and 5 < flipped < 35
    with pytest.raises(ValueError, match="train_crop must be one of"):
        pipeline.TrainExample(pipeline.TextLimits.from_config(_config()), 16, crop="zoom")


def test_random_batch_matches_the_train_pipeline(data_dir):
    real = next(iter(pipeline.train_dataset(str(data_dir), _config(), batch_size=8, seed=0)))
    fake = pipeline.random_batch(_config(), 8, vocab_size=10, seed=0)
    assert set(fake) <= set(real)
    for k, v in fake.items():
        assert (v.shape, v.dtype) == (real[k].shape, real[k].dtype), k
    assert fake["title"].min() >= 1 and fake["title"].max() < 10  # never padding, in vocab


def test_num_workers_auto_is_sized_to_this_process_cores(monkeypatch):
    """b16's data.num_workers='auto': two of the cores this process may use stay with the step;
    a malformed value is refused when the config is checked, naming the field."""
    from xmodal.run import check_config

    for cores, want in ((2, 0), (3, 0), (4, 2), (16, 14), (96, 32)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert pipeline.worker_count("auto") == want
    assert pipeline.worker_count("6") == 6 and pipeline.worker_count(0) == 0
    config = tnlbt.get_config("b16")
    assert config.data.num_workers == "auto"
    config.data.num_workers = "many"
    with pytest.raises(ValueError, match=r"data\.num_workers"):
        check_config(config)
