import io
import json
import os
import shutil

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource
from data_fixtures import SMALL, image_file
from PIL import Image

from xmodal.data import photos, prepare, records, tokenizer
from xmodal.data.builtin import dataset as synthetic

SHORT_SIDE = 32


def _read_split(data_dir, split):
    source = ArrayRecordDataSource(records.shard_paths(data_dir, split))
    return [records.decode_record(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def prepared(synthetic_raw, tmp_path_factory):
    """Synthetic raw with one corrupt photo (of a recipe with 3) and one missing photo (of a
    recipe with 1), prepared with a small short side."""
    raw = str(tmp_path_factory.mktemp("raw_broken") / "raw")
    shutil.copytree(synthetic_raw, raw)
    with open(f"{raw}/layer1.json") as f:
        layer1 = {r["id"]: r for r in json.load(f)}
    with open(f"{raw}/layer2.json") as f:
        layer2 = json.load(f)
    three = next(e for e in layer2 if len(e["images"]) == 3)
    one = next(e for e in layer2 if len(e["images"]) == 1)
    corrupt = image_file(raw, layer1[three["id"]]["partition"], three["images"][1]["id"])
    with open(corrupt, "r+b") as f:
        f.seek(20)
        f.write(b"\x00garbage" * 50)
        f.truncate(300)
    missing = image_file(raw, layer1[one["id"]]["partition"], one["images"][0]["id"])
    os.remove(missing)
    out = str(tmp_path_factory.mktemp("data"))
    info = prepare.prepare(raw, out, image_short_side=SHORT_SIDE, num_workers=2)
    return dict(out=out, info=info, layer1=layer1, layer2=layer2, three=three, one=one)


def test_counts_match_dataset_info(prepared):
    info = prepared["info"]
    with open(f"{prepared['out']}/{records.DATASET_INFO}") as f:
        assert json.load(f) == info
    assert set(info["splits"]) == {"train", "val", "test", "train_text", "val_text", "test_text"}
    seen = []
    for split, counts in info["splits"].items():
        recs = _read_split(prepared["out"], split)
        assert len(recs) == counts["recipes"]
        assert sum(len(r["images"]) for r in recs) == counts["images"]
        assert all(r["partition"] == split.removesuffix("_text") for r in recs)
        seen += [r["id"] for r in recs]
    assert sorted(seen) == sorted(prepared["layer1"])  # every recipe exactly once
    assert info["num_classes"] == len(info["class_names"]) and info["vocab_size"] > 50


def test_images_are_rgb_and_downscaled(prepared):
    recs = _read_split(prepared["out"], "val")
    for r in recs[:50]:
        assert len(r["images"]) == len(r["image_ids"]) >= 1
        for data in r["images"]:
            img = Image.open(io.BytesIO(data))
            assert img.mode == "RGB" and min(img.size) == SHORT_SIDE < SMALL["image_size"]


def test_tokens_decode_back_to_words(prepared):
    tok = tokenizer.load_tokenizer(prepared["out"])
    recs = _read_split(prepared["out"], "train")
    for r in recs[:30]:
        assert tokenizer.decode(tok, r["title_ids"]) == r["title"].lower()
        assert len(r["ingredient_ids"]) == len(r["ingredients"])
        first = tokenizer.decode(tok, r["ingredient_ids"][0])
        assert first.split() == r["ingredients"][0].lower().replace("/", " / ").split()[:15]
        assert all(len(ids) <= 15 for ids in r["instruction_ids"])


def test_recipes_without_photos_keep_their_text(prepared):
    with_photos = {e["id"] for e in prepared["layer2"]}
    text_ids = set()
    for split in ("train_text", "val_text", "test_text"):
        for r in _read_split(prepared["out"], split):
            assert r["images"] == [] and r["ingredient_ids"] and r["instruction_ids"]
            text_ids.add(r["id"])
    assert text_ids == (set(prepared["layer1"]) - with_photos) | {prepared["one"]["id"]}


def test_bad_images_are_reported_and_recipe_kept(prepared):
    skipped = {s["id"]: s["reason"] for s in prepared["info"]["skipped"]}
    three, one = prepared["three"], prepared["one"]
    bad, gone = three["images"][1]["id"], one["images"][0]["id"]
    assert set(skipped) == {bad, gone}
    assert "decode" in skipped[bad] and three["id"] in skipped[bad]
    assert "not found" in skipped[gone]
    split = prepared["layer1"][three["id"]]["partition"]
    rec = next(r for r in _read_split(prepared["out"], split) if r["id"] == three["id"])
    assert rec["image_ids"] == [three["images"][0]["id"], three["images"][2]["id"]]


def test_load_image_applies_exif_and_never_upscales(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    out = Image.open(io.BytesIO(photos.load_image(str(tmp_path / "r.jpg"), 256)))
    assert out.size == (20, 40) and out.mode == "RGB"
    Image.new("L", (300, 600)).save(tmp_path / "g.png")
    out = Image.open(io.BytesIO(photos.load_image(str(tmp_path / "g.png"), 100)))
    assert out.size == (100, 200) and out.mode == "RGB"


def test_ensure_builtin_dataset_builds_once(tmp_path):
    kw = dict(num_recipes=40, image_size=32, seed=3)
    data_dir = synthetic.ensure_builtin_dataset(str(tmp_path), **kw)
    info_path = os.path.join(data_dir, records.DATASET_INFO)
    with open(info_path) as f:
        info = json.load(f)
    assert info["splits"]["train"]["recipes"] > 0 and "synthetic" in info["source"]
    assert [p for p in os.listdir(tmp_path) if "tmp" in p] == []  # nothing half-built left
    stamp = os.path.getmtime(info_path)
    assert synthetic.ensure_builtin_dataset(str(tmp_path), **kw) == data_dir
    assert os.path.getmtime(info_path) == stamp  # cached, not rebuilt


def test_torchvision_resize_is_the_released_eval_resize(tmp_path):
    """`photo_resize=torchvision` stores what the released H-T's `transforms.Resize(256)` makes of
    a PIL photo (torchvision calls Pillow's resize, bilinear, to (short, int(short * long /
    short))): the long side truncated, small photos upscaled, stored losslessly."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (451, 300, 3), dtype=np.uint8))  # 300 x 451
    big.save(tmp_path / "big.png")
    small = Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8))  # 150 x 100
    small.save(tmp_path / "small.png")
    spec = photos.PhotoSpec(256, resize="torchvision")
    for name, img, size in [("big", big, (256, 384)), ("small", small, (384, 256))]:
        stored = photos.load_photo(str(tmp_path / f"{name}.png"), spec).jpeg
        out = Image.open(io.BytesIO(stored))
        assert out.format == "PNG" and out.size == size  # 256 * 451 / 300 = 384.85 -> 384
        want = np.asarray(img.resize(size, Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(np.asarray(out), want)
    # The default rounds the long side, never upscales, and stores JPEG.
    out = Image.open(io.BytesIO(photos.load_image(str(tmp_path / "big.png"), 256)))
    assert out.format == "JPEG" and out.size == (256, 385)
    with pytest.raises(ValueError, match="photo resize 'bicubic': expected one of"):
        photos.PhotoSpec(256, resize="bicubic")


def test_center_crop_offset_rounds_half_to_even_as_torchvision():
    """A margin of 163 rows: torchvision's CenterCrop starts at round(81.5) = 82, not 81."""
    from xmodal.data.pipeline import center_crop

    pixels = np.random.default_rng(1).integers(0, 256, (387, 256, 3), dtype=np.uint8)
    crop = center_crop(Image.fromarray(pixels), 224)  # the eval crop: 224 of a 256 short side
    np.testing.assert_array_equal(crop, pixels[82:306, 16:240])


def test_prepare_records_the_photo_resize_and_stores_png(synthetic_raw, tmp_path):
    out = str(tmp_path / "data")
    info = prepare.prepare(
        synthetic_raw, out, image_short_side=SHORT_SIDE, photo_resize="torchvision", verbose=False
    )
    assert info["photo_resize"] == "torchvision"
    (rec, *_) = _read_split(out, "train")
    img = Image.open(io.BytesIO(rec["images"][0]))
    assert img.format == "PNG" and min(img.size) == SHORT_SIDE


def test_only_the_default_resize_reports_a_reduced_scale_decode(tmp_path, monkeypatch):
    """A large photo is decoded at reduced scale (JPEG draft) by the default resize only; the
    torchvision resize decodes it in full, so reporting that repair would be false."""
    monkeypatch.setattr(photos, "LARGE_PIXELS", 100)  # this photo counts as large
    Image.new("RGB", (40, 60)).save(tmp_path / "big.jpg")
    path = str(tmp_path / "big.jpg")
    fast = photos.load_photo(path, photos.PhotoSpec(32))
    full = photos.load_photo(path, photos.PhotoSpec(32, resize="torchvision"))
    assert fast.repairs == ["large photo decoded at reduced scale"]
    assert full.repairs == []
