"""Shared fixtures. Weight fixtures: synthetic real-size VGG-19 files, written once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One temporary persistent compilation cache for the whole test run, set before JAX is imported so
# that the subprocesses tests start inherit it too: a program that several tests, fixtures or
# processes build through different jit wrappers compiles once. Temporary: the user's cache is
# never touched. (The test of jaxstyle's own cache removes these variables for its subprocesses.)
_XLA_CACHE = tempfile.mkdtemp(prefix="jaxstyle-tests-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
# On a GPU, JAX's default float32 convolutions and matmuls run in TF32 (a 10-bit mantissa; relative
# errors ~1e-4 against the PyTorch and NumPy references). The tests check the mathematics, so they
# ask for full float32; on a CPU this changes nothing. (Users get JAX's default: see the README.)
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import pytest  # noqa: E402

import synthetic_weights as sw  # noqa: E402
from jaxstyle import weights  # noqa: E402

# In-process CLI tests must not point this process's JAX compilation cache at the user's cache
# directory; the test of the cache itself runs the CLI in subprocesses without this.
os.environ["JAXSTYLE_COMPILE_CACHE"] = "0"


@pytest.fixture(scope="session")
def vgg():
    """A random caffe-convention VGG-19 up to relu2_1: the network of most small-image tests
    (a module that needs deeper layers overrides this fixture with `helpers.random_vgg`)."""
    from helpers import random_vgg

    return random_vgg("relu2_1")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def keras_layers() -> sw.Layers:
    """The weights in `keras_h5`: {name: (kernel HWIO, bias)}."""
    return sw.random_layers(seed=1)


@pytest.fixture(scope="session")
def torch_layers() -> sw.Layers:
    """The weights in `torchvision_pth` and `torchvision_pth_legacy`."""
    return sw.random_layers(seed=2)


@pytest.fixture(scope="session")
def keras_h5(weights_dir, keras_layers) -> Path:
    """A real-size Keras notop .h5 (Keras 2 dataset names)."""
    return sw.write_keras_h5(weights_dir / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             keras_layers)


@pytest.fixture(scope="session")
def torchvision_pth(weights_dir, torch_layers) -> Path:
    """A real-size torchvision-layout .pth (zip archive); not a known checksum, so it needs
    source="torchvision"."""
    return sw.write_torch_pth(weights_dir / "vgg19-synthetic.pth", torch_layers)


@pytest.fixture(scope="session")
def torchvision_pth_legacy(weights_dir, torch_layers) -> Path:
    """The same state dict in torch's legacy (pre-1.6, non-zip) layout, like the real files."""
    return sw.write_torch_pth(weights_dir / "vgg19-synthetic-legacy.pth", torch_layers, legacy=True)


@pytest.fixture(scope="session")
def keras_safetensors(weights_dir, keras_h5) -> Path:
    return weights.convert(keras_h5, weights_dir / "converted" / "keras.safetensors").dst


@pytest.fixture(scope="session")
def torchvision_safetensors(weights_dir, torchvision_pth) -> Path:
    return weights.convert(torchvision_pth, weights_dir / "converted" / "torchvision.safetensors",
                           source="torchvision").dst
