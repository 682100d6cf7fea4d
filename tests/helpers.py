"""Small helpers the test files share."""

from __future__ import annotations

import numpy as np
from PIL import Image

from jaxstyle import cli


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `jaxstyle *argv`, run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_random_image(path, shape, seed):
    """A uniformly random 8-bit RGB image of ``shape`` (h, w) at ``path``; returns the path."""
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random(tuple(shape) + (3,)) * 255).astype(np.uint8)).save(path)
    return path
