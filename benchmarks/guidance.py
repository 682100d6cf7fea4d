"""The cost of guided style: seconds per optimizer step without guidance and with R regions,
measured side by side (interleaved, same process), printed as JSON lines.

  python -m benchmarks.guidance --size 256 --regions 1,2,4 --steps 10 --rounds 3

Random VGG-19 weights (speed does not depend on them), the default layers and loss, Adam.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import guidance, losses, optimize, vgg19
from jaxstyle.config import Config, Optimizer


def _problem(vgg, spec, content, style, regions: int):
    if regions == 0:
        targets = losses.targets(vgg, content, [style], (1.0,), spec)
    else:
        h, w = content.shape[1:3]
        masks = np.zeros((regions, h, w), np.float32)
        for r, cols in enumerate(np.array_split(np.arange(w), regions)):
            masks[r][:, cols] = 1.0
        targets = losses.guided_targets(
            vgg, content, [style], [None], jnp.ones((regions, 1)),
            guidance.layer_masks(masks, h, w, spec.style_layers), spec)
    return optimize.problem_targets(targets, 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--regions", default="1,2,4")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    cfg = Config(optimizer=Optimizer(name="adam"))
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg19.init(jax.random.key(0), vgg19.Preprocessing(
        False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))), spec)
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(size=(1, args.size, args.size, 3)), jnp.float32)
    style = jnp.asarray(rng.uniform(size=(1, args.size, args.size, 3)), jnp.float32)
    method = optimize.Method.from_config(cfg)
    counts = [0] + [int(r) for r in args.regions.split(",")]
    problems = {r: _problem(vgg, spec, content, style, r) for r in counts}
    times: dict[int, list[float]] = {r: [] for r in counts}
    for r in counts:  # compile each once, outside the timing
        jax.block_until_ready(optimize.run_steps(optimize.init_state(content, method), 1, vgg,
                                                 problems[r], spec, method).image)
    for _ in range(args.rounds):
        for r in counts:
            state = optimize.init_state(content, method)
            start = time.perf_counter()
            jax.block_until_ready(optimize.run_steps(state, args.steps, vgg, problems[r], spec,
                                                     method).image)
            times[r].append((time.perf_counter() - start) / args.steps)
    base = min(times[0])
    for r in counts:
        print(json.dumps({"size": args.size, "regions": r, "s_per_step": round(min(times[r]), 4),
                          "ratio_to_unguided": round(min(times[r]) / base, 3),
                          "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
