"""Small shared data helpers for the data tests (imported explicitly; not a conftest). The raw
layout they describe, `synthetic_raw`, is a conftest fixture: built once per worker."""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

EXIF_ORIENTATION = 0x0112

# the built-in raw layout of `synthetic_raw` (conftest.py)
SMALL = dict(num_recipes=300, image_size=48, seed=0)


def image_file(raw_dir: str, partition: str, image_id: str) -> str:
    return os.path.join(raw_dir, partition, *image_id[:4], image_id)


def save_camera_jpeg(img: Image.Image, target: Any, orientation: int | None = None, quality=88):
    """JPEG as a camera writes it; with an EXIF orientation the pixels are stored turned so that a
    viewer honouring the tag shows `img` upright (6: stored turned 90 degrees left, 8: right)."""
    exif = Image.Exif()
    if orientation == 6:
        img = img.transpose(Image.Transpose.ROTATE_90)
    elif orientation == 8:
        img = img.transpose(Image.Transpose.ROTATE_270)
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    img.save(target, "JPEG", quality=quality, exif=exif.tobytes())
