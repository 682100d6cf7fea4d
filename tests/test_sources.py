"""Reading the original weight layouts: values, transposition, detection, refusal, errors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import synthetic_weights as sw
from jaxstyle import sources
from jaxstyle.errors import JaxstyleError
from jaxstyle.vgg19 import CONV_LAYERS


def assert_layers_equal(path: Path, expected: sw.Layers, source: str | None = None) -> None:
    """iter_layers(path) yields all sixteen layers in order, equal to ``expected`` (HWIO)."""
    names = []
    for name, kernel, bias in sources.iter_layers(path, source):
        names.append(name)
        assert kernel.dtype == np.float32 and bias.dtype == np.float32
        assert kernel.flags.c_contiguous
        np.testing.assert_array_equal(kernel, expected[name][0])
        np.testing.assert_array_equal(bias, expected[name][1])
    assert names == [name for name, _, _ in CONV_LAYERS]


# ------------------------------------------------------------------------------------------------
# Layouts.


def test_keras2_h5_reads_as_written(keras_h5, keras_layers):
    assert_layers_equal(keras_h5, keras_layers)


def test_keras1_dataset_names_follow_weight_names(tmp_path, keras_layers):
    path = sw.write_keras_h5(tmp_path / "keras1.h5", keras_layers, naming="keras1")
    assert_layers_equal(path, keras_layers)


@pytest.mark.torch
@pytest.mark.parametrize("fixture", ["torchvision_pth", "torchvision_pth_legacy"])
def test_pth_kernels_are_transposed_to_hwio(request, fixture):
    path = request.getfixturevalue(fixture)
    state = torch.load(path, weights_only=True)  # the independent reader
    for name, kernel, bias in sources.iter_layers(path, "torchvision"):
        index = sources.TORCH_FEATURE_INDEX[name]
        oihw = state[f"features.{index}.weight"].numpy()
        np.testing.assert_array_equal(kernel, oihw.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(bias, state[f"features.{index}.bias"].numpy())


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_views_strides_and_dtypes(tmp_path, torch_layers, legacy):
    """Tensors sharing a storage at an offset, non-contiguous strides, half/bfloat16/double storage:
    rebuilt like torch.load does."""
    state = sw.torch_state_dict(torch_layers)
    w0 = state["features.0.weight"]
    big = torch.cat([torch.randn(7), w0.flatten(), torch.randn(5)])
    state["features.0.weight"] = big[7: 7 + w0.numel()].view(w0.shape)  # offset into a storage
    hwio = torch.from_numpy(torch_layers["conv1_2"][0].copy())
    state["features.2.weight"] = hwio.permute(3, 2, 0, 1)  # OIHW view of HWIO memory
    state["features.5.weight"] = state["features.5.weight"].half()
    state["features.7.weight"] = state["features.7.weight"].bfloat16()
    state["features.10.weight"] = state["features.10.weight"].double()
    state["features.10.bias"] = big[:256]  # a bias that shares the first weight's storage
    path = sw.write_torch_pth(tmp_path / "views.pth", state=state, legacy=legacy)

    reference = torch.load(path, weights_only=True)
    assert not reference["features.2.weight"].is_contiguous()
    for name, kernel, bias in sources.iter_layers(path, "caffe"):
        index = sources.TORCH_FEATURE_INDEX[name]
        expected = reference[f"features.{index}.weight"].float().numpy().transpose(2, 3, 1, 0)
        np.testing.assert_array_equal(kernel, expected)
        np.testing.assert_array_equal(bias, reference[f"features.{index}.bias"].float().numpy())


# ------------------------------------------------------------------------------------------------
# Detection.


@pytest.mark.torch
def test_format_detected_from_content_not_name(tmp_path, keras_h5, torchvision_pth,
                                               torchvision_pth_legacy, keras_safetensors):
    disguised = tmp_path / "weights.bin"
    disguised.symlink_to(keras_h5)
    assert sources.detect_format(disguised) == sources.H5
    assert sources.detect_format(torchvision_pth) == sources.TORCH_ZIP
    assert sources.detect_format(torchvision_pth_legacy) == sources.TORCH_LEGACY
    assert sources.detect_format(keras_safetensors) == sources.SAFETENSORS


def test_h5_is_keras_without_source(keras_h5):
    src = sources.identify(keras_h5)
    assert (src.format, src.source, src.preprocessing) == (sources.H5, "keras", sources.KERAS)


@pytest.mark.torch
def test_known_checksum_decides_convention(monkeypatch, torchvision_pth):
    sha = sources.sha256sum(torchvision_pth)
    monkeypatch.setitem(sources.KNOWN_SHA256_PREFIXES, sha[:8], "caffe")
    src = sources.identify(torchvision_pth)
    assert (src.source, src.sha256, src.preprocessing) == ("caffe", sha, sources.CAFFE)
    assert sources.identify(torchvision_pth, "caffe").source == "caffe"
    with pytest.raises(JaxstyleError, match="known caffe VGG-19 file.*drop --source torchvision"):
        sources.identify(torchvision_pth, "torchvision")


@pytest.mark.torch
def test_real_file_names_carry_their_checksum_prefix():
    # torchvision's naming rule: <name>-<first 8 hex digits of sha256>.pth.
    assert sources.KNOWN_SHA256_PREFIXES == {"dcbb9e9d": "torchvision", "d01eb7cb": "caffe"}


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True])
def test_unknown_pth_needs_source(request, legacy):
    path = request.getfixturevalue("torchvision_pth_legacy" if legacy else "torchvision_pth")
    with pytest.raises(JaxstyleError) as err:
        sources.identify(path)
    assert "--source torchvision or --source caffe" in str(err.value)
    for source in ("torchvision", "caffe"):
        src = sources.identify(path, source)
        assert src.source == source and src.preprocessing == sources.CONVENTIONS[source]


def test_conventions():
    assert sources.KERAS == sources.CAFFE
    assert sources.KERAS.bgr and sources.KERAS.scale == 255.0 and sources.KERAS.std == (1, 1, 1)
    assert not sources.TORCHVISION.bgr and sources.TORCHVISION.scale == 1.0


@pytest.mark.parametrize("fixture, source, words", [
    ("keras_h5", "torchvision", "Keras .h5 file"),
    ("torchvision_pth", "keras", "--source torchvision or --source caffe"),
    ("torchvision_pth", "vgg", "unknown weights source 'vgg'"),
])
def test_contradicting_or_unknown_source(request, fixture, source, words):
    with pytest.raises(JaxstyleError, match=words):
        sources.identify(request.getfixturevalue(fixture), source)


# ------------------------------------------------------------------------------------------------
# Malicious pickles: refused, never run.


class _Evil:
    """Pickles as a call of ``func(*args)``: what a booby-trapped .pth does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _zip_pth(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


def _legacy_pth(path: Path, payload: bytes) -> Path:
    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}))
    path.write_bytes(header + payload + pickle.dumps([], protocol=2))
    return path


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes that would create ``marker`` if run, the global it must name)."""
    command = f"touch {marker}"
    return {
        "os.system protocol 0": (f"cos\nsystem\n(V{command}\ntR.".encode(), "os.system"),
        "builtins.exec": (f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w')\ntR.".encode(),
                          "builtins.exec"),
        "__reduce__ in a state dict": (
            pickle.dumps({"features.0.weight": _Evil(os.system, command)}, protocol=4),
            "system"),
        "eval inside a rebuilt tensor": (
            pickle.dumps({"w": _Evil(torch._utils._rebuild_tensor_v2,
                                     _Evil(eval, f"__import__('os').system({command!r})"),
                                     0, (1,), (1,))}, protocol=2),
            ".eval"),  # protocol 2 names it __builtin__.eval
    }


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("payload", ["os.system protocol 0", "builtins.exec",
                                     "__reduce__ in a state dict", "eval inside a rebuilt tensor"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, layout, payload):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    data, named = _payloads(marker)[payload]
    path = tmp_path / "evil.pth"
    _zip_pth(path, data) if layout == "zip" else _legacy_pth(path, data)
    with pytest.raises(JaxstyleError) as err:
        list(sources.iter_layers(path, "torchvision"))
    message = str(err.value)
    assert message.startswith(f"refusing to load {path}: its pickle references ")
    assert named in message and "which a weights file never needs" in message
    assert not marker.exists()


@pytest.mark.torch
def test_unexpected_persistent_id_is_refused(tmp_path):
    class Pid(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "x", "y") if obj == "m" else None

    buffer = io.BytesIO()
    Pid(buffer, protocol=2).dump({"features.0.weight": "m"})
    path = _zip_pth(tmp_path / "pid.pth", buffer.getvalue())
    with pytest.raises(JaxstyleError, match="refusing to load .*'module'"):
        list(sources.iter_layers(path, "torchvision"))


# ------------------------------------------------------------------------------------------------
# Bad files: one-line errors.


@pytest.mark.torch
@pytest.mark.parametrize("kind", list(sw.BAD_FILE_KINDS))
def test_bad_file_errors(tmp_path, kind, keras_h5, torchvision_pth, torchvision_pth_legacy):
    path = sw.write_bad_file(kind, tmp_path, keras_h5, torchvision_pth, torchvision_pth_legacy)
    with pytest.raises(JaxstyleError) as err:
        list(sources.iter_layers(path, sw.bad_file_source(kind)))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for words in sw.BAD_FILE_KINDS[kind]:
        assert words in message


@pytest.mark.torch
def test_pickle_cannot_alter_the_stand_ins(tmp_path, torchvision_pth, torch_layers):
    """BUILD writes attributes into objects; each file must get its own stand-ins, so a crafted
    file cannot break later loads in the same process."""
    # protocol 2: torch.FloatStorage, BUILD with {"dtype": "x"}
    tamper = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00xsb."
    path = _zip_pth(tmp_path / "tamper.pth", tamper)
    with pytest.raises(JaxstyleError, match="not a state dict"):
        list(sources.iter_layers(path, "torchvision"))
    assert_layers_equal(torchvision_pth, torch_layers, "torchvision")
