"""VGG-19 for users: the model of `jaxstyle.models.vgg19` plus `load`, which reads a weights file.

The one place where the model meets the weights files, so that neither has to import the other:
research code can ``from jaxstyle import vgg19`` and use ``vgg19.load``, ``vgg19.features``,
``vgg19.prepare`` ... as before. The numerical core (`losses`, `optimize`, `stylize`, `batch`)
imports `jaxstyle.models.vgg19` directly and never this module.

The convolution helpers that used to live here (``conv3x3``, ``pool2x2``, ``prepare_kernel``,
``flip_kernel``, ``winograd_kernel``, ``use_winograd``, ``PreparedKernel``) are in
`jaxstyle.kernels` and re-exported here as aliases.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from jaxstyle import weights
from jaxstyle.kernels import (PreparedKernel, conv3x3, flip_kernel, pool2x2,  # noqa: F401 (aliases)
                              prepare_kernel, use_winograd, winograd_kernel)
from jaxstyle.models.vgg19 import *  # noqa: F401,F403 (the public model API)
from jaxstyle.models.vgg19 import VGG


def load(path: str | os.PathLike, source: str | None = None, pooling: str = "max") -> VGG:
    """The network from a converted ``.safetensors`` file, or from any supported source file
    (Keras ``.h5``, torchvision or caffe ``.pth``), converted in memory.

    Raises `jaxstyle.errors.JaxstyleError` with a one-line message for a missing or bad file.
    """
    loaded = weights.read(path, source=source)
    params = {name: {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)}
              for name, (k, b) in loaded.layers.items()}
    return VGG(params=params, preprocessing=loaded.preprocessing,
               source=loaded.source).with_pooling(pooling)
