"""A weights file's tensors before they are read: `LazyArray` (shape and dtype now, values on
``read()``) and `LazyLayer` (one convolution's kernel and bias, checked against VGG-19's shapes).

The format readers (`jaxstyle.sources.keras_h5`, `jaxstyle.sources.torch_pth`) build these; a
conversion reads one layer at a time through `LazyLayer.load`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from jaxstyle.errors import JaxstyleError
from jaxstyle.models.vgg19 import CONV_LAYERS


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
    """(kernel shape, bias shape) of convolution ``name`` in ``layout`` ("HWIO" or "OIHW")."""
    cin, cout = next((i, o) for n, i, o in CONV_LAYERS if n == name)
    kernel = (3, 3, cin, cout) if layout == "HWIO" else (cout, cin, 3, 3)
    return kernel, (cout,)


def _check_array(path: Path, name: str, what: str, array: LazyArray, expected: tuple[int, ...],
                 layout: str) -> None:
    """Raises the one-line error for a tensor of the wrong shape or a non-float dtype."""
    if tuple(array.shape) != expected:
        raise JaxstyleError(f"{path}: {name} {what} has shape {tuple(array.shape)}, expected "
                            f"{expected}{' ' + layout if what == 'kernel' else ''}: "
                            f"this is not a VGG-19 weights file")
    if array.dtype.kind != "f":
        raise JaxstyleError(f"{path}: {name} {what} has dtype {array.dtype}, expected floating "
                            f"point weights: this is not a VGG-19 weights file")


def make_layer(path: Path, name: str, kernel: LazyArray, bias: LazyArray, layout: str) -> LazyLayer:
    """The `LazyLayer` ``name`` of the file at ``path``, its kernel and bias checked (not read)."""
    kernel_shape, bias_shape = expected_shapes(name, layout)
    _check_array(path, name, "kernel", kernel, kernel_shape, layout)
    _check_array(path, name, "bias", bias, bias_shape, layout)
    return LazyLayer(name, kernel, bias, layout)
