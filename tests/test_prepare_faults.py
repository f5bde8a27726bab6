"""`prepare` on a raw layout with every fault of a real crawl, on realistic photos, and resumed
after an interruption."""

import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource
from PIL import Image

from xmodal.data import prepare, records

SHORT = 64
MAX_PIXELS = 20_000_000


def _noise_photo(w, h, seed):
    """A photo-like image: smooth colour noise upscaled with detail noise on top."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h // 50 + 1, w // 50 + 1, 3), np.uint8))
    arr = np.asarray(base.resize((w, h), Image.BILINEAR), np.int16)
    arr = arr + rng.integers(-12, 13, (h, w, 1), np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _photos():
    """image id -> (writer of the file, expected outcome): ('ok', (w, h) stored) or ('skip', reason
    substring) ; repairs expected are checked separately by count."""
    big = _noise_photo(4000, 3000, 0)  # 12 MP, landscape bytes, shown portrait by EXIF
    return {
        "aa000001.jpg": (lambda p: _noise_photo(96, 64, 1).save(p, "JPEG"), ("ok", (96, 64))),
        "aa000002.jpg": (
            lambda p: big.save(p, "JPEG", quality=90, exif=_exif(6)),
            ("ok", (SHORT, round(4000 * SHORT / 3000))),
        ),
        "aa000003.jpg": (
            lambda p: _noise_photo(2000, 1500, 2).save(p, "JPEG", progressive=True),
            ("ok", (round(2000 * SHORT / 1500), SHORT)),
        ),
        "aa000004.jpg": (  # panorama 4:1
            lambda p: _noise_photo(1600, 400, 3).save(p, "JPEG"),
            ("ok", (SHORT * 4, SHORT)),
        ),
        "aa000005.jpg": (
            lambda p: _noise_photo(80, 120, 4).convert("CMYK").save(p, "JPEG"),
            ("ok", (SHORT, 96)),
        ),
        "aa000006.jpg": (
            lambda p: _noise_photo(100, 100, 5).convert("L").save(p, "JPEG"),
            ("ok", (SHORT, SHORT)),
        ),
        "aa000007.jpg": (
            lambda p: _noise_photo(70, 70, 6).convert("RGBA").save(p, "PNG"),
            ("ok", (SHORT, SHORT)),
        ),
        "aa000008.jpg": (
            lambda p: _noise_photo(128, 64, 7).save(p, "WEBP"),
            ("ok", (128, 64)),
        ),
        "bb000001.jpg": (_truncated, ("skip", "truncated")),
        "bb000002.jpg": (lambda p: open(p, "wb").write(os.urandom(3000)), ("skip", "not an image")),
        "bb000003.jpg": (None, ("skip", "not found")),
        "bb000004.jpg": (lambda p: open(p, "wb").close(), ("skip", "empty")),
        "bb000005.jpg": (  # 25 MP of one bit: a tiny file, a bomb past max_pixels
            lambda p: Image.new("1", (5000, 5000)).save(p, "PNG"),
            ("skip", "too large"),
        ),
    }


def _truncated(path):
    buf = io.BytesIO()
    _noise_photo(300, 200, 9).save(buf, "JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])


def _entry(
    rid, partition="train", title="Rice bowl", ingredients=("1 cup rice",), steps=("Boil.",)
):
    return dict(
        id=rid,
        url="u",
        partition=partition,
        title=title,
        ingredients=[{"text": t} for t in ingredients],
        instructions=[{"text": t} for t in steps],
    )


# recipe id -> its photos (ids in _photos)
RECIPE_PHOTOS = {
    "good": ["aa000001.jpg", "aa000002.jpg"],
    "formats": ["aa000003.jpg", "aa000004.jpg", "aa000005.jpg"],
    "modes": ["aa000006.jpg", "aa000007.jpg", "aa000008.jpg", "bb000002.jpg"],
    "allbad": ["bb000001.jpg", "bb000003.jpg", "bb000004.jpg", "bb000005.jpg"],
}


@pytest.fixture(scope="module")
def faulty_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("faulty_raw")
    layer1 = [
        _entry("good", title="Caf\u00e9\u0007 soup\u200b \ud800with\x00 rice"),
        _entry("formats", ingredients=("2 eggs", "salt"), steps=("Whisk.", "Fry.")),
        _entry("modes"),
        _entry("allbad"),
        _entry("textonly", partition="val"),
        _entry("good", partition="test"),  # duplicated id
        _entry("noingr", ingredients=()),
        _entry("nosteps", steps=(" ", "\x07")),
        _entry("valpair", partition="val"),
    ]
    layer2 = [{"id": r, "images": [{"id": i} for i in ids]} for r, ids in RECIPE_PHOTOS.items()]
    layer2 += [
        {"id": "valpair", "images": [{"id": "cc000001.jpg"}]},
        {"id": "ghost", "images": [{"id": "dd000001.jpg"}]},  # unknown recipe
    ]
    det = [{"id": "good", "ingredients": [{"text": "rice"}, {"text": "x"}], "valid": [True, False]}]
    (raw / "layer1.json").write_text(json.dumps(layer1))  # the lone surrogate as an escape
    (raw / "layer2.json").write_text(json.dumps(layer2))
    (raw / "det_ingrs.json").write_text(json.dumps(det))
    with open(raw / "classes1M.pkl", "wb") as f:
        pickle.dump({"good": 2, "formats": 1}, f)
        pickle.dump({0: "background", 1: "omelette", 2: "soup"}, f)
    photos = _photos()
    photos["cc000001.jpg"] = (lambda p: _noise_photo(64, 64, 11).save(p, "JPEG"), ("ok", None))
    partition = {r["id"]: r["partition"] for r in reversed(layer1)}
    owner = {i: r for r, ids in RECIPE_PHOTOS.items() for i in ids} | {"cc000001.jpg": "valpair"}
    for iid, (write, _) in photos.items():
        folder = raw / partition[owner[iid]] / iid[0] / iid[1] / iid[2] / iid[3]
        folder.mkdir(parents=True, exist_ok=True)
        if write is not None:
            write(str(folder / iid))
    return str(raw)


def _split(out, split):
    source = ArrayRecordDataSource(records.shard_paths(out, split))
    return {r["id"]: r for r in (records.decode_record(source[i]) for i in range(len(source)))}


@pytest.fixture(scope="module")
def converted(faulty_raw, tmp_path_factory):
    """The CLI in a subprocess, as a user runs it."""
    out = str(tmp_path_factory.mktemp("faulty_out"))
    cmd = [sys.executable, "-m", "xmodal.data.prepare", f"--raw_dir={faulty_raw}",
           f"--out_dir={out}", f"--image_short_side={SHORT}", "--num_workers=2",
           f"--max_image_pixels={MAX_PIXELS}"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(out, records.DATASET_INFO)) as f:
        return out, json.load(f), run.stdout


# what `faulty_raw` makes prepare repair, by kind (one photo each)
EXPECTED_REPAIRED = {
    "CMYK converted to RGB": 1,
    "L converted to RGB": 1,
    "PNG bytes under a .jpg name": 1,
    "RGBA converted to RGB": 1,
    "WEBP bytes under a .jpg name": 1,
    "large photo decoded at reduced scale": 1,
    "rotated upright by EXIF orientation": 1,
}


def assert_faults_reported(info):
    """`info` (prepare's report on `faulty_raw`, however stored) lists every fault with its
    reason and nothing else, and counts every repair."""
    reasons = {}
    for s in info["skipped"]:
        reasons.setdefault(s["id"], []).append(s["reason"])
    expected_photo_skips = {i: why for i, (_, (kind, why)) in _photos().items() if kind == "skip"}
    for iid, why in expected_photo_skips.items():
        assert len(reasons[iid]) == 1 and why in reasons[iid][0], (iid, reasons.get(iid))
    assert "duplicated" in reasons["good"][0]
    assert "no ingredients" in reasons["noingr"][0]
    assert "no instructions" in reasons["nosteps"][0]
    assert "unknown" in reasons["ghost"][0]
    assert len(info["skipped"]) == len(expected_photo_skips) + 4  # nothing else
    assert info["repaired"] == EXPECTED_REPAIRED


def test_every_fault_is_reported_with_its_reason(converted):
    _, info, stdout = converted
    assert_faults_reported(info)
    assert "Full Recipe1M" in stdout  # the estimate is printed before the photos


def test_every_good_recipe_and_photo_is_converted(converted):
    out, info, _ = converted
    train = _split(out, "train")
    assert sorted(train) == ["formats", "good", "modes"]
    expected = {i: size for i, (_, (kind, size)) in _photos().items() if kind == "ok"}
    for rid in train:
        assert train[rid]["image_ids"] == [i for i in RECIPE_PHOTOS[rid] if i in expected]
        for iid, data in zip(train[rid]["image_ids"], train[rid]["images"], strict=True):
            img = Image.open(io.BytesIO(data))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == expected[iid], iid
    assert set(_split(out, "val")) == {"valpair"}
    assert info["splits"]["train"] == {"recipes": 3, "images": len(expected)}
    good = train["good"]
    # control and zero-width characters removed; ijson reads the lone surrogate as "?"
    assert good["title"] == "Café soup ?with rice"
    assert good["clean_ingredients"] == ["rice"] and good["class_id"] == 2
    assert train["modes"]["class_id"] == 0  # not in classes1M.pkl: background


def test_recipe_with_only_bad_photos_keeps_its_text(converted):
    out, info, _ = converted
    assert set(_split(out, "train_text")) == {"allbad"}
    assert set(_split(out, "val_text")) == {"textonly"}
    assert info["splits"]["train_text"] == {"recipes": 1, "images": 0}


def test_exif_rotation_turns_the_pixels(tmp_path):
    """A photo whose top half is white, stored rotated: upright, the white half is on the left."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white in the stored bytes; EXIF 6 = rotate 90 clockwise to show
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=_exif(6))
    from xmodal.data import photos

    out = np.asarray(Image.open(io.BytesIO(photos.load_image(str(tmp_path / "r.jpg"), 256))))
    assert out.shape == (80, 40, 3)
    assert out[:30].mean() > 200 and out[50:].mean() < 50  # stored left -> shown top


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_interrupted_run_resumes_to_identical_bytes(synthetic_raw, tmp_path, monkeypatch):
    kw = dict(image_short_side=24, num_shards_per_split=3, num_workers=1, verbose=False)
    prepare.prepare(synthetic_raw, str(tmp_path / "ref"), **kw)
    reference = _files(tmp_path / "ref")

    encode, calls = records.encode_record, []
    first = os.path.join(tmp_path / "ref", records.shard_name("train", 0, 3))
    first_shard = len(ArrayRecordDataSource([first]))

    def interrupt_mid_shard(recipe):
        calls.append(recipe["id"])
        if len(calls) == first_shard + 5:  # inside the second of the train split's three shards
            raise KeyboardInterrupt
        return encode(recipe)

    out = str(tmp_path / "resumed")
    monkeypatch.setattr(records, "encode_record", interrupt_mid_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(synthetic_raw, out, **kw)
    assert not os.path.exists(os.path.join(out, records.DATASET_INFO))  # not complete
    first = os.path.join(out, records.shard_name("train", 0, 3))
    stamp = os.stat(first).st_mtime_ns
    calls.clear()
    monkeypatch.setattr(records, "encode_record", lambda r: calls.append(r["id"]) or encode(r))
    prepare.prepare(synthetic_raw, out, **{**kw, "num_workers": 2})
    assert os.stat(first).st_mtime_ns == stamp  # the finished shard was kept, not redone
    assert len(calls) == sum(reference_counts(reference)) - first_shard
    assert _files(out) == reference


def reference_counts(files):
    info = json.loads(files[records.DATASET_INFO])
    return [v["recipes"] for v in info["splits"].values()]
