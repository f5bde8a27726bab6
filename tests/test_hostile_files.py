"""Files the project is handed but did not write: a forged classes1M.pkl runs no code, a broken
JSON file is one error naming it, and a decompression bomb is refused before it is decoded."""

import io
import json
import os
import pathlib
import pickle
import re
import struct
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from xmodal.apps import gallery, search
from xmodal.data import info as data_info
from xmodal.data import photos
from xmodal.data.pipeline import read_photo
from xmodal.data.raw import recipe1m
from xmodal.run import Run, read_record

# --- classes1M.pkl ---------------------------------------------------------------------------


class _Opens:
    """Unpickled by a plain pickle.load, this creates (truncates) `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Shell:
    """Unpickled by a plain pickle.load, this runs a shell command creating `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _raw_dir(tmp_path, first, second):
    layer1 = [
        {
            "id": "r1",
            "partition": "train",
            "title": "Soup",
            "ingredients": [{"text": "water"}],
            "instructions": [{"text": "Boil."}],
        }
    ]
    (tmp_path / "layer1.json").write_text(json.dumps(layer1))
    with open(tmp_path / "classes1M.pkl", "wb") as f:
        f.write(first if isinstance(first, bytes) else pickle.dumps(first))
        f.write(second if isinstance(second, bytes) else pickle.dumps(second))
    return str(tmp_path)


@pytest.mark.parametrize("forged", ["first", "second"])
@pytest.mark.parametrize("payload", [_Opens, _Shell])
def test_forged_classes_pickle_is_refused_and_runs_nothing(tmp_path, forged, payload):
    victim = tmp_path / "pwned"
    evil = {"r1": payload(str(victim))}
    first, second = (evil, {0: "background"}) if forged == "first" else ({"r1": 0}, evil)
    raw = _raw_dir(tmp_path, first, second)
    # the global the payload pickles to: io.open on Python 3.11, _io.open on 3.12
    target = open if payload is _Opens else os.system
    refused = re.escape(f"{target.__module__}.{target.__name__}")
    with pytest.raises(ValueError, match=rf"classes1M\.pkl.*refused global {refused}"):
        recipe1m.read_recipe1m(raw)
    assert not victim.exists()


# Recipe1M's file was written by Python 2 (im2recipe scripts/bigrams.py, protocol 0): its ids and
# names are `unicode` (opcode V) or `str` (opcode S), its indices plain ints.
PY2_IDS = b"(dp0\nVr1\np1\nI3\nsS'r2'\np2\nI0\ns."
PY2_NAMES = b"(dp0\nI0\nVbackground\np1\nsI3\nS'soup'\np2\ns."


def test_the_real_files_plain_python2_pickles_are_read(tmp_path):
    _raw_dir(tmp_path, PY2_IDS, PY2_NAMES)
    ids, names = recipe1m.load_classes(str(tmp_path / "classes1M.pkl"))
    assert ids == {"r1": 3, "r2": 0}
    assert names == ["background", "", "", "soup"]


@pytest.mark.parametrize(
    "first, second, message",
    [
        ([("r1", 3)], {0: "background"}, "first pickle must map recipe ids to class indices"),
        ({"r1": "3"}, {0: "background"}, "first pickle must map recipe ids to class indices"),
        ({"r1": 0}, {0: 7}, "second pickle must map class indices to names"),
        ({"r1": 0}, "background", "second pickle must be class names"),
        ({"r1": 0}, {10**12: "x"}, "class index 1000000000000 >= "),
    ],
)
def test_classes_pickle_of_another_shape_is_a_clear_error(tmp_path, first, second, message):
    raw = _raw_dir(tmp_path, first, second)
    with pytest.raises(ValueError, match=message) as e:
        recipe1m.read_recipe1m(raw)
    assert "classes1M.pkl" in str(e.value)


def test_truncated_classes_pickle_is_a_clear_error(tmp_path):
    raw = _raw_dir(tmp_path, {"r1": 0}, b"")
    with pytest.raises(ValueError, match=r"cannot read .*classes1M\.pkl.*EOFError"):
        recipe1m.read_recipe1m(raw)


# --- JSON files ------------------------------------------------------------------------------


def _is_one_clear_error(error, path):
    assert str(path) in str(error)
    assert not isinstance(error, json.JSONDecodeError)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_malformed_dataset_info_names_the_file(tmp_path):
    path = tmp_path / "dataset_info.json"
    path.write_text('{"splits": {"train": {"recipes": 3,}}}')  # column 36: the "}" after "3,"
    with pytest.raises(ValueError, match=r"not valid JSON at line 1, column 36") as e:
        data_info.load_info(str(tmp_path))
    _is_one_clear_error(e.value, path)
    assert "prepare" in str(e.value)  # says how to redo it


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"not valid JSON \(empty\)"),
        ("[1, 2]", "holds a JSON list, expected a JSON object"),
        ('{"splits": {}}', "lacks 'vocab_size'"),
        ('\xff{"a": 1}', None),  # latin-1 bytes: not UTF-8
    ],
)
def test_dataset_info_of_another_shape_names_the_file(tmp_path, text, message):
    path = tmp_path / "dataset_info.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=message) as e:
        data_info.load_info(str(tmp_path))
    _is_one_clear_error(e.value, path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"method": "tnlbt", "data": {"dir": ""', "not valid JSON at line 1"),  # cut short
        ('"tnlbt"', "holds a JSON string"),
        ('{"method": "tnlbt", "data": {}}', "lacks 'model', 'train', 'eval'"),
        ('{"method": "m", "data": 1, "model": {}, "train": {}, "eval": {}}', "data is not a"),
    ],
)
def test_malformed_config_json_names_the_file(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        Run.from_workdir(str(tmp_path))
    _is_one_clear_error(e.value, path)
    with pytest.raises(ValueError, match=message):
        read_record(str(tmp_path))  # what the apps' --config.a.b=v overrides read


def test_search_recipe_file_that_is_not_a_recipe_names_the_file(tmp_path):
    model = types.SimpleNamespace(config=types.SimpleNamespace(eval=types.SimpleNamespace()))
    model.config.eval.split = "test"
    path = tmp_path / "recipe.json"
    for text, message in (
        ('{"title": "Soup", ', "not valid JSON at line 1"),
        ("3", "holds a JSON number, expected a JSON object or list"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as e:
            search.run(["recipe", "--workdir", str(tmp_path), "--recipe", str(path)], model=model)
        _is_one_clear_error(e.value, path)


def _saved_gallery(path, **replace):
    g = gallery.Gallery("image", np.eye(2, dtype=np.float32), [{"path": "a"}, {"path": "b"}], 3)
    fields = dict(
        kind=np.str_(g.kind),
        embeddings=g.embeddings,
        items=np.str_(json.dumps(g.items)),
        skipped=np.str_("[]"),
        step=np.int64(3),
    )
    fields.update(replace)
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    return str(path)


def test_search_index_that_is_not_a_gallery_names_the_file(tmp_path):
    good = gallery.Gallery.load(_saved_gallery(tmp_path / "good.npz"))
    assert good.items == [{"path": "a"}, {"path": "b"}] and good.step == 3
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    cases = [
        (str(text), "not a gallery .npz"),
        (_saved_gallery(tmp_path / "old.npz", items=None), "not a gallery .npz"),
        (_saved_gallery(tmp_path / "cut.npz", items=np.str_('[{"path": "a"')), "not valid JSON"),
        (_saved_gallery(tmp_path / "odd.npz", items=np.str_('{"a": 1}')), "not a JSON list"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            gallery.Gallery.load(path)
        assert path in str(e.value)


# --- decompression bombs ---------------------------------------------------------------------


def _png_header(path, width, height):
    """A few-byte PNG claiming `width` x `height` grey pixels (only its first row is there):
    decoding it would allocate width * height bytes before finding the data short."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")
    )
    return str(path)


@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_query_photo_bomb_is_refused_before_decoding(tmp_path, monkeypatch, pillow_limit):
    if pillow_limit == "disabled":  # as some libraries and notebooks set it, process-wide
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    saved = Image.MAX_IMAGE_PIXELS
    bomb = _png_header(tmp_path / "bomb.png", 15_000, 15_000)  # 225 MP > photos.MAX_PIXELS
    assert os.path.getsize(bomb) < 1000
    with pytest.raises(ValueError, match=r"bomb\.png.*image too large: 15000x15000") as e:
        read_photo(bomb, 32)
    assert not isinstance(e.value, Image.DecompressionBombError)
    with pytest.raises(ValueError, match="image too large"):  # predict's route: the bytes
        read_photo(pathlib.Path(bomb).read_bytes(), 32)
    assert saved == Image.MAX_IMAGE_PIXELS  # Pillow's own limit is left as it was


def test_photo_folder_gallery_counts_a_bomb_as_a_skip(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "soup.jpg")
    _png_header(folder / "bomb.png", 30_000, 30_000)
    model = types.SimpleNamespace(
        image_size=16, step=1, embed_images=lambda x: np.ones((len(x), 4), np.float32) / 2
    )
    g = gallery.photo_gallery(model, str(folder))
    assert [it["title"] for it in g.items] == ["soup.jpg"]
    assert len(g.skipped) == 1 and g.skipped[0]["path"].endswith("bomb.png")
    assert "image too large: 30000x30000" in g.skipped[0]["reason"]


def test_open_photo_checks_the_header_only(tmp_path):
    bomb = _png_header(tmp_path / "b.png", 20_000, 20_000)
    with pytest.raises(photos.PhotoError, match="20000x20000 pixels > max_pixels=1000"):
        photos.open_photo(bomb, max_pixels=1000)
    small = io.BytesIO()
    Image.new("L", (30, 20)).save(small, "PNG")
    with photos.open_photo(small.getvalue(), max_pixels=600) as img:
        assert img.size == (30, 20)
