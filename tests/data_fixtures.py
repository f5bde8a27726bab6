"""Small shared data fixtures for the data tests (imported explicitly; not a conftest)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from PIL import Image

from xmodal.data.builtin import dataset as synthetic

EXIF_ORIENTATION = 0x0112

SMALL = dict(num_recipes=300, image_size=48, seed=0)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 300-recipe synthetic raw layout (written once per session and module importing it)."""
    out = str(tmp_path_factory.mktemp("raw"))
    synthetic.write_raw_dataset(out, **SMALL, num_workers=2)
    return out


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
