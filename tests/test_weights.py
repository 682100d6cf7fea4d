"""The converted format: streaming conversion, atomic writes, round trips, damaged files."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch

import synthetic_weights as sw
from jaxstyle import sources, weights
from jaxstyle.errors import JaxstyleError
from jaxstyle.vgg19 import CONV_LAYERS, Preprocessing

NAMES = [name for name, _, _ in CONV_LAYERS]


def h5_layers(path: Path) -> sw.Layers:
    """The Keras file's arrays read with h5py directly (independent of jaxstyle's reader)."""
    with h5py.File(path, "r") as f:
        return {name: (f[f"block{name[4]}_conv{name[6]}/block{name[4]}_conv{name[6]}/kernel:0"][()],
                       f[f"block{name[4]}_conv{name[6]}/block{name[4]}_conv{name[6]}/bias:0"][()])
                for name in NAMES}


def torch_file_layers(path: Path) -> sw.Layers:
    """A .pth file's convolutions read with torch.load, transposed OIHW -> HWIO."""
    state = torch.load(path, weights_only=True)
    return {name: (state[f"features.{sources.TORCH_FEATURE_INDEX[name]}.weight"].numpy()
                   .transpose(2, 3, 1, 0),
                   state[f"features.{sources.TORCH_FEATURE_INDEX[name]}.bias"].numpy())
            for name in NAMES}


def assert_same_layers(actual: dict, expected: sw.Layers) -> None:
    assert list(actual) == NAMES
    for name in NAMES:
        np.testing.assert_array_equal(actual[name][0], expected[name][0])
        np.testing.assert_array_equal(actual[name][1], expected[name][1])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------------------------------------
# The file layout.


def test_converted_file_is_standard_safetensors(keras_h5, keras_safetensors):
    expected = h5_layers(keras_h5)
    tensors = safetensors.numpy.load_file(keras_safetensors)
    assert set(tensors) == {f"{n}.{part}" for n in NAMES for part in ("kernel", "bias")}
    for name in NAMES:
        assert tensors[f"{name}.kernel"].dtype == np.float32
        np.testing.assert_array_equal(tensors[f"{name}.kernel"], expected[name][0])
        np.testing.assert_array_equal(tensors[f"{name}.bias"], expected[name][1])
    with safetensors.safe_open(str(keras_safetensors), framework="numpy") as f:
        metadata = f.metadata()
    assert metadata == {
        "format": "jaxstyle-vgg19", "format_version": "1", "source": "keras",
        "source_file": keras_h5.name,
        "source_sha256": hashlib.sha256(keras_h5.read_bytes()).hexdigest(),
        "preprocessing": json.dumps(sources.KERAS.to_dict()),
    }
    raw = keras_safetensors.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert header_len % 8 == 0 and raw[8 + header_len - 1:8 + header_len] in (b" ", b"}")
    assert len(raw) == 8 + header_len + sum(4 * 9 * cin * cout + 4 * cout
                                            for _, cin, cout in CONV_LAYERS)


def test_header_is_computed_before_reading():
    metadata = {"format": "jaxstyle-vgg19", "source": "keras"}
    header = weights.safetensors_header(metadata)
    parsed = json.loads(header[8:])
    assert parsed["__metadata__"] == metadata
    ends = [parsed[name]["data_offsets"] for name, _ in weights.tensor_specs()]
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:]))


# ------------------------------------------------------------------------------------------------
# Round trips.


def test_keras_round_trip(keras_h5, keras_safetensors):
    expected = h5_layers(keras_h5)
    for path in (keras_safetensors, keras_h5):  # converted, and converted in memory
        loaded = weights.read(path)
        assert_same_layers(loaded.layers, expected)
        assert (loaded.source, loaded.preprocessing) == ("keras", sources.KERAS)
        assert loaded.metadata["source_sha256"] == sources.sha256sum(keras_h5)


@pytest.mark.torch
@pytest.mark.parametrize("fixture", ["torchvision_pth", "torchvision_pth_legacy"])
def test_torch_round_trip(request, tmp_path, fixture):
    src = request.getfixturevalue(fixture)
    info = weights.convert(src, tmp_path / "out.safetensors", source="torchvision")
    assert (info.source, info.source_file, info.preprocessing) == (
        "torchvision", src.name, sources.TORCHVISION)
    assert info.nbytes == (tmp_path / "out.safetensors").stat().st_size
    expected = torch_file_layers(src)
    for path in (info.dst, src):
        loaded = weights.read(path, source="torchvision")
        assert_same_layers(loaded.layers, expected)
        assert (loaded.source, loaded.preprocessing) == ("torchvision", sources.TORCHVISION)
    assert leftovers(tmp_path) == ["out.safetensors"]


@pytest.mark.torch
def test_known_checksum_needs_no_source(monkeypatch, tmp_path, torchvision_pth):
    monkeypatch.setitem(sources.KNOWN_SHA256_PREFIXES, sources.sha256sum(torchvision_pth)[:8],
                        "caffe")
    info = weights.convert(torchvision_pth, tmp_path / "caffe.safetensors")
    loaded = weights.read(info.dst)
    assert (loaded.source, loaded.preprocessing) == ("caffe", sources.CAFFE)


def test_convert_creates_parent_and_replaces_existing(tmp_path, keras_h5, keras_safetensors):
    dst = tmp_path / "a" / "b" / "w.safetensors"
    weights.convert(keras_h5, dst)
    dst.write_bytes(b"old")
    weights.convert(keras_h5, dst)
    assert dst.read_bytes() == keras_safetensors.read_bytes()
    assert leftovers(dst.parent) == ["w.safetensors"]


# ------------------------------------------------------------------------------------------------
# Streaming.


@pytest.mark.parametrize("fixture, source", [("keras_h5", None), ("torchvision_pth", "torchvision"),
                                             ("torchvision_pth_legacy", "torchvision")])
def test_conversion_streams(request, tmp_path, fixture, source):
    """Peak Python/numpy memory during a real-size conversion stays near one layer."""
    src = request.getfixturevalue(fixture)
    tracemalloc.start()
    try:
        weights.convert(src, tmp_path / "out.safetensors", source=source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * sw.LARGEST_LAYER_BYTES, f"peak {peak / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------------------
# Bad inputs: an error, and nothing written.


@pytest.mark.torch
@pytest.mark.parametrize("kind", list(sw.BAD_FILE_KINDS))
def test_bad_file_writes_nothing(tmp_path, kind, keras_h5, torchvision_pth, torchvision_pth_legacy):
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = sw.write_bad_file(kind, inputs, keras_h5, torchvision_pth, torchvision_pth_legacy)
    dst = tmp_path / "out" / "sub" / "w.safetensors"
    with pytest.raises(JaxstyleError) as err:
        weights.convert(src, dst, source=sw.bad_file_source(kind))
    assert "\n" not in str(err.value)
    for words in sw.BAD_FILE_KINDS[kind]:
        assert words in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(JaxstyleError):
        weights.read(src, source=sw.bad_file_source(kind))


def test_damaged_data_midway_leaves_no_temp_file(tmp_path, monkeypatch, keras_h5):
    """A read error after writing has started (here: the 5th layer) removes the partial file."""
    real_load = sources.LazyLayer.load

    def failing_load(self):
        if self.name == "conv3_1":
            raise JaxstyleError("simulated damage")
        return real_load(self)

    monkeypatch.setattr(sources.LazyLayer, "load", failing_load)
    dst = tmp_path / "new" / "w.safetensors"
    with pytest.raises(JaxstyleError, match="simulated damage"):
        weights.convert(keras_h5, dst)
    assert not (tmp_path / "new").exists()


def test_output_must_differ_from_input(tmp_path, keras_h5):
    copy = tmp_path / "k.h5"
    copy.write_bytes(keras_h5.read_bytes())
    with pytest.raises(JaxstyleError, match="is the input file itself"):
        weights.convert(copy, tmp_path / "." / "k.h5")
    with pytest.raises(JaxstyleError, match="is a directory"):
        weights.convert(copy, tmp_path)
    assert leftovers(tmp_path) == ["k.h5"]
    assert copy.read_bytes() == keras_h5.read_bytes()


def test_converting_a_converted_file_is_refused(tmp_path, keras_safetensors):
    with pytest.raises(JaxstyleError, match="use it directly"):
        weights.convert(keras_safetensors, tmp_path / "again.safetensors")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Damaged or foreign converted files.


def _rewrite(src: Path, dst: Path, metadata_update: dict | None = None,
             tensors_update: dict | None = None) -> Path:
    with safetensors.safe_open(str(src), framework="numpy") as f:
        metadata = {**f.metadata(), **(metadata_update or {})}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors.update(tensors_update or {})
    safetensors.numpy.save_file(tensors, dst, metadata={k: v for k, v in metadata.items()
                                                        if v is not None})
    return dst


@pytest.mark.parametrize("case, words", [
    ("truncated", "damaged or truncated"),
    ("foreign", "not jaxstyle VGG-19 weights"),
    ("version", "format version '2'"),
    ("no_source", "lacks source"),
    ("bad_preprocessing", "unreadable preprocessing"),
    ("wrong_shape", "conv2_1.kernel is F32[3, 3, 64, 64], expected F32[3, 3, 64, 128]"),
    ("missing_tensor", "lacks tensor conv5_4.bias"),
    ("float16", "conv1_1.kernel is F16"),
])
def test_bad_converted_file(tmp_path, keras_safetensors, case, words):
    path = tmp_path / f"{case}.safetensors"
    kernel = np.zeros((3, 3, 64, 64), np.float32)
    if case == "truncated":
        sw.truncated_copy(keras_safetensors, path, 0.7)
    elif case == "foreign":
        safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, path)
    elif case == "version":
        _rewrite(keras_safetensors, path, {"format_version": "2"})
    elif case == "no_source":
        _rewrite(keras_safetensors, path, {"source": None})
    elif case == "bad_preprocessing":
        _rewrite(keras_safetensors, path, {"preprocessing": "{not json"})
    elif case == "wrong_shape":
        _rewrite(keras_safetensors, path, tensors_update={"conv2_1.kernel": kernel})
    elif case == "missing_tensor":
        with safetensors.safe_open(str(keras_safetensors), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k != "conv5_4.bias"}
            safetensors.numpy.save_file(tensors, path, metadata=f.metadata())
    elif case == "float16":
        with safetensors.safe_open(str(keras_safetensors), framework="numpy") as f:
            tensors = {k: f.get_tensor(k).astype(np.float16) for k in f.keys()}
            safetensors.numpy.save_file(tensors, path, metadata=f.metadata())
    with pytest.raises(JaxstyleError) as err:
        weights.read(path)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.torch
def test_converted_file_source_must_match(keras_safetensors):
    assert weights.read(keras_safetensors, source="keras").source == "keras"
    with pytest.raises(JaxstyleError, match="holds keras weights, not torchvision"):
        weights.read(keras_safetensors, source="torchvision")


@pytest.mark.torch
def test_preprocessing_round_trips_through_metadata(keras_safetensors, torchvision_safetensors):
    assert weights.read(keras_safetensors).preprocessing == sources.KERAS
    stored = json.loads(weights.read(torchvision_safetensors).metadata["preprocessing"])
    assert Preprocessing.from_dict(stored) == sources.TORCHVISION
