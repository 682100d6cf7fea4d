"""A restricted unpickler for PyTorch state dicts: tensors come back as `LazyArray`s, and no
pickled reference can reach real code.

A ``.pth`` file is a pickle. Loading it with `pickle` (or ``torch.load`` without
``weights_only``) runs whatever code its globals name. `StateDictUnpickler` maps the handful of
globals a state dict references (``collections.OrderedDict``, ``torch._utils._rebuild_tensor*``,
``torch.*Storage``) to local stand-ins and refuses everything else with a one-line error; storages
(``persistent_load``) become `Storage` readers supplied by the file layout
(`jaxstyle.sources.torch_pth`), so a tensor's bytes are read only when asked for.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.sources.layers import LazyArray


@dataclasses.dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only the element type matters."""

    name: str
    dtype: np.dtype  # little-endian; bfloat16 is read as uint16 and widened
    bfloat16: bool = False


_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


@dataclasses.dataclass(frozen=True)
class Storage:
    """A storage's bytes in the file: ``read(start, count)`` returns ``count`` elements from
    element ``start`` as an array of the storage's (file-order) dtype."""

    type: StorageType
    numel: int
    read_bytes: Callable[[int, int], bytes]  # (byte offset, byte count) -> bytes
    offset: int = 0  # element offset of a legacy storage view into its root

    def read(self, start: int, count: int) -> np.ndarray:
        if start < 0 or count < 0 or start + count > self.numel:
            raise ValueError(f"tensor reaches past its storage ({start + count} > {self.numel})")
        itemsize = self.type.dtype.itemsize
        data = self.read_bytes((self.offset + start) * itemsize, count * itemsize)
        if len(data) != count * itemsize:
            raise EOFError("tensor data ends early")
        return np.frombuffer(data, dtype=self.type.dtype)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any) -> LazyArray:
    """A lazy tensor ``storage[offset:]`` viewed with ``size`` and ``stride`` (in elements)."""
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    if len(shape) != len(strides) or min(shape + strides, default=0) < 0:
        raise pickle.UnpicklingError("bad tensor geometry")
    # Elements actually touched: [offset, offset + span). Only those bytes are read.
    span = 0 if 0 in shape else 1 + sum((n - 1) * s for n, s in zip(shape, strides))

    def read() -> np.ndarray:
        flat = storage.read(offset, span)
        if storage.type.bfloat16:  # bfloat16 is the top half of a float32
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(flat, shape, tuple(s * item for s in strides),
                                               writeable=False)

    dtype = np.dtype(np.float32) if storage.type.bfloat16 else storage.type.dtype
    return LazyArray(shape, dtype, read)


def _rebuild_tensor(storage, storage_offset, size, stride):  # torch._utils._rebuild_tensor
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):  # torch._utils._rebuild_tensor_v2
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):  # nn.Parameter
    if not isinstance(data, LazyArray):
        raise pickle.UnpicklingError("parameter without a tensor")
    return data


def _allowed_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """(module, name) -> a factory of the local stand-in. Each reference gets a fresh stand-in, so
    that a pickle's BUILD opcodes (which can set attributes) cannot alter shared objects."""
    functions = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
                 "_rebuild_parameter": _rebuild_parameter}
    allowed: dict[tuple[str, str], Callable[[], Any]] = {
        ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # a C type: immutable
    }
    for name, function in functions.items():
        allowed["torch._utils", name] = functools.partial(functools.partial, function)
    for name, dtype in _STORAGE_DTYPES.items():
        factory = functools.partial(StorageType, name, np.dtype(dtype), name == "BFloat16Storage")
        allowed["torch", name] = allowed["torch.cuda", name] = factory
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into `LazyArray`s. ``find_class`` hands out only local
    stand-ins, so no pickled reference can reach real code; ``persistent_load`` turns storage
    references into `Storage` readers made by ``make_storage``."""

    def __init__(self, file: BinaryIO, path: Path,
                 make_storage: Callable[[tuple], Storage] | None = None):
        super().__init__(file, encoding="utf-8")  # utf-8: Python 2 era files pickle str as bytes
        self._path = path
        self._make_storage = make_storage

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise JaxstyleError(f"refusing to load {self._path}: its pickle references "
                                f"{module}.{name}, which a weights file never needs")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        if self._make_storage is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            what = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise JaxstyleError(f"refusing to load {self._path}: its pickle references a "
                                f"{what!r} object, which a weights file never needs")
        if len(pid) < 5 or not isinstance(pid[1], StorageType):
            raise pickle.UnpicklingError(f"bad storage reference {pid[:2]!r}")
        return self._make_storage(pid)


def state_dict_tensors(path: Path, obj: Any) -> dict[str, LazyArray]:
    """The tensors of an unpickled state dict (maybe wrapped as ``{"state_dict": ...}``)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise JaxstyleError(f"{path} holds a pickled {type(obj).__name__}, not a state dict: "
                            f"give a VGG-19 state-dict .pth file")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, LazyArray)}
