"""VGG-19 for users: the model of `jaxstyle.models.vgg19` and `load`, which reads a weights file.

``from jaxstyle import vgg19`` gives the whole network API in one place::

    vgg = vgg19.load("vgg19.safetensors")                # or a Keras .h5 / torchvision .pth file
    vgg = vgg19.prepare(vgg19.truncate(vgg, layers))     # optional, once, outside jitted code
    feats = vgg19.features(vgg, images, layers)          # {"relu4_2": float32[B, h, w, C], ...}

Why two modules: the model (`jaxstyle.models.vgg19`: layer table, `Preprocessing`, the Flax module,
the pure `features`) takes arrays only and belongs to the numerical core, which never touches
files; `load` needs the weight readers (`jaxstyle.weights`: safetensors, HDF5, pickles). This
module is where the two meet, so that neither imports the other. It defines nothing but `load`;
every other name is the model's own object (``vgg19.features is models.vgg19.features``). The core
(`losses`, `optimize`, `stylize`, `batch`) imports `jaxstyle.models.vgg19`, never this module.
"""

from __future__ import annotations

import os

import jax

from jaxstyle import weights
from jaxstyle.models.vgg19 import (CONV_LAYERS, CONV_SHAPES, LAYER_NAMES, POOLINGS, VGG, VGG19,
                                   Conv3x3, Preprocessing, check_layers, features, init,
                                   min_input_side, output_shape, prepare, truncate)

__all__ = ["load", "CONV_LAYERS", "CONV_SHAPES", "LAYER_NAMES", "POOLINGS", "Preprocessing", "VGG",
           "Conv3x3", "VGG19", "check_layers", "features", "truncate", "prepare", "init",
           "min_input_side", "output_shape"]


def load(path: str | os.PathLike, source: str | None = None, pooling: str = "max") -> VGG:
    """The network from a converted ``.safetensors`` file, or from any supported source file
    (Keras ``.h5``, torchvision or caffe ``.pth``), converted in memory.

    Args:
      path: the weights file.
      source: the weights' convention (``"keras"``, ``"torchvision"``, ``"caffe"``) where the file
        does not tell it (a ``.pth`` file of unknown origin); None to detect it.
      pooling: ``"max"`` (as trained) or ``"avg"`` (Gatys et al.'s choice for synthesis).

    Returns:
      A `VGG`: params ``{convX_Y: {"kernel": float32[3, 3, Cin, Cout], "bias": float32[Cout]}}``
      and the preprocessing its weights were trained with.

    Raises `jaxstyle.errors.JaxstyleError` with a one-line message for a missing or bad file.
    """
    loaded = weights.read(path, source=source)
    # device_put, not jnp.asarray: the latter compiled a copy program per weight shape (12).
    params = {name: {"kernel": jax.device_put(k), "bias": jax.device_put(b)}
              for name, (k, b) in loaded.layers.items()}
    return VGG(params=params, preprocessing=loaded.preprocessing,
               source=loaded.source).with_pooling(pooling)
