"""Small helpers the test files share: the CLI in-process, random images and networks, and a
script run on simulated devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from jaxstyle import cli, vgg19
from jaxstyle.sources import CAFFE, TORCHVISION  # noqa: F401  (the two input conventions)


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `jaxstyle *argv`, run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(err: str, *fragments: str) -> str:
    """The CLI's stderr ``err`` is one ``jaxstyle: error: ...`` line holding every fragment (no
    traceback); returns that line."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxstyle: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_random_image(path, shape, seed):
    """A uniformly random 8-bit RGB image of ``shape`` (h, w) at ``path``; returns the path."""
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random(tuple(shape) + (3,)) * 255).astype(np.uint8)).save(path)
    return path


def random_vgg(last_layer: str = "relu2_1", preprocessing: vgg19.Preprocessing = CAFFE
               ) -> vgg19.VGG:
    """A VGG-19 with random weights up to ``last_layer`` (the shallower, the faster a test)."""
    return vgg19.init(jax.random.key(0), preprocessing, last_layer=last_layer)


def random_images(seed: int, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Uniformly random float32[h, w, 3] images in [0, 1], one per (h, w) of ``shapes``."""
    rng = np.random.default_rng(seed)
    return [rng.random(tuple(shape) + (3,), dtype=np.float32) for shape in shapes]


def run_on_devices(script: str, devices: int, timeout: float = 600) -> dict:
    """Runs the Python ``script`` in a fresh process with ``devices`` simulated CPU devices; the
    JSON object its last line of output prints."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Counts the persistent compilation cache's hits and misses of one CLI run (a miss compiles).
_COUNT_CACHE_EVENTS = """
import sys
from jax import monitoring
events = []
monitoring.register_event_listener(lambda name, **_: events.append(name))
from jaxstyle import cli
code = cli.main(sys.argv[1:])
print("hits", events.count("/jax/compilation_cache/cache_hits"),
      "misses", events.count("/jax/compilation_cache/cache_misses"))
sys.exit(code)
"""


def cache_events_of_cli(*argv) -> tuple[int, int]:
    """(hits, misses) of the persistent compilation cache in ``jaxstyle *argv``, run in a fresh
    process with jaxstyle's own cache settings (the test run's cache variables removed)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXSTYLE_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run([sys.executable, "-c", _COUNT_CACHE_EVENTS, *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()
    return int(words[words.index("hits") + 1]), int(words[words.index("misses") + 1])


REPOSITORY = Path(__file__).resolve().parents[1]

# Runs the CLI with a Ctrl-C (SIGINT from a timer thread) delivered while XLA compiles: the first
# compile that lasts over 0.2 s gets one, then a second one 0.2 s later if asked.
_CTRL_C_DURING_COMPILE = textwrap.dedent("""
    import os, signal, sys, threading
    from jax._src import compiler
    real, presses = compiler.backend_compile_and_load, int(os.environ["CTRL_C_PRESSES"])
    sent = []
    def press():
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        if len(sent) < presses:
            threading.Timer(0.2, press).start()
    def compile_with_ctrl_c(*args, **kwargs):
        timer = threading.Timer(0.2, press)
        if not sent:
            timer.start()
        try:
            return real(*args, **kwargs)
        finally:
            timer.cancel()
    compiler.backend_compile_and_load = compile_with_ctrl_c
    from jaxstyle import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def run_with_ctrl_c(argv, presses: int) -> subprocess.CompletedProcess:
    """`jaxstyle *argv` in a fresh process that gets ``presses`` Ctrl-Cs while XLA compiles."""
    # No compilation cache: a cached program would load without compiling.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", JAXSTYLE_COMPILE_CACHE="0", CTRL_C_PRESSES=str(presses),
               PYTHONPATH=os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", _CTRL_C_DURING_COMPILE, *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=120)
