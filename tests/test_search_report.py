"""Search, qualitative queries, embeddings export, checkpoint selection and the HTML report on
the session's trained tiny checkpoint (and on real-looking photo files)."""

import base64
import html.parser
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import tiny_config
from data_fixtures import save_camera_jpeg
from PIL import Image

from xmodal import evaluate
from xmodal.apps import gallery, qualitative, report, search
from xmodal.apps.retrieval import RetrievalModel
from xmodal.data import pipeline
from xmodal.run import CONFIG_FILE
from xmodal.runtime import checkpointing


@pytest.fixture(scope="module")
def model(trained):
    config, workdir, _ = trained
    return RetrievalModel.from_workdir(workdir, config)


@pytest.fixture(scope="module")
def galleries(model):
    return gallery.split_galleries(model, "test")


def test_exact_search_matches_numpy_and_approx_recall():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3000, 32)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:20] + 0.1 * rng.normal(size=(20, 32)).astype(np.float32)
    scores, idx = gallery.ExactSearch(g).search(q, 10)
    want = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ g.T, want, 1), rtol=1e-5)
    _, approx = gallery.ApproxIndex(g).search(q, 10, ef_search=128)
    assert gallery.recall_at_k(approx, idx) >= 0.9


def test_split_gallery_search_finds_true_pairs_like_the_protocol(model, galleries):
    image, recipe = galleries
    assert len(image.items) == len(recipe.items) > 0
    ranks = evaluate.retrieval_ranks(image.embeddings, recipe.embeddings)
    hits = gallery.top_k(recipe, image.embeddings, k=5)
    found = np.array([any(h["row"] == i for h in row) for i, row in enumerate(hits)])
    np.testing.assert_array_equal(found, ranks <= 5)
    assert {"id", "title", "ingredients"} <= set(hits[0][0])


def _photo(path, size, rotate_exif=False, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90)], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if rotate_exif:
        exif[0x0112] = 6  # camera held sideways: rotate 90 degrees on display
    img.save(path, "JPEG", quality=90, exif=exif.tobytes())


def test_photo_folder_gallery_and_queries(model, galleries, tmp_path):
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    _photo(folder / "wide.jpg", (1200, 1800), seed=1)
    _photo(folder / "portrait.JPG", (2000, 1500), rotate_exif=True, seed=2)
    _photo(folder / "small.jpeg", (240, 320), seed=3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    g = gallery.photo_gallery(model, str(tmp_path / "photos"))
    assert len(g.items) == 3 and len(g.skipped) == 1 and "broken.jpg" in g.skipped[0]["path"]
    path = g.save(str(tmp_path / "photos.npz"))
    again = gallery.Gallery.load(path)
    np.testing.assert_array_equal(again.embeddings, g.embeddings)
    # Same photo file twice (once loaded through the gallery) -> same embedding.
    row = [it["title"] for it in g.items].index("small.jpeg")
    np.testing.assert_allclose(
        model.embed_photos([str(folder / "small.jpeg")])[0], g.embeddings[row], atol=1e-5
    )
    _, recipe = galleries
    hits = gallery.top_k(recipe, model.embed_photos([str(folder / "portrait.JPG")]), k=3)[0]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[2]["score"]


def test_search_cli_and_qualitative_queries(trained, galleries, tmp_path, capsys):
    _, workdir, _ = trained
    _, recipe = galleries
    base = str(tmp_path / "test")
    search.run(["index", f"--workdir={workdir}", "--split=test", f"--out={base}"])
    photo = tmp_path / "q.jpg"
    _photo(photo, (600, 800))
    res = search.run(["image", f"--workdir={workdir}", f"--index={base}-recipe.npz", str(photo)])
    assert len(res) == 5 and all("title" in r for r in res)
    rec = recipe.items[0]
    res = search.run(
        [
            "recipe",
            f"--workdir={workdir}",
            f"--index={base}-image.npz",
            f"--title={rec['title']}",
            "--ingredients=" + ";".join(rec["ingredients"]),
            "--approx",
            "-k",
            "3",
        ]
    )
    assert len(res) == 3
    word = rec["clean_ingredients"][0]
    out = search.run(["ingredient", f"--workdir={workdir}", f"--index={base}-image.npz", word])
    assert len(out) == 1 and len(out[0]) == 5
    with_, without = search.run(
        [
            "remove",
            f"--workdir={workdir}",
            "--split=test",
            f"--recipe_id={rec['id']}",
            f"--word={word}",
        ]
    )
    assert len(with_) == len(without) == 5
    arith = search.run(
        [
            "arithmetic",
            f"--workdir={workdir}",
            "--split=test",
            f"--plus=recipe:{rec['id']}",
            f"--minus=ingredient:{word}",
            "--plus=title:salad",
            "--target=recipe",
        ]
    )
    assert len(arith) == 5
    assert "== photo" in capsys.readouterr().out
    modified = qualitative.without_ingredient(rec, word)
    assert all(word not in x.lower().split() for x in modified["ingredients"])
    with pytest.raises(ValueError, match="names"):
        qualitative.without_ingredient(rec, "unobtainium")


def test_eval_named_step_embed_and_clear_errors(trained, tmp_path):
    config, trained_dir, _ = trained
    workdir = tmp_path / "copy"  # a copy: the session's eval_test.json stays as training wrote it
    shutil.copytree(trained_dir, workdir)
    workdir = str(workdir)
    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    first = min(manager.all_steps())
    manager.close()
    res = evaluate.evaluate_checkpoint(config, workdir, which=first)
    assert res["step"] == first and "full" in res["image_to_recipe"]
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 999"):
        evaluate.evaluate_checkpoint(config, workdir, which=999)
    path = evaluate.embed_checkpoint(config, workdir, which="latest")
    with np.load(path) as f:
        ids = [m["id"] for m in pipeline.split_metadata(config.data.dir, "test")]
        assert list(f["ids"]) == ids and f["image"].shape == f["recipe"].shape
        np.testing.assert_allclose(np.linalg.norm(f["image"], axis=1), 1, rtol=1e-5)
    # A checkpoint of another model in a workdir without config.json: a clear error.
    os.remove(os.path.join(workdir, CONFIG_FILE))
    other = tiny_config(config.data.dir, **{"model.embed_dim": 32})
    pattern = (
        r"(?s)does not fit this model.*"
        r"image_proj\.kernel: checkpoint has \(64, 64\), this model has \(64, 32\)"
    )
    with pytest.raises(ValueError, match=pattern):
        evaluate.evaluate_checkpoint(other, workdir)


class _Sections(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.img_src = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.img_src.append(a.get("src", ""))


def test_report_is_self_contained_html_with_every_section(trained, model):
    _, workdir, _ = trained
    path = report.write_report(model, workdir, "test", num_queries=3, map_points=60)
    with open(path) as f:
        text = f.read()
    parser = _Sections()
    parser.feed(text)
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert {"metrics", "recall-curve", "tsne-map", "gallery-section", "map-section"} <= parser.ids
    assert parser.img_src and all(s.startswith("data:image/jpeg;base64,") for s in parser.img_src)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert text.count("class='img'") == 60 and text.count("class='rec'") == 60
    hits = text.count("class='card hit'")  # which cards: test_query_gallery_marks_the_true_matches
    assert hits <= 2 * 3 and text.count(" ✓</span>") == hits  # at most one per query and direction

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the render check needs a headless browser")
    png = os.path.join(workdir, "report.png")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={workdir}/chrome",
            f"--screenshot={png}",
            "--window-size=1200,2400",
            f"file://{path}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape[:2] == (2400, 1200) and shot.std() > 10  # rendered, not a blank page


def test_query_gallery_marks_the_true_matches_and_nothing_else():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 8))
    image /= np.linalg.norm(image, axis=1, keepdims=True)  # unit rows, as embeddings are
    items = [{"title": f"recipe {i}"} for i in range(12)]
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buf, format="JPEG")
    photos = {i: buf.getvalue() for i in range(12)}
    queries = [0, 3, 5]
    # Recipes equal to their photos: every true match ranks first, in both directions.
    same = report.query_gallery(image, image.copy(), items, photos, queries, k=5)
    assert same.count("class='card hit'") == 6 and same.count("#1 ✓</span>") == 6
    # Recipes opposite to their photos: every true match ranks last of 12, outside the top 5.
    opposite = report.query_gallery(image, -image, items, photos, queries, k=5)
    assert "class='card hit'" not in opposite and " ✓</span>" not in opposite
    # 3 queries x 2 directions x top 5 result cards, plus the 3 recipe query cards
    cards = 2 * 3 * 5 + 3
    assert opposite.count("class='card'") == cards
    assert same.count("class='card'") + same.count("class='card hit'") == cards


def test_tsne_map_one_pair_and_colours_by_class_or_modality():
    rng = np.random.default_rng(0)
    image, recipe = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    # One pair (e.g. `--limit=1`): sklearn refuses perplexity >= the number of points.
    svg = report.tsne_map_svg(image[:1], recipe[:1], [3])
    assert svg.count("class='img'") == svg.count("class='rec'") == 1
    labelled = report.tsne_map_svg(image, recipe, [1, 1, 2, 2, 0, 0])
    assert labelled.count(f"fill='{report.PALETTE[1]}'") == 4  # a photo and a recipe per pair
    assert labelled.count("fill='#aaaaaa'") == 4  # class 0: unlabelled
    # No pair labelled (a dataset without classes1M.pkl): photos and recipes get their own colour.
    unlabelled = report.tsne_map_svg(image, recipe, [0] * 6)
    for kind, tag in (("photo", "circle class='img'"), ("recipe", "rect class='rec'")):
        colour = report.MODALITY_COLOURS[kind]
        assert len(re.findall(f"<{tag}[^>]*fill='{colour}'", unlabelled)) == 6


def test_thumbnail_is_the_upright_centre_square(tmp_path):
    tall = np.zeros((500, 200, 3), np.uint8)  # upright: red top half, blue bottom half
    tall[:250, :, 0] = tall[250:, :, 2] = 255
    buf = io.BytesIO()
    save_camera_jpeg(Image.fromarray(tall), buf, orientation=6, quality=95)  # stored turned left
    uri = report.thumbnail(buf.getvalue())
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))), float)
    assert thumb.shape == (report.THUMB, report.THUMB, 3)
    top, bottom = thumb[:50].mean((0, 1)), thumb[-50:].mean((0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
