"""Small shared data fixtures for the data tests (imported explicitly; not a conftest)."""

from __future__ import annotations

import os

import pytest

from xmodal.data import synthetic

SMALL = dict(num_recipes=300, image_size=48, seed=0)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 300-recipe synthetic raw layout (written once per session and module importing it)."""
    out = str(tmp_path_factory.mktemp("raw"))
    synthetic.write_raw_dataset(out, **SMALL, num_workers=2)
    return out


def image_file(raw_dir: str, partition: str, image_id: str) -> str:
    return os.path.join(raw_dir, partition, *image_id[:4], image_id)
