"""Reading pickles that hold only plain data, without running anything.

Recipe1M's `classes1M.pkl` and H-T's released `vocab.pkl` are dicts and lists of ids, indices and
words: none needs a global. A plain `pickle.load` would run whatever code a forged file names, so
these files are read with `PlainUnpickler`, which builds only what pickle's own opcodes make.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO


class PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (dict, list, tuple, set, str, bytes, int, float,
    bool, None); any class or function a pickle names is refused before it can run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refused global {module}.{name}: only plain dicts, lists, strings and numbers are read"
        )


def plain_loads(f: BinaryIO, count: int) -> list[Any]:
    """The first `count` pickles of `f`, in order, read with `PlainUnpickler` (text as UTF-8, so
    Python 2 pickles read too). Raises what pickle raises on a forged or truncated file."""
    reader = PlainUnpickler(f, encoding="utf-8")
    return [reader.load() for _ in range(count)]
