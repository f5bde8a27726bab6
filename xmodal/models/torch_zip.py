"""Read a `torch.save` file with numpy alone: the zip format PyTorch writes since 1.6 (the
released H-T `model-best.ckpt`, most `.pth`/`.pt` files).

The zip holds `<name>/data.pkl` (a pickle of the object; each tensor is a call of
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` whose storage is a
persistent id `('storage', torch.<Type>Storage, key, location, numel)`) and `<name>/data/<key>`
(each storage's raw bytes, in `<name>/byteorder`'s order, little-endian when absent). The pickle
is read by `RestrictedUnpickler` allowing exactly those globals and `collections.OrderedDict`:
a file that names anything else (code, a tensor subclass, a sparse layout) is refused before
anything runs. Views that share a storage, offsets and non-contiguous strides are rebuilt as
`torch.load` rebuilds them, then copied (no array aliases another).
"""

from __future__ import annotations

import collections
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from xmodal.data.safe_pickle import RestrictedUnpickler

# torch.<Type>Storage -> the numpy dtype of its elements.
STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
WHAT = "tensors (torch._utils._rebuild_tensor_v2 of torch.<Type>Storage) and OrderedDicts"


class _StorageType:
    """Stands in for `torch.<Type>Storage` in the pickle: only its element dtype is used."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor_v2(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """The tensor `storage[offset:]` viewed with `size` and `stride` (in elements), copied;
    a view that reaches outside its storage (a forged file) is an error, not a read."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
        raise ValueError(f"tensor with size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise ValueError(
            f"tensor of size {size}, stride {stride} at offset {offset} reaches element {last} "
            f"of a storage of {storage.size}"
        )
    step = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * step for s in stride], writeable=False
    )
    return np.array(view, copy=True)


class _TorchUnpickler(RestrictedUnpickler):
    def __init__(self, file: BinaryIO, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        allowed.update({("torch", n): _StorageType(n) for n in STORAGE_DTYPES})
        super().__init__(file, allowed, what=WHAT, encoding="utf-8")
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}  # views of one storage share its array

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}: not a tensor storage")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType):
            raise ValueError(f"storage of {kind!r}: expected a torch.<Type>Storage")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = kind.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"storage {key} holds {len(raw)} bytes, {numel} elements expected")
            array = np.frombuffer(raw, dtype, count=numel)
            self._storages[key] = array.astype(kind.dtype.newbyteorder("="), copy=False)
        return self._storages[key]


def is_torch_zip(path: str) -> bool:
    """Whether `path` is a zip with one `<name>/data.pkl` (torch.save's format since 1.6)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return len(_records(z)) == 1


def _records(z: zipfile.ZipFile) -> list[str]:
    return [n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1]


def load(path: str) -> Any:
    """The object a `torch.save` zip file holds, tensors as numpy arrays (bfloat16 as
    `ml_dtypes.bfloat16`); a ValueError naming the file when it is not one or names a global
    outside `WHAT`."""
    try:
        with zipfile.ZipFile(path) as z:
            records = _records(z)
            if len(records) != 1:
                raise ValueError("no <name>/data.pkl record: not a torch.save zip file")
            prefix = records[0][: -len("data.pkl")]
            names = set(z.namelist())
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = z.read(f"{prefix}byteorder").decode().strip()
            with z.open(records[0]) as f:
                return _TorchUnpickler(f, z, prefix, byteorder).load()
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read {path!r} as a torch.save file: {e}") from None
    except Exception as e:  # pickle.UnpicklingError and what a forged pickle's opcodes raise
        raise ValueError(f"cannot read {path!r} as a torch.save file: {e}") from None
