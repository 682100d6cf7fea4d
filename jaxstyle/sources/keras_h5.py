"""Keras's VGG-19 weights (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``): HDF5 groups
``blockB_convI`` whose ``weight_names`` attribute names the kernel (already HWIO) and the bias.

Keras 1 and Keras 2 name the datasets differently; both are found through ``weight_names``. h5py is
imported only when a file is read.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.models.vgg19 import CONV_LAYERS
from jaxstyle.sources.layers import LazyArray, LazyLayer, make_layer

#: The signature that opens an HDF5 file (at offset 0, or 512, 1024, ... after a user block).
MAGIC = b"\x89HDF\r\n\x1a\n"


def keras_group(name: str) -> str:
    """conv3_2 -> block3_conv2 (Keras's layer name)."""
    block, index = name[4:].split("_")
    return f"block{block}_conv{index}"


def is_hdf5(path: Path) -> bool:
    """Whether h5py reads ``path`` as HDF5 (also with a user block before the signature)."""
    import h5py
    try:
        return bool(h5py.is_hdf5(path))
    except Exception:  # noqa: BLE001 - anything h5py cannot open is not HDF5 for our purposes
        return False


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
def open_layers(path: Path) -> Iterator[list[LazyLayer]]:
    """The sixteen layers of a Keras weights file, checked but unread, while the file is open."""
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
    return make_layer(path, name, kernel, bias, "HWIO")
