"""Where a benchmark's inputs come from: the PyTorch reference scripts and images in the
``shared/`` folder beside the checkout, and a real-size VGG-19 file of random weights.

The shared files are found relative to the working directory first, then to the repository root,
so that ``python -m benchmarks.<name>`` works from the root of a clone with ``../shared`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxstyle.sources import CAFFE
from jaxstyle.vgg19 import CONV_LAYERS
from jaxstyle.weights import FORMAT, FORMAT_VERSION, safetensors_header, tensor_specs

# The checkout holding this folder (children get it on their PYTHONPATH: the same jaxstyle).
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# Shared files, relative to the repository root (or the working directory).
DEFAULT_REFERENCE = "../shared/bench/torch_reference.py"
DEFAULT_FAST_REFERENCE = "../shared/bench/torch_fast_reference.py"
DEFAULT_CONTENT = "../shared/images/tubingen.jpg"
DEFAULT_STYLE = "../shared/images/starry_night.jpg"


def find_shared(relative: str) -> Path | None:
    """``relative`` resolved against the working directory, then against the repository root;
    None if it is in neither."""
    for root in (Path.cwd(), REPOSITORY_ROOT):
        candidate = (root / relative).resolve()
        if candidate.exists():
            return candidate
    return None


def shared_file(relative: str) -> Path:
    """`find_shared`, or exits with a one-line message naming the flag that sets the file."""
    path = find_shared(relative)
    if path is None:
        raise SystemExit(f"bench: {relative} not found; pass --content/--style")
    return path


def write_random_weights(path: Path, seed: int = 0) -> Path:
    """A real-size VGG-19 file (He-initialized, caffe convention) in jaxstyle's converted format:
    speed does not depend on the weights' values."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": "keras",
                "source_file": "random", "source_sha256": "0" * 64,
                "preprocessing": json.dumps(CAFFE.to_dict())}
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(safetensors_header(metadata))
        for name, shape in tensor_specs():
            if name.endswith(".kernel"):
                fan_in = shape[0] * shape[1] * shape[2]
                array = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            else:
                array = np.zeros(shape)
            f.write(array.astype("<f4").tobytes())
    assert len(CONV_LAYERS) * 2 == len(list(tensor_specs()))
    return path
