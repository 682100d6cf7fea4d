"""Readers for the original VGG-19 weight files, one layer at a time.

Three files are supported, all holding the sixteen 3x3 convolutions of VGG-19:

* Keras ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (HDF5; kernels already HWIO):
  `jaxstyle.sources.keras_h5`;
* torchvision ``vgg19-dcbb9e9d.pth`` and the Caffe-converted ``vgg19-d01eb7cb.pth`` (PyTorch
  state dicts with keys ``features.N.weight`` (OIHW) / ``features.N.bias``), in the zip layout of
  torch >= 1.6 or the older legacy stream of pickles: `jaxstyle.sources.torch_pth`, read without
  torch and without running pickled code (`jaxstyle.sources.torch_pickle`, a restricted
  unpickler).

This module identifies a file (`identify`: its layout from its first bytes, its convention from
the layout or the known checksums) and opens it (`open_layers`, `iter_layers`). Every reader yields
``(name, kernel float32[3, 3, Cin, Cout] HWIO, bias float32[Cout])`` in the order of
`jaxstyle.vgg19.CONV_LAYERS`, reading each tensor's bytes only when asked for
(`jaxstyle.sources.layers.LazyLayer`), so a conversion holds about one layer in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.models.vgg19 import Preprocessing
from jaxstyle.sources import keras_h5, torch_pth
from jaxstyle.sources.keras_h5 import keras_group
from jaxstyle.sources.layers import LazyArray, LazyLayer
from jaxstyle.sources.torch_pth import TORCH_FEATURE_INDEX, torch_key

__all__ = ["CAFFE", "KERAS", "TORCHVISION", "CONVENTIONS", "SOURCES", "KNOWN_SHA256_PREFIXES",
           "H5", "TORCH_ZIP", "TORCH_LEGACY", "SAFETENSORS", "Layer", "SourceFile", "LazyArray",
           "LazyLayer", "check_exists", "detect_format", "file_digest", "sha256sum", "identify",
           "open_layers", "iter_layers", "keras_group", "torch_key", "TORCH_FEATURE_INDEX"]

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

Layer = tuple[str, np.ndarray, np.ndarray]

# Formats, as detected from content.
H5, TORCH_ZIP, TORCH_LEGACY, SAFETENSORS = "keras-h5", "torch-zip", "torch-legacy", "safetensors"

_CHUNK = 1 << 20


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
    if head.startswith(keras_h5.MAGIC):
        return H5
    if head.startswith(torch_pth.ZIP_MAGIC):
        return TORCH_ZIP
    if head.startswith(torch_pth.LEGACY_MAGIC):
        return TORCH_LEGACY
    if _looks_like_safetensors(head, size):
        return SAFETENSORS
    if keras_h5.is_hdf5(path):  # HDF5 with a user block: the signature sits at 512, 1024, ...
        return H5
    raise JaxstyleError(
        f"{path} is not a weights file (neither HDF5, a PyTorch archive nor safetensors): "
        f"give the VGG-19 .h5/.pth file or a converted .safetensors file")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= header_len <= size - 8


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
# Opening a file: damage reported as one line.


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
    opener = keras_h5.open_layers if src.format == H5 else torch_pth.open_layers
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
