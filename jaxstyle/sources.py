"""Readers for the original VGG-19 weight files, one layer at a time.

Three files are supported, all holding the sixteen 3x3 convolutions of VGG-19:

* Keras ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (HDF5; kernels already HWIO);
* torchvision ``vgg19-dcbb9e9d.pth`` and the Caffe-converted ``vgg19-d01eb7cb.pth`` (PyTorch
  state dicts with keys ``features.N.weight`` (OIHW) / ``features.N.bias``). PyTorch has written
  two layouts over the years and both are read: the zip archive of torch >= 1.6 and the older
  "legacy" stream of pickles (which is what the 2017 model-zoo files are).

Every reader yields ``(name, kernel float32[3, 3, Cin, Cout] HWIO, bias float32[Cout])`` in the
order of `vgg19.CONV_LAYERS`, reading each tensor's bytes only when asked for, so a conversion holds
about one layer in memory.

PyTorch files are read without torch and without running pickled code: a restricted unpickler maps
the handful of globals a state dict references to local stand-ins and refuses everything else.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.models.vgg19 import CONV_LAYERS, Preprocessing

# ------------------------------------------------------------------------------------------------
# Conventions: how RGB in [0, 1] is fed to each set of weights.

#: Caffe's VGG (and Keras's copy of it): BGR, 0..255, minus the ImageNet mean, no std.
CAFFE = Preprocessing(bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68))
KERAS = CAFFE
#: torchvision: RGB in [0, 1], normalised by the ImageNet mean and std.
TORCHVISION = Preprocessing(bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225))
CONVENTIONS: dict[str, Preprocessing] = {"keras": KERAS, "torchvision": TORCHVISION, "caffe": CAFFE}
SOURCES: tuple[str, ...] = tuple(CONVENTIONS)

#: torchvision-style file names carry the first 8 hex digits of the file's sha256; the two known
#: .pth files share keys and shapes, so only the checksum tells their conventions apart.
KNOWN_SHA256_PREFIXES: dict[str, str] = {"dcbb9e9d": "torchvision", "d01eb7cb": "caffe"}

#: Index in torchvision's ``features`` Sequential of each convolution (ReLUs and pools between).
TORCH_FEATURE_INDEX: dict[str, int] = dict(zip(
    (name for name, _, _ in CONV_LAYERS),
    (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))

Layer = tuple[str, np.ndarray, np.ndarray]

# Formats, as detected from content.
H5, TORCH_ZIP, TORCH_LEGACY, SAFETENSORS = "keras-h5", "torch-zip", "torch-legacy", "safetensors"

_H5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
# pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2): the magic number that opens a legacy torch file.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_CHUNK = 1 << 20


def keras_group(name: str) -> str:
    """conv3_2 -> block3_conv2 (Keras's layer name)."""
    block, index = name[4:].split("_")
    return f"block{block}_conv{index}"


def torch_key(name: str, part: str) -> str:
    """(conv3_2, "weight") -> features.12.weight (torchvision's state-dict key)."""
    return f"features.{TORCH_FEATURE_INDEX[name]}.{part}"


# ------------------------------------------------------------------------------------------------
# Identification.


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """An identified original weights file: where, which layout, which convention."""

    path: Path
    format: str  # H5, TORCH_ZIP or TORCH_LEGACY
    source: str  # "keras", "torchvision" or "caffe"
    sha256: str

    @property
    def preprocessing(self) -> Preprocessing:
        return CONVENTIONS[self.source]


def check_exists(path: Path) -> None:
    """Raises the one-line error for a path that is not a readable file."""
    if not path.exists():
        raise JaxstyleError(f"weights file {path} does not exist: check the path")
    if path.is_dir():
        raise JaxstyleError(f"weights file {path} is a directory: give the path of the file itself")


def detect_format(path: str | os.PathLike) -> str:
    """The layout of ``path`` from its first bytes: H5, TORCH_ZIP, TORCH_LEGACY or SAFETENSORS."""
    path = Path(path)
    check_exists(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise JaxstyleError(f"cannot read weights file {path}: {e.strerror or e}") from None
    if head.startswith(_H5_MAGIC):
        return H5
    if head.startswith(_ZIP_MAGIC):
        return TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    if _looks_like_safetensors(head, size):
        return SAFETENSORS
    if _is_hdf5(path):  # HDF5 with a user block: the signature sits at 512, 1024, ...
        return H5
    raise JaxstyleError(
        f"{path} is not a weights file (neither HDF5, a PyTorch archive nor safetensors): "
        f"give the VGG-19 .h5/.pth file or a converted .safetensors file")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= header_len <= size - 8


def _is_hdf5(path: Path) -> bool:
    import h5py
    try:
        return bool(h5py.is_hdf5(path))
    except Exception:  # noqa: BLE001 - anything h5py cannot open is not HDF5 for our purposes
        return False


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``algorithm``: a `hashlib` name), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def identify(path: str | os.PathLike, source: str | None = None) -> SourceFile:
    """Identifies an original weights file: its layout from content, its convention from the layout
    (Keras), the known files' sha256 (torchvision, caffe) or else ``source``.

    Raises JaxstyleError for a missing or unsupported file, an unknown ``source``, a ``source`` that
    contradicts the file, or a .pth file of unknown origin without ``source``.
    """
    path = Path(path)
    if source is not None and source not in CONVENTIONS:
        raise JaxstyleError(f"unknown weights source {source!r}: use one of {', '.join(SOURCES)}")
    fmt = detect_format(path)
    if fmt == SAFETENSORS:
        raise JaxstyleError(f"{path} is a safetensors file, not an original VGG-19 weights file: "
                            f"if it is converted jaxstyle weights, use it directly")
    sha = sha256sum(path)
    return SourceFile(path, fmt, _convention(path, fmt, sha, source), sha)


def _convention(path: Path, fmt: str, sha: str, source: str | None) -> str:
    if fmt == H5:
        if source not in (None, "keras"):
            raise JaxstyleError(f"{path} is a Keras .h5 file, whose convention is keras: "
                                f"drop --source {source} or use --source keras")
        return "keras"
    known = KNOWN_SHA256_PREFIXES.get(sha[:8])
    if known is not None:
        if source not in (None, known):
            raise JaxstyleError(f"{path} is the known {known} VGG-19 file (sha256 {sha[:8]}...), "
                                f"not {source}: drop --source {source}")
        return known
    if source is None:
        raise JaxstyleError(f"cannot tell whether {path} holds torchvision or caffe VGG-19 weights "
                            f"(sha256 {sha[:8]}... is not a known file): pass --source torchvision "
                            f"or --source caffe")
    if source == "keras":
        raise JaxstyleError(f"{path} is a PyTorch file, not Keras .h5: "
                            f"pass --source torchvision or --source caffe")
    return source


# ------------------------------------------------------------------------------------------------
# Lazy tensors and layers.


@dataclasses.dataclass(frozen=True)
class LazyArray:
    """A tensor in a file: shape and dtype now, values on `read`."""

    shape: tuple[int, ...]
    dtype: np.dtype  # float64/float32/float16 (bfloat16 reads as float32), or a non-float kind
    read: Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class LazyLayer:
    """One convolution's kernel and bias, validated in shape and dtype, not yet read."""

    name: str
    kernel: LazyArray  # HWIO (Keras) or OIHW (torch), as ``layout`` says
    bias: LazyArray
    layout: str

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (kernel float32[3, 3, Cin, Cout] C-contiguous little-endian, bias float32[Cout])."""
        kernel = self.kernel.read()
        if self.layout == "OIHW":
            kernel = kernel.transpose(2, 3, 1, 0)
        # One copy: cast, byte-swap and transpose together (the source array is usually a view).
        kernel = np.ascontiguousarray(kernel, dtype="<f4")
        bias = np.ascontiguousarray(self.bias.read(), dtype="<f4")
        return kernel, bias


def expected_shapes(name: str, layout: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    cin, cout = next((i, o) for n, i, o in CONV_LAYERS if n == name)
    kernel = (3, 3, cin, cout) if layout == "HWIO" else (cout, cin, 3, 3)
    return kernel, (cout,)


def _check_array(path: Path, name: str, what: str, array: LazyArray, expected: tuple[int, ...],
                 layout: str) -> None:
    if tuple(array.shape) != expected:
        raise JaxstyleError(f"{path}: {name} {what} has shape {tuple(array.shape)}, expected "
                            f"{expected}{' ' + layout if what == 'kernel' else ''}: "
                            f"this is not a VGG-19 weights file")
    if array.dtype.kind != "f":
        raise JaxstyleError(f"{path}: {name} {what} has dtype {array.dtype}, expected floating "
                            f"point weights: this is not a VGG-19 weights file")


def _make_layer(path: Path, name: str, kernel: LazyArray, bias: LazyArray, layout: str) -> LazyLayer:
    kernel_shape, bias_shape = expected_shapes(name, layout)
    _check_array(path, name, "kernel", kernel, kernel_shape, layout)
    _check_array(path, name, "bias", bias, bias_shape, layout)
    return LazyLayer(name, kernel, bias, layout)


def _damaged(path: Path, error: BaseException) -> JaxstyleError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return JaxstyleError(f"{path} is damaged or truncated ({reason}): download it again")


# Errors that mean "the bytes are not what they should be". JaxstyleError is deliberately absent.
_DAMAGE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
           RuntimeError, struct.error, zipfile.BadZipFile, pickle.UnpicklingError)


@contextlib.contextmanager
def open_layers(src: SourceFile) -> Iterator[list[LazyLayer]]:
    """Opens ``src`` and yields its sixteen layers, validated (presence, shape, dtype) but unread;
    each ``layer.load()`` reads one layer. The file stays open for the ``with`` block.

    Raises JaxstyleError for a damaged file, a missing layer, a wrong shape or a non-float dtype.
    Errors raised by the ``with`` block's own code pass through untouched.
    """
    opener = _open_h5 if src.format == H5 else _open_torch
    with contextlib.ExitStack() as stack:
        try:
            layers = stack.enter_context(opener(src.path))
        except _DAMAGE as e:
            raise _damaged(src.path, e) from None
        yield [dataclasses.replace(layer, kernel=_guarded(src.path, layer.kernel),
                                   bias=_guarded(src.path, layer.bias)) for layer in layers]


def _guarded(path: Path, array: LazyArray) -> LazyArray:
    """``array`` whose read reports damage (short data, h5py read errors) as JaxstyleError."""
    def read() -> np.ndarray:
        try:
            return array.read()
        except _DAMAGE as e:
            raise _damaged(path, e) from None
    return dataclasses.replace(array, read=read)


def iter_layers(path: str | os.PathLike, source: str | None = None) -> Iterator[Layer]:
    """Yields ``(name, kernel float32[3, 3, Cin, Cout], bias float32[Cout])`` for conv1_1 ...
    conv5_4 of an original weights file, one layer in memory at a time."""
    src = identify(path, source)
    with open_layers(src) as layers:
        for layer in layers:
            yield (layer.name, *layer.load())


# ------------------------------------------------------------------------------------------------
# Keras HDF5.


def _h5_attr(obj: Any, name: str) -> list[str] | None:
    """A Keras string-list attribute, also when Keras split a long one into name0, name1, ..."""
    if name in obj.attrs:
        values = list(obj.attrs[name])
    elif f"{name}0" in obj.attrs:
        values, i = [], 0
        while f"{name}{i}" in obj.attrs:
            values += list(obj.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _h5_array(dataset: Any) -> LazyArray:
    return LazyArray(tuple(dataset.shape), np.dtype(dataset.dtype), lambda: np.asarray(dataset[()]))


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[list[LazyLayer]]:
    import h5py

    with h5py.File(path, "r") as f:
        # save_weights writes layers at the root; a full-model save nests them in model_weights.
        root = f if "layer_names" in f.attrs or "model_weights" not in f else f["model_weights"]
        layer_names = _h5_attr(root, "layer_names")
        if layer_names is None:
            raise JaxstyleError(f"{path} is an HDF5 file but not Keras weights (no layer_names "
                                f"attribute): give vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
        yield [_keras_layer(path, root, layer_names, name) for name, _, _ in CONV_LAYERS]


def _keras_layer(path: Path, root: Any, layer_names: Sequence[str], name: str) -> LazyLayer:
    group_name = keras_group(name)
    if group_name not in layer_names or group_name not in root:
        raise JaxstyleError(f"{path} has no weights for {name} (Keras layer {group_name}): "
                            f"this is not a complete VGG-19 weights file")
    group = root[group_name]
    weight_names = _h5_attr(group, "weight_names") or []
    if len(weight_names) != 2:
        raise JaxstyleError(f"{path}: Keras layer {group_name} has {len(weight_names)} weights, "
                            f"expected kernel and bias: this is not a VGG-19 weights file")
    missing = [w for w in weight_names if w not in group]
    if missing:
        raise JaxstyleError(f"{path}: Keras layer {group_name} lacks its weight {missing[0]}: "
                            f"the file is damaged, download it again")
    kernel, bias = (_h5_array(group[w]) for w in weight_names)
    return _make_layer(path, name, kernel, bias, "HWIO")


# ------------------------------------------------------------------------------------------------
# PyTorch: a restricted unpickler and lazily rebuilt tensors.


@dataclasses.dataclass(frozen=True)
class _StorageType:
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
class _Storage:
    """A storage's bytes in the file: ``read(start, count)`` returns ``count`` elements from
    element ``start`` as an array of the storage's (file-order) dtype."""

    type: _StorageType
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
    if not isinstance(storage, _Storage):
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
        factory = functools.partial(_StorageType, name, np.dtype(dtype), name == "BFloat16Storage")
        allowed["torch", name] = allowed["torch.cuda", name] = factory
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into `LazyArray`s. ``find_class`` hands out only local
    stand-ins, so no pickled reference can reach real code; ``persistent_load`` turns storage
    references into `_Storage` readers made by ``make_storage``."""

    def __init__(self, file: BinaryIO, path: Path,
                 make_storage: Callable[[tuple], _Storage] | None = None):
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
        if len(pid) < 5 or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"bad storage reference {pid[:2]!r}")
        return self._make_storage(pid)


def _state_dict_tensors(path: Path, obj: Any) -> dict[str, LazyArray]:
    """The tensors of an unpickled state dict (maybe wrapped as ``{"state_dict": ...}``)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise JaxstyleError(f"{path} holds a pickled {type(obj).__name__}, not a state dict: "
                            f"give a VGG-19 state-dict .pth file")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, LazyArray)}


def _torch_layers(path: Path, tensors: dict[str, LazyArray]) -> list[LazyLayer]:
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
        layers.append(_make_layer(path, name, weight, bias, "OIHW"))
    return layers


@contextlib.contextmanager
def _open_torch(path: Path) -> Iterator[list[LazyLayer]]:
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
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
    storages: dict[str, _Storage] = {}

    def make_storage(pid: tuple) -> _Storage:
        _, storage_type, key, _location, numel = pid[:5]
        if key not in storages:
            if byteorder == "big":
                storage_type = dataclasses.replace(storage_type,
                                                   dtype=storage_type.dtype.newbyteorder(">"))
            reader = _zip_member_reader(archive, f, f"{prefix}data/{key}")
            storages[key] = _Storage(storage_type, int(numel), reader)
        return storages[key]

    data = archive.read(pickles[0])
    obj = _StateDictUnpickler(io.BytesIO(data), path, make_storage).load()
    return _state_dict_tensors(path, obj)


def _zip_member_reader(archive: zipfile.ZipFile, f: BinaryIO,
                       name: str) -> Callable[[int, int], bytes]:
    """Random access to a zip member. torch stores members uncompressed, so their bytes lie in the
    file as they are: read them with seek + read (zipfile's own seek may read and drop up to 16 MB)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return lambda offset, count: archive.read(name)[offset: offset + count]
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != _ZIP_MAGIC:
        raise zipfile.BadZipFile(f"bad local header for {name}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return _file_reader(f, info.header_offset + 30 + name_len + extra_len, info.file_size)


# --- legacy stream of pickles (torch < 1.6, e.g. the 2017 model-zoo files) ----------------------


def _legacy_tensors(path: Path, f: BinaryIO) -> dict[str, LazyArray]:
    """Layout: pickled magic number, protocol version, sys_info; the pickled object (storages as
    persistent ids ``('storage', type, key, location, numel, view)``); the pickled list of storage
    keys; then per key, in that order, an int64 element count and the raw elements."""
    f.seek(0)
    header = _StateDictUnpickler(f, path)
    magic, protocol, sys_info = header.load(), header.load(), header.load()
    if magic != 0x1950A86A20F9469CFC6C or protocol != 1001 or not isinstance(sys_info, dict):
        raise pickle.UnpicklingError("bad legacy header")
    little = bool(sys_info.get("little_endian", True))
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}
    slots: dict[str, dict] = {}  # key -> {"reader": ...}: filled after the key list is read

    def make_storage(pid: tuple) -> _Storage:
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        if key not in roots:
            if not little:
                storage_type = dataclasses.replace(storage_type,
                                                   dtype=storage_type.dtype.newbyteorder(">"))
            slot = slots.setdefault(key, {})
            roots[key] = _Storage(storage_type, int(numel), lambda o, c: slot["reader"](o, c))
        if view is None:
            return roots[key]
        view_key, view_offset, view_size = view
        if view_key not in views:
            views[view_key] = dataclasses.replace(roots[key], numel=int(view_size),
                                                  offset=int(view_offset))
        return views[view_key]

    obj = _StateDictUnpickler(f, path, make_storage).load()
    keys = _StateDictUnpickler(f, path).load()
    if not isinstance(keys, list) or set(keys) != set(roots):
        raise pickle.UnpicklingError("storage key list does not match the storages")
    _locate_legacy_storages(f, keys, roots, slots, little)
    return _state_dict_tensors(path, obj)


def _locate_legacy_storages(f: BinaryIO, keys: list, roots: dict[str, _Storage],
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
