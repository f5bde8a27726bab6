"""The built-in dataset: synthetic recipes and food photos in the raw Recipe1M layout.

A first run on a fresh machine needs data that exercises every real code path (raw reader, prepare,
pipeline, training, bag evaluation) and on which retrieval is learnable but not trivial. So each
photo is *rendered from its recipe*:

  dish class       -> container (plate, bowl, cup, tray, skillet, board, basket), base colour
  ingredients      -> pieces: a hue and a shape per ingredient (with confusable pairs: tomato vs red
                      bell pepper, blueberries vs blackberries, ...), piece count ~ quantity
  cooking method   -> colour shift (browned, golden, pale, charred with grill marks, ...)
  cut              -> piece size (whole > sliced > diced > minced), named in the ingredient
                      lines and the instructions

and then disturbed like a real photo: random table/cloth background, position, scale, rotation,
lighting, colour temperature, blur and JPEG quality 50-95; 1-3 photos per recipe, each with its own
nuisance. A model that only recognises the class ranks the true recipe ~15-30 in a bag of 1,000
(~30 classes); reading ingredients, method and cut narrows it much further.

Deterministic by seed: recipes are drawn in the main process from one generator, every photo from
its own generator seeded by (seed, recipe index, photo index), so output is byte-identical for any
number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xmodal.data import records

VERSION = 1  # bump when the generator changes, so cached built-in datasets are rebuilt

# name | colour | shape | size (S/M/L) | unit | cuttable
_INGREDIENTS = """
tomato|d8322a|circle|M|count|y
cherry tomatoes|e85a3a|circle|S|cup|n
red bell pepper|c41e3a|blob|M|count|y
green bell pepper|3d8a2a|blob|M|count|y
yellow bell pepper|f0c020|blob|M|count|y
carrot|f07d1a|strip|M|count|y
zucchini|4f8f3a|ring|M|count|y
cucumber|7ab84e|ring|M|count|y
eggplant|4b2a5a|ellipse|L|count|y
red onion|9a3b6a|ring|M|count|y
onion|efe6d0|ring|M|count|y
garlic|f3efe0|crescent|S|clove|y
mushrooms|a07a5a|crescent|M|cup|y
broccoli|2f7a2f|star|M|cup|n
cauliflower|eee8d2|star|M|cup|n
spinach|2d6a2a|leaf|M|cup|n
kale|1f5a2f|leaf|L|cup|n
lettuce|8cc860|leaf|L|cup|n
cabbage|b8d890|leaf|M|cup|y
red cabbage|7a2a6a|leaf|M|cup|y
celery|a8d080|strip|M|stalk|y
asparagus|5a9a3a|strip|L|lb|n
green beans|3f8a3a|strip|S|cup|n
peas|6ab040|circle|S|cup|n
corn|f5d040|dots|S|cup|n
potato|e8d08a|square|L|count|y
sweet potato|e08a3a|square|L|count|y
butternut squash|f0a030|square|M|cup|y
pumpkin|d86a18|square|M|cup|y
avocado|a8c860|crescent|M|count|y
jalapeno|2f6a22|ring|S|count|y
beet|8a1a3a|circle|M|count|y
radish|d04a6a|circle|S|count|y
leek|c8e0a0|ring|M|count|y
scallions|5ab04a|ring|S|cup|y
olives|3a3a2a|ring|S|cup|n
artichoke hearts|a8b070|star|M|cup|n
chicken breast|e8c8a0|blob|L|lb|y
chicken thighs|d8a880|blob|L|lb|y
turkey|e4c4a4|blob|L|lb|y
ground beef|7a3a2a|dots|S|lb|n
beef steak|8a2a2a|square|L|lb|y
pork chops|e0a090|square|L|count|y
bacon|b84a3a|strip|M|slice|n
ham|e89090|square|M|cup|y
sausage|9a4a3a|circle|M|count|y
lamb|9a4a4a|blob|L|lb|y
shrimp|f29a80|crescent|M|lb|n
salmon|f08a6a|square|L|lb|y
tuna|c85a5a|square|M|oz|y
cod|f4f0e6|blob|L|lb|y
scallops|f3e8d8|circle|M|lb|n
tofu|f4f0dc|square|M|oz|y
eggs|fff8e8|egg|M|count|n
black beans|2a2020|ellipse|S|cup|n
chickpeas|e0c080|circle|S|cup|n
kidney beans|8a2a2a|ellipse|S|cup|n
lentils|b07a3a|dots|S|cup|n
cheddar cheese|f0a830|square|S|cup|n
mozzarella|f8f4e0|circle|M|cup|y
parmesan|f4e0a0|dots|S|cup|n
feta cheese|fafaf0|square|S|cup|n
cream cheese|fbf8ef|blob|M|oz|n
rice|faf8f0|dots|S|cup|n
brown rice|c8a870|dots|S|cup|n
quinoa|e8d8b0|dots|S|cup|n
spaghetti|f0d890|strip|M|oz|n
penne|f0d080|ellipse|S|oz|n
egg noodles|f5e0a0|strip|M|oz|n
rice noodles|f8f4ea|strip|M|oz|n
bread|d8a860|square|L|slice|n
tortillas|e8cc90|circle|L|count|n
croutons|c8903a|square|S|cup|n
oats|d8c090|dots|S|cup|n
strawberries|d8203a|triangle|S|cup|y
blueberries|3a3a8a|circle|S|cup|n
raspberries|c8204a|circle|S|cup|n
blackberries|2a1a3a|circle|S|cup|n
banana|f4e070|crescent|M|count|y
apple|c83a2a|crescent|M|count|y
pear|c8d060|crescent|M|count|y
peach|f4a060|crescent|M|count|y
mango|f4b030|square|M|count|y
pineapple|f4d840|triangle|M|cup|y
lemon|f4e040|ring|M|count|y
lime|8ac040|ring|M|count|y
orange|f49020|ring|M|count|y
grapes|6a2a6a|circle|S|cup|n
cranberries|a01a2a|circle|S|cup|n
raisins|4a2a1a|dots|S|cup|n
walnuts|8a5a2a|blob|S|cup|n
almonds|c8905a|ellipse|S|cup|n
pecans|7a4a2a|ellipse|S|cup|n
chocolate chips|3a2018|triangle|S|cup|n
coconut flakes|fbfbf5|strip|S|cup|n
basil|2a7a2a|leaf|S|cup|y
cilantro|3a8a3a|leaf|S|cup|y
parsley|2a6a2a|leaf|S|cup|y
mint|4aa04a|leaf|S|cup|y
rosemary|3a5a3a|strip|S|tbsp|y
dill|6a9a4a|dots|S|tbsp|y
ginger|e0c070|square|S|tbsp|y
sesame seeds|f0e8d0|dots|S|tbsp|n
"""
# Pantry items: in the text, not visible in the photo (as salt is not).
_PANTRY = [
    ("salt", "tsp"), ("black pepper", "tsp"), ("olive oil", "tbsp"), ("butter", "tbsp"),
    ("vegetable oil", "tbsp"), ("sugar", "cup"), ("all-purpose flour", "cup"),
    ("soy sauce", "tbsp"), ("honey", "tbsp"), ("milk", "cup"), ("chicken broth", "cup"),
    ("paprika", "tsp"), ("ground cumin", "tsp"), ("vanilla extract", "tsp"),
    ("baking powder", "tsp"),
]  # fmt: skip

# class name | container | base colour | methods | ingredient pool
_CLASSES = """
salad|bowl|c8e0a0|raw grilled|lettuce spinach kale tomato cucumber red onion avocado feta cheese croutons chicken breast olives carrot
soup|bowl|e0a050|boiled steamed|carrot celery onion potato chicken thighs lentils peas leek butternut squash
pizza|board|c83a2a|baked|mozzarella tomato basil mushrooms olives sausage ham red onion green bell pepper pineapple
pasta|plate|f0e0b0|boiled sauteed|spaghetti penne parmesan basil tomato mushrooms shrimp chicken breast spinach
stir fry|skillet|8a5a2a|fried sauteed|broccoli carrot red bell pepper tofu chicken breast scallions ginger beef steak green beans
casserole|tray|e8c890|baked|potato cheddar cheese chicken breast broccoli egg noodles green beans ham
tacos|board|e8cc90|grilled fried|tortillas ground beef cheddar cheese lettuce tomato avocado cilantro black beans red onion lime
curry|bowl|e0a020|boiled sauteed|chickpeas chicken thighs potato cauliflower spinach rice ginger lentils peas
omelette|skillet|f6e08a|fried|eggs ham cheddar cheese spinach mushrooms tomato green bell pepper onion
pancakes|plate|e8b868|fried|blueberries banana strawberries pecans chocolate chips raspberries
smoothie|cup|e890a0|raw|banana strawberries blueberries mango pineapple spinach oats raspberries peach
cake|plate|6a3a20|baked|chocolate chips strawberries walnuts raspberries lemon coconut flakes cream cheese carrot
cookies|tray|d8a860|baked|chocolate chips oats raisins walnuts pecans coconut flakes cranberries almonds
muffins|basket|c89858|baked|blueberries banana cranberries walnuts oats apple raspberries
sandwich|board|d8a860|grilled raw|bread ham turkey cheddar cheese lettuce tomato bacon avocado
burger|plate|c88a40|grilled|ground beef cheddar cheese lettuce tomato red onion bacon avocado jalapeno
risotto|bowl|f4ecd0|sauteed boiled|rice mushrooms parmesan peas asparagus shrimp butternut squash
stew|bowl|7a3a20|boiled roasted|beef steak potato carrot celery onion mushrooms lamb
chili|bowl|9a2a1a|boiled|ground beef kidney beans black beans tomato onion jalapeno corn cheddar cheese
pie|plate|d8a050|baked|apple peach blueberries pumpkin pecans cranberries strawberries
lasagna|tray|c85030|baked|mozzarella ground beef spinach parmesan mushrooms zucchini tomato sausage
skewers|board|a06030|grilled|chicken breast beef steak shrimp red bell pepper zucchini red onion mushrooms pineapple lamb
fried rice|skillet|e8d8a0|fried|rice eggs peas carrot scallions shrimp ham corn
noodle bowl|bowl|c89050|boiled steamed|rice noodles egg noodles tofu scallions cilantro shrimp carrot beef steak lime
quiche|plate|f0d070|baked|eggs spinach bacon ham cheddar cheese mushrooms onion
roast|tray|8a5030|roasted|chicken thighs potato carrot rosemary lemon sweet potato lamb pork chops garlic
grain bowl|bowl|e8d8b0|steamed roasted|quinoa brown rice chickpeas sweet potato kale avocado beet tofu
fish fillet|plate|f4f0e0|grilled baked fried|salmon cod tuna lemon asparagus dill green beans potato
fruit salad|bowl|fbe8e0|raw|strawberries blueberries grapes mango pineapple orange banana apple mint
dip|cup|d8c890|raw baked|chickpeas avocado cream cheese spinach artichoke hearts jalapeno olives
"""  # noqa: E501
_CONTAINERS = {  # rim colour, food-area shape
    "plate": ("f4f2ee", "circle"), "bowl": ("3a6a9a", "circle"), "cup": ("e8e0d0", "circle"),
    "tray": ("8a8a90", "rect"), "skillet": ("262626", "circle"), "board": ("a8784a", "rect"),
    "basket": ("b08040", "circle"),
}  # fmt: skip
# method -> (target colour, mix fraction, title word); grilled also gets grill marks
_METHODS = {
    "baked": ("9a5a28", 0.25, "Baked"), "fried": ("c88a20", 0.35, "Fried"),
    "boiled": ("f0f0e8", 0.35, "Boiled"), "grilled": ("5a3a22", 0.25, "Grilled"),
    "raw": ("000000", 0.0, "Fresh"), "roasted": ("6a3416", 0.4, "Roasted"),
    "steamed": ("ffffff", 0.18, "Steamed"), "sauteed": ("b07a30", 0.15, "Sauteed"),
}  # fmt: skip
_CUTS = {"whole": (1.0, 1.0), "sliced": (0.8, 0.45), "diced": (0.5, 1.0), "minced": (0.28, 1.0)}
_CUT_VERB = {"sliced": "Slice", "diced": "Dice", "minced": "Mince"}
_CUT_COUNT = {"whole": 1.0, "sliced": 1.6, "diced": 2.2, "minced": 3.0}
_SIZES = {"S": 0.11, "M": 0.16, "L": 0.22}
_QUANTITIES = {
    "cup": ["1/4", "1/2", "1", "1 1/2", "2", "3"], "count": ["1", "2", "3", "4", "5", "6"],
    "lb": ["1/2", "1", "1 1/2", "2"], "oz": ["4", "8", "12", "16"], "slice": ["2", "4", "6", "8"],
    "tbsp": ["1", "2", "3"], "tsp": ["1/2", "1", "2"], "clove": ["1", "2", "3", "4"],
    "stalk": ["1", "2", "3", "4"],
}  # fmt: skip
_UNIT_WORDS = {"cup": "cup", "lb": "pound", "oz": "ounce", "slice": "slice", "tbsp": "tablespoon",
               "tsp": "teaspoon", "clove": "clove", "stalk": "stalk"}  # fmt: skip


def _hex(h: str) -> tuple[int, int, int]:
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _table(text: str) -> list[list[str]]:
    return [line.split("|") for line in text.strip().splitlines()]


def _parse_pool(words: str, known: dict[str, Any]) -> list[str]:
    """Greedy longest match of known ingredient names in a space-separated pool string."""
    tokens, out, i = words.split(), [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            if " ".join(tokens[i:j]) in known:
                out.append(" ".join(tokens[i:j]))
                i = j
                break
        else:
            raise ValueError(f"unknown ingredient in class pool: {tokens[i]!r}")
    return out


INGREDIENTS = [
    dict(name=n, rgb=_hex(c), shape=s, size=_SIZES[z], unit=u, cuttable=k == "y")
    for n, c, s, z, u, k in _table(_INGREDIENTS)
]
_BY_NAME = {ing["name"]: ing for ing in INGREDIENTS}
CLASSES = [
    dict(name=n, container=c, base=_hex(b), methods=m.split(), pool=_parse_pool(p, _BY_NAME))
    for n, c, b, m, p in _table(_CLASSES)
]


# ----------------------------------------------------------------------------- recipe text


def _plural(name: str) -> str:
    if name.endswith("s"):
        return name
    return name + ("es" if name in ("tomato", "potato", "sweet potato", "peach") else "s")


def _hex_id(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        value = "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, size=10))
        if value not in used:
            used.add(value)
            return value


def _ingredient_line(name: str, unit: str, qty: str, cut: str | None) -> str:
    what = f"{cut} {name}" if cut else name
    if unit == "count":
        return f"{qty} {what if qty == '1' else (f'{cut} ' if cut else '') + _plural(name)}"
    word = _UNIT_WORDS[unit]
    return f"{qty} {word if qty in ('1', '1/2', '1/4') else word + 's'} {what}"


def _title(rng: np.random.Generator, cls: dict, method: str, salient: list[str]) -> str:
    a, b = salient[0].title(), salient[min(1, len(salient) - 1)].title()
    c, m = cls["name"].title(), _METHODS[method][2]
    if m[:4] == c[:4]:  # no "Roasted Roast"
        m = "Classic"
    templates = [f"{m} {a} and {b} {c}", f"{m} {a} {c}", f"{c} with {a} and {b}",
                 f"Easy {m} {a} {c}", f"{a} and {b} {c}", f"Homemade {m} {c} with {a}"]  # fmt: skip
    return templates[int(rng.integers(len(templates)))]


def _instructions(rng: np.random.Generator, cls: dict, method: str, items: list[dict]) -> list[str]:
    visible = [it["name"] for it in items if not it["pantry"]]
    main = max(visible, key=lambda n: _BY_NAME[n]["size"])  # the biggest piece is what gets cooked
    minutes = int(rng.choice([5, 8, 10, 12, 15, 20, 25, 30, 40, 45]))
    temp = int(rng.choice([325, 350, 375, 400, 425]))
    start = {
        "baked": f"Preheat the oven to {temp} degrees F and grease a baking dish.",
        "roasted": f"Preheat the oven to {temp + 25} degrees F.",
        "grilled": "Preheat the grill to medium-high heat and oil the grates.",
        "fried": "Heat the oil in a large skillet over medium-high heat.",
        "sauteed": "Melt the butter in a large pan over medium heat.",
        "boiled": "Bring a large pot of salted water to a boil.",
        "steamed": "Set a steamer basket over a pot of simmering water.",
        "raw": "Rinse the produce under cold water and pat dry.",
    }[method]
    cook = {
        "baked": f"Bake for {minutes} minutes at {temp} degrees F, until golden brown.",
        "roasted": f"Roast the {main} for {minutes} minutes, turning once, until browned.",
        "grilled": f"Grill the {main} for {minutes} minutes per side, until charred.",
        "fried": f"Fry the {main} for {minutes} minutes, until golden and crispy.",
        "sauteed": f"Saute the {main} for {minutes} minutes, stirring often.",
        "boiled": f"Add the {main} and boil for {minutes} minutes, until tender.",
        "steamed": f"Steam the {main} for {minutes} minutes, until just tender.",
        "raw": f"Toss everything gently and chill for {minutes} minutes.",
    }[method]
    prep = [f"{_CUT_VERB[it['cut']]} the {it['name']}." for it in items if it["cut"] in _CUT_VERB]
    steps = [start, *prep[:4]]
    if len(visible) > 2:
        steps.append(f"In a large bowl, combine the {visible[1]}, {visible[2]} and {visible[0]}.")
    steps.append(cook)
    extras = [
        "Season with salt and pepper to taste.",
        f"Let rest for {int(rng.integers(2, 11))} minutes before serving.",
        f"Transfer to a {cls['container']} and serve {'cold' if method == 'raw' else 'warm'}.",
        f"Top with the {visible[-1]} just before serving.",
    ]
    steps += [e for e in extras if rng.random() < 0.6]
    return steps[:10] if len(steps) >= 3 else [*steps, extras[0], extras[2]][:10]


def _make_recipe(rng: np.random.Generator, used_ids: set[str]) -> dict:
    """Draws one recipe: the text fields and the dish description that drives its photos."""
    cls_index = int(rng.integers(len(CLASSES)))
    cls = CLASSES[cls_index]
    method = str(rng.choice(cls["methods"]))
    pool = cls["pool"]
    n_core = int(rng.integers(2, min(6, len(pool)) + 1))
    names = [pool[i] for i in rng.choice(len(pool), n_core, replace=False)]
    others = [ing["name"] for ing in INGREDIENTS if ing["name"] not in names]
    names += [others[i] for i in rng.choice(len(others), int(rng.integers(0, 4)), replace=False)]
    items = []
    for name in names:
        ing = _BY_NAME[name]
        levels = _QUANTITIES[ing["unit"]]
        q = int(rng.integers(len(levels)))
        cut = str(rng.choice(["whole", "sliced", "diced", "minced"])) if ing["cuttable"] else None
        items.append(dict(name=name, unit=ing["unit"], qty=levels[q], level=q / (len(levels) - 1),
                          cut=cut, pantry=False))  # fmt: skip
    for i in rng.choice(len(_PANTRY), int(rng.integers(1, 3)), replace=False):
        name, unit = _PANTRY[i]
        items.append(dict(name=name, unit=unit, qty=_QUANTITIES[unit][0], level=0.0, cut=None,
                          pantry=True))  # fmt: skip
    items = items[:10]
    lines = [_ingredient_line(it["name"], it["unit"], it["qty"], it["cut"]) for it in items]
    salient = sorted((it for it in items if not it["pantry"]), key=lambda it: -it["level"])
    title = _title(rng, cls, method, [it["name"] for it in salient[:2]])
    instructions = _instructions(rng, cls, method, items)
    valid = [bool(rng.random() > 0.05) for _ in items]
    det_names = [
        it["name"] if ok else line for it, ok, line in zip(items, valid, lines, strict=True)
    ]
    n_photos = 0 if rng.random() < 0.15 else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    rid = _hex_id(rng, used_ids)
    return dict(
        id=rid,
        partition=str(rng.choice(["train", "val", "test"], p=[0.7, 0.15, 0.15])),
        class_index=cls_index + 1,
        labelled=bool(rng.random() < 0.5),
        title=title,
        ingredients=lines,
        instructions=instructions,
        det=det_names,
        valid=valid,
        image_ids=[_hex_id(rng, used_ids) + ".jpg" for _ in range(n_photos)],
        dish=dict(
            container=cls["container"],
            base=cls["base"],
            method=method,
            pieces=[
                (it["name"], it["cut"] or "whole", it["level"]) for it in items if not it["pantry"]
            ],
        ),
    )


# ----------------------------------------------------------------------------- rendering


def _shift(rgb: tuple[int, int, int], method: str) -> tuple[int, int, int]:
    target, frac, _ = _METHODS[method]
    t = _hex(target)
    return tuple(round((1 - frac) * c + frac * tc) for c, tc in zip(rgb, t, strict=True))  # type: ignore[return-value]


def _polygon(cx: float, cy: float, r: float, aspect: float, angle: float, pts: np.ndarray) -> list:
    """Points `pts` (unit shape, (n, 2)) scaled by r, squashed by aspect, rotated, translated."""
    x, y = pts[:, 0] * r, pts[:, 1] * r * aspect
    ca, sa = np.cos(angle), np.sin(angle)
    return list(zip((cx + ca * x - sa * y).tolist(), (cy + sa * x + ca * y).tolist(), strict=True))


_T = np.linspace(0, 2 * np.pi, 20, endpoint=False)
_CIRCLE = np.stack([np.cos(_T), np.sin(_T)], 1)
_ARC = np.linspace(-0.6 * np.pi, 0.6 * np.pi, 10)
_SHAPES = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": np.array([[0, -1.0], [0.9, 0.7], [-0.9, 0.7]]),
    "strip": np.array([[-1.0, -0.25], [1.0, -0.25], [1.0, 0.25], [-1.0, 0.25]]),
    "ellipse": _CIRCLE * [1.0, 0.6],
    "leaf": np.stack([np.cos(_T), 0.45 * np.sin(_T) * np.abs(np.sin(_T)) ** 0.3], 1),
    "star": _CIRCLE * np.where(np.arange(20) % 4 < 2, 1.0, 0.55)[:, None],
    "crescent": np.concatenate(
        [
            np.stack([np.cos(_ARC), np.sin(_ARC)], 1),
            np.stack([0.55 * np.cos(_ARC[::-1]) + 0.1, 0.8 * np.sin(_ARC[::-1])], 1),
        ]
    ),
}


def _unit_shape(shape: str, rng: np.random.Generator) -> np.ndarray:
    if shape == "blob":
        return _CIRCLE * rng.uniform(0.7, 1.0, size=(20, 1))
    return _SHAPES.get(shape, _CIRCLE)


def _draw_piece(draw: ImageDraw.ImageDraw, shape: str, rgb: tuple, cx: float, cy: float, r: float,
                aspect: float, angle: float, rng: np.random.Generator) -> None:  # fmt: skip
    dark = tuple(int(c * 0.7) for c in rgb)
    if shape == "dots":  # grains: a small cluster
        for _ in range(5):
            dx, dy = rng.normal(0, r * 0.6, 2)
            d = max(r * 0.28, 1.0)
            draw.ellipse([cx + dx - d, cy + dy - d, cx + dx + d, cy + dy + d], fill=rgb)
        return
    if shape == "ring":
        w = max(int(r * 0.35), 1)
        draw.ellipse([cx - r, cy - r * aspect, cx + r, cy + r * aspect], outline=rgb, width=w)
        return
    if shape == "egg":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb, outline=dark)
        y = r * 0.45
        draw.ellipse([cx - y, cy - y, cx + y, cy + y], fill=(245, 190, 40))
        return
    points = _polygon(cx, cy, r, aspect, angle, _unit_shape(shape, rng))
    draw.polygon(points, fill=rgb, outline=dark)
    if shape == "leaf":
        draw.line(
            _polygon(cx, cy, r, aspect, angle, np.array([[-0.9, 0.0], [0.9, 0.0]])), fill=dark
        )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A table or cloth: wood grain, checkered cloth, or a speckled plain surface."""
    kind = int(rng.integers(3))
    c1 = rng.uniform(40, 230, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # wood
        freq, phase = rng.uniform(0.1, 0.4), rng.uniform(0, 6.3)
        grain = np.sin(xx * freq + 2.0 * np.sin(yy * 0.06 + phase))[..., None]
        img = c1 * (1 + 0.12 * grain)
    elif kind == 1:  # checkered cloth
        c2 = rng.uniform(40, 250, 3).astype(np.float32)
        cell = int(rng.integers(max(size // 12, 2), max(size // 4, 3)))
        mask = ((xx // cell + yy // cell) % 2)[..., None]
        img = mask * c1 + (1 - mask) * c2
    else:  # plain
        img = np.broadcast_to(c1, (size, size, 3))
    noise = rng.integers(-8, 9, (size, size, 1), dtype=np.int16).astype(np.float32)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _render(dish: dict, image_size: int, rng: np.random.Generator) -> Image.Image:
    size = image_size * 2  # the dish is drawn at 2x and downsampled, for anti-aliased shapes
    bg = Image.fromarray(_background(rng, image_size))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    c = size / 2
    scale = rng.uniform(0.8, 1.05)
    rim_rgb, area = _CONTAINERS[dish["container"]]
    rim = _hex(rim_rgb)
    R = size * 0.42 * scale  # container radius
    method = dish["method"]
    base = _shift(dish["base"], method)
    theta = rng.uniform(0, 2 * np.pi)  # the whole dish is rotated (coordinates, not pixels)
    ct, st = np.cos(theta), np.sin(theta)

    def at(*xy: float) -> list[tuple[float, float]]:
        """Rotated absolute points for offsets (dx0, dy0, dx1, dy1, ...) from the centre."""
        return [
            (c + ct * x - st * y, c + st * x + ct * y)
            for x, y in zip(xy[::2], xy[1::2], strict=True)
        ]

    def box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return at(x0, y0, x1, y0, x1, y1, x0, y1)

    container = dish["container"]
    if container == "cup":
        R *= 0.75
        draw.polygon(box(R * 0.8, -R * 0.15, R * 1.35, R * 0.15), fill=rim)
    if container == "skillet":
        draw.polygon(box(R * 0.8, -R * 0.1, R * 1.6, R * 0.1), fill=rim)
    if area == "rect":
        draw.polygon(box(-R, -R * 0.75, R, R * 0.75), fill=rim)
        food = R * 0.86
        draw.polygon(box(-food, -food * 0.7, food, food * 0.7), fill=base)
    else:
        draw.ellipse([c - R, c - R, c + R, c + R], fill=rim)
        if container == "basket":
            for k in range(-4, 5):
                draw.line(
                    at(k * R / 5, -R * 0.95, k * R / 5, R * 0.95), fill=tuple(v // 2 for v in rim)
                )
        inner = R * (0.82 if container != "plate" else 0.6)
        if container == "plate":
            draw.ellipse(
                [c - R * 0.8, c - R * 0.8, c + R * 0.8, c + R * 0.8], outline=(220, 218, 212)
            )
        draw.ellipse([c - inner, c - inner, c + inner, c + inner], fill=base)
        food = inner
    if method == "grilled":  # grill marks across the food
        for k in range(-3, 4):
            off = k * food / 3.5
            draw.line(at(-food * 0.6 + off, -food * 0.6, off, food * 0.6),
                      fill=(50, 30, 20), width=max(2, int(food / 18)))  # fmt: skip
    pieces = sorted(dish["pieces"], key=lambda p: -_BY_NAME[p[0]]["size"])
    for name, cut, level in pieces:
        ing = _BY_NAME[name]
        rel, aspect = _CUTS[cut]
        r = food * ing["size"] * rel
        count = round((2 + 5 * level) * _CUT_COUNT[cut])
        rgb = _shift(ing["rgb"], method)
        for _ in range(min(count, 24)):
            rho, phi = food * 0.8 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            ((px, py),) = at(rho * np.cos(phi), rho * np.sin(phi) * (0.7 if area == "rect" else 1))
            _draw_piece(draw, ing["shape"], rgb, px, py, r, aspect, rng.uniform(0, np.pi), rng)
    layer = layer.resize((image_size, image_size), Image.BILINEAR)
    shift = (rng.uniform(-0.1, 0.1, 2) * image_size).astype(int)
    bg.paste(layer, (int(shift[0]), int(shift[1])), layer)
    img = bg
    # lighting: brightness, contrast, colour temperature
    arr = np.asarray(img, dtype=np.float32)
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.2)
    t = rng.uniform(-0.1, 0.1)
    arr *= np.array([1 + t, 1.0, 1 - t], np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    blur = rng.uniform(0, 1.0)
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.3 else img


def _render_photo(task: tuple) -> None:
    """Worker: renders one photo, writes it as JPEG (quality 50-95, from the photo's own seed)."""
    dish, image_size, seed, path = task
    rng = np.random.default_rng(seed)
    img = _render(dish, image_size, rng)
    img.save(path, format="JPEG", quality=int(rng.integers(50, 96)))


# ----------------------------------------------------------------------------- writing


def _dump_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def write_raw_dataset(out_dir: str, *, num_recipes: int = 4000, image_size: int = 96, seed: int = 0,
                      num_workers: int | None = None) -> dict:  # fmt: skip
    """Writes the synthetic dataset in the raw Recipe1M layout to `out_dir`; returns counts."""
    if num_recipes < 1 or image_size < 16:
        raise ValueError(
            f"need num_recipes >= 1 and image_size >= 16, got {num_recipes}, {image_size}"
        )
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    recipes = [_make_recipe(rng, used) for _ in range(num_recipes)]
    os.makedirs(out_dir, exist_ok=True)
    layer1 = [
        dict(id=r["id"], url=f"http://www.example.com/recipe/{r['id']}", partition=r["partition"],
             title=r["title"], ingredients=[{"text": t} for t in r["ingredients"]],
             instructions=[{"text": t} for t in r["instructions"]])
        for r in recipes
    ]  # fmt: skip
    layer2 = [
        dict(
            id=r["id"],
            images=[dict(id=i, url=f"http://img.example.com/{i}") for i in r["image_ids"]],
        )
        for r in recipes
        if r["image_ids"]
    ]
    det = [
        dict(id=r["id"], ingredients=[{"text": t} for t in r["det"]], valid=r["valid"])
        for r in recipes
    ]
    _dump_json(layer1, os.path.join(out_dir, "layer1.json"))
    _dump_json(layer2, os.path.join(out_dir, "layer2.json"))
    _dump_json(det, os.path.join(out_dir, "det_ingrs.json"))
    with open(os.path.join(out_dir, "classes1M.pkl"), "wb") as f:
        pickle.dump({r["id"]: r["class_index"] if r["labelled"] else 0 for r in recipes}, f)
        pickle.dump({0: "background", **{i + 1: c["name"] for i, c in enumerate(CLASSES)}}, f)

    tasks = []
    for k, r in enumerate(recipes):
        for j, iid in enumerate(r["image_ids"]):
            folder = os.path.join(out_dir, r["partition"], *iid[:4])
            os.makedirs(folder, exist_ok=True)
            tasks.append((r["dish"], image_size, [seed, k, j], os.path.join(folder, iid)))
    workers = min(num_workers or os.cpu_count() or 1, max(1, len(tasks) // 200))
    if workers <= 1:
        for task in tasks:
            _render_photo(task)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_photo, tasks, chunksize=64):
                pass
    return dict(
        recipes=num_recipes,
        images=len(tasks),
        recipes_with_images=len(layer2),
        labelled=sum(r["labelled"] for r in recipes),
        partitions={p: sum(r["partition"] == p for r in recipes) for p in ("train", "val", "test")},
    )


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xmodal")


def ensure_builtin_dataset(cache_dir: str, *, num_recipes: int, image_size: int, seed: int) -> str:
    """Path of the prepared built-in dataset for these parameters, building it on first use.

    Built in a temporary folder next to the cache entry and renamed into place at the end, so a run
    killed half-way leaves no half-built entry (only a temp folder, cleaned on the next build).
    """
    from xmodal.data import prepare  # local: prepare imports this module's siblings only

    cache_dir = cache_dir or default_cache_dir()
    key = f"synthetic-v{VERSION}-n{num_recipes}-px{image_size}-seed{seed}"
    final = os.path.join(cache_dir, key)
    data_dir = os.path.join(final, "data")
    if os.path.exists(os.path.join(data_dir, records.DATASET_INFO)):
        return data_dir
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
    try:
        print(
            f"[xmodal] building the built-in dataset ({num_recipes} recipes) in {final}", flush=True
        )
        stats = write_raw_dataset(
            os.path.join(tmp, "raw"), num_recipes=num_recipes, image_size=image_size, seed=seed
        )
        print(
            f"[xmodal] wrote {stats['recipes']} recipes, {stats['images']} photos; preparing",
            flush=True,
        )
        prepare.prepare(
            os.path.join(tmp, "raw"),
            os.path.join(tmp, "data"),
            source=f"xmodal.data.synthetic({num_recipes=}, {image_size=}, {seed=})",
        )
        shutil.rmtree(os.path.join(tmp, "raw"))  # regenerable; halves the cache size
        if os.path.exists(final):  # another process finished first, or a stale incomplete entry
            if os.path.exists(os.path.join(data_dir, records.DATASET_INFO)):
                return data_dir
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"[xmodal] built-in dataset ready: {data_dir}", flush=True)
    return data_dir


def _fingerprint(path: str) -> str:
    """Hash of every file under `path` (names and bytes): used by tests to compare outputs."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_recipes", type=int, default=4000)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=None)
    args = parser.parse_args(argv)
    stats = write_raw_dataset(
        args.out_dir,
        num_recipes=args.num_recipes,
        image_size=args.image_size,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    print(json.dumps(stats), file=sys.stdout)


if __name__ == "__main__":
    main()
