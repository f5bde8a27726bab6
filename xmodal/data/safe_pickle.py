"""Reading pickles made by other projects without running their code.

A plain `pickle.load` calls whatever class or function the file names (`os.system` included).
`RestrictedUnpickler` builds what pickle's own opcodes make (dict, list, tuple, str, bytes, int,
float, bool, None) and, of the globals a file names, exactly those in `allowed`; any other is
refused before it can run. classes1M.pkl and the released H-T `vocab.pkl` need none
(`plain_loads`); the released H-T `args.pkl` needs `argparse.Namespace` (and numpy's scalar
rebuild); a `torch.save` file the tensor rebuild and the storage classes
(`xmodal.models.torch_zip`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO

PLAIN = "plain dicts, lists, strings and numbers"


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals are exactly `allowed` ((module, name) -> the object to
    use, which may be a safe stand-in); `what` names the allowed content in the refusal."""

    def __init__(
        self,
        file: BinaryIO,
        allowed: Mapping[tuple[str, str], Any] | None = None,
        *,
        what: str = PLAIN,
        **kwargs: Any,
    ):
        super().__init__(file, **kwargs)
        self._allowed = dict(allowed or {})
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only {self._what} are read"
            ) from None


def plain_loads(f: BinaryIO, count: int) -> list[Any]:
    """The first `count` pickles of `f`, in order, with no global allowed (text as UTF-8, so
    Python 2 pickles read too). Raises what pickle raises on a forged or truncated file."""
    reader = RestrictedUnpickler(f, encoding="utf-8")
    return [reader.load() for _ in range(count)]
