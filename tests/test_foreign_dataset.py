"""The whole flow on a raw Recipe1M-layout dataset of real photographs written by someone else
(not our generator): prepare on the command line, train and evaluate through `python -m
xmodal.main`, then search, the qualitative queries and the HTML report on that checkpoint.

The photographs are real ones that ship inside pip packages (scikit-image's `skimage/data`,
scikit-learn's sample images; both load from local files, nothing is downloaded). Each "dish" is
tied to one source photograph whose look it evokes; each recipe's photos are different random
crops and scales of it, saved as JPEG the way a web crawl has them: several hundred pixels, one
~2000 px, odd aspect ratios, grayscale, one with an EXIF orientation tag, one recipe without any.
"""

import base64
import collections
import html.parser
import io
import json
import os
import subprocess
import sys

import numpy as np
import skimage.data
from data_fixtures import save_camera_jpeg
from PIL import Image
from sklearn.datasets import load_sample_image

from xmodal.apps import gallery, qualitative, report, search
from xmodal.apps.retrieval import RetrievalModel
from xmodal.data import pipeline
from xmodal.data.pipeline import read_photo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {  # real photographs, loaded from files inside the installed packages
    "coffee": skimage.data.coffee,  # a cup of espresso on a saucer
    "rocket": skimage.data.rocket,
    "hubble": skimage.data.hubble_deep_field,
    "retina": skimage.data.retina,
    "grass": skimage.data.grass,  # grayscale
    "dahlia": lambda: load_sample_image("flower.jpg"),
}
# (source, title variants, ingredient lines with their clean name, instructions)
DISHES = [
    (
        "coffee",
        ["Double Espresso", "Espresso with Raw Sugar", "Morning Espresso"],
        [
            ("18 g finely ground espresso beans", "espresso beans"),
            ("60 ml filtered water", "water"),
            ("1 tsp raw sugar", "sugar"),
        ],
        [
            "Heat the machine and warm the cup.",
            "Tamp the espresso beans evenly and pull the shot for 28 seconds.",
            "Stir in the sugar and serve at once.",
        ],
    ),
    (
        "rocket",
        ["Rocket Salad with Parmesan", "Peppery Rocket Salad", "Rocket and Parmesan Salad"],
        [
            ("100 g rocket leaves", "rocket"),
            ("40 g shaved parmesan", "parmesan"),
            ("1 tbsp lemon juice", "lemon juice"),
            ("3 tbsp olive oil", "olive oil"),
            ("1 pinch sea salt", "salt"),
        ],
        [
            "Whisk the lemon juice with the olive oil and salt.",
            "Toss the rocket leaves in the dressing.",
            "Top with shaved parmesan.",
        ],
    ),
    (
        "hubble",
        ["Black Sesame Ice Cream", "Black Sesame Gelato", "Toasted Sesame Ice Cream"],
        [
            ("80 g black sesame seeds", "black sesame"),
            ("300 ml double cream", "cream"),
            ("200 ml whole milk", "milk"),
            ("4 egg yolks", "egg yolks"),
            ("90 g sugar", "sugar"),
        ],
        [
            "Toast the black sesame seeds and grind them to a paste.",
            "Warm the cream and milk, whisk into the egg yolks and sugar.",
            "Cook the custard until it coats a spoon, add the sesame paste.",
            "Chill overnight and churn.",
        ],
    ),
    (
        "retina",
        ["Blood Orange Carpaccio", "Blood Orange Salad with Mint", "Sliced Blood Oranges"],
        [
            ("4 blood oranges", "blood oranges"),
            ("2 tbsp olive oil", "olive oil"),
            ("8 fresh mint leaves", "mint"),
            ("1 pinch flaky sea salt", "salt"),
        ],
        [
            "Peel the blood oranges and slice them into thin rounds.",
            "Lay the slices on a plate, drizzle with olive oil.",
            "Scatter torn mint and salt over the top.",
        ],
    ),
    (
        "grass",
        ["Green Herb Salad", "Chive and Parsley Salad", "Garden Herb Salad"],
        [
            ("1 bunch chives", "chives"),
            ("1 bunch flat leaf parsley", "parsley"),
            ("1 handful dill", "dill"),
            ("1 tbsp lemon juice", "lemon juice"),
            ("2 tbsp olive oil", "olive oil"),
        ],
        [
            "Pick the parsley and dill leaves and snip the chives.",
            "Dress the herbs with lemon juice and olive oil just before serving.",
        ],
    ),
    (
        "dahlia",
        ["Stuffed Squash Blossoms", "Fried Squash Blossoms with Ricotta", "Crispy Squash Flowers"],
        [
            ("12 squash blossoms", "squash blossoms"),
            ("250 g ricotta", "ricotta"),
            ("30 g grated parmesan", "parmesan"),
            ("100 g flour", "flour"),
            ("150 ml sparkling water", "water"),
        ],
        [
            "Fill the squash blossoms with ricotta and parmesan and twist the petals shut.",
            "Whisk the flour with the sparkling water into a thin batter.",
            "Dip the blossoms in the batter and fry until golden.",
        ],
    ),
]
N_RECIPES = 50
NO_PHOTO = 0  # recipe 0 (train) lists no photo: its text goes to train_text
LARGE, WIDE, TALL, EXIF_ROTATED = 4, 7, 10, 3  # recipes whose first photo is special


def _partition(i):
    return ["train", "train", "val", "test"][i % 4]


def _dish(i):  # every dish in every partition (twice in val and test)
    return DISHES[(i + i // 4) % len(DISHES)]


def _crop(rng, source, *, long_side, aspect=None):
    """A random crop of `source` (independent side fractions, or a given width/height aspect)
    scaled so its long side is `long_side` pixels."""
    h, w = source.shape[:2]
    if aspect is None:
        ch, cw = int(h * rng.uniform(0.45, 0.95)), int(w * rng.uniform(0.45, 0.95))
    else:
        cw = min(w, int(h * aspect))
        ch = min(h, int(cw / aspect))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(source[y : y + ch, x : x + cw])
    scale = long_side / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _write_raw_layout(root):
    """The raw layout: layer1/layer2/det_ingrs.json, photos under {partition}/a/b/c/d/, no
    classes1M.pkl, ids of another shape than ours. Returns what was written, for the checks."""
    rng = np.random.default_rng(0)
    sources = {name: load() for name, load in SOURCES.items()}
    layer1, layer2, det, made = [], [], [], collections.Counter()
    written = {"photos": 0, "grayscale": 0, "sizes": [], "exif_upright_size": None}
    for i in range(N_RECIPES):
        source, titles, ingredients, instructions = _dish(i)
        rid = f"r-{i:03d}-{source}"
        partition = _partition(i)
        j = made[source]  # this dish's j-th recipe: its own title and amounts (no two alike)
        made[source] += 1
        amount = ["", "2 x ", "half of ", "3 x "][(j // 3) % 4]
        layer1.append(
            {
                "id": rid,
                "url": f"http://example.org/{rid}",
                "partition": partition,
                "title": titles[j % len(titles)],
                "ingredients": [{"text": amount + line} for line, _ in ingredients],
                "instructions": [{"text": x} for x in instructions],
            }
        )
        det.append(
            {
                "id": rid,
                "ingredients": [{"text": clean} for _, clean in ingredients],
                "valid": [True] * len(ingredients),
            }
        )
        images = []
        for k in range(0 if i == NO_PHOTO else 1 + i % 3):
            image_id = f"{rng.integers(16**12):012x}.jpg"
            folder = os.path.join(root, partition, *image_id[:4])
            os.makedirs(folder, exist_ok=True)
            long_side, aspect, orientation = int(rng.integers(220, 900)), None, None
            if k == 0 and i == LARGE:
                long_side = 2048
            elif k == 0 and i == WIDE:
                aspect = 3.0
            elif k == 0 and i == TALL:
                aspect = 0.4
            elif k == 0 and i == EXIF_ROTATED:
                aspect, orientation = 1.6, 6
            img = _crop(rng, sources[source], long_side=long_side, aspect=aspect)
            if orientation:
                written["exif_upright_size"] = img.size
            save_camera_jpeg(img, os.path.join(folder, image_id), orientation)
            written["photos"] += 1
            written["grayscale"] += img.mode == "L"
            written["sizes"].append(img.size)
            images.append({"id": image_id, "url": f"http://example.org/{image_id}"})
        layer2.append({"id": rid, "images": images})
    for name, data in (("layer1.json", layer1), ("layer2.json", layer2), ("det_ingrs.json", det)):
        with open(os.path.join(root, name), "w") as f:
            json.dump(data, f)
    return written


def _run(*args):
    out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.img_src = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.img_src.append(a.get("src", ""))


def _check_hits(hits, k, gallery, want_scores):
    """Ranks 1..k, scores best first and equal to brute force over `gallery`, rows unique."""
    assert [h["rank"] for h in hits] == list(range(1, k + 1))
    scores = np.array([h["score"] for h in hits])
    assert np.all(np.diff(scores) <= 1e-6)
    np.testing.assert_allclose(scores, np.sort(want_scores)[::-1][:k], atol=1e-4)
    rows = [h["row"] for h in hits]
    assert len(set(rows)) == k
    np.testing.assert_allclose(want_scores[rows], scores, atol=1e-4)
    for h in hits:
        assert h["id"] == gallery.items[h["row"]]["id"]


def test_prepare_train_eval_search_and_report_on_real_photos(tmp_path):
    raw, data, workdir = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    raw.mkdir()
    written = _write_raw_layout(str(raw))
    assert written["grayscale"] > 0 and max(max(s) for s in written["sizes"]) >= 2000
    _run("xmodal.data.prepare", f"--raw_dir={raw}", f"--out_dir={data}")
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["splits"]["train"]["recipes"] == 25 and info["splits"]["train_text"]["recipes"] == 1
    assert info["splits"]["val"]["recipes"] == info["splits"]["test"]["recipes"] == 12
    assert sum(info["splits"][s]["images"] for s in ("train", "val", "test")) == written["photos"]
    assert info["skipped"] == [] and info["num_classes"] == 0
    assert info["repaired"] == {
        "L converted to RGB": written["grayscale"],
        "rotated upright by EXIF orientation": 1,
    }
    test_items = pipeline.split_metadata(
        str(data),
        "test",
        fields=("id", "title", "ingredients", "instructions", "clean_ingredients", "images"),
    )
    test_ids = [it["id"] for it in test_items]
    # The EXIF-tagged photo is stored upright: as wide as the crop was before it was turned.
    (exif_item,) = [it for it in test_items if it["id"].startswith(f"r-{EXIF_ROTATED:03d}-")]
    stored = Image.open(io.BytesIO(exif_item["images"][0]))
    w, h = written["exif_upright_size"]
    assert stored.format == "JPEG" and stored.width > stored.height and w > h
    assert min(stored.size) == info["image_short_side"]  # downscaled (w, h > 256)
    # A grayscale JPEG is stored as RGB with equal channels.
    grass = next(it for it in test_items if it["id"].endswith("-grass"))
    grey = np.asarray(Image.open(io.BytesIO(grass["images"][0])))
    assert grey.shape[-1] == 3 and np.abs(grey.astype(int) - grey[..., :1]).max() <= 3

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

    # ---- search, in this process (one JAX start-up): the test split as a gallery
    wd = str(workdir)
    model = RetrievalModel.from_workdir(wd)

    def search_cli(*argv):  # `python -m xmodal.apps.search ...` on the model restored above
        return search.run([argv[0], f"--workdir={wd}", *argv[1:]], model=model)

    base = str(tmp_path / "index" / "test")
    os.makedirs(os.path.dirname(base))
    image_path, recipe_path = search_cli("index", "--split=test", f"--out={base}")
    images, recipes = gallery.Gallery.load(image_path), gallery.Gallery.load(recipe_path)
    assert images.kind == "image" and recipes.kind == "recipe" and images.step == 4
    assert [it["id"] for it in recipes.items] == [it["id"] for it in images.items] == test_ids
    for g in (images, recipes):
        np.testing.assert_allclose(np.linalg.norm(g.embeddings, axis=1), 1, rtol=1e-5)

    # A photo the model never saw (a fresh crop of a real photo of a cat), as a phone stores it:
    # pixels turned, EXIF orientation 8. read_photo shows it upright, like the upright copy.
    cat = _crop(np.random.default_rng(7), skimage.data.chelsea(), long_side=1400, aspect=1.5)
    photo, upright = tmp_path / "cat.jpg", tmp_path / "cat_upright.jpg"
    save_camera_jpeg(cat, photo, orientation=8)
    save_camera_jpeg(cat, upright)
    assert Image.open(photo).size == cat.size[::-1]
    seen = read_photo(str(photo), model.image_size).astype(float)
    want = read_photo(str(upright), model.image_size).astype(float)
    assert np.abs(seen - want).mean() < 4 < np.abs(np.rot90(seen) - want).mean()
    hits = search_cli("image", f"--index={recipe_path}", str(photo))
    _check_hits(hits, 5, recipes, recipes.embeddings @ model.embed_photos([str(photo)])[0])
    assert all(h["id"] in test_ids and h["title"] and h["ingredients"] for h in hits)

    # Recipe -> photos: a title and ingredient lines typed by the user.
    typed = {"title": "Rocket and Parmesan Salad", "ingredients": ["rocket leaves", "parmesan"]}
    hits = search_cli(
        "recipe",
        f"--index={image_path}",
        f"--title={typed['title']}",
        "--ingredients=rocket leaves;parmesan",
        "-k",
        "3",
    )
    _check_hits(hits, 3, images, images.embeddings @ model.embed_recipes([typed])[0])

    # AdaMine Sec. 5.3: ingredient words -> photos (over the split gallery, built by search).
    means = qualitative.mean_components(model)
    words = ["parmesan", "espresso"]
    per_word = search_cli("ingredient", "--split=test", *words)
    for hits, q in zip(per_word, qualitative.ingredient_queries(model, words, means), strict=True):
        _check_hits(hits, 5, images, images.embeddings @ q)

    # Remove an ingredient from a rocket salad of the split: its lines and instructions go.
    salad = next(it for it in test_items if it["id"].endswith("-rocket"))
    with_, without = search_cli(
        "remove", "--split=test", f"--recipe_id={salad['id']}", "--word=parmesan"
    )
    (orig, mod), modified = qualitative.remove_ingredient_queries(model, salad, "parmesan")
    assert len(modified["ingredients"]) == len(salad["ingredients"]) - 1
    assert not any("parmesan" in x for x in modified["ingredients"] + modified["instructions"])
    assert float(orig @ mod) < 1 - 1e-6  # the query changed
    _check_hits(with_, 5, images, images.embeddings @ orig)
    _check_hits(without, 5, images, images.embeddings @ mod)

    # Arithmetic: v(rocket salad) - v(parmesan) + v(espresso) -> recipes.
    hits = search_cli(
        "arithmetic",
        "--split=test",
        f"--plus=recipe:{salad['id']}",
        "--minus=ingredient:parmesan",
        "--plus=ingredient:espresso",
        "--target=recipe",
    )
    ingr = qualitative.ingredient_queries(model, ["parmesan", "espresso"], means)
    v = qualitative.arithmetic([model.embed_recipes([salad])[0], ingr[1]], [ingr[0]])
    _check_hits(hits, 5, recipes, recipes.embeddings @ v)

    # ---- the HTML report: every section; its images are thumbnails of the split's real photos
    path = report.write_report(model, wd, "test", num_queries=4, map_points=12)
    with open(path) as f:
        text = f.read()
    parser = _Images()
    parser.feed(text)
    assert {"metrics", "recall-curve", "tsne-map", "gallery-section", "map-section"} <= parser.ids
    assert text.count("class='img'") == 12 and text.count("class='rec'") == 12
    # No classes1M.pkl: the map is coloured by modality and says so.
    assert "colour = modality" in text and "#aaaaaa" not in text
    assert text.count(f"fill='{report.MODALITY_COLOURS['photo']}'") == 12
    thumbs = {report.thumbnail(it["images"][0]) for it in test_items}
    assert len(parser.img_src) == 4 + 4 * 5 and set(parser.img_src) <= thumbs
    for src in set(parser.img_src):
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "JPEG" and img.size == (report.THUMB, report.THUMB)
        assert np.asarray(img).std() > 10  # a photograph, not a flat colour
