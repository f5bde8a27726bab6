"""Reader for the raw Recipe1M layout (and the built-in synthetic dataset, written the same way).

Joins `layer1.json` (text), `layer2.json` (photos), `det_ingrs.json` (clean ingredient names) and,
when present, `classes1M.pkl` (class labels) into one `RawRecipe` per recipe. Nothing is dropped
silently: every rejected entry comes back as `(id, reason)` in `RawDataset.skipped`, so `prepare`
can report it in `dataset_info.json`.

The JSON files are streamed entry by entry with `ijson` (its C yajl2 backend): `json.load` on the
1.3 GB layer1 of Recipe1M peaks at ~10 GB of Python objects, while streaming keeps only the cleaned
fields of each recipe. A syntax error is reported once, with the file, line, column and byte offset.
"""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import ijson

from xmodal.data.safe_pickle import plain_loads

PARTITIONS = ("train", "val", "test")
LAYER1, LAYER2, DET_INGRS, CLASSES = "layer1.json", "layer2.json", "det_ingrs.json", "classes1M.pkl"
MAX_CLASSES = 1 << 20  # Recipe1M has 1048; a larger index is a forged or broken classes1M.pkl

# C0/C1 controls, zero-width and bidi marks, line/paragraph separators, BOM, lone surrogates.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\ufeff\ud800-\udfff]"
)
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


class _CountingReader:
    """A binary file that remembers where the chunk it last returned starts (bytes and lines), so a
    parse error found in that chunk can be placed exactly."""

    def __init__(self, f: Any):
        self.f = f
        self.offset = 0  # bytes before `chunk`
        self.lines = 0  # newlines before `chunk`
        self.chunk = b""

    def read(self, n: int = -1) -> bytes:
        self.offset += len(self.chunk)
        self.lines += self.chunk.count(b"\n")
        self.chunk = self.f.read(n)
        return self.chunk


def _error_position(reader: _CountingReader, message: str) -> str:
    """'line L, column C (byte B)' of a yajl error, found from the context that yajl quotes."""
    lines = message.split("\n")
    at = reader.offset + len(reader.chunk)  # fallback: the end of the chunk being parsed
    if len(lines) >= 3 and "^" in lines[2]:
        # yajl's caret stands just past the offending token: step back onto it
        context, caret = lines[1], max(0, lines[2].index("^") - 1)
        start = len(context) - len(context.lstrip(" "))
        quoted = context[start:].encode("utf-8", "replace")
        # yajl prints newlines and tabs of the context as spaces
        pattern = b"".join(b"\\s" if c == 32 else re.escape(bytes([c])) for c in quoted)
        match = re.search(pattern, reader.chunk)
        if match and caret >= start:
            at = reader.offset + match.start() + len(context[start:caret].encode("utf-8"))
    before = reader.chunk[: max(0, at - reader.offset)]
    line = reader.lines + before.count(b"\n") + 1
    column = len(before) - (before.rfind(b"\n") + 1) + 1
    return f"line {line}, column {column} (byte {at})"


def iter_json_list(path: str) -> Iterator[Any]:
    """The entries of the JSON list in `path`, parsed one at a time (bounded memory).

    Raises ValueError naming the file and position on malformed JSON, and when the top level is
    not a list.
    """
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:].lstrip()
        if not head.startswith(b"["):
            kind = "empty file" if not head else f"{head[:20]!r}..."
            raise ValueError(f"{path}: expected a JSON list of entries, found {kind}")
        f.seek(0)
        reader = _CountingReader(f)
        try:
            yield from ijson.items(reader, "item", use_float=True, buf_size=1 << 16)
        except ijson.JSONError as e:
            message = str(e)
            where = _error_position(reader, message)
            first = message.split("\n")[0].strip()
            raise ValueError(f"malformed JSON in {path}: {where}: {first}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e.reason}") from None


def load_classes(path: str) -> tuple[dict[str, int], list[str]]:
    """classes1M.pkl: two pickles in sequence: recipe id -> class index, class index -> name
    (a dict or a list), read with `safe_pickle.plain_loads` (no code runs; classes1M.pkl is
    im2recipe's scripts/bigrams.py output); a wrong shape is a ValueError naming it."""
    try:
        with open(path, "rb") as f:
            id2class, names = plain_loads(f, 2)
    except Exception as e:  # no code runs in here: any failure is the bytes' (truncated, forged)
        raise ValueError(
            f"cannot read {path}: expected two pickles (id->class, class->name): "
            f"{type(e).__name__}: {e}"
        ) from None
    return _class_labels(id2class, path), _class_table(names, path)


def _class_labels(id2class: Any, path: str) -> dict[str, int]:
    ok = isinstance(id2class, dict) and all(
        isinstance(k, str | int) and _is_int(v) for k, v in id2class.items()
    )
    if not ok:
        raise ValueError(f"{path}: the first pickle must map recipe ids to class indices (ints)")
    return {str(k): v for k, v in id2class.items()}


def _class_table(names: Any, path: str) -> list[str]:
    if isinstance(names, dict):
        if not all(
            (_is_int(k) or (isinstance(k, str) and k.isascii() and k.isdigit()))
            and isinstance(v, str)
            for k, v in names.items()
        ):
            raise ValueError(f"{path}: the second pickle must map class indices to names (str)")
        by_index = {int(k): v for k, v in names.items()}
        if max(by_index, default=0) >= MAX_CLASSES:
            raise ValueError(f"{path}: class index {max(by_index)} >= {MAX_CLASSES}")
        table = [by_index.get(i, "") for i in range(max(by_index, default=-1) + 1)]
    elif isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        table = list(names)
    else:
        raise ValueError(f"{path}: the second pickle must be class names (a dict or a list)")
    return table or ["background"]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _texts(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    out = [normalize_text(i.get("text") if isinstance(i, dict) else i) for i in items]
    return [t for t in out if t]


def read_recipe1m(raw_dir: str) -> RawDataset:
    """Reads and joins the raw layout under `raw_dir`; see the module docstring."""
    path1 = os.path.join(raw_dir, LAYER1)
    if not os.path.exists(path1):
        raise FileNotFoundError(f"{path1} not found: is {raw_dir!r} a Recipe1M raw directory?")
    skipped: list[tuple[str, str]] = []
    recipes: dict[str, RawRecipe] = {}
    for k, entry in enumerate(iter_json_list(path1)):
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
        for entry in iter_json_list(path_det):
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
        for entry in iter_json_list(path2):
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
