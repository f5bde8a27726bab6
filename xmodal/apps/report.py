"""A self-contained HTML report of a checkpoint: `python -m xmodal.apps.report --workdir=DIR
[--config=configs/tnlbt.py:preset] [--split=test]` -> WORKDIR/report_<split>.html.

Sections: the metric table of both directions (bag protocol + whole split), recall@K curves
(inline SVG), a gallery of queries with their top-5 results (true match marked; photos embedded as
base64 JPEG thumbnails) and a 2-D t-SNE map of image and recipe embeddings coloured by class (by
modality for a dataset without class labels) with matching pairs linked (as in the papers'
figures; needs scikit-learn: `pip install 'xmodal[report]'`). No scripts and no external
resources: it opens from a file, offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from xmodal import evaluate
from xmodal.data import pipeline, records
from xmodal.models import gan

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
]
THUMB = 150  # px, the side of the square photo thumbnails (query cards show them at full size)
# Up to this many points the t-SNE runs on one OpenMP thread: its 1000 Barnes-Hut iterations each
# end in a thread barrier, which on a busy CPU costs more than the work (24 points: 43 s with the
# default threads vs 0.15 s with one, on a loaded 2-core machine; 600 points: 4 s with one).
SERIAL_TSNE_POINTS = 4000
MODALITY_COLOURS = {"photo": "#1f77b4", "recipe": "#ff7f0e"}  # map colours without class labels
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table.m{border-collapse:collapse}table.m td,table.m th{border:1px solid #ccc;padding:4px 10px;
text-align:right}table.m th{background:#f4f4f4}.q{display:flex;gap:10px;margin:10px 0;
align-items:flex-start;border-bottom:1px solid #eee;padding-bottom:8px}.card{width:130px;
font-size:11px}.card img{width:120px;height:120px;object-fit:cover;border:3px solid transparent}
.hit img,.hit .txt{border:3px solid #2ca02c}.txt{border:3px solid transparent;padding:3px;
min-height:60px;background:#fafafa}.qcard{width:170px;font-size:12px;font-weight:600}
.qcard img{width:150px;height:150px;object-fit:cover}
.rank{color:#777}.muted{color:#777;font-size:12px}
"""


def thumbnail(jpeg: bytes, size: int = THUMB) -> str:
    """A data: URI of a `size` x `size` JPEG: the photo's centre square (what evaluation embeds,
    and what a square card shows of a wide or tall photo without upscaling it), EXIF
    orientation honoured."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB")
    img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def first_photos(data_dir: str, split: str, indices: Sequence[int]) -> dict[int, bytes]:
    """JPEG bytes of the first photo of the given records (only those are read)."""
    source = pipeline.open_split(data_dir, split)
    got = source.__getitems__([int(i) for i in indices])
    return {
        int(i): records.decode_record(d)["images"][0] for i, d in zip(indices, got, strict=True)
    }


def metric_table(results: dict[str, Any]) -> str:
    rows = []
    for d in evaluate.DIRECTIONS:
        for label, m in results.get(d, {}).items():
            cells = "".join(
                f"<td>{m[k]['mean']:.2f} ± {m[k]['std']:.2f}</td>"
                for k in ("medR", *[f"R@{r}" for r in evaluate.RECALL_AT])
            )
            rows.append(f"<tr><td style='text-align:left'>{d}</td><td>{label}</td>{cells}</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("direction", "bag", "medR", "R@1", "R@5", "R@10"))
    return f"<table class='m' id='metrics'><tr>{head}</tr>{''.join(rows)}</table>"


def recall_curve_svg(ranks: dict[str, np.ndarray], max_k: int, w: int = 560, h: int = 320) -> str:
    """Recall@K (%) for K = 1..max_k, one polyline per direction, log-scaled K axis."""
    pad = 48
    ks = np.unique(np.round(np.geomspace(1, max_k, 60)).astype(int))
    x = lambda k: pad + (w - 2 * pad) * np.log(k) / np.log(max(max_k, 2))
    y = lambda r: h - pad - (h - 2 * pad) * r / 100.0
    parts = [f"<svg id='recall-curve' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>"]
    parts.append(f"<rect width='{w}' height='{h}' fill='white' stroke='#ccc'/>")
    for r in (0, 25, 50, 75, 100):
        parts.append(
            f"<line x1='{pad}' x2='{w - pad}' y1='{y(r):.1f}' y2='{y(r):.1f}' stroke='#eee'/>"
            f"<text x='{pad - 6}' y='{y(r) + 4:.1f}' font-size='11' text-anchor='end'>{r}</text>"
        )
    for k in sorted({1, 5, 10, 50, 100, 500, 1000, max_k}):
        if k <= max_k:
            parts.append(
                f"<text x='{x(k):.1f}' y='{h - pad + 16}' font-size='11' "
                f"text-anchor='middle'>{k}</text>"
            )
    parts.append(
        f"<text x='{w / 2}' y='{h - 8}' font-size='12' text-anchor='middle'>K (log scale)</text>"
        f"<text x='14' y='{h / 2}' font-size='12' transform='rotate(-90 14 {h / 2})' "
        "text-anchor='middle'>recall@K (%)</text>"
    )
    for (name, r), colour in zip(ranks.items(), ("#1f77b4", "#d62728"), strict=False):
        pts = " ".join(f"{x(k):.1f},{y(100.0 * np.mean(r <= k)):.1f}" for k in ks)
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{pts}'/>")
        ly = 20 + 16 * list(ranks).index(name)
        parts.append(
            f"<line x1='{w - 190}' x2='{w - 170}' y1='{ly}' y2='{ly}' stroke='{colour}' "
            f"stroke-width='2'/><text x='{w - 165}' y='{ly + 4}' font-size='12'>{name}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def is_labelled(classes: Sequence[int]) -> bool:
    """Whether any pair has a class (0 is Recipe1M's background / unlabelled)."""
    return any(int(c) > 0 for c in classes)


def tsne_map_svg(
    image: np.ndarray, recipe: np.ndarray, classes: Sequence[int], *, seed: int = 0, size: int = 640
) -> str:
    """t-SNE of image and recipe embeddings together; circles = photos, squares = recipes,
    colour = class (or, when no pair has a class label, modality: a dataset without
    classes1M.pkl), a grey line joins each matching pair."""
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError as e:
        raise ImportError("the 2-D map needs scikit-learn: pip install 'xmodal[report]'") from e
    n = len(image)
    both = np.concatenate([image, recipe]).astype(np.float32)
    # sklearn needs perplexity < number of points (2n); a 1-pair map still gets drawn.
    perplexity = float(min(30, max(2, (2 * n - 1) // 3), 2 * n - 1))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(1 if len(both) <= SERIAL_TSNE_POINTS else None, user_api="openmp"):
        xy = tsne.fit_transform(both)
    lo, hi = xy.min(0), xy.max(0)
    xy = 20 + (size - 40) * (xy - lo) / np.maximum(hi - lo, 1e-9)
    labelled = is_labelled(classes)

    def fills(c: int) -> tuple[str, str]:  # (photo, recipe) colours of a pair of class c
        if not labelled:
            return MODALITY_COLOURS["photo"], MODALITY_COLOURS["recipe"]
        fill = PALETTE[int(c) % len(PALETTE)] if int(c) > 0 else "#aaaaaa"
        return fill, fill

    parts = [
        f"<svg id='tsne-map' xmlns='http://www.w3.org/2000/svg' width='{size}' "
        f"height='{size}'><rect width='{size}' height='{size}' fill='white' stroke='#ccc'/>"
    ]
    for i in range(n):
        (x1, y1), (x2, y2) = xy[i], xy[n + i]
        parts.append(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
            "stroke='#999' stroke-opacity='0.5'/>"
        )
    for i in range(n):
        (x1, y1), (x2, y2) = xy[i], xy[n + i]
        c1, c2 = fills(classes[i])
        parts.append(f"<circle class='img' cx='{x1:.1f}' cy='{y1:.1f}' r='4' fill='{c1}'/>")
        parts.append(
            f"<rect class='rec' x='{x2 - 3.5:.1f}' y='{y2 - 3.5:.1f}' width='7' height='7' "
            f"fill='{c2}' stroke='#333' stroke-width='0.6'/>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _recipe_card(item: dict[str, Any], rank: int, hit: bool) -> str:
    ingr = ", ".join((item.get("clean_ingredients") or item.get("ingredients") or [])[:6])
    return (
        f"<div class='card{' hit' if hit else ''}'><div class='txt'><span class='rank'>#{rank}"
        f"{' ✓' if hit else ''}</span> <b>{html.escape(item.get('title', ''))}</b><br>"
        f"<span class='muted'>{html.escape(ingr)}</span></div></div>"
    )


def _photo_card(uri: str, rank: int, hit: bool, caption: str) -> str:
    return (
        f"<div class='card{' hit' if hit else ''}'><img src='{uri}'><br><span class='rank'>"
        f"#{rank}{' ✓' if hit else ''}</span> {html.escape(caption)}</div>"
    )


def query_gallery(
    image: np.ndarray,
    recipe: np.ndarray,
    items: list[dict[str, Any]],
    photos: dict[int, bytes],
    queries: Sequence[int],
    k: int = 5,
) -> str:
    """Image -> recipe and recipe -> image queries with their top-k, the true match marked."""
    from xmodal.apps.gallery import ExactSearch

    thumbs = {i: thumbnail(b) for i, b in photos.items()}
    _, i2r = ExactSearch(recipe).search(image[list(queries)], k)
    _, r2i = ExactSearch(image).search(recipe[list(queries)], k)
    out = ["<h3>image → recipe</h3>"]
    for q, hits in zip(queries, i2r, strict=True):
        cards = "".join(_recipe_card(items[h], r + 1, h == q) for r, h in enumerate(hits))
        out.append(
            f"<div class='q i2r'><div class='qcard'><img src='{thumbs[q]}'><br>"
            f"true: {html.escape(items[q].get('title', ''))}</div>{cards}</div>"
        )
    out.append("<h3>recipe → image</h3>")
    for q, hits in zip(queries, r2i, strict=True):
        cards = "".join(
            _photo_card(thumbs[h], r + 1, h == q, items[h].get("title", "")[:40])
            for r, h in enumerate(hits)
        )
        out.append(
            f"<div class='q r2i'>{_recipe_card(items[q], 0, False).replace('#0', 'query')}"
            f"{cards}</div>"
        )
    return "\n".join(out)


def generated_section(
    model: Any,
    recipe: np.ndarray,
    items: Sequence[dict[str, Any]],
    photos: dict[int, bytes],
    queries: Sequence[int],
) -> str:
    """For a run trained with a generator (config.adversarial): each query recipe's photo beside
    the dish image generated from it (seed 0, one draw per query in order); otherwise nothing."""
    state = getattr(model, "state", None)
    if (
        state is None
        or state.adversarial is None
        or not gan.has_generator(model.config.adversarial)
    ):
        return ""
    from xmodal.generation import DishGenerator

    images, _ = DishGenerator(model.run, state).generate(recipe[list(queries)], seed=0)
    cards = []
    for q, image in zip(queries, images, strict=True):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        generated = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        title = html.escape(items[q]["title"])
        cards.append(
            f"<div class='q'><div class='card'><img src='{thumbnail(photos[q])}'><br>{title}"
            f"</div><div class='card'><img src='{generated}'><br>generated from its recipe"
            "</div></div>"
        )
    return (
        '<h2 id="generated-section">Recipes and the dishes generated from them</h2>\n'
        f"<p class='muted'>{model.config.adversarial.image_size} px images from the run's "
        "generator, beside each query's photo.</p>\n" + "\n".join(cards)
    )


def build_report(
    model: Any,
    split: str,
    *,
    limit: int | None = None,
    num_queries: int = 6,
    map_points: int = 300,
    seed: int = 0,
) -> str:
    """The report's HTML for `split` embedded with `model` (an `inference.RetrievalModel`)."""
    config = model.config
    image, recipe = model.embed_split(split, limit=limit)
    items = pipeline.split_metadata(
        model.data_dir,
        split,
        limit=limit,
        fields=("id", "title", "clean_ingredients", "ingredients", "class_id"),
    )
    n = len(image)
    results = {
        "step": model.step,
        "split": split,
        "n_pairs": n,
        **evaluate.protocol_metrics(image, recipe, config, split=split),
    }
    ranks = {
        "image → recipe": evaluate.retrieval_ranks(image, recipe),
        "recipe → image": evaluate.retrieval_ranks(recipe, image),
    }
    rng = np.random.default_rng(seed)
    queries = sorted(rng.choice(n, size=min(num_queries, n), replace=False).tolist())
    from xmodal.apps.gallery import ExactSearch

    shown = set(queries)
    shown.update(ExactSearch(image).search(recipe[queries], 5)[1].ravel().tolist())
    photos = first_photos(model.data_dir, split, sorted(shown))
    m = min(map_points, n)
    idx = np.sort(rng.choice(n, size=m, replace=False))
    classes = [items[i]["class_id"] for i in idx]
    tsne = tsne_map_svg(image[idx], recipe[idx], classes, seed=seed)
    colour_key = (
        "colour = class (grey: unlabelled)"
        if is_labelled(classes)
        else "colour = modality (<span style='color:{photo}'>photos</span>, <span "
        "style='color:{recipe}'>recipes</span>): these pairs have no class labels".format(
            **MODALITY_COLOURS
        )
    )
    title = f"xmodal report — {config.method}:{config.preset}, {split}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="muted">checkpoint step {model.step} · {n} pairs · data {html.escape(model.data_dir)}</p>
<h2 id="metrics-section">Retrieval metrics</h2>
<p class="muted">medR (1-based, lower is better) and R@K (%), mean ± std over bags; "full" ranks
the whole split at once. Ties count against the model.</p>
{metric_table(results)}
<h2 id="recall-section">Recall@K on the whole split</h2>
{recall_curve_svg(ranks, max_k=n)}
<h2 id="gallery-section">Queries and their top-5</h2>
<p class="muted">Green border and ✓: the true match.</p>
{query_gallery(image, recipe, items, photos, queries)}
{generated_section(model, recipe, items, photos, queries)}
<h2 id="map-section">Embedding map (t-SNE)</h2>
<p class="muted">{m} pairs: circles are photos, squares recipes; {colour_key}; lines join each
photo to its recipe.</p>
{tsne}
</body></html>
"""


def write_report(model: Any, workdir: str, split: str, **kwargs: Any) -> str:
    path = os.path.join(workdir, f"report_{split}.html")
    with open(path, "w") as f:
        f.write(build_report(model, split, **kwargs))
    return path


def main(argv: Sequence[str] | None = None) -> str:
    import argparse

    from xmodal.apps import cli

    p = argparse.ArgumentParser(
        prog="python -m xmodal.apps.report", description=__doc__.split("\n")[0]
    )
    cli.add_run_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="first N pairs of the split")
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--map_points", type=int, default=300)
    args = cli.parse_args(p, argv)
    model = cli.open_model(args)
    config = model.config
    split = args.split or config.eval.split
    path = write_report(
        model,
        args.workdir,
        split,
        limit=args.limit,
        num_queries=args.queries,
        map_points=args.map_points,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
