"""JSON files the project reads and writes: `read_json` reads any file it is handed (dataset info,
a run's config, search inputs) with one clear error naming the file; `write_json` writes one
atomically, so another process of the job or a rerun after a crash never sees half of it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any


def parse_json(text: str | bytes, source: str, *, hint: str = "") -> Any:
    """`json.loads(text)`; malformed JSON is a ValueError naming `source`, the line and column
    (not a bare JSONDecodeError traceback), with `hint` (what the file is, how to redo it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"at line {e.lineno}, column {e.colno}" if e.doc.strip() else "(empty)"
        raise _error(f"{source} is not valid JSON {where}: {e.msg}", hint) from None
    except UnicodeDecodeError as e:
        raise _error(f"{source} is not UTF-8 text: {e.reason}", hint) from None


def read_json(
    path: str, *, kind: type | tuple[type, ...] = dict, keys: Sequence[str] = (), hint: str = ""
) -> Any:
    """The JSON file `path`, checked to be a `kind` (dict: a JSON object) at the top level
    holding `keys`; every fault is one ValueError naming the file."""
    with open(path, "rb") as f:
        data = parse_json(f.read(), path, hint=hint)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(data, kinds):
        want = " or ".join(_json_name(k) for k in kinds)
        raise _error(f"{path} holds a JSON {_json_name(type(data))}, expected a JSON {want}", hint)
    missing = [k for k in keys if k not in data]
    if missing:
        raise _error(f"{path} lacks {', '.join(map(repr, missing))}", hint)
    return data


def write_json(obj: Any, path: str, *, indent: int = 1, default: Any = None) -> None:
    """Atomic JSON write (a temporary file, then a rename): a reader, another process of the job
    or a rerun after a crash sees the old file or the whole new one, never half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, default=default)
    os.replace(tmp, path)


def _json_name(kind: type) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(kind, "number" if kind in (int, float) else kind.__name__)


def _error(message: str, hint: str) -> ValueError:
    return ValueError(f"{message}; {hint}" if hint else message)
