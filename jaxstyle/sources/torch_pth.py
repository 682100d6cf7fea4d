"""PyTorch VGG-19 state dicts (torchvision ``vgg19-dcbb9e9d.pth``, the Caffe conversion
``vgg19-d01eb7cb.pth``): keys ``features.N.weight`` (OIHW) and ``features.N.bias``, read without
torch.

PyTorch has written two layouts over the years and both are read: the zip archive of torch >= 1.6
(``archive/data.pkl`` plus one uncompressed member per storage) and the older "legacy" stream of
pickles (which is what the 2017 model-zoo files are). Both unpickle through the restricted
`jaxstyle.sources.torch_pickle.StateDictUnpickler`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from jaxstyle.errors import JaxstyleError
from jaxstyle.models.vgg19 import CONV_LAYERS
from jaxstyle.sources.layers import LazyArray, LazyLayer, make_layer
from jaxstyle.sources.torch_pickle import StateDictUnpickler, Storage, state_dict_tensors

#: The first bytes of a zip archive (torch >= 1.6).
ZIP_MAGIC = b"PK\x03\x04"
#: pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2): the magic number that opens a legacy torch file.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

#: Index in torchvision's ``features`` Sequential of each convolution (ReLUs and pools between).
TORCH_FEATURE_INDEX: dict[str, int] = dict(zip(
    (name for name, _, _ in CONV_LAYERS),
    (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))


def torch_key(name: str, part: str) -> str:
    """(conv3_2, "weight") -> features.12.weight (torchvision's state-dict key)."""
    return f"features.{TORCH_FEATURE_INDEX[name]}.{part}"


def _torch_layers(path: Path, tensors: dict[str, LazyArray]) -> list[LazyLayer]:
    """The sixteen convolutions among a state dict's tensors, by torchvision's keys."""
    # Accept keys with a wrapper prefix ("module.features.0.weight", "vgg.features...").
    by_suffix = {}
    for key, value in tensors.items():
        i = key.find("features.")
        if i >= 0:
            by_suffix.setdefault(key[i:], value)
    layers = []
    for name, _, _ in CONV_LAYERS:
        weight, bias = (by_suffix.get(torch_key(name, part)) for part in ("weight", "bias"))
        if weight is None or bias is None:
            missing = torch_key(name, "weight" if weight is None else "bias")
            raise JaxstyleError(f"{path} has no weights for {name} (key {missing}): this is not a "
                                f"complete VGG-19 state dict")
        layers.append(make_layer(path, name, weight, bias, "OIHW"))
    return layers


@contextlib.contextmanager
def open_layers(path: Path) -> Iterator[list[LazyLayer]]:
    """The sixteen layers of a PyTorch state-dict file (zip or legacy), checked but unread, while
    the file is open."""
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
            tensors = _zip_tensors(path, f)
        else:
            tensors = _legacy_tensors(path, f)
        yield _torch_layers(path, tensors)


def _file_reader(f: BinaryIO, base: int, limit: int) -> Callable[[int, int], bytes]:
    """Reads ``count`` bytes at ``base + offset`` of ``f``, never past ``base + limit``."""
    def read(offset: int, count: int) -> bytes:
        if offset + count > limit:
            raise EOFError("tensor data ends early")
        f.seek(base + offset)
        return f.read(count)
    return read




# --- zip archives (torch >= 1.6) ---------------------------------------------------------------


def _zip_tensors(path: Path, f: BinaryIO) -> dict[str, LazyArray]:
    f.seek(0)
    archive = zipfile.ZipFile(f)
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise JaxstyleError(f"{path} is a zip file but not a PyTorch weights file (no data.pkl): "
                            f"give a VGG-19 .pth file")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip()
    if byteorder not in ("little", "big"):
        raise ValueError(f"unknown byteorder {byteorder!r}")
    storages: dict[str, Storage] = {}

    def make_storage(pid: tuple) -> Storage:
        _, storage_type, key, _location, numel = pid[:5]
        if key not in storages:
            if byteorder == "big":
                storage_type = dataclasses.replace(storage_type,
                                                   dtype=storage_type.dtype.newbyteorder(">"))
            reader = _zip_member_reader(archive, f, f"{prefix}data/{key}")
            storages[key] = Storage(storage_type, int(numel), reader)
        return storages[key]

    data = archive.read(pickles[0])
    obj = StateDictUnpickler(io.BytesIO(data), path, make_storage).load()
    return state_dict_tensors(path, obj)


def _zip_member_reader(archive: zipfile.ZipFile, f: BinaryIO,
                       name: str) -> Callable[[int, int], bytes]:
    """Random access to a zip member. torch stores members uncompressed, so their bytes lie in the
    file as they are: read them with seek + read (zipfile's own seek may read and drop up to 16 MB)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return lambda offset, count: archive.read(name)[offset: offset + count]
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != ZIP_MAGIC:
        raise zipfile.BadZipFile(f"bad local header for {name}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return _file_reader(f, info.header_offset + 30 + name_len + extra_len, info.file_size)


# --- legacy stream of pickles (torch < 1.6, e.g. the 2017 model-zoo files) ----------------------


def _legacy_tensors(path: Path, f: BinaryIO) -> dict[str, LazyArray]:
    """Layout: pickled magic number, protocol version, sys_info; the pickled object (storages as
    persistent ids ``('storage', type, key, location, numel, view)``); the pickled list of storage
    keys; then per key, in that order, an int64 element count and the raw elements."""
    f.seek(0)
    header = StateDictUnpickler(f, path)
    magic, protocol, sys_info = header.load(), header.load(), header.load()
    if magic != 0x1950A86A20F9469CFC6C or protocol != 1001 or not isinstance(sys_info, dict):
        raise pickle.UnpicklingError("bad legacy header")
    little = bool(sys_info.get("little_endian", True))
    roots: dict[str, Storage] = {}
    views: dict[str, Storage] = {}
    slots: dict[str, dict] = {}  # key -> {"reader": ...}: filled after the key list is read

    def make_storage(pid: tuple) -> Storage:
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        if key not in roots:
            if not little:
                storage_type = dataclasses.replace(storage_type,
                                                   dtype=storage_type.dtype.newbyteorder(">"))
            slot = slots.setdefault(key, {})
            roots[key] = Storage(storage_type, int(numel), lambda o, c: slot["reader"](o, c))
        if view is None:
            return roots[key]
        view_key, view_offset, view_size = view
        if view_key not in views:
            views[view_key] = dataclasses.replace(roots[key], numel=int(view_size),
                                                  offset=int(view_offset))
        return views[view_key]

    obj = StateDictUnpickler(f, path, make_storage).load()
    keys = StateDictUnpickler(f, path).load()
    if not isinstance(keys, list) or set(keys) != set(roots):
        raise pickle.UnpicklingError("storage key list does not match the storages")
    _locate_legacy_storages(f, keys, roots, slots, little)
    return state_dict_tensors(path, obj)


def _locate_legacy_storages(f: BinaryIO, keys: list, roots: dict[str, Storage],
                            slots: dict[str, dict], little: bool) -> None:
    """Walks the data section (without reading the data) to find where each storage's bytes lie."""
    size = os.fstat(f.fileno()).st_size
    position = f.tell()
    for key in keys:
        f.seek(position)
        count_bytes = f.read(8)
        if len(count_bytes) != 8:
            raise EOFError("storage data ends early")
        (count,) = struct.unpack("<q" if little else ">q", count_bytes)
        nbytes = count * roots[key].type.dtype.itemsize
        if count != roots[key].numel or position + 8 + nbytes > size:
            raise EOFError(f"storage {key} is cut short")
        slots[key]["reader"] = _file_reader(f, position + 8, nbytes)
        position += 8 + nbytes
