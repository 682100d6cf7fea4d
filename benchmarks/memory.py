"""XLA's memory for one compiled step, per input pixel: the figures behind
`jaxstyle.memory.TEMP_BYTES_PER_PIXEL`. Compiles `optimize.run_steps` for the full VGG-19 (random
torchvision-convention weights) at each size and prints one JSON line per (size, optimizer) with
``memory_analysis()``'s temporaries, arguments and outputs.

  python -m benchmarks.memory 128 256 512
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp

from jaxstyle import losses, optimize, sources, vgg19
from jaxstyle.config import Config


def main(argv=None) -> int:
    sizes = [int(s) for s in (sys.argv[1:] if argv is None else argv)] or [256]
    spec = losses.LossSpec.from_config(Config())
    vgg = optimize.prepared(vgg19.init(jax.random.key(0), sources.TORCHVISION), spec)
    for size in sizes:
        for name in ("lbfgs", "adam"):
            method = optimize.Method(name, 1.0, 100)
            x = jnp.zeros((1, size, size, 3), jnp.float32)
            targets = optimize.problem_targets(losses.targets(vgg, x, [x], [1.0], spec), 1)
            state = optimize.init_state(x, method)
            analysis = optimize.run_steps.lower(state, 1, vgg, targets, spec, method,
                                                "float32").compile().memory_analysis()
            print(json.dumps({
                "size": size, "optimizer": name, "temp_bytes": analysis.temp_size_in_bytes,
                "argument_bytes": analysis.argument_size_in_bytes,
                "output_bytes": analysis.output_size_in_bytes,
                "temp_bytes_per_pixel": round(analysis.temp_size_in_bytes / size**2, 1)}),
                flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
