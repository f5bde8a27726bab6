"""Synthetic recipes of the built-in dataset: the ingredient and dish-class tables, and the draw of
one recipe (title, ingredient lines, instructions, det_ingrs entries, class label, partition, photo
ids) together with the description of its dish that `photos` renders.

Each ingredient has a colour, a piece shape and size, a unit and whether it is cut; each dish class
a container, a base colour, its cooking methods and an ingredient pool. Confusable pairs (tomato vs
red bell pepper, blueberries vs blackberries, ...) are deliberate. Pantry items (salt, oil, ...)
appear in the text only, as they are not visible in a photo.

Any change to what is drawn here changes the built-in dataset: bump `synthetic.VERSION`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
PANTRY_NAMES = frozenset(name for name, _ in _PANTRY)

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
# method -> (target colour, mix fraction, title word); grilled also gets grill marks
METHODS = {
    "baked": ("9a5a28", 0.25, "Baked"), "fried": ("c88a20", 0.35, "Fried"),
    "boiled": ("f0f0e8", 0.35, "Boiled"), "grilled": ("5a3a22", 0.25, "Grilled"),
    "raw": ("000000", 0.0, "Fresh"), "roasted": ("6a3416", 0.4, "Roasted"),
    "steamed": ("ffffff", 0.18, "Steamed"), "sauteed": ("b07a30", 0.15, "Sauteed"),
}  # fmt: skip
_CUT_VERB = {"sliced": "Slice", "diced": "Dice", "minced": "Mince"}
_SIZES = {"S": 0.11, "M": 0.16, "L": 0.22}
_QUANTITIES = {
    "cup": ["1/4", "1/2", "1", "1 1/2", "2", "3"], "count": ["1", "2", "3", "4", "5", "6"],
    "lb": ["1/2", "1", "1 1/2", "2"], "oz": ["4", "8", "12", "16"], "slice": ["2", "4", "6", "8"],
    "tbsp": ["1", "2", "3"], "tsp": ["1/2", "1", "2"], "clove": ["1", "2", "3", "4"],
    "stalk": ["1", "2", "3", "4"],
}  # fmt: skip
_UNIT_WORDS = {"cup": "cup", "lb": "pound", "oz": "ounce", "slice": "slice", "tbsp": "tablespoon",
               "tsp": "teaspoon", "clove": "clove", "stalk": "stalk"}  # fmt: skip


def hex_rgb(h: str) -> tuple[int, int, int]:
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
    dict(name=n, rgb=hex_rgb(c), shape=s, size=_SIZES[z], unit=u, cuttable=k == "y")
    for n, c, s, z, u, k in _table(_INGREDIENTS)
]
INGREDIENT_BY_NAME = {ing["name"]: ing for ing in INGREDIENTS}
CLASSES = [
    dict(
        name=n,
        container=c,
        base=hex_rgb(b),
        methods=m.split(),
        pool=_parse_pool(p, INGREDIENT_BY_NAME),
    )
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
    c, m = cls["name"].title(), METHODS[method][2]
    if m[:4] == c[:4]:  # no "Roasted Roast"
        m = "Classic"
    templates = [f"{m} {a} and {b} {c}", f"{m} {a} {c}", f"{c} with {a} and {b}",
                 f"Easy {m} {a} {c}", f"{a} and {b} {c}", f"Homemade {m} {c} with {a}"]  # fmt: skip
    return templates[int(rng.integers(len(templates)))]


def _instructions(rng: np.random.Generator, cls: dict, method: str, items: list[dict]) -> list[str]:
    visible = [it["name"] for it in items if not it["pantry"]]
    # the biggest piece is what gets cooked
    main = max(visible, key=lambda n: INGREDIENT_BY_NAME[n]["size"])
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


def make_recipe(rng: np.random.Generator, used_ids: set[str]) -> dict:
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
        ing = INGREDIENT_BY_NAME[name]
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


def generate_recipes(num_recipes: int, seed: int) -> list[dict]:
    """The built-in dataset's recipes (`make_recipe` in order from one generator): the same list
    for the same arguments, so tools can recover what was drawn for a prepared recipe by its id."""
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    return [make_recipe(rng, used) for _ in range(num_recipes)]
