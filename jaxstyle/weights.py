"""The converted weights format, and conversion into it.

A converted file is one ``.safetensors`` file holding, for each of the sixteen convolutions,
``<name>.kernel`` (float32[3, 3, Cin, Cout], HWIO) and ``<name>.bias`` (float32[Cout]), plus string
metadata::

    format          jaxstyle-vgg19
    format_version  1
    source          keras | torchvision | caffe
    source_file     basename of the original file
    source_sha256   its sha256
    preprocessing   json of Preprocessing.to_dict(): how to feed RGB in [0, 1] to these weights

`convert` streams: the header is computed from `vgg19.CONV_LAYERS` before any tensor is read, then
each tensor's bytes are appended as they are read, so memory stays near one layer (9.4 MB at most).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxstyle import sources
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write
from jaxstyle.models.vgg19 import CONV_LAYERS, Preprocessing

FORMAT = "jaxstyle-vgg19"
FORMAT_VERSION = "1"
METADATA_KEYS = ("format", "format_version", "source", "source_file", "source_sha256",
                 "preprocessing")


@dataclasses.dataclass(frozen=True)
class ConvertInfo:
    """What `convert` wrote."""

    dst: Path
    source: str
    source_file: str
    source_sha256: str
    preprocessing: Preprocessing
    nbytes: int  # size of the written file


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """Weights in memory.

    layers: ``{"conv1_1": (kernel float32[3, 3, Cin, Cout] HWIO, bias float32[Cout]), ...}``, all
        sixteen convolutions in network order.
    metadata: the converted file's string metadata (built the same way for an original file).
    """

    layers: dict[str, tuple[np.ndarray, np.ndarray]]
    preprocessing: Preprocessing
    source: str
    metadata: dict[str, str]


# ------------------------------------------------------------------------------------------------
# The safetensors layout, written by hand so that it can be streamed.


def tensor_specs() -> Iterator[tuple[str, tuple[int, ...]]]:
    """(tensor name, shape) of every tensor, in file order: conv1_1.kernel, conv1_1.bias, ..."""
    for name, cin, cout in CONV_LAYERS:
        yield f"{name}.kernel", (3, 3, cin, cout)
        yield f"{name}.bias", (cout,)


def safetensors_header(metadata: dict[str, str]) -> bytes:
    """The bytes that precede the tensor data: an 8-byte little-endian header length, then the
    JSON header (dtype, shape and [begin, end) byte offsets of each tensor) padded with spaces so
    that the data starts 8-byte aligned."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape in tensor_specs():
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def make_metadata(src: sources.SourceFile) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": src.source,
        "source_file": src.path.name,
        "source_sha256": src.sha256,
        "preprocessing": json.dumps(src.preprocessing.to_dict()),
    }


# ------------------------------------------------------------------------------------------------
# Conversion.


def convert(src: str | os.PathLike, dst: str | os.PathLike, source: str | None = None) -> ConvertInfo:
    """Converts an original VGG-19 weights file (Keras .h5, torchvision or caffe .pth) into the
    converted .safetensors format at ``dst``, atomically (a temporary file beside ``dst``, fsync,
    rename). ``source`` ('keras', 'torchvision', 'caffe') is needed only for a .pth file that is not
    one of the known files.

    Raises JaxstyleError (and leaves nothing at ``dst`` nor temporary files) for any bad input.
    """
    src, dst = Path(src), Path(dst)
    info = sources.identify(src, source)
    if dst.is_dir():
        raise JaxstyleError(f"output {dst} is a directory: give a file name such as "
                            f"{dst / 'vgg19.safetensors'}")
    if _same_file(src, dst):
        raise JaxstyleError(f"output {dst} is the input file itself: choose another output path")
    metadata = make_metadata(info)
    header = safetensors_header(metadata)
    with sources.open_layers(info) as layers:  # validates every layer before anything is written
        created = _make_parent(dst)
        try:
            nbytes = _write_atomically(dst, header, layers)
        except BaseException:
            _remove_empty_dirs(created)
            raise
    return ConvertInfo(dst, info.source, metadata["source_file"], info.sha256,
                       info.preprocessing, nbytes)


def _same_file(a: Path, b: Path) -> bool:
    if b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _make_parent(dst: Path) -> list[Path]:
    """Creates dst's missing parent directories; returns them, deepest first."""
    missing = []
    parent = dst.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxstyleError(f"cannot create the directory {dst.parent}: {e.strerror or e}") from None
    return missing


def _remove_empty_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; rmdir only removes empty directories
        try:
            d.rmdir()
        except OSError:
            return


def _write_atomically(dst: Path, header: bytes, layers: list[sources.LazyLayer]) -> int:
    def write(f) -> int:
        f.write(header)
        for layer in layers:
            kernel, bias = layer.load()  # C-contiguous little-endian float32
            f.write(memoryview(kernel).cast("B"))  # no copy
            f.write(memoryview(bias).cast("B"))
            del kernel, bias  # keep one layer alive, not two
        return f.tell()

    return atomic_write(dst, write)


def read(path: str | os.PathLike, source: str | None = None) -> LoadedWeights:
    """Weights from a converted .safetensors file, or from an original file converted in memory.

    ``source`` applies to original .pth files of unknown origin; for a converted file it must match
    the stored source if given. Raises JaxstyleError with a one-line message for any bad file.
    """
    path = Path(path)
    if sources.detect_format(path) == sources.SAFETENSORS:
        return _read_converted(path, source)
    info = sources.identify(path, source)
    with sources.open_layers(info) as lazy:
        layers = {layer.name: layer.load() for layer in lazy}
    return LoadedWeights(layers, info.preprocessing, info.source, make_metadata(info))


def _read_converted(path: Path, source: str | None) -> LoadedWeights:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            preprocessing = _check_metadata(path, metadata, source)
            _check_tensors(path, {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                                  for k in f.keys()})
            layers = {name: (f.get_tensor(f"{name}.kernel"), f.get_tensor(f"{name}.bias"))
                      for name, _, _ in CONV_LAYERS}
    except (SafetensorError, OSError, ValueError) as e:
        raise JaxstyleError(f"{path} is damaged or truncated ({str(e).splitlines()[0]}): convert "
                            f"the original file again") from None
    return LoadedWeights(layers, preprocessing, metadata["source"], metadata)


def _check_metadata(path: Path, metadata: dict[str, str], source: str | None) -> Preprocessing:
    if metadata.get("format") != FORMAT:
        raise JaxstyleError(f"{path} is a safetensors file but not jaxstyle VGG-19 weights: "
                            f"convert the original VGG-19 file with `jaxstyle convert`")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise JaxstyleError(f"{path} has format version {metadata.get('format_version')!r}, this "
                            f"jaxstyle reads {FORMAT_VERSION}: convert the original file again")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing or metadata["source"] not in sources.CONVENTIONS:
        what = f"lacks {missing[0]}" if missing else f"has unknown source {metadata['source']!r}"
        raise JaxstyleError(f"{path}'s metadata {what}: convert the original file again")
    if source is not None and source != metadata["source"]:
        raise JaxstyleError(f"{path} holds {metadata['source']} weights, not {source}: "
                            f"drop --source {source}")
    try:
        return Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
    except (ValueError, KeyError, TypeError) as e:
        raise JaxstyleError(f"{path} has unreadable preprocessing metadata ({e}): convert the "
                            f"original file again") from None


def _check_tensors(path: Path, found: dict[str, tuple[tuple[int, ...], str]]) -> None:
    for name, shape in tensor_specs():
        if name not in found:
            raise JaxstyleError(f"{path} lacks tensor {name}: convert the original file again")
        if found[name] != (shape, "F32"):
            raise JaxstyleError(f"{path}: tensor {name} is {found[name][1]}{list(found[name][0])}, "
                                f"expected F32{list(shape)}: convert the original file again")
