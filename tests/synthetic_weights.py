"""Synthetic VGG-19 weight files in exactly the layouts of the real ones (no download needed).

Weights are random, He-scaled (std sqrt(2 / fan_in)), so activations keep their magnitude through
sixteen ReLU convolutions: O(1) for torchvision preprocessing, O(100) for Keras/Caffe.

Writers take a ``{name: (kernel HWIO, bias)}`` dict, so tests can drop layers, change shapes or
dtypes to build bad files.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from jaxstyle.sources import TORCH_FEATURE_INDEX, keras_group
from jaxstyle.vgg19 import CONV_LAYERS

Layers = dict[str, tuple[np.ndarray, np.ndarray]]
LARGEST_LAYER_BYTES = max(4 * 9 * cin * cout for _, cin, cout in CONV_LAYERS)  # conv4_2..: 9.4 MB


def random_layers(seed: int = 0, names: Iterable[str] | None = None) -> Layers:
    """He-initialised ``{name: (kernel float32[3, 3, Cin, Cout], bias float32[Cout])}`` for
    ``names`` (default: all sixteen convolutions)."""
    wanted = set(names) if names is not None else None
    rng = np.random.default_rng(seed)
    layers = {}
    for name, cin, cout in CONV_LAYERS:
        if wanted is not None and name not in wanted:
            continue
        kernel = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / (9 * cin)))
        bias = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.05)
        layers[name] = (kernel, bias)
    return layers


# ------------------------------------------------------------------------------------------------
# Keras HDF5.


def _keras_layer_names(layers: Layers) -> list[str]:
    """Keras's layer list for VGG-19 without top: input, convolutions, pools (in model order)."""
    names = ["input_1"]
    for name, _, _ in CONV_LAYERS:
        names.append(keras_group(name))
        if name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"):
            names.append(f"block{name[4]}_pool")
    present = {keras_group(n) for n in layers}
    return [n for n in names if "conv" not in n or n in present]


def write_keras_h5(path: str | Path, layers: Layers, naming: str = "keras2") -> Path:
    """Writes ``layers`` the way Keras's ``save_weights`` does (HDF5, root attributes
    ``layer_names``/``backend``/``keras_version``, one group per layer whose ``weight_names``
    attribute lists its datasets: kernel HWIO, then bias).

    naming: "keras2" (datasets ``block1_conv1/kernel:0``, i.e. nested groups) or "keras1"
    (``block1_conv1_W_1:0``, as in the original 2016 release of this file).
    """
    path = Path(path)
    by_group = {keras_group(name): value for name, value in layers.items()}
    with h5py.File(path, "w") as f:
        layer_names = _keras_layer_names(layers)
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in layer_names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4" if naming == "keras2" else b"1.1.0"
        for group_name in layer_names:
            group = f.create_group(group_name)
            if group_name not in by_group:  # input and pooling layers have no weights
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kernel, bias = by_group[group_name]
            if naming == "keras2":
                weight_names = [f"{group_name}/kernel:0", f"{group_name}/bias:0"]
            else:
                weight_names = [f"{group_name}_W_1:0", f"{group_name}_b_1:0"]
            group.attrs["weight_names"] = np.array([n.encode("utf8") for n in weight_names])
            group.create_dataset(weight_names[0], data=kernel)
            group.create_dataset(weight_names[1], data=bias)
    return path


# ------------------------------------------------------------------------------------------------
# PyTorch .pth.


def torch_state_dict(layers: Layers, classifier: bool = True) -> "collections.OrderedDict":
    """A torchvision ``vgg19().state_dict()``-shaped dict: ``features.N.weight`` (OIHW) and
    ``features.N.bias`` for the given layers, plus small ``classifier.0/3/6`` tensors."""
    import torch

    state = collections.OrderedDict()
    for name, (kernel, bias) in layers.items():
        index = TORCH_FEATURE_INDEX[name]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(
            np.asarray(kernel).transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(bias).copy())
    if classifier:
        generator = torch.Generator().manual_seed(0)
        for index, (cout, cin) in zip((0, 3, 6), ((16, 32), (16, 16), (10, 16))):
            state[f"classifier.{index}.weight"] = torch.randn(cout, cin, generator=generator)
            state[f"classifier.{index}.bias"] = torch.randn(cout, generator=generator)
    return state


def write_torch_pth(path: str | Path, layers: Layers | None = None, legacy: bool = False,
                    state: dict | None = None) -> Path:
    """Writes a state dict with ``torch.save``: the zip archive of torch >= 1.6, or with
    ``legacy=True`` the older stream-of-pickles layout of the 2017 model-zoo files.
    ``state`` (a ready state dict) overrides ``layers``."""
    import torch

    path = Path(path)
    if state is None:
        state = torch_state_dict(layers)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def truncated_copy(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes, as a damaged download would leave them."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


# ------------------------------------------------------------------------------------------------
# Bad files, for error tests.

#: kind -> words the one-line error message must contain (besides the file's path).
BAD_FILE_KINDS: dict[str, tuple[str, ...]] = {
    "missing": ("does not exist",),
    "directory": ("is a directory",),
    "not_weights": ("not a weights file",),
    "truncated_h5": ("damaged or truncated", "download it again"),
    "truncated_zip": ("damaged or truncated", "download it again"),
    "truncated_legacy": ("damaged or truncated", "download it again"),
    "missing_layer_h5": ("no weights for conv2_1", "block2_conv1"),
    "missing_layer_pth": ("no weights for conv2_1", "features.5.weight"),
    "wrong_shape_h5": ("conv1_2 kernel", "(3, 3, 64, 32)", "expected (3, 3, 64, 64)"),
    "wrong_shape_pth": ("conv1_1 kernel", "(64, 1, 3, 3)", "expected (64, 3, 3, 3)"),
    "int_dtype_h5": ("conv1_1 kernel", "dtype int32", "floating point"),
    "int_dtype_pth": ("conv1_1 bias", "dtype int64", "floating point"),
    "unknown_pth_no_source": ("--source torchvision", "--source caffe"),
    "pickled_module": ("refusing to load", "torch.nn.modules.linear.Linear",
                       "which a weights file never needs"),
}


def write_bad_file(kind: str, directory: Path, keras_h5: Path, torch_pth: Path,
                   torch_pth_legacy: Path) -> Path:
    """Writes (or, for "missing", names) a bad weights file of the given kind in ``directory``.

    The truncated kinds cut a copy of the given real-size files; the others are small files with
    only the first layers (validation stops at the first bad layer).
    """
    import torch

    directory = Path(directory)
    path = directory / f"{kind}.{'h5' if kind.endswith('h5') else 'pth'}"
    few = random_layers(seed=3, names=("conv1_1", "conv1_2"))
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "not_weights":
        path.write_text("<html>404 Not Found</html>\n")
    elif kind == "truncated_h5":
        truncated_copy(keras_h5, path)
    elif kind == "truncated_zip":
        truncated_copy(torch_pth, path)
    elif kind == "truncated_legacy":
        truncated_copy(torch_pth_legacy, path)
    elif kind == "missing_layer_h5":
        write_keras_h5(path, few)
    elif kind == "missing_layer_pth":
        write_torch_pth(path, few)
    elif kind == "wrong_shape_h5":
        kernel, bias = few["conv1_2"]
        write_keras_h5(path, {**few, "conv1_2": (kernel[..., :32], bias)})
    elif kind == "wrong_shape_pth":
        kernel, bias = few["conv1_1"]
        write_torch_pth(path, {**few, "conv1_1": (kernel[:, :, :1], bias)})
    elif kind == "int_dtype_h5":
        kernel, bias = few["conv1_1"]
        write_keras_h5(path, {**few, "conv1_1": ((kernel * 100).astype(np.int32), bias)})
    elif kind == "int_dtype_pth":
        state = torch_state_dict(few)
        state["features.0.bias"] = state["features.0.bias"].to(torch.int64)
        write_torch_pth(path, state=state)
    elif kind == "unknown_pth_no_source":
        write_torch_pth(path, few)
    elif kind == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        raise ValueError(kind)
    return path


def bad_file_source(kind: str) -> str | None:
    """The ``source`` argument a test passes with a bad file: torchvision for .pth files (so that
    the intended error, not the missing --source one, is what fails), none for .h5."""
    return None if kind.endswith("h5") or kind == "unknown_pth_no_source" else "torchvision"
