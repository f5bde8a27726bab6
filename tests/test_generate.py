"""Recipe -> dish image with a trained run's generator (xmodal.generation, apps.generate):
reproducible for a seed and independent of batching, the files and grid the command writes,
the generation scores, the class probe, and the refusal for a run without a generator."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto.event_pb2 import Event
from test_long_run import _tfrecords

from xmodal import fid as fid_lib
from xmodal.apps import generate as generate_app
from xmodal.apps import report, search
from xmodal.apps.retrieval import RetrievalModel
from xmodal.generation import (
    DishGenerator,
    classify,
    real_photos,
    ridge_classifier,
)
from xmodal.runtime.results import generated_file
from xmodal.training.loop import SAMPLES_TAG

# One worker builds the session's ACME runs (conftest.acme_runs) and this module's fixtures
# for every test that reads them: split over two workers, each built them (100 s of CPU).
pytestmark = pytest.mark.xdist_group("acme")


@pytest.fixture(scope="module")
def generator(acme_runs):
    return DishGenerator.from_workdir(acme_runs["straight"])


def test_an_image_depends_on_its_recipe_and_the_seed_not_on_the_batch(generator):
    _, recipe = generator.embed_split("test", limit=6)
    images, embedded = generator.generate(recipe, seed=3)
    assert images.dtype == np.uint8 and images.shape == (6, 64, 64, 3)
    assert embedded.shape == recipe.shape
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    alone, _ = generator.generate(recipe[2:4], seed=3)
    assert not np.array_equal(alone, images[:2])  # row i draws the seed's row i
    first_two, _ = generator.generate(recipe[:2], seed=3)
    np.testing.assert_array_equal(first_two, images[:2])
    other_seed, _ = generator.generate(recipe[:2], seed=4)
    assert not np.array_equal(other_seed, first_two)
    assert images.std() > 1.0  # not a blank picture


def test_the_command_writes_one_png_per_recipe_a_grid_and_the_list(acme_runs, tmp_path):
    out = tmp_path / "split"
    written = generate_app.main(
        ["--workdir", acme_runs["straight"], "--split=test", "--limit=3", "--out", str(out)]
    )
    listed = json.loads((out / "generated.json").read_text())
    assert listed == json.loads(json.dumps(written))
    assert [sorted(i) for i in listed["images"]] == [["file", "id", "title"]] * 3
    for item in listed["images"]:
        assert Image.open(out / item["file"]).size == (64, 64)
    # 3 recipes in one block of 8 columns: real photos above generated ones, 2 px gaps.
    assert Image.open(out / "grid.png").size == (8 * 66 + 2, 2 * 66 + 2)
    again = tmp_path / "again"
    generate_app.main(
        ["--workdir", acme_runs["straight"], "--split=test", "--limit=3", "--out", str(again)]
    )
    for item in listed["images"]:
        assert (out / item["file"]).read_bytes() == (again / item["file"]).read_bytes()

    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps([{"title": "tomato soup", "ingredients": ["2 tomatoes"]}, {"title": "rice"}])
    )
    own = tmp_path / "own"
    generate_app.main(["--workdir", acme_runs["straight"], f"--recipe={recipe}", "--out", str(own)])
    assert sorted(os.listdir(own)) == ["generated.json", "grid.png", "recipe_0.png", "recipe_1.png"]


def test_score_ranks_generated_images_probes_their_class_and_measures_the_fid(
    acme_runs, tmp_path, monkeypatch
):
    # The probe reads with an encoder the generator never faced: the retrieval run's.
    args = ["--workdir", acme_runs["straight"], "--split=test", "--score"]
    results = generate_app.main([*args, "--probe_from", acme_runs["retrieval"]])
    scored = results["score"]
    with open(os.path.join(acme_runs["straight"], generated_file("test"))) as f:
        stored = json.load(f)
    assert stored == json.loads(json.dumps(scored))
    assert scored["n_pairs"] > 50 and scored["image_size"] == 64
    for direction in ("generated_image_to_recipe", "recipe_to_generated_image"):
        assert set(scored[direction]["50"]) == {"medR", "R@1", "R@5", "R@10"}
    probe = scored["class_probe"]
    assert probe["probe"].startswith("ridge classifier") and probe["scored"] > 0
    assert probe["probe"].endswith(f"({acme_runs['retrieval']})")
    assert 0.0 <= probe["generated_accuracy"] <= 1.0 and 0.0 <= probe["real_accuracy"] <= 1.0
    # the classes among the labelled train photos: the tiny data's 600 recipes hold 29 of the
    # built-in data's 30
    assert 1 / 30 <= probe["chance"] <= 1 / 25
    # without Inception weights: the FID on the frozen encoder's embeddings, named so
    fid = scored["fid"]
    assert fid["samples"] == scored["n_pairs"] and np.isfinite(fid["value"]) and fid["value"] > 0
    assert 0 < fid["real_train_photos"] < fid["value"]  # real photos are nearer real photos
    assert acme_runs["retrieval"] in fid["features"] and "not Inception-v3" in fid["features"]

    # with a weights file: Inception features of the real photos (brought to the generator's
    # size) and of the generated images, in the order given (the network itself: test_fid.py)
    seen = []

    def mean_colour_features(path):
        assert path == "fid.pth"
        return lambda images: seen.append(images.shape) or images.mean(axis=(1, 2))

    monkeypatch.setattr(fid_lib, "inception_features", mean_colour_features)
    again = generate_app.main([*args, "--fid_inception=fid.pth"])["score"]["fid"]
    n = scored["n_pairs"]
    assert seen == [(n, 64, 64, 3)] * 3  # the split's photos, as many train photos, generated
    assert again["features"].startswith("Inception-v3") and "fid.pth" in again["features"]
    assert again["value"] > 0 and again["value"] != fid["value"]


def test_the_ridge_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 3.0
    labels = rng.integers(1, 4, size=200)
    features = centres[labels] + 0.3 * rng.standard_normal((200, 8))
    probe = ridge_classifier(features, labels, 4)
    test = rng.integers(1, 4, size=50)
    assert np.array_equal(classify(centres[test] + 0.3 * rng.standard_normal((50, 8)), probe), test)


def test_a_run_without_a_generator_is_refused_clearly(acme_runs):
    with pytest.raises(ValueError, match="trained without adversarial networks"):
        DishGenerator.from_workdir(acme_runs["retrieval"])


def test_each_validation_shows_real_photos_above_generated_images_in_tensorboard(acme_runs):
    """The tiny runs validate at their last step: a picture of 16 validation photos above their
    recipes' generated images, 8 per row."""
    folder = os.path.join(acme_runs["straight"], "tensorboard")
    pictures = {}
    for name in sorted(os.listdir(folder)):
        for record in _tfrecords(os.path.join(folder, name)):
            for value in Event.FromString(record).summary.value:
                if value.HasField("image"):
                    pictures[(value.tag, Event.FromString(record).step)] = value.image
    assert list(pictures) == [(SAMPLES_TAG, 4)]
    picture = np.asarray(Image.open(io.BytesIO(pictures[(SAMPLES_TAG, 4)].encoded_image_string)))
    assert picture.shape == (2 * (2 * 66 + 2), 8 * 66 + 2, 3)
    config = acme_runs["config"]
    data_dir = config.data.dir
    first = real_photos(data_dir, "val", config.data, 1)[0]
    np.testing.assert_array_equal(picture[2:66, 2:66], first)
    assert not np.array_equal(picture[68:132, 2:66], first)  # below it: a generated image


def test_the_report_and_a_recipe_search_show_generated_dishes(acme_runs, generator, tmp_path):
    model = RetrievalModel(generator.run, which="latest")
    page = report.build_report(model, "test", limit=40, num_queries=3, map_points=30)
    section = page.split('id="generated-section"')[1].split("<h2")[0]
    assert section.count("data:image/png;base64,") == 3  # one generated image per query
    assert section.count("data:image/jpeg;base64,") == 3  # beside its photo
    out = tmp_path / "soup.png"
    args = ["recipe", "--workdir", model.run.workdir, "--split=test", "--limit=20"]
    search.run([*args, "--title=tomato soup", f"--generated={out}"], model=model)
    query = model.embed_recipes([{"title": "tomato soup"}])
    np.testing.assert_array_equal(np.asarray(Image.open(out)), generator.generate(query)[0][0])
