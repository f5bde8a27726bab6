"""Photo renderer of the built-in dataset: draws a recipe's dish description as a food photo.

  dish class       -> container (plate, bowl, cup, tray, skillet, board, basket), base colour
  ingredients      -> pieces: a hue and a shape per ingredient (with confusable pairs: tomato vs red
                      bell pepper, blueberries vs blackberries, ...), piece count ~ quantity
  cooking method   -> colour shift (browned, golden, pale, charred with grill marks, ...)
  cut              -> piece size (whole > sliced > diced > minced), named in the ingredient
                      lines and the instructions

and then disturbed like a real photo: random table/cloth background, position, scale, rotation,
lighting, colour temperature, blur and JPEG quality 50-95. Every photo is drawn from its own
generator (`render_photo`'s seed), so it does not depend on which process renders it.

Any change to what is drawn here changes the built-in dataset: bump `synthetic.VERSION`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xmodal.data.builtin.recipes import INGREDIENT_BY_NAME, METHODS, hex_rgb

_CONTAINERS = {  # rim colour, food-area shape
    "plate": ("f4f2ee", "circle"), "bowl": ("3a6a9a", "circle"), "cup": ("e8e0d0", "circle"),
    "tray": ("8a8a90", "rect"), "skillet": ("262626", "circle"), "board": ("a8784a", "rect"),
    "basket": ("b08040", "circle"),
}  # fmt: skip
_CUTS = {"whole": (1.0, 1.0), "sliced": (0.8, 0.45), "diced": (0.5, 1.0), "minced": (0.28, 1.0)}
_CUT_COUNT = {"whole": 1.0, "sliced": 1.6, "diced": 2.2, "minced": 3.0}


def _shift(rgb: tuple[int, int, int], method: str) -> tuple[int, int, int]:
    target, frac, _ = METHODS[method]
    t = hex_rgb(target)
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


def render(dish: dict, image_size: int, rng: np.random.Generator) -> Image.Image:
    size = image_size * 2  # the dish is drawn at 2x and downsampled, for anti-aliased shapes
    bg = Image.fromarray(_background(rng, image_size))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    c = size / 2
    scale = rng.uniform(0.8, 1.05)
    rim_rgb, area = _CONTAINERS[dish["container"]]
    rim = hex_rgb(rim_rgb)
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
    pieces = sorted(dish["pieces"], key=lambda p: -INGREDIENT_BY_NAME[p[0]]["size"])
    for name, cut, level in pieces:
        ing = INGREDIENT_BY_NAME[name]
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


def render_photo(task: tuple) -> None:
    """Worker: renders one photo, writes it as JPEG (quality 50-95, from the photo's own seed)."""
    dish, image_size, seed, path = task
    rng = np.random.default_rng(seed)
    img = render(dish, image_size, rng)
    img.save(path, format="JPEG", quality=int(rng.integers(50, 96)))
