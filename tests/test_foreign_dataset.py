"""The whole flow on a raw Recipe1M-layout dataset written by someone else (not our generator):
prepare on the command line, train and evaluate through `python -m xmodal.main`."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISHES = [
    ("Lemon Tart", ["flour", "butter", "lemon juice", "sugar"], (240, 220, 60)),
    ("Beet Soup", ["beets", "stock", "sour cream", "dill"], (150, 20, 60)),
    ("Pea Risotto", ["arborio rice", "peas", "parmesan", "stock"], (120, 190, 70)),
    ("Chocolate Cake", ["flour", "cocoa", "eggs", "sugar"], (70, 40, 20)),
]


def _write_raw_layout(root, n=48):
    """A hand-made raw layout: photos of several sizes, no classes1M.pkl, ids of another shape."""
    rng = np.random.default_rng(0)
    layer1, layer2, det = [], [], []
    for i in range(n):
        title, ingredients, colour = DISHES[i % len(DISHES)]
        rid = f"abc{i:07x}"
        partition = ["train", "train", "val", "test"][i % 4]
        layer1.append(
            {
                "id": rid,
                "url": f"http://example.org/{rid}",
                "partition": partition,
                "title": f"{title} No. {i}",
                "ingredients": [{"text": f"{1 + i % 3} cups {x}"} for x in ingredients],
                "instructions": [{"text": f"Mix the {x} well."} for x in ingredients[:3]],
            }
        )
        det.append(
            {"id": rid, "ingredients": [{"text": x} for x in ingredients], "valid": [True] * 4}
        )
        images = []
        for _k in range(1 + i % 2):
            image_id = f"{rng.integers(16**12):012x}.jpg"
            folder = os.path.join(root, partition, *image_id[:4])
            os.makedirs(folder, exist_ok=True)
            size = (int(rng.integers(60, 200)), int(rng.integers(60, 200)))
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (*size[::-1], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, image_id))
            images.append({"id": image_id, "url": f"http://example.org/{image_id}"})
        layer2.append({"id": rid, "images": images})
    for name, data in (("layer1.json", layer1), ("layer2.json", layer2), ("det_ingrs.json", det)):
        with open(os.path.join(root, name), "w") as f:
            json.dump(data, f)


def _run(*args):
    out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_prepare_train_and_eval_on_a_foreign_raw_dataset(tmp_path):
    raw, data, workdir = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    raw.mkdir()
    _write_raw_layout(str(raw))
    _run("xmodal.data.prepare", f"--raw_dir={raw}", f"--out_dir={data}")
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["splits"]["train"]["recipes"] == 24 and info["splits"]["test"]["recipes"] == 12

    common = [
        "xmodal.main",
        "--config=configs/tnlbt.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.dir={data}",
        "--config.train.batch_size=8",
        "--config.eval.batch_size=8",
        "--config.eval.bag_sizes=(10,)",
        "--config.eval.num_bags=(2,)",
    ]
    _run(*common, "--config.train.num_steps=4", "--config.train.eval_at_end=False")
    printed = _run(*common, "--mode=eval")
    results = json.loads((workdir / "eval_test.json").read_text())
    assert results["n_pairs"] == 12 and results["step"] == 4
    assert set(results["image_to_recipe"]) == {"10", "full"}
    assert "image_to_recipe" in printed and "medR" in printed
