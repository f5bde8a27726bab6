"""The time and disk estimate `prepare` prints before the photos: a timed sample of photos and
recipe texts, extrapolated to the shards still to write and to full Recipe1M.
"""

from __future__ import annotations

import time
from typing import Any

from xmodal.data import records
from xmodal.data.photos import PhotoSpec
from xmodal.data.raw.shards import Shard, load_recipe_photos, tokenize_recipes

ESTIMATE_SAMPLE = 32  # photos timed before the run for the time / disk estimate
# Recipe1M as released (layer1 / layer2), for the "full Recipe1M" line of the estimate.
RECIPE1M_RECIPES, RECIPE1M_IMAGES = 1_029_720, 887_706


def _human(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def estimate(
    shards: list[Shard], tok: Any, limits: dict, workers: int, spec: PhotoSpec
) -> dict[str, float]:
    """Times `ESTIMATE_SAMPLE` photos spread over `shards` (serially, here) and extrapolates time
    and disk to these shards and to full Recipe1M, assuming workers scale linearly."""
    recipes = [r for s in shards for r in s.recipes]
    paired = [r for s in shards if s.with_photos for r in s.recipes]
    n_images = sum(len(r.image_ids) for r in paired)
    step = max(1, len(paired) // ESTIMATE_SAMPLE)
    sample = [(r.image_ids[0], r.image_paths[0]) for r in paired[::step][:ESTIMATE_SAMPLE]]
    start, sizes = time.perf_counter(), []
    for iid, path in sample:
        for _, data, _, _ in load_recipe_photos(([iid], [path], spec)):
            if data is not None:
                sizes.append(len(data))
    per_image = (time.perf_counter() - start) / max(1, len(sample))
    text_sample = recipes[:: max(1, len(recipes) // 256)][:256]
    text_bytes = sum(
        len(records.encode_record(r)) for r in tokenize_recipes(tok, text_sample, limits)
    )
    per_recipe = text_bytes / max(1, len(text_sample))
    per_photo = sum(sizes) / max(1, len(sizes))
    return dict(
        sampled_images=len(sample),
        seconds_per_image=per_image,
        bytes_per_image=per_photo,
        bytes_per_recipe_text=per_recipe,
        workers=workers,
        seconds=n_images * per_image / workers,
        bytes=n_images * per_photo + len(recipes) * per_recipe,
        recipe1m_seconds=RECIPE1M_IMAGES * per_image / workers,
        recipe1m_bytes=RECIPE1M_IMAGES * per_photo + RECIPE1M_RECIPES * per_recipe,
        images=n_images,
        recipes=len(recipes),
    )


def print_estimate(e: dict[str, float]) -> None:
    print(
        f"[prepare] to do: {e['recipes']:,} recipes, {e['images']:,} photos; measured "
        f"{e['seconds_per_image'] * 1e3:.1f} ms/photo on {e['sampled_images']} photos, "
        f"~{e['bytes_per_image'] / 1e3:.0f} kB/photo -> about {_human(e['seconds'])} on "
        f"{e['workers']} workers and {e['bytes'] / 1e9:.2f} GB. Full Recipe1M "
        f"({RECIPE1M_IMAGES:,} photos): about {_human(e['recipe1m_seconds'])} and "
        f"{e['recipe1m_bytes'] / 1e9:.1f} GB.",
        flush=True,
    )
