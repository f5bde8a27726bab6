import json
import os
import pickle
import re

import numpy as np
from data_fixtures import SMALL, image_file
from PIL import Image

from xmodal.data.builtin import dataset as synthetic

HEX_IMAGE = re.compile(r"^[0-9a-f]{10}\.jpg$")


def _load(raw):
    with open(os.path.join(raw, "layer1.json")) as f:
        layer1 = json.load(f)
    with open(os.path.join(raw, "layer2.json")) as f:
        layer2 = json.load(f)
    with open(os.path.join(raw, "det_ingrs.json")) as f:
        det = json.load(f)
    with open(os.path.join(raw, "classes1M.pkl"), "rb") as f:
        id2class, names = pickle.load(f), pickle.load(f)
    return layer1, layer2, det, id2class, names


def test_layout_and_schema(synthetic_raw):
    layer1, layer2, det, id2class, names = _load(synthetic_raw)
    assert len(layer1) == SMALL["num_recipes"]
    ids = [r["id"] for r in layer1]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{10}", i) for i in ids)
    parts = [r["partition"] for r in layer1]
    assert set(parts) == {"train", "val", "test"}
    assert 0.55 < parts.count("train") / len(parts) < 0.85
    for r in layer1:
        assert set(r) == {"id", "url", "partition", "title", "ingredients", "instructions"}
        assert 3 <= len(r["ingredients"]) <= 10 and 3 <= len(r["instructions"]) <= 10
        assert all(isinstance(t["text"], str) and t["text"] for t in r["ingredients"])
    # det_ingrs is parallel to layer1, one clean name per ingredient line, a few invalid
    assert [d["id"] for d in det] == ids
    assert all(len(d["ingredients"]) == len(d["valid"]) for d in det)
    valid = [v for d in det for v in d["valid"]]
    assert 0 < valid.count(False) < 0.2 * len(valid)
    # photos: 1-3 per recipe that has any, ~15% without, files at the Recipe1M path
    part_of = dict(zip(ids, parts, strict=True))
    assert {e["id"] for e in layer2} < set(ids)
    assert 0.05 < 1 - len(layer2) / len(ids) < 0.3
    counts = [len(e["images"]) for e in layer2]
    assert min(counts) >= 1 and max(counts) == 3
    for e in layer2:
        for im in e["images"]:
            assert HEX_IMAGE.match(im["id"])
            path = image_file(synthetic_raw, part_of[e["id"]], im["id"])
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.size == (SMALL["image_size"],) * 2
    # classes: background and labelled recipes, ~30 named classes
    labels = [id2class[i] for i in ids]
    assert 0.3 < labels.count(0) / len(labels) < 0.7
    assert names[0] == "background" and 25 <= len(names) - 1 <= 40
    assert all(0 <= c < len(names) for c in labels)


def test_text_reads_like_a_recipe(synthetic_raw):
    layer1, *_ = _load(synthetic_raw)
    lines = [t["text"] for r in layer1 for t in r["ingredients"]]
    assert any(
        re.match(r"^\d[\d /]* (cups?|pounds?) (diced|sliced|minced) ", line) for line in lines
    )
    steps = " ".join(t["text"] for r in layer1 for t in r["instructions"])
    assert "degrees F" in steps and "minutes" in steps


def test_deterministic_by_seed_and_worker_count(synthetic_raw, tmp_path):
    same = tmp_path / "same"
    synthetic.write_raw_dataset(str(same), **SMALL, num_workers=1)
    assert synthetic._fingerprint(str(same)) == synthetic._fingerprint(synthetic_raw)
    other = tmp_path / "other"
    synthetic.write_raw_dataset(str(other), **{**SMALL, "num_recipes": 40, "seed": 1})
    first = tmp_path / "first"
    synthetic.write_raw_dataset(str(first), **{**SMALL, "num_recipes": 40})
    assert (other / "layer1.json").read_bytes() != (first / "layer1.json").read_bytes()


def _histogram(path):
    """Colour histogram of the central half: a crude feature that ignores most of the table."""
    a = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = a.shape
    q = a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].astype(int) // 64
    v = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64)
    return np.sqrt(v / v.sum())


def test_photos_follow_their_recipe(synthetic_raw):
    """Two photos of one recipe (different nuisance) must be nearer than photos of other recipes:
    nearest neighbour on colour histograms finds the other photo far above chance."""
    layer1, layer2, *_ = _load(synthetic_raw)
    part_of = {r["id"]: r["partition"] for r in layer1}
    multi = [e for e in layer2 if len(e["images"]) >= 2]
    assert len(multi) >= 40
    q = np.stack(
        [
            _histogram(image_file(synthetic_raw, part_of[e["id"]], e["images"][0]["id"]))
            for e in multi
        ]
    )
    g = np.stack(
        [
            _histogram(image_file(synthetic_raw, part_of[e["id"]], e["images"][1]["id"]))
            for e in multi
        ]
    )
    sim = q @ g.T
    ranks = (sim > np.diag(sim)[:, None]).sum(1) + 1
    n = len(multi)
    assert np.median(ranks) < n / 6, (np.median(ranks), n)  # chance: ~n/2
    assert (ranks == 1).mean() > 5 / n
