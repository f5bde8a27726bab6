"""Reader for the raw Recipe1M layout (and the built-in synthetic dataset, written the same way).

Joins `layer1.json` (text), `layer2.json` (photos), `det_ingrs.json` (clean ingredient names) and,
when present, `classes1M.pkl` (class labels) into one `RawRecipe` per recipe. Nothing is dropped
silently: every rejected entry comes back as `(id, reason)` in `RawDataset.skipped`, so `prepare`
can report it in `dataset_info.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import unicodedata
from typing import Any

PARTITIONS = ("train", "val", "test")
LAYER1, LAYER2, DET_INGRS, CLASSES = "layer1.json", "layer2.json", "det_ingrs.json", "classes1M.pkl"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")


@dataclasses.dataclass
class RawRecipe:
    id: str
    partition: str
    title: str
    ingredients: list[str]
    instructions: list[str]
    clean_ingredients: list[str] = dataclasses.field(default_factory=list)
    class_id: int = 0  # 0 = background / unlabelled, as in Recipe1M
    image_ids: list[str] = dataclasses.field(default_factory=list)
    image_paths: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RawDataset:
    recipes: list[RawRecipe]
    skipped: list[tuple[str, str]]  # (recipe or image id, reason)
    class_names: list[str]  # index -> name; [] when there is no classes1M.pkl


def normalize_text(text: Any) -> str:
    """NFKC, control / zero-width characters removed, whitespace collapsed; non-strings -> ''."""
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def image_path(raw_dir: str, partition: str, image_id: str) -> str:
    """Recipe1M's image location: {partition}/{c0}/{c1}/{c2}/{c3}/{image id}."""
    return os.path.join(raw_dir, partition, *image_id[:4], image_id)


def load_json(path: str) -> Any:
    """Reads one JSON file. The single place to swap in a streaming parser for the 1.3 GB layer1."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"malformed JSON in {path}: line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}): {e.reason}") from e


def load_classes(path: str) -> tuple[dict[str, int], list[str]]:
    """classes1M.pkl: two pickles in sequence: recipe id -> class index, class index -> name."""
    try:
        with open(path, "rb") as f:
            id2class = pickle.load(f)
            names = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise ValueError(
            f"cannot read {path}: expected two pickles (id->class, class->name): {e}"
        ) from e
    if isinstance(names, dict):
        size = max((int(k) for k in names), default=-1) + 1
        table = [str(names.get(i, names.get(str(i), ""))) for i in range(size)]
    else:
        table = [str(n) for n in names]
    if not table:
        table = ["background"]
    return {str(k): int(v) for k, v in id2class.items()}, table


def _texts(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    out = [normalize_text(i.get("text") if isinstance(i, dict) else i) for i in items]
    return [t for t in out if t]


def _list_of_dicts(data: Any, path: str) -> list[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def read_recipe1m(raw_dir: str) -> RawDataset:
    """Reads and joins the raw layout under `raw_dir`; see the module docstring."""
    path1 = os.path.join(raw_dir, LAYER1)
    if not os.path.exists(path1):
        raise FileNotFoundError(f"{path1} not found: is {raw_dir!r} a Recipe1M raw directory?")
    skipped: list[tuple[str, str]] = []
    recipes: dict[str, RawRecipe] = {}
    for k, entry in enumerate(_list_of_dicts(load_json(path1), path1)):
        rid = normalize_text(entry.get("id")) if isinstance(entry, dict) else ""
        if not rid:
            skipped.append((f"{LAYER1}[{k}]", "layer1 entry without an id"))
            continue
        if rid in recipes:
            skipped.append((rid, "duplicated recipe id in layer1 (first kept)"))
            continue
        partition = entry.get("partition")
        if partition not in PARTITIONS:
            skipped.append((rid, f"unknown partition {partition!r}"))
            continue
        recipe = RawRecipe(
            id=rid,
            partition=partition,
            title=normalize_text(entry.get("title")),
            ingredients=_texts(entry.get("ingredients")),
            instructions=_texts(entry.get("instructions")),
        )
        if not recipe.ingredients:
            skipped.append((rid, "recipe has no ingredients"))
        elif not recipe.instructions:
            skipped.append((rid, "recipe has no instructions"))
        else:
            recipes[rid] = recipe

    path_det = os.path.join(raw_dir, DET_INGRS)
    if os.path.exists(path_det):
        for entry in _list_of_dicts(load_json(path_det), path_det):
            recipe = recipes.get(entry.get("id")) if isinstance(entry, dict) else None
            if recipe is None:
                continue  # parallel to layer1: skips there are already reported
            texts = entry.get("ingredients") or []
            valid = entry.get("valid") or []
            recipe.clean_ingredients = [
                t
                for item, ok in zip(texts, valid, strict=False)
                if ok
                and (t := normalize_text(item.get("text") if isinstance(item, dict) else item))
            ]

    path2 = os.path.join(raw_dir, LAYER2)
    if os.path.exists(path2):
        for entry in _list_of_dicts(load_json(path2), path2):
            rid = normalize_text(entry.get("id")) if isinstance(entry, dict) else ""
            recipe = recipes.get(rid)
            if recipe is None:
                skipped.append((rid or "?", "layer2 entry for an unknown or skipped recipe"))
                continue
            for image in entry.get("images") or []:
                iid = image.get("id") if isinstance(image, dict) else None
                if not isinstance(iid, str) or len(iid) < 5 or os.sep in iid or iid.startswith("."):
                    skipped.append((rid, f"malformed image id {iid!r} in layer2"))
                elif iid in recipe.image_ids:
                    skipped.append((iid, f"image listed twice for recipe {rid}"))
                else:
                    recipe.image_ids.append(iid)
                    recipe.image_paths.append(image_path(raw_dir, recipe.partition, iid))

    class_names: list[str] = []
    path_cls = os.path.join(raw_dir, CLASSES)
    if os.path.exists(path_cls):
        id2class, class_names = load_classes(path_cls)
        for rid, recipe in recipes.items():
            cid = id2class.get(rid, 0)
            if not 0 <= cid < len(class_names):
                skipped.append((rid, f"class index {cid} out of range; labelled background"))
                cid = 0
            recipe.class_id = cid
    return RawDataset(recipes=list(recipes.values()), skipped=skipped, class_names=class_names)
