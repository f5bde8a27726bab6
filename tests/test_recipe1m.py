import json
import pickle

import pytest

from xmodal.data.raw import recipe1m


def _entry(rid, partition="train", ingredients=("1 cup rice",), instructions=("Boil.",), title="T"):
    return dict(
        id=rid,
        url="u",
        partition=partition,
        title=title,
        ingredients=[{"text": t} for t in ingredients],
        instructions=[{"text": t} for t in instructions],
    )


def _write(tmp_path, layer1, layer2, det=None, classes=None):
    (tmp_path / "layer1.json").write_text(json.dumps(layer1))
    (tmp_path / "layer2.json").write_text(json.dumps(layer2))
    if det is not None:
        (tmp_path / "det_ingrs.json").write_text(json.dumps(det))
    if classes is not None:
        with open(tmp_path / "classes1M.pkl", "wb") as f:
            pickle.dump(classes[0], f)
            pickle.dump(classes[1], f)


def test_reader_joins_and_reports_skips(tmp_path):
    layer1 = [
        _entry("a1", title="Caf\u00e9\u0007  Soup\n", ingredients=["2\u00a0cups\tbroth", "  "]),
        _entry("b2", partition="val"),
        _entry("a1", partition="test"),  # duplicated id
        _entry("c3", instructions=()),  # no instructions
        _entry("d4", ingredients=()),  # no ingredients
    ]
    layer2 = [
        {"id": "a1", "images": [{"id": "abcdef.jpg", "url": "x"}, {"id": "123456.jpg"}]},
        {"id": "zz", "images": [{"id": "ffffff.jpg"}]},  # unknown recipe
    ]
    det = [
        {
            "id": "a1",
            "ingredients": [{"text": "broth"}, {"text": "2 cups"}],
            "valid": [True, False],
        },
        {"id": "b2", "ingredients": [{"text": "rice"}], "valid": [True]},
    ]
    _write(tmp_path, layer1, layer2, det, ({"a1": 3, "b2": 0}, {0: "background", 3: "soup"}))
    ds = recipe1m.read_recipe1m(str(tmp_path))

    by_id = {r.id: r for r in ds.recipes}
    assert sorted(by_id) == ["a1", "b2"]
    a1 = by_id["a1"]
    assert a1.partition == "train"  # the first of the duplicates is kept
    assert a1.title == "Café Soup"  # control char removed, whitespace collapsed
    assert a1.ingredients == ["2 cups broth"]  # NFKC: no-break space -> space; empty line dropped
    assert a1.clean_ingredients == ["broth"]  # valid=False dropped
    assert a1.class_id == 3 and by_id["b2"].class_id == 0
    assert ds.class_names[3] == "soup"
    assert a1.image_ids == ["abcdef.jpg", "123456.jpg"]
    assert a1.image_paths[0] == str(tmp_path / "train" / "a" / "b" / "c" / "d" / "abcdef.jpg")
    assert by_id["b2"].image_ids == []

    reasons = dict(ds.skipped)
    assert "duplicated" in reasons["a1"]
    assert "no instructions" in reasons["c3"]
    assert "no ingredients" in reasons["d4"]
    assert "unknown" in reasons["zz"]
    assert len(ds.skipped) == 4


def test_malformed_json_names_file_and_position(tmp_path):
    _write(tmp_path, [_entry("a1")], [])
    (tmp_path / "layer2.json").write_text('[{"id": "a1",\n  "images": [}]')
    with pytest.raises(ValueError, match=r"layer2\.json: line 2, column"):
        recipe1m.read_recipe1m(str(tmp_path))


def test_missing_layer1_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"layer1\.json"):
        recipe1m.read_recipe1m(str(tmp_path))


def test_normalize_text():
    assert recipe1m.normalize_text("\ufb01ne\u200b  \r\n dish\x00") == "fine dish"
    assert recipe1m.normalize_text(None) == ""
